"""``entroloss demo``: train one small classifier per loss on scikit-learn's digits and
compare test accuracy, NLL, calibration (ECE) and confidence.

The model (a one-hidden-layer MLP) and the training loop are written against the array
API, so the same code trains on NumPy (gradients from ``value_and_grad``, backpropagated
by hand through the MLP), array-api-strict and CuPy the same way, on torch through
``backward()`` and on JAX through ``jax.value_and_grad`` under ``jax.jit``. Every backend
starts from the same initial weights and sees the same batches, so their tables agree up
to float32 rounding.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np

from .. import _api
from .platforms import available

# (row label, loss function, options). Weights are modest: the papers do not give theirs,
# and R is scaled by -log(eps) ~ 13.8 for one-hot targets.
LOSSES = [
    ("cross entropy", "cross_entropy", {}),
    ("label smoothing 0.1", "cross_entropy", {"label_smoothing": 0.1}),
    ("MIN-ENT (0.1 H)", "min_ent", {"entropy_weight": 0.1}),
    ("MIX-ENT (0.02 R)", "mix_ent", {"reverse_weight": 0.02}),
    ("adaptive CE", "adaptive_ce", {}),
    ("focal gamma=2", "focal", {"gamma": 2.0}),
]


@dataclass
class Result:
    loss: str
    accuracy: float
    nll: float
    ece: float
    entropy: float
    seconds: float


def load_digits_split(seed: int = 0, test_fraction: float = 0.3):
    """Standardised digits (1797 x 64, 10 classes), a fixed stratified split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SystemExit(
            "entroloss demo needs scikit-learn for its data set: pip install 'entroloss[demo]'"
        ) from None
    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for c in range(10):
        members = np.flatnonzero(y == c)
        test[rng.choice(members, int(round(test_fraction * len(members))), replace=False)] = True
    mean, std = x[~test].mean(0), x[~test].std(0) + 1e-6
    x = ((x - mean) / std).astype(np.float32)
    return x[~test], y[~test], x[test], y[test]


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Accuracy, NLL, expected calibration error (top label, equal-width bins), entropy."""
    p = np.clip(probabilities.astype(np.float64), 1e-300, 1.0)
    confidence, predicted = p.max(1), p.argmax(1)
    correct = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return {
        "accuracy": float(correct.mean()),
        "nll": float(-np.mean(np.log(p[np.arange(len(labels)), labels]))),
        "ece": float(ece),
        "entropy": float(np.mean(-np.sum(p * np.log(p), axis=1))),
    }


def init_params(rng, features: int, hidden: int, classes: int) -> dict:
    return {
        "w1": (rng.normal(size=(features, hidden)) * math.sqrt(2 / features)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.normal(size=(hidden, classes)) * math.sqrt(1 / hidden)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }


def forward(xp, params, x):
    h = x @ params["w1"] + params["b1"]
    a = xp.maximum(h, xp.zeros_like(h))
    return a @ params["w2"] + params["b2"], (h, a)


def manual_gradients(xp, params, x, cache, d_logits):
    """Backpropagation through the MLP by hand (for backends without autograd)."""
    h, a = cache
    d_a = d_logits @ params["w2"].T
    d_h = xp.where(h > 0, d_a, xp.zeros_like(d_a))
    return {
        "w2": a.T @ d_logits,
        "b2": xp.sum(d_logits, axis=0),
        "w1": x.T @ d_h,
        "b1": xp.sum(d_h, axis=0),
    }


class _Trainer:
    """One backend's way of getting (loss, gradients) for a batch."""

    def __init__(self, platform, fn, options):
        self.platform, self.fn, self.options, self.xp = platform, fn, options, platform.xp
        if platform.library == "jax":
            import jax

            def objective(params, x, y):
                logits, _ = forward(jax.numpy, params, x)
                return fn(logits, y, **options)

            self._jax_step = jax.jit(jax.value_and_grad(objective))

    def gradients(self, params, x, y):
        library = self.platform.library
        if library == "torch":
            import torch

            leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
            logits, _ = forward(self.xp, leaves, x)
            loss = self.fn(logits, y, **self.options)
            grads = torch.autograd.grad(loss, list(leaves.values()))
            return dict(zip(leaves, grads))
        if library == "jax":
            return self._jax_step(params, x, y)[1]
        logits, cache = forward(self.xp, params, x)
        _, g = _api.value_and_grad(self.fn, logits, y, **self.options)
        return manual_gradients(self.xp, params, x, cache, g["logits"])


