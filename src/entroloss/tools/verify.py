"""``entroloss verify``: every loss on every installed backend, device and dtype, values
and gradients against an independent float64 reference (``_reference``: the definitions
evaluated literally, gradients by central finite differences)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

import numpy as np

from .. import _api
from . import reference as _reference
from .platforms import available

LOSSES = ("cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal")
# error bounds relative to max(1, |reference|): rounding of the inputs is in the reference
BOUNDS = {"float64": (1e-9, 1e-6), "float32": (1e-5, 1e-4), "float16": (3e-3, 3e-3),
          "bfloat16": (2e-2, 2e-2)}
# a loss's own options, in the reference's names
_EXTRA = {
    "cross_entropy": ({"base": 2.0}, {"ce_base": 2.0}),
    "adaptive_ce": ({}, {"gamma": 1.0}),
    "focal": ({"gamma": 2.0}, {"gamma": 2.0}),
    "min_ent": ({"entropy_weight": 0.5, "entropy_base": 2.0},
                {"reg_weight": 0.5, "reg_base": 2.0}),
    "mix_ent": ({"reverse_weight": 0.3, "eps": 1e-4}, {"reg_weight": 0.3, "eps": 1e-4}),
}


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


def _gradient(platform, fn, logits, target, options):
    """Gradients of sum(loss) by every path the platform has: value_and_grad, and the
    framework's autograd where there is one."""
    _, grads = _api.value_and_grad(fn, logits, target, **options)
    paths = [grads["logits"]]
    if platform.library == "torch":
        z = logits.detach().requires_grad_(True)
        fn(z, target, **options).sum().backward()
        paths.append(z.grad)
    elif platform.library == "jax":
        import jax

        paths.append(jax.grad(lambda z: fn(z, target, **options).sum())(logits))
    return paths


def run(library=None, device=None):
    _enable_jax_x64()
    platforms, missing = available(library, device)
    rng = np.random.default_rng(0)
    cases = list(_cases(rng))
    rows = []
    for platform in platforms:
        for dtype in platform.dtypes:
            for name in LOSSES:
                fn = getattr(_api, name)
                own, ref_own = _EXTRA[name]
                for case, z, t, common in cases:
                    logits = platform.asarray(z, dtype)
                    soft = t.dtype.kind == "f"
                    target = platform.asarray(t, dtype if soft else "int64")
                    options = dict(common, **own, reduction="sum")
                    ref_options = dict(common, **own, reduction="sum")
                    if "weight" in common:
                        options["weight"] = platform.asarray(common["weight"], dtype)
                        ref_options["weight"] = platform.to_numpy(options["weight"])
                    seen_z = platform.to_numpy(logits)
                    seen_t = platform.to_numpy(target) if soft else t
                    expected = _reference.loss(name, seen_z, seen_t, **ref_options)
                    expected_grad = _reference.gradient(name, seen_z, seen_t, **ref_options)
                    scale = max(1.0, abs(float(expected)))
                    value_error = abs(float(platform.to_numpy(fn(logits, target, **options)))
                                      - expected) / scale
                    grad_scale = max(1.0, float(np.max(np.abs(expected_grad))))
                    grad_error = max(
                        float(np.max(np.abs(platform.to_numpy(g) - expected_grad))) / grad_scale
                        for g in _gradient(platform, fn, logits, target, options)
                    )
                    value_bound, grad_bound = BOUNDS[dtype]
                    ok = value_error <= value_bound and grad_error <= grad_bound
                    rows.append(Row(platform.id, dtype, name, case, value_error, grad_error, ok))
    return rows, missing


def _enable_jax_x64():
    try:
        import jax
    except ImportError:
        return
    jax.config.update("jax_enable_x64", True)


def table(rows, missing) -> str:
    """A backend/dtype x loss table of the worst value and gradient errors."""
    keys = list(dict.fromkeys((r.backend, r.dtype) for r in rows))
    header = f"{'backend':<18}{'dtype':<10}" + "".join(f"{name:>22}" for name in LOSSES) + "  status"
    lines = [header, f"{'':<28}" + "".join(f"{'value / grad error':>22}" for _ in LOSSES), "-" * len(header)]
    for backend, dtype in keys:
        cells, good = [], True
        for name in LOSSES:
            these = [r for r in rows if (r.backend, r.dtype, r.loss) == (backend, dtype, name)]
            good &= all(r.ok for r in these)
            worst_v = max(r.value_error for r in these)
            worst_g = max(r.grad_error for r in these)
            cells.append(f"{worst_v:.1e} / {worst_g:.1e}".rjust(22))
        lines.append(f"{backend:<18}{dtype:<10}" + "".join(cells) + ("  ok" if good else "  MISMATCH"))
    lines.append("")
    lines.append("bounds (relative to max(1, |reference|)), value / grad: "
                 + ", ".join(f"{k} {v:.0e} / {g:.0e}" for k, (v, g) in BOUNDS.items()))
    lines.append("cases per cell: index, soft, weighted-ignore, kdim (reduction sum); gradients"
                 " by value_and_grad and, on torch and JAX, by their autograd")
    for platform_id, reason in missing:
        lines.append(f"skipped {platform_id}: {reason}")
    failed = [r for r in rows if not r.ok]
    lines.append(f"{len(rows)} checks, {len(failed)} mismatches")
    for r in failed:
        lines.append(f"  MISMATCH {r.backend} {r.dtype} {r.loss} {r.case}: value {r.value_error:.2e},"
                     f" grad {r.grad_error:.2e}")
    return "\n".join(lines)


def main(args) -> int:
    rows, missing = run(args.backend, args.device)
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows],
                          "skipped": [{"backend": b, "reason": r} for b, r in missing]}, indent=1))
    else:
        print(table(rows, missing))
    if not rows:
        print("no backend to verify", flush=True)
        return 2
    return 0 if all(r.ok for r in rows) else 1
