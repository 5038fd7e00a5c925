"""Keras 3 (issue 22 item 3): a ``keras.losses.Loss`` per loss of the registry, equal to
entroloss's functions and to Keras' own losses where they overlap, in ``model.fit`` on the
jax backend here and on the torch backend in a subprocess (Keras' backend is fixed per
process); the TensorFlow backend is refused clearly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "jax")
pytest.importorskip("jax")
keras = pytest.importorskip("keras")
if keras.backend.backend() not in ("jax", "torch"):
    pytest.skip(f"Keras runs on {keras.backend.backend()} here", allow_module_level=True)

import entroloss as el  # noqa: E402
import entroloss.keras as ek  # noqa: E402
from entroloss import _losses  # noqa: E402

RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(6, 5)).astype("float32") * 2
LABELS = np.array([0, 1, 4, 2, 3, 1])
ONE_HOT = np.eye(5, dtype="float32")[LABELS]


def _value(x):
    return float(keras.ops.convert_to_numpy(x))


@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_every_loss_has_a_class_equal_to_its_function(definition):
    cls = getattr(ek, definition.module)
    options = dict(definition.example)
    loss = cls(**options)
    want = el.__dict__[definition.name](LOGITS, LABELS, **options)
    for target in (LABELS, LABELS[:, None], ONE_HOT):  # sparse, Keras' (batch, 1), one-hot
        assert _value(loss(target, LOGITS)) == pytest.approx(float(want), rel=1e-5)
    per_sample = el.__dict__[definition.name](LOGITS, LABELS, reduction="none", **options)
    weights = np.linspace(0.5, 2, 6).astype("float32")
    assert _value(cls(reduction="sum", **options)(LABELS, LOGITS, sample_weight=weights)) == \
        pytest.approx(float((per_sample * weights).sum()), rel=1e-5)
    none = keras.ops.convert_to_numpy(cls(reduction="none", **options)(LABELS, LOGITS))
    np.testing.assert_allclose(none, per_sample, rtol=1e-5)
    again = cls.from_config(loss.get_config())
    assert again.get_config() == loss.get_config() and type(again) is cls
    assert keras.losses.deserialize(keras.losses.serialize(loss)).get_config() == loss.get_config()


def test_equal_to_keras_own_losses_where_they_overlap():
    ce = ek.CrossEntropyLoss(label_smoothing=0.1)(ONE_HOT, LOGITS)
    keras_ce = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    assert _value(ce) == pytest.approx(_value(keras_ce(ONE_HOT, LOGITS)), rel=1e-6)
    sparse = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(LABELS, LOGITS)
    assert _value(ek.CrossEntropyLoss()(LABELS, LOGITS)) == pytest.approx(_value(sparse), rel=1e-6)
    # Keras' alpha is a class weight equal for every class; its probabilities are clipped
    # at 1e-7, which these logits never reach
    keras_focal = keras.losses.CategoricalFocalCrossentropy(from_logits=True, alpha=0.25,
                                                            gamma=2.0)
    ours = ek.FocalLoss(gamma=2.0, weight=[0.25] * 5)
    assert _value(ours(ONE_HOT, LOGITS)) == pytest.approx(_value(keras_focal(ONE_HOT, LOGITS)),
                                                          rel=1e-5)


FIT = textwrap.dedent("""
    import json, numpy as np, keras, entroloss as el
    from entroloss.keras import MinEntLoss
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype("float32")
    y = (x[:, 0] > 0).astype("int64") + 2 * (x[:, 1] > 0)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(4)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=MinEntLoss(entropy_weight=0.1))
    before = model.evaluate(x, y, batch_size=64, verbose=0)
    direct = float(el.min_ent(model.predict(x, verbose=0), y, entropy_weight=0.1))
    history = model.fit(x, y, epochs=5, batch_size=16, verbose=0).history["loss"]
    print(json.dumps({"backend": keras.backend.backend(), "before": before, "direct": direct,
                      "history": history}))
""")


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_model_fit_trains_on_the_loss(backend, capsys):
    pytest.importorskip(backend)
    if backend == keras.backend.backend():  # this process's backend: no second start-up
        exec(FIT, {})
        output = capsys.readouterr().out
    else:
        run = subprocess.run([sys.executable, "-c", FIT], capture_output=True, text=True,
                             env={**os.environ, "KERAS_BACKEND": backend}, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        output = run.stdout
    report = json.loads(output.strip().splitlines()[-1])
    assert report["backend"] == backend
    assert report["before"] == pytest.approx(report["direct"], rel=1e-5)
    assert np.isfinite(report["history"]).all() and report["history"][-1] < report["history"][0]


def test_bad_input_is_refused_clearly(monkeypatch):
    with pytest.raises(ValueError, match="from_logits=True"):
        ek.MinEntLoss(from_logits=False)
    with pytest.raises(TypeError, match="does not take axis"):
        ek.CrossEntropyLoss(axis=1)
    with pytest.raises(ValueError, match="gamma"):
        ek.FocalLoss(gamma=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'entropy_weight'"):
        ek.CrossEntropyLoss(entropy_weight=0.1)
    with pytest.raises(ValueError, match="Invalid value for argument `reduction`"):
        ek.CrossEntropyLoss(reduction="average")
    with pytest.raises(ValueError, match=r"y_true must be class indices of shape \(6,\)"):
        ek.CrossEntropyLoss()(LABELS[:4], LOGITS)
    monkeypatch.setattr(keras.backend, "backend", lambda: "tensorflow")
    with pytest.raises(RuntimeError, match="needs Keras' jax or torch backend.*tensorflow"):
        ek.MinEntLoss()
