"""``entroloss demo``: train one small classifier per loss on scikit-learn's digits and
compare test accuracy, NLL, calibration (ECE) and confidence.

The model (a one-hidden-layer MLP), the loss settings and the training loop are those of
:mod:`entroloss.tools.training`, written against the array API: the same code trains on
every backend, from the same initial weights on the same batches, so the backends' tables
agree up to float32 rounding.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass

from .platforms import available
from .progress import ProgressBar
from .training import SETTINGS, calibration, load_digits_split, train


@dataclass
class Result:
    """One row of the table: a setting (its display label, the function ``entroloss.<loss>``
    and the options it was called with), its test metrics and its training time."""

    label: str
    loss: str
    options: dict
    accuracy: float
    nll: float
    ece: float
    entropy: float
    seconds: float


def run(library="numpy", device=None, *, epochs=30, seed=0, losses=None, progress=True):
    """(the platform trained on, a `Result` per setting). ``losses``: function names (each
    keeps every row of that function) or row labels to keep (all when None); ``progress``:
    the bar on stderr."""
    platforms, missing = available(library, device)
    if not platforms:
        reason = "; ".join(f"{p}: {r}" for p, r in missing) or "no such backend"
        raise SystemExit(f"entroloss demo: backend {library!r} is not available here ({reason})")
    platform = platforms[0]
    data = load_digits_split(seed)
    chosen = [s for s in SETTINGS if losses is None or s.loss.name in losses or s.label in losses]
    bar = ProgressBar(enabled=progress)
    results = []
    for run_number, setting in enumerate(chosen, 1):
        bar.log(f"[{run_number}/{len(chosen)}] training with {setting.label} ...")
        probabilities, seconds = train(platform, setting, data, epochs=epochs, seed=seed,
                                       progress=_epoch_progress(bar, run_number, len(chosen),
                                                                setting.label))
        results.append(Result(setting.label, setting.loss.name, dict(setting.options),
                              **calibration(probabilities, data[3]), seconds=seconds))
    return platform, results


def _epoch_progress(bar: ProgressBar, run_number: int, runs: int, label: str):
    """``progress(epoch, epochs)`` for `train`: the bar over all runs, this one's epoch."""

    def progress(epoch, epochs):
        bar.draw((run_number - 1) + epoch / epochs, runs,
                 f"{run_number}/{runs} {label:<22} epoch {epoch}/{epochs}")
        if run_number == runs and epoch == epochs:
            bar.finish()

    return progress


def table(platform, results, epochs, sizes=(1258, 539)) -> str:
    """The set-up in one line, then one row per `Result` and what the columns mean."""
    lines = [
        f"digits (scikit-learn, {sizes[0]} train / {sizes[1]} test), MLP 64-64-10, {epochs} epochs of SGD "
        f"(momentum 0.9, lr 0.05, batch 64), backend {platform.id}, float32",
        f"{'loss':<22}{'accuracy':>10}{'NLL':>9}{'ECE':>9}{'entropy':>9}{'time s':>9}",
        "-" * 68,
    ]
    for r in results:
        lines.append(f"{r.label:<22}{r.accuracy:>10.4f}{r.nll:>9.4f}{r.ece:>9.4f}{r.entropy:>9.4f}"
                     f"{r.seconds:>9.2f}")
    lines.append("NLL: mean -log p(true class); ECE: expected calibration error, 15 bins;"
                 " entropy: mean predictive entropy (nats)")
    return "\n".join(lines)


def main(args) -> int:
    """``entroloss demo``: the table, or with ``--json`` one object: ``"ok"`` (every
    setting trained to finite metrics), what ran, and a row per setting with its
    ``label``, ``loss`` (the function) and ``options`` beside the metrics. Exit 1 when a
    setting diverged (a NaN or infinite metric)."""
    losses = list(dict.fromkeys(args.loss)) if args.loss else None
    platform, results = run(args.backend, args.device, epochs=args.epochs, seed=args.seed,
                            losses=losses, progress=not args.json)
    ok = all(math.isfinite(getattr(r, k)) for r in results
             for k in ("accuracy", "nll", "ece", "entropy"))
    if args.json:
        print(json.dumps({"ok": ok, "backend": platform.id, "epochs": args.epochs,
                          "seed": args.seed, "losses": list(dict.fromkeys(r.loss for r in results)),
                          "results": [asdict(r) for r in results]}, indent=1))
    else:
        print(table(platform, results, args.epochs))
    return 0 if ok else 1
