"""optax's classification tests, run against entroloss (JAX).

Sources (optax 0.2.x):
- ``optax/losses/_classification_test.py``: ``SoftmaxCrossEntropyTest``,
  ``SafeSoftmaxCrossEntropyTest``, ``SoftmaxCrossEntropyWithIntegerLabelsTest`` and the
  cross-entropy cases of ``PolyLossTest`` (``epsilon=0`` is softmax cross entropy: the
  ``eps=0`` expected numbers and ``test_equals_to_cross_entropy_when_eps0``);
- ``optax/losses/_smoothing_test.py``: ``SmoothLabelsTest``'s labels and alphas, through
  ``label_smoothing=`` (optax's ``smooth_labels`` is torch's smoothing, ``(1-a) q + a/C``).

Their literal inputs and expected numbers are copied here; where they compare against an
optax function we call ``optax.losses.softmax_cross_entropy`` /
``softmax_cross_entropy_with_integer_labels`` / ``smooth_labels`` (public API) on the same
inputs, values and ``jax.grad`` (logits and soft labels). optax returns per-example losses:
ours with ``reduction="none"``. optax's test file does not enable x64, so its inputs are
float32 there; our conftest enables x64, so every array here has an explicit dtype: the
peer's float32, and float64 where we compare against optax's functions.

Not mapped (entroloss has no such option): ``where=`` masks (``test_mask``,
``test_per_logit_mask``, the masked gradient), tuple ``axis`` (``test_axes``), the poly
loss with ``epsilon != 0``, and the sigmoid (binary, per-element) losses.
"""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
optax = pytest.importorskip("optax")

import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402

import entroloss as el  # noqa: E402

DTYPES = {"float32": np.float32, "float64": np.float64}
RTOL = {np.float32: 1e-5, np.float64: 1e-12}  # from the dtype

# SoftmaxCrossEntropyTest.setUp / SoftmaxCrossEntropyWithIntegerLabelsTest.setUp
YS = [[10.0, 1.0, -2.0], [1.0, 4.0, 0.2]]
TS_SOFT = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]
TS_INT = [1, 0]
EXP = [9.00013, 3.0696733]  # np.float32 in the source
# SafeSoftmaxCrossEntropyTest.setUp
SAFE_YS = [[10.0, 1.0, -2.0], [1.0, 4.0, 0.2], [-np.inf, 0.0, 0.0], [-np.inf, 0.0, 0.0],
           [-np.inf, 0.0, -np.inf]]
SAFE_TS = [[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.5, 0.5], [0.4, 0.3, 0.3], [0.0, 1.0, 0.0]]
SAFE_EXP = [9.00013, 3.0696733, 0.693147, np.inf, 0.0]
# PolyLossTest.setUp; "all expected values are computed using tf version of
# poly1_cross_entropy"; eps=0 rows of test_scalar and test_batched
POLY_LOGITS = [0.14, 1.456, 2.356, -0.124, -2.47]
POLY_LABELS = [0.1, 0.15, 0.2, 0.25, 0.3]
POLY_EXP_EPS0 = 2.8990
POLY_BATCHED_LOGITS = [[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]]
POLY_BATCHED_LABELS = [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]]
POLY_BATCHED_EXP_EPS0 = [0.1698, 0.8247]
# PolyLossTest.test_equals_to_cross_entropy_when_eps0 parameters
POLY_EQ_CE = {
    "3x3": ([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0], [0.134, 1.234, 3.235]],
            [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2], [0.34, 0.33, 0.33]]),
    "2x3": ([[4.0, 2.0, 1.0], [0.0, 5.0, 1.0]], [[1.0, 0.0, 0.0], [0.0, 0.8, 0.2]]),
    "2x5": ([[4.0, 2.0, 1.0, 0.134, 1.3515], [0.0, 5.0, 1.0, 0.5215, 5.616]],
            [[0.5, 0.0, 0.0, 0.0, 0.5], [0.0, 0.12, 0.2, 0.56, 0.12]]),
    "1d_2": ([1.89, 2.39], [0.34, 0.66]),
    "1d_1": ([0.314], [1.0]),
}
SMOOTH_ALPHAS = [0.0, 0.1, 1.0]  # SmoothLabelsTest


def _ce(logits, labels, **kw):
    return el.cross_entropy(logits, labels, reduction="none", **kw)


def _close(got, want, rtol, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    scale = float(np.max(np.abs(want[np.isfinite(want)]), initial=0.0))
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * scale, err_msg=what)


