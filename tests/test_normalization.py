"""Normalization by contract (issue 26): a global ``denominator=``, per-position
``sample_weight=``, per-row cotangents under ``reduction="none"``, and low precision that
does not depend on the number of chunks.

What the peers' users reported (docs: PEERS.md) and what each test makes impossible:
- gradient accumulation and DDP normalised per micro-batch or per rank (Liger #802, TRL
  #5890, Megatron #737): k micro-batches (or 2 ranks) given the step's denominator add up
  to one call on the whole batch, value and gradients, to 1e-12 in float64;
- ``reduction="none"`` backward reading one cotangent for every row (Liger PR #1298): a
  random cotangent per row against finite differences of the float64 reference;
- bf16 accumulated across chunks (Liger #512, axolotl #1601): the same error for 1, 4 and 64
  chunks, within bf16 rounding of a float64 torch computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss.tools import reference
from entroloss.tools.reference import central_differences
from tests.helpers.distributed import WORLD, needs_gloo
from tests.helpers.distributed import ddp_results as shared_ddp_results
from tests.helpers.platforms import backend_params

LOSSES = el.LOSS_NAMES
ROWS, CLASSES, FEATURES = 12, 5, 4
MICRO = (slice(0, 4), slice(4, 8), slice(8, 12))  # 3 micro-batches of 4 rows
IGNORE = -100


def _batch():
    """Logits, hidden states and head, targets whose micro-batches have 0, 2 and 4 of
    their 4 positions ignored (the last one counts nothing at all), class weights and
    sample weights (one exact zero); float64."""
    rng = np.random.default_rng(26)
    logits = rng.normal(scale=2.0, size=(ROWS, CLASSES))
    hidden = rng.normal(size=(ROWS, FEATURES))
    classifier = rng.normal(scale=0.8, size=(CLASSES, FEATURES))
    bias = rng.normal(size=CLASSES)
    y = rng.integers(0, CLASSES, size=ROWS)
    y[[5, 6, 8, 9, 10, 11]] = IGNORE
    weight = rng.uniform(0.3, 2.0, size=CLASSES)
    sample_weight = rng.uniform(0.2, 2.0, size=ROWS)
    sample_weight[2] = 0.0
    return logits, hidden, classifier, bias, y, weight, sample_weight


OPTIONS = {"ignore_index": IGNORE, "label_smoothing": 0.1, "z_loss": 0.01}


def _hand_denominator(y, weight, sample_weight):
    """The whole batch's divisor by hand: sum of sample_weight * w_y over counted rows."""
    counted = y != IGNORE
    return float(np.sum(sample_weight[counted] * weight[y[counted]]))


def test_denominator_helper_counts_what_mean_divides_by():
    _, _, _, _, y, weight, sample_weight = _batch()
    assert float(el.denominator(y, ignore_index=IGNORE)) == 6.0
    got = el.denominator(y, weight=weight, ignore_index=IGNORE, sample_weight=sample_weight)
    assert math.isclose(float(got), _hand_denominator(y, weight, sample_weight), rel_tol=1e-15)
    soft = np.full((3, 2, 4), 0.25)  # classes on axis 2: 6 positions
    assert float(el.denominator(soft, axis=2)) == 6.0
    assert float(el.denominator(soft, axis=2, sample_weight=np.full((3, 2), 0.5))) == 3.0
    # what a mean divides by, read back from the losses: the sum over the mean
    z = _batch()[0]
    total = el.cross_entropy(z, y, reduction="sum", ignore_index=IGNORE, weight=weight,
                             sample_weight=sample_weight)
    mean = el.cross_entropy(z, y, ignore_index=IGNORE, weight=weight, sample_weight=sample_weight)
    assert math.isclose(float(total / mean), float(got), rel_tol=1e-13)


def _micro_denominator(backend, y, weight, sample_weight):
    """The step's divisor as a user forms it: each micro-batch's local one, added up
    (a Python float on NumPy, a 0-d array elsewhere: both forms are exercised)."""
    total = sum(el.denominator(backend.asarray(y[m], "int64"), ignore_index=IGNORE,
                               weight=backend.asarray(weight),
                               sample_weight=backend.asarray(sample_weight[m])) for m in MICRO)
    return float(total) if backend.library == "numpy" else total


