"""Numerical extremes, values AND gradients, on every backend and dtype it has.

Each test runs the loss the three ways a user can differentiate it: ``el.value_and_grad``
(every backend), torch autograd (``backward``) and ``jax.grad``, and compares value and
gradient with the float64 reference (``entroloss.tools.reference``) evaluated on exactly the inputs the
backend sees (rounded to its dtype), the gradient by central differences of that
reference. No NaN or inf may appear where the math is finite, and NaN must appear where an
input is NaN.

Complements ``test_edges.py`` (which checks these regimes on float64 through
``value_and_grad`` with class-index targets): here the dense target paths (soft targets,
label smoothing), near-one-hot targets with exact zeros, every dtype including float16 and
bfloat16, values beyond a naive ``exp``'s range, tiny ``eps``, and the frameworks' own
autograd.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses
from entroloss.tools import reference
from entroloss.tools.reference import central_differences
from tests.helpers.assertions import tolerance
from tests.helpers.platforms import HALF, backend_dtype_params, backend_params
from tests.helpers.reliability import (LOSSES, compute_ulp, differentiate, known_error,
                                       reference_grad, reference_loss, rounded)

# every backend with every dtype it has
EVERY_DTYPE = backend_dtype_params()
# every regularizer switched on, at values where each term matters: the registry's example
# weights and options (its bases stay e)
OPTIONS = {d.name: {k: v for k, v in d.example.items() if k not in d.bases} for d in _losses.LOSSES}
_CACHE: dict = {}


@pytest.fixture(params=LOSSES)
def loss(request):
    return request.param


def _expected(kind, z, target, options):
    """(value, gradient) of the reference, cached: the same rounded case recurs per path."""
    opts = {k: v for k, v in options.items()}
    key = (kind, z.tobytes(), z.shape, np.asarray(target).tobytes(), repr(sorted(opts.items(), key=str)))
    if key not in _CACHE:
        _CACHE[key] = (reference_loss(kind, z, target, opts), reference_grad(kind, z, target, opts))
    return _CACHE[key]


def check_against_reference(backend, kind, dtype, z, target, **options):
    """Run ``kind`` on the backend in ``dtype`` every way it can be differentiated; compare
    value and gradient with the reference on the rounded inputs. Returns the reference
    value and gradient and the backend's results for further assertions."""
    fn = getattr(el, kind)
    logits = backend.asarray(z, dtype)
    soft = np.asarray(target).dtype.kind == "f"
    tgt = backend.asarray(target, dtype) if soft else backend.asarray(target)
    seen_z = rounded(backend, z, dtype)
    seen_t = rounded(backend, target, dtype) if soft else np.asarray(target)
    opts = dict(options)
    on = dict(options)
    if "weight" in opts:
        seen_w = rounded(backend, opts["weight"], dtype)
        opts["weight"] = seen_w
        on["weight"] = backend.asarray(options["weight"], dtype)
    value, grad = _expected(kind, seen_z, seen_t, opts)
    tol = tolerance(dtype)
    # the implementation's known absolute error (tests.helpers.reliability.known_error; the
    # precision tests below state the stricter contract)
    known = known_error(kind, seen_z, seen_t, opts, dtype)
    known_g = known_error(kind, seen_z, seen_t, opts, dtype, per_class=True)
    results = differentiate(backend, fn, logits, tgt, **on)
    for path, got_value, got_grad in results:
        finite = np.isfinite(value)
        assert np.array_equal(np.isfinite(got_value), finite), (path, got_value, value)
        assert np.all(np.abs(got_value - value) <= tol["atol"] + known + tol["rtol"] * np.abs(value)), (
            path, got_value, value, known)
        assert np.all(np.isfinite(got_grad)), (path, got_grad)
        atol = max(tol["atol"], 1e-6) + known_g
        assert np.all(np.abs(got_grad - grad) <= atol + tol["rtol"] * np.abs(grad)), (
            path, got_grad, grad)
    return value, grad, results


# --- logits of +-1e4, saturated softmax ---------------------------------------------------

