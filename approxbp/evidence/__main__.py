"""``python -m approxbp.evidence STUDY [options]``: run one study (its own ``--help`` lists the options).

    grad_error    Approx-BP gradient errors through MiniLM, a ViT and a LLaMA next to their proven bounds
    chain         every parameter's gradient error through L blocks next to the chain bound (v) (ViT, LLaMA)
    convergence   baseline vs MS-BP vs Approx-BP vs both, 3 seeds, on digits, pydoc bytes and stdlib docstrings
    ablation      which backward table trains best: every table kind at bits 1..4, 3 seeds
"""

import sys
from importlib import import_module

STUDIES = ("grad_error", "chain", "convergence", "ablation")

if len(sys.argv) < 2 or sys.argv[1] not in STUDIES:
    print(f"usage: python -m approxbp.evidence {{{','.join(STUDIES)}}} [options]\n{__doc__}", file=sys.stderr)
    sys.exit(2)
study = sys.argv[1]
sys.argv[0] = f"python -m approxbp.evidence {study}"  # argparse's prog in the study's usage and errors
sys.exit(import_module(f"approxbp.evidence.{study}").main(sys.argv[2:]))
