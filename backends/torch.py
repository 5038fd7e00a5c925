"""torch: the shared forward/backward as a ``torch.autograd.Function``, and ``nn.Module``s.

The forward and backward are ``entroloss._math``'s, run on torch tensors through
array-api-compat's torch namespace. Gradients reach the logits and every weight or base
passed as a tensor. Second derivatives are not supported: a backward asked to build a
graph (``create_graph=True``) raises, rather than silently dropping a term.
"""

from __future__ import annotations

import math
from typing import Any

import array_api_compat.torch as xp
import torch

from entroloss import _math


# torch kernels for _math's primitives (see _math.NATIVE): the same results with fewer
# full-size temporaries, each a pass over memory and, on CPU, fresh pages to fault in.
# They run only inside _Loss below, where torch's autograd does not differentiate them.


def _sum_exp_shifted(xp_: Any, z: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.sub(z, m).exp_().sum(dim=-1, keepdim=True)


def _log_p(xp_: Any, z: torch.Tensor, m: torch.Tensor, lt: torch.Tensor) -> torch.Tensor:
    return torch.sub(z, m).sub_(lt)


def _finite_log_p(xp_: Any, log_p: torch.Tensor) -> torch.Tensor:
    # _math's where(log_p < floor, floor, log_p), in place on the forward's own fresh log p
    return log_p.clamp_(min=-math.sqrt(torch.finfo(log_p.dtype).max))


def _mass_off_target(xp_: Any, log_p: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_p).scatter_(-1, index, 0.0).sum(dim=-1)


def _sum_p_log_p(xp_: Any, log_p: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_p).mul_(log_p).sum(dim=-1)


def _softmax_affine(xp_: Any, z: torch.Tensor, m: torch.Tensor, lt: torch.Tensor,
                    alpha: torch.Tensor, index: torch.Tensor, beta: torch.Tensor,
                    log_p_scale: torch.Tensor | None = None) -> torch.Tensor:
    # p = exp(z - m) / exp(lt), built in the buffer that becomes the gradient
    out = torch.sub(z, m).exp_()
    if log_p_scale is None:
        out.mul_(alpha / torch.exp(lt))
    else:
        factor = _finite_log_p(xp_, _log_p(xp_, z, m, lt)).mul_(log_p_scale.unsqueeze(-1)).add_(alpha)
        out.mul_(factor.div_(torch.exp(lt)))
    return out.scatter_add_(-1, index, beta.unsqueeze(-1).to(out.dtype))


_math.NATIVE[xp.__name__] = {"sum_exp_shifted": _sum_exp_shifted, "log_p": _log_p,
                             "finite_log_p": _finite_log_p, "sum_p_log_p": _sum_p_log_p,
                             "mass_off_target": _mass_off_target,
                             "softmax_affine": _softmax_affine}


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
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: a second derivative was asked for
            raise RuntimeError(
                "entroloss losses are differentiable once on torch: the backward is the "
                "shared hand-derived one, which is not itself differentiated "
                "(create_graph=True / double backward is not supported)"
            )
        target, weight, *saved = ctx.saved_tensors
        residuals, tensor_params = tuple(saved[:-4]), saved[-4:]
        params = tuple(f if t is None else t for f, t in zip(ctx.floats, tensor_params))
        with torch.autocast(grad.device.type, enabled=False):
            d_logits, d_params = _math.backward(xp, ctx.spec, residuals, target, weight, params,
                                                grad, ctx.logits_dtype)
        d_params = tuple(
            None if d is None or not ctx.needs_input_grad[4 + i] else d.to(params[i].dtype)
            for i, d in enumerate(d_params)
        )
        return None, d_logits, None, None, *d_params


def loss(xp_: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any, params: tuple) -> Any:
    for name, tensor in (("target", target), ("weight", weight)):
        if tensor is not None and tensor.requires_grad:
            raise ValueError(
                f"{name} requires grad, but entroloss differentiates only the logits and the "
                f"weights and bases; pass {name}.detach()"
            )
    return _Loss.apply(spec, logits, target, weight, *params)


def value_and_grad(*args: Any) -> tuple:
    """The explicit path, kept off torch's autograd graph."""
    from . import explicit

    with torch.no_grad():
        return explicit.value_and_grad(*args)


# --- nn.Module conveniences ----------------------------------------------------------------


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


class _LossModule(torch.nn.Module):
    """A loss as an ``nn.Module``. Options are the function's keyword arguments.

    With ``learnable=True`` every weight and base of the loss becomes an ``nn.Parameter``
    under a parametrisation that keeps it valid: ``weight = softplus(raw)`` (> 0) and
    ``base = 1 + softplus(raw)`` (> 1). The current values are :meth:`scalars`.
    """

    _function = None  # the entroloss loss
    _scalars: dict = {}  # name -> default, for the weights and bases the loss takes

    def __init__(self, *, learnable: bool = False, weight: torch.Tensor | None = None, **options):
        super().__init__()
        import entroloss

        self._fn = getattr(entroloss, self._function)
        values = {name: options.pop(name, default) for name, default in self._scalars.items()}
        self.options = options
        self.learnable = learnable
        self.register_buffer("weight", weight)
        if learnable:
            for name, value in values.items():
                floor = 1.0 if name.endswith("base") else 0.0
                if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= floor:
                    raise ValueError(
                        f"{name} must be a number > {floor:g} to be learnt (base = 1 + softplus(raw), "
                        f"weight = softplus(raw)), got {value!r}"
                    )
                raw = torch.tensor(_inverse_softplus(float(value) - floor))
                self.register_parameter(f"raw_{name}", torch.nn.Parameter(raw))
        else:
            self.fixed = values

    def scalars(self) -> dict:
        """The weights and bases as they enter the loss now."""
        if not self.learnable:
            return dict(self.fixed)
        out = {}
        for name in self._scalars:
            value = torch.nn.functional.softplus(getattr(self, f"raw_{name}"))
            out[name] = 1.0 + value if name.endswith("base") else value
        return out

    def values(self) -> dict:
        """The weights and bases now, as Python floats (for logs and plots)."""
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                for k, v in self.scalars().items()}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scalars = self.scalars()
        if self.learnable:
            scalars = {k: v.to(logits.device) for k, v in scalars.items()}
        return self._fn(logits, target, weight=self.weight, **scalars, **self.options)

    def extra_repr(self) -> str:
        shown = {k: round(v, 4) for k, v in self.values().items()}
        return ", ".join(f"{k}={v}" for k, v in {**shown, **self.options}.items())


