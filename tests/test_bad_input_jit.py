"""Bad input under ``jax.jit``: what is still refused, what happens to the data rules that
cannot read traced values, and the opt-in ``checkify`` checks of
``entroloss.backends.jax_checks`` that restore them.

(Every rule of docs/reliability.md, "Errors", is run on every backend, eagerly, by
test_errors.py.)
"""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses
from entroloss.tools import reference
from tests.helpers.cases import LOSSES

jax = pytest.importorskip("jax")
jnp = jax.numpy
checkify = pytest.importorskip("jax.experimental.checkify")
from entroloss.backends.jax_checks import checked, with_checks  # noqa: E402


@pytest.fixture
def data(jax_backend):
    rng = np.random.default_rng(0)
    return (jax_backend.asarray(rng.normal(size=(4, 3))), jax_backend.asarray(np.array([0, 1, 2, 1])),
            jax_backend.asarray(rng.dirichlet(np.ones(3), size=4)))


# --- static rules: refused at trace time, exactly as eagerly -------------------------------

STATIC_RULES = {  # name -> (exception, call(z, y, t) that breaks one rule)
    "non-floating logits": (TypeError, lambda z, y, t: el.cross_entropy(y[:, None] * 1, y)),
    "0-d logits": (ValueError, lambda z, y, t: el.min_ent(z[0, 0], y)),
    "boolean target": (TypeError, lambda z, y, t: el.mix_ent(z, y > 0)),
    "target shape": (ValueError, lambda z, y, t: el.focal(z, y[:3])),
    "soft target shape": (ValueError, lambda z, y, t: el.adaptive_ce(z, t[:, :2])),
    "ignore_index with soft": (ValueError, lambda z, y, t: el.cross_entropy(z, t, ignore_index=0)),
    "weight shape": (ValueError, lambda z, y, t: el.cross_entropy(z, y, weight=t[0, :2])),
    "weight dtype": (TypeError, lambda z, y, t: el.cross_entropy(z, y, weight=y[:3])),
    "label_smoothing": (ValueError, lambda z, y, t: el.min_ent(z, y, label_smoothing=1.5)),
    "reduction": (ValueError, lambda z, y, t: el.mix_ent(z, y, reduction="avg")),
    "float base": (ValueError, lambda z, y, t: el.focal(z, y, base=1.0)),
    "array base shape": (ValueError, lambda z, y, t: el.min_ent(z, y, entropy_base=t[0])),
    "eps": (ValueError, lambda z, y, t: el.mix_ent(z, y, eps=0.0)),
    "gamma": (ValueError, lambda z, y, t: el.focal(z, y, gamma=-1.0)),
    "axis": (ValueError, lambda z, y, t: el.adaptive_ce(z, y, axis=2)),
    # JAX takes NumPy arrays (as jnp does); a list is no array of any library
    "another library": (TypeError, lambda z, y, t: el.cross_entropy(z, [0, 1, 2, 1])),
}


@pytest.mark.parametrize("rule", list(STATIC_RULES))
def test_static_rules_are_refused_under_jit_as_eagerly(data, rule):
    exception, call = STATIC_RULES[rule]
    with pytest.raises(exception) as eager:
        call(*data)
    with pytest.raises(exception) as traced:
        jax.jit(call)(*data)
    assert str(traced.value) == str(eager.value)


# --- data rules: what happens when they cannot run ----------------------------------------

@pytest.mark.parametrize("loss", LOSSES)
def test_out_of_range_index_under_jit_is_nan_for_every_loss(jax_backend, loss):
    """The documented result: that position's loss and gradient are NaN (so is a reduced
    loss); an ignored position is still 0; the other positions are untouched."""
    fn = getattr(el, loss)
    z = jax_backend.asarray(np.random.default_rng(1).normal(size=(4, 3)))
    y = jax_backend.asarray(np.array([0, 3, -100, -1]))
    per = jax.jit(lambda z, y: fn(z, y, ignore_index=-100, reduction="none"))(z, y)
    assert np.isfinite(per[0]) and np.isnan(per[1]) and per[2] == 0 and np.isnan(per[3])
    expected0 = reference.loss(loss, np.asarray(z[:1]), np.asarray(y[:1]), reduction="none")
    np.testing.assert_allclose(per[0], expected0[0], rtol=1e-12)
    for reduction in ("mean", "sum"):
        # reduction bound as a default: explicit that each jit traces this iteration's value
        assert np.isnan(jax.jit(lambda z, y, reduction=reduction: fn(z, y, ignore_index=-100,
                                                                      reduction=reduction))(z, y))
    g = jax.jit(jax.grad(lambda z: fn(z, y, ignore_index=-100, reduction="sum")))(z)
    assert np.all(np.isfinite(g[0])) and np.all(np.isnan(g[1])) and np.all(g[2] == 0)


