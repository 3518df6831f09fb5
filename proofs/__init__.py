"""Symbolic derivations (sympy) behind approxbp's fits and ops; each module's ``main()`` checks and prints its claims.

Installed as ``approxbp.proofs`` (a top-level ``proofs`` package would collide with PyPI's).  Run one with
``python -m approxbp.proofs.<module>``."""