def _plain_pieces(backend, fn, logits, y, weight, sample_weight, options):
    """(value, dl/dlogits) of ``fn`` summed over the micro-batches, each given ``options``
    with its own rows' target and sample weights, through the backend's autograd."""
    w = backend.asarray(weight)
    t = [backend.asarray(y[m], "int64") for m in MICRO]
    sw = [backend.asarray(sample_weight[m]) for m in MICRO]
    z = backend.asarray(logits)
    if backend.library == "numpy":
        parts = [el.value_and_grad(fn, z[m], t[k], weight=w, sample_weight=sw[k], **options)
                 for k, m in enumerate(MICRO)]
        return sum(float(v) for v, _ in parts), np.concatenate([g["logits"] for _, g in parts])
    if backend.library == "torch":
        leaf = z.clone().requires_grad_()
        value = sum(fn(leaf[m], t[k], weight=w, sample_weight=sw[k], **options)
                    for k, m in enumerate(MICRO))
        value.backward()
        return float(value.detach()), leaf.grad.numpy()
    import jax

    def total(z):
        return sum(fn(z[m], t[k], weight=w, sample_weight=sw[k], **options)
                   for k, m in enumerate(MICRO))

    value, grad = jax.value_and_grad(total)(z)
    return float(value), np.asarray(grad)


LIBRARIES = backend_params(["numpy", "torch", "jax"])
LIBRARIES = [p for p in LIBRARIES if p.id in ("numpy", "torch-cpu", "jax-cpu")]


@pytest.mark.parametrize("backend", LIBRARIES)
@pytest.mark.parametrize("loss", LOSSES)
def test_micro_batches_with_the_steps_denominator_are_the_whole_batch(backend, loss):
    """The micro-batches' losses, each given the step's divisor, add up to the whole
    batch's mean (the float64 reference), and their gradients to its gradient; a
    micro-batch with every position ignored contributes 0, not NaN."""
    logits, _, _, _, y, weight, sample_weight = _batch()
    fn = getattr(el, loss)
    denominator = _micro_denominator(backend, y, weight, sample_weight)
    value, grad = _plain_pieces(backend, fn, logits, y, weight, sample_weight,
                                {**OPTIONS, "denominator": denominator})
    expected = reference.loss(loss, logits, y, weight=weight, sample_weight=sample_weight,
                              **OPTIONS)
    assert math.isclose(value, float(expected), rel_tol=1e-12)
    _, whole = el.value_and_grad(fn, logits, y, weight=weight, sample_weight=sample_weight,
                                 **OPTIONS)
    np.testing.assert_allclose(grad, whole["logits"], rtol=1e-12, atol=1e-15)
    # the reference's finite differences agree with the whole batch's gradient
    np.testing.assert_allclose(whole["logits"], reference.gradient(
        loss, logits, y, weight=weight, sample_weight=sample_weight, **OPTIONS),
        rtol=1e-6, atol=1e-8)


def _linear_pieces(backend, fn, hidden, classifier, bias, y, weight, sample_weight, options):
    """(value, {hidden, classifier, bias} gradients) summed over the micro-batches."""
    w = backend.asarray(weight)
    t = [backend.asarray(y[m], "int64") for m in MICRO]
    sw = [backend.asarray(sample_weight[m]) for m in MICRO]
    h, W, b = (backend.asarray(a) for a in (hidden, classifier, bias))
    kw = lambda k: dict(bias=b, weight=w, sample_weight=sw[k], chunk_size=3, **options)
    if backend.library == "numpy":
        parts = [el.linear_value_and_grad(fn, h[m], W, t[k], **kw(k)) for k, m in enumerate(MICRO)]
        grads = {"hidden": np.concatenate([g["hidden"] for _, g in parts]),
                 "classifier": sum(g["classifier"] for _, g in parts),
                 "bias": sum(g["bias"] for _, g in parts)}
        return sum(float(v) for v, _ in parts), grads
    if backend.library == "torch":
        leaves = [a.clone().requires_grad_() for a in (h, W, b)]
        value = sum(fn(leaves[0][m], leaves[1], t[k], **{**kw(k), "bias": leaves[2]})
                    for k, m in enumerate(MICRO))
        value.backward()
        return float(value.detach()), dict(zip(("hidden", "classifier", "bias"),
                                      (a.grad.numpy() for a in leaves), strict=True))
    import jax

    def total(h, W, b):
        return sum(fn(h[m], W, t[k], **{**kw(k), "bias": b}) for k, m in enumerate(MICRO))

    value, grads = jax.value_and_grad(total, argnums=(0, 1, 2))(h, W, b)
    return float(value), dict(zip(("hidden", "classifier", "bias"), map(np.asarray, grads), strict=True))


