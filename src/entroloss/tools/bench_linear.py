"""``entroloss bench --linear``: the linear-head losses against the naive loss on the whole
logits ``hidden @ W.T + b``, on torch and JAX.

Three pairs, each a linear-head loss and what a user writes without it: cross entropy
(``F.cross_entropy``; optax under ``jax.jit``), MIN-ENT (the user's log_softmax composition
of ``entroloss bench``, with its entropy weight) and the mean entropy (``el.entropy`` on the
logits, which the framework's autograd differentiates). Per candidate: the time of one
forward+backward reaching ``hidden``, ``W`` and ``b`` (torch eager; JAX a jitted
``value_and_grad``), the median of interleaved runs after a warm-up; and its memory:
torch CPU the peak resident memory beyond the inputs (the gradients included), each
figure in a fresh process (a process's peak mark only grows); torch CUDA the peak
allocated beyond the inputs; JAX XLA's temporary allocation (the compiled memory
analysis: exact, nothing runs). The ratios are linear / naive.

``benchmarks/linear_head.py`` runs the same at the issue's shape (N=8192, H=1024,
C=32768) for docs/linear.md.
"""

from __future__ import annotations

import gc
import json
import math
import subprocess
import sys
from dataclasses import asdict, dataclass

import numpy as np

from .._losses import CROSS_ENTROPY, MIN_ENT
from .platforms import available

DEFAULT_SHAPE = (1024, 128, 8192)  # tokens N, features H, classes C
DEFAULT_CHUNK = 256  # rows: four chunks at the default shape
MAX_REPEATS = 5  # a step here is a few matmuls of the head: fewer repeats than the plain bench
LOSSES = ("cross_entropy", "min_ent", "entropy")
LIBRARIES = ("torch", "jax")
MIB = 2**20


@dataclass
class HeadRow:
    """One pair on one platform: the linear-head loss and its naive counterpart."""

    backend: str
    shape: tuple  # (N, H, C)
    loss: str
    chunk_size: int | None
    linear: str
    naive: str
    linear_s: float
    naive_s: float
    time_ratio: float
    memory: str  # what the memory figures are
    linear_mib: float | None
    naive_mib: float | None
    memory_ratio: float | None


# --- the candidates: f(hidden, W, b, y) -> a scalar -----------------------------------------


def _names(loss: str, library: str) -> tuple[str, str]:
    """(the linear-head call, the naive one) as the table prints them."""
    linear = "el.linear_entropy(h, W, bias=b).mean()" if loss == "entropy" else (
        f"el.linear_{loss}(h, W, y, bias=b)")
    naive = {"cross_entropy": "F.cross_entropy(h @ W.T + b, y)" if library == "torch" else
             "optax cross entropy on h @ W.T + b",
             "min_ent": "user MIN-ENT on h @ W.T + b",
             "entropy": "el.entropy(h @ W.T + b).mean()"}[loss]
    return linear, naive


def linear_fn(loss: str, chunk_size: int | None):
    import entroloss as el
    from .baselines import timed_options

    if loss == "entropy":
        return lambda h, w, b, y: el.linear_entropy(h, w, bias=b, chunk_size=chunk_size).mean()
    fn = getattr(el, f"linear_{loss}")
    options = timed_options(MIN_ENT if loss == "min_ent" else CROSS_ENTROPY)
    return lambda h, w, b, y: fn(h, w, y, bias=b, chunk_size=chunk_size, **options)


def naive_fn(loss: str, library: str):
    import entroloss as el
    from . import baselines

    if loss == "entropy":
        plain = lambda z, y: el.entropy(z).mean()
    elif library == "torch":
        plain = baselines.torch_user_baseline(MIN_ENT if loss == "min_ent" else CROSS_ENTROPY)
    else:
        plain = baselines.jax_user_baseline(MIN_ENT if loss == "min_ent" else CROSS_ENTROPY)
    return lambda h, w, b, y: plain(h @ w.T + b, y)


# --- inputs and one step -----------------------------------------------------------------------


