"""JAX: the collectives of a call whose classes are sharded over a mesh axis inside
``jax.shard_map`` (``class_axis=``), and the agreement of ``entroloss._sharded``.

Inside ``shard_map`` every array is traced: nothing can be read or raised at run time, so
the agreement is static. Each device's slice has the same size (``shard_map`` splits an
axis evenly), so the count of all classes is the slice's times the axis size, and a
device's first class is its index on the axis times the slice's size. An error found
while tracing (shapes, dtypes, options) is raised while tracing, by every device alike
(they trace the same program). Bad data gives NaN, as under ``jax.jit`` without sharding
(a class index outside ``[0, C)``, a soft row that is no distribution over all classes).

The math all-reduces numbers per row only (``lax.psum`` and ``lax.pmax`` over the axis);
the linear heads add one ``psum`` of the hidden states' gradient (``N x H``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax

from entroloss import _arrays, _math
from entroloss import _validate as check

__all__ = ["Team", "Slices"]


@dataclass(frozen=True)
class Slices:
    """The collectives of ``_math.ClassSlice`` over the mesh axis ``axis``, each device
    holding ``local`` classes. Equal (and so one static spec, no retracing) for every call
    with the same axis and slice size."""

    axis: Any
    local: int

    def sum(self, x: Any) -> Any:
        return jax.lax.psum(x, self.axis)

    def max(self, x: Any) -> Any:
        return jax.lax.pmax(x, self.axis)

    def offset(self) -> Any:
        return jax.lax.axis_index(self.axis) * self.local


def _axis_size(axis: Any) -> int:
    try:
        return int(jax.lax.axis_size(axis))
    except (NameError, KeyError, ValueError, TypeError) as e:
        raise ValueError(f"class_axis={axis!r} is not a mesh axis bound here: call the loss "
                         f"inside jax.shard_map over a mesh with that axis, the logits (or "
                         f"the classifier's rows) split along it ({e})") from None


class Team:
    """The devices along ``axis``. Refuses arrays that are not JAX's and an axis that is
    not bound (outside ``shard_map``, or a name the mesh lacks), before any collective."""

    def __init__(self, axis: Any, x: Any) -> None:
        if _arrays.library(x) != "jax":
            raise TypeError(f"class_axis (a JAX mesh axis inside jax.shard_map) needs JAX "
                            f"arrays, got {type(x).__name__}; with torch.distributed pass "
                            f"class_group=")
        try:
            hash(axis)
        except TypeError:
            raise TypeError(f"class_axis must be a mesh axis name (a str, or a tuple of "
                            f"names), got {type(axis).__name__}") from None
        self.axis, self.size = axis, _axis_size(axis)

    def agree(self, error: Exception | None, local: int, rows: int, target: Any,
              settings: int, constants: tuple = ()) -> _math.ClassSlice:
        """The slice of every device: they trace the same program, so an error of one is
        every device's."""
        if error is not None:
            raise error
        return _math.ClassSlice(local * self.size, Slices(self.axis, local))

    def all_passed(self, error: Exception | None) -> None:
        if error is not None:
            raise error

    def reads(self, validate: Any, x: Any, target: Any) -> Any:
        return check.reads_data(validate, x, target)
