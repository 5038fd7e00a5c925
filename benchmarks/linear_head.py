"""The linear-head losses against the naive loss on ``hidden @ W.T + b`` at the issue's
shape (N=8192 tokens, H=1024, C=32768, float32, the default chunk size: 256 rows), torch
and JAX: ``entroloss bench --linear`` (``entroloss.tools.bench_linear``) at that shape,
printed as the table of docs/linear.md with the machine named.

    python benchmarks/linear_head.py                          # torch and JAX, 1 timed run each
    python benchmarks/linear_head.py --backend jax --repeats 3
    python benchmarks/linear_head.py --n 2048 --chunk-size 256

Times: the median of ``--repeats`` interleaved runs after a warm-up (on a shared machine
good to 10-20 %); memory: torch CPU the peak resident memory beyond the inputs, the
gradients included, in a fresh process per figure; JAX XLA's temporary allocation of the
jitted value_and_grad (exact). Not a test.
"""

from __future__ import annotations

import argparse

from entroloss.tools import bench_linear


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--h", type=int, default=1024)
    parser.add_argument("--c", type=int, default=32768)
    parser.add_argument("--chunk-size", type=int, help="rows per chunk (default: the library's)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--backend", choices=bench_linear.LIBRARIES)
    parser.add_argument("--only", action="append", choices=bench_linear.LOSSES)
    args = parser.parse_args()
    shape = (args.n, args.h, args.c)
    rows, _ = bench_linear.run(args.backend, "cpu", shape=shape, chunk_size=args.chunk_size,
                               repeats=args.repeats, losses=tuple(args.only or bench_linear.LOSSES),
                               progress=lambda i, total, label: print(f"[{i}/{total}] {label}",
                                                                      flush=True))
    print(bench_linear.header(shape, args.chunk_size))
    print(bench_linear.markdown(rows))


if __name__ == "__main__":
    main()
