"""torch: the shared forward/backward as a ``torch.autograd.Function``, and ``nn.Module``s.

The forward and backward are ``entroloss._math``'s, run on torch tensors through
array-api-compat's torch namespace. Gradients reach the logits and every weight or base
passed as a tensor. The backward is marked once-differentiable: asking for a second
derivative raises torch's clear error rather than returning a wrong zero.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.torch as xp
import torch
from torch.autograd.function import once_differentiable

from entroloss import _math


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, logits, target, weight, cw, cb, rw, rb):
        params = (cw, cb, rw, rb)
        with torch.autocast(logits.device.type, enabled=False):  # computed as _math decides
            value, residuals = _math.forward(xp, spec, logits, target, weight, params)
        ctx.spec, ctx.logits_dtype = spec, logits.dtype
        ctx.floats = tuple(None if torch.is_tensor(v) else v for v in params)
        ctx.save_for_backward(target, weight, *residuals,
                              *(v if torch.is_tensor(v) else None for v in params))
        return value

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        target, weight, log_p, main, reg, denominator, *tensor_params = ctx.saved_tensors
        params = tuple(f if t is None else t for f, t in zip(ctx.floats, tensor_params))
        with torch.autocast(log_p.device.type, enabled=False):
            d_logits, d_params = _math.backward(xp, ctx.spec, (log_p, main, reg, denominator),
                                                target, weight, params, grad, ctx.logits_dtype)
        d_params = tuple(
            None if d is None or not ctx.needs_input_grad[4 + i] else d.to(params[i].dtype)
            for i, d in enumerate(d_params)
        )
        return None, d_logits, None, None, *d_params


def loss(xp_: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any, params: tuple) -> Any:
    return _Loss.apply(spec, logits, target, weight, *params)
