"""Per-token statistics for RL (issue 22 item 2, issue 26 item 3): log p of the target,
entropy and log-sum-exp equal those of ``log_softmax(logits / t)`` on the full logits,
values and gradients, with a temperature that is a number, per token or per sequence."""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el

torch = pytest.importorskip("torch")
IGNORE = -100


def _inputs(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, dtype=dtype, generator=g).requires_grad_()
    w = torch.randn(11, 8, dtype=dtype, generator=g).requires_grad_()
    b = torch.randn(11, dtype=dtype, generator=g).requires_grad_()
    y = torch.randint(0, 11, (2, 5), generator=g)
    y[0, 1] = IGNORE
    return h, w, b, y


def _reference(z, y, t, softcap=None):
    """The statistics read off the full logits, as PPO/GRPO code computes them."""
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    z = z / t
    logp_all = torch.log_softmax(z, -1)
    logp = logp_all.gather(-1, y.clamp(min=0)[..., None])[..., 0] * (y != IGNORE)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy, torch.logsumexp(z, -1)


def _temperatures():
    t = torch.rand(2, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) + 0.5
    return {"none": None, "number": 0.7, "per token": t, "per sequence": t[:, :1]}


@pytest.mark.parametrize("which", list(_temperatures()))
@pytest.mark.parametrize("bias", [False, True])
def test_linear_and_plain_stats_are_those_of_the_scaled_logits(which, bias):
    h, w, b, y = _inputs()
    b = b if bias else None
    temperature = _temperatures()[which]
    if temperature is not None and not isinstance(temperature, float):
        temperature = temperature.clone().requires_grad_()  # a temperature gets gradients too
    t = 1.0 if temperature is None else (
        temperature if isinstance(temperature, float) else temperature[..., None])
    z = h @ w.T + (0 if b is None else b)
    expected = _reference(z, y, t)
    params = [p for p in (h, w, b, temperature) if isinstance(p, torch.Tensor)]
    want = torch.autograd.grad(sum(s.sum() for s in expected), params, retain_graph=True)
    linear = el.linear_token_stats(h, w, y, bias=b, temperature=temperature, logsumexp=True,
                                   ignore_index=IGNORE, chunk_size=3)
    plain = el.token_stats(z, y, temperature=temperature, logsumexp=True, ignore_index=IGNORE)
    for stats in (linear, plain):
        for got, ref in zip(stats, expected, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
        got = torch.autograd.grad(sum(s.sum() for s in stats), params, retain_graph=True)
        for g, r in zip(got, want, strict=True):
            torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_softcap_comes_before_the_temperature():
    h, w, b, y = _inputs()
    z = h @ w.T + b
    expected = _reference(z, y, 0.5, softcap=3.0)
    for stats in (el.linear_token_stats(h, w, y, bias=b, temperature=0.5, softcap=3.0,
                                        logsumexp=True, ignore_index=IGNORE),
                  el.token_stats(z, y, temperature=0.5, softcap=3.0, logsumexp=True,
                                 ignore_index=IGNORE)):
        for got, ref in zip(stats, expected, strict=True):
            torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


def test_entropy_as_a_metric_keeps_no_graph():
    h, w, b, y = _inputs(torch.float32)
    y = y.clamp(min=0)
    for stats in (el.linear_token_stats(h, w, y, bias=b, temperature=0.8, entropy_grad=False),
                  el.token_stats(h @ w.T, y, temperature=0.8, entropy_grad=False)):
        assert stats.entropy.grad_fn is None and not stats.entropy.requires_grad
        assert stats.logprob.requires_grad and stats.logsumexp is None
    assert el.token_stats(h @ w.T, y, entropy=False).entropy is None


def test_bfloat16_is_scaled_in_float32():
    h, w, _, y = _inputs(torch.float32)
    t = torch.full((2, 5), 0.3)
    ref = _reference(h.bfloat16().float() @ w.bfloat16().float().T, y, t[..., None])
    stats = el.linear_token_stats(h.bfloat16(), w.bfloat16(), y.clamp(min=0), temperature=t)
    assert stats.logprob.dtype == torch.bfloat16
    torch.testing.assert_close(stats.entropy.float(), ref[1], rtol=1e-2, atol=1e-2)


def test_jax_matches_jax_nn_log_softmax_under_jit_and_grad():
    jax = pytest.importorskip("jax")
    jnp = jax.numpy
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    h = jax.random.normal(k1, (6, 8))
    w = jax.random.normal(k2, (13, 8))
    y = jnp.arange(6) % 13
    t = jnp.linspace(0.5, 1.5, 6)

    def ours(h, w, t):
        s = el.linear_token_stats(h, w, y, temperature=t, logsumexp=True, chunk_size=4)
        return s.logprob.sum() + s.entropy.sum() + s.logsumexp.sum(), s

    def theirs(h, w, t):
        z = (h @ w.T) / t[:, None]
        logp = jax.nn.log_softmax(z)
        ent = -(jnp.exp(logp) * logp).sum(-1)
        lp = jnp.take_along_axis(logp, y[:, None], -1)[:, 0]
        return lp.sum() + ent.sum() + jax.nn.logsumexp(z, -1).sum()

    (value, stats), grads = jax.jit(jax.value_and_grad(ours, argnums=(0, 1, 2), has_aux=True))(h, w, t)
    want_value, want_grads = jax.value_and_grad(theirs, argnums=(0, 1, 2))(h, w, t)
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for g, r in zip(grads, want_grads, strict=True):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5)
    plain = el.token_stats(h @ w.T, y, temperature=t)
    np.testing.assert_allclose(plain.logprob, stats.logprob, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature, error, match", [
    (0.0, ValueError, "temperature must be finite and > 0"),
    (-1.0, ValueError, "temperature must be finite and > 0"),
    (True, TypeError, "temperature must be a number"),
    ("hot", TypeError, "temperature must be an array"),
    (torch.ones(3), ValueError, "temperature must be a number or an array broadcastable"),
    (torch.ones(2, 5, dtype=torch.int64), TypeError, "temperature must have a real floating"),
    (torch.tensor([[1.0], [0.0]]), ValueError, "temperature must be > 0 at every position"),
])
def test_bad_temperature_is_refused_before_any_work(temperature, error, match):
    h, w, _, y = _inputs(torch.float32)
    with pytest.raises(error, match=match):
        el.linear_token_stats(h, w, y, temperature=temperature)
    with pytest.raises(error, match=match):
        el.token_stats(h @ w.T, y, temperature=temperature)


def test_other_bad_input_names_its_argument():
    h, w, b, y = _inputs(torch.float32)
    with pytest.raises(ValueError, match="softcap with a temperature array"):
        el.linear_token_stats(h, w, y, temperature=torch.ones(2, 5), softcap=5.0)
    with pytest.raises(TypeError, match="target must hold class indices"):
        el.token_stats(h @ w.T, torch.zeros(2, 5, 11))
    with pytest.raises(ValueError, match="target must have shape"):
        el.linear_token_stats(h, w, y[:, :3])
    with pytest.raises(ValueError, match=r"classifier must have shape \(C, 8\)"):
        el.linear_token_stats(h, w[:, :4], y)
    with pytest.raises(ValueError, match=r"bias must have shape \(11,\)"):
        el.linear_token_stats(h, w, y, bias=b[:4], temperature=torch.ones(2, 5))
    with pytest.raises(TypeError, match="entropy_grad must be True or False"):
        el.token_stats(h @ w.T, y, entropy_grad="no")


def test_docstring_example():
    import doctest

    from entroloss import _token_stats

    result = doctest.testmod(_token_stats, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0 and result.attempted >= 1
