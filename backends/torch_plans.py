"""torch: the shared math's ops for one kind of call, recorded once and replayed.

At small sizes a torch call costs its Python, not its arithmetic: ``_math`` decides per
call which terms are live, reads the target, and goes through the namespace's wrappers,
some fifty Python functions for fifteen tensor ops, and on a training step that Python
also evicts the model's own from the CPU's caches (measured: docs/performance.md). What
``_math`` does with tensors depends only on what the call's key holds (the spec, the
kernel table, the Python numbers, the tensors' dtypes, shapes and devices), never on
their values, so the ops one call runs are those of every call with its key.

:func:`record` runs a function of tensors once under a ``TorchFunctionMode`` that records
every torch call, and writes the calls out as one flat Python function (a line per op,
the recorded callables and constants bound to it): the same ops, in the same order, on
the new tensors; torch's autograd records them as it would the math's own. The math
stays the one definition: a plan is a recording of it, never a second text of it.

A call whose Python reads more of a tensor than the key holds (its values: ``.item()``,
``bool(t)``, ``t.numpy()``; its strides; whether it requires grad: any call that returns
something other than a tensor or a dtype, shape or device) cannot be replayed:
:func:`record` returns None, and the caller runs the math itself.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["Plan", "record"]

# What may be read off a tensor while recording: what its caller's key fixes (the dtype,
# shape and device), by the methods and the attributes that give it. Strides, contiguity,
# requires_grad and values are not among them: a function that reads one is not replayed.
_METADATA = frozenset({"size", "dim", "ndimension", "numel", "nelement", "element_size",
                       "is_floating_point", "is_complex", "__len__", "get_device", "is_tensor"})
_ATTRIBUTES = frozenset({"shape", "dtype", "device", "ndim", "layout", "is_cuda", "is_cpu"})
_METADATA_TYPES = (torch.Size, torch.dtype, torch.device, torch.layout, int, bool, tuple)


def _reads_metadata(func: Any) -> bool:
    name = getattr(func, "__name__", None)
    if name == "__get__":  # an attribute: the getset descriptor's own name says which
        return getattr(getattr(func, "__self__", None), "__name__", None) in _ATTRIBUTES
    return name in _METADATA


class _Unplannable(Exception):
    """The recorded function read a tensor's values, or used a tensor it was not given."""


class _Recorder(TorchFunctionMode):
    def __init__(self, inputs: tuple) -> None:
        super().__init__()
        self.names: dict[int, str] = {}  # id(tensor) -> its expression in the plan
        self.alive: list = []  # every tensor seen: an id must not be reused while recording
        # [name, the callable's constant, its arguments' spellings, whether it returned a
        # floating-point tensor]
        self.ops: list[list] = []
        self.constants: dict[str, Any] = {}
        for i, x in enumerate(inputs):
            self._name(x, f"a{i}")

    def _name(self, x: torch.Tensor, name: str) -> None:
        self.names[id(x)] = name
        self.alive.append(x)

    def constant(self, value: Any) -> str:
        name = f"k{len(self.constants)}"
        self.constants[name] = value
        return name

    def expression(self, value: Any) -> str:
        """How the plan spells an argument: a tensor's name, a container of them, or a
        constant bound to the plan."""
        if isinstance(value, torch.Tensor):
            name = self.names.get(id(value))
            if name is None:  # made outside the recording: state the plan cannot see
                raise _Unplannable(f"a tensor the plan was not given ({tuple(value.shape)})")
            return name
        if isinstance(value, (list, tuple)) and any(_has_tensor(v) for v in value):
            inner = ", ".join(self.expression(v) for v in value)
            return f"[{inner}]" if isinstance(value, list) else f"({inner},)"
        return self.constant(value)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not _has_tensor(out):
            if _reads_metadata(func) and isinstance(out, _METADATA_TYPES):
                return out  # fixed by the key: the plan bakes what follows from it
            raise _Unplannable(f"{getattr(func, '__qualname__', func)} returned {type(out).__name__}")
        arguments = [*(self.expression(a) for a in args),
                     *(f"{k}={self.expression(v)}" for k, v in kwargs.items())]
        name = f"t{len(self.ops)}"
        floating = isinstance(out, torch.Tensor) and out.is_floating_point()
        self.ops.append([name, self.constant(func), arguments, floating])
        if isinstance(out, torch.Tensor):
            self._name(out, name)
        else:  # a tuple of tensors (aminmax, max over an axis, split)
            for i, part in enumerate(out):
                if isinstance(part, torch.Tensor):
                    self._name(part, f"{name}[{i}]")
        return out


