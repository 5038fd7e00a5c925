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


# learnable= -> the parametrisation; True names the one that cannot switch the loss off
LEARNABLE = {False: False, True: "fixed_total", "fixed_total": "fixed_total", "raw": "raw"}


def _terms(definition: _losses.LossDef) -> tuple[tuple[str | None, str | None], ...]:
    """The (weight, base) public names of each term (cross entropy, then the regularizer);
    None where the loss has no such keyword (plain cross entropy has no weight)."""
    out = []
    for prefix in ("ce_", "reg_"):
        names = {slot: name for name, slot in definition.scalars.items() if slot.startswith(prefix)}
        if names:
            out.append((names.get(prefix + "weight"), names.get(prefix + "base")))
    return tuple(out)


class _LossModule(torch.nn.Module):
    """A loss as an ``nn.Module``, with ``torch.nn.CrossEntropyLoss``'s conventions: the
    class weights may come first, ``ignore_index=-100`` (for class-index targets; soft
    targets ignore it, as torch's do), and the classes along dimension 1 (0 for a 1-d
    input). Other options are the function's keyword arguments (``axis=`` too).

    ``learnable`` makes every weight and base an ``nn.Parameter`` ``raw_<name>``, kept
    valid by ``weight = softplus(raw)`` (> 0) and ``base = 1 + softplus(raw)`` (> 1); the
    values given are where they start, :meth:`scalars` what enters the loss now. A term
    ``T_k`` enters as ``c_k T_k`` with ``c_k = weight_k / ln base_k``.

    - ``learnable=True`` (``"fixed_total"``): the coefficients keep their starting total
      ``K = sum_k c_k``; what is learnt is the split ``s_k = c_k / K``, and the loss adds
      ``KL(s0 || s) = sum_k s0_k log(s0_k / s_k)``, ``s0`` the starting split. The fixed
      total keeps the model's gradient at the scale it starts with (plain SGD keeps its
      step size); the KL term, infinite as any ``s_k -> 0``, keeps every term switched on
      (without it the split would go all to the smaller term). A weight and its base enter
      only through ``c_k``: they are not separately identifiable, and move as a pair. The
      value is the loss plus that KL (equal to the loss at the start). A one-term loss
      (``cross_entropy``, ``adaptive_ce``, ``focal``) has nothing left to learn: its base
      stays where it starts. ``reduction`` "mean" or "sum".
    - ``learnable="raw"``: the MIN-ENT/MIX-ENT paper's parametrisation, the loss alone.
      Minimised over its own weights and bases it drives every weight to 0 and every base
      up (``dl/dweight = T / ln b >= 0``): it switches the loss off, and under SGD the
      model stops learning. For reproducing the paper, not for training.
    - ``learnable=False`` (default): fixed weights and bases, plain floats.
    """

    definition: _losses.LossDef  # which loss
    # buffers of learnable="fixed_total" (declared: Module.__getattr__ is Tensor | Module)
    total: torch.Tensor
    start_split: torch.Tensor

    def __init__(self, weight: torch.Tensor | None = None, *, ignore_index: int | None = -100,
                 learnable: bool | str = False, **options):
        super().__init__()
        import entroloss

        d = self.definition
        mode = LEARNABLE.get(learnable) if isinstance(learnable, (bool, str)) else None
        if mode is None:
            raise ValueError(f"learnable must be False, True, 'fixed_total' or 'raw', got {learnable!r}")
        if mode == "fixed_total" and options.get("reduction", "mean") == "none":
            raise ValueError("learnable=True adds its KL term to the reduced loss: reduction "
                             "must be 'mean' or 'sum', got 'none' (learnable='raw' takes it)")
        self._fn = getattr(entroloss, d.name)
        values = {name: options.pop(name, d.scalar_default(name)) for name in d.scalars}
        self.ignore_index = ignore_index
        self.options = options
        self.learnable = mode
        self.register_buffer("weight", weight)
        if not mode:
            self.fixed = values
            return
        for name, value in values.items():
            self._learn(name, value)
        if mode == "fixed_total":
            with torch.no_grad():
                coefficients = self._coefficients()[0]
            self.register_buffer("total", coefficients.sum())
            self.register_buffer("start_split", coefficients / coefficients.sum())

    def _learn(self, name: str, value: object) -> None:
        floor = 1.0 if name in self.definition.bases else 0.0
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= floor:
            raise ValueError(
                f"{name} must be a number > {floor:g} to be learnt (base = 1 + softplus(raw), "
                f"weight = softplus(raw)), got {value!r}"
            )
        raw = torch.tensor(_inverse_softplus(float(value) - floor))
        self.register_parameter(f"raw_{name}", torch.nn.Parameter(raw))

    def _coefficients(self) -> tuple[torch.Tensor, list]:
        """Each term's ``c_k = weight / ln base`` from the parameters, and its ``ln base``."""
        coefficients, logs = [], []
        sp = torch.nn.functional.softplus
        for weight, base in _terms(self.definition):
            log_base = torch.log1p(sp(getattr(self, f"raw_{base}"))) if base else torch.ones(())
            w = sp(getattr(self, f"raw_{weight}")) if weight else torch.ones(())
            coefficients.append(w / log_base)
            logs.append(log_base)
        return torch.stack(coefficients), logs

    def split(self) -> torch.Tensor:
        """``learnable=True``: each term's share of the fixed total (sums to 1)."""
        coefficients = self._coefficients()[0]
        return coefficients / coefficients.sum()

    def scalars(self) -> dict:
        """The weights and bases as they enter the loss now."""
        if not self.learnable:
            return dict(self.fixed)
        out = {}
        for name in self.definition.scalars:
            value = torch.nn.functional.softplus(getattr(self, f"raw_{name}"))
            out[name] = 1.0 + value if name in self.definition.bases else value
        if self.learnable == "fixed_total":  # the weights rescaled to the fixed total
            coefficients, logs = self._coefficients()
            scaled = self.total * coefficients / coefficients.sum()
            for (weight, base), c, log_base in zip(_terms(self.definition), scaled, logs, strict=True):
                if weight:
                    out[weight] = c * log_base
                elif base:  # a one-term loss: c is the total, so the base keeps its start
                    out[base] = torch.exp(1.0 / c)
        return out

    def values(self) -> dict:
        """The weights and bases now, as Python floats (for logs and plots)."""
        return {k: float(v.detach()) if torch.is_tensor(v) else float(v)
                for k, v in self.scalars().items()}

    def penalty(self) -> torch.Tensor | float:
        """What ``learnable=True`` adds to the loss: ``KL(start split || split)`` (0 when
        the split is where it started, or without ``learnable=True``)."""
        if self.learnable != "fixed_total":
            return 0.0
        return self._divergence_from_start()

    def _divergence_from_start(self) -> torch.Tensor:
        start = self.start_split
        return torch.sum(start * (torch.log(start) - torch.log(self.split())))

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
        loss = self._fn(input, target, weight=self.weight, **scalars, **options)
        if self.learnable == "fixed_total":
            loss = loss + self._divergence_from_start().to(device=loss.device, dtype=loss.dtype)
        return loss

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
        f"    learnable: ``True`` learns {learnt} as ``nn.Parameter``s that split a fixed "
        "total between the terms (they cannot switch the loss off); ``\"raw\"`` the papers' "
        "own parametrisation (which minimising drives to 0); ``False`` none.",
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
               inspect.Parameter("learnable", kw, default=False, annotation="bool | str"),
               inspect.Parameter("options", inspect.Parameter.VAR_KEYWORD)]
    return inspect.Signature(params)


def _module(d: _losses.LossDef) -> type:
    """The module class of registry entry ``d``, with an ``__init__`` of its own whose
    signature and docstring name the entry's keywords (for ``help()`` and the API page)."""

    def __init__(self: _LossModule, weight: torch.Tensor | None = None, **options: object) -> None:
        _LossModule.__init__(self, weight, **options)  # type: ignore[arg-type]

    signature = _signature(d)
    self_ = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    __init__.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[self_, *signature.parameters.values()])
    __init__.__doc__ = _docstring(d)
    __init__.__qualname__ = f"{d.module}.__init__"
    cls = type(d.module, (_LossModule,), {"definition": d, "__doc__": _docstring(d),
                                          "__init__": __init__, "__module__": __name__,
                                          "__qualname__": d.module})
    cls.__signature__ = signature  # type: ignore[attr-defined]
    return cls


for _d in _losses.LOSSES:
    globals()[_d.module] = _module(_d)
