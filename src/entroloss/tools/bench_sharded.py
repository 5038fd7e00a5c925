"""``entroloss bench --sharded``: class-sharded (tensor-parallel) losses over ``P`` gloo
ranks on the CPU against the same loss in one process (docs/tensor-parallel.md).

Each rank holds ``C/P`` of the classes: the rows of the classifier ``W`` (and of the bias)
of a linear head, or the slice of the logits of a plain loss; every rank holds the hidden
states ``(N, H)`` and the global class indices. Per candidate and per ``P``: the peak
resident memory one forward+backward adds on a rank (the largest of the ranks), each
figure in a fresh group of processes (a process's peak mark only grows:
`entroloss.tools.memory_probe`), and the time of one forward+backward (the slowest
rank's median; the candidates interleaved in one group per ``P``, each rank on one
thread). The reference is one process without ``class_group=`` holding every class; the
ratios are sharded / one process: about ``1/P`` for the memory where what scales with the
classes dominates (the hidden states' gradient, ``N x H``, is on every rank whole).

The ranks share the machine's cores: on a machine with fewer cores than ranks the times
measure the collectives' overhead, not a speed-up. ``benchmarks/sharded.py`` prints the
table of docs/tensor-parallel.md.
"""

from __future__ import annotations

import gc
import os
import socket
import statistics
import sys
import time
from dataclasses import asdict, dataclass

DEFAULT_SHAPE = (2048, 256, 16384)  # tokens N, features H, classes C
RANKS = (1, 2, 4)
CANDIDATES = ("linear_cross_entropy", "linear_min_ent", "cross_entropy")
MIB = 2**20


@dataclass
class ShardedRow:
    """One candidate at one number of ranks (``ranks=1, sharded=False``: one process
    without ``class_group``)."""

    candidate: str
    ranks: int
    sharded: bool
    shape: tuple  # (N, H, C)
    value: float  # the loss (rank 0's): the one process's, to rounding
    peak_mib: float | None  # per rank, the largest of the ranks
    step_s: float | None  # per forward+backward, the slowest rank's median
    memory_ratio: float | None  # over the one-process figure
    time_ratio: float | None


# --- one rank --------------------------------------------------------------------------------


def _bounds(c: int, ranks: int, rank: int) -> tuple[int, int]:
    """The classes ``[a, b)`` of ``rank`` (the first ``c % ranks`` ranks hold one more)."""
    size, extra = divmod(c, ranks)
    a = rank * size + min(rank, extra)
    return a, a + size + (rank < extra)


def _inputs(torch, candidate: str, shape: tuple, ranks: int, rank: int, grad: bool) -> tuple:
    """This rank's float32 inputs: ``(hidden, W slice, bias slice)`` or ``(logits slice,)``,
    and the global class indices (the same on every rank). A class's row of ``W`` and
    column of the logits are a function of its global index (``sin`` of a running count),
    so the ranks' slices put together are the one process's inputs; formed in place, with
    no temporary of their size."""
    n, h, c = shape
    a, b = _bounds(c, ranks, rank)
    seeded = torch.Generator().manual_seed(0)
    y = torch.randint(0, c, (n,), generator=seeded)
    if candidate.startswith("linear_"):
        hidden = torch.empty(n, h).normal_(generator=seeded)
        w = torch.arange(a * h, b * h, dtype=torch.float32).mul_(0.618034).sin_()
        leaves: tuple = (hidden, w.mul_(3 * h**-0.5).view(b - a, h), torch.zeros(b - a))
    else:
        z = torch.empty(n, b - a).copy_(torch.arange(a, b, dtype=torch.float32))
        z.add_(torch.arange(n, dtype=torch.float32)[:, None].mul_(c))
        leaves = (z.mul_(0.618034).sin_().mul_(3),)
    return tuple(t.requires_grad_(grad) for t in leaves), y


def _loss(candidate: str, group, chunk_size: int | None):
    """``f(leaves, y)``: the candidate's loss, with the bench's options."""
    import entroloss as el
    from .._losses import by_name
    from .baselines import timed_options

    fn = getattr(el, candidate)
    options = dict(timed_options(by_name(candidate.removeprefix("linear_"))))
    if group is not None:
        options["class_group"] = group
    if candidate.startswith("linear_"):
        if chunk_size:
            options["chunk_size"] = chunk_size
        return lambda leaves, y: fn(leaves[0], leaves[1], y, bias=leaves[2], **options)
    return lambda leaves, y: fn(leaves[0], y, **options)


def _step(fn, leaves: tuple, y):
    def step() -> float:
        value = fn(leaves, y)
        value.backward()
        for leaf in leaves:
            leaf.grad = None
        return value.item()

    return step


def _rank(rank: int, task: dict, queue) -> None:
    """One rank's share of ``task`` (a memory figure, or the interleaved timings), its
    result put on ``queue`` as ``(rank, {candidate: figure})``."""
    import torch
    import torch.distributed as dist

    from .memory_probe import _reset_peak, resident_kib

    torch.set_num_threads(1)
    ranks, shape = task["ranks"], task["shape"]
    group = None
    if task["sharded"]:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(task["port"]))
        dist.init_process_group("gloo", rank=rank, world_size=ranks)
        group = dist.group.WORLD
    try:
        fns = {k: _loss(k, group, task["chunk_size"]) for k in task["candidates"]}
        for k, fn in fns.items():  # every code path (and the group's links) before the baseline
            _step(fn, *_inputs(torch, k, (8, 4, 4 * ranks), ranks, rank, True))()
        steps = {k: _step(fn, *_inputs(torch, k, shape, ranks, rank, True)) for k, fn in fns.items()}
        if task["kind"] == "memory":
            (k, step), = steps.items()
            gc.collect()
            _reset_peak()
            before = resident_kib("VmRSS:")
            step()
            result = {k: ((resident_kib("VmHWM:") - before) * 1024 / MIB, None)}
        else:
            result = _timed(steps, task["repeats"], None if group is None else dist.barrier)
        queue.put((rank, result))
    finally:
        if group is not None:
            dist.destroy_process_group()