@pytest.mark.parametrize("backend", LIBRARIES)
@pytest.mark.parametrize("loss", LOSSES)
def test_linear_micro_batches_with_the_steps_denominator_are_the_whole_batch(backend, loss):
    """The same for the linear heads: the hidden states', classifier's and bias's gradients
    are those of one call on the whole batch, which is the reference on its logits."""
    _, hidden, classifier, bias, y, weight, sample_weight = _batch()
    fn = getattr(el, f"linear_{loss}")
    denominator = _micro_denominator(backend, y, weight, sample_weight)
    value, grads = _linear_pieces(backend, fn, hidden, classifier, bias, y, weight,
                                  sample_weight, {**OPTIONS, "denominator": denominator})
    logits = hidden @ classifier.T + bias
    expected = reference.loss(loss, logits, y, weight=weight, sample_weight=sample_weight,
                              **OPTIONS)
    assert math.isclose(value, float(expected), rel_tol=1e-12)
    _, whole = el.linear_value_and_grad(fn, hidden, classifier, y, bias=bias, weight=weight,
                                        sample_weight=sample_weight, **OPTIONS)
    for name in whole:
        np.testing.assert_allclose(grads[name], whole[name], rtol=1e-12, atol=1e-15,
                                   err_msg=name)


# --- DDP: two gloo ranks, each given the all-reduced denominator -------------------------------


