"""The command line: ``entroloss verify | bench | demo`` (also ``python -m entroloss``).

Bad input (an unknown loss, backend, device or dtype, a malformed shape, a count below 1)
is refused by argparse with exit code 2 and the valid choices. Each subcommand's
``--json`` prints one JSON object on stdout with an overall ``"ok"``; progress goes to
stderr only, and ``--json`` silences it.
"""

from __future__ import annotations

import argparse
import sys

from ._losses import LOSSES

LIBRARIES = ("numpy", "array_api_strict", "torch", "jax", "cupy")
DEVICES = ("cpu", "cuda", "gpu")
BENCH_DTYPES = ("float32", "bfloat16", "float16")
LOSS_NAMES = tuple(loss.name for loss in LOSSES)  # the public functions, in registry order

_DEVICE_HELP = ("only this device kind: cpu, or the GPU (cuda and gpu mean the same: torch "
                "and CuPy call it cuda, JAX gpu); default: every device found")


def _key(text: str) -> str:
    """``"MIN-ENT (0.1 H)"`` -> ``"min_ent_(0.1_h)"``: case, '-' and spaces alike."""
    return "_".join(text.strip().lower().replace("-", " ").split())


def _loss_aliases() -> dict:
    """Normalised alias -> function name: the function names, the losses' labels
    ("MIN-ENT", "adaptive CE") and the demo table's row labels ("MIN-ENT (0.1 H)")."""
    from .tools.training import SETTINGS

    aliases = {_key(loss.name): loss.name for loss in LOSSES}
    aliases.update({_key(loss.label): loss.name for loss in LOSSES})
    aliases.update({_key(s.label): s.loss.name for s in SETTINGS})
    return aliases


def loss_choice(text: str) -> str:
    """``--loss``'s type: a function name, a loss label or a demo row label, as the
    function name. Anything else is returned as given, and argparse refuses it with the
    list of choices."""
    return _loss_aliases().get(_key(text), text)