def _timed(steps: dict, repeats: int, barrier) -> dict:
    """``{candidate: (median seconds per step, the loss)}``, the steps timed A B C A B C
    ... after one warm-up each (which gives the loss); the ranks start each timing together."""
    values = {k: step() for k, step in steps.items()}
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(repeats):
        for k, step in steps.items():
            if barrier:
                barrier()
            t = time.perf_counter()
            step()
            times[k].append(time.perf_counter() - t)
    return {k: (statistics.median(ts), values[k]) for k, ts in times.items()}


# --- the groups of processes -------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(task: dict) -> dict:
    """``{candidate: (the largest figure of the ranks, rank 0's loss)}`` of ``task``, run
    by fresh processes."""
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    task = dict(task, port=_free_port())
    mp.start_processes(_rank, args=(task, queue), nprocs=task["ranks"], start_method="spawn")
    results = dict(queue.get() for _ in range(task["ranks"]))
    return {k: (max(r[k][0] for r in results.values()), results[0][k][1]) for k in results[0]}


def run(shape=DEFAULT_SHAPE, ranks=RANKS, candidates=CANDIDATES, *, chunk_size=None,
        repeats=5, memory=True, progress=None) -> list[ShardedRow]:
    """A `ShardedRow` per candidate x (one process, then each of ``ranks`` sharded);
    ``progress(i, total, label)`` before each group of processes and once at the end."""
    configs = [(1, False)] + [(p, True) for p in ranks]
    total = len(configs) * (1 + (len(candidates) if memory else 0))
    done = 0
    figures: dict = {}
    for p, sharded in configs:
        base = dict(ranks=p, sharded=sharded, shape=tuple(shape), chunk_size=chunk_size,
                    repeats=repeats)
        label = f"{p} rank{'s' * (p > 1)}" if sharded else "one process"
        if progress:
            progress(done, total, f"{label}: time")
        times = _spawn(dict(base, kind="time", candidates=tuple(candidates)))
        done += 1
        peaks = {}
        for k in candidates if memory else ():
            if progress:
                progress(done, total, f"{label}: memory of {k}")
            peaks.update(_spawn(dict(base, kind="memory", candidates=(k,))))
            done += 1
        figures[p, sharded] = {k: (peaks.get(k, (None,))[0], *times[k]) for k in candidates}
    if progress:
        progress(total, total, "done")
    rows = []
    for k in candidates:
        ref_mib, ref_s, _ = figures[1, False][k]
        for (p, sharded), by_candidate in figures.items():
            mib, s, value = by_candidate[k]
            rows.append(ShardedRow(k, p, sharded, tuple(shape), value, mib, s,
                                   _ratio(mib, ref_mib), _ratio(s, ref_s)))
    return rows


def _ratio(a, b):
    return None if a is None or not b else a / b


# --- output ----------------------------------------------------------------------------------


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _call(candidate: str) -> str:
    if candidate.startswith("linear_"):
        return f"el.{candidate}(h, W[a:b], y, bias=b[a:b])"
    return f"el.{candidate}(z[:, a:b], y)"


def markdown(rows: list) -> str:
    """The table of docs/tensor-parallel.md: a line per candidate and number of ranks."""
    lines = ["| loss | ranks | peak extra per rank (MiB) | memory / one process | "
             "f+b per step (s) | time / one process |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        ranks = f"{r.ranks}, class_group" if r.sharded else "1 (one process)"
        lines.append(f"| `{_call(r.candidate)}` | {ranks} | {_cell(r.peak_mib, '.1f')} | "
                     f"{_cell(r.memory_ratio, '.2f')} | {_cell(r.step_s, '.3f')} | "
                     f"{_cell(r.time_ratio, '.2f')} |")
    return "\n".join(lines)


def header(shape: tuple, chunk_size: int | None) -> str:
    from .bench import machine
    from .bench_linear import _cpu_name

    import torch  # noqa: F401 - for machine()'s versions

    n, h, c = shape
    m = machine()
    return (f"float32, N={n}, H={h}, C={c} (whole logits {n * c * 4 / MIB:.0f} MiB, classifier "
            f"{c * h * 4 / MIB:.0f} MiB), chunk_size={chunk_size or 'default'}; gloo on "
            f"127.0.0.1, one thread per rank; {_cpu_name(m)}, {m['cpus']} CPUs; torch {m['torch']}")


def main(args) -> int:
    """``entroloss bench --sharded``: the table (or ``--json``)."""
    import json

    from .progress import counter

    try:
        import torch.distributed as dist
    except ImportError:
        print("bench --sharded needs torch", file=sys.stderr)
        return 2
    if not dist.is_available() or not dist.is_gloo_available():
        print("bench --sharded needs torch.distributed with gloo", file=sys.stderr)
        return 2
    shape = tuple(args.head or DEFAULT_SHAPE)
    rows = run(shape, chunk_size=args.chunk_size, repeats=min(args.repeats, 5),
               progress=counter(not args.json, label_width=40))
    if args.json:
        from .bench import machine

        print(json.dumps({"ok": True, "ran": {"shape": list(shape), "ranks": list(RANKS),
                                              "chunk_size": args.chunk_size},
                          "machine": machine(), "rows": [asdict(r) for r in rows]}, indent=1))
    else:
        print(header(shape, args.chunk_size))
        print(markdown(rows))
    return 0
