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
import math
from typing import Any

import array_api_compat.torch as xp
import torch

from entroloss import _math

from . import kernels_for, torch_kernels, torch_modules, torch_native, torch_plans

# the nn.Module losses, one per entry of the registry, importable from here too
globals().update({name: getattr(torch_modules, name) for name in torch_modules.__all__})
__all__ = ["loss", "bind", "tracing", "described", "value_and_grad", *torch_modules.__all__]

_SCALARS = len(_math.Scalars._fields)  # the Function's last inputs
_RESIDUALS = len(_math.Residuals._fields)
_KERNELS = kernels_for(xp)  # loaded with the adapter: torch.compile cannot trace an import
_AUTOGRAD_KERNELS = torch_kernels.AUTOGRAD_KERNELS
_UNMASKED_AUTOGRAD_KERNELS = torch_kernels.UNMASKED_AUTOGRAD_KERNELS

# The largest logits (in elements) whose loss torch's own autograd differentiates through
# ``_math.forward`` (no autograd.Function), by the regularizer. Below it a call is per-op
# overhead: the Function's backward is a Python call the engine makes, while autograd
# runs the forward's few ops' derivatives as C++ nodes. Above it the Function wins on
# memory (it keeps the logits and numbers per position; autograd keeps several
# logits-sized intermediates) and on time. The entropy's and the reverse term's autograd
# graphs run several more logits-sized backward nodes (p log p, exp, the floor's mask):
# with the math's own row statistics the Function is faster for them at every size
# measured, 32x10 up (1.08-1.68x). Measured on CPU, torch on one thread, bound calls
# (both paths replay their recorded ops: ``bind``), autograd / Function forward+backward
# (docs/performance.md).
AUTOGRAD_MAX_ELEMENTS = 2**13  # cross entropy: 1.00x at 256x10, 1.03x at 128x100, 1.12x at 256x128
AUTOGRAD_MAX_ELEMENTS_REGULARIZED = {"poly": 2**12,  # 0.97x at 256x10, 1.10x at 128x100
                                     "entropy": 0, "reverse": 0}
# The same where log p is torch's log_softmax (``torch_native.applies``: CPU, float32 or
# float64), by cross entropy's options beyond what ``nll_loss`` takes (label smoothing,
# class weights) and by regularizer, measured as above with unmasked logits (no -inf:
# the floor of log p is then the identity, ``_Autograd``). Cross entropy and the
# polynomial term: autograd faster at every size measured to 1024x512 (0.58-0.87x,
# 0.72-1.00x); the limit keeps the Function's memory (no logits-sized intermediates)
# above 2**16 elements. The entropy: 0.84-0.92x from 256x16 to 128x100, 1.09x at 256x128
# and up; the reverse term: 0.85-0.96x from 256x16 to 256x128, 1.04x at 512x256. At
# 256x10 both are 1.09-1.12x the Function's time alone (log_softmax is slow at 10
# classes) but faster inside the MLP's training step (benchmarks/step.py: MIN-ENT 1.06x
# the user's step against 1.09x, MIX-ENT 1.03x against 1.04x): autograd there too.
# The focal family (one-hot targets; ``_focal_finite``): 0.79-0.87x at 32x10, 128x100 and
# 256x128, 1.02-1.09x at 256x10, 0.94-0.97x at 512x256, 1.07-1.44x at 1024x512.
NATIVE_AUTOGRAD_MAX_ELEMENTS = {None: 2**16, "poly": 2**16, "entropy": 2**14, "reverse": 2**15}
NATIVE_FOCAL_AUTOGRAD_MAX_ELEMENTS = 2**16


