"""Keras 3: a ``keras.losses.Loss`` for every loss of the package (``docs/integrations-keras.md``).

    import os; os.environ["KERAS_BACKEND"] = "jax"      # or "torch"
    from entroloss.keras import MinEntLoss
    model.compile(optimizer="adam", loss=MinEntLoss(entropy_weight=0.1))

One class per entry of the registry (``entroloss._losses.LOSSES``), named as its torch
module (``CrossEntropyLoss``, ``MinEntLoss``, ...), generated here: a new loss of the
registry is a new class with no edit. Each computes the per-sample loss with the
package's function (``reduction="none"``) on the backend's own arrays, which entroloss
differentiates (JAX under ``jax.jit`` too), and leaves the reduction, the sample weights
and the masks to Keras. Importing this module imports Keras.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

import entroloss
from entroloss import _losses

# Keras' backends whose tensors are arrays entroloss has an adapter for
_BACKENDS = ("jax", "torch", "numpy")
# what Keras' base class or the class axis decides, so not the loss's options
_OWNED = ("reduction", "axis")

__all__ = ["EntrolossLoss", *(d.module for d in _losses.LOSSES)]


def _check_backend() -> None:
    backend = keras.backend.backend()
    if backend not in _BACKENDS:
        raise RuntimeError(f"entroloss.keras needs Keras' jax or torch backend "
                           f"(KERAS_BACKEND=jax or torch); the {backend} backend's tensors are "
                           f"not arrays entroloss can compute on")


def _plain(value: Any) -> Any:
    """Options as JSON-able values for ``get_config`` (class weights as lists)."""
    if isinstance(value, np.ndarray) or hasattr(value, "__array__"):
        return np.asarray(value).tolist()
    return value


class EntrolossLoss(keras.losses.Loss):
    """The base of the generated classes: ``function`` is the entroloss loss."""

    function: Any = None
    loss_name: str = ""

    def __init__(self, from_logits: bool = True, reduction: str | None = "sum_over_batch_size",
                 name: str | None = None, dtype: Any = None, **options: Any) -> None:
        _check_backend()
        if from_logits is not True:
            raise ValueError(f"{type(self).__name__} takes logits: pass from_logits=True (a "
                             f"softmax output loses what the loss needs; drop the model's "
                             f"final softmax)")
        owned = sorted(set(options) & set(_OWNED))
        if owned:
            raise TypeError(f"{type(self).__name__} does not take {', '.join(owned)}: the "
                            f"reduction is Keras' (reduction=...), the classes are the last axis")
        options = {k: _plain(v) for k, v in options.items()}
        # every option is checked now, on a two-row problem, not at the first batch
        classes = len(options["weight"]) if options.get("weight") is not None else 3
        type(self).function(np.zeros((2, classes)), np.array([0, 1]),
                            **self._arrays(options, None))
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.from_logits = True
        self.options = options

    @staticmethod
    def _arrays(options: dict, like: Any) -> dict:
        """Class weights as arrays of the predictions' backend."""
        weight = options.get("weight")
        if weight is None:
            return options
        weight = np.asarray(weight, dtype=np.float64) if like is None else \
            keras.ops.convert_to_tensor(weight, dtype=like.dtype)
        return {**options, "weight": weight}

    def call(self, y_true: Any, y_pred: Any) -> Any:
        _check_backend()
        classes = y_pred.shape[-1]
        if tuple(y_true.shape) == tuple(y_pred.shape) and classes != 1:
            target = keras.ops.cast(y_true, y_pred.dtype)  # one-hot or probabilities
        else:
            if len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == 1:
                y_true = keras.ops.squeeze(y_true, axis=-1)  # Keras' sparse (batch, 1)
            if tuple(y_true.shape) != tuple(y_pred.shape[:-1]):
                raise ValueError(f"y_true must be class indices of shape "
                                 f"{tuple(y_pred.shape[:-1])} (or with a last axis of 1) or "
                                 f"one-hot of shape {tuple(y_pred.shape)}, got "
                                 f"{tuple(y_true.shape)}")
            target = keras.ops.cast(y_true, "int32")  # Keras hands them over as floats
        return type(self).function(y_pred, target, reduction="none",
                                   **self._arrays(self.options, y_pred))

    def get_config(self) -> dict:
        return {**super().get_config(), "from_logits": True, **self.options}


def _make(definition: _losses.LossDef) -> type:
    doc = (f"{definition.label} (``entroloss.{definition.name}``) as a Keras loss: "
           f"``{definition.module}(from_logits=True, reduction=\"sum_over_batch_size\", "
           f"name=None, dtype=None, **options)`` with the options of "
           f"``entroloss.{definition.name}`` (``weight`` a list or array of class weights). "
           f"Targets: class indices (sparse) or one-hot / probabilities, the classes on the "
           f"last axis. Reference: {definition.citation}")
    cls = type(definition.module, (EntrolossLoss,), {
        "__doc__": doc, "__module__": __name__, "loss_name": definition.name,
        "function": staticmethod(getattr(entroloss, definition.name))})
    return keras.saving.register_keras_serializable(package="entroloss",
                                                    name=definition.module)(cls)


for _definition in _losses.LOSSES:
    globals()[_definition.module] = _make(_definition)
del _definition