def test_bad_soft_rows_negative_weights_and_bad_bases_under_jit_are_nan(jax_backend):
    """Under jit nothing of the data is read, and nothing bad gives a number: a soft row
    summing to 1.5 is NaN there only (the others are the eager numbers), a negative class
    weight NaN where it weighs, a base of 0 (which gave a loss of 0) NaN with NaN
    gradients. Every loss, plain and linear, every rule: tests/test_unchecked_data.py."""
    z = jax_backend.asarray(np.random.default_rng(2).normal(size=(3, 4)))
    rows = jax_backend.asarray(np.array([[0.5, 0.5, 0.5, 0.0], [0.1, 0.2, 0.3, 0.4], [0.25] * 4]))
    per = jax.jit(lambda z, t: el.cross_entropy(z, t, reduction="none"))(z, rows)
    assert np.isnan(per[0])
    np.testing.assert_allclose(per[1:], el.cross_entropy(z[1:], rows[1:], reduction="none"),
                               rtol=1e-13)
    y = jax_backend.asarray(np.array([0, 1, 3]))
    w = jax_backend.asarray(np.array([1.0, -1.0, 2.0, 0.5]))
    per = jax.jit(lambda z, w: el.cross_entropy(z, y, weight=w, reduction="none"))(z, w)
    assert np.isnan(per[1]) and np.isfinite(per[np.array([0, 2])]).all()
    value, (g_z, g_b) = jax.jit(jax.value_and_grad(
        lambda z, b: el.cross_entropy(z, y, base=b), argnums=(0, 1)))(z, jax_backend.asarray(0.0))
    assert np.isnan(value) and np.isnan(g_z).all() and np.isnan(g_b)


def test_eager_validation_under_jit_raises_at_trace_time(jax_backend, data):
    """validate="eager" asks for checks that cannot run on traced data: a ValueError
    naming validate and pointing to the checkify checks, not a silent skip."""
    z, y, t = data
    for target in (y, t):
        with pytest.raises(ValueError, match=r"validate='eager' cannot check the data under "
                                             r"jax\.jit.*entroloss\.backends\.jax_checks"):
            jax.jit(lambda z, target: el.min_ent(z, target, validate="eager"))(z, target)
        el.min_ent(z, target, validate="eager")  # eagerly it reads and passes


# --- the opt-in check: entroloss.backends.jax_checks ---------------------------------------

def _eager_message(call) -> str:
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


def _checked_message(error) -> str:
    message = error.get()
    assert message is not None, "the check did not fire"
    with pytest.raises(ValueError) as info:  # checkify.JaxRuntimeError is a ValueError
        error.throw()
    assert isinstance(info.value, checkify.JaxRuntimeError)
    assert str(info.value) in message  # get() may prefix "at mapped index i: " (vmap)
    return message.removesuffix(" (`check` failed)")


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("kind", ["index", "ignore", "soft", "weighted-smoothed"])
def test_checked_passes_good_input_unchanged(jax_backend, loss, kind):
    fn = getattr(el, loss)
    rng = np.random.default_rng(4)
    z = jax_backend.asarray(rng.normal(size=(5, 4)))
    options: dict = {"reduction": "none"}
    if kind == "soft":
        target = jax_backend.asarray(rng.dirichlet(np.ones(4), size=5))
    else:
        labels = [0, 3, -100, 1, 2] if kind == "ignore" else [0, 3, 2, 1, 2]
        target = jax_backend.asarray(np.array(labels))
    if kind == "ignore":
        options["ignore_index"] = -100
    if kind == "weighted-smoothed":
        options.update(weight=jax_backend.asarray(np.array([1.0, 0.0, 2.0, 0.5])), label_smoothing=0.1)
    error, value = jax.jit(checked(fn, **options))(z, target)
    assert error.get() is None
    np.testing.assert_allclose(value, fn(z, target, **options), rtol=1e-13)  # jit vs eager


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("bad", [4, -1, 100])
def test_checked_refuses_an_out_of_range_index_under_jit(jax_backend, data, loss, bad):
    fn = getattr(el, loss)
    z = data[0]
    y = jax_backend.asarray(np.array([0, bad, 2, 1]))
    expected = _eager_message(lambda: fn(z, y))
    error, value = jax.jit(checked(fn))(z, y)
    assert _checked_message(error).startswith(expected)
    assert np.isnan(value)  # and what would have been returned unchecked
    # ignore_index is allowed, whatever its value
    error, value = jax.jit(checked(fn, ignore_index=bad))(z, y)
    assert error.get() is None and np.isfinite(value)


@pytest.mark.parametrize("rows, words", [
    ([[0.5, 0.5, 0.5]] * 4, "sum to 1"),
    ([[1.5, -0.5, 0.0]] + [[1 / 3] * 3] * 3, "non-negative"),
    ([[np.nan, 0.5, 0.5]] + [[1 / 3] * 3] * 3, "non-negative"),
])
def test_checked_refuses_bad_soft_targets_under_jit(jax_backend, data, rows, words):
    z = data[0]
    t = jax_backend.asarray(np.array(rows))
    expected = _eager_message(lambda: el.min_ent(z, t))
    assert words in expected
    error, _ = jax.jit(checked(el.min_ent))(z, t)
    message = _checked_message(error)
    # the eager message up to the measured number (formatted by each its own way)
    assert message.split(" by ")[0] == expected.split(" by ")[0]
    if words == "sum to 1":
        assert float(message.split(" by ")[1].split()[0]) == pytest.approx(0.5)


