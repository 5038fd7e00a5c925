"""A whole torch training step with each loss against the same step with the user's own
loss (``F.cross_entropy``, or the few lines a user writes for the regularised losses):
``entroloss bench --step`` (``entroloss.tools.bench_step``), the figures of
docs/performance.md.

    python benchmarks/step.py                     # both models, every loss, 1 thread
    python benchmarks/step.py --model mlp --loss cross_entropy --loss min_ent

Not a test: on a shared machine the per-block ratios spread by several percent; the
table gives the median and the range of the blocks.
"""

from __future__ import annotations

import argparse

from entroloss.tools import bench_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", action="append", choices=bench_step.MODELS)
    parser.add_argument("--loss", action="append")
    parser.add_argument("--steps", type=int, default=20, help="steps per interleaved block")
    parser.add_argument("--blocks", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    rows = bench_step.run(args.model or bench_step.MODELS, args.loss, steps=args.steps,
                          blocks=args.blocks, threads=args.threads)
    print(bench_step.table(rows))


if __name__ == "__main__":
    main()