def inputs(p, shape: tuple) -> tuple:
    """Seeded float32 ``hidden (N, H)``, ``W (C, H)`` (scaled so that the logits are of
    order 1), ``b = 0`` and class indices, on platform ``p``."""
    n, h, c = shape
    rng = np.random.default_rng(0)
    hidden = rng.standard_normal((n, h), dtype=np.float32)
    w = rng.standard_normal((c, h), dtype=np.float32) * np.float32(h**-0.5)
    return (p.asarray(hidden, "float32"), p.asarray(w, "float32"),
            p.asarray(np.zeros(c, np.float32), "float32"),
            p.asarray(rng.integers(0, c, size=n), "int64"))


def torch_step(fn, args: tuple):
    """One forward+backward reaching hidden, W and b (fresh leaves: no grad accumulates)."""
    leaves = [a.detach().requires_grad_() for a in args[:3]]

    def step():
        fn(*leaves, args[3]).backward()
        for leaf in leaves:
            leaf.grad = None
        return None

    return step


def jax_step(fn, args: tuple):
    """The jitted value_and_grad (hidden, W, b), compiled once; and XLA's temp bytes (None
    where the backend gives no memory analysis)."""
    import jax

    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(*args).compile()
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else analysis.temp_size_in_bytes
    return (lambda: compiled(*args)), temp


def _timed(p, steps: dict, repeats: int) -> dict:
    """Median seconds per step, interleaved A B A B ..., after one warm-up each (a step
    at the issue's shape takes seconds: no time budget cuts the repeats short)."""
    from .bench import _interleaved

    return _interleaved(p, steps, repeats, math.inf, warm_ups=1)


# --- memory ----------------------------------------------------------------------------------