def _has_tensor(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(_has_tensor(v) for v in value)


def _returned(recorder: _Recorder, value: Any) -> str:
    """How the plan spells what the recorded function returned, in its structure: tuples,
    NamedTuples and structseqs (torch.return_types) of tensors, numbers and None."""
    if isinstance(value, tuple) and not isinstance(value, torch.Size):
        inner = "".join(f"{_returned(recorder, v)}, " for v in value)
        kind = type(value)
        if kind is tuple:
            return f"({inner})"
        if hasattr(kind, "_make"):  # a NamedTuple
            return f"{recorder.constant(kind)}({inner})"
        return f"{recorder.constant(kind)}([{inner}])"  # a structseq, from a list
    return recorder.expression(value)


class Plan:
    """A recorded call: ``plan(*tensors)`` runs its ops on ``tensors`` and returns what the
    recorded function returned, in its structure."""

    def __init__(self, source: str, namespace: dict) -> None:
        self.source = source
        exec(compile(source, "<entroloss plan>", "exec"), namespace)  # noqa: S102
        self.run = namespace["plan"]

    def __call__(self, *tensors: Any) -> Any:
        return self.run(*tensors)


def record(fn: Callable[[], Any], tensors: tuple) -> Plan | None:
    """The plan of ``fn()``, a function of ``tensors`` (and of Python values that its
    caller's key fixes): ``fn`` runs once, without autograd, while its torch calls are
    recorded. None where ``fn`` cannot be replayed, or where one tensor is given twice
    (the plan could not tell which of the two a later call's tensor stands for)."""
    if len({id(x) for x in tensors}) < len(tensors):
        return None
    recorder = _Recorder(tensors)
    try:
        with torch.no_grad(), recorder:
            out = fn()
        returned = _returned(recorder, out)
    except _Unplannable:
        return None
    ops = _fold_negations(_live(recorder.ops, recorder.constants, returned),
                          recorder.constants, returned)
    arguments = ", ".join(f"a{i}" for i in range(len(tensors)))
    lines = [f"    {name} = {func}({', '.join(args)})" for name, func, args, _ in ops]
    source = "\n".join([f"def plan({arguments}):", *lines, f"    return {returned}"])
    return Plan(source, dict(recorder.constants))


_NEGATIONS = (torch.Tensor.neg, torch.neg)
_PRODUCTS = (torch.Tensor.mul, torch.mul)
_NAME = re.compile(r"\bt\d+\b")
# Ops that only compute a result from their arguments' values: no write, no draw from a
# generator, no error on a value (an index out of range: gather, scatter, nll_loss). Only
# these are left out of a plan where nothing reads their result.
_PURE = frozenset({"neg", "exp", "expm1", "log", "log1p", "mul", "add", "sub", "div",
                   "where", "clamp", "sum", "mean", "amax", "pow", "abs", "eq", "lt", "le",
                   "gt", "ge", "logical_not", "sqrt", "tanh"})


def _in_place(func: Any, args: list) -> bool:
    return getattr(func, "__name__", "").endswith("_") or any(a.startswith("out=") for a in args)


def _live(ops: list, constants: dict, returned: str) -> list:
    """The ops but the pure ones whose results nothing reads: the math also computes what
    only its own backward reads (MIX-ENT's log p at the target), which autograd needs no
    more than the caller (planning per call which terms are live). An op that writes, draws
    or may raise on a value always runs."""
    read = set(_NAME.findall(returned))
    kept = []
    for op in reversed(ops):
        name, func, args, _ = op
        pure = getattr(constants[func], "__name__", None) in _PURE and not _in_place(
            constants[func], args)
        if name in read or not pure:
            kept.append(op)
            read.update(_NAME.findall(" ".join(args)))
    return kept[::-1]


def _fold_negations(ops: list, constants: dict, returned: str) -> list:
    """The ops with each negation that only a product by a Python float reads folded into
    that float (``mul(neg(x), c)`` -> ``mul(x, -c)``): the math writes ``-sum(p log p)``
    and then weighs it, one op and one backward node fewer at every call (measured in a
    training step, docs/performance.md). The same numbers, value and derivative: a
    floating-point negation is exact (an integer's is not, at its least value, nor an
    unsigned one's; and the int 0 has no sign), and no op between the two writes in
    place (the product would read ``x`` as written after the negation)."""
    uses = Counter(_NAME.findall(" ".join([returned, *(" ".join(op[2]) for op in ops)])))
    negated = {name: (at, args[0]) for at, (name, func, args, floating) in enumerate(ops)
               if floating and constants[func] in _NEGATIONS and len(args) == 1
               and uses[name] == 1}
    folded = set()
    for at, op in enumerate(ops):
        _, func, args, _ = op
        if constants[func] in _PRODUCTS and len(args) == 2 and args[0] in negated:
            start, x = negated[args[0]]
            written = any(_in_place(constants[f], a) for _, f, a, _ in ops[start + 1:at])
            if type(constants.get(args[1])) is float and not written:
                constants[args[1]] = -constants[args[1]]
                folded.add(args[0])
                op[2] = [x, args[1]]
    return [op for op in ops if op[0] not in folded]
