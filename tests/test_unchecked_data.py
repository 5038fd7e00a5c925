"""Data the checks could not read (issue 25, item 3): never a plausible number.

Where the data checks do not run (under ``jax.jit``, inside ``torch.compile``, with
``validate=False``, and on an accelerator under ``validate=True``), a soft-target row that
is no distribution gives NaN at that position, value and gradient, as an out-of-range
class index does; a negative class weight makes every counted position NaN; a weight or
base given as an array that breaks its rule makes the loss and its gradients NaN. Where
they were read, the math spends nothing on it. ``validate="eager"`` where the data
cannot be read (tracing) is an error. docs/backends.md has the table.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses, _math
from entroloss.tools import reference
from tests.helpers.cases import LOSSES

ROWS, FEATURES, CLASSES = 5, 3, 4
GOOD = [0, 3, 4]  # the rows that are distributions
TARGET = np.array([
    [0.1, 0.2, 0.3, 0.4],
    [0.5, 0.5, 0.5, 0.0],  # sums to 1.5
    [1.2, -0.2, 0.0, 0.0],  # sums to 1 with a negative entry
    [0.25, 0.25, 0.25, 0.25],
    [0.7, 0.1, 0.1, 0.1 + 5e-5],  # off by 5e-5: inside the tolerance (1e-4), eagerly too
])


def _data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"logits": rng.normal(size=(ROWS, CLASSES)), "hidden": rng.normal(size=(ROWS, FEATURES)),
            "classifier": rng.normal(size=(CLASSES, FEATURES))}


def _call(loss: str, head: str, backend, d: dict, target, **options):
    """(per-row loss, per-row gradient) of ``loss`` (plain or linear head) through the
    hand-derived gradient every backend has; the gradient is the logits' or the hidden
    states' (one row per position either way)."""
    a = backend.asarray
    if head == "plain":
        value, grads = el.value_and_grad(getattr(el, loss), a(d["logits"]), a(target),
                                         reduction="none", **options)
        return backend.to_numpy(value), backend.to_numpy(grads["logits"])
    value, grads = el.linear_value_and_grad(getattr(el, f"linear_{loss}"), a(d["hidden"]),
                                            a(d["classifier"]), a(target), reduction="none",
                                            **options)
    return backend.to_numpy(value), backend.to_numpy(grads["hidden"])


def _jitted(loss: str, head: str, d: dict, target, **options):
    """The same under ``jax.jit`` and ``jax.grad``: nothing can be read while tracing."""
    jax = pytest.importorskip("jax")
    if head == "plain":
        fn = lambda x, t: getattr(el, loss)(x, t, reduction="none", **options)  # noqa: E731
        x = d["logits"]
    else:
        w = jax.numpy.asarray(d["classifier"])
        fn = lambda x, t: getattr(el, f"linear_{loss}")(x, w, t, reduction="none", **options)  # noqa: E731
        x = d["hidden"]
    x, t = jax.numpy.asarray(x), jax.numpy.asarray(target)
    value = jax.jit(fn)(x, t)
    grad = jax.jit(jax.grad(lambda x, t: fn(x, t).sum()))(x, t)
    return np.asarray(value), np.asarray(grad)


@pytest.mark.parametrize("head", ["plain", "linear"])
@pytest.mark.parametrize("loss", LOSSES)
def test_unchecked_bad_soft_rows_are_nan_there_only(backend, loss, head):
    """validate=False on every backend: rows 1 (sum 1.5) and 2 (a negative entry) are NaN,
    value and gradient; the others are the numbers of the checked call on those rows."""
    d = _data()
    with pytest.raises(ValueError, match="soft target"):  # the checked call refuses it
        _call(loss, head, backend, d, TARGET)
    value, grad = _call(loss, head, backend, d, TARGET, validate=False)
    assert np.isnan(value[[1, 2]]).all() and np.isnan(grad[[1, 2]]).all()
    good = {k: (v[GOOD] if k != "classifier" else v) for k, v in d.items()}
    expected_value, expected_grad = _call(loss, head, backend, good, TARGET[GOOD])
    np.testing.assert_allclose(value[GOOD], expected_value, rtol=1e-12)
    np.testing.assert_allclose(grad[GOOD], expected_grad, rtol=1e-12, atol=1e-15)
    if head == "plain":  # and the independent float64 reference
        np.testing.assert_allclose(value[GOOD], reference.loss(loss, d["logits"][GOOD], TARGET[GOOD],
                                                               reduction="none"), rtol=1e-12)


