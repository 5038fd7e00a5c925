"""``entroloss bench``: forward and forward+backward time of every loss on every installed
backend, next to the same backend's native cross entropy and to what a user would write
instead of calling entroloss; for torch also the number of dispatched ops, and (``--memory``)
the peak extra memory.

The harness follows SciPy's ``XPBenchmark``: ``backend:device`` cases, a device sync
around every timing, warm-up calls first (jit compilation is not timed), candidates run
interleaved (A B C A B C ...) so drifts in machine load hit them alike, medians reported.
Combinations that are not available here are skipped with the reason.

Every (backend, shape, dtype, loss, mode) gives one `Comparison`: entroloss ("ours"),
the native cross entropy (``F.cross_entropy``; optax under ``jax.jit``; a hand-written
NumPy/CuPy forward+backward) and the user's baseline (``baselines.py``: the few lines a user
writes for that loss, with the same option values), per-call times in microseconds and the
ratios of ours to each. The modes: torch ``eager``, ``compiled`` (``--compiled``: all three
under ``torch.compile``) and ``eager, chunks of N`` (``--chunk-size``); JAX ``jit``;
NumPy/CuPy ``eager``. On torch each case also times the bandwidth floor: one read of the
logits and one write of a gradient of their size (``torch.empty_like(z).copy_(z)``).
"""

from __future__ import annotations

import json
import math
import os
import platform as _host
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

import entroloss as el

from .._losses import CROSS_ENTROPY, LOSSES
from .baselines import (USER_BASELINES, bound, hand_written, jax_native_cross_entropy,
                        jax_user_baseline, timed_options, torch_user_baseline)
from .platforms import available
from .progress import counter

CPU_SHAPES = ((256, 10), (128, 100), (1024, 1000), (4096, 8192))
GPU_SHAPES = ((256, 10), (128, 100), (1024, 1000), (4096, 8192), (8192, 32768))
QUICK_SHAPES = ((256, 10), (512, 1000))

@dataclass
class Comparison:
    """One loss at one shape, dtype and mode: ours, the native cross entropy and the
    user's baseline, per-call medians in microseconds, and the ratios of ours to each
    (None where there is no such baseline)."""

    backend: str
    shape: tuple
    dtype: str
    loss: str
    mode: str  # "eager", "compiled", "jit", "eager, chunks of N"
    options: dict
    ours: str
    native: str
    user: str | None
    ours_forward_us: float
    ours_step_us: float  # forward + backward
    native_forward_us: float
    native_step_us: float
    user_forward_us: float | None = None
    user_step_us: float | None = None
    forward_vs_native: float | None = None
    step_vs_native: float | None = None
    forward_vs_user: float | None = None
    step_vs_user: float | None = None
    # torch: {"ours"|"native"|"user": {"forward": n, "step": n}}, __torch_dispatch__ calls
    ops: dict | None = None
    # torch: one read of the logits and one write of a gradient of their size
    floor_us: float | None = None
    floor_gbps: float | None = None
    step_vs_floor: float | None = None
    extra: dict = field(default_factory=dict)


# --- candidates: name -> (forward, forward+backward) callables on prepared inputs ------------


