"""``entroloss verify``: every loss on every installed backend, device and dtype, values
and gradients against an independent float64 reference.

The reference (:mod:`entroloss.tools.reference`) evaluates the definitions of
``docs/math.md`` literally and takes its gradients by central finite differences, never
from the package's hand-derived backward. Each loss is called with its registry entry's
``example`` options (a regularizer switched on, a base other than e), and the loss and the
reference get exactly the same keyword arguments.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass

import numpy as np

import entroloss as el

from .._losses import LOSSES, LossDef
from . import reference
from .platforms import Platform, available
from .progress import counter

# error bounds relative to max(1, |reference|): rounding of the inputs is in the reference
BOUNDS = {"float64": (1e-9, 1e-6), "float32": (1e-5, 1e-4), "float16": (3e-3, 3e-3),
          "bfloat16": (2e-2, 2e-2)}


@dataclass
class Row:
    backend: str
    dtype: str
    loss: str
    case: str
    value_error: float
    grad_error: float
    ok: bool


def _cases(rng):
    """(name, logits, target, common options) of the kinds users pass."""
    z = rng.normal(scale=2.0, size=(6, 5))
    y = rng.integers(0, 5, size=6)
    soft = rng.dirichlet(np.ones(5), size=6)
    yield "index", z, y, {}
    yield "soft", z, soft, {"label_smoothing": 0.1}
    ignored = y.copy()
    ignored[::3] = -100
    yield "weighted-ignore", z, ignored, {"weight": rng.uniform(0.5, 2, 5), "ignore_index": -100,
                                          "label_smoothing": 0.05}
    yield "kdim", rng.normal(size=(2, 5, 3)), rng.integers(0, 5, size=(2, 3)), {"axis": 1}


def _gradients(platform: Platform, fn, logits, target, options: dict) -> list:
    """Gradients of sum(loss) by every path the platform has: value_and_grad, and the
    framework's autograd where there is one."""
    _, grads = el.value_and_grad(fn, logits, target, **options)
    paths = [grads["logits"]]
    if platform.library == "torch":
        z = logits.detach().requires_grad_(True)
        fn(z, target, **options).sum().backward()
        paths.append(z.grad)
    elif platform.library == "jax":
        import jax

        paths.append(jax.grad(lambda z: fn(z, target, **options).sum())(logits))
    return paths


def _relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """The largest absolute difference, relative to max(1, the largest |expected|)."""
    return float(np.max(np.abs(actual - expected))) / max(1.0, float(np.max(np.abs(expected))))


def _check(platform: Platform, dtype: str, loss: LossDef, case: tuple) -> Row:
    """One loss on one case in one dtype: its value and gradients against the reference,
    which sees the inputs as the backend holds them (rounded to ``dtype``)."""
    case_name, z, t, common = case
    fn = getattr(el, loss.name)
    soft = t.dtype.kind == "f"
    logits = platform.asarray(z, dtype)
    target = platform.asarray(t, dtype if soft else "int64")
    options = dict(common, **loss.example, reduction="sum")
    reference_options = dict(options)
    if "weight" in common:
        options["weight"] = platform.asarray(common["weight"], dtype)
        reference_options["weight"] = platform.to_numpy(options["weight"])
    seen_z = platform.to_numpy(logits)
    seen_t = platform.to_numpy(target) if soft else t
    expected = reference.loss(loss.name, seen_z, seen_t, **reference_options)
    expected_grad = reference.gradient(loss.name, seen_z, seen_t, **reference_options)
    value_error = _relative_error(platform.to_numpy(fn(logits, target, **options)), expected)
    grad_error = max(_relative_error(platform.to_numpy(g), expected_grad)
                     for g in _gradients(platform, fn, logits, target, options))
    value_bound, grad_bound = BOUNDS[dtype]
    ok = value_error <= value_bound and grad_error <= grad_bound
    return Row(platform.id, dtype, loss.name, case_name, value_error, grad_error, ok)


