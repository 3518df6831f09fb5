"""``python -m approxbp.fit`` and the console script ``approxbp-fit`` (both run ``main`` here).  The fitter's linear
algebra is on matrices of at most 15 x 15, where a BLAS thread pool only adds overhead (OpenBLAS's spinning threads
made the command 5-10x slower on a loaded 2-core machine), so ``main`` asks numpy/scipy for one thread before it
imports them, unless the caller set these variables."""

import os
import sys

BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def main(argv: list[str] | None = None) -> int:
    """One BLAS/OpenMP thread (unset variables only; numpy reads them when it loads), then the fit command."""
    for name in BLAS_THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    from approxbp.fit.cli import main as fit_main

    return fit_main(argv)


if __name__ == "__main__":
    sys.exit(main())