def train(platform, name, options, data, *, epochs, seed, batch=64, lr=0.05, momentum=0.9,
          weight_decay=1e-4, hidden=64, progress=None) -> tuple:
    """Train from a seeded initialisation; return (test probabilities, seconds)."""
    xp = platform.xp
    x_train, y_train, x_test, _ = data
    rng = np.random.default_rng(seed)
    params = {k: platform.asarray(v, "float32")
              for k, v in init_params(rng, x_train.shape[1], hidden, 10).items()}
    velocity = {k: xp.zeros_like(v) for k, v in params.items()}
    X, Y = platform.asarray(x_train, "float32"), platform.asarray(y_train, "int64")
    trainer = _Trainer(platform, getattr(_api, name), options)
    steps = math.ceil(len(y_train) / batch)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(y_train))
        for step in range(steps):
            index = platform.asarray(order[step * batch:(step + 1) * batch], "int64")
            x, y = xp.take(X, index, axis=0), xp.take(Y, index, axis=0)
            grads = trainer.gradients(params, x, y)
            for k in params:
                velocity[k] = momentum * velocity[k] + grads[k] + weight_decay * params[k]
                params[k] = params[k] - lr * velocity[k]
        if progress:
            progress(epoch + 1, epochs)
    logits, _ = forward(xp, params, platform.asarray(x_test, "float32"))
    probabilities = platform.to_numpy(_api.softmax(logits))
    platform.sync()
    return probabilities, time.perf_counter() - start


class _Progress:
    """A one-line progress bar on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, total_runs: int, enabled: bool = True):
        self.total, self.run, self.enabled = total_runs, 0, enabled
        self.tty = sys.stderr.isatty()
        self.label = ""

    def start(self, label: str):
        self.run += 1
        self.label = label
        if self.enabled and not self.tty:
            print(f"[{self.run}/{self.total}] training with {label} ...", file=sys.stderr, flush=True)

    def __call__(self, epoch: int, epochs: int):
        if not (self.enabled and self.tty):
            return
        width = 30
        done = int(width * ((self.run - 1) + epoch / epochs) / self.total)
        print(f"\r[{'#' * done}{'.' * (width - done)}] {self.run}/{self.total} {self.label:<22}"
              f" epoch {epoch}/{epochs}", end="", file=sys.stderr, flush=True)
        if self.run == self.total and epoch == epochs:
            print(file=sys.stderr)


def run(library="numpy", device=None, *, epochs=30, seed=0, losses=None, progress=True):
    platforms, missing = available(library, device)
    if not platforms:
        reason = "; ".join(f"{p}: {r}" for p, r in missing) or "no such backend"
        raise SystemExit(f"entroloss demo: backend {library!r} is not available here ({reason})")
    platform = platforms[0]
    data = load_digits_split(seed)
    chosen = [entry for entry in LOSSES if losses is None or entry[1] in losses or entry[0] in losses]
    bar = _Progress(len(chosen), progress)
    results = []
    for label, name, options in chosen:
        bar.start(label)
        probabilities, seconds = train(platform, name, options, data, epochs=epochs, seed=seed,
                                       progress=bar)
        results.append(Result(label, **calibration(probabilities, data[3]), seconds=seconds))
    return platform, results


def table(platform, results, epochs, sizes=(1258, 539)) -> str:
    lines = [
        f"digits (scikit-learn, {sizes[0]} train / {sizes[1]} test), MLP 64-64-10, {epochs} epochs of SGD "
        f"(momentum 0.9, lr 0.05, batch 64), backend {platform.id}, float32",
        f"{'loss':<22}{'accuracy':>10}{'NLL':>9}{'ECE':>9}{'entropy':>9}{'time s':>9}",
        "-" * 68,
    ]
    for r in results:
        lines.append(f"{r.loss:<22}{r.accuracy:>10.4f}{r.nll:>9.4f}{r.ece:>9.4f}{r.entropy:>9.4f}"
                     f"{r.seconds:>9.2f}")
    lines.append("NLL: mean -log p(true class); ECE: expected calibration error, 15 bins;"
                 " entropy: mean predictive entropy (nats)")
    return "\n".join(lines)


def main(args) -> int:
    platform, results = run(args.backend, args.device, epochs=args.epochs, seed=args.seed,
                            losses=args.loss, progress=not args.json)
    if args.json:
        print(json.dumps({"backend": platform.id, "epochs": args.epochs, "seed": args.seed,
                          "results": [asdict(r) for r in results]}, indent=1))
    else:
        print(table(platform, results, args.epochs))
    return 0
