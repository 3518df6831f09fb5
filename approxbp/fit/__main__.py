"""``python -m approxbp.fit``.  The fitter's linear algebra is on matrices of at most 15 x 15, where a BLAS thread
pool only adds overhead (OpenBLAS's spinning threads made the command 5-10x slower on a loaded 2-core machine), so
the command asks numpy/scipy for one thread, before they load, unless the caller set these variables."""

import os
import sys

for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

from approxbp.fit.cli import main  # noqa: E402  (after the thread settings: numpy reads them when it loads)

sys.exit(main())
