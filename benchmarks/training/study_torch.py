"""What the study (``study.py``) trains: the models, the corrupted training sets and the
seeded torch training loop. Every run is a function of (data set, condition, loss, seed).

- Models: a small 1-d CNN for MNIST-1D (three convolutions, ~9.6k parameters; about 95%
  test accuracy on clean data with 4000 training samples) and the MLP of
  ``entroloss.tools.training`` (one hidden layer of 64, same initialisation) for digits.
- Conditions: clean; symmetric label noise (a fixed fraction of the training labels,
  chosen at random, replaced by a uniformly drawn *other* class); class-dependent noise
  (the same fraction of each class flipped to the next class, ``c -> (c + 1) mod 10``);
  long-tailed imbalance (class ``c`` keeps ``n_max * ratio**(-c/9)`` of its training
  samples, at least one). The test labels are never touched.
- Seeds: a seed fixes the model's initialisation, the batch order and the corruption (which
  labels are flipped, which samples are kept). The corruption does not depend on the loss,
  so within a seed every loss sees the same data, initialisation and batches: the losses
  are compared paired.
- Optimiser: AdamW (weight decay 1e-4) with a one-cycle learning-rate schedule (peak
  0.01), batch 100, the same number of epochs for every loss. Adam makes the comparison
  insensitive to a loss's overall scale (SCE's 0.1 CE weight, a base other than e), so only
  the shape of each loss differs. The model after the last epoch is evaluated: no early
  stopping, no clean validation set (which a user with noisy labels would not have).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, Mapping, NamedTuple

import numpy as np

CLASSES = 10
TAIL = (7, 8, 9)  # the rarest classes of the long-tailed training sets


class Condition(NamedTuple):
    """How the training set is changed: ``kind`` is "clean", "symmetric", "pairflip"
    (class-dependent) or "longtail"; ``level`` is the noise fraction or the imbalance ratio."""

    kind: str
    level: float = 0.0

    @property
    def name(self) -> str:
        if self.kind == "clean":
            return "clean"
        if self.kind == "longtail":
            return f"longtail-{self.level:g}"
        return f"{self.kind}-{round(100 * self.level)}"


def _rng(seed: int, *keys: str) -> np.random.Generator:
    """A generator for ``seed`` and a purpose, stable across runs and Python versions."""
    return np.random.default_rng([seed, *(zlib.crc32(k.encode()) for k in keys)])


def corrupt(condition: Condition, x: np.ndarray, y: np.ndarray, seed: int, dataset: str):
    """The training set of ``condition`` for ``seed``: (x, y_used, y_true) for noise (the
    labels the model sees and the true ones), a subset of (x, y, y) for imbalance."""
    rng = _rng(seed, dataset, condition.name)
    y = np.asarray(y)
    if condition.kind == "clean":
        return x, y, y
    if condition.kind == "symmetric":
        flip = rng.choice(len(y), int(round(condition.level * len(y))), replace=False)
        noisy = y.copy()
        noisy[flip] = (y[flip] + rng.integers(1, CLASSES, len(flip))) % CLASSES  # another class
        return x, noisy, y
    if condition.kind == "pairflip":
        noisy = y.copy()
        for c in range(CLASSES):
            members = np.flatnonzero(y == c)
            flip = rng.choice(members, int(round(condition.level * len(members))), replace=False)
            noisy[flip] = (c + 1) % CLASSES
        return x, noisy, y
    if condition.kind == "longtail":
        n_max = min(int((y == c).sum()) for c in range(CLASSES))
        keep = []
        for c in range(CLASSES):
            members = np.flatnonzero(y == c)
            n = max(1, int(n_max * condition.level ** (-c / (CLASSES - 1))))
            keep.append(rng.choice(members, n, replace=False))
        keep = np.sort(np.concatenate(keep))
        return x[keep], y[keep], y[keep]
    raise ValueError(f"unknown condition {condition.kind!r}")


def class_counts(y: np.ndarray) -> np.ndarray:
    return np.bincount(np.asarray(y), minlength=CLASSES)


# --- models ---------------------------------------------------------------------------------

MODEL_DESCRIPTIONS = {
    "mnist1d": "a 1-d CNN (Conv1d 1->32, kernel 5; Conv1d 32->32, kernel 3, stride 2; the same "
               "again; ReLU after each; a linear layer to 10 classes; 9.6k parameters, torch's "
               "default initialisation from the seed)",
    "digits": "the MLP of `entroloss.tools.training` (64 inputs, one hidden layer of 64, ReLU; "
              "its He/LeCun initialisation from the seed)",
}

def make_model(dataset: str, features: int, seed: int):
    """The model of ``dataset``, initialised from ``seed``."""
    import torch

    from entroloss.tools import training

    if dataset == "mnist1d":
        torch.manual_seed(seed)
        ch = 32
        return torch.nn.Sequential(
            torch.nn.Unflatten(1, (1, features)),
            torch.nn.Conv1d(1, ch, 5, padding=2), torch.nn.ReLU(),
            torch.nn.Conv1d(ch, ch, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Conv1d(ch, ch, 3, stride=2, padding=1), torch.nn.ReLU(),
            torch.nn.Flatten(), torch.nn.Linear(ch * math.ceil(features / 4), CLASSES),
        )
    # digits: the MLP of entroloss.tools.training, with its initialisation
    weights = training.init_mlp(np.random.default_rng(seed), features, 64, CLASSES)
    model = torch.nn.Sequential(torch.nn.Linear(features, 64), torch.nn.ReLU(),
                                torch.nn.Linear(64, CLASSES))
    with torch.no_grad():
        model[0].weight.copy_(torch.from_numpy(weights["w1"].T.copy()))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.from_numpy(weights["w2"].T.copy()))
        model[2].bias.zero_()
    return model


# --- training -------------------------------------------------------------------------------

class LossSpec(NamedTuple):
    """A row of the tables: ``entroloss.<fn>`` called with ``options``; ``learnable``: the
    loss's weights and bases are learnt with the model in the paper's parametrisation
    (``MinEntLoss(learnable="raw")``, what the published figures ran)."""

    label: str
    fn: str
    options: Mapping[str, Any]
    learnable: bool = False


def batch_order(seed: int) -> np.random.Generator:
    """The stream of a seed's batch orders, one permutation per epoch, the same for every loss."""
    return _rng(seed, "batches")


