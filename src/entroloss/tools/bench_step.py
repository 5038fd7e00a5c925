"""``entroloss bench --step``: a whole torch training step (forward, loss, backward, SGD)
with each loss of the registry against the same step with what the user would write
instead (``F.cross_entropy``; the user's composition for the other losses,
``baselines.torch_user_baseline``), as a user feels the loss: its share of a step.

The models: the demo's MLP (64 -> 256 -> 10, batch 256) and a small CIFAR-100 CNN (two
3x3 convolutions and a linear head, 3x32x32 inputs, batch 128), on random inputs (only
the time is measured). The candidates run interleaved (ours, user, ours, user, ...) in
blocks of steps, torch on the threads it is given, and each ratio is the median over the
blocks of ours / user in that block, so that a drift in the machine's load hits both.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass

from .._losses import LOSSES
from .baselines import bound, torch_user_baseline

__all__ = ["MODELS", "StepRow", "run", "table", "main"]

# name -> (batch, builder of (model, input batch, labels)); kept small: a CPU step
MODELS = ("mlp", "cnn")


@dataclass
class StepRow:
    model: str
    batch: int
    classes: int
    loss: str
    ours_us: float  # median per training step
    user_us: float
    ratio: float  # median over blocks of ours / user
    ratio_low: float  # the spread of the blocks' ratios (min, max)
    ratio_high: float


def _model(torch, name: str, seed: int = 0):
    """(model, inputs, labels, classes) of the named model, on the CPU."""
    nn = torch.nn
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    if name == "mlp":
        model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 10))
        x, classes = torch.randn(256, 64, generator=g), 10
    elif name == "cnn":
        model = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 8 * 8, 100))
        x, classes = torch.randn(128, 3, 32, 32, generator=g), 100
    else:
        raise ValueError(f"unknown model {name!r}; one of {MODELS}")
    y = torch.randint(0, classes, (x.shape[0],), generator=g)
    return model, x, y, classes


def _stepper(torch, model, x, y, loss_fn):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return step


def run(models=MODELS, losses=None, *, steps: int = 20, blocks: int = 15,
        threads: int | None = 1) -> list[StepRow]:
    """One row per (model, loss): the step with entroloss's loss against the step with the
    user's, interleaved block by block (``steps`` steps a block)."""
    import torch

    if threads is not None:
        torch.set_num_threads(threads)
    chosen = [d for d in LOSSES if losses is None or d.name in losses]
    rows = []
    for name in models:
        for definition in chosen:
            model, x, y, classes = _model(torch, name)
            candidates = {"ours": _stepper(torch, model, x, y, bound(definition)),
                          "user": _stepper(torch, model, x, y, torch_user_baseline(definition))}
            times: dict[str, list[float]] = {k: [] for k in candidates}
            for fn in candidates.values():  # warm-up: first calls, allocator, caches
                for _ in range(3):
                    fn()
            for _ in range(blocks):
                for k, fn in candidates.items():
                    start = time.perf_counter()
                    for _ in range(steps):
                        fn()
                    times[k].append((time.perf_counter() - start) / steps)
            ratios = [a / b for a, b in zip(times["ours"], times["user"], strict=True)]
            rows.append(StepRow(name, int(x.shape[0]), classes, definition.name,
                                statistics.median(times["ours"]) * 1e6,
                                statistics.median(times["user"]) * 1e6,
                                statistics.median(ratios), min(ratios), max(ratios)))
    return rows


def table(rows: list[StepRow]) -> str:
    lines = [f"{'model':<5} {'batch':>5} {'C':>4}  {'loss':<14}{'ours µs':>10}{'user µs':>10}"
             f"{'ratio':>8}  {'blocks':>11}"]
    for r in rows:
        lines.append(f"{r.model:<5} {r.batch:>5} {r.classes:>4}  {r.loss:<14}{r.ours_us:>10.1f}"
                     f"{r.user_us:>10.1f}{r.ratio:>8.3f}  {r.ratio_low:.2f}-{r.ratio_high:.2f}")
    return "\n".join(lines)


def main(args) -> int:
    import json

    rows = run(steps=max(args.repeats, 1), blocks=15)
    if args.json:
        print(json.dumps({"ok": True, "rows": [asdict(r) for r in rows]}, indent=1))
    else:
        print("training step (forward, loss, backward, SGD), torch CPU, 1 thread; "
              "ratio = ours / the user's loss, median of interleaved blocks")
        print(table(rows))
    return 0
