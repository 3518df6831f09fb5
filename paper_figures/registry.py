"""The figures ``python -m paper_figures`` draws, in order.  Adding a figure: write one module (see ``base``) and
list it here."""

from paper_figures import (
    ablation,
    backward_tables,
    block_memory,
    convergence,
    fit_objective,
    gpu_benchmarks,
    grad_bound,
    grad_chain,
    regelu2_resilu2,
    vit_lora,
)

FIGURES = (regelu2_resilu2, backward_tables, fit_objective, block_memory, vit_lora, convergence, grad_bound, grad_chain,
           ablation)
FIGURES += (gpu_benchmarks,)  # benchmarks/results/: the GPU run, or the CPU quick run until there is one