def uses_autograd(spec: _math.Spec, logits: Any, native: bool | None = None) -> bool:
    """Whether a call is differentiated by torch's autograd through ``_math.forward``
    (True) or by the ``autograd.Function`` around the shared backward: by the logits'
    size and the options alone, so that one kind of call takes one path (but for the
    values a native log p or the focal family's autograd cannot take: :func:`_math_loss`).

    ``chunk_size`` asks for bounded memory, which only the Function keeps. A focal main
    term (``gamma != 0``: focal, adaptive CE) takes autograd only with torch's own log p,
    over one-hot targets without class weights or a regularizer, and only where the value
    is finite (:func:`_focal_finite`): the plain derivative of ``-(1 - p)^gamma log p`` is
    NaN at a masked target class (where the value is +inf), and over a soft or smoothed
    target at every masked class; the hand-derived backward (``terms.focal_slopes``) is
    finite there (tests/test_extremes.py). At a saturated prediction ``focal_factor``'s
    ``where`` keeps it finite. Cross entropy, the entropy, the reverse cross entropy, the
    polynomial term, the cap and the z-loss differentiate finitely. ``native``: whether
    log p is torch's (``torch_native.applies``, where None)."""
    # class slices all-reduce their row sums in place, which autograd cannot differentiate
    if spec.chunk_size is not None or spec.classes is not None:
        return False
    if torch_native.applies(spec, logits) if native is None else native:
        if spec.gamma == 0:
            most = NATIVE_AUTOGRAD_MAX_ELEMENTS[spec.regularizer]
        elif spec.soft or spec.label_smoothing or spec.regularizer is not None:
            return False
        else:
            most = NATIVE_FOCAL_AUTOGRAD_MAX_ELEMENTS
    elif spec.gamma != 0:
        return False
    elif spec.regularizer is None:
        most = AUTOGRAD_MAX_ELEMENTS
    else:
        most = AUTOGRAD_MAX_ELEMENTS_REGULARIZED[spec.regularizer]
    return logits.numel() <= most


def _focal_finite(value: Any) -> bool:
    """Whether torch's autograd differentiates the focal family's value (one-hot targets,
    no class weights) finitely: where it is finite (no usable target class masked; an
    ignored position's log p at its stand-in class is 0 before the focal factor sees it).
    One read of the value, a reduction and no sync on the CPU (``torch_native``'s calls
    only)."""
    return math.isfinite((value if value.ndim == 0 else value.sum()).item())


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
    """The loss by the shared math: under torch's autograd (:class:`_Autograd`) or
    through the Function (the focal family where autograd's derivative would not be
    finite, or with class weights)."""
    if uses_autograd(spec, logits) and (spec.gamma == 0 or weight is None):
        return _Autograd(spec, scalars, denominator, logits)(logits, target, weight, sample_weight)
    return _Loss.apply(spec, logits, target, weight, sample_weight, denominator, *scalars)


class _Autograd:
    """A call differentiated by torch's autograd through ``_math.forward``. Where
    ``torch_native`` applies, log p is torch's ``log_softmax`` (per call: not where a row
    of it is NaN) and, where no entry of it is below the math's floor of log p (no class
    masked, with -inf or ``finfo.min``), the floor is the identity
    (``torch_kernels.UNMASKED_AUTOGRAD_KERNELS``: the same numbers and derivatives without
    the clamp and its backward mask). A bound call (``record``) checks its target first
    (``check``) and records each of the three compositions at its first use, then
    replays it (``torch_plans``). A call that autograd does not take runs the Function."""

    def __init__(self, spec: _math.Spec, scalars: _math.Scalars, denominator: Any,
                 logits: Any, record: bool = False, check_target: Any = None) -> None:
        self.spec, self.scalars, self.denominator = spec, scalars, denominator
        self.check_target = check_target
        self.check = torch_native.target_check(spec, logits, check_target)
        self.native = torch_native.applies(spec, logits)  # (what a bound call's key holds)
        # where log p cannot be torch's (a NaN row), the call runs as it would without it
        self.exact = uses_autograd(spec, logits, native=False)
        # the focal family reads its value (_focal_finite), which a NaN row of log p makes
        # NaN where no position is ignored; and no floor of log p follows its main term
        self.read = spec.gamma == 0 or spec.ignore_index is not None
        self.plans: dict | None = {} if record else None
        self.device = logits.device.type  # (what a bound call's key holds)

    def __call__(self, logits: Any, target: Any, weight: Any = None,
                 sample_weight: Any = None) -> Any:
        """The value; by the Function where log p is not torch's and the call would not
        take autograd without it, or the focal family's value is not finite
        (:func:`_focal_finite`). (A bound call's path: every line is a share of a
        training step at these sizes.)"""
        if self.check is not None:
            self.check(target)
        spec = self.spec
        try:
            got = torch_native.log_p(logits, self.read) if self.native else None
            if got is not None or self.exact:
                if got is None:
                    with _no_autocast(self.device):
                        value = self._forward("math", (logits, target), weight, sample_weight)
                else:
                    # torch's log p is there only on the CPU in float32/float64, where
                    # autocast changes none of the ops that follow it (it casts neither
                    # dtype down): no question asked
                    kind = "masked" if got[1] else "unmasked"
                    plan = None if self.plans is None else self.plans.get(kind)
                    tensors = (logits, target, got[0])
                    value = (self._forward(kind, tensors, weight, sample_weight) if plan is None
                             else plan.run(*tensors))
                if spec.gamma == 0 or _focal_finite(value):
                    return value
            return _Loss.apply(spec, logits, target, weight, sample_weight, self.denominator,
                               *self.scalars)
        except torch_native.BAD_INDEX:
            if self.check_target is not None:
                self.check_target(target)  # an index out of range: our message
            raise

    def _forward(self, kind: str, tensors: tuple, weight: Any, sample_weight: Any) -> Any:
        """The composition of ``kind`` on ``(logits, target[, log p])``: replayed, recorded
        (a bound call's first of this kind) or run."""
        kernels = _UNMASKED_AUTOGRAD_KERNELS if kind == "unmasked" else _AUTOGRAD_KERNELS

        def forward() -> Any:
            logits, target, *lp = tensors
            return _math.forward(xp, self.spec, logits, target, weight, self.scalars, kernels,
                                 sample_weight=sample_weight, denominator=self.denominator,
                                 log_p=lp[0] if lp else None)[0]
        if self.plans is None:
            return forward()
        if kind not in self.plans:  # recorded on this call (the recording reads no value)
            self.plans[kind] = torch_plans.record(forward, tensors)
        plan = self.plans[kind]
        return forward() if plan is None else plan.run(*tensors)