def run(library=None, device=None, *, progress=None) -> tuple[list, list]:
    """(a `Row` per platform x dtype x loss x case, [(platform id, why it is skipped)]);
    ``progress(i, total, label)`` before each platform and dtype, and once at the end."""
    _enable_jax_x64()
    platforms, missing = available(library, device)
    cases = list(_cases(np.random.default_rng(0)))
    work = [(platform, dtype) for platform in platforms for dtype in platform.dtypes]
    rows = []
    for i, (platform, dtype) in enumerate(work):
        if progress:
            progress(i, len(work), f"{platform.id} {dtype}")
        rows += [_check(platform, dtype, loss, case) for loss in LOSSES for case in cases]
    if progress:
        progress(len(work), len(work), "done")
    return rows, missing


def _enable_jax_x64():
    """float64 on JAX, which would otherwise compute float64 inputs in float32."""
    try:
        import jax
    except ImportError:
        return
    jax.config.update("jax_enable_x64", True)


def _cell(rows: list) -> tuple[str, bool]:
    """One table cell: the worst value and gradient errors of ``rows``; whether all passed."""
    worst_v = max(r.value_error for r in rows)
    worst_g = max(r.grad_error for r in rows)
    return f"{worst_v:.1e} / {worst_g:.1e}".rjust(22), all(r.ok for r in rows)


def table(rows, missing) -> str:
    """A backend/dtype x loss table of the worst value and gradient errors."""
    names = [loss.name for loss in LOSSES]
    keys = list(dict.fromkeys((r.backend, r.dtype) for r in rows))
    header = f"{'backend':<18}{'dtype':<10}" + "".join(f"{name:>22}" for name in names) + "  status"
    lines = [header, f"{'':<28}" + "".join(f"{'value / grad error':>22}" for _ in names),
             "-" * len(header)]
    for backend, dtype in keys:
        cells = [_cell([r for r in rows if (r.backend, r.dtype, r.loss) == (backend, dtype, name)])
                 for name in names]
        good = all(ok for _, ok in cells)
        lines.append(f"{backend:<18}{dtype:<10}" + "".join(text for text, _ in cells)
                     + ("  ok" if good else "  MISMATCH"))
    return "\n".join(lines + [""] + _footer(rows, missing))


def _footer(rows, missing) -> list:
    """The bounds, what a cell covers, the skipped platforms and every mismatch."""
    lines = ["bounds (relative to max(1, |reference|)), value / grad: "
             + ", ".join(f"{k} {v:.0e} / {g:.0e}" for k, (v, g) in BOUNDS.items()),
             "cases per cell: index, soft, weighted-ignore, kdim (reduction sum); gradients"
             " by value_and_grad and, on torch and JAX, by their autograd"]
    lines += [f"skipped {platform_id}: {reason}" for platform_id, reason in missing]
    failed = [r for r in rows if not r.ok]
    lines.append(f"{len(rows)} checks, {len(failed)} mismatches")
    lines += [f"  MISMATCH {r.backend} {r.dtype} {r.loss} {r.case}: value {r.value_error:.2e},"
              f" grad {r.grad_error:.2e}" for r in failed]
    return lines


def _progress_bar(enabled: bool):
    # loading the frameworks takes a few seconds before the first platform: a line says so
    return counter(enabled, label_width=32, start="loading the installed backends ...")


def summary(rows) -> dict:
    """The overall verdict: ``ok`` (some check ran and none failed), ``checks``,
    ``mismatches``."""
    mismatches = sum(not r.ok for r in rows)
    return {"ok": bool(rows) and mismatches == 0, "checks": len(rows), "mismatches": mismatches}


def main(args) -> int:
    """``entroloss verify``: the table (or ``--json``); exit 0 when every check passed, 1
    on any mismatch, 2 when there was nothing to verify."""
    rows, missing = run(args.backend, args.device, progress=_progress_bar(not args.json))
    if args.json:
        print(json.dumps({**summary(rows), "rows": [asdict(r) for r in rows],
                          "skipped": [{"backend": b, "reason": r} for b, r in missing]}, indent=1))
    else:
        print(table(rows, missing))
    if not rows:
        print("no backend to verify", file=sys.stderr if args.json else sys.stdout, flush=True)
        return 2
    return 0 if all(r.ok for r in rows) else 1
