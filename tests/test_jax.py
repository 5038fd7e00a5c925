"""JAX: jax.grad through the custom_vjp equals value_and_grad; jit, vmap, x64 off, int32
labels, gradients for weights and bases, agreement with optax."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import entroloss as el
from tests.helpers.cases import GRID_ARGS, GRID_IDS, LOSSES, draw, on_backend, scalar_names
from tests.helpers.platforms import needs

jax = pytest.importorskip("jax")
jnp = jax.numpy


@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_jax_grad_equals_value_and_grad(jax_backend, args):
    case = draw(*args)
    fn = getattr(el, case.loss)
    logits, target, options = on_backend(case, jax_backend)
    scalars = {n: jax_backend.asarray(options.pop(n, 1.7 if n.endswith("base") else 0.6))
               for n in scalar_names(case.loss)}
    value, grads = el.value_and_grad(fn, logits, target, **options, **scalars)

    def total(z, scalars):
        return jnp.sum(fn(z, target, **options, **scalars))

    got_value, (got_z, got_scalars) = jax.value_and_grad(total, argnums=(0, 1))(logits, scalars)
    np.testing.assert_allclose(got_value, jnp.sum(value), rtol=1e-12)
    np.testing.assert_allclose(got_z, grads["logits"], rtol=1e-10, atol=1e-12)
    for name in scalars:
        np.testing.assert_allclose(got_scalars[name], grads[name], rtol=1e-10, atol=1e-12)
    jitted = jax.jit(jax.grad(total))(logits, scalars)
    np.testing.assert_allclose(jitted, grads["logits"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("loss", LOSSES)
def test_vmap_over_a_batch_of_problems(jax_backend, loss):
    fn = getattr(el, loss)
    rng = np.random.default_rng(5)
    z = jax_backend.asarray(rng.normal(size=(3, 6, 4)))
    y = jax_backend.asarray(rng.integers(0, 4, size=(3, 6)))
    batched = jax.vmap(lambda z, y: fn(z, y))(z, y)
    one_by_one = jnp.stack([fn(z[i], y[i]) for i in range(3)])
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-12)
    grads = jax.vmap(jax.grad(lambda z, y: fn(z, y)))(z, y)
    np.testing.assert_allclose(grads[1], jax.grad(lambda z: fn(z, y[1]))(z[1]), rtol=1e-12)


@needs("optax")
def test_equals_optax_integer_label_cross_entropy(jax_backend):
    import optax

    rng = np.random.default_rng(9)
    z = jax_backend.asarray(rng.normal(scale=3, size=(32, 11)))
    y = jax_backend.asarray(rng.integers(0, 11, size=32))
    expected = optax.softmax_cross_entropy_with_integer_labels(z, y)
    np.testing.assert_allclose(el.cross_entropy(z, y, reduction="none"), expected, rtol=1e-12)
    soft = jax.nn.softmax(jax_backend.asarray(rng.normal(size=(32, 11))))
    np.testing.assert_allclose(el.cross_entropy(z, soft, reduction="none"),
                               optax.softmax_cross_entropy(z, soft), rtol=1e-12)


def test_data_checks_are_skipped_under_jit(jax_backend):
    z = jax_backend.asarray(np.zeros((2, 3)))
    y = jax_backend.asarray(np.array([0, 5]))
    with pytest.raises(ValueError, match="class index 5"):
        el.cross_entropy(z, y)  # eager: checked
    # traced: the values cannot be read; the documented result is NaN for that position
    for options in ({}, {"label_smoothing": 0.1}, {"weight": jax_backend.asarray(np.ones(3))}):
        # options bound as a default: explicit that each jit traces this iteration's options
        out = jax.jit(lambda z, y, o=options: el.cross_entropy(z, y, reduction="none", **o))(z, y)
        assert np.isfinite(out[0]) and np.isnan(out[1])
        assert np.isnan(jax.jit(lambda z, y, o=options: el.min_ent(z, y, **o))(z, y))
        grad = jax.jit(jax.grad(lambda z, o=options: el.mix_ent(z, y, reduction="sum", **o)))(z)
        assert np.all(np.isfinite(grad[0])) and np.all(np.isnan(grad[1]))
    with pytest.raises(ValueError, match="target"):  # shape checks still run under jit
        jax.jit(el.cross_entropy)(z, jax_backend.asarray(np.array([0, 1, 2])))


X64_OFF = """
import jax, jax.numpy as jnp, numpy as np, entroloss as el
from entroloss import _losses
assert not jax.config.jax_enable_x64
z = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), dtype=jnp.float32)
y = jnp.asarray([0, 1, 2, 3, 1], dtype=jnp.int32)
for definition in _losses.LOSSES:
    fn = getattr(el, definition.name)
    v, g = jax.value_and_grad(lambda z: fn(z, y, ignore_index=2))(z)
    ref, grads = el.value_and_grad(fn, z, y, ignore_index=2)
    assert v.dtype == jnp.float32 and g.dtype == jnp.float32, (v.dtype, g.dtype)
    np.testing.assert_allclose(v, ref, rtol=1e-6)
    np.testing.assert_allclose(g, grads["logits"], rtol=1e-5, atol=1e-7)
    b = jnp.asarray(2.0)
    name = (definition.bases or definition.weights)[0]  # a base, else a weight (poly1)
    gb = jax.grad(lambda b: fn(z, y, **{name: b}))(b)
    assert gb.dtype == jnp.float32 and np.isfinite(gb)
zb = z.astype(jnp.bfloat16)
out = jax.jit(el.min_ent)(zb, y)
assert out.dtype == jnp.bfloat16
np.testing.assert_allclose(float(out), float(el.min_ent(zb.astype(jnp.float32), y)), rtol=1e-2)
print("ok")
"""


def test_x64_off_float32_and_int32():
    out = subprocess.run([sys.executable, "-c", X64_OFF], capture_output=True, text=True,
                         env={"JAX_ENABLE_X64": "0", "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
