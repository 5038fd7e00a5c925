"""``value_and_grad`` against central finite differences, logits and every weight and base."""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses
from entroloss.tools.reference import central_differences
from tests.helpers.assertions import assert_close
from tests.helpers.cases import GRID_ARGS, GRID_IDS, draw, on_backend, scalar_names

# every public weight and base of every loss
SCALAR_NAMES = {name for definition in _losses.LOSSES for name in definition.scalars}


def _total(fn, logits, target, options):
    return float(np.sum(fn(logits, target, **options)))


def finite_differences(fn, logits, target, options, *, step=1e-6):
    """Central differences of sum(loss) in float64, for the logits and each scalar option."""
    grad = central_differences(lambda z: _total(fn, z, target, options), logits, step=step)
    grads = {}
    for name, value in options.items():
        if isinstance(value, float) and name in SCALAR_NAMES:
            grads[name] = central_differences(
                lambda v, name=name: _total(fn, logits, target, {**options, name: float(v)}), value,
                step=step)
    return grad, grads


@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_gradients_match_finite_differences(backend, args):
    case = draw(*args)
    fn = getattr(el, case.loss)
    options = dict(case.options)
    for name in scalar_names(case.loss):  # every weight and base takes part, at a drawn value
        options.setdefault(name, 2.0 if name.endswith("base") else 0.7)
    expected_logits, expected_scalars = finite_differences(fn, case.logits, case.target, options)

    logits, target, on = on_backend(case, backend)
    for name in scalar_names(case.loss):
        on[name] = backend.asarray(options[name])
    value, grads = el.value_and_grad(fn, logits, target, **on)

    assert_close(value, np.asarray(fn(case.logits, case.target, **options)), backend, "float64")
    assert set(grads) == {"logits", *scalar_names(case.loss)}
    # central differences with step 1e-6 are good to ~1e-8 on these O(1) values
    tol = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(backend.to_numpy(grads["logits"]), expected_logits, **tol)
    assert_close(grads["logits"], expected_logits, backend, "float64", scale=1e4)
    for name in scalar_names(case.loss):
        assert tuple(grads[name].shape) == ()
        np.testing.assert_allclose(backend.to_numpy(grads[name]), expected_scalars[name], **tol)


def test_float_parameters_get_no_gradient(backend):
    logits = backend.asarray(np.zeros((2, 3)))
    target = backend.asarray(np.array([0, 1]))
    _, grads = el.value_and_grad(el.min_ent, logits, target, entropy_base=2.0,
                                 ce_weight=backend.asarray(1.5))
    assert set(grads) == {"logits", "ce_weight"}


def test_gradient_dtype_follows_each_input(backend):
    logits = backend.asarray(np.zeros((2, 3)), "float32")
    target = backend.asarray(np.array([0, 1]))
    base = backend.asarray(2.0, "float64")
    value, grads = el.value_and_grad(el.cross_entropy, logits, target, base=base)
    assert value.dtype == backend.dtype("float32")
    assert grads["logits"].dtype == backend.dtype("float32")
    assert grads["base"].dtype == backend.dtype("float64")


def test_value_and_grad_refuses_other_functions(backend):
    logits = backend.asarray(np.zeros((2, 3)))
    target = backend.asarray(np.array([0, 1]))
    with pytest.raises(TypeError, match="loss_fn"):
        el.value_and_grad(el.entropy, logits, target)
    with pytest.raises(TypeError, match="loss_fn"):
        el.value_and_grad(lambda z, y: z, logits, target)
    with pytest.raises(TypeError, match="gamma"):
        el.value_and_grad(el.cross_entropy, logits, target, gamma=2.0)