def test_checked_tolerance_follows_the_dtype(jax_backend):
    """A float16 softmax (rows off 1 by ~1e-3) passes, as it does eagerly."""
    rng = np.random.default_rng(5)
    z = jax_backend.asarray(rng.normal(size=(8, 50)), "float16")
    t = jax.nn.softmax(jax_backend.asarray(rng.normal(size=(8, 50)), "float32")).astype(jnp.float16)
    el.cross_entropy(z, t)  # eagerly accepted
    error, value = jax.jit(checked(el.cross_entropy))(z, t)
    assert error.get() is None and np.isfinite(float(value))


def test_checked_refuses_negative_weights_and_bad_array_bases(jax_backend, data):
    z, y, _ = data
    w = jax_backend.asarray(np.array([1.0, -1.0, 1.0]))
    expected = _eager_message(lambda: el.cross_entropy(z, y, weight=w))
    error, _ = jax.jit(checked(el.cross_entropy))(z, y, weight=w)  # an array option per call
    assert _checked_message(error) .startswith(expected)
    for definition in _losses.LOSSES:
        safe = jax.jit(checked(getattr(el, definition.name)))  # one compilation; the base is data
        for name in definition.bases:
            for value in (0.0, 0.5, 1.0, -2.0, math.inf, math.nan):
                error, _ = safe(z, y, **{name: jax_backend.asarray(value)})
                message = _checked_message(error)
                assert message.startswith(f"{name} must be a finite number > 1"), message
            error, _ = safe(z, y, **{name: jax_backend.asarray(2.0)})
            assert error.get() is None


def test_checked_under_vmap_reports_the_bad_problem(jax_backend):
    rng = np.random.default_rng(6)
    z = jax_backend.asarray(rng.normal(size=(3, 5, 4)))
    y = np.array(rng.integers(0, 4, size=(3, 5)))
    error, values = jax.jit(jax.vmap(checked(el.focal, gamma=0.5)))(z, jax_backend.asarray(y))
    assert error.get() is None
    np.testing.assert_allclose(values, jax.vmap(lambda z, y: el.focal(z, y, gamma=0.5))(
                                   z, jax_backend.asarray(y)),
                               rtol=1e-12)
    y[1, 2] = 7
    error, _ = jax.jit(jax.vmap(checked(el.focal, gamma=0.5)))(z, jax_backend.asarray(y))
    assert _checked_message(error) == "at mapped index 1: target holds class index 7, outside [0, 4)"


def test_with_checks_in_a_checkified_training_step(jax_backend):
    """The composable form: the check inside a jitted, checkified value_and_grad step; the
    gradients are those of the plain loss."""
    rng = np.random.default_rng(7)
    x = jax_backend.asarray(rng.normal(size=(6, 3)))
    params = jax_backend.asarray(rng.normal(size=(3, 4)))
    loss = with_checks(el.mix_ent)

    def objective(params, x, y):
        return loss(x @ params, y, reverse_weight=0.1, label_smoothing=0.05)

    step = jax.jit(checkify.checkify(jax.value_and_grad(objective), errors=checkify.user_checks))
    good = jax_backend.asarray(rng.integers(0, 4, size=6))
    error, (value, grads) = step(params, x, good)
    assert error.get() is None
    plain = jax.value_and_grad(lambda p: el.mix_ent(x @ p, good, reverse_weight=0.1,
                                                    label_smoothing=0.05))(params)
    np.testing.assert_allclose(value, plain[0], rtol=1e-12)
    np.testing.assert_allclose(grads, plain[1], rtol=1e-12)
    error, _ = step(params, x, good.at[3].set(4))
    assert "class index 4, outside [0, 4)" in _checked_message(error)


def test_with_checks_eagerly_raises_and_under_plain_jit_asks_for_checkify(jax_backend, data):
    z, _, _ = data
    y = jax_backend.asarray(np.array([0, 5, 2, 1]))
    with pytest.raises(ValueError, match="class index 5"):  # no transformation: raised at once
        with_checks(el.cross_entropy)(z, y)
    with pytest.raises(ValueError, match="checkify"):  # staged without functionalising
        jax.jit(with_checks(el.cross_entropy))(z, y)


def test_checked_binds_static_options(jax_backend, data):
    """Non-array options must be bound (a jitted function takes arrays only); bound and
    per-call array options combine."""
    z, y, _ = data
    w = jax_backend.asarray(np.array([1.0, 2.0, 0.5]))
    fn = checked(el.focal, gamma=0.5, reduction="sum", label_smoothing=0.2)
    error, value = jax.jit(partial(fn, weight=w))(z, y)
    assert error.get() is None
    np.testing.assert_allclose(value, el.focal(z, y, gamma=0.5, reduction="sum",
                                               label_smoothing=0.2, weight=w), rtol=1e-12)
