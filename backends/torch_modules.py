"""The losses as ``torch.nn.Module``s, one class per entry of ``entroloss._losses``,
with the defaults of ``torch.nn.CrossEntropyLoss`` (a drop-in replacement for it)."""

from __future__ import annotations

import inspect
import math

import torch

from entroloss import _losses

__all__ = [d.module for d in _losses.LOSSES]  # one class per entry of the registry, generated below


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))  # log(exp(y) - 1), stable for large y


class _LossModule(torch.nn.Module):
    """A loss as an ``nn.Module``, with ``torch.nn.CrossEntropyLoss``'s conventions: the
    class weights may come first, ``ignore_index=-100`` (for class-index targets; soft
    targets ignore it, as torch's do), and the classes along dimension 1 (0 for a 1-d
    input). Other options are the function's keyword arguments (``axis=`` too).

    With ``learnable=True`` every weight and base of the loss becomes an ``nn.Parameter``
    ``raw_<name>`` under a parametrisation that keeps it valid: ``weight = softplus(raw)``
    (> 0) and ``base = 1 + softplus(raw)`` (> 1). The current values are :meth:`scalars`.
    """

    definition: _losses.LossDef  # which loss

    def __init__(self, weight: torch.Tensor | None = None, *, ignore_index: int | None = -100,
                 learnable: bool = False, **options):
        super().__init__()
        import entroloss

        d = self.definition
        self._fn = getattr(entroloss, d.name)
        values = {name: options.pop(name, d.scalar_default(name)) for name in d.scalars}
        self.ignore_index = ignore_index
        self.options = options
        self.learnable = learnable
        self.register_buffer("weight", weight)
        if learnable:
            for name, value in values.items():
                self._learn(name, value)
        else:
            self.fixed = values

    def _learn(self, name: str, value: object) -> None:
        floor = 1.0 if name in self.definition.bases else 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= floor:
            raise ValueError(
                f"{name} must be a number > {floor:g} to be learnt (base = 1 + softplus(raw), "
                f"weight = softplus(raw)), got {value!r}"
            )
        raw = torch.tensor(_inverse_softplus(float(value) - floor))
        self.register_parameter(f"raw_{name}", torch.nn.Parameter(raw))

    def scalars(self) -> dict:
        """The weights and bases as they enter the loss now."""
        if not self.learnable:
            return dict(self.fixed)
        out = {}
        for name in self.definition.scalars:
            value = torch.nn.functional.softplus(getattr(self, f"raw_{name}"))
            out[name] = 1.0 + value if name in self.definition.bases else value
        return out

    def values(self) -> dict:
        """The weights and bases now, as Python floats (for logs and plots)."""
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                for k, v in self.scalars().items()}

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        scalars = self.scalars()
        if self.learnable:
            scalars = {k: v.to(input.device) for k, v in scalars.items()}
        options = dict(self.options)
        options.setdefault("axis", 1 if input.ndim > 1 else 0)  # torch's class dimension
        if self.ignore_index is not None:
            if not torch.is_floating_point(target):
                options["ignore_index"] = self.ignore_index
            elif self.ignore_index >= 0:  # torch's rule: only its negative default passes
                raise ValueError(f"ignore_index={self.ignore_index} is not supported for a "
                                 f"floating-point (probability) target, as in torch")
        return self._fn(input, target, weight=self.weight, **scalars, **options)

    def extra_repr(self) -> str:
        shown = {k: round(v, 4) for k, v in self.values().items()}
        options = {**shown, "ignore_index": self.ignore_index, **self.options}
        return ", ".join(f"{k}={v}" for k, v in options.items())


def _docstring(d: _losses.LossDef) -> str:
    own = [f"    {s.name}: {s.doc}" for s in d.parameters]
    own += [f"    {o.name}: {o.doc}" for o in d.options]
    learnt = ", ".join(f"``{name}``" for name in d.scalars)
    return "\n".join([
        f"`entroloss.{d.name}` as a ``torch.nn.Module``: {d.summary}",
        "",
        "Conventions of ``torch.nn.CrossEntropyLoss``: the class weights may come first, "
        "``ignore_index=-100`` (class-index targets), the classes along dimension 1 (0 for a "
        "1-d input).",
        "",
        "Args:",
        "    weight: class weights ``(C,)`` or None (a buffer of the module).",
        *own,
        "    ignore_index: class index whose positions are left out; None: none.",
        f"    learnable: make {learnt} ``nn.Parameter``s (see the class `_LossModule`).",
        f"    **options: any other keyword of `entroloss.{d.name}` (``label_smoothing``, "
        "``reduction``, ``axis``, ...).",
    ])


def _signature(d: _losses.LossDef) -> inspect.Signature:
    kw = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter("weight", inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                default=None, annotation="torch.Tensor | None")]
    params += [inspect.Parameter(s.name, kw, default=s.default, annotation="float")
               for s in d.parameters]
    params += [inspect.Parameter(o.name, kw, default=o.default, annotation="float")
               for o in d.options]
    params += [inspect.Parameter("ignore_index", kw, default=-100, annotation="int | None"),
               inspect.Parameter("learnable", kw, default=False),
               inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD)]
    return inspect.Signature(params)


def _module(d: _losses.LossDef) -> type:
    """The module class of registry entry ``d``."""
    cls = type(d.module, (_LossModule,), {"definition": d, "__doc__": _docstring(d),
                                          "__module__": __name__, "__qualname__": d.module})
    cls.__signature__ = _signature(d)  # type: ignore[attr-defined]
    return cls


for _d in _losses.LOSSES:
    globals()[_d.module] = _module(_d)