# --- a repeated call, bound (``_prepare.remember_call``) ----------------------------------

# a bound call runs eagerly: torch.compile traces prepare (dynamo reads this as True)
tracing = torch.compiler.is_dynamo_compiling


def described(name: str, logits: Any, target: Any) -> tuple:
    """A bound call's key but its options (``_prepare.bound_key``): the loss's name, the
    tensors' types, dtypes, shapes and devices, the CPU as True (a ``torch.device`` is a
    new object per read and its hash a call: on a training step at these sizes they were
    half the lookup's time, docs/performance.md)."""
    return (name, type(logits), logits.dtype, logits.shape, logits.is_cpu or logits.device,
            type(target), target.dtype, target.shape, target.is_cpu or target.device)


def bind(xp_: Any, spec: _math.Spec, logits: Any, target: Any, scalars: _math.Scalars,
         denominator: Any, check_target: Any = None) -> Any:
    """``call(logits, target)``, the loss of every call with this one's key (no class or
    sample weights, the scalars Python floats) after ``check_target(target)`` (the
    target's data checks, or None; ``torch_native.target_check``'s): torch's own kernels
    where ``torch_native`` says, or the shared math's ops recorded from this call
    (``torch_plans``), under torch's autograd or inside the Function as :func:`loss`
    chooses. None where the call is not bound: arrays of a subclass, logits large enough
    that their Python is no part of their cost, or ops that cannot be replayed."""
    if (type(logits) is not torch.Tensor or type(target) is not torch.Tensor
            or logits is target or logits.numel() > torch_kernels.BLOCK_ELEMENTS
            or spec.chunk_size is not None):
        return None
    if denominator is None and torch_native.is_cross_entropy(spec, scalars, logits, target):
        return torch_native.bound_cross_entropy(
            spec, logits, check_target,
            lambda logits, target: _math_loss(spec, logits, target, None, scalars, None, None))
    if uses_autograd(spec, logits):
        return _Autograd(spec, scalars, denominator, logits, record=True,
                         check_target=check_target)
    plans = _Plans.record(spec, logits, target, scalars, denominator)
    if plans is None:
        return None
    if check_target is None:
        return lambda logits, target: _Replayed.apply(plans, logits, target)

    def replayed(logits: Any, target: Any) -> Any:
        check_target(target)  # (large logits: the check's Python is no part of their cost)
        return _Replayed.apply(plans, logits, target)
    return replayed


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
