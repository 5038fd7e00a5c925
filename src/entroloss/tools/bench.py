"""``entroloss bench``: forward and forward+backward time, and peak extra memory, of every
loss on every installed backend, as ratios to that framework's native cross entropy.

The harness follows SciPy's ``XPBenchmark``: ``backend:device`` cases, a device sync
around every timing, warm-up calls first (jit compilation is not timed), candidates run
interleaved (A B C A B C ...) so drifts in machine load hit them alike, medians reported.
Combinations that are not available here are skipped with the reason.
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

from .._losses import CROSS_ENTROPY, LOSSES, MIN_ENT, LossDef
from .platforms import available
from .progress import ProgressBar

# torch.compile'd candidates: the baseline loss and one regularised one (compiling every
# loss at every shape and dtype would take most of the run on CPU)
COMPILED = (CROSS_ENTROPY, MIN_ENT)
CPU_SHAPES = ((256, 10), (1024, 1000), (4096, 32000))
GPU_SHAPES = ((256, 10), (1024, 1000), (4096, 32000), (8192, 32768))
QUICK_SHAPES = ((256, 10), (512, 1000))


def timed_options(loss: LossDef) -> dict:
    """The options every timing of ``loss`` passes: the defaults, except the options the
    loss is defined by (focal's ``gamma``), which take the registry's example values."""
    return {"gamma": loss.example["gamma"]} if loss.gamma is None else {}


def _bound(loss: LossDef, **extra):
    """``loss(z, y)`` with its `timed_options` and ``extra``."""
    fn, options = getattr(el, loss.name), {**timed_options(loss), **extra}
    return lambda z, y: fn(z, y, **options)


@dataclass
class Timing:
    """One candidate at one shape and dtype: median times, and ratios to the baseline."""

    backend: str
    shape: tuple
    dtype: str
    candidate: str
    baseline: str
    forward_ms: float
    step_ms: float  # forward + backward
    forward_ratio: float = math.nan
    step_ratio: float = math.nan
    extra: dict = field(default_factory=dict)


# --- candidates: name -> (forward, forward+backward) callables on prepared inputs ------------


def _torch_candidates(platform, logits, target, *, compiled: bool, chunk_size=None):
    import torch
    import torch.nn.functional as F

    def step_of(loss_fn):
        def step():
            z = logits.detach().requires_grad_(True)
            loss_fn(z, target).backward()
            return z.grad
        return step

    def forward_of(loss_fn):
        def forward():
            with torch.no_grad():
                return loss_fn(logits, target)
        return forward

    native = F.cross_entropy
    out = {"F.cross_entropy": (forward_of(native), step_of(native))}
    variants = {"": {}}
    if chunk_size and logits.shape[0] > chunk_size:
        variants[f" chunks of {chunk_size}"] = {"chunk_size": chunk_size}
    for suffix, options in variants.items():
        for loss in LOSSES:
            bound = _bound(loss, **options)
            out[f"el.{loss.name}{suffix}"] = (forward_of(bound), step_of(bound))
    if compiled:
        torch._dynamo.reset()  # every shape and dtype compiles afresh, within dynamo's limits
        out["compiled F.cross_entropy"] = _compiled(torch, native, logits, target)
        for loss in COMPILED:
            out[f"compiled el.{loss.name}"] = _compiled(
                torch, _bound(loss, validate=False), logits, target)
    return out, "F.cross_entropy"


def _compiled(torch, loss_fn, logits, target):
    """(forward, forward+backward) of ``torch.compile(loss_fn)``."""
    compiled = torch.compile(loss_fn, fullgraph=True)

    def step():
        z = logits.detach().requires_grad_(True)
        compiled(z, target).backward()
        return z.grad

    def forward():
        with torch.no_grad():
            return compiled(logits, target)

    return forward, step


def _jax_candidates(platform, logits, target, **_):
    import jax

    out = {}
    try:
        import optax

        def native(z, y):
            return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

        out["optax (jit)"] = (jax.jit(native), jax.jit(jax.grad(native)))
    except ImportError:
        pass
    for loss in LOSSES:
        bound = _bound(loss)
        out[f"el.{loss.name} (jit)"] = (jax.jit(bound), jax.jit(jax.grad(bound)))
    bound = {k: (lambda f=f: f(logits, target), lambda g=g: g(logits, target))
             for k, (f, g) in out.items()}
    return bound, "optax (jit)" if "optax (jit)" in out else None


def minimal_cross_entropy(xp, z, y):
    """The shortest correct mean cross entropy and its gradient: the NumPy/CuPy baseline."""
    m = xp.max(z, axis=-1, keepdims=True)
    e = xp.exp(z - m)
    s = xp.sum(e, axis=-1, keepdims=True)
    log_p_y = xp.take_along_axis(z - m, y[:, None], axis=-1)[:, 0] - xp.log(s[:, 0])
    grad = e / s
    grad[xp.arange(z.shape[0]), y] -= 1.0
    return -xp.mean(log_p_y), grad / z.shape[0]


def _explicit_candidates(platform, logits, target, **_):
    raw = platform.xp
    if platform.library == "numpy":
        import numpy as raw
    elif platform.library == "cupy":
        import cupy as raw
    out = {}
    if platform.library in ("numpy", "cupy"):
        out["hand-written"] = (lambda: minimal_cross_entropy(raw, logits, target)[0],
                               lambda: minimal_cross_entropy(raw, logits, target))
    for loss in LOSSES:
        fn, options = getattr(el, loss.name), timed_options(loss)
        out[f"el.{loss.name}"] = (
            lambda fn=fn, options=options: fn(logits, target, **options),
            lambda fn=fn, options=options: el.value_and_grad(fn, logits, target, **options))
    return out, "hand-written" if out.get("hand-written") else None


def _candidates(platform, logits, target, compiled, chunk_size=None):
    """({candidate: (forward, forward+backward)}, the baseline's name or None)."""
    if platform.library == "torch":
        return _torch_candidates(platform, logits, target, compiled=compiled, chunk_size=chunk_size)
    if platform.library == "jax":
        return _jax_candidates(platform, logits, target)
    return _explicit_candidates(platform, logits, target)


def _block(platform, value):
    """Wait until ``value`` is computed: JAX dispatches asynchronously, GPUs too."""
    if platform.library == "jax":
        import jax

        jax.block_until_ready(value)
    platform.sync()


def _interleaved(platform, fns: dict, repeats: int, budget_s: float) -> dict:
    """Median seconds per call for each fn, measured A B C A B C ... after warm-up."""
    for fn in fns.values():  # warm-up: jit compilation and caches, not timed
        _block(platform, fn())
        _block(platform, fn())
    times = {name: [] for name in fns}
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
        budget_s=20.0, compiled=False, chunk_size=None, progress=None):
    """(a `Timing` per case x candidate, [(platform id, why it is skipped)]);
    ``progress(i, total, label)`` before each case and once at the end."""
    platforms, missing = available(library, device)
    work = _grid(platforms, shapes, dtypes)
    rows = []
    for i, (p, (n, c), dtype) in enumerate(work):
        if progress:
            progress(i, len(work), f"{p.id} {n}x{c} {dtype}")
        rows += _time_case(p, (n, c), dtype, repeats=repeats, budget_s=budget_s,
                           compiled=compiled, chunk_size=chunk_size)
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


def _time_case(p, shape, dtype, *, repeats, budget_s, compiled, chunk_size) -> list:
    """Every candidate on seeded logits of ``shape``: forward, then forward+backward."""
    n, c = shape
    rng = np.random.default_rng(0)
    logits = p.asarray(rng.normal(size=(n, c)).astype(np.float32), dtype)
    target = p.asarray(rng.integers(0, c, size=n), "int64")
    fns, baseline = _candidates(p, logits, target, compiled, chunk_size)
    fwd = _interleaved(p, {k: f for k, (f, _) in fns.items()}, repeats, budget_s / 2)
    step = _interleaved(p, {k: s for k, (_, s) in fns.items()}, repeats, budget_s / 2)
    rows = []
    for name in fns:
        row = Timing(p.id, (n, c), dtype, name, baseline or "", fwd[name] * 1e3, step[name] * 1e3)
        if baseline:
            row.forward_ratio = fwd[name] / fwd[baseline]
            row.step_ratio = step[name] / step[baseline]
        rows.append(row)
    return rows


# --- peak memory: each measurement in a fresh process -------------------------------------

def memory_candidates(chunk_size=None) -> tuple:
    """``F.cross_entropy``, every loss, and every loss in chunks of ``chunk_size`` rows."""
    out = ("F.cross_entropy",) + tuple(f"el.{loss.name}" for loss in LOSSES)
    if chunk_size:
        out += tuple(f"el.{loss.name} chunks of {chunk_size}" for loss in LOSSES)
    return out


def peak_extra_memory(n: int, c: int, candidates=memory_candidates(), runs: int = 3):
    """Peak resident memory added by one torch CPU forward+backward, in multiples of the
    logits' bytes (the gradient, which any loss must return, is 1.0 of it): the median of
    ``runs`` fresh processes (glibc may keep freed blocks of some sizes resident, which
    varies from run to run)."""
    out = {}
    for which in candidates:
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
    return info


def table(rows, missing) -> str:
    """One line per `Timing`, then what the ratios mean and what was skipped."""
    lines = [f"{'backend':<11}{'shape':>13}{'dtype':>10}  {'candidate':<36}{'fwd ms':>10}"
             f"{'fwd+bwd ms':>12}{'fwd ratio':>11}{'fwd+bwd ratio':>15}"]
    lines.append("-" * len(lines[0]))
    for r in rows:
        shape = f"{r.shape[0]}x{r.shape[1]}"
        lines.append(f"{r.backend:<11}{shape:>13}{r.dtype:>10}  {r.candidate:<36}"
                     f"{r.forward_ms:>10.3f}{r.step_ms:>12.3f}{r.forward_ratio:>11.2f}"
                     f"{r.step_ratio:>15.2f}")
    lines.append("ratios: time / the same backend's native cross entropy at the same shape "
                 "and dtype (F.cross_entropy eager; optax under jax.jit; a hand-written "
                 "NumPy/CuPy forward+backward); medians of interleaved runs")
    for platform_id, reason in missing:
        lines.append(f"skipped {platform_id}: {reason}")
    return "\n".join(lines)


def _progress_bar(enabled: bool):
    """``progress(i, total, label)`` for `run`: a bar on a terminal, ``[i/total] label``
    lines elsewhere, nothing when ``enabled`` is false (``--json``)."""
    bar = ProgressBar(enabled=enabled)

    def progress(i, total, label):
        bar.draw(i, max(total, 1), f"{i}/{total} {label:<40}")
        bar.log(f"[{i}/{total}] {label}")
        if i == total:
            bar.finish()

    return progress


def _memory(rows, chunk_size) -> dict:
    """The peak-memory figures at the largest torch CPU shape timed, or {} if none was."""
    shapes = {r.shape for r in rows if r.backend == "torch-cpu"}
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


def main(args) -> int:
    """``entroloss bench``: the table (or ``--json``: ``"ok"``, what ran, the machine, the
    rows, the memory figures, what was skipped); exit 2 when nothing could be timed."""
    shapes = QUICK_SHAPES if args.quick else None
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
        print(json.dumps({"ok": bool(rows), "ran": ran, "machine": machine(),
                          "rows": [asdict(r) for r in rows], "memory": memory,
                          "skipped": [dict(backend=b, reason=r) for b, r in missing]},
                         indent=1))
    else:
        print(table(rows, missing))
        if memory:
            _print_memory(memory)
    if not rows:
        print("nothing to time: no backend of the selection is available here",
              file=sys.stderr, flush=True)
        return 2
    return 0