HUGE = np.array([
    [1e4, -1e4, 0.0, 5e3, -5e3, 1.0],
    [-1e4, -1e4, 1e4, 1e4, 0.0, -2.0],  # a tie at the top
    [40.0, 0.0, -1.0, 0.5, 1.0, -40.0],  # saturates in float32 and below, not in float64
    [0.0, 1e-3, -1e4, 2.0, 1e4, 9999.0],
])
HUGE_INDEX = np.array([1, 2, 0, 3])  # targets on the least and on the most likely classes
HUGE_SOFT = np.array([
    [0.0, 0.5, 0.5, 0.0, 0.0, 0.0],
    [0.25, 0.0, 0.25, 0.5, 0.0, 0.0],
    [1.0, 0.0, 0.0, 0.0, 0.0, 0.0],
    [0.0, 0.0, 0.125, 0.0, 0.5, 0.375],
])
WEIGHT6_HUGE = np.array([1.0, 0.5, 2.0, 1.0, 0.25, 0.75])


@pytest.mark.parametrize("target_kind", ["index", "soft"])
@pytest.mark.parametrize("variant", ["plain", "smoothed-weighted-kdim"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_huge_logits_and_saturated_softmax(backend, loss, dtype, target_kind, variant):
    target = HUGE_INDEX if target_kind == "index" else HUGE_SOFT
    z = HUGE
    options = {**OPTIONS[loss], "reduction": "none"}
    if variant != "plain":  # (N, C, d) with the classes on axis 1, smoothing, class weights
        options.update(label_smoothing=0.1, weight=WEIGHT6_HUGE)
        z = np.moveaxis(HUGE.reshape(2, 2, 6), -1, 1)
        target = (target.reshape(2, 2) if target_kind == "index"
                  else np.moveaxis(target.reshape(2, 2, 6), -1, 1))
        options["axis"] = 1
    value, _, _ = check_against_reference(backend, loss, dtype, z, target, **options)
    assert np.all(np.isfinite(value))
    assert np.max(np.abs(value)) > 1e3  # the extremes are really reached


# --- -inf masked classes with near-one-hot soft targets that have exact zeros ----------------

MASKED = np.array([
    [0.3, -np.inf, 1.2, -np.inf, -0.5, 2.0],  # the target's (class 2) neighbours masked
    [-np.inf, -np.inf, -np.inf, -np.inf, 0.7, -np.inf],  # all but one class masked
    [-np.inf, 5.0, -np.inf, -np.inf, -np.inf, -3.0],  # two classes left, target the unlikely one
    [-np.inf, 1e4, -1e4, 0.0, 3.0, -np.inf],  # masked and saturated at once
])
MASKED_INDEX = np.array([2, 4, 5, 1])
NEAR_ONE_HOT = np.array([  # exact zeros on every masked class; tiny masses elsewhere
    [1e-6, 0.0, 1.0 - 2e-6, 0.0, 1e-6, 0.0],
    [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],
    [0.0, 1e-9, 0.0, 0.0, 0.0, 1.0 - 1e-9],
    [0.0, 1.0 - 1e-7, 1e-7, 0.0, 0.0, 0.0],
])
WEIGHT6 = np.array([0.0, 1.0, 2.0, 0.5, 1.0, 1.5])


@pytest.mark.parametrize("target_kind", ["index-weighted", "near-one-hot"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_masked_classes_values_and_gradients(backend, loss, dtype, target_kind):
    target = MASKED_INDEX if target_kind == "index-weighted" else NEAR_ONE_HOT
    options = {**OPTIONS[loss], "reduction": "none"}
    if target_kind == "index-weighted":  # weight 0 on a class that is also masked
        options["weight"] = WEIGHT6
    _, _, results = check_against_reference(backend, loss, dtype, MASKED, target, **options)
    for path, _, got_grad in results:  # a masked class gets exactly no gradient
        assert np.all(got_grad[np.isneginf(MASKED)] == 0), path


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_all_but_one_class_masked_is_exact(backend, loss, dtype, reduction):
    """p is exactly one-hot on the only finite class and the target is that class: every
    loss is its regularizer's value at a one-hot p (0 but for MIX-ENT's ``-reverse_weight *
    log(1 + eps)``: the float64 reference), and every gradient is 0 (exactly, where the loss
    is 0), whatever the size of the finite logit."""
    z = np.full((4, 6), -np.inf)
    y = np.array([0, 2, 5, 3])
    z[np.arange(4), y] = [0.0, -1e4, 1e4, 7.5]
    options = {**OPTIONS[loss], "reduction": reduction}
    expected = reference_loss(loss, z, y, options)
    exact = np.all(expected == 0)
    # a few ulps of what may cancel (-log eps for MIX-ENT), per row: known_error
    known = float(np.max(known_error(loss, z, y, {**options, "reduction": "none"}, dtype)))
    for path, value, grad in differentiate(backend, getattr(el, loss), backend.asarray(z, dtype),
                                           backend.asarray(y), **options):
        subnormal = 6e-8 if dtype == "float16" else 0.0  # float16's spacing near 0
        scale = 4 if reduction == "sum" else 1
        np.testing.assert_allclose(value, expected, rtol=tolerance(dtype)["rtol"],
                                   atol=subnormal + (0.0 if exact else known) * scale,
                                   err_msg=path)
        np.testing.assert_allclose(grad, 0.0, rtol=0, atol=0.0 if exact else known, err_msg=path)


# --- half precision past the range of a naive exp -----------------------------------------

def _past_naive_exp(dtype):
    """Logits whose naive ``exp`` overflows ``dtype`` (float32's range for bfloat16), with
    masked classes beside them, and targets off the top class, on it, and at a gap
    (2 * big) beyond the dtype's range."""
    big = {"float16": 6e4, "bfloat16": 3e38, "float32": 3e38, "float64": 1e308}[dtype]
    z = np.full((4, 6), -np.inf)
    z[0, :3] = [big, -big, 0.0]
    z[1, :3] = [-big / 3, 0.0, big / 3]
    z[2, :3] = [big, 0.0, -big]  # the target on the top: loss 0 (a tie: see test_a_tie_between_huge_logits)
    z[3, [1, 4, 5]] = [big, 0.0, -big]
    return z, np.array([2, 1, 0, 5])


def _regularizer_at_one_hot(loss: str, top, y, num: int, dtype: str) -> tuple:
    """(per row ``s * weight * G / ln(base)`` where p is exactly one-hot on ``top``, from the
    registry's reference formula of the term; a few ulps of it, 0 where it is 0 on every row)."""
    r = reference.resolve_options(loss, **OPTIONS[loss])
    term = r["regularizer"]
    if term is None:
        return np.zeros(len(y)), 0.0
    scale = r["reg_weight"] / math.log(r["reg_base"])
    values = []
    for t, target in zip(top, y, strict=True):
        p = [float(c == t) for c in range(num)]
        log_p = [0.0 if c == t else -math.inf for c in range(num)]
        q = [float(c == target) for c in range(num)]
        values.append(scale * term.reference(_losses.Position(p, log_p, q, [1.0] * num, r)))
    values = np.array(values)
    known = 0.0 if np.all(values == 0) else 8 * compute_ulp(dtype) * abs(scale) * term.bound(num, r)
    return values, known


@pytest.mark.parametrize("reduction", ["none", "sum"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_logits_past_a_naive_exp(backend, loss, dtype, reduction):
    """Every loss is ``-log p_y`` plus terms that vanish when p is one-hot: with the top
    class at a gap of 6e4..1e308, p is exactly one-hot, the loss equals the gap (to the
    dtype's rounding; +inf exactly where the gap itself exceeds the dtype's range, and
    never NaN) and the gradient is exactly ``onehot(top) - onehot(y)`` (0 with the target
    on the top), finite even where the value is +inf. A regularizer adds its value at that
    one-hot p (MIX-ENT's reverse term ``-log eps`` off the target, ``-log(1 + eps)`` on it),
    from the float64 reference's formula of the term."""
    z, y = _past_naive_exp(dtype)
    seen = rounded(backend, z, dtype)
    rows_ = np.arange(4)
    top = np.argmax(seen, axis=1)
    with np.errstate(over="ignore"):
        gap = seen[rows_, top] - seen[rows_, y]
    regularizer, known = _regularizer_at_one_hot(loss, top, y, 6, dtype)
    rows = gap + regularizer  # -log p_y (0 on the top) + the regularizer at a one-hot p
    expected = rows if reduction == "none" else np.sum(rows)
    largest = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38,
               "float32": float(np.finfo(np.float32).max),
               "float64": float(np.finfo(np.float64).max)}[dtype]
    expected = np.where(np.abs(expected) > largest, np.inf, expected)  # correctly rounded
    assert np.isinf(expected).any() and np.isfinite(expected).any() or reduction == "sum"
    with np.errstate(over="ignore"):  # NumPy warns where big - (-big) or a cast overflows
        results = differentiate(backend, getattr(el, loss), backend.asarray(z, dtype),
                                backend.asarray(y), **OPTIONS[loss], reduction=reduction)
    eye = np.eye(6)
    g_expected = np.stack([eye[0] - eye[2], eye[2] - eye[1], np.zeros(6), eye[1] - eye[5]])
    for path, value, grad in results:
        assert np.array_equal(np.isinf(value), np.isinf(expected)), (path, value, expected)
        assert not np.any(np.isnan(value)), (path, value)
        np.testing.assert_allclose(value, expected, rtol=tolerance(dtype)["rtol"],
                                   atol=known * 4, err_msg=path)
        assert np.all(np.isfinite(grad)), (path, grad)
        np.testing.assert_allclose(grad, g_expected, rtol=0, atol=known, err_msg=path)


@pytest.mark.parametrize("backend, half", backend_dtype_params(HALF))
def test_half_precision_mean_of_a_batch_whose_sum_overflows(backend, half):
    """The sum of 16384 float16 losses exceeds 65504: "mean" must still be the finite
    mean (the reduction is done in float32), while "sum" rounds to +inf in float16, as the
    true value does; bfloat16's range holds both."""
    rng = np.random.default_rng(11)
    z = rng.normal(scale=4.0, size=(16384, 10))
    y = rng.integers(0, 10, size=16384)
    logits = backend.asarray(z, half)
    seen = rounded(backend, z, half)
    # the reference, vectorised in float64 (16384 rows are too many for the plain-Python
    # entroloss.tools.reference)
    m = seen.max(axis=1, keepdims=True)
    ce = (m[:, 0] + np.log(np.exp(seen - m).sum(axis=1))) - seen[np.arange(16384), y]
    with np.errstate(over="ignore"):
        mean = backend.to_numpy(el.cross_entropy(logits, backend.asarray(y)))
        total = backend.to_numpy(el.cross_entropy(logits, backend.asarray(y), reduction="sum"))
        _, grads = el.value_and_grad(el.cross_entropy, logits, backend.asarray(y))
    np.testing.assert_allclose(mean, ce.mean(), rtol=tolerance(half)["rtol"])
    assert ce.sum() > 65504
    if half == "float16":
        assert total == np.inf
    else:
        np.testing.assert_allclose(total, ce.sum(), rtol=tolerance(half)["rtol"])
    g = backend.to_numpy(grads["logits"])
    assert np.all(np.isfinite(g)) and np.max(np.abs(g)) <= 1 / 16384 * 1.01


# --- tiny eps ----------------------------------------------------------------------------

@pytest.mark.parametrize("target_kind", ["index", "smoothed", "soft-with-zeros"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_tiny_eps(backend, dtype, target_kind):
    """eps = 1e-30 (a normal float32): ``-log eps ~ 69`` weighs the mass off the target;
    values and gradients stay finite and agree with the reference on every path."""
    target = {"index": MASKED_INDEX, "smoothed": np.array([0, 1, 5, 4]),
              "soft-with-zeros": NEAR_ONE_HOT}[target_kind]
    z = np.where(np.isneginf(MASKED), -2.0, MASKED) if target_kind == "smoothed" else MASKED
    z = np.where(np.abs(z) > 100, np.sign(z) * 8.0, z)
    options = {"reverse_weight": 0.5, "eps": 1e-30, "reduction": "none"}
    if target_kind == "smoothed":
        options["label_smoothing"] = 0.05
    value, _, _ = check_against_reference(backend, "mix_ent", dtype, z, target, **options)
    assert np.all(np.isfinite(value))


def test_eps_below_float32_range_with_a_dense_target(backend):
    z = np.array([[1.0, 2.0, -np.inf, 0.5]])
    t = np.array([[0.5, 0.5, 0.0, 0.0]])
    expected = reference_loss("mix_ent", z, t, {"eps": 1e-300, "reduction": "none"})
    assert np.isfinite(expected).all()
    got = backend.to_numpy(el.mix_ent(backend.asarray(z, "float32"), backend.asarray(t, "float32"),
                                      eps=1e-300, reduction="none"))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_offset_logits_keep_their_precision(backend):
    """A constant added to a position's logits leaves the loss unchanged (math.md), also
    in precision: small losses of offset float32 logits keep float32's relative accuracy."""
    for offset in (0.0, 1e3, 1e4):
        z = np.array([[offset, offset - 10.0, offset - 20.0]])
        y = np.array([0])
        expected = reference_loss("cross_entropy", z, y, {})
        assert 4.5e-5 < float(expected) < 4.6e-5
        got = backend.to_numpy(el.cross_entropy(backend.asarray(z, "float32"), backend.asarray(y)))
        # float32 resolves log(1 + 4.5e-5) to ~1e-3 relative; an offset must not make it worse
        np.testing.assert_allclose(got, expected, rtol=2e-3, err_msg=f"offset {offset}")


@pytest.mark.parametrize("dtype_big", [("float64", 1e17), ("float32", 1e8)], ids=["float64", "float32"])
def test_a_tie_between_huge_logits(backend, dtype_big):
    dtype, big = dtype_big
    logits = backend.asarray(np.array([[big, big, 0.0]]), dtype)
    np.testing.assert_allclose(backend.to_numpy(el.softmax(logits)), [[0.5, 0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(el.entropy(logits)), [math.log(2)], rtol=1e-6)
    np.testing.assert_allclose(backend.to_numpy(el.cross_entropy(logits, backend.asarray(np.array([0])))),
                               math.log(2), rtol=1e-6)


def test_mix_ent_reverse_term_keeps_its_precision_as_p_goes_to_one(backend):
    for eps in (1e-6, 1e-30):
        z = np.array([[20.0, 0.0, 0.0]])
        y = np.array([0])
        expected = reference_loss("mix_ent", z, y, {"ce_weight": 0.0, "eps": eps})
        got = backend.to_numpy(el.mix_ent(backend.asarray(z, "float32"), backend.asarray(y),
                                          ce_weight=0.0, eps=eps))
        np.testing.assert_allclose(got, expected, rtol=1e-3, err_msg=f"eps {eps}")


# --- focal with gamma < 1 as p -> 1, on the dense target path ------------------------------

@pytest.mark.parametrize("gamma", [0.25, 0.75])
@pytest.mark.parametrize("target_kind", ["one-hot-soft", "smoothed-index"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_focal_gamma_below_one_as_p_goes_to_one(backend, dtype, gamma, target_kind):
    """``(1-p)^(gamma-1)`` diverges as p -> 1 while ``p log p`` -> 0: the gradient must take
    the limit 0, not ``inf * 0``. test_edges covers the sparse class-index path; this is the
    dense one (soft targets and label smoothing) on every dtype and autograd path, with the
    target's gap at 5, 20 (p = 1 in float32), 40 (p = 1 in float64) and 800."""
    z = np.array([
        [5.0, 0.0, -np.inf, 0.0, 1.0, -1.0],
        [0.0, 20.0, 1.0, -1.0, 0.5, -np.inf],
        [-1.0, 0.0, 40.0, 0.0, -np.inf, 0.25],
        [0.0, 0.5, -np.inf, 800.0, 0.0, -3.0],
    ])
    y = np.array([0, 1, 2, 3])
    if target_kind == "one-hot-soft":
        target, options = np.eye(6)[y], {}
    else:  # smoothing puts mass on every class: the masked ones become finite
        z, target, options = np.where(np.isinf(z), -5.0, z), y, {"label_smoothing": 0.1}
    _, _, results = check_against_reference(backend, "focal", dtype, z, target, gamma=gamma,
                                            reduction="none", **options)
    for path, _, got_grad in results:
        assert np.all(np.abs(got_grad) <= 2.0), (path, got_grad)


# --- NaN in, NaN out -----------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("target_kind", ["index", "smoothed-soft"])
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_nan_logits_give_nan_through_every_path(backend, loss, dtype, target_kind):
    """A NaN logit makes its position's value and gradient NaN (also next to a masked
    class), the reduced loss NaN, and leaves the other positions exactly as they are
    without it."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 6))
    z[1, 3] = np.nan
    z[2, 0], z[2, 1] = np.nan, -np.inf
    options = {**OPTIONS[loss]}
    if target_kind == "index":
        target = np.array([0, 3, 2, 4])
    else:  # the dense path: a soft target, smoothed
        target = rng.dirichlet(np.ones(6), size=4)
        options["label_smoothing"] = 0.2
    fn = getattr(el, loss)

    def tgt(t):
        return backend.asarray(t) if target_kind == "index" else backend.asarray(t, dtype)

    logits = backend.asarray(z, dtype)
    for path, value, grad in differentiate(backend, fn, logits, tgt(target),
                                           reduction="none", **options):
        assert np.all(np.isnan(value[1:3])), (path, value)
        assert np.all(np.isnan(grad[1])) and np.all(np.isnan(grad[2, 2:])), (path, grad)
        alone = backend.to_numpy(fn(backend.asarray(z[[0, 3]], dtype), tgt(target[[0, 3]]),
                                    reduction="none", **options))
        np.testing.assert_allclose(value[[0, 3]], alone, rtol=tolerance(dtype)["rtol"] / 100,
                                   err_msg=path)
        assert np.all(np.isfinite(grad[[0, 3]])), path
    for reduction in ("mean", "sum"):
        assert np.isnan(backend.to_numpy(fn(logits, tgt(target), reduction=reduction, **options)))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_nan_in_other_inputs_gives_nan(backend, loss):
    """With the data checks off (validation refuses these otherwise), a NaN class weight at
    the target's class, a NaN soft-target row and a NaN weight or base given as a 0-d array
    make the loss NaN, never a number."""
    z = backend.asarray(np.random.default_rng(5).normal(size=(4, 6)))
    y = backend.asarray(np.array([0, 1, 2, 5]))
    fn = getattr(el, loss)
    w = backend.asarray(np.array([1.0, np.nan, 1.0, 1.0, 1.0, 1.0]))
    out = backend.to_numpy(fn(z, y, weight=w, validate=False, reduction="none"))
    assert np.isnan(out[1]) and np.all(np.isfinite(out[[0, 2, 3]]))
    assert np.isnan(backend.to_numpy(fn(z, y, weight=w, validate=False)))
    soft = np.full((4, 6), 1 / 6)
    soft[2, 1] = np.nan
    out = backend.to_numpy(fn(z, backend.asarray(soft), validate=False, reduction="none"))
    assert np.isnan(out[2]) and np.all(np.isfinite(out[[0, 1, 3]]))
    nan = backend.asarray(np.float64(np.nan))
    for scalar in _losses.by_name(loss).scalars:  # every weight and base of the loss
        assert np.isnan(backend.to_numpy(fn(z, y, validate=False, **{scalar: nan}))), scalar


# --- entropy, softmax, log_softmax: native autograd on extremes ------------------------------

def _entropy64(row):
    finite = row[np.isfinite(row)]
    if finite.size == 0:
        return 0.0
    m = finite.max()
    p = np.exp(finite - m)
    p = p / p.sum()
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("backend, dtype", EVERY_DTYPE)
def test_entropy_and_softmax_on_extremes(backend, dtype):
    """entropy stays in [0, log C], softmax rows sum to 1 and log_softmax is -inf only at
    masked (or underflowed) classes, for masked, saturated and past-exp logits; on torch and
    JAX their gradients (the frameworks' own autograd through the shared composition) are
    finite, 0 at masked classes, and match central differences of a float64 entropy."""
    big = {"float16": 6e4, "bfloat16": 1e38, "float32": 1e38, "float64": 1e300}[dtype]
    z = np.array([[0.0, -np.inf, 1.0, 2.0], [-np.inf, -np.inf, -np.inf, -np.inf],
                  [1e4, -1e4, 0.0, 3.0], [big, -big, 0.0, 0.5], [0.5, 0.25, -0.5, 1.0]])
    logits = backend.asarray(z, dtype)
    seen = rounded(backend, z, dtype)
    h = backend.to_numpy(el.entropy(logits))
    expected = np.array([_entropy64(r) for r in seen])
    tol = tolerance(dtype)
    np.testing.assert_allclose(h, expected, rtol=tol["rtol"], atol=tol["atol"])
    assert np.all(h >= 0) and np.all(h <= math.log(4) * (1 + tol["rtol"]))
    p = backend.to_numpy(el.softmax(logits))
    np.testing.assert_allclose(p[[0, 2, 3, 4]].sum(axis=1), 1.0, rtol=tol["rtol"] * 4)
    assert np.all(p[1] == 0) and np.all(p[np.isneginf(seen)] == 0)
    log_p = backend.to_numpy(el.log_softmax(logits))
    assert not np.any(np.isnan(log_p)) and np.all(log_p <= 0)
    assert np.all(np.isneginf(log_p[np.isneginf(seen)]))
    if backend.library not in ("torch", "jax"):
        return
    if backend.library == "torch":
        t = logits.detach().clone().requires_grad_(True)
        el.entropy(t).sum().backward()
        g = backend.to_numpy(t.grad)
    else:
        import jax

        g = backend.to_numpy(jax.grad(lambda a: el.entropy(a).sum())(logits))
    g = np.delete(g, 1, axis=0)  # the fully masked row: test_gradient_of_a_fully_masked_row
    seen = np.delete(seen, 1, axis=0)
    assert np.all(np.isfinite(g)) and np.all(g[np.isneginf(seen)] == 0)
    # central differences of each row's entropy, at its finite, moderate logits
    fd = np.stack([central_differences(_entropy64, row, step=1e-5,
                                       where=np.isfinite(row) & (np.abs(row) < 1e5))
                   for row in seen])
    np.testing.assert_allclose(g, fd, rtol=tol["rtol"], atol=max(tol["atol"], 1e-6))


@pytest.mark.parametrize("backend", backend_params(["torch", "jax"]))
def test_gradient_of_a_fully_masked_row(backend):
    """entropy, log_softmax and softmax of a row whose logits are all -inf (entropy 0, no
    probability anywhere): their gradients through the framework's own autograd (torch,
    JAX; the other libraries have none) are 0 for that row, and do not depend on what ran
    before in the process."""
    if backend.library == "torch":
        import torch

        el.cross_entropy(torch.zeros(2, 3), torch.tensor([0, 1]))  # the state after training steps
    z = np.array([[0.0, 1.0, 2.0], [-np.inf, -np.inf, -np.inf], [0.5, -np.inf, 0.0]])
    weights = np.array([1.0, 2.0, 3.0])
    for name in ("entropy", "log_softmax", "softmax"):
        fn = getattr(el, name)

        def objective(a, xp, fn=fn, name=name):  # this iteration's loss, bound explicitly
            out = fn(a)
            if name == "log_softmax":  # weigh the finite entries only
                out = xp.where(xp.isinf(out), 0.0, out)
            return xp.sum(out * (1.0 if name == "entropy" else backend.asarray(weights)))

        logits = backend.asarray(z)
        if backend.library == "torch":
            t = logits.clone().requires_grad_(True)
            objective(t, backend.xp).backward()
            g = backend.to_numpy(t.grad)
        else:
            import jax

            g = backend.to_numpy(jax.grad(lambda a: objective(a, backend.xp))(logits))
        assert np.all(np.isfinite(g)), (name, g)
        assert np.all(g[1] == 0) and g[2, 1] == 0, (name, g)


def test_ignored_fully_masked_position_warns_nothing(backend):
    """An ignored position contributes 0 whatever its logits, also when they are all -inf
    and class 0's weight (or ce_weight) is 0: no value, gradient, or NumPy warning of it
    (the suite turns RuntimeWarning into an error)."""
    z = np.array([[-np.inf, -np.inf, -np.inf], [0.0, 1.0, 2.0]])
    y = np.array([-100, 1])
    cases = [(el.cross_entropy, {"weight": backend.asarray(np.array([0.0, 1.0, 1.0]))}),
             (el.min_ent, {"ce_weight": 0.0}),
             (el.mix_ent, {"ce_weight": 0.0, "label_smoothing": 0.1})]  # the dense w q path
    for fn, options in cases:
        value, grads = el.value_and_grad(fn, backend.asarray(z), backend.asarray(y),
                                         ignore_index=-100, reduction="none", **options)
        value, g = backend.to_numpy(value), backend.to_numpy(grads["logits"])
        assert value[0] == 0 and np.isfinite(value[1]) and np.all(g[0] == 0), (value, g)


@pytest.mark.parametrize("loss", LOSSES)
def test_classes_masked_with_the_most_negative_float(backend, loss):
    """``masked_fill(mask, finfo.min)`` is the common way to mask: the same values and
    gradients as a -inf mask, also where a coefficient above 1 multiplies log p (found by
    review: MIN-ENT's gradient overflowed to 0 * inf = NaN on the generic path)."""
    options = {"reduction": "sum"}
    if loss == "min_ent":
        options["entropy_weight"] = 2.0
    if loss == "mix_ent":
        options["reverse_weight"] = 2.0
    y = backend.asarray(np.array([0, 2]))
    results = []
    for mask in (np.finfo(np.float32).min, -np.inf):
        z = np.array([[2.0, mask, 0.5], [0.1, mask, -0.3]], dtype=np.float32)
        value, grads = el.value_and_grad(getattr(el, loss), backend.asarray(z, "float32"), y,
                                         **options)
        results.append((backend.to_numpy(value), backend.to_numpy(grads["logits"])))
    (value, g), (value_inf, g_inf) = results
    assert np.isfinite(value) and np.all(np.isfinite(g)) and np.all(g[:, 1] == 0), (value, g)
    np.testing.assert_allclose(value, value_inf, rtol=1e-6)
    np.testing.assert_allclose(g, g_inf, rtol=1e-6, atol=1e-7)


def test_a_masked_target_class_with_zero_weight_counts_nothing(backend):
    """A class-index target on a masked class whose class weight is 0: the position
    contributes 0 (w_y q_y = 0, as on the dense path), not 0 * inf = NaN; nor does it
    move the gradient. (torch's nll_loss gives NaN there.)"""
    z = backend.asarray(np.array([[-np.inf, 1.0, 0.0], [0.5, 0.0, -1.0]]))
    y = backend.asarray(np.array([0, 1]))
    w = backend.asarray(np.array([0.0, 1.0, 2.0]))
    for loss in LOSSES:
        value, grads = el.value_and_grad(getattr(el, loss), z, y, weight=w, reduction="none")
        value, g = backend.to_numpy(value), backend.to_numpy(grads["logits"])
        assert value[0] == 0 and np.all(g[0] == 0) and np.isfinite(value[1]), (loss, value, g)
