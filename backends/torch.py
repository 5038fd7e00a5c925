"""torch: the shared forward/backward as a ``torch.autograd.Function``.

The forward and backward are ``entroloss._math``'s, run on torch tensors through
array-api-compat's torch namespace with the torch kernel table (``torch_kernels.py``).
Gradients reach the logits, a soft target and every weight or base passed as a tensor.
With ``create_graph=True`` torch differentiates the shared backward itself, so second
derivatives (``torch.autograd.grad(..., create_graph=True)``, gradient penalties,
``gradgradcheck``) are those of the same formula. The ``nn.Module`` losses are in
``torch_modules.py`` and importable from here.
"""

from __future__ import annotations

import contextlib
from typing import Any

import array_api_compat.torch as xp
import torch

from entroloss import _math

from . import kernels_for, torch_modules

# the nn.Module losses, one per entry of the registry, importable from here too
globals().update({name: getattr(torch_modules, name) for name in torch_modules.__all__})
__all__ = ["loss", "value_and_grad", *torch_modules.__all__]

_SCALARS = len(_math.Scalars._fields)  # the Function's last inputs
_RESIDUALS = len(_math.Residuals._fields)
_KERNELS = kernels_for(xp)  # loaded with the adapter: torch.compile cannot trace an import


class _Loss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec, logits, target, weight, sample_weight, denominator, *scalars):
        scalars = _math.Scalars(*scalars)
        with _no_autocast(logits.device.type):  # computed in the dtypes _math decides
            value, residuals = _math.forward(xp, spec, logits, target, weight, scalars, _KERNELS,
                                             sample_weight=sample_weight,
                                             denominator=denominator)
        ctx.spec, ctx.logits_dtype = spec, logits.dtype
        _keep(ctx, (target, weight, sample_weight, denominator, *residuals, *scalars))
        return value

    @staticmethod
    def backward(ctx, grad):
        target, weight, sample_weight, denominator, *kept = _kept(ctx)
        residuals = _math.Residuals(*kept[:_RESIDUALS])
        scalars = _math.Scalars(*kept[_RESIDUALS:])
        want_target = ctx.needs_input_grad[2]
        kernels = _KERNELS
        with _no_autocast(grad.device.type):
            if torch.is_grad_enabled():
                # create_graph=True: torch differentiates the shared backward itself, so the
                # forward is run again where autograd sees how its residuals depend on the
                # logits and scalars, with the out-of-place definitions as kernels
                kernels = _math.GENERIC
                _, residuals = _math.forward(xp, ctx.spec, residuals.logits, target, weight,
                                             scalars, kernels, sample_weight=sample_weight,
                                             denominator=denominator)
            grads = _math.backward(xp, ctx.spec, residuals, target, weight, scalars, grad,
                                   ctx.logits_dtype, kernels, want_target=want_target,
                                   sample_weight=sample_weight)
        wanted = ctx.needs_input_grad[-_SCALARS:]
        d_scalars = tuple(None if d is None or not want else d.to(v.dtype)
                          for d, want, v in zip(grads.scalars, wanted, scalars))
        d_target = grads.target.to(target.dtype) if want_target else None
        return None, grads.logits, d_target, None, None, None, *d_scalars


def _keep(ctx: Any, values: tuple) -> None:
    """The tensors among ``values`` through ``save_for_backward`` (version checks,
    saved-tensor hooks), the rest (None, Python numbers) on ``ctx`` as they are."""
    ctx.tensor_at = tuple(map(torch.is_tensor, values))
    ctx.constants = tuple(None if tensor else v for tensor, v in zip(ctx.tensor_at, values))
    ctx.save_for_backward(*(v for tensor, v in zip(ctx.tensor_at, values) if tensor))


def _kept(ctx: Any) -> list:
    """The values given to :func:`_keep`, in their order."""
    saved = iter(ctx.saved_tensors)
    return [next(saved) if tensor else c for tensor, c in zip(ctx.tensor_at, ctx.constants)]


def _no_autocast(device_type: str) -> Any:
    """Autocast switched off, where it is on (entering the context costs a call's worth)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def loss(xp_: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
         scalars: _math.Scalars, *, sample_weight: Any = None, denominator: Any = None) -> Any:
    constants(weight=weight, sample_weight=sample_weight, denominator=denominator)
    return _Loss.apply(spec, logits, target, weight, sample_weight, denominator, *scalars)


def constants(**arrays: Any) -> None:
    """Refuse a class weight, sample weight or denominator that requires grad: they are
    constants of the loss, and a gradient that silently never reaches them would be a
    silent wrong."""
    for name, value in arrays.items():
        if torch.is_tensor(value) and value.requires_grad:
            raise ValueError(
                f"{name} requires grad, but entroloss differentiates the logits, a soft "
                f"target and the weights and bases, not the class weights, sample weights "
                f"or denominator; pass {name}.detach()")


def value_and_grad(*args: Any, **options: Any) -> tuple:
    """The explicit path, kept off torch's autograd graph."""
    from . import explicit

    with torch.no_grad():
        return explicit.value_and_grad(*args, **options)
