import sys

from approxbp.fit.cli import main

sys.exit(main())
