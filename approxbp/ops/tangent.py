"""Forward-mode AD (``torch.func.jvp``, ``torch.func.jacfwd``, ``torch.autograd.forward_ad``) and the ``torch.func``
transforms (``grad``, ``jacrev``, ``vmap``, ``functional_call`` under them) through the ops.

The ``torch.library`` custom ops have no forward-mode formula, and torch gives them zero tangents without a word; and
torch's ``register_autograd`` wrapper refuses functorch's ``grad``/``jacrev``/``vmap`` (pytorch/pytorch#170834).
So when an input carries a tangent or a ``torch.func`` transform is active, each public op runs its custom op on the
detached inputs (vmap: through the op's batching rule) and adds its tangent map as a differentiable term whose value
is zero:

    out = op(inputs.detach()) - (z - z.detach()),   z = -(J delta),   delta = x - x.detach()  (t as tangent, value 0)

``z - z.detach()`` is +0 whatever the sign of the zero in ``z``, and ``y - (+0)`` is ``y`` bit for bit (-0 included),
so the value is exactly the op's; the tangent is J t, and the gradient J^T dy.  J is the linear map each op documents:

    Approx-BP activations   J t = h~'(x) t            (the step function: the map whose transpose the backward is)
    gated (out = h(g) u)    J t = u h~'(g) t_g + h(g) t_u
    MS-LN / MS-RMSNorm      J t = rstd (t [- mean(t)] - y mean(t y))        (exact; J is symmetric)
    affine LayerNorm        J t = w J_LN t_x + y t_w + t_b                   (exact)

so jacfwd equals jacrev for every op.  Entries of delta at non-finite inputs are 0, so they add no tangent (their
values, inf or NaN, are the op's).  Gradients taken through this form (torch.func.grad, jacrev, jacfwd of jacrev,
hessian) are J^T dy, the ops' backward formulas up to rounding, though autograd then saves what the composite needs
rather than the codes: the memory savings are those of the plain autograd path only.
"""

from __future__ import annotations

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor


def func_transforms_active() -> bool:
    """Whether a ``torch.func`` transform (grad, jacrev, vmap, jvp, ...) is running (false while torch.compile
    traces)."""
    return not torch.compiler.is_compiling() and torch._C._are_functorch_transforms_active()


def needs_composite(*tensors: Tensor | None) -> bool:
    """Whether a ``torch.func`` transform is active or an input carries a forward-mode tangent (false while
    torch.compile traces: neither reaches the ops there)."""
    if torch.compiler.is_compiling():
        return False
    return func_transforms_active() or any(t is not None and fwAD.unpack_dual(t).tangent is not None for t in tensors)


def delta(x: Tensor, dtype: torch.dtype) -> Tensor:
    """x - x.detach() in ``dtype``: value +0, tangent that of x (0 where x is not finite)."""
    return torch.where(x.isfinite(), x - x.detach(), 0.0).to(dtype)


def with_tangent(out: Tensor, jt: Tensor) -> Tensor:
    """``out`` bit for bit, with tangent (and gradient path) ``jt``, a tensor of zeros carrying J t."""
    z = (-jt).to(out.dtype)
    return out - (z - z.detach())