@pytest.mark.parametrize("head", ["plain", "linear"])
@pytest.mark.parametrize("loss", LOSSES)
def test_bad_soft_rows_under_jit_are_nan_there_only(loss, head):
    pytest.importorskip("jax")
    from entroloss.tools.platforms import ALL

    numpy = next(p for p in ALL if p.library == "numpy").load()
    d = _data(1)
    value, grad = _jitted(loss, head, d, TARGET)
    assert np.isnan(value[[1, 2]]).all() and np.isnan(grad[[1, 2]]).all()
    # the other rows: the checked eager numbers (NumPy's, through the same math)
    good = {k: (v[GOOD] if k != "classifier" else v) for k, v in d.items()}
    expected_value, expected_grad = _call(loss, head, numpy, good, TARGET[GOOD])
    np.testing.assert_allclose(value[GOOD], expected_value, rtol=1e-12)
    np.testing.assert_allclose(grad[GOOD], expected_grad, rtol=1e-12, atol=1e-15)
    for reduction in ("mean", "sum"):  # a reduced loss says so too
        assert np.isnan(getattr(el, loss)(d["logits"], TARGET, reduction=reduction, validate=False))


def test_the_tolerance_is_the_eager_rule(backend):
    """One rule (``_math.target.soft_row_tolerance``): a row off 1 by 5e-5 passes eagerly
    and is computed unchecked; off by 2e-4 it is refused eagerly and NaN unchecked."""
    z = backend.asarray(_data()["logits"][:2])
    for off, accepted in ((5e-5, True), (2e-4, False)):
        t = backend.asarray(np.array([[0.5, 0.5 + off, 0.0, 0.0], [0.25] * 4]))
        if accepted:
            checked = backend.to_numpy(el.cross_entropy(z, t, reduction="none"))
        else:
            with pytest.raises(ValueError, match=r"within 1\.0e-04"):
                el.cross_entropy(z, t)
        unchecked = backend.to_numpy(el.cross_entropy(z, t, reduction="none", validate=False))
        assert np.isnan(unchecked[0]) != accepted and np.isfinite(unchecked[1])
        if accepted:
            np.testing.assert_array_equal(unchecked, checked)  # the same math, nothing marked


def test_float16_soft_rows_take_their_own_dtype_tolerance(backend):
    """A float16 softmax (rows off 1 by up to ~1e-3) is accepted eagerly and computed
    unchecked (sqrt(eps) of float16 is 0.031); a row summing to 1.5 is still NaN."""
    if "float16" not in backend.dtypes:
        pytest.skip(f"{backend.library} has no float16")
    rng = np.random.default_rng(5)
    p = rng.dirichlet(np.ones(50), size=3).astype(np.float16)
    p[2] *= np.float16(1.5)
    z = backend.asarray(rng.normal(size=(3, 50)), "float32")
    value = backend.to_numpy(el.cross_entropy(z, backend.asarray(p, "float16"), reduction="none",
                                              validate=False))
    assert np.isfinite(value[:2]).all() and np.isnan(value[2])


@pytest.mark.parametrize("mode", ["validate=False", "jit"])
def test_a_negative_class_weight_unchecked_is_nan_where_it_weighs(backend, mode):
    """A negative class weight becomes NaN, as a NaN weight: the positions of its class
    are NaN, value and gradient, and so the mean (its divisor is the weights' sum); the
    other positions are the definition's numbers; an ignored position stays 0. With a
    smoothed target every position puts mass on every class: all NaN."""
    if mode == "jit" and backend.library != "jax":
        pytest.skip("jit is JAX's")
    d = _data(2)
    w_np, y_np = np.array([1.0, -1.0, 2.0, 0.5]), np.array([0, 1, -100, 3, 2])
    w, y, z = backend.asarray(w_np), backend.asarray(y_np), backend.asarray(d["logits"])
    with pytest.raises(ValueError, match="weight must be non-negative"):
        el.cross_entropy(z, y, weight=w, ignore_index=-100)

    def run(**options):
        options.update(weight=w, ignore_index=-100)
        if mode == "jit":
            import jax

            per = jax.jit(lambda z: el.cross_entropy(z, y, reduction="none", **options))(z)
            mean = jax.jit(lambda z: el.cross_entropy(z, y, **options))(z)
            grad = jax.jit(jax.grad(lambda z: el.cross_entropy(z, y, reduction="sum", **options)))(z)
        else:
            per = el.cross_entropy(z, y, reduction="none", validate=False, **options)
            mean = el.cross_entropy(z, y, validate=False, **options)
            grad = el.value_and_grad(el.cross_entropy, z, y, validate=False, reduction="sum",
                                     **options)[1]["logits"]
        return backend.to_numpy(per), float(backend.to_numpy(mean)), backend.to_numpy(grad)

    per, mean, grad = run()
    assert np.isnan(per[1]) and np.isnan(mean) and np.isnan(grad[1]).all()
    assert per[2] == 0 and (grad[2] == 0).all()
    others = [0, 3, 4]
    expected = reference.loss("cross_entropy", d["logits"][others], y_np[others], weight=w_np,
                              reduction="none")
    np.testing.assert_allclose(per[others], expected, rtol=1e-12)
    assert np.isfinite(grad[others]).all()
    per, mean, grad = run(label_smoothing=0.1)
    assert np.isnan(per[[0, 1, 3, 4]]).all() and np.isnan(grad[[0, 1, 3, 4]]).all()
    assert per[2] == 0


