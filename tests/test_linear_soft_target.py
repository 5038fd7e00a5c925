"""A soft target's gradient through the linear-head losses: torch autograd and ``jax.grad``
(eager, and under ``jax.jit``, where the chunks are one ``lax.scan`` over padded rows) give
the plain loss's soft-target gradient on ``hidden @ classifier.T + bias``, for every loss,
with label smoothing and class weights, reductions "mean", "sum" and "none", several
chunks (``N`` not a multiple of the chunk size); one case against central differences of
the independent float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from entroloss.tools import reference
from tests.helpers.assertions import assert_close

ROWS, FEATURES, CLASSES, CHUNK = 7, 3, 5, 3  # three chunks, the last one short

# (loss, options, reduction); "weight" is filled in with class weights
CASES = [
    ("cross_entropy", {}, "mean"),
    ("cross_entropy", {"label_smoothing": 0.2, "weight": True}, "sum"),
    ("min_ent", {"entropy_weight": 0.4}, "none"),
    ("mix_ent", {"reverse_weight": 0.5, "label_smoothing": 0.1, "eps": 1e-3}, "mean"),
    ("adaptive_ce", {"weight": True}, "none"),
    ("focal", {"gamma": 2.0, "label_smoothing": 0.1, "weight": True}, "sum"),
]
IDS = [f"{loss}-{reduction}-{'-'.join(options) or 'plain'}" for loss, options, reduction in CASES]


def _data(seed: int = 3) -> dict:
    rng = np.random.default_rng(seed)
    return {"hidden": rng.normal(size=(ROWS, FEATURES)),
            "classifier": rng.normal(scale=0.8, size=(CLASSES, FEATURES)),
            "bias": rng.normal(size=CLASSES),
            "target": rng.dirichlet(np.full(CLASSES, 0.7), size=ROWS),
            "weight": rng.uniform(0.5, 2.0, CLASSES),
            "cotangent": rng.uniform(0.5, 1.5, ROWS)}  # per row, for "none"


def _options(backend, data: dict, options: dict, reduction: str, dtype: str) -> dict:
    out = dict(options, reduction=reduction)
    if out.get("weight"):
        out["weight"] = backend.asarray(data["weight"], dtype)
    return out


def _pair(backend, loss: str, data: dict, options: dict, reduction: str, dtype: str):
    """``(linear, plain)``: each ``(hidden, target) -> the number differentiated`` (the
    loss, or for "none" its per-row losses times a cotangent that is not all ones)."""
    xp_loss, linear_loss = getattr(el, loss), getattr(el, f"linear_{loss}")
    opts = _options(backend, data, options, reduction, dtype)
    w = backend.asarray(data["classifier"], dtype)
    b = backend.asarray(data["bias"], dtype)
    g = backend.asarray(data["cotangent"], dtype)

    def reduced(value):
        return (value * g).sum() if reduction == "none" else value

    def linear(h, t):
        return reduced(linear_loss(h, w, t, bias=b, chunk_size=CHUNK, **opts))

    def plain(h, t):
        return reduced(xp_loss(h @ w.T + b, t, **opts))

    return linear, plain


def _torch_grads(fn, backend, data: dict, dtype: str, wrt=("hidden", "target")) -> dict:
    leaves = {n: backend.asarray(data[n], dtype).requires_grad_(n in wrt)
              for n in ("hidden", "target")}
    fn(leaves["hidden"], leaves["target"]).backward()
    return {n: leaves[n].grad for n in wrt}


@pytest.mark.parametrize("loss,options,reduction", CASES, ids=IDS)
def test_torch_soft_target_gradient_is_the_plain_loss_s(torch_backend, loss, options,
                                                          reduction):
    data = _data()
    linear, plain = _pair(torch_backend, loss, data, options, reduction, "float64")
    got = _torch_grads(linear, torch_backend, data, "float64")
    want = _torch_grads(plain, torch_backend, data, "float64")
    for name in ("hidden", "target"):
        assert_close(got[name], torch_backend.to_numpy(want[name]), torch_backend, "float64")


def _jax_grads(fn, backend, data: dict, dtype: str, jit: bool) -> tuple:
    import jax

    grad = jax.grad(fn, argnums=(0, 1))
    return (jax.jit(grad) if jit else grad)(backend.asarray(data["hidden"], dtype),
                                            backend.asarray(data["target"], dtype))


@pytest.mark.parametrize("jit", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("loss,options,reduction", CASES, ids=IDS)
def test_jax_soft_target_gradient_is_the_plain_loss_s(jax_backend, loss, options, reduction,
                                                        jit):
    """Under jit the rows are padded to whole chunks (9 for 7): the padding's gradients
    are dropped, and JAX used to return zeros for the target here."""
    data = _data()
    linear, plain = _pair(jax_backend, loss, data, options, reduction, "float64")
    got = _jax_grads(linear, jax_backend, data, "float64", jit)
    want = _jax_grads(plain, jax_backend, data, "float64", jit=False)
    for g, w in zip(got, want, strict=True):
        assert_close(g, np.asarray(w), jax_backend, "float64")


def test_soft_target_gradient_against_central_differences(torch_backend, jax_backend):
    """MIX-ENT (its reverse term reads the target) with label smoothing and class weights,
    the mean: the linear losses' d/dtarget against central differences of the
    independent reference on the logits (which do not validate the perturbed rows)."""
    data = _data(seed=5)
    options = {"reverse_weight": 0.7, "label_smoothing": 0.15, "eps": 1e-2, "weight": True}
    logits = data["hidden"] @ data["classifier"].T + data["bias"]
    expected = reference.central_differences(
        lambda t: reference.loss("mix_ent", logits, t, reverse_weight=0.7,
                                 label_smoothing=0.15, eps=1e-2, weight=data["weight"]),
        data["target"])
    linear, _ = _pair(torch_backend, "mix_ent", data, options, "mean", "float64")
    from_torch = _torch_grads(linear, torch_backend, data, "float64", wrt=("target",))["target"]
    linear, _ = _pair(jax_backend, "mix_ent", data, options, "mean", "float64")
    from_jax = _jax_grads(linear, jax_backend, data, "float64", jit=True)[1]
    for got, backend in ((from_torch, torch_backend), (from_jax, jax_backend)):
        np.testing.assert_allclose(backend.to_numpy(got), expected, rtol=1e-6, atol=1e-8)


def test_float32_target_gradient_in_the_target_s_dtype(torch_backend, jax_backend):
    """float32 inputs: the target's gradient comes back in float32, the float64 numbers to
    float32's rounding; torch's second backward (retain_graph=True) recomputes it."""
    data = _data(seed=7)
    options = {"entropy_weight": 0.3, "label_smoothing": 0.1}
    _, plain = _pair(torch_backend, "min_ent", data, options, "mean", "float64")
    want = torch_backend.to_numpy(_torch_grads(plain, torch_backend, data, "float64")["target"])
    linear, _ = _pair(torch_backend, "min_ent", data, options, "mean", "float32")
    t = torch_backend.asarray(data["target"], "float32").requires_grad_()
    value = linear(torch_backend.asarray(data["hidden"], "float32"), t)
    value.backward(retain_graph=True)
    first = t.grad.clone()
    t.grad = None
    value.backward()
    for got in (first, t.grad):
        assert_close(got, want, torch_backend, "float32")
    linear, _ = _pair(jax_backend, "min_ent", data, options, "mean", "float32")
    for jit in (False, True):
        assert_close(_jax_grads(linear, jax_backend, data, "float32", jit)[1], want, jax_backend,
                     "float32")
