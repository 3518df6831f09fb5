from approxbp.memory.cli import main

raise SystemExit(main())
