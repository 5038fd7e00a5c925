"""``value_and_grad`` against central finite differences, logits and every weight and base."""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from cases import GRID_ARGS, GRID_IDS, SCALARS, draw, on_backend
from conftest import assert_close


def _total(fn, logits, target, options):
    return float(np.sum(fn(logits, target, **options)))


def finite_differences(fn, logits, target, options, *, step=1e-6):
    """Central differences of sum(loss) in float64, for the logits and each scalar option."""
    grad = np.zeros_like(logits)
    for index in np.ndindex(logits.shape):
        up, down = logits.copy(), logits.copy()
        up[index] += step
        down[index] -= step
        grad[index] = (_total(fn, up, target, options) - _total(fn, down, target, options)) / (2 * step)
    scalars = {}
    for name, value in options.items():
        if isinstance(value, float) and name in ("base", "ce_weight", "ce_base", "entropy_weight",
                                                  "entropy_base", "reverse_weight", "reverse_base"):
            up, down = dict(options), dict(options)
            up[name], down[name] = value + step, value - step
            scalars[name] = (_total(fn, logits, target, up) - _total(fn, logits, target, down)) / (2 * step)
    return grad, scalars


@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_gradients_match_finite_differences(backend, args):
    case = draw(*args)
    fn = getattr(el, case.loss)
    options = dict(case.options)
    for name in SCALARS[case.loss]:  # every weight and base takes part, at a drawn value
        options.setdefault(name, 2.0 if name.endswith("base") else 0.7)
    expected_logits, expected_scalars = finite_differences(fn, case.logits, case.target, options)

    logits, target, on = on_backend(case, backend)
    for name in SCALARS[case.loss]:
        on[name] = backend.asarray(options[name])
    value, grads = el.value_and_grad(fn, logits, target, **on)

    assert_close(value, np.asarray(fn(case.logits, case.target, **options)), backend, "float64")
    assert set(grads) == {"logits", *SCALARS[case.loss]}
    # central differences with step 1e-6 are good to ~1e-8 on these O(1) values
    tol = dict(rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(backend.to_numpy(grads["logits"]), expected_logits, **tol)
    assert_close(grads["logits"], expected_logits, backend, "float64", scale=1e4)
    for name in SCALARS[case.loss]:
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