BASES = [(definition.name, name) for definition in _losses.LOSSES for name in definition.bases]


@pytest.mark.parametrize("loss, name", BASES)
def test_a_bad_array_base_unchecked_is_nan_value_and_gradients(backend, loss, name):
    """Base 0 gave a loss of 0 (1 / ln 0 = -0) and base 1 an infinite one; unchecked, every
    base that is not a finite number > 1 gives a NaN loss, a NaN gradient of the logits
    and of the base itself (not 0: the base would never move)."""
    d = _data(3)
    z, y = backend.asarray(d["logits"]), backend.asarray(np.array([0, 1, 2, 3, 0]))
    fn = getattr(el, loss)
    for bad in (0.0, 0.5, 1.0, -2.0, math.inf, math.nan):
        b = backend.asarray(np.asarray(bad))
        with pytest.raises(ValueError, match=f"{name} must be a finite number > 1"):
            fn(z, y, **{name: b})
        value, grads = el.value_and_grad(fn, z, y, validate=False, **{name: b})
        assert np.isnan(float(backend.to_numpy(value)))
        assert np.isnan(backend.to_numpy(grads["logits"])).all()
        assert np.isnan(float(backend.to_numpy(grads[name])))
    # a good base is untouched: the checked call's numbers exactly
    b = backend.asarray(np.asarray(2.0))
    value, grads = el.value_and_grad(fn, z, y, validate=False, **{name: b})
    checked, checked_grads = el.value_and_grad(fn, z, y, **{name: b})
    assert float(backend.to_numpy(value)) == float(backend.to_numpy(checked))
    np.testing.assert_array_equal(backend.to_numpy(grads[name]), backend.to_numpy(checked_grads[name]))


def test_bad_array_bases_under_jit_are_nan(jax_backend):
    import jax

    d = _data(3)
    z, y = jax_backend.asarray(d["logits"]), jax_backend.asarray(np.array([0, 1, 2, 3, 0]))
    step = jax.jit(jax.value_and_grad(lambda z, b: el.min_ent(z, y, entropy_base=b), argnums=(0, 1)))
    for bad in (0.0, 1.0, -2.0):
        value, (g_z, g_b) = step(z, jax_backend.asarray(bad))
        assert np.isnan(value) and np.isnan(g_z).all() and np.isnan(g_b)
    value, (g_z, g_b) = step(z, jax_backend.asarray(2.0))
    np.testing.assert_allclose(value, el.min_ent(z, y, entropy_base=2.0), rtol=1e-13)


def test_an_array_parameter_below_its_bound_unchecked_is_nan(backend):
    """poly1's epsilon must be >= -1 (below, the loss is unbounded below): unchecked, the
    loss and the logits' gradient are NaN."""
    z, y = backend.asarray(_data()["logits"]), backend.asarray(np.array([0, 1, 2, 3, 0]))
    eps = backend.asarray(np.asarray(-1.5))
    with pytest.raises(ValueError, match="epsilon must be >= -1"):
        el.poly1(z, y, epsilon=eps)
    value, grads = el.value_and_grad(el.poly1, z, y, epsilon=eps, validate=False)
    assert np.isnan(float(backend.to_numpy(value))) and np.isnan(backend.to_numpy(grads["logits"])).all()
    # (epsilon's own gradient, 1 - p_y, does not depend on epsilon: it stays a number
    # through the hand-derived gradient; autograd, through the marking, makes it NaN)


# --- validate="eager" where nothing can be read -----------------------------------------

def _plain_and_linear(loss: str):
    return [lambda x, w, t, **o: getattr(el, loss)(x @ w.T, t, **o),
            lambda x, w, t, **o: getattr(el, f"linear_{loss}")(x, w, t, **o)]


