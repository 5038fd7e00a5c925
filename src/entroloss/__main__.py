"""The command line: ``entroloss verify | bench | demo`` (also ``python -m entroloss``)."""

from __future__ import annotations

import argparse
import sys

LIBRARIES = ("numpy", "array_api_strict", "torch", "jax", "cupy")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entroloss", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    verify = commands.add_parser(
        "verify",
        help="every loss x every installed backend/device x dtype, values and gradients "
        "against a float64 reference; exits 1 on any mismatch",
    )
    verify.add_argument("--backend", choices=LIBRARIES, help="only this library")
    verify.add_argument("--device", choices=("cpu", "cuda", "gpu"), help="only this device kind")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    demo = commands.add_parser(
        "demo",
        help="train a small classifier on scikit-learn's digits with each loss and compare "
        "accuracy, NLL, calibration and confidence",
    )
    demo.add_argument("--backend", choices=LIBRARIES, default="numpy")
    demo.add_argument("--device", choices=("cpu", "cuda", "gpu"))
    demo.add_argument("--epochs", type=int, default=30)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--loss", action="append", help="only this loss (repeatable)")
    demo.add_argument("--json", action="store_true", help="machine-readable output")
    bench = commands.add_parser(
        "bench",
        help="forward and forward+backward time (and torch CPU peak memory) of each loss on "
        "each backend, as a ratio to that framework's native cross entropy",
    )
    bench.add_argument("--backend", choices=LIBRARIES)
    bench.add_argument("--device", choices=("cpu", "cuda", "gpu"))
    bench.add_argument("--shape", action="append", help="NxC, repeatable (default: a grid)")
    bench.add_argument("--dtype", action="append", choices=("float32", "bfloat16", "float16"))
    bench.add_argument("--repeats", type=int, default=15)
    bench.add_argument("--quick", action="store_true", help="two small shapes only")
    bench.add_argument("--compiled", action="store_true",
                       help="also time torch.compile'd losses (slow to compile on CPU)")
    bench.add_argument("--memory", action="store_true", help="also measure torch CPU peak memory")
    bench.add_argument("--chunk-size", type=int, metavar="ROWS",
                       help="also time (torch) and measure each loss with chunk_size=ROWS")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.command == "bench":
        from .tools import bench

        return bench.main(args)
    if args.command == "verify":
        from .tools import verify

        return verify.main(args)
    if args.command == "demo":
        from .tools import demo

        return demo.main(args)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
