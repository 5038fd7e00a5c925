"""``chunk_size``: the same losses and gradients, computed a few rows at a time.

The chunked path keeps no ``log p`` for the backward and recomputes it per chunk, so it is
a second code path through the same math: it is checked against the float64 reference,
and its gradients (hand-derived and through each framework's autograd) against the
unchunked ones. Its memory is measured in ``benchmarks/`` (docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from entroloss.tools import reference
from tests.helpers.assertions import assert_close
from tests.helpers.cases import GRID_ARGS, GRID_IDS, draw, on_backend, rounded, scalar_names
from tests.helpers.platforms import backend_dtype_params, backend_params

# 1: every position is its own chunk; 2: chunks that do not divide the rows (3-6 of them,
# or 12 for the K-dim cases)
CHUNKS = [1, 2]


def _with_array_scalars(case, backend, options, dtype="float64"):
    out = dict(options)
    for name in scalar_names(case.loss):
        out[name] = backend.asarray(np.asarray(case.options.get(name, 1.7 if name.endswith("base") else 0.6)),
                                    dtype)
    return out


@pytest.mark.parametrize("chunk_size", CHUNKS)
@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_chunked_value_matches_reference_and_gradient_the_unchunked(backend, args, chunk_size):
    case = draw(*args)
    fn = getattr(el, case.loss)
    logits, target, options = on_backend(case, backend)
    assert_close(fn(logits, target, chunk_size=chunk_size, **options), case.expected(), backend,
                 "float64")

    options = _with_array_scalars(case, backend, options)
    value, grads = el.value_and_grad(fn, logits, target, chunk_size=chunk_size, **options)
    whole_value, whole = el.value_and_grad(fn, logits, target, **options)
    assert_close(value, backend.to_numpy(whole_value), backend, "float64")
    assert set(grads) == set(whole)
    for name in whole:
        assert_close(grads[name], backend.to_numpy(whole[name]), backend, "float64")


@pytest.mark.parametrize("loss", ["cross_entropy", "min_ent", "mix_ent", "focal"])
@pytest.mark.parametrize("backend, dtype", backend_dtype_params(["float32", "float16", "bfloat16"]))
def test_chunked_in_lower_precision(backend, loss, dtype):
    """Half precisions are computed in float32 chunk by chunk, and returned in their dtype."""
    case = draw(loss, "ignore", "mean", "chunks")
    fn = getattr(el, loss)
    logits, target, options = on_backend(case, backend, dtype)
    expected = rounded(case, dtype, backend).expected()
    value, grads = el.value_and_grad(fn, logits, target, chunk_size=2, **options)
    assert_close(value, expected, backend, dtype)
    _, whole = el.value_and_grad(fn, logits, target, **options)
    assert grads["logits"].dtype == logits.dtype
    assert_close(grads["logits"], backend.to_numpy(whole["logits"]), backend, dtype)


@pytest.mark.parametrize("args", [a for a in GRID_ARGS if a[2] != "none"],
                         ids=[i for i, a in zip(GRID_IDS, GRID_ARGS, strict=True) if a[2] != "none"])
@pytest.mark.parametrize("backend", backend_params(["torch", "jax"]))
def test_chunked_autograd_equals_value_and_grad(backend, args):
    """torch autograd and jax.grad (under jit) through the chunked forward and backward
    (the libraries with an autograd; elsewhere value_and_grad is the gradient, tested
    above)."""
    case = draw(*args)
    fn = getattr(el, case.loss)
    logits, target, options = on_backend(case, backend)
    options = _with_array_scalars(case, backend, options)
    names = list(scalar_names(case.loss))
    _, expected = el.value_and_grad(fn, logits, target, **options)
    if backend.library == "torch":
        z = logits.clone().requires_grad_(True)
        scalars = {n: options.pop(n).clone().requires_grad_(True) for n in names}
        fn(z, target, chunk_size=2, **options, **scalars).backward()
        got = {"logits": z.grad, **{n: t.grad for n, t in scalars.items()}}
    else:
        import jax

        scalars = {n: options.pop(n) for n in names}
        grad = jax.jit(jax.grad(lambda z, s: fn(z, target, chunk_size=2, **options, **s),
                                argnums=(0, 1)))
        g_z, g_s = grad(logits, scalars)
        got = {"logits": g_z, **g_s}
    for name in expected:
        assert_close(got[name], backend.to_numpy(expected[name]), backend, "float64")


def test_chunk_larger_than_the_batch_is_the_unchunked_path(backend):
    rng = np.random.default_rng(5)
    z, y = backend.asarray(rng.normal(size=(4, 6))), backend.asarray(rng.integers(0, 6, size=4))
    for chunk_size in (4, 100):
        value, grads = el.value_and_grad(el.min_ent, z, y, chunk_size=chunk_size)
        whole_value, whole = el.value_and_grad(el.min_ent, z, y)
        assert_close(value, backend.to_numpy(whole_value), backend, "float64", scale=0)
        assert_close(grads["logits"], backend.to_numpy(whole["logits"]), backend, "float64", scale=0)


def test_chunked_empty_and_all_ignored(backend):
    """The reductions of nothing are those of the unchunked path: NaN mean, 0 sum."""
    z = backend.asarray(np.zeros((5, 3)))
    y = backend.asarray(np.full(5, -100))
    assert np.isnan(float(el.cross_entropy(z, y, ignore_index=-100, chunk_size=2)))
    assert float(el.cross_entropy(z, y, ignore_index=-100, reduction="sum", chunk_size=2)) == 0
    _, grads = el.value_and_grad(el.mix_ent, z, y, ignore_index=-100, chunk_size=2)
    assert np.all(backend.to_numpy(grads["logits"]) == 0)


@pytest.mark.parametrize("shape", [(2, 1), (5, 3, 2), (2, 7)])
def test_chunked_with_the_class_axis_first(backend, shape):
    """Class axis 0 and as many or fewer classes than positions (found by the fuzz: the
    backward once mistook the unchunked layout for a chunked one)."""
    rng = np.random.default_rng(11)
    z = rng.normal(size=shape)
    y = rng.integers(0, shape[0], size=shape[1:])
    for chunk_size in (1, 2):
        value, grads = el.value_and_grad(el.min_ent, backend.asarray(z), backend.asarray(y),
                                         axis=0, chunk_size=chunk_size)
        expected = reference.loss("min_ent", np.moveaxis(z, 0, -1), y)
        assert_close(value, expected, backend, "float64")
        _, whole = el.value_and_grad(el.min_ent, backend.asarray(z), backend.asarray(y), axis=0)
        assert_close(grads["logits"], backend.to_numpy(whole["logits"]), backend, "float64")
