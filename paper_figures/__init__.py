"""The paper's figures, drawn from approxbp: ``python -m paper_figures [--quick] [--only NAME ...] [--out DIR]``.

Each figure is one module of this package registered in ``registry.FIGURES``; it draws a matplotlib figure and
returns the numbers it plotted, which the runner writes beside the PNG as JSON (``cli``).
"""

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed or opened
