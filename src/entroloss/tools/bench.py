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

from .. import _api
from .platforms import available
from .progress import ProgressBar

LOSSES = ("cross_entropy", "min_ent", "mix_ent", "adaptive_ce")
CPU_SHAPES = ((256, 10), (1024, 1000), (4096, 32000))
GPU_SHAPES = ((256, 10), (1024, 1000), (4096, 32000), (8192, 32768))
QUICK_SHAPES = ((256, 10), (512, 1000))


@dataclass
class Timing:
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
        for name in LOSSES:
            fn = getattr(_api, name)
            loss = lambda z, y, fn=fn, options=options: fn(z, y, **options)  # noqa: E731
            out[f"el.{name}{suffix}"] = (forward_of(loss), step_of(loss))
    if compiled:
        torch._dynamo.reset()  # every shape and dtype compiles afresh, within dynamo's limits
        out["compiled F.cross_entropy"] = _compiled(torch, native, logits, target)
        for name in ("cross_entropy", "min_ent"):
            fn = getattr(_api, name)
            out[f"compiled el.{name}"] = _compiled(
                torch, lambda z, y, fn=fn: fn(z, y, validate=False), logits, target)
    return out, "F.cross_entropy"


def _compiled(torch, loss_fn, logits, target):
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
    for name in LOSSES:
        fn = getattr(_api, name)
        loss = lambda z, y, fn=fn: fn(z, y)  # noqa: E731
        out[f"el.{name} (jit)"] = (jax.jit(loss), jax.jit(jax.grad(loss)))
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
    for name in LOSSES:
        fn = getattr(_api, name)
        out[f"el.{name}"] = (lambda fn=fn: fn(logits, target),
                             lambda fn=fn: _api.value_and_grad(fn, logits, target))
    return out, "hand-written" if out.get("hand-written") else None


def _candidates(platform, logits, target, compiled, chunk_size=None):
    if platform.library == "torch":
        return _torch_candidates(platform, logits, target, compiled=compiled, chunk_size=chunk_size)
    if platform.library == "jax":
        return _jax_candidates(platform, logits, target)
    return _explicit_candidates(platform, logits, target)


def _block(platform, value):
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
    platforms, missing = available(library, device)
    rows = []
    work = []
    for p in platforms:
        grid = shapes or (GPU_SHAPES if p.device_kind == "gpu" else CPU_SHAPES)
        for shape in grid:
            for dtype in dtypes:
                if dtype in p.dtypes and not (p.library == "array_api_strict"):
                    work.append((p, shape, dtype))
    for i, (p, (n, c), dtype) in enumerate(work):
        if progress:
            progress(i, len(work), f"{p.id} {n}x{c} {dtype}")
        rng = np.random.default_rng(0)
        logits = p.asarray(rng.normal(size=(n, c)).astype(np.float32), dtype)
        target = p.asarray(rng.integers(0, c, size=n), "int64")
        fns, baseline = _candidates(p, logits, target, compiled, chunk_size)
        fwd = _interleaved(p, {k: f for k, (f, _) in fns.items()}, repeats, budget_s / 2)
        step = _interleaved(p, {k: s for k, (_, s) in fns.items()}, repeats, budget_s / 2)
        for name in fns:
            row = Timing(p.id, (n, c), dtype, name, baseline or "", fwd[name] * 1e3, step[name] * 1e3)
            if baseline:
                row.forward_ratio = fwd[name] / fwd[baseline]
                row.step_ratio = step[name] / step[baseline]
            rows.append(row)
    if progress:
        progress(len(work), len(work), "done")
    return rows, missing


# --- peak memory: each measurement in a fresh process -------------------------------------

_MEMORY_PROBE = r"""
import sys, gc, torch, entroloss as el
n, c, which = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
which, _, chunk = which.partition(" chunks of ")  # "el.min_ent chunks of 512"
options = {"chunk_size": int(chunk)} if chunk else {}

def status(key):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

torch.manual_seed(0)
z = torch.empty(n, c).normal_()  # in place: no temporary
y = torch.randint(0, c, (n,))
fn = {"F.cross_entropy": torch.nn.functional.cross_entropy}.get(which) or getattr(el, which.split(".")[1])
small = torch.randn(8, 16, requires_grad=True)  # load every code path before the baseline
fn(small, torch.randint(0, 16, (8,))).backward()
gc.collect()
# Reset the peak-RSS mark (Linux >= 4.0): a child inherits its parent's mark otherwise.
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
zz = z.requires_grad_(True)
fn(zz, y, **options).backward()
print((status("VmHWM:") - before) * 1024)
"""


def memory_candidates(chunk_size=None) -> tuple:
    """``F.cross_entropy``, every loss, and every loss in chunks of ``chunk_size`` rows."""
    out = ("F.cross_entropy",) + tuple(f"el.{x}" for x in LOSSES)
    if chunk_size:
        out += tuple(f"el.{x} chunks of {chunk_size}" for x in LOSSES)
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
            result = subprocess.run([sys.executable, "-c", _MEMORY_PROBE, str(n), str(c), which],
                                    capture_output=True, text=True)
            if result.returncode == 0:
                figures.append(int(result.stdout.strip()) / (n * c * 4))
        out[which] = statistics.median(figures) if figures else math.nan
    return out


# --- output ---------------------------------------------------------------------------------


def machine() -> dict:
    info = {"python": sys.version.split()[0], "machine": _host.machine(),
            "processor": _host.processor() or "unknown", "cpus": os.cpu_count(),
            "numpy": np.__version__}
    for lib in ("torch", "jax", "cupy"):
        if lib in sys.modules:
            info[lib] = getattr(sys.modules[lib], "__version__", "?")
    return info


def table(rows, missing) -> str:
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


def main(args) -> int:
    shapes = QUICK_SHAPES if args.quick else None
    if args.shape:
        shapes = tuple(tuple(int(v) for v in s.lower().split("x")) for s in args.shape)
    dtypes = tuple(args.dtype or ("float32",))
    rows, missing = run(args.backend, args.device, shapes=shapes, dtypes=dtypes,
                        repeats=args.repeats, compiled=args.compiled, chunk_size=args.chunk_size,
                        progress=_progress_bar(not args.json))
    memory = {}
    if args.memory and any(r.backend == "torch-cpu" for r in rows):
        n, c = max({r.shape for r in rows if r.backend == "torch-cpu"}, key=lambda s: s[0] * s[1])
        memory = {"shape": [n, c], "extra_over_logits_bytes":
                  peak_extra_memory(n, c, memory_candidates(args.chunk_size))}
    if args.json:
        print(json.dumps({"machine": machine(), "rows": [asdict(r) for r in rows],
                          "memory": memory, "skipped": [dict(backend=b, reason=r) for b, r in missing]},
                         indent=1))
    else:
        print(table(rows, missing))
        if memory:
            n, c = memory["shape"]
            print(f"\npeak extra resident memory of one torch CPU forward+backward at {n}x{c}, "
                  f"in logits' bytes ({n * c * 4 / 2**20:.0f} MiB):")
            for k, v in memory["extra_over_logits_bytes"].items():
                print(f"  {k:<36}{v:6.2f}x")
    return 0