def positive_int(text: str) -> int:
    """An int >= 1 (epochs, repeats, chunk rows)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def shape(text: str) -> tuple[int, int]:
    """``"NxC"`` -> ``(N, C)``, both >= 1."""
    parts = text.lower().split("x")
    try:
        n, c = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NxC (rows x classes), e.g. 1024x1000") from None
    if n < 1 or c < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: rows and classes must be at least 1")
    return n, c


def head_shape(text: str) -> tuple[int, int, int]:
    """``"NxHxC"`` -> ``(N, H, C)``, each >= 1."""
    parts = text.lower().split("x")
    try:
        n, h, c = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not NxHxC (tokens x features x classes), e.g. 1024x128x8192") from None
    if min(n, h, c) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: tokens, features and classes must be at least 1")
    return n, h, c


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``entroloss``: every option with a help text, choices where they exist."""
    parser = argparse.ArgumentParser(
        prog="entroloss", description="Check, time and try the losses of entroloss "
        "(also: python -m entroloss).",
        epilog="entroloss COMMAND --help lists a command's options and their choices; bad "
        "input exits 2.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                     title="commands")
    _add_verify(commands)
    _add_demo(commands)
    _add_bench(commands)
    return parser


def _add_verify(commands) -> None:
    summary = ("every loss x every installed backend/device x dtype, values and gradients "
               "against a float64 reference; exits 1 on any mismatch")
    verify = commands.add_parser("verify", help=summary, description=summary)
    verify.add_argument("--backend", choices=LIBRARIES,
                        help="only this library (default: every one installed)")
    verify.add_argument("--device", choices=DEVICES, help=_DEVICE_HELP)
    verify.add_argument("--json", action="store_true",
                        help='one JSON object on stdout: "ok", "checks", "mismatches", a row '
                        "per check and the skipped platforms; no progress on stderr")


def _add_demo(commands) -> None:
    summary = ("train a small classifier on scikit-learn's digits with each loss and compare "
               "accuracy, NLL, calibration and confidence")
    demo = commands.add_parser("demo", help=summary, description=summary)
    demo.add_argument("--backend", choices=LIBRARIES, default="numpy",
                      help="the library to train with (default: %(default)s); every one "
                      "trains the same model from the same start to the same numbers")
    demo.add_argument("--device", choices=DEVICES,
                      help="the device kind: cpu, or the GPU (cuda and gpu mean the same); "
                      "default: the backend's first")
    demo.add_argument("--epochs", type=positive_int, default=30, metavar="N",
                      help="epochs of SGD per loss (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the train/test split, the initial weights and the "
                      "batches (default: %(default)s)")
    demo.add_argument("--loss", action="append", type=loss_choice, choices=LOSS_NAMES,
                      help="only the rows of this loss function (repeatable; default: all). "
                      "The table's labels work too, in any case: MIN-ENT, 'MIN-ENT (0.1 H)', "
                      "'adaptive CE'. cross_entropy (alias 'label smoothing 0.1') selects "
                      "both cross entropy rows, plain and with label smoothing 0.1")
    demo.add_argument("--json", action="store_true",
                      help='one JSON object on stdout: "ok", what ran, and a row per setting '
                      'with its "label", function ("loss") and "options"; no progress on '
                      "stderr")


def _add_bench(commands) -> None:
    summary = ("forward and forward+backward time (and torch CPU peak memory) of each loss on "
               "each backend, as a ratio to that framework's native cross entropy")
    bench = commands.add_parser("bench", help=summary, description=summary)
    bench.add_argument("--backend", choices=LIBRARIES,
                       help="only this library (default: every one installed; "
                       "array_api_strict is never timed)")
    bench.add_argument("--device", choices=DEVICES, help=_DEVICE_HELP)
    bench.add_argument("--shape", action="append", type=shape, metavar="NxC",
                       help="logits of N rows and C classes, e.g. 1024x1000 (repeatable; "
                       "default: 256x10, 128x100, 1024x1000, 4096x8192; 8192x32768 too on a GPU)")
    bench.add_argument("--dtype", action="append", choices=BENCH_DTYPES,
                       help="the logits' dtype (repeatable; default: float32)")
    bench.add_argument("--repeats", type=positive_int, default=15, metavar="N",
                       help="timed calls per candidate, interleaved, the median reported "
                       "(default: %(default)s; fewer when a case runs past its time budget)")
    bench.add_argument("--quick", action="store_true",
                       help="two small shapes only (256x10, 512x1000)")
    bench.add_argument("--compiled", action="store_true",
                       help="also time torch.compile'd losses (slow to compile on CPU)")
    bench.add_argument("--memory", action="store_true",
                       help="also measure torch CPU peak memory, each figure in a fresh process")
    bench.add_argument("--chunk-size", type=positive_int, metavar="ROWS",
                       help="also time (torch) and measure each loss with chunk_size=ROWS")
    bench.add_argument("--json", action="store_true",
                       help='one JSON object on stdout: "ok", what ran, the machine, a row per '
                       "timing, the memory figures and the skipped platforms; no progress "
                       "on stderr")
    _add_bench_linear(bench)
    bench.add_argument("--step", action="store_true",
                       help="instead: a whole torch CPU training step (the demo's MLP, a small "
                       "CIFAR-100 CNN) with each loss against the step with the user's own "
                       "loss, interleaved; --repeats steps a block")


def _add_bench_linear(bench) -> None:
    bench.add_argument("--linear", action="store_true",
                       help="instead: the linear-head losses (linear cross entropy, MIN-ENT, "
                       "entropy) against the naive loss on hidden @ W.T + b, torch and JAX: "
                       "forward+backward time (median of at most 5 --repeats) and memory "
                       "(torch CPU peak resident beyond the inputs; JAX XLA temp bytes)")
    bench.add_argument("--sharded", action="store_true",
                       help="instead: the class-sharded (tensor-parallel) losses over 1, 2 and "
                       "4 gloo ranks on the CPU against one process: peak memory per rank "
                       "(each figure in fresh processes) and forward+backward time")
    bench.add_argument("--head", type=head_shape, metavar="NxHxC",
                       help="with --linear or --sharded: N tokens, H features, C classes (default: "
                       "1024x128x8192, in chunks of --chunk-size rows, default 256)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "bench" and args.step:
        from .tools import bench_step

        return bench_step.main(args)
    if args.command == "bench" and args.linear:
        from .tools import bench_linear

        return bench_linear.main(args)
    if args.command == "bench" and args.sharded:
        from .tools import bench_sharded

        return bench_sharded.main(args)
    if args.command == "bench":
        if args.head:
            build_parser().error("--head applies to bench --linear only (and to --sharded)")
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
