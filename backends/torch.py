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

from . import kernels_for, torch_kernels, torch_modules, torch_native, torch_plans

# the nn.Module losses, one per entry of the registry, importable from here too
globals().update({name: getattr(torch_modules, name) for name in torch_modules.__all__})
__all__ = ["loss", "bind", "value_and_grad", *torch_modules.__all__]

_SCALARS = len(_math.Scalars._fields)  # the Function's last inputs
_RESIDUALS = len(_math.Residuals._fields)
_KERNELS = kernels_for(xp)  # loaded with the adapter: torch.compile cannot trace an import
_AUTOGRAD_KERNELS = torch_kernels.AUTOGRAD_KERNELS

# The largest logits (in elements) whose loss torch's own autograd differentiates through
# ``_math.forward`` (no autograd.Function), by the regularizer. Below it a call is per-op
# overhead: the Function's backward is a Python call the engine makes, while autograd
# runs the forward's few ops' derivatives as C++ nodes. Above it the Function wins on
# memory (it keeps the logits and numbers per position; autograd keeps several
# logits-sized intermediates) and on time. The entropy's and the reverse term's autograd
# graphs run several more logits-sized backward nodes (p log p, exp): the Function is
# faster for them at every size measured, 32x10 up (1.08-1.68x), so they never take
# autograd. Measured on CPU, torch on one thread, bound calls (both paths replay their
# recorded ops: ``bind``), autograd / Function forward+backward (docs/performance.md).
AUTOGRAD_MAX_ELEMENTS = 2**13  # cross entropy: 1.00x at 256x10, 1.03x at 128x100, 1.12x at 256x128
AUTOGRAD_MAX_ELEMENTS_REGULARIZED = {"poly": 2**12,  # 0.97x at 256x10, 1.10x at 128x100
                                     "entropy": 0, "reverse": 0}
# The same where log p is torch's log_softmax (``torch_native.applies``: CPU, float32 or
# float64), by cross entropy's options beyond what ``nll_loss`` takes (label smoothing,
# class weights) and by regularizer. With one native op for the row statistics, autograd
# is faster than the Function at every size measured to 1024x512 for cross entropy
# (0.58-0.87x) and the polynomial term (0.72-1.00x); the limit keeps the Function's memory
# (no logits-sized intermediates) above 2**16 elements. The entropy and the reverse term
# stay with the Function: their floored log p costs autograd two logits-sized backward
# ops (1.02-1.50x the Function's time, 256x10 up).
NATIVE_AUTOGRAD_MAX_ELEMENTS = {None: 2**16, "poly": 2**16, "entropy": 0, "reverse": 0}


def uses_autograd(spec: _math.Spec, logits: Any) -> bool:
    """Whether a call is differentiated by torch's autograd through ``_math.forward``
    (True) or by the ``autograd.Function`` around the shared backward: by the logits'
    size and the options alone, so that one call always takes one path.

    ``chunk_size`` asks for bounded memory, which only the Function keeps. A focal main
    term (``gamma != 0``: focal, adaptive CE) keeps the Function at every size: the
    plain derivative of ``-(1 - p)^gamma log p`` is NaN at a masked class and at a
    saturated prediction, where the hand-derived backward (``terms.focal_slopes``) is
    finite (tests/test_extremes.py). Cross entropy, the entropy, the reverse cross
    entropy, the polynomial term, the cap and the z-loss differentiate finitely."""
    if torch_native.applies(spec, logits):
        most = NATIVE_AUTOGRAD_MAX_ELEMENTS[spec.regularizer]
    elif spec.regularizer is None:
        most = AUTOGRAD_MAX_ELEMENTS
    else:
        most = AUTOGRAD_MAX_ELEMENTS_REGULARIZED[spec.regularizer]
    # class slices all-reduce their row sums in place, which autograd cannot differentiate
    return (spec.chunk_size is None and spec.gamma == 0 and spec.classes is None
            and logits.numel() <= most)


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
        with _no_autocast(grad.device.type):
            if torch.is_grad_enabled():
                grads = _differentiated_backward(ctx.spec, residuals, target, weight, scalars,
                                                 grad, ctx.logits_dtype, want_target,
                                                 sample_weight, denominator)
            else:
                grads = _math.backward(xp, ctx.spec, residuals, target, weight, scalars, grad,
                                       ctx.logits_dtype, _KERNELS, want_target=want_target,
                                       sample_weight=sample_weight)
        wanted = ctx.needs_input_grad[-_SCALARS:]
        d_scalars = tuple(None if d is None or not want else d.to(v.dtype)
                          for d, want, v in zip(grads.scalars, wanted, scalars, strict=True))
        d_target = grads.target.to(target.dtype) if want_target else None
        return None, grads.logits, d_target, None, None, None, *d_scalars


