"""torch.distributed: the collectives of a call whose classes are sharded over the ranks of
a process group (``class_group=``), and the agreement that makes every rank raise together
(``entroloss._sharded``).

The math all-reduces numbers per row only (row maxima, sums of exponentials, the target's
logit, the regularizers' sums): two to five all-reduces of ``N`` numbers per pass. The
linear heads add one all-reduce of the hidden states' gradient (``N x H``), as the backward
of any column-parallel layer does. Before any of it, one all-gather of seven integers per
rank agrees on the slices (their sizes give each rank its first class: uneven slices work),
the rows, the targets, the options and the class and sample weights,
and one all-reduce of one integer on whether every rank's checks passed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from entroloss import _math
from entroloss import _validate as check

__all__ = ["Team", "Slices"]


class Slices:
    """The collectives of ``_math.ClassSlice`` over a process group. Hashed by identity."""

    def __init__(self, group: Any, offset: int) -> None:
        self.group, self.first = group, offset

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.SUM)

    def max(self, x: torch.Tensor) -> torch.Tensor:
        return self._reduce(x, dist.ReduceOp.MAX)

    def offset(self) -> int:
        return self.first

    def _reduce(self, x: torch.Tensor, op: Any) -> torch.Tensor:
        out = x.detach().clone(memory_format=torch.contiguous_format)  # written in place
        dist.all_reduce(out, op=op, group=self.group)
        return out


class Team:
    """The ranks of ``group`` agreeing on a call. Refuses a group that is not one before
    any collective (a rank with no group cannot take part in one)."""

    def __init__(self, group: Any, x: Any) -> None:
        if not isinstance(group, dist.ProcessGroup):
            raise TypeError(f"class_group must be a torch.distributed ProcessGroup "
                            f"(torch.distributed.group.WORLD, new_group(...), a DeviceMesh's "
                            f"get_group()), got {type(group).__name__}")
        if not torch.is_tensor(x):
            raise TypeError(f"class_group (torch.distributed) needs torch tensors, got "
                            f"{type(x).__module__}.{type(x).__name__}; with JAX, shard the "
                            f"classes with class_axis= inside shard_map")
        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError("class_group needs torch.distributed initialised "
                             "(torch.distributed.init_process_group) on every rank")
        self.group = group
        self.pending: Exception | None = None  # an error found by agree, raised by all_passed
        # the collectives' tensors where the group's backend takes them
        on_gpu = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else "cpu"

    def agree(self, error: Exception | None, local: int, rows: int, target: Any,
              settings: int, constants: tuple = ()) -> _math.ClassSlice:
        """Every rank's slice, or the same error on every rank: one rank's own checks
        failed, the ranks hold different rows or were given different options
        (``settings``, a number of the call's Python-valued options) or different
        ``constants`` (the class weights, sample weights, denominator). Different class
        indices are raised by :meth:`all_passed`, after each rank's own checks against all
        classes (a rank whose index is out of range says so)."""
        mine = torch.tensor([error is not None, local, rows, 0, 0, settings, 0],
                            dtype=torch.int64, device=self.device)
        print_ = None if error is not None else _fingerprint(target)
        if print_ is not None:  # on the device: read with the table, no sync of its own
            mine[3], mine[4] = 1, print_.to(self.device)
        if error is None:
            for i, value in enumerate(constants):
                values = _fingerprint(value, floating=True)
                if values is not None:
                    mine[6] += values.to(self.device) * (i + 2)
        every = [torch.empty_like(mine) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(every, mine, group=self.group)
        table = torch.stack(every).tolist()
        failed = [r for r, row in enumerate(table) if row[0]]
        if error is not None:
            raise error
        if failed:
            raise ValueError(f"class_group: rank(s) {failed} of the group refused their "
                             f"arguments (their errors say why); every rank raises with them")
        if len({row[2] for row in table}) > 1:
            raise ValueError(f"class_group: the ranks hold different numbers of rows "
                             f"(positions), {[row[2] for row in table]} by rank; each rank "
                             f"holds every row and its slice of the classes")
        if len({row[5] for row in table}) > 1:
            raise ValueError("class_group: the ranks were called with different options "
                             "(reduction, chunk_size, ignore_index, label_smoothing, softcap, "
                             "z_loss, validate or the loss's own): every rank passes the same")
        # raised by all_passed, after each rank's own checks: a class index out of range,
        # or class weights of the slice's length, on one rank are then that rank's error
        if len({row[6] for row in table}) > 1:
            self.pending = ValueError(
                "class_group: the ranks were given different class weights, sample weights "
                "or denominators: every rank passes the same (of all classes, of every row)")
        if len({row[4] for row in table if row[3]}) > 1:
            self.pending = ValueError(
                "class_group: the ranks hold different targets; each rank holds the same "
                "class indices (of all classes), and only its slice of the logits or "
                "classifier")
        me = dist.get_rank(self.group)
        offset = sum(row[1] for row in table[:me])
        return _math.ClassSlice(sum(row[1] for row in table), Slices(self.group, offset))

    def all_passed(self, error: Exception | None) -> None:
        """Raise on every rank where any rank's checks failed."""
        error = error or self.pending
        failed = torch.tensor([error is not None], dtype=torch.int64, device=self.device)
        dist.all_reduce(failed, group=self.group)
        if error is not None:
            raise error
        if int(failed.item()):
            raise ValueError(f"class_group: {int(failed.item())} rank(s) of the group refused "
                             f"their arguments (their errors say why); every rank raises "
                             f"with them")

    def reads(self, validate: Any, x: Any, target: Any) -> Any:
        return check.reads_data(validate, x, target)


def _fingerprint(x: Any, floating: bool = False) -> torch.Tensor | None:
    """A number (0-d, on the tensor's device) that differs, almost surely, between
    different tensors: of integers (a class-index target), and with ``floating`` of
    floating-point numbers too (their bits); None for what is not a tensor, and for a
    floating one without ``floating`` (a soft target: a slice per rank)."""
    if not torch.is_tensor(x) or (x.is_floating_point() and not floating):
        return None
    t = x.detach().reshape(-1)
    t = t.to(torch.float64).view(torch.int64) if t.is_floating_point() else t.to(torch.int64)
    place = torch.arange(1, t.numel() + 1, dtype=torch.int64, device=t.device)
    return ((t + 1) * (place * 2654435761 % 2**31)).sum()  # wraps alike on every rank


# --- DTensor: the mesh gives the group ----------------------------------------------------


def unwrap(arrays: dict, options: dict, main: str) -> tuple[dict, dict]:
    """The local tensors of a call given ``torch.distributed.tensor.DTensor``s, and its
    options with ``class_group`` the mesh's group where ``main`` (the logits, or the
    classifier of a linear head) is sharded on its class dimension.

    ``arrays`` maps a name to ``(value, its class dimension or None)``; each option that is
    a DTensor is one too (the bias's class dimension 0, every other replicated). A DTensor
    lives on a 1-D mesh, placed ``Shard`` on its class dimension or ``Replicate``; where
    one is sharded, ``main`` is too, and all share one mesh. ``to_local()`` keeps autograd:
    a gradient comes back as a DTensor with the input's placement."""
    from torch.distributed.tensor import DTensor

    every = dict(arrays)
    for name, value in options.items():
        if isinstance(value, DTensor):
            every[name] = (value, 0 if name == "bias" else None)
    mesh, sharded, out = None, [], {}
    for name, (value, dim) in every.items():
        if not isinstance(value, DTensor):
            out[name] = value
            continue
        if mesh is None:
            mesh = value.device_mesh
        elif value.device_mesh != mesh:
            raise ValueError(f"{name} is a DTensor on another DeviceMesh than the other "
                             f"DTensors of the call; they must share one mesh")
        if value.device_mesh.ndim != 1:
            raise ValueError(f"{name} is a DTensor on a {value.device_mesh.ndim}-D "
                             f"DeviceMesh; only a 1-D mesh (the ranks sharing the classes) "
                             f"is supported")
        placement = value.placements[0]
        if placement.is_shard() and dim is not None and \
                placement.dim % value.ndim == dim % value.ndim:  # type: ignore[attr-defined]
            sharded.append(name)
        elif not placement.is_replicate():
            where = "" if dim is None else f" on its class dimension {dim % value.ndim}"
            raise ValueError(f"{name} is a DTensor placed {placement}; only Shard{where} "
                             f"or Replicate is supported")
        out[name] = value.to_local()
    if sharded and main not in sharded:
        raise ValueError(f"{', '.join(sharded)} sharded on the classes, but {main} is not: "
                         f"shard {main} on its class dimension (Shard) too")
    options = {k: out.get(k, v) for k, v in options.items()}
    if main in sharded:
        assert mesh is not None
        group = mesh.get_group()
        given = options.get("class_group")
        if given is not None and given is not group:
            raise ValueError("class_group differs from the group of the DTensors' mesh "
                             "(which gives the group of a sharded DTensor); pass neither "
                             "or the mesh's get_group()")
        options["class_group"] = group
    return {k: out[k] for k in arrays}, options
