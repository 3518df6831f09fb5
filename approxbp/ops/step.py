"""A backward table as torch tensors: the interval code of every element and the step function h~'(x).

code(x) = #{j : t_j <= x} in 0 .. 2^bits - 1 (NaN -> 0, as every comparison with NaN is false), step(x) = L[code(x)].
Comparisons are made in fp32 against the fp32-rounded thresholds for fp16/bf16/fp32 inputs (exactly what the Triton
kernels do, so codes agree bit for bit) and in fp64 against the table's own values for fp64 inputs."""

from __future__ import annotations

import torch

from approxbp.tables import Table


def table_tensor(table: Table, device: torch.device | str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[t_1 .. t_{2^bits - 1}, L_0 .. L_{2^bits - 1}] as one tensor: the run-time table argument of the kernels."""
    return torch.tensor(table.thresholds + table.levels, dtype=dtype, device=device)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the ops compute in: fp64 for fp64 storage, fp32 for fp16, bf16 and fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def step_codes(x: torch.Tensor, table: Table) -> torch.Tensor:
    """code(x) as uint8, same shape as ``x``."""
    dtype = compute_dtype(x.dtype)
    t = torch.tensor(table.thresholds, dtype=dtype, device=x.device)
    xf = x.to(dtype)
    return (xf.unsqueeze(-1) >= t).sum(-1, dtype=torch.uint8) if x.numel() else torch.zeros_like(x, dtype=torch.uint8)


def step_levels(codes: torch.Tensor, table: Table, dtype: torch.dtype) -> torch.Tensor:
    """L[code] in ``dtype`` (fp64 levels for fp64, fp32 levels otherwise: the kernels multiply in fp32)."""
    levels = torch.tensor(table.levels, dtype=compute_dtype(dtype), device=codes.device)
    return levels[codes.long()]


def step(x: torch.Tensor, table: Table) -> torch.Tensor:
    """h~'(x) = L[code(x)] in the compute dtype of ``x`` (fp32, or fp64 for fp64 inputs)."""
    return step_levels(step_codes(x, table), table, x.dtype)