def train_epoch(model, objective, optimiser, X, Y, order_rng: np.random.Generator, batch: int,
                after_step=None) -> None:
    """One pass over (X, Y) in the next order of ``order_rng`` (``batch_order(seed)``)."""
    import torch

    order = torch.from_numpy(order_rng.permutation(len(Y)))
    for s in range(math.ceil(len(Y) / batch)):
        index = order[s * batch:(s + 1) * batch]
        loss = objective(model(X[index]), Y[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if after_step is not None:
            after_step()


def train_run(spec: LossSpec, data: tuple, *, dataset: str, condition: Condition, seed: int,
              epochs: int, batch: int = 100, lr: float = 0.01,
              weight_decay: float = 1e-4) -> dict:
    """Train one model; returns the test set's probabilities (float64 NumPy), the training
    class counts, and for a learnable loss its weights and bases after each epoch."""
    import torch

    import entroloss as el
    from entroloss.backends.torch import MinEntLoss

    x_train, y_train, x_test, _ = data
    x_used, y_used, _ = corrupt(condition, x_train, y_train, seed, dataset)
    model = make_model(dataset, x_train.shape[1], seed)
    groups = [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    history = []
    if spec.learnable:
        criterion = MinEntLoss(learnable="raw", **spec.options)
        groups.append({"params": list(criterion.parameters()), "weight_decay": 0.0})
        history.append(criterion.values())

        def objective(logits, y):
            return criterion(logits, y)
    else:
        fn = getattr(el, spec.fn)

        def objective(logits, y):
            return fn(logits, y, **spec.options)
    optimiser = torch.optim.AdamW(groups, lr=lr)
    steps = math.ceil(len(y_used) / batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, lr, total_steps=epochs * steps)
    X, Y = torch.from_numpy(np.ascontiguousarray(x_used)), torch.from_numpy(y_used.astype(np.int64))
    order_rng = batch_order(seed)
    for _ in range(epochs):
        train_epoch(model, objective, optimiser, X, Y, order_rng, batch, after_step=schedule.step)
        if spec.learnable:
            history.append(criterion.values())
    with torch.no_grad():
        probabilities = torch.softmax(model(torch.from_numpy(x_test)).double(), -1).numpy()
    return {"probabilities": probabilities, "counts": class_counts(y_used), "history": history}


# --- metrics --------------------------------------------------------------------------------

def metrics(probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """training.calibration's accuracy / NLL / ECE / entropy, plus the balanced accuracy
    (mean per-class recall) and the tail recall (mean recall of classes 7, 8 and 9: the
    three with the fewest training samples under the long-tailed profile)."""
    from entroloss.tools import training

    out = training.calibration(probabilities, labels)
    predicted = probabilities.argmax(1)
    recall = np.array([np.mean(predicted[labels == c] == c) for c in range(CLASSES)])
    out["balanced_accuracy"] = float(recall.mean())
    out["tail_recall"] = float(recall[list(TAIL)].mean())
    return out