def _differentiated_backward(spec: _math.Spec, residuals: _math.Residuals, target: Any,
                             weight: Any, scalars: _math.Scalars, grad: Any, logits_dtype: Any,
                             want_target: bool, sample_weight: Any,
                             denominator: Any) -> _math.Gradients:
    """The backward under ``create_graph=True``: torch differentiates the shared backward
    itself, so the forward is run again where autograd sees how its residuals depend on
    the logits and scalars, with the out-of-place definitions as kernels."""
    if spec.classes is not None:
        raise RuntimeError(
            "double backward (create_graph=True) is not supported with class_group: "
            "the collectives of the class slices are not differentiated")
    _, residuals = _math.forward(xp, spec, residuals.logits, target, weight, scalars,
                                 _math.GENERIC, sample_weight=sample_weight,
                                 denominator=denominator)
    return _math.backward(xp, spec, residuals, target, weight, scalars, grad, logits_dtype,
                          _math.GENERIC, want_target=want_target, sample_weight=sample_weight)


def _keep(ctx: Any, values: tuple) -> None:
    """The tensors among ``values`` through ``save_for_backward`` (version checks,
    saved-tensor hooks), the rest (None, Python numbers) on ``ctx`` as they are."""
    ctx.tensor_at = tuple(map(torch.is_tensor, values))
    ctx.constants = tuple(None if tensor else v for tensor, v in zip(ctx.tensor_at, values, strict=True))
    ctx.save_for_backward(*(v for tensor, v in zip(ctx.tensor_at, values, strict=True) if tensor))


def _kept(ctx: Any) -> list:
    """The values given to :func:`_keep`, in their order."""
    saved = iter(ctx.saved_tensors)
    return [next(saved) if tensor else c for tensor, c in zip(ctx.tensor_at, ctx.constants, strict=True)]


def _no_autocast(device_type: str) -> Any:
    """Autocast switched off, where it is on (entering the context costs a call's worth)."""
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def loss(xp_: Any, spec: _math.Spec, logits: Any, target: Any, weight: Any,
         scalars: _math.Scalars, *, sample_weight: Any = None, denominator: Any = None) -> Any:
    constants(weight=weight, sample_weight=sample_weight, denominator=denominator)
    if (weight is None and sample_weight is None and denominator is None
            and torch_native.is_cross_entropy(spec, scalars, logits, target)):
        value = torch_native.cross_entropy(spec, logits, target)
        if value is not None:
            return value
    return _math_loss(spec, logits, target, weight, scalars, sample_weight, denominator)


def _math_loss(spec: _math.Spec, logits: Any, target: Any, weight: Any, scalars: _math.Scalars,
               sample_weight: Any, denominator: Any) -> Any:
    """The loss by the shared math: under torch's autograd (log p by ``log_softmax``
    where ``torch_native`` says it is the definition's) or through the Function."""
    if uses_autograd(spec, logits):
        lp = torch_native.log_p(logits) if torch_native.applies(spec, logits) else None
        with _no_autocast(logits.device.type):
            return _math.forward(xp, spec, logits, target, weight, scalars, _AUTOGRAD_KERNELS,
                                 sample_weight=sample_weight, denominator=denominator,
                                 log_p=lp)[0]
    return _Loss.apply(spec, logits, target, weight, sample_weight, denominator, *scalars)


# --- a repeated call, bound (``_prepare.remember_call``) ----------------------------------


def bind(xp_: Any, spec: _math.Spec, logits: Any, target: Any, scalars: _math.Scalars,
         denominator: Any) -> Any:
    """``run(logits, target)``, the loss of every call with this one's key (no class or
    sample weights, the scalars Python floats): the shared math's ops recorded from this
    call (``torch_plans``), under torch's autograd or inside the Function as
    :func:`loss` chooses. None where the call is not bound: arrays of a subclass, logits
    large enough that their Python is no part of their cost, or ops that cannot be
    replayed."""
    if (type(logits) is not torch.Tensor or type(target) is not torch.Tensor
            or logits is target or logits.numel() > torch_kernels.BLOCK_ELEMENTS
            or spec.chunk_size is not None):
        return None
    if denominator is None and torch_native.is_cross_entropy(spec, scalars, logits, target):
        def native(logits: Any, target: Any) -> Any:
            value = torch_native.cross_entropy(spec, logits, target)
            if value is None:  # a row of NaN log p: the math's numbers
                return _math_loss(spec, logits, target, None, scalars, None, None)
            return value
        return native
    if not uses_autograd(spec, logits):
        plans = _Plans.record(spec, logits, target, scalars, denominator)
        if plans is None:
            return None
        return lambda logits, target: _Replayed.apply(plans, logits, target)
    device = logits.device.type

    def forward(logits: Any, target: Any, lp: Any = None) -> Any:
        return _math.forward(xp, spec, logits, target, None, scalars, _AUTOGRAD_KERNELS,
                             denominator=denominator, log_p=lp)[0]
    if not torch_native.applies(spec, logits):
        plan = torch_plans.record(lambda: forward(logits, target), (logits, target))
        if plan is None:
            return None
        replay = plan.run

        def run(logits: Any, target: Any) -> Any:
            with _no_autocast(device):
                return replay(logits, target)
        return run
    # the ops after log p, recorded on this call's log_softmax (whatever its values: the
    # recording reads none); a call whose log p has a NaN row runs the math's own
    with torch.no_grad():
        recorded_lp = torch.log_softmax(logits, -1)
    plan = torch_plans.record(lambda: forward(logits, target, recorded_lp),
                              (logits, target, recorded_lp))
    if plan is None:
        return None
    replay_native = plan.run

    def run_native(logits: Any, target: Any) -> Any:
        lp = torch_native.log_p(logits)
        with _no_autocast(device):
            return forward(logits, target) if lp is None else replay_native(logits, target, lp)
    return run_native