def count_dispatched_ops(fn) -> int:
    """How many ops one call of ``fn()`` dispatches below autograd (``__torch_dispatch__``
    calls, the backward's included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        calls = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.calls += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.calls


def _torch_pair(torch, loss_fn, logits, target):
    """(forward under no_grad, forward+backward returning the gradient) of ``loss_fn``."""
    def step():
        z = logits.detach().requires_grad_(True)
        loss_fn(z, target).backward()
        return z.grad

    def forward():
        with torch.no_grad():
            return loss_fn(logits, target)
    return forward, step


def _case_plan(p, logits, target, *, compiled, chunk_size, losses, compiled_losses):
    """({candidate: (forward, step)}, [(loss, mode, ours, native, user)], extras) for one
    case; extras: ``"floor"`` (the candidate name of the bandwidth floor) and ``"count"``
    (the candidates whose dispatched ops are counted)."""
    if p.library == "torch":
        return _torch_plan(p, logits, target, compiled, chunk_size, losses, compiled_losses)
    if p.library == "jax":
        return _jax_plan(p, logits, target, losses)
    return _explicit_plan(p, logits, target, losses)


def _torch_plan(p, logits, target, compiled, chunk_size, losses, compiled_losses):
    import torch

    fns, plan = {}, []
    fns["F.cross_entropy"] = _torch_pair(torch, torch.nn.functional.cross_entropy, logits, target)
    modes = {"eager": {}}
    if chunk_size and logits.shape[0] > chunk_size:
        modes[f"eager, chunks of {chunk_size}"] = {"chunk_size": chunk_size}
    for loss in losses:
        user = "F.cross_entropy" if loss is CROSS_ENTROPY else f"torch {loss.name}"
        if user not in fns:
            fns[user] = _torch_pair(torch, torch_user_baseline(loss), logits, target)
        for mode, options in modes.items():
            ours = f"el.{loss.name}" + (f" chunks of {chunk_size}" if options else "")
            fns[ours] = _torch_pair(torch, bound(loss, **options), logits, target)
            plan.append((loss, mode, ours, "F.cross_entropy", user))
    count = list(fns)
    if compiled:
        torch._dynamo.reset()  # every shape and dtype compiles afresh, within dynamo's limits
        native = "compiled F.cross_entropy"
        fns[native] = _compiled(torch, torch.nn.functional.cross_entropy, logits, target)
        for loss in losses:
            if loss not in compiled_losses:
                continue
            user = native if loss is CROSS_ENTROPY else f"compiled torch {loss.name}"
            if user not in fns:
                fns[user] = _compiled(torch, torch_user_baseline(loss), logits, target)
            ours = f"compiled el.{loss.name}"
            fns[ours] = _compiled(torch, bound(loss, validate=False), logits, target)
            plan.append((loss, "compiled", ours, native, user))
    fns["floor"] = (lambda: torch.empty_like(logits).copy_(logits),) * 2
    return fns, plan, {"floor": "floor", "count": count}


def _compiled(torch, loss_fn, logits, target):
    """(forward, forward+backward) of ``torch.compile(loss_fn)``."""
    return _torch_pair(torch, torch.compile(loss_fn, fullgraph=True), logits, target)


def _jax_plan(p, logits, target, losses):
    import jax

    def pair(f):
        forward, step = jax.jit(f), jax.jit(jax.grad(f))
        return (lambda: forward(logits, target)), (lambda: step(logits, target))

    native, native_fn = jax_native_cross_entropy()
    fns, plan = {native: pair(native_fn)}, []
    for loss in losses:
        user = native if loss is CROSS_ENTROPY else f"jnp {loss.name} (jit)"
        if user not in fns:
            fns[user] = pair(jax_user_baseline(loss))
        ours = f"el.{loss.name} (jit)"
        fns[ours] = pair(bound(loss))
        plan.append((loss, "jit", ours, native, user))
    return fns, plan, {}


def _explicit_plan(p, logits, target, losses):
    raw = p.xp
    if p.library == "numpy":
        import numpy as raw
    elif p.library == "cupy":
        import cupy as raw
    native = "hand-written cross entropy"
    fns, plan = {}, []
    fns[native] = (lambda: hand_written(raw, CROSS_ENTROPY, logits, target, grad=False),
                   lambda: hand_written(raw, CROSS_ENTROPY, logits, target))
    for loss in losses:
        user = native if loss is CROSS_ENTROPY else f"hand-written {loss.name}"
        if user not in fns:
            fns[user] = (lambda loss=loss: hand_written(raw, loss, logits, target, grad=False),
                         lambda loss=loss: hand_written(raw, loss, logits, target))
        fn, options = getattr(el, loss.name), timed_options(loss)
        ours = f"el.{loss.name}"
        fns[ours] = (lambda fn=fn, options=options: fn(logits, target, **options),
                     lambda fn=fn, options=options: el.value_and_grad(fn, logits, target, **options))
        plan.append((loss, "eager", ours, native, user))
    return fns, plan, {}


def _block(platform, value):
    """Wait until ``value`` is computed: JAX dispatches asynchronously, GPUs too."""
    if platform.library == "jax":
        import jax

        jax.block_until_ready(value)
    platform.sync()


def _interleaved(platform, fns: dict, repeats: int, budget_s: float, warm_ups: int = 2) -> dict:
    """Median seconds per call for each fn, measured A B C A B C ... after warm-up."""
    for fn in fns.values():  # warm-up: jit compilation and caches, not timed
        for _ in range(warm_ups):
            _block(platform, fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.perf_counter()
    for r in range(repeats):
        for name, fn in fns.items():
            platform.sync()
            t = time.perf_counter()
            _block(platform, fn())
            times[name].append(time.perf_counter() - t)
        if r >= 2 and time.perf_counter() - start > budget_s:
            break
    return {name: statistics.median(ts) for name, ts in times.items()}


def run(library=None, device=None, *, shapes=None, dtypes=("float32",), repeats=15,
        budget_s=20.0, compiled=False, chunk_size=None, losses=LOSSES, compiled_losses=LOSSES,
        progress=None):
    """(a `Comparison` per case x loss x mode, [(platform id, why it is skipped)]);
    ``progress(i, total, label)`` before each case and once at the end. ``losses``: the
    losses compared; ``compiled_losses``: those of them also timed under torch.compile."""
    platforms, missing = available(library, device)
    work = _grid(platforms, shapes, dtypes)
    rows = []
    for i, (p, (n, c), dtype) in enumerate(work):
        if progress:
            progress(i, len(work), f"{p.id} {n}x{c} {dtype}")
        rows += _time_case(p, (n, c), dtype, repeats=repeats, budget_s=budget_s,
                           compiled=compiled, chunk_size=chunk_size, losses=tuple(losses),
                           compiled_losses=tuple(compiled_losses))
    if progress:
        progress(len(work), len(work), "done")
    return rows, missing


def _grid(platforms, shapes, dtypes) -> list:
    """(platform, shape, dtype) of every case: ``shapes`` or the device's default grid.
    array-api-strict is left out: it checks the standard and is not built for speed."""
    work = []
    for p in platforms:
        grid = shapes or (GPU_SHAPES if p.device_kind == "gpu" else CPU_SHAPES)
        for shape in grid:
            for dtype in dtypes:
                if dtype in p.dtypes and not (p.library == "array_api_strict"):
                    work.append((p, shape, dtype))
    return work


def _us(seconds: float) -> float:
    return seconds * 1e6


def _time_case(p, shape, dtype, *, repeats, budget_s, compiled, chunk_size, losses,
               compiled_losses) -> list:
    """Every candidate on seeded logits of ``shape``, interleaved: forward, then
    forward+backward; then the dispatched ops of the eager torch candidates."""
    n, c = shape
    rng = np.random.default_rng(0)
    logits = p.asarray(rng.normal(size=(n, c)).astype(np.float32), dtype)
    target = p.asarray(rng.integers(0, c, size=n), "int64")
    fns, plan, extras = _case_plan(p, logits, target, compiled=compiled, chunk_size=chunk_size,
                                   losses=losses, compiled_losses=compiled_losses)
    fwd = _interleaved(p, {k: f for k, (f, _) in fns.items() if k != "floor"}, repeats, budget_s / 2)
    step = _interleaved(p, {k: s for k, (_, s) in fns.items()}, repeats, budget_s / 2)
    ops = {k: {"forward": count_dispatched_ops(fns[k][0]), "step": count_dispatched_ops(fns[k][1])}
           for k in extras.get("count", ())}
    floor = step.get(extras.get("floor"))
    nbytes = 2 * n * c * _itemsize(dtype)  # read the logits once, write the gradient once
    rows = []
    for loss, mode, ours, native, user in plan:
        row = Comparison(
            p.id, (n, c), dtype, loss.name, mode, timed_options(loss), ours, native, user,
            _us(fwd[ours]), _us(step[ours]), _us(fwd[native]), _us(step[native]),
            _us(fwd[user]), _us(step[user]),
            forward_vs_native=fwd[ours] / fwd[native], step_vs_native=step[ours] / step[native],
            forward_vs_user=fwd[ours] / fwd[user], step_vs_user=step[ours] / step[user])
        if ours in ops:
            row.ops = {"ours": ops[ours], "native": ops[native], "user": ops[user]}
        if floor:
            row.floor_us, row.floor_gbps = _us(floor), nbytes / floor / 1e9
            row.step_vs_floor = step[ours] / floor
        row.extra["user_formula"] = USER_BASELINES[loss.name] if p.library == "torch" else user
        rows.append(row)
    return rows


def _itemsize(dtype: str) -> int:
    return {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}[dtype]


# --- peak memory: each measurement in a fresh process -------------------------------------

def memory_candidates(chunk_size=None) -> tuple:
    """``F.cross_entropy``, every loss, and every loss in chunks of ``chunk_size`` rows."""
    out = ("F.cross_entropy",) + tuple(f"el.{loss.name}" for loss in LOSSES)
    if chunk_size:
        out += tuple(f"el.{loss.name} chunks of {chunk_size}" for loss in LOSSES)
    return out


def peak_extra_memory(n: int, c: int, candidates: tuple | None = None, runs: int = 3):
    """Peak resident memory added by one torch CPU forward+backward, in multiples of the
    logits' bytes (the gradient, which any loss must return, is 1.0 of it): the median of
    ``runs`` fresh processes (glibc may keep freed blocks of some sizes resident, which
    varies from run to run). ``candidates`` defaults to ``memory_candidates()``."""
    out = {}
    for which in memory_candidates() if candidates is None else candidates:
        figures = []
        for _ in range(runs):
            result = subprocess.run(
                [sys.executable, "-m", "entroloss.tools.memory_probe", str(n), str(c), which],
                capture_output=True, text=True)
            if result.returncode == 0:
                figures.append(int(result.stdout.strip()) / (n * c * 4))
        out[which] = statistics.median(figures) if figures else math.nan
    return out


# --- output ---------------------------------------------------------------------------------


def machine() -> dict:
    """Python, the CPU and the versions of the libraries that ran, for the JSON output."""
    info = {"python": sys.version.split()[0], "machine": _host.machine(),
            "processor": _host.processor() or "unknown", "cpus": os.cpu_count(),
            "numpy": np.__version__}
    for lib in ("torch", "jax", "cupy"):
        if lib in sys.modules:
            info[lib] = getattr(sys.modules[lib], "__version__", "?")
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        info["torch_threads"] = torch.get_num_threads()  # intra-op threads of the CPU timings
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    return info


def _f(value, spec: str, width: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}{spec}}"


def _ops(row, which: str) -> str:
    return "-" if not row.ops else str(row.ops[which]["step"])


def table(rows, missing) -> str:
    """One line per `Comparison`, then what the columns mean and what was skipped."""
    head = (f"{'backend':<11}{'shape':>11}{'dtype':>9}  {'loss':<14}{'mode':<10}"
            f"{'fwd us':>10}{'f+b us':>10}{'CE f+b':>10}{'user f+b':>10}"
            f"{'f+b/CE':>8}{'f+b/user':>9}{'fwd/CE':>8}{'fwd/user':>9}{'ops o/CE/u':>13}")
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r.shape[0]}x{r.shape[1]}"
        ops = "-" if not r.ops else "/".join(_ops(r, w) for w in ("ours", "native", "user"))
        lines.append(
            f"{r.backend:<11}{shape:>11}{r.dtype:>9}  {r.loss:<14}{r.mode:<10}"
            f"{r.ours_forward_us:>10.1f}{r.ours_step_us:>10.1f}{r.native_step_us:>10.1f}"
            f"{_f(r.user_step_us, '.1f', 10)}{_f(r.step_vs_native, '.2f', 8)}"
            f"{_f(r.step_vs_user, '.2f', 9)}{_f(r.forward_vs_native, '.2f', 8)}"
            f"{_f(r.forward_vs_user, '.2f', 9)}{ops:>13}")
    floors = {(r.backend, r.shape, r.dtype): (r.floor_us, r.floor_gbps) for r in rows if r.floor_us}
    for (backend, (n, c), dtype), (us, gbps) in floors.items():
        lines.append(f"bandwidth floor {backend} {n}x{c} {dtype}: {us:.1f} us "
                     f"(read the logits and write a gradient once: {gbps:.1f} GB/s)")
    lines.append(
        "times: per call, medians of interleaved runs, us; f+b = forward+backward. CE: the "
        "backend's native cross entropy (F.cross_entropy, compiled in mode 'compiled'; optax "
        "under jax.jit; a hand-written NumPy/CuPy forward+backward). user: what a user "
        "writes for that loss, same options (torch: log_softmax/nll_loss/gather "
        "compositions; jnp compositions under jit; hand-written NumPy). ratios: ours / "
        "baseline. ops: torch ops dispatched by one forward+backward, ours/CE/user.")
    for platform_id, reason in missing:
        lines.append(f"skipped {platform_id}: {reason}")
    return "\n".join(lines)


def _progress_bar(enabled: bool):
    return counter(enabled, label_width=40)


def _memory(rows, chunk_size) -> dict:
    """The peak-memory figures at the largest torch CPU shape timed, or {} if none was."""
    shapes = {tuple(r.shape) for r in rows if r.backend == "torch-cpu"}
    if not shapes:
        return {}
    n, c = max(shapes, key=lambda s: s[0] * s[1])
    return {"shape": [n, c],
            "extra_over_logits_bytes": peak_extra_memory(n, c, memory_candidates(chunk_size))}


def _print_memory(memory: dict) -> None:
    n, c = memory["shape"]
    print(f"\npeak extra resident memory of one torch CPU forward+backward at {n}x{c}, "
          f"in logits' bytes ({n * c * 4 / 2**20:.0f} MiB):")
    for k, v in memory["extra_over_logits_bytes"].items():
        print(f"  {k:<36}{v:6.2f}x")


def report(rows, missing, ran: dict, memory: dict | None = None) -> dict:
    """The JSON object of ``entroloss bench --json``."""
    return {"ok": bool(rows), "ran": ran, "machine": machine(),
            "user_baselines": USER_BASELINES,
            "rows": [asdict(r) for r in rows], "memory": memory or {},
            "skipped": [dict(backend=b, reason=r) for b, r in missing]}


def main(args) -> int:
    """``entroloss bench``: the table (or ``--json``: ``"ok"``, what ran, the machine, the
    rows, the memory figures, what was skipped); exit 2 when nothing could be timed."""
    shapes: tuple[tuple[int, ...], ...] | None = QUICK_SHAPES if args.quick else None
    if args.shape:
        shapes = tuple(tuple(s) for s in args.shape)
    dtypes = tuple(dict.fromkeys(args.dtype or ("float32",)))
    rows, missing = run(args.backend, args.device, shapes=shapes, dtypes=dtypes,
                        repeats=args.repeats, compiled=args.compiled, chunk_size=args.chunk_size,
                        progress=_progress_bar(not args.json))
    memory = _memory(rows, args.chunk_size) if args.memory else {}
    if args.json:
        ran = {"backend": args.backend, "device": args.device,
               "shapes": sorted({tuple(r.shape) for r in rows}), "dtypes": list(dtypes),
               "repeats": args.repeats, "compiled": args.compiled, "memory": args.memory,
               "chunk_size": args.chunk_size, "platforms": list(dict.fromkeys(r.backend for r in rows)),
               "timings": len(rows)}
        print(json.dumps(report(rows, missing, ran, memory), indent=1))
    else:
        print(table(rows, missing))
        if memory:
            _print_memory(memory)
    if not rows:
        print("nothing to time: no backend of the selection is available here",
              file=sys.stderr, flush=True)
        return 2
    return 0
