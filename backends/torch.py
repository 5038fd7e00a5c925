"""torch: the shared forward/backward as a ``torch.autograd.Function``.

The forward and backward are ``entroloss._math``'s, run on torch tensors through
array-api-compat's torch namespace with the torch kernel table (``torch_kernels.py``).
Gradients reach the logits and every weight or base passed as a tensor. Second
derivatives are not supported: a backward asked to build a graph (``create_graph=True``)
raises, rather than silently dropping a term. The ``nn.Module`` losses are in
``torch_modules.py`` and importable from here.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp
import torch

from entroloss import _math

from . import kernels_for
from .torch_modules import (AdaptiveCELoss, CrossEntropyLoss, FocalLoss, MinEntLoss,  # noqa: F401
                            MixEntLoss)

_SCALARS = len(_math.Scalars._fields)  # the Function's last inputs
_KERNELS = kernels_for(xp)  # loaded with the adapter: torch.compile cannot trace an import


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, logits, target, weight, *scalars):
        scalars = _math.Scalars(*scalars)
        kernels = _KERNELS
        with torch.autocast(logits.device.type, enabled=False):  # computed as _math decides
            value, residuals = _math.forward(xp, spec, logits, target, weight, scalars, kernels)
        ctx.spec, ctx.logits_dtype, ctx.kernels = spec, logits.dtype, kernels
        ctx.floats = _math.Scalars(*(None if torch.is_tensor(v) else v for v in scalars))
        ctx.residual_count = len(residuals)
        ctx.save_for_backward(target, weight, *residuals,
                              *(v if torch.is_tensor(v) else None for v in scalars))
        return value

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative was asked for
            raise RuntimeError(
                "entroloss losses are differentiable once on torch: the backward is the "
                "shared hand-derived one, which is not itself differentiated "
                "(create_graph=True / double backward is not supported)"
            )
        target, weight, *saved = ctx.saved_tensors
        residuals = _math.Residuals(*saved[:ctx.residual_count])
        tensors = saved[ctx.residual_count:]
        scalars = _math.Scalars(*(f if t is None else t for f, t in zip(ctx.floats, tensors)))
        with torch.autocast(grad.device.type, enabled=False):
            d_logits, d_scalars = _math.backward(xp, ctx.spec, residuals, target, weight, scalars,
                                                 grad, ctx.logits_dtype, ctx.kernels)
        wanted = ctx.needs_input_grad[-_SCALARS:]
        d_scalars = tuple(None if d is None or not want else d.to(v.dtype)
                          for d, want, v in zip(d_scalars, wanted, scalars))
        return None, d_logits, None, None, *d_scalars


def loss(xp_: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
         scalars: _math.Scalars) -> Any:
    for name, tensor in (("target", target), ("weight", weight)):
        if tensor is not None and tensor.requires_grad:
            raise ValueError(
                f"{name} requires grad, but entroloss differentiates only the logits and the "
                f"weights and bases; pass {name}.detach()"
            )
    return _Loss.apply(spec, logits, target, weight, *scalars)


def value_and_grad(*args: Any) -> tuple:
    """The explicit path, kept off torch's autograd graph."""
    from . import explicit

    with torch.no_grad():
        return explicit.value_and_grad(*args)
