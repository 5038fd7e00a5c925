"""Calls whose classes are sharded over processes (tensor parallelism, ``docs/tensor-parallel.md``).

Each process holds a slice of the classes: the logits' slice along the class axis, or the
classifier's rows (and the bias's) of a linear head; every process holds every row and the
targets' class indices (or its slice of a soft target). The math is the one-process math
with every sum over the classes all-reduced (``_math.ClassSlice``); this module checks a
call so that bad input raises on every process together, never on one while the others
wait in a collective:

1. each process measures its slice (its classes, its rows, fingerprints of its target,
   its options and its class and sample weights) with its local checks, and the processes
   exchange these in one small all-gather: a process whose checks failed, rows, targets,
   options or weights that differ raise on all;
2. every check runs against the count of all classes (class indices in ``[0, C)``, class
   weights of length ``C``), then one all-reduce tells every process whether any failed;
3. a soft target's rows are summed over the slices and checked (same numbers everywhere,
   so every process decides alike).

``class_group=`` (a ``torch.distributed`` process group) takes this path; ``class_axis=``
(a JAX mesh axis inside ``shard_map``) is traced, where nothing can be read or raised at
run time, so it gets the one-process rule under tracing: bad positions give NaN.
"""

from __future__ import annotations

import dataclasses
import sys
import zlib
from typing import Any, Callable

from . import _math

__all__ = ["sliced", "prepare", "has_dtensor", "unwrap"]


def sliced(o: dict) -> bool:
    """Whether a call's classes are sharded over processes."""
    return o.get("class_group") is not None or o.get("class_axis") is not None


def prepare(o: dict, x: Any, measure: Callable[[], tuple[int, int, Any]],
            build: Callable[[_math.ClassSlice], Any]) -> Any:
    """A sharded call: ``measure()`` runs the local checks and returns ``(classes of this
    slice, rows, target)``; ``build(classes)`` runs every check against the count of all
    classes and returns the prepared call (whose ``spec`` carries ``classes``). ``x`` is the
    logits or the hidden states."""
    if o.get("class_group") is not None and o.get("class_axis") is not None:
        raise ValueError("pass class_group (torch.distributed) or class_axis (JAX shard_map), "
                         "not both")
    team = _team(o, x)
    error, local, rows, target = None, 0, 0, None
    try:
        local, rows, target = measure()
    except Exception as e:  # raised below, on every process together
        error = e
    constants = tuple(o.get(name) for name in ("weight", "sample_weight", "denominator"))
    classes = team.agree(error, local, rows, target, _settings(o), constants)
    error = None
    call: Any = None
    try:
        call = build(classes)
    except Exception as e:
        error = e
    team.all_passed(error)
    spec = call.spec
    if spec.soft and not spec.target_checked and team.reads(o["validate"], x, call.target):
        from . import _validate as check

        check.soft_rows(call.xp, call.target, spec.axis, True, classes.group)
        spec = dataclasses.replace(spec, target_checked=True)
        call = call._replace(spec=spec) if hasattr(call, "_replace") else dataclasses.replace(
            call, spec=spec)
    return call


def _settings(o: dict) -> int:
    """A number that differs, almost surely, between calls given different Python-valued
    options: a process called with another ``chunk_size`` or ``reduction`` than the others
    would compute another loss, or make other collectives than they wait for."""
    python = (bool, int, float, str, type(None))
    described = sorted((k, repr(v)) for k, v in o.items()
                       if isinstance(v, python) and k not in ("class_group", "class_axis"))
    return zlib.crc32(repr(described).encode())


def _team(o: dict, x: Any) -> Any:
    """The collectives of the call's processes, from the framework's adapter."""
    if o.get("class_group") is not None:
        from .backends import torch_sharded

        return torch_sharded.Team(o["class_group"], x)
    from .backends import jax_sharded

    return jax_sharded.Team(o["class_axis"], x)


def has_dtensor(*values: Any, options: dict | None = None) -> bool:
    """Whether any of ``values`` (or of the ``options``' values) is a
    ``torch.distributed.tensor.DTensor``, without importing torch where no DTensor can
    exist (the module is loaded wherever one was made)."""
    module = sys.modules.get("torch.distributed.tensor")
    if module is None:
        return False
    kind = module.DTensor
    return any(isinstance(v, kind) for v in values) or (
        options is not None and any(isinstance(v, kind) for v in options.values()))


def unwrap(arrays: dict, options: dict, main: str) -> tuple[dict, dict]:
    """DTensors to their local tensors, ``class_group`` the mesh's group where ``main`` is
    sharded on its classes (``backends.torch_sharded.unwrap``)."""
    from .backends import torch_sharded

    return torch_sharded.unwrap(arrays, options, main)
