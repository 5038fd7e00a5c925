"""What ``entroloss demo`` and the training scripts of ``benchmarks/training`` share.

A one-hidden-layer MLP written against the array API (its initialisation, forward pass
and hand-written backward pass), the loss settings the comparisons train with, a seeded
training loop that runs on every backend, the data sets (scikit-learn's digits,
MNIST-1D), and the calibration metrics the tables report.

The loop gets its gradients the way each backend offers them: torch through
``backward()``, JAX through ``jax.value_and_grad`` under ``jax.jit``, and NumPy,
array-api-strict and CuPy (no autograd) from ``entroloss.value_and_grad`` with respect to
the logits, backpropagated through the MLP by `mlp_gradients`. Every backend starts from
the same initial weights and sees the same batches, so their results agree up to float32
rounding.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

import entroloss as el

from .._losses import CROSS_ENTROPY, LOSSES, LossDef, by_name
from .progress import ProgressBar

__all__ = [
    "TrainingSetting", "TRAINING_OPTIONS", "SETTINGS", "LOSS_NAMES", "setting_of",
    "training_options",
    "init_mlp", "mlp_forward", "mlp_gradients", "train",
    "load_digits_split", "load_mnist1d", "calibration", "ProgressBar",
]


# --- what the comparisons train with --------------------------------------------------------

class TrainingSetting(NamedTuple):
    """One row of a comparison: a loss called with some options."""

    label: str  # the row's name in the tables
    loss: LossDef
    options: Mapping[str, Any]

    def loss_fn(self) -> Callable:
        """The public function, ``entroloss.<name>``."""
        return getattr(el, self.loss.name)


# The regularizers at modest weights: the papers do not give theirs, and the reverse term R
# is scaled by -log(eps) ~ 13.8 for one-hot targets, hence its smaller weight. Each loss
# takes the ones among its keywords; the rest keep their defaults.
TRAINING_OPTIONS = {"entropy_weight": 0.1, "reverse_weight": 0.02, "gamma": 2.0}
# How a row's label shows the option it was given ("MIN-ENT (0.1 H)", "focal gamma=2").
_OPTION_IN_LABEL = {"entropy_weight": " ({:g} H)", "reverse_weight": " ({:g} R)",
                    "gamma": " gamma={:g}"}


def training_options(loss: LossDef) -> dict:
    """The options of `TRAINING_OPTIONS` that ``loss`` takes."""
    return {k: v for k, v in TRAINING_OPTIONS.items() if k in loss.option_names()}


def _setting(loss: LossDef) -> TrainingSetting:
    options = training_options(loss)
    label = loss.label + "".join(_OPTION_IN_LABEL[k].format(v) for k, v in options.items())
    return TrainingSetting(label, loss, options)


def _settings() -> tuple[TrainingSetting, ...]:
    """Every loss of the registry, with label smoothing as the baseline's common variant
    right after plain cross entropy."""
    settings = []
    for loss in LOSSES:
        settings.append(_setting(loss))
        if loss is CROSS_ENTROPY:
            settings.append(TrainingSetting("label smoothing 0.1", loss, {"label_smoothing": 0.1}))
    return tuple(settings)


SETTINGS = _settings()
LOSS_NAMES = tuple(loss.name for loss in LOSSES)  # the public loss functions, in registry order


def setting_of(name: str) -> TrainingSetting:
    """The loss ``entroloss.<name>`` with its `training_options`; a ``ValueError`` lists
    the names."""
    return _setting(by_name(name))


# --- the model ------------------------------------------------------------------------------

def init_mlp(rng: np.random.Generator, features: int, hidden: int, classes: int) -> dict:
    """float32 NumPy weights of a ``features-hidden-classes`` MLP: He initialisation for
    the ReLU layer, LeCun for the output layer, zero biases."""
    return {
        "w1": (rng.normal(size=(features, hidden)) * math.sqrt(2 / features)).astype(np.float32),
        "b1": np.zeros(hidden, np.float32),
        "w2": (rng.normal(size=(hidden, classes)) * math.sqrt(1 / hidden)).astype(np.float32),
        "b2": np.zeros(classes, np.float32),
    }


def mlp_forward(xp, params: dict, x) -> tuple:
    """(logits, what `mlp_gradients` needs from the forward pass) for inputs ``x``."""
    pre_activation = x @ params["w1"] + params["b1"]
    hidden = xp.maximum(pre_activation, xp.zeros_like(pre_activation))
    return hidden @ params["w2"] + params["b2"], (pre_activation, hidden)


def mlp_gradients(xp, params: dict, x, saved: tuple, d_logits) -> dict:
    """Backpropagation through the MLP by hand, for backends without autograd: the
    gradients of the parameters from ``d_logits``, the loss's gradient w.r.t. the logits."""
    pre_activation, hidden = saved
    d_hidden = d_logits @ params["w2"].T
    d_pre = xp.where(pre_activation > 0, d_hidden, xp.zeros_like(d_hidden))
    return {
        "w2": hidden.T @ d_logits,
        "b2": xp.sum(d_logits, axis=0),
        "w1": x.T @ d_pre,
        "b1": xp.sum(d_pre, axis=0),
    }


