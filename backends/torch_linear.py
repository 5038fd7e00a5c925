"""torch: the linear-head losses as a ``torch.autograd.Function``.

With reduction "mean" or "sum" and a gradient wanted, the forward forms the gradients of
the loss while each chunk of logits is in hand (three matmuls a chunk, as the naive
forward plus backward), and the first backward scales them by the cotangent in place and
hands them out (a second backward, after ``retain_graph=True``, recomputes them). With
"none" the backward recomputes each chunk for its per-row cotangents. Gradients reach
``hidden``, ``classifier``, ``bias``, a soft target that requires grad and every weight or
base passed as a tensor. Double backward (``create_graph=True``) is refused for now: the
backward is not itself written as differentiable torch operations.
"""

from __future__ import annotations

from typing import Any

import array_api_compat.torch as xp
import torch

from entroloss._math import Scalars, compute_dtype, linear

from . import explicit_linear, kernels_for
from .torch import constants

_KERNELS = kernels_for(xp)
_FIRST_SCALAR = 7  # the Function's inputs: call, grad_mode, hidden, classifier, bias, target, weight


class _LinearLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, call, grad_mode, hidden, classifier, bias, target, weight, *scalars):
        needs = ctx.needs_input_grad
        wants = linear.Wants(needs[2], needs[3], needs[4], target=needs[5])
        fused = grad_mode and any(needs) and call.spec.reduction != "none"
        batch = linear.batch(hidden, classifier, bias, target, weight, Scalars(*scalars),
                             call.sample_weight)
        with torch.autocast(hidden.device.type, enabled=False):
            value, denominator, grads = linear.forward(xp, _KERNELS, call.spec, batch,
                                                       with_grads=fused, wants=wants,
                                                       keep=call.keep,
                                                       denominator=call.denominator)
        ctx.call, ctx.wants, ctx.grads, ctx.denominator = call, wants, grads, denominator
        ctx.floats = Scalars(*(None if torch.is_tensor(v) else v for v in scalars))
        # the inputs cost no memory to keep: a backward after the first (retain_graph=True)
        # recomputes from them, the fused gradients being handed out by the first
        ctx.save_for_backward(hidden, classifier, bias, target, weight,
                              *(v if torch.is_tensor(v) else None for v in scalars))
        return value

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "the linear-head losses do not support double backward (create_graph=True) "
                "yet; use the plain loss on hidden @ classifier.T + bias for second order")
        call = ctx.call
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.grads is not None:
                g = grad.to(compute_dtype(xp, grad.dtype))
                grads = _scale_in_place(ctx.grads, g)  # the forward's are the reduced loss's
                ctx.grads = None  # handed out: the graph keeps no second reference
            else:
                grads = _recompute(ctx, grad)
        wanted = ctx.needs_input_grad[_FIRST_SCALAR:]
        d_scalars = tuple(None if d is None or not want else d.to(v.dtype) for d, want, v in
                          zip(grads.scalars, wanted, call.scalars, strict=True))
        return (None, None, grads.hidden, grads.classifier, grads.bias, grads.target, None,
                *d_scalars)


def _scale_in_place(grads: linear.HeadGradients, factor: Any) -> linear.HeadGradients:
    for g in (grads.hidden, grads.classifier, grads.bias, grads.target):
        if g is not None:
            g.mul_(factor)  # a 0-d factor keeps g's dtype
    return grads._replace(scalars=Scalars(*(None if d is None else d * factor
                                            for d in grads.scalars)))


def _recompute(ctx: Any, grad: Any) -> linear.HeadGradients:
    hidden, classifier, bias, target, weight, *tensors = ctx.saved_tensors
    scalars = Scalars(*(f if t is None else t for f, t in zip(ctx.floats, tensors, strict=True)))
    batch = linear.batch(hidden, classifier, bias, target, weight, scalars,
                         ctx.call.sample_weight)
    return linear.backward(xp, _KERNELS, ctx.call.spec, batch, grad, ctx.denominator,
                           wants=ctx.wants, keep=ctx.call.keep)


def loss(call: Any) -> Any:
    constants(weight=call.weight, sample_weight=call.sample_weight,
              denominator=call.denominator)
    head = call.head
    return _LinearLoss.apply(call, torch.is_grad_enabled(), call.hidden, head.classifier,
                             head.bias, call.target, call.weight, *call.scalars)


def value_and_grad(call: Any) -> tuple:
    """The explicit path, kept off torch's autograd graph."""
    with torch.no_grad():
        return explicit_linear.value_and_grad(call)