class CrossEntropyLoss(_LossModule):
    """`entroloss.cross_entropy` as a module; `learnable=True` learns `base`."""

    _function, _scalars = "cross_entropy", {"base": math.e}


class MinEntLoss(_LossModule):
    """`entroloss.min_ent` as a module; `learnable=True` learns `ce_weight`,
    `entropy_weight`, `ce_base` and `entropy_base`."""

    _function = "min_ent"
    _scalars = {"ce_weight": 1.0, "entropy_weight": 1.0, "ce_base": math.e, "entropy_base": math.e}


class MixEntLoss(_LossModule):
    """`entroloss.mix_ent` as a module; `learnable=True` learns `ce_weight`,
    `reverse_weight`, `ce_base` and `reverse_base`."""

    _function = "mix_ent"
    _scalars = {"ce_weight": 1.0, "reverse_weight": 1.0, "ce_base": math.e, "reverse_base": math.e}


class AdaptiveCELoss(_LossModule):
    """`entroloss.adaptive_ce` as a module; `learnable=True` learns `base`."""

    _function, _scalars = "adaptive_ce", {"base": math.e}


class FocalLoss(_LossModule):
    """`entroloss.focal` as a module (pass `gamma=`); `learnable=True` learns `base`."""

    _function, _scalars = "focal", {"base": math.e}
