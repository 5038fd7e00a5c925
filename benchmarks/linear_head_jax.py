"""Linear-head losses under ``jax.jit`` against the naive versions on ``hidden @ W.T + b``:
XLA's temporary allocation (the compiled memory analysis) and the time of one jitted
value-and-grad (hidden, W and b), JAX CPU float32.

    python benchmarks/linear_head_jax.py                   # N=8192, H=1024, C=32768
    python benchmarks/linear_head_jax.py --n 1024 --c 4096 --runs 1
    python benchmarks/linear_head_jax.py --no-time         # compile only

The memory figures are exact and repeatable (they need no run); the times are the best of
``--runs`` after one warm-up run. Not a test: the table goes to docs/linear.md.
"""

from __future__ import annotations

import argparse
import platform
import time

MIB = 2**20


def _naive_cross_entropy(h, w, b, y):
    import jax
    import jax.numpy as jnp

    z = h @ w.T + b
    picked = jnp.take_along_axis(z, y[:, None], axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(z, axis=-1) - picked)


def candidates() -> dict:
    """Name -> (loss of (h, w, b, y), the name of its naive counterpart or None)."""
    import entroloss as el

    return {
        "naive jnp cross entropy on `h @ W.T + b`": (_naive_cross_entropy, None),
        "`el.linear_cross_entropy`": (
            lambda h, w, b, y: el.linear_cross_entropy(h, w, y, bias=b),
            "naive jnp cross entropy on `h @ W.T + b`"),
        "`el.min_ent(h @ W.T + b, y)`": (lambda h, w, b, y: el.min_ent(h @ w.T + b, y), None),
        "`el.linear_min_ent`": (lambda h, w, b, y: el.linear_min_ent(h, w, y, bias=b),
                                "`el.min_ent(h @ W.T + b, y)`"),
        "`el.entropy(h @ W.T + b).mean()`": (lambda h, w, b, y: el.entropy(h @ w.T + b).mean(),
                                             None),
        "`el.linear_entropy(...).mean()`": (
            lambda h, w, b, y: el.linear_entropy(h, w, bias=b).mean(),
            "`el.entropy(h @ W.T + b).mean()`"),
    }


def measure(fn, n: int, h: int, c: int, runs: int) -> dict:
    """XLA's temp bytes of the jitted value-and-grad and, with ``runs``, its best time."""
    import jax
    import jax.numpy as jnp

    f32 = jnp.float32
    shapes = (jax.ShapeDtypeStruct((n, h), f32), jax.ShapeDtypeStruct((c, h), f32),
              jax.ShapeDtypeStruct((c,), f32), jax.ShapeDtypeStruct((n,), jnp.int32))
    compiled = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2))).lower(*shapes).compile()
    out = {"temp": compiled.memory_analysis().temp_size_in_bytes, "seconds": None}
    if runs:
        keys = jax.random.split(jax.random.key(0), 3)
        args = (jax.random.normal(keys[0], (n, h), f32),
                jax.random.normal(keys[1], (c, h), f32) * h**-0.5, jnp.zeros((c,), f32),
                jax.random.randint(keys[2], (n,), 0, c))
        jax.block_until_ready(compiled(*args))
        best = float("inf")
        for _ in range(runs):
            start = time.perf_counter()
            jax.block_until_ready(compiled(*args))
            best = min(best, time.perf_counter() - start)
        out["seconds"] = best
    return out


def main() -> None:
    import jax

    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--h", type=int, default=1024)
    parser.add_argument("--c", type=int, default=32768)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--no-time", action="store_true", help="compile only")
    args = parser.parse_args()
    runs = 0 if args.no_time else args.runs
    print(f"JAX {jax.__version__} {jax.devices()[0].platform.upper()} ({platform.processor() or platform.machine()}), "
          f"float32, N={args.n}, H={args.h}, C={args.c}: logits {args.n * args.c * 4 / MIB:.0f} MiB")
    print("| candidate | XLA temp (MiB) | temp ratio | value+grad (s) | time ratio |")
    print("|---|---:|---:|---:|---:|")
    results: dict = {}
    for name, (fn, naive) in candidates().items():
        r = results[name] = measure(fn, args.n, args.h, args.c, runs)
        temp_ratio = time_ratio = ""
        if naive is not None:
            temp_ratio = f"{r['temp'] / results[naive]['temp']:.3f}"
            if runs:
                time_ratio = f"{r['seconds'] / results[naive]['seconds']:.2f}"
        seconds = "" if r["seconds"] is None else f"{r['seconds']:.2f}"
        print(f"| {name} | {r['temp'] / MIB:.0f} | {temp_ratio} | {seconds} | {time_ratio} |",
              flush=True)


if __name__ == "__main__":
    main()
