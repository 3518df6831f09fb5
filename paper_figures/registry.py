"""The figures ``python -m paper_figures`` draws, in order.  Adding a figure: write one module (see ``base``) and
list it here."""

from paper_figures import backward_tables, block_memory, fit_objective, regelu2_resilu2, vit_lora

FIGURES = (regelu2_resilu2, backward_tables, fit_objective, block_memory, vit_lora)
