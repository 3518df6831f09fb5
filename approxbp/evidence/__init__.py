"""Evidence that Approx-BP + MS-BP is safe: gradient errors against their proven bounds through real networks,
training convergence on real data, and the ablation of backward tables.  Each study writes its JSON into
``paper_figures/data/`` (``python -m approxbp.evidence.<study>``) and has a ``quick`` scale that the tests run."""
