"""torch kernels for the primitives of ``entroloss._math.primitives``.

The same results with fewer full-size temporaries, each a pass over memory and, on CPU,
fresh pages to fault in. They run only inside the ``autograd.Function`` of
``backends/torch.py`` (and under ``no_grad`` in ``value_and_grad``), where torch's
autograd does not differentiate them, so writing in place is safe.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from entroloss._math import Kernels


def row_stats(xp: Any, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    top = z.amax(dim=-1, keepdim=True).clamp_min_(torch.finfo(z.dtype).min)
    return top, torch.sub(z, top).exp_().sum(dim=-1, keepdim=True).clamp_min_(1.0).log_()


def take_along_last(xp: Any, z: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.gather(z, -1, index)  # validated or made usable: no index to wrap around


def log_p(xp: Any, z: torch.Tensor, top: torch.Tensor, norm: torch.Tensor) -> torch.Tensor:
    return torch.sub(z, top).sub_(norm)


def finite_log_p(xp: Any, lp: torch.Tensor) -> torch.Tensor:
    # the definition's where(lp < floor, floor, lp), in place (clamp keeps NaN)
    return lp.clamp_(min=-math.sqrt(torch.finfo(lp.dtype).max))


def mass_off_target(xp: Any, finite_lp: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.exp(finite_lp).scatter_(-1, index, 0.0).sum(dim=-1)


def sum_p_log_p(xp: Any, finite_lp: torch.Tensor) -> torch.Tensor:
    return torch.exp(finite_lp).mul_(finite_lp).sum(dim=-1)


def softmax_affine(xp: Any, z: torch.Tensor, top: torch.Tensor, norm: torch.Tensor,
                   p_coef: torch.Tensor, index: torch.Tensor, onehot_coef: torch.Tensor,
                   log_p_coef: torch.Tensor | None = None) -> torch.Tensor:
    # p = exp(z - top) / exp(norm), built in the buffer that becomes the gradient
    out = torch.sub(z, top).exp_()
    if log_p_coef is None:
        out.mul_(p_coef / torch.exp(norm))
    else:
        factor = finite_log_p(xp, log_p(xp, z, top, norm)).mul_(log_p_coef.unsqueeze(-1)).add_(p_coef)
        out.mul_(factor.div_(torch.exp(norm)))
    if onehot_coef.dtype != out.dtype:
        onehot_coef = onehot_coef.to(out.dtype)
    return out.scatter_add_(-1, index, onehot_coef.unsqueeze(-1))


KERNELS = Kernels(row_stats=row_stats, take_along_last=take_along_last, log_p=log_p, finite_log_p=finite_log_p,
                  sum_p_log_p=sum_p_log_p, mass_off_target=mass_off_target,
                  softmax_affine=softmax_affine)