class _Plans:
    """What the Function of one bound call runs: its forward as recorded ops, and its
    backward, recorded at its first use (one per kind of cotangent, with or without a
    soft target's gradient); and the Python values both were recorded with."""

    def __init__(self, spec: _math.Spec, scalars: _math.Scalars, denominator: Any,
                 logits_dtype: Any, forward: Any, residuals: tuple) -> None:
        self.spec, self.scalars, self.denominator = spec, scalars, denominator
        self.logits_dtype, self.forward = logits_dtype, forward
        # which residuals are tensors (saved for backward); the others, numbers or None,
        # are the recording's own
        self.tensor_at = tuple(isinstance(r, torch.Tensor) for r in residuals)
        self.constants = tuple(None if t else r for t, r in zip(self.tensor_at, residuals, strict=True))
        self.backwards: dict = {}

    @classmethod
    def record(cls, spec: _math.Spec, logits: Any, target: Any, scalars: _math.Scalars,
               denominator: Any) -> "_Plans | None":
        with _no_autocast(logits.device.type):
            forward = torch_plans.record(
                lambda: _math.forward(xp, spec, logits, target, None, scalars, _KERNELS,
                                      denominator=denominator), (logits, target))
            if forward is None:
                return None
            _, residuals = forward.run(logits, target)
        return cls(spec, scalars, denominator, logits.dtype, forward, residuals)

    def residuals(self, kept: Any) -> _math.Residuals:
        """The forward's residuals from their tensors (``kept``, in their order)."""
        tensors = iter(kept)
        return _math.Residuals(*(next(tensors) if t else c
                                 for t, c in zip(self.tensor_at, self.constants, strict=True)))

    def gradients(self, residuals: _math.Residuals, target: Any, grad: Any,
                  want_target: bool) -> tuple:
        """``(dl/dlogits, dl/dtarget or None)`` by the shared backward."""
        g = _math.backward(xp, self.spec, residuals, target, None, self.scalars, grad,
                           self.logits_dtype, _KERNELS, want_target=want_target)
        return g.logits, g.target

    def backward(self, kept: list, target: Any, grad: Any, want_target: bool) -> tuple:
        """:meth:`gradients`, by the backward's recorded ops where they could be recorded
        (else by the math itself, every time)."""
        inputs = (*kept, target, grad)
        if len({id(x) for x in inputs}) < len(inputs) or torch.compiler.is_compiling():
            # one tensor twice (the logits as their own soft target): this call's own, not
            # a recording for the key's other calls; and never a recording inside a trace
            return self.gradients(self.residuals(kept), target, grad, want_target)
        key = (want_target, grad.dtype, tuple(grad.shape))
        if key not in self.backwards:
            residuals = self.residuals(kept)
            self.backwards[key] = torch_plans.record(
                lambda: self.gradients(residuals, target, grad, want_target), inputs)
        recorded = self.backwards[key]
        if recorded is None:
            return self.gradients(self.residuals(kept), target, grad, want_target)
        return recorded.run(*inputs)


class _Replayed(torch.autograd.Function):
    """The Function of a bound call: its forward and backward are the recorded ops of
    ``_math.forward`` and ``_math.backward`` (:class:`_Plans`), with as little Python
    around them as a Function has (no weights, the scalars Python floats);
    ``create_graph=True`` differentiates the shared backward, as :class:`_Loss` does."""

    @staticmethod
    def forward(ctx, plans, logits, target):
        with _no_autocast(logits.device.type):
            value, residuals = plans.forward.run(logits, target)
        ctx.plans = plans
        ctx.save_for_backward(target, *(r for r, t in zip(residuals, plans.tensor_at, strict=True) if t))
        return value

    @staticmethod
    def backward(ctx, grad):
        plans = ctx.plans
        target, *kept = ctx.saved_tensors
        want_target = ctx.needs_input_grad[2]
        with _no_autocast(grad.device.type):
            if torch.is_grad_enabled():
                grads = _differentiated_backward(
                    plans.spec, plans.residuals(kept), target, None, plans.scalars, grad,
                    plans.logits_dtype, want_target, None, plans.denominator)
                d_logits, d_target = grads.logits, grads.target
            else:
                d_logits, d_target = plans.backward(kept, target, grad, want_target)
        return None, d_logits, d_target.to(target.dtype) if want_target else None


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
