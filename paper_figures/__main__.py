import sys

from paper_figures.cli import main

sys.exit(main())
