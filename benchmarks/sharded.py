"""Class-sharded (tensor-parallel) losses: the peak memory per rank and the time per
forward+backward of ``P`` gloo ranks on the CPU, each holding ``C/P`` of the classes,
against one process holding them all: ``entroloss bench --sharded``
(``entroloss.tools.bench_sharded``), printed as the table of docs/tensor-parallel.md with
the machine named.

    python benchmarks/sharded.py                           # N=2048, H=256, C=16384; P=1, 2, 4
    python benchmarks/sharded.py --ranks 2 --ranks 8 --only linear_cross_entropy
    python benchmarks/sharded.py --n 64 --h 8 --c 40 --no-memory   # seconds: a smoke run

Memory: the peak resident memory one forward+backward adds on a rank (the gradients
included), the largest of the ranks, each figure in a fresh group of processes. Times: the
slowest rank's median of ``--repeats`` interleaved steps after a warm-up, one thread per
rank; with more ranks than cores they measure the collectives' cost, not a speed-up.
Not a test.
"""

from __future__ import annotations

import argparse

from entroloss.tools import bench_sharded


def main(argv=None) -> None:
    n, h, c = bench_sharded.DEFAULT_SHAPE
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=n)
    parser.add_argument("--h", type=int, default=h)
    parser.add_argument("--c", type=int, default=c)
    parser.add_argument("--ranks", type=int, action="append",
                        help=f"ranks of a sharded run (repeatable; default: {bench_sharded.RANKS})")
    parser.add_argument("--chunk-size", type=int, help="rows per chunk of the linear heads "
                        "(default: the library's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", action="append", choices=bench_sharded.CANDIDATES)
    parser.add_argument("--no-memory", action="store_true", help="the times only")
    args = parser.parse_args(argv)
    shape = (args.n, args.h, args.c)
    rows = bench_sharded.run(shape, tuple(args.ranks or bench_sharded.RANKS),
                             tuple(args.only or bench_sharded.CANDIDATES),
                             chunk_size=args.chunk_size, repeats=args.repeats,
                             memory=not args.no_memory,
                             progress=lambda i, total, label: print(f"[{i}/{total}] {label}",
                                                                    flush=True))
    print(bench_sharded.header(shape, args.chunk_size))
    print(bench_sharded.markdown(rows))


if __name__ == "__main__":
    main()
