"""The evidence studies' documents (``approxbp.evidence``) that figures 5-7 (and 6b) and notebook 03 draw: the
committed JSON files of ``paper_figures/data/``, or, quick, recomputed at the CI scale in memory (nothing written).

The quick scale is each study's ``run(quick=True)`` narrowed to what a test can afford: convergence on the LLaMA task
only (every variant, 2 seeds), the ablation on the LLaMA task with three tables (2 seeds), the gradient-error and chain
studies as they are.  The tiny models run on one torch thread: on a shared 2-core machine, threads waiting for each
other cost more than they compute.
"""

from __future__ import annotations

from contextlib import contextmanager

from paper_figures.base import Input

EXPERIMENTS = ("vit", "llama", "minilm")
CONVERGENCE = {e: Input(f"paper_figures/data/convergence_{e}.json",
                        f"python -m approxbp.evidence.convergence --experiment {e}") for e in EXPERIMENTS}
GRAD_ERROR = Input("paper_figures/data/grad_error.json", "python -m approxbp.evidence.grad_error")
GRAD_CHAIN = Input("paper_figures/data/grad_chain.json", "python -m approxbp.evidence chain")
ABLATION = Input("paper_figures/data/ablation.json", "python -m approxbp.evidence.ablation")
QUICK_SEEDS = 2
QUICK_EXPERIMENTS = ("llama",)
QUICK_TABLES = (("primitive", 2), ("derivative", 2), ("relu", 1))
QUICK_NOTE = (f"quick scale, nothing read from paper_figures/data/: the studies' run(quick=True) on one torch thread, "
              f"convergence and ablation narrowed to {', '.join(QUICK_EXPERIMENTS)} with {QUICK_SEEDS} seeds, "
              f"ablation tables {', '.join(f'{k}-{b}' for k, b in QUICK_TABLES)}; the numbers only show that the "
              "pipeline runs")


def how(module_doc: str, quick: bool) -> str:
    """A figure's "how": its module docstring after the first paragraph, on one line, and the scale."""
    return module_doc.split("\n\n", 1)[1].replace("\n", " ") + (f" ({QUICK_NOTE})" if quick else "")


@contextmanager
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def convergence_documents(quick: bool) -> list[dict]:
    if not quick:
        return [i.read_json() for i in CONVERGENCE.values()]
    from approxbp.evidence.convergence import run

    with one_thread():
        return [run(e, quick=True, seeds=QUICK_SEEDS, out=None, progress=False) for e in QUICK_EXPERIMENTS]


def grad_error_document(quick: bool) -> dict:
    if not quick:
        return GRAD_ERROR.read_json()
    from approxbp.evidence.grad_error import run

    with one_thread():
        return run(quick=True)


def grad_chain_document(quick: bool) -> dict:
    if not quick:
        return GRAD_CHAIN.read_json()
    from approxbp.evidence.chain import run

    with one_thread():
        return run(quick=True)


def ablation_document(quick: bool) -> dict:
    if not quick:
        return ABLATION.read_json()
    from approxbp.evidence.ablation import run
    from approxbp.evidence.tables import TableSpec

    with one_thread():
        return run(quick=True, out=None, seeds=QUICK_SEEDS, tables=[TableSpec(k, b) for k, b in QUICK_TABLES],
                   experiments=QUICK_EXPERIMENTS, progress=False)