def torch_cpu_peak(loss: str, which: str, shape: tuple, chunk_size: int | None) -> float:
    """MiB by which one forward+backward raises the peak resident size, in a fresh process."""
    n, h, c = shape
    out = subprocess.run([sys.executable, "-m", "entroloss.tools.bench_linear", loss, which,
                          str(n), str(h), str(c), str(chunk_size or 0)],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / MIB


def _child(loss: str, which: str, n: int, h: int, c: int, chunk_size: int) -> int:
    """Peak resident bytes beyond the inputs of one forward+backward (this process)."""
    import torch

    from .memory_probe import _reset_peak, resident_kib

    fn = linear_fn(loss, chunk_size or None) if which == "linear" else naive_fn(loss, "torch")
    small = [torch.randn(8, 16, requires_grad=True), torch.randn(32, 16, requires_grad=True),
             torch.randn(32, requires_grad=True), torch.randint(0, 32, (8,))]
    fn(*small).backward()  # every code path loaded before the baseline
    torch.manual_seed(0)
    hidden = torch.empty(n, h).normal_().requires_grad_()  # in place: no temporary
    w = torch.empty(c, h).normal_(std=h**-0.5).requires_grad_()
    b = torch.zeros(c, requires_grad=True)
    y = torch.randint(0, c, (n,))
    gc.collect()
    _reset_peak()
    before = resident_kib("VmRSS:")
    fn(hidden, w, b, y).backward()
    return (resident_kib("VmHWM:") - before) * 1024


def torch_cuda_peak(step) -> float:
    import torch

    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / MIB


# --- one platform ------------------------------------------------------------------------------


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def compare(p, args: tuple, loss: str, chunk_size: int | None, repeats: int) -> HeadRow:
    """The pair of ``loss`` on platform ``p`` with its `inputs` ``args``."""
    shape = (args[0].shape[0], args[0].shape[1], args[1].shape[0])
    fns = {"linear": linear_fn(loss, chunk_size), "naive": naive_fn(loss, p.library)}
    if p.library == "jax":
        built = {k: jax_step(f, args) for k, f in fns.items()}
        steps = {k: s for k, (s, _) in built.items()}
        memory = {k: None if t is None else t / MIB for k, (_, t) in built.items()}
        kind = "XLA temp"
    else:
        steps = {k: torch_step(f, args) for k, f in fns.items()}
        memory, kind = _torch_memory(p, loss, steps, shape, chunk_size)
    seconds = _timed(p, steps, repeats)
    return HeadRow(p.id, shape, loss, chunk_size, *_names(loss, p.library), seconds["linear"],
                   seconds["naive"], seconds["linear"] / seconds["naive"], kind,
                   memory["linear"], memory["naive"], _ratio(memory["linear"], memory["naive"]))


def _torch_memory(p, loss: str, steps: dict, shape: tuple, chunk_size) -> tuple:
    if p.device_kind == "gpu":
        return {k: torch_cuda_peak(s) for k, s in steps.items()}, "peak allocated beyond inputs"
    figures = {k: torch_cpu_peak(loss, k, shape, chunk_size) for k in steps}
    return figures, "peak resident beyond inputs"


def run(library=None, device=None, *, shape=DEFAULT_SHAPE, chunk_size=DEFAULT_CHUNK,
        repeats=3, losses=None, progress=None) -> tuple[list, list]:
    """(a `HeadRow` per platform x loss, [(platform id, why it is skipped)]): torch and
    JAX only (the other libraries have no autograd to compare with);
    ``progress(i, total, label)`` before each pair and once at the end."""
    platforms, missing = available(library, device)
    missing += [(p.id, "the linear-head comparison runs on torch and JAX")
                for p in platforms if p.library not in LIBRARIES]
    usable = [p for p in platforms if p.library in LIBRARIES]
    losses = LOSSES if losses is None else losses
    total = len(usable) * len(losses)
    rows: list[HeadRow] = []
    for p in usable:
        args = inputs(p, shape)
        for loss in losses:
            if progress:
                progress(len(rows), total, f"{p.id} {loss}")
            rows.append(compare(p, args, loss, chunk_size, repeats))
    if progress:
        progress(total, total, "done")
    return rows, missing


# --- output ----------------------------------------------------------------------------------


def _cell(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def markdown(rows: list) -> str:
    """The table of docs/linear.md: one line per pair."""
    lines = ["| backend | linear head | naive | linear (s) | naive (s) | time ratio | "
             "memory (MiB) | linear | naive | memory ratio |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.backend} | `{r.linear}` | `{r.naive}` | {r.linear_s:.3f} | "
                     f"{r.naive_s:.3f} | {r.time_ratio:.2f} | {r.memory} | "
                     f"{_cell(r.linear_mib, '.0f')} | {_cell(r.naive_mib, '.0f')} | "
                     f"{_cell(r.memory_ratio, '.3f')} |")
    return "\n".join(lines)


def header(shape: tuple, chunk_size: int | None) -> str:
    from .bench import machine

    n, h, c = shape
    m = machine()
    versions = ", ".join(f"{lib} {m[lib]}" for lib in LIBRARIES if lib in m)
    return (f"float32, N={n}, H={h}, C={c} (logits {n * c * 4 / MIB:.0f} MiB), chunk_size="
            f"{chunk_size or 'default'}; {_cpu_name(m)}, {m['cpus']} CPUs; {versions}")


def _cpu_name(m: dict) -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), else what Python knows of it."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return f"{m['processor']} ({m['machine']})"


def main(args) -> int:
    """``entroloss bench --linear``: the table (or ``--json``); exit 2 when nothing ran."""
    from .progress import counter

    shape = tuple(args.head or DEFAULT_SHAPE)
    chunk_size = args.chunk_size or DEFAULT_CHUNK
    rows, missing = run(args.backend, args.device, shape=shape, chunk_size=chunk_size,
                        repeats=min(args.repeats, MAX_REPEATS),
                        progress=counter(not args.json, label_width=40))
    if args.json:
        from .bench import machine

        print(json.dumps({"ok": bool(rows), "ran": {"shape": list(shape), "chunk_size": chunk_size,
                                                    "backend": args.backend, "device": args.device},
                          "machine": machine(), "rows": [asdict(r) for r in rows],
                          "skipped": [dict(backend=b, reason=r) for b, r in missing]}, indent=1))
    else:
        print(header(shape, chunk_size))
        print(markdown(rows))
        for platform_id, reason in missing:
            print(f"skipped {platform_id}: {reason}")
    if not rows:
        print("nothing to compare: neither torch nor JAX is available here", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # a child of torch_cpu_peak: LOSS WHICH N H C CHUNK
    loss_, which_, *numbers = sys.argv[1:]
    print(_child(loss_, which_, *(int(x) for x in numbers)))