# --- training -------------------------------------------------------------------------------

class _BatchGradients:
    """One backend's way of getting the gradients of a batch's loss w.r.t. the parameters."""

    def __init__(self, platform, fn: Callable, options: Mapping):
        self.platform, self.fn, self.options, self.xp = platform, fn, options, platform.xp
        if platform.library == "jax":
            import jax

            def objective(params, x, y):
                logits, _ = mlp_forward(jax.numpy, params, x)
                return fn(logits, y, **options)

            self._jax_step = jax.jit(jax.value_and_grad(objective))

    def __call__(self, params: dict, x, y) -> dict:
        library = self.platform.library
        if library == "torch":
            return self._torch(params, x, y)
        if library == "jax":
            return self._jax_step(params, x, y)[1]
        logits, saved = mlp_forward(self.xp, params, x)
        _, g = el.value_and_grad(self.fn, logits, y, **self.options)
        return mlp_gradients(self.xp, params, x, saved, g["logits"])

    def _torch(self, params: dict, x, y) -> dict:
        import torch

        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        logits, _ = mlp_forward(self.xp, leaves, x)
        loss = self.fn(logits, y, **self.options)
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))


def _sgd_momentum_step(params: dict, velocity: dict, grads: dict, *, lr: float,
                       momentum: float, weight_decay: float) -> None:
    """torch.optim.SGD's update (weight decay added to the gradient), in place in the dicts."""
    for k in params:
        velocity[k] = momentum * velocity[k] + grads[k] + weight_decay * params[k]
        params[k] = params[k] - lr * velocity[k]


def train(platform, setting: TrainingSetting, data: tuple, *, epochs: int, seed: int,
          batch: int = 64, lr: float = 0.05, momentum: float = 0.9, weight_decay: float = 1e-4,
          hidden: int = 64, progress: Callable[[int, int], None] | None = None) -> tuple:
    """Train the MLP on ``data`` = (x_train, y_train, x_test, y_test) (NumPy, 10 classes)
    from a seeded initialisation with SGD; ``progress(epoch, epochs)`` after each epoch.
    Returns (the test set's predicted probabilities as NumPy, seconds)."""
    xp = platform.xp
    x_train, y_train, x_test, _ = data
    rng = np.random.default_rng(seed)
    params = {k: platform.asarray(v, "float32")
              for k, v in init_mlp(rng, x_train.shape[1], hidden, 10).items()}
    velocity = {k: xp.zeros_like(v) for k, v in params.items()}
    inputs, labels = platform.asarray(x_train, "float32"), platform.asarray(y_train, "int64")
    gradients = _BatchGradients(platform, setting.loss_fn(), setting.options)
    steps = math.ceil(len(y_train) / batch)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = rng.permutation(len(y_train))
        for step in range(steps):
            index = platform.asarray(order[step * batch:(step + 1) * batch], "int64")
            x, y = xp.take(inputs, index, axis=0), xp.take(labels, index, axis=0)
            _sgd_momentum_step(params, velocity, gradients(params, x, y), lr=lr,
                               momentum=momentum, weight_decay=weight_decay)
        if progress:
            progress(epoch + 1, epochs)
    logits, _ = mlp_forward(xp, params, platform.asarray(x_test, "float32"))
    probabilities = platform.to_numpy(el.softmax(logits))
    platform.sync()
    return probabilities, time.perf_counter() - start


# --- data and metrics -----------------------------------------------------------------------

def load_digits_split(seed: int = 0, test_fraction: float = 0.3) -> tuple:
    """scikit-learn's digits (1797 x 64, 10 classes) standardised on the training part,
    split in a fixed stratified way: (x_train, y_train, x_test, y_test), float32 inputs."""
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


def load_mnist1d(samples: int, seed: int = 0) -> tuple:
    """MNIST-1D (generated locally by the ``mnist1d`` package, 40 features, 10 classes),
    standardised on the training part: (x_train, y_train, x_test, y_test)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise SystemExit("the MNIST-1D part needs the mnist1d package: pip install mnist1d") from err
    args = get_dataset_args()
    args.num_samples = samples
    args.seed = seed
    data = make_dataset(args)
    x, y, xt, yt = data["x"], data["y"], data["x_test"], data["y_test"]
    mean, std = x.mean(0), x.std(0) + 1e-6
    return ((x - mean) / std).astype(np.float32), y, ((xt - mean) / std).astype(np.float32), yt


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict:
    """Accuracy, NLL (mean -log p(true class)), expected calibration error (top label,
    ``bins`` equal-width bins) and mean predictive entropy (nats) of predictions."""
    p = np.clip(probabilities.astype(np.float64), 1e-300, 1.0)
    confidence, predicted = p.max(1), p.argmax(1)
    correct = predicted == labels
    edges = np.linspace(0, 1, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return {
        "accuracy": float(correct.mean()),
        "nll": float(-np.mean(np.log(p[np.arange(len(labels)), labels]))),
        "ece": float(ece),
        "entropy": float(np.mean(-np.sum(p * np.log(p), axis=1))),
    }