def _literal(got, expected, atol):
    """Against the source's literal expected numbers, with the source's own atol (the
    literals' precision), in the source's float32."""
    got = np.asarray(got)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.asarray(expected, np.float32), atol=atol)


def _grads_soft(fn, logits, labels):
    """d sum(loss) / d logits and d labels."""
    return jax.grad(lambda z, q: jnp.sum(fn(z, q)), argnums=(0, 1))(logits, labels)


# --- SoftmaxCrossEntropyTest ---------------------------------------------------------------

@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_softmax_ce_scalar(jit):
    """test_scalar: one row, 1-d logits and soft labels."""
    f = jax.jit(_ce) if jit else _ce
    ys, ts = np.array(YS, np.float32), np.array(TS_SOFT, np.float32)
    _literal(f(jnp.asarray(ys[0]), jnp.asarray(ts[0])), EXP[0], atol=1e-4)


@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_softmax_ce_batched(jit):
    """test_batched."""
    f = jax.jit(_ce) if jit else _ce
    ys, ts = np.array(YS, np.float32), np.array(TS_SOFT, np.float32)
    _literal(f(jnp.asarray(ys), jnp.asarray(ts)), EXP, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_ce_matches_optax_value_and_grad(dtype):
    """test_batched's inputs: value, d/d logits and d/d labels against optax's own."""
    dt = DTYPES[dtype]
    ys, ts = jnp.asarray(np.array(YS, dt)), jnp.asarray(np.array(TS_SOFT, dt))
    _close(_ce(ys, ts), optax.losses.softmax_cross_entropy(ys, ts), RTOL[dt], "value")
    ours = _grads_soft(_ce, ys, ts)
    theirs = _grads_soft(optax.losses.softmax_cross_entropy, ys, ts)
    _close(ours[0], theirs[0], RTOL[dt], "d/d logits")
    _close(ours[1], theirs[1], RTOL[dt], "d/d labels")


def test_softmax_ce_check_grads():
    """test_gradient: jax.test_util.check_grads(f, (ys[:2], ts[:2]), order=1), forward and
    reverse mode against finite differences (numpy arrays, as in the source), in the
    logits only: finite differences in the one-hot labels leave the simplex (negative
    entries), where entroloss refuses the labels or, unchecked, gives NaN (docs/backends.md);
    the labels' gradient is compared with optax's in
    test_softmax_ce_matches_optax_value_and_grad."""
    ys, ts = np.array(YS, np.float32), np.array(TS_SOFT, np.float32)
    check_grads(lambda z: _ce(z, ts[:2]), (ys[:2],), order=1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_softmax_ce_axis(axis):
    """test_axis: shape [4, 5, 6], preds normal, targets Dirichlet along the LAST axis
    (source: np.random unseeded; seeded here), loss along ``axis`` vs the moved-axis call.
    For axis 0 and 1 the targets' rows along ``axis`` do not sum to 1 (the source does not
    normalize them); optax and torch take them as given, entroloss refuses them (or, with
    validate=False, gives NaN: docs/backends.md), so here they are normalized along
    ``axis`` first."""
    rng = np.random.default_rng(100 + axis)
    shape = [4, 5, 6]
    preds = rng.normal(size=shape)
    targets = rng.dirichlet(np.ones(shape[-1]), size=shape[:-1])
    targets = targets / targets.sum(axis=axis, keepdims=True)
    preds, targets = jnp.asarray(preds), jnp.asarray(targets)
    x = _ce(preds, targets, axis=axis)
    y = _ce(jnp.moveaxis(preds, axis, -1), jnp.moveaxis(targets, axis, -1))
    np.testing.assert_allclose(x, y, atol=1e-4)  # the source's check
    _close(x, optax.losses.softmax_cross_entropy(preds, targets, axis=axis), RTOL[np.float64],
           "vs optax")


# --- SafeSoftmaxCrossEntropyTest (-inf logits) ---------------------------------------------

@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
def test_safe_softmax_ce_scalar_and_batched(jit):
    """test_scalar and test_batched of safe_softmax_cross_entropy: -inf logits, where the
    target has mass on a -inf class the loss is inf, elsewhere finite."""
    f = jax.jit(_ce) if jit else _ce
    ys, ts = np.array(SAFE_YS, np.float32), np.array(SAFE_TS, np.float32)
    _literal(f(jnp.asarray(ys[0]), jnp.asarray(ts[0])), SAFE_EXP[0], atol=1e-4)
    _literal(f(jnp.asarray(ys), jnp.asarray(ts)), SAFE_EXP, atol=1e-4)


def test_safe_softmax_ce_matches_optax():
    """Our values at the -inf rows against optax.losses.safe_softmax_cross_entropy."""
    ys, ts = jnp.asarray(np.array(SAFE_YS, np.float32)), jnp.asarray(np.array(SAFE_TS, np.float32))
    _close(_ce(ys, ts), optax.losses.safe_softmax_cross_entropy(ys, ts), RTOL[np.float32])


def test_safe_softmax_ce_check_grads():
    """test_gradient of the safe variant: check_grads on ys[:2] (the logits only, as in
    test_softmax_ce_check_grads)."""
    ys, ts = np.array(SAFE_YS, np.float32), np.array(SAFE_TS, np.float32)
    check_grads(lambda z: _ce(z, ts[:2]), (ys[:2],), order=1)


def test_safe_softmax_ce_against_plain():
    """test_against_plain_implementation: value_and_grad on row 0, ours vs optax's plain
    softmax_cross_entropy."""
    ys, ts = jnp.asarray(np.array(SAFE_YS, np.float32)), jnp.asarray(np.array(SAFE_TS, np.float32))
    ours = jax.value_and_grad(_ce)(ys[0], ts[0])
    theirs = jax.value_and_grad(optax.losses.softmax_cross_entropy)(ys[0], ts[0])
    np.testing.assert_allclose(ours[0], theirs[0], atol=1e-4)  # the source's atol
    np.testing.assert_allclose(ours[1], theirs[1], atol=1e-4)
    _close(ours[0], theirs[0], RTOL[np.float32], "value")
    _close(ours[1], theirs[1], RTOL[np.float32], "grad")


# --- SoftmaxCrossEntropyWithIntegerLabelsTest ----------------------------------------------

@pytest.mark.parametrize("jit", [True, False], ids=["jit", "eager"])
@pytest.mark.parametrize("batched", [False, True], ids=["scalar", "batched"])
def test_integer_labels_consistent_with_soft(batched, jit):
    """test_consistent_with_softmax_cross_entropy_{scalar,batched}: integer labels vs
    optax's softmax_cross_entropy on one_hot(labels, 3), rtol=1e-6 (the source's)."""
    f = jax.jit(_ce) if jit else _ce
    ys, ts = np.array(YS, np.float32), np.array(TS_INT, np.int32)
    if not batched:
        ys, ts = ys[0], ts[0]
    exp = optax.losses.softmax_cross_entropy(jnp.asarray(ys), jax.nn.one_hot(ts, 3, dtype=jnp.float32))
    got = f(jnp.asarray(ys), jnp.asarray(ts))
    assert got.dtype == exp.dtype == jnp.float32
    np.testing.assert_allclose(got, exp, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_integer_labels_matches_optax_value_and_grad(dtype):
    dt = DTYPES[dtype]
    ys, ts = jnp.asarray(np.array(YS, dt)), jnp.asarray(np.array(TS_INT, np.int32))
    theirs_fn = optax.losses.softmax_cross_entropy_with_integer_labels
    _close(_ce(ys, ts), theirs_fn(ys, ts), RTOL[dt], "value")
    _close(el.cross_entropy(ys, ts), jnp.mean(theirs_fn(ys, ts)), RTOL[dt], "mean")
    g_ours = jax.grad(lambda z: jnp.sum(_ce(z, ts)))(ys)
    g_theirs = jax.grad(lambda z: jnp.sum(theirs_fn(z, ts)))(ys)
    _close(g_ours, g_theirs, RTOL[dt], "d/d logits")


def test_integer_labels_check_grads():
    """test_gradient: check_grads(partial(f, labels=ts), (ys,), order=1), numpy labels as in
    the source."""
    ys, ts = np.array(YS, np.float32), np.array(TS_INT, np.int32)
    check_grads(lambda z: _ce(z, ts), (ys,), order=1)


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_integer_labels_axis(axis):
    """test_axis: shape [4, 5, 6], labels in [0, shape[axis]) with the shape minus ``axis``
    (source: np.random unseeded; seeded here)."""
    rng = np.random.default_rng(200 + axis)
    shape = [4, 5, 6]
    preds = jnp.asarray(rng.normal(size=shape))
    targets = jnp.asarray(rng.integers(shape[axis], size=shape[:axis] + shape[axis + 1:]))
    x = _ce(preds, targets, axis=axis)
    y = _ce(jnp.moveaxis(preds, axis, -1), targets)
    np.testing.assert_allclose(x, y, atol=1e-4)  # the source's check
    theirs = optax.losses.softmax_cross_entropy_with_integer_labels(preds, targets, axis=axis)
    _close(x, theirs, RTOL[np.float64], "vs optax")
    g_ours = jax.grad(lambda z: jnp.sum(_ce(z, targets, axis=axis)))(preds)
    g_theirs = jax.grad(lambda z: jnp.sum(
        optax.losses.softmax_cross_entropy_with_integer_labels(z, targets, axis=axis)))(preds)
    _close(g_ours, g_theirs, RTOL[np.float64], "d/d logits vs optax")


# --- PolyLossTest, epsilon = 0 (softmax cross entropy) -------------------------------------

def test_poly_eps0_literals():
    """test_scalar and test_batched rows with eps=0: 2.8990 and [0.1698, 0.8247], atol 1e-4
    (the source's; its literals have 4 decimals)."""
    f = jax.jit(_ce)
    _literal(f(jnp.asarray(np.array(POLY_LOGITS, np.float32)),
               jnp.asarray(np.array(POLY_LABELS, np.float32))), POLY_EXP_EPS0, atol=1e-4)
    _literal(f(jnp.asarray(np.array(POLY_BATCHED_LOGITS, np.float32)),
               jnp.asarray(np.array(POLY_BATCHED_LABELS, np.float32))),
             POLY_BATCHED_EXP_EPS0, atol=1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", list(POLY_EQ_CE))
def test_poly_eps0_equals_cross_entropy(name, dtype):
    """test_equals_to_cross_entropy_when_eps0's inputs: ours vs optax's
    softmax_cross_entropy and poly_loss_cross_entropy(epsilon=0), value and gradients."""
    dt = DTYPES[dtype]
    logits, labels = (jnp.asarray(np.array(a, dt)) for a in POLY_EQ_CE[name])
    ours = _ce(logits, labels)
    _close(ours, optax.losses.softmax_cross_entropy(logits, labels), RTOL[dt], "value")
    np.testing.assert_allclose(  # the source's own comparison, atol 1e-4
        ours, optax.losses.poly_loss_cross_entropy(logits, labels, epsilon=0.0), atol=1e-4)
    g_ours = _grads_soft(_ce, logits, labels)
    g_theirs = _grads_soft(optax.losses.softmax_cross_entropy, logits, labels)
    _close(g_ours[0], g_theirs[0], RTOL[dt], "d/d logits")
    _close(g_ours[1], g_theirs[1], RTOL[dt], "d/d labels")


# --- SmoothLabelsTest: label_smoothing = optax.smooth_labels -------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", SMOOTH_ALPHAS, ids=lambda a: f"alpha{a}")
@pytest.mark.parametrize("target", ["soft", "index"])
@pytest.mark.parametrize("batched", [False, True], ids=["scalar", "batched"])
def test_label_smoothing_is_smooth_labels(batched, target, alpha, dtype):
    """SmoothLabelsTest's labels (the one-hot rows of SoftmaxCrossEntropyTest) and alphas
    0, 0.1, 1: cross_entropy(ys, labels, label_smoothing=a) vs optax's
    softmax_cross_entropy(ys, smooth_labels(one_hot, a)), value and d/d logits (and, for
    soft labels, d/d labels)."""
    dt = DTYPES[dtype]
    ys = jnp.asarray(np.array(YS, dt))
    onehot = jnp.asarray(np.array(TS_SOFT, dt))
    labels = onehot if target == "soft" else jnp.asarray(np.argmax(np.array(TS_SOFT), -1).astype(np.int32))
    if not batched:
        ys, onehot, labels = ys[0], onehot[0], labels[0]

    def ours(z, q):
        return _ce(z, q, label_smoothing=alpha)

    def theirs(z, q):
        return optax.losses.softmax_cross_entropy(z, optax.smooth_labels(q, alpha))

    _close(ours(ys, labels), theirs(ys, onehot), RTOL[dt], "value")
    if target == "soft":
        g_ours, g_theirs = _grads_soft(ours, ys, labels), _grads_soft(theirs, ys, onehot)
        _close(g_ours[1], g_theirs[1], RTOL[dt], "d/d labels")
    else:
        g_ours = (jax.grad(lambda z: jnp.sum(ours(z, labels)))(ys),)
        g_theirs = (jax.grad(lambda z: jnp.sum(theirs(z, onehot)))(ys),)
    _close(g_ours[0], g_theirs[0], RTOL[dt], "d/d logits")