def ddp_job(rank):
    """One rank of ``tests.helpers.distributed.DDP_JOBS``: for every loss, plain (an
    ``nn.Linear`` then the loss) and linear-head, the recipe of docs/normalization.md:
    ``D`` all-reduced once, the rank's loss with ``denominator=D`` times the world size
    (DDP averages the gradients over the ranks)."""
    import torch
    import torch.distributed as dist

    _, hidden, classifier, bias, y, weight, sample_weight = _batch()
    part = slice(rank * ROWS // WORLD, (rank + 1) * ROWS // WORLD)  # rank 1: 5 of 6 ignored
    h, t, sw = (torch.tensor(a[part]) for a in (hidden, y, sample_weight))
    w = torch.tensor(weight)
    denominator = el.denominator(t, weight=w, ignore_index=IGNORE, sample_weight=sw)
    dist.all_reduce(denominator)  # the step's D, on every rank
    results = {}
    options = dict(weight=w, sample_weight=sw, denominator=denominator, **OPTIONS)
    for loss in LOSSES:
        for head in ("plain", "linear"):
            model = torch.nn.parallel.DistributedDataParallel(_ddp_model(torch, loss, head))
            local = model(h, t, **options)
            (local * WORLD).backward()
            value = local.detach().clone()
            dist.all_reduce(value)  # the step's loss, as logged
            results[f"{loss}|{head}"] = {"value": float(value),
                                         "grads": [p.grad.numpy().tolist()
                                                   for p in model.parameters()]}
    return results


def _ddp_model(torch, loss, head):
    """What DDP wraps: an ``nn.Linear`` (the batch's classifier and bias) whose forward is
    the loss on the rank's hidden states, plain (on its logits) or linear-head."""
    _, _, classifier, bias, *_ = _batch()

    class Head(torch.nn.Linear):
        def forward(self, h, t, **options):
            if head == "plain":
                return getattr(el, loss)(super().forward(h), t, **options)
            return getattr(el, f"linear_{loss}")(h, self.weight, t, bias=self.bias, **options)

    model = Head(FEATURES, CLASSES, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.tensor(classifier))
        model.bias.copy_(torch.tensor(bias))
    return model


@pytest.fixture(scope="module")
def ddp_results():
    return shared_ddp_results("tests.test_normalization:ddp_job")


@needs_gloo
@pytest.mark.parametrize("head", ["plain", "linear"])
@pytest.mark.parametrize("loss", LOSSES)
def test_ddp_with_the_all_reduced_denominator_is_one_process(ddp_results, loss, head):
    """Every rank's DDP-averaged gradients are one process's on the whole batch, and the
    all-reduced loss is the whole batch's (the float64 reference)."""
    _, hidden, classifier, bias, y, weight, sample_weight = _batch()
    logits = hidden @ classifier.T + bias
    _, grads = el.value_and_grad(getattr(el, loss), logits, y, weight=weight,
                                 sample_weight=sample_weight, **OPTIONS)
    dz = grads["logits"]
    expected = reference.loss(loss, logits, y, weight=weight, sample_weight=sample_weight,
                              **OPTIONS)
    for rank in range(WORLD):
        got = ddp_results[rank][f"{loss}|{head}"]
        assert math.isclose(got["value"], float(expected), rel_tol=1e-12)
        d_w, d_b = (np.asarray(g) for g in got["grads"])
        np.testing.assert_allclose(d_w, dz.T @ hidden, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(d_b, dz.sum(axis=0), rtol=1e-12, atol=1e-15)


# --- reduction="none": each row its own cotangent ------------------------------------------


AUTOGRAD = [p for p in backend_params(["torch", "jax"]) if p.id in ("torch-cpu", "jax-cpu")]


def _vjp(backend, fn, inputs: tuple, cotangent, **options) -> tuple:
    """The gradients of ``sum(cotangent * fn(*inputs))`` for every input but the last (the
    target), through the framework's autograd."""
    *leaves, target = inputs
    if backend.library == "torch":
        leaves = [backend.asarray(a).requires_grad_() for a in leaves]
        out = fn(*leaves, target, **options)
        out.backward(backend.asarray(cotangent))
        return tuple(a.grad.numpy() for a in leaves)
    import jax

    _, pullback = jax.vjp(lambda *a: fn(*a, target, **options), *map(backend.asarray, leaves))
    return tuple(np.asarray(g) for g in pullback(backend.asarray(cotangent)))


@pytest.mark.parametrize("backend", AUTOGRAD)
@pytest.mark.parametrize("loss", ["cross_entropy", "min_ent", "focal"])
def test_reduction_none_gives_each_row_its_own_gradient(backend, loss):
    """A random cotangent per row (negative ones too), plain and linear: the gradients are
    central differences of ``sum(c * l)`` of the float64 reference (Liger PR #1298 read the
    first row's cotangent for every row)."""
    logits, hidden, classifier, bias, y, weight, sample_weight = _batch()
    cotangent = np.random.default_rng(1298).normal(size=ROWS)
    opts = dict(weight=weight, sample_weight=sample_weight, reduction="none", **OPTIONS)

    def weighted(z):
        return float(np.sum(cotangent * reference.loss(loss, z, y, **opts)))

    expected = central_differences(weighted, logits)
    arrays = dict(weight=backend.asarray(weight), sample_weight=backend.asarray(sample_weight),
                  reduction="none", **OPTIONS)
    t = backend.asarray(y, "int64")
    (got,) = _vjp(backend, getattr(el, loss), (logits, t), cotangent, **arrays)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-8)

    z = hidden @ classifier.T + bias
    dz = central_differences(weighted, z)
    got = _vjp(backend, getattr(el, f"linear_{loss}"), (hidden, classifier, t), cotangent,
               bias=backend.asarray(bias), chunk_size=5, **arrays)
    np.testing.assert_allclose(got[0], dz @ classifier, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(got[1], dz.T @ hidden, rtol=1e-6, atol=1e-8)


# --- bfloat16: the same error whatever the number of chunks ----------------------------------

HALF_ROWS, HALF_CLASSES, HALF_FEATURES = 256, 512, 64
BF16_UNIT = 2.0**-8  # bfloat16's unit roundoff (8 bits of significand)


def _bf16_errors(backend, chunks: int) -> dict:
    """Relative errors (max |error| / max |reference|) of the bf16 linear cross entropy's
    value and gradients with ``chunks`` chunks, against torch's float64 cross entropy on
    the same (rounded) inputs through its own autograd."""
    import torch

    rng = np.random.default_rng(512)
    h = torch.tensor(rng.normal(size=(HALF_ROWS, HALF_FEATURES))).bfloat16()
    W = torch.tensor(rng.normal(scale=0.3, size=(HALF_CLASSES, HALF_FEATURES))).bfloat16()
    y = rng.integers(0, HALF_CLASSES, size=HALF_ROWS)
    y[::7] = IGNORE
    leaves = [h.double().requires_grad_(), W.double().requires_grad_()]
    ref = torch.nn.functional.cross_entropy(leaves[0] @ leaves[1].T, torch.tensor(y),
                                            ignore_index=IGNORE)
    ref.backward()
    expected = [ref.detach().numpy(), *(a.grad.numpy() for a in leaves)]
    size = HALF_ROWS // chunks
    if backend.library == "torch":
        got_leaves = [h.clone().requires_grad_(), W.clone().requires_grad_()]
        value = el.linear_cross_entropy(*got_leaves, torch.tensor(y), ignore_index=IGNORE,
                                        chunk_size=size)
        value.backward()
        assert value.dtype == torch.bfloat16 and got_leaves[1].grad.dtype == torch.bfloat16
        got = [value.detach().double().numpy(), *(a.grad.double().numpy() for a in got_leaves)]
    else:
        import jax
        import jax.numpy as jnp

        hj, Wj = (jnp.asarray(a.float().numpy()).astype(jnp.bfloat16) for a in (h, W))
        f = lambda hh, WW: el.linear_cross_entropy(hh, WW, jnp.asarray(y), ignore_index=IGNORE,
                                                   chunk_size=size)
        value, grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1)))(hj, Wj)
        assert value.dtype == jnp.bfloat16 and grads[1].dtype == jnp.bfloat16
        got = [np.asarray(value, np.float64), *(np.asarray(g, np.float64) for g in grads)]
    return {name: float(np.max(np.abs(g - e)) / np.max(np.abs(e)))
            for name, g, e in zip(("value", "hidden", "classifier"), got, expected, strict=True)}


