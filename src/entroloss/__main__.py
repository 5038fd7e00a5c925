"""The command line: ``entroloss verify`` (and ``python -m entroloss``)."""

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
    args = parser.parse_args(argv)
    if args.command == "verify":
        from . import _verify

        return _verify.main(args)
    return 2  # pragma: no cover - argparse enforces a command


if __name__ == "__main__":
    sys.exit(main())
