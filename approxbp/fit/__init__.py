"""The Approx-BP fitter: backward tables (thresholds, levels) for every target, bits and objective.

Pure NumPy/SciPy/SymPy: importing it (or running ``python -m approxbp.fit``) never imports torch or triton.
"""

from approxbp.fit.api import fit, official
from approxbp.fit.empirical import Histogram
from approxbp.fit.result import MAX_BITS, OBJECTIVES, Evidence, FitResult

__all__ = ["MAX_BITS", "OBJECTIVES", "Evidence", "FitResult", "Histogram", "fit", "official"]