@pytest.mark.parametrize("loss", LOSSES)
def test_eager_validation_under_jit_raises_naming_validate(jax_backend, loss):
    """Asked to read traced data, validate="eager" says it cannot, at trace time, and
    points to the checkify checks; whether the arrays are arguments (tracers) or closed
    over (the checks' own operations are staged). validate=True traces."""
    import jax

    d = _data(4)
    x, w = jax_backend.asarray(d["hidden"]), jax_backend.asarray(d["classifier"])
    y = jax_backend.asarray(np.array([0, 1, 2, 3, 0]))
    for fn in _plain_and_linear(loss):
        with pytest.raises(ValueError, match=r"validate='eager' cannot check the data under "
                                             r"jax\.jit.*entroloss\.backends\.jax_checks"):
            jax.jit(lambda x, y, fn=fn: fn(x, w, y, validate="eager"))(x, y)
        with pytest.raises(ValueError, match="validate='eager' cannot check"):
            jax.jit(lambda fn=fn: fn(x, w, y, validate="eager"))()
        np.testing.assert_allclose(jax.jit(lambda x, y, fn=fn: fn(x, w, y))(x, y),
                                   fn(x, w, y, validate="eager"), rtol=1e-12)


def test_eager_validation_of_a_traced_weight_or_base_raises(jax_backend):
    """The logits and target concrete, an option traced: still nothing to read."""
    import jax

    z, y = jax_backend.asarray(_data()["logits"]), jax_backend.asarray(np.array([0, 1, 2, 3, 0]))
    w, b = jax_backend.asarray(np.ones(CLASSES)), jax_backend.asarray(2.0)
    for call in (lambda w, b: el.cross_entropy(z, y, weight=w, validate="eager"),
                 lambda w, b: el.cross_entropy(z, y, base=b, validate="eager")):
        with pytest.raises(ValueError, match="validate='eager' cannot check"):
            jax.jit(call)(w, b)


@pytest.mark.parametrize("fullgraph", [False, True])
def test_eager_validation_inside_torch_compile_raises_at_trace_time(fullgraph):
    """Inside torch.compile the same ValueError is raised while compiling; with
    fullgraph=True torch reports it as a ``torch._dynamo.exc.Unsupported`` (a
    RuntimeError) whose message holds ours."""
    torch = pytest.importorskip("torch")
    torch._dynamo.reset()
    z = torch.randn(3, 4, dtype=torch.float64)
    t = torch.softmax(torch.randn(3, 4, dtype=torch.float64), dim=-1)
    step = torch.compile(lambda z, t: el.focal(z, t, validate="eager"), fullgraph=fullgraph)
    error = ValueError if not fullgraph else torch._dynamo.exc.Unsupported
    with pytest.raises(error, match="validate='eager' cannot check the data inside torch.compile"):
        step(z, t)
    # validate=True compiles, and a bad row is NaN there too
    bad = t.clone()
    bad[1] *= 1.5
    per = torch.compile(lambda z, t: el.focal(z, t, reduction="none"), fullgraph=True)(z, bad)
    assert torch.isnan(per[1]) and torch.isfinite(per[[0, 2]]).all()
    torch.testing.assert_close(per[[0, 2]], el.focal(z[[0, 2]], t[[0, 2]], reduction="none"),
                               rtol=1e-12, atol=0)


# --- the checked path pays nothing ----------------------------------------------------------

def test_checked_soft_rows_cost_no_op():
    """Where validation read the rows (``target_checked``), the forward and backward
    dispatch no op for them; unchecked, the marking costs ten ops per pass."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as xp

    from entroloss.backends.torch_kernels import KERNELS
    from entroloss.tools.bench import count_dispatched_ops

    z = torch.randn(8, 6, dtype=torch.float64)
    t = torch.softmax(torch.randn(8, 6, dtype=torch.float64), dim=-1)
    scalars = _math.Scalars()

    def ops(checked: bool, backward: bool) -> int:
        spec = _math.Spec(axis=1, soft=True, target_checked=checked)

        def run():
            value, kept = _math.forward(xp, spec, z, t, None, scalars, KERNELS)
            if backward:
                _math.backward(xp, spec, kept, t, None, scalars, torch.ones((), dtype=z.dtype),
                               z.dtype, KERNELS)
        return count_dispatched_ops(run)

    # checked: the counts of b4b5a2a, before the marking existed (torch 2.13), less the
    # one op a mean over every position saves (xp.mean for a sum and a divide)
    assert ops(True, False) == 19 and ops(True, True) == 37
    # unchecked: bad_soft_rows' eight ops, the NaN and the where, in each pass
    assert ops(False, False) == 19 + 10 and ops(False, True) == 37 + 20