@pytest.mark.parametrize("backend", AUTOGRAD)
def test_bfloat16_error_does_not_grow_with_the_chunks(backend):
    """1, 4 and 64 chunks: the value and every gradient within one bf16 rounding of the
    float64 result (the row statistics and the classifier's gradient are accumulated in
    float32 across chunks, and rounded to bf16 once)."""
    errors = {chunks: _bf16_errors(backend, chunks) for chunks in (1, 4, 64)}
    for chunks, by_name in errors.items():
        for name, error in by_name.items():
            assert error <= BF16_UNIT, (chunks, name, error)


# --- bad input: named, before any work --------------------------------------------------------


@pytest.mark.parametrize("fn", ["cross_entropy", "linear_cross_entropy"])
def test_bad_denominator_and_sample_weight_are_named(fn):
    logits, hidden, classifier, _, y, _, sample_weight = _batch()
    f = getattr(el, fn)
    args = (logits, y) if fn == "cross_entropy" else (hidden, classifier, y)
    for bad in (0, -1.0, math.inf, math.nan, np.asarray(0.0), np.asarray(-2),
                np.asarray(math.nan)):
        with pytest.raises(ValueError, match="denominator must be finite and > 0"):
            f(*args, denominator=bad)
    with pytest.raises(ValueError, match="denominator must be a 0-d array"):
        f(*args, denominator=np.ones(2))
    with pytest.raises(TypeError, match="denominator must be a real number"):
        f(*args, denominator=True)
    for reduction in ("sum", "none"):
        with pytest.raises(ValueError, match="denominator applies to reduction='mean' only"):
            f(*args, reduction=reduction, denominator=3.0)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(12,\)"):
        f(*args, sample_weight=sample_weight[:5])
    with pytest.raises(ValueError, match="sample_weight must be non-negative and finite"):
        f(*args, sample_weight=-sample_weight)
    with pytest.raises(ValueError, match="sample_weight must be non-negative and finite"):
        f(*args, sample_weight=np.where(sample_weight > 1, np.nan, sample_weight))
    with pytest.raises(TypeError, match="sample_weight must have a real floating-point dtype"):
        f(*args, sample_weight=np.ones(ROWS, dtype=np.int64))
    # the data checks follow validate: with validate=False an array is not read, and a
    # divisor that is not > 0 gives NaN (safe_divide's rule, as for an all-ignored batch)
    assert np.isnan(f(*args, sample_weight=sample_weight, denominator=np.asarray(-3.0),
                      ignore_index=IGNORE, validate=False))


def test_torch_constants_that_require_grad_are_refused():
    torch = pytest.importorskip("torch")
    z, y = torch.zeros(3, 2), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="sample_weight requires grad"):
        el.cross_entropy(z, y, sample_weight=torch.ones(3, requires_grad=True))
    with pytest.raises(ValueError, match="denominator requires grad"):
        el.linear_cross_entropy(torch.zeros(3, 4), torch.zeros(2, 4), y,
                                denominator=torch.tensor(2.0, requires_grad=True))
