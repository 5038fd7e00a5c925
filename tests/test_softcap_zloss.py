"""Logit soft-capping (``softcap``, Gemma 2) and the z-loss (``z_loss``, PaLM) on every
loss: values against the float64 reference and gradients against its central
differences on every backend; the linear head against the plain loss on its logits;
chunking; the identities (a huge cap is no cap, ``z_loss=0`` is off, a masked class
stays masked); torch's second order and JAX's jit; PaLM's own definition written with
torch; the bad values.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import entroloss as el
from entroloss.tools import reference
from tests.helpers.assertions import assert_close
from tests.helpers.cases import LOSSES, TARGETS, draw, on_backend
from tests.helpers.platforms import backend_params

CAP, Z = 2.0, 0.3  # a cap that bends the drawn logits (scale 2), a z-loss that shows
SETTINGS = {"softcap": {"softcap": CAP}, "z_loss": {"z_loss": Z},
            "both": {"softcap": CAP, "z_loss": Z}}
REDUCTIONS = ("mean", "sum", "none")
# JAX runs op by op outside jit, compiling each op for each new shape: it gets the
# jit + grad test below (every loss, both options) rather than the whole grid
EXPLICIT = backend_params(["numpy", "array_api_strict", "torch", "cupy"])


def _cases(loss: str, setting: str):
    """Three cases a setting: each reduction, the target kinds rotated across settings so
    that every setting meets three of them (weights and smoothing as ``draw`` has them)."""
    offset = list(SETTINGS).index(setting)
    for j, reduction in enumerate(REDUCTIONS):
        kind = TARGETS[(offset + j) % len(TARGETS)]
        case = draw(loss, kind, reduction, salt="softcap")
        case.options.update(SETTINGS[setting])
        yield case


@functools.cache
def _expected(loss: str, setting: str) -> list:
    """The reference's values and logits gradients (computed once for every backend)."""
    out = []
    for case in _cases(loss, setting):
        grad = reference.gradient(loss, case.logits, case.target, **case.options)
        out.append((case, case.expected(), grad))
    return out


@pytest.mark.parametrize("backend", EXPLICIT)
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("loss", LOSSES)
def test_value_and_gradient_match_the_reference(backend, loss, setting):
    fn = getattr(el, loss)
    for case, value, grad in _expected(loss, setting):
        logits, target, options = on_backend(case, backend)
        assert_close(fn(logits, target, **options), value, backend, "float64")
        got, grads = el.value_and_grad(fn, logits, target, **options)
        assert_close(got, value, backend, "float64")
        # central differences with step 1e-6 are good to ~1e-8 on these O(1) values
        np.testing.assert_allclose(backend.to_numpy(grads["logits"]), grad, rtol=1e-6,
                                   atol=1e-7, err_msg=f"{case.options}")


def _autograd(backend, fn, logits, target, options):
    """The loss and the gradient of its sum through torch autograd or
    jax.jit(jax.value_and_grad)."""
    if backend.library == "torch":
        leaf = logits.detach().requires_grad_()
        value = fn(leaf, target, **options)
        value.sum().backward()
        return value, leaf.grad
    import jax

    def total(z):
        value = fn(z, target, **options)
        return value.sum(), value

    (_, value), grad = jax.jit(jax.value_and_grad(total, has_aux=True))(logits)
    return value, grad


@pytest.mark.parametrize("backend", backend_params(["torch", "jax"]))
@pytest.mark.parametrize("loss", LOSSES)
def test_autograd_and_jit_match_the_reference(backend, loss):
    """Both options on, through the adapters' own autograd (torch's Function, JAX's
    custom_jvp under jit), soft and ignored targets among the cases."""
    fn = getattr(el, loss)
    for case, value, grad in _expected(loss, "both"):
        logits, target, options = on_backend(case, backend)
        got_value, got = _autograd(backend, fn, logits, target, options)
        assert_close(got_value, value, backend, "float64")
        np.testing.assert_allclose(backend.to_numpy(got), grad, rtol=1e-6, atol=1e-7)


# --- the linear head -----------------------------------------------------------------------


def _head_case(loss: str, kind: str):
    rng = np.random.default_rng(len(loss) + len(kind))
    hidden, classifier, bias = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), rng.normal(size=4)
    options = {"softcap": 1.5, "z_loss": 0.2, "weight": rng.uniform(0.3, 2.0, size=4)}
    if kind == "soft":
        target = rng.dirichlet(np.ones(4), size=5)
    else:
        target = rng.integers(0, 4, size=5)
        target[1] = -100
        options.update(ignore_index=-100, label_smoothing=0.1)
    return hidden, classifier, bias, target, options


@pytest.mark.parametrize("kind", ["index", "soft"])
@pytest.mark.parametrize("loss", LOSSES)
def test_linear_head_equals_the_plain_loss_on_its_logits(backend, loss, kind):
    """Both options on, class weights, ignored rows, smoothing; two rows a chunk."""
    hidden, classifier, bias, target, options = _head_case(loss, kind)
    logits = hidden @ classifier.T + bias
    value, plain = el.value_and_grad(getattr(el, loss), logits, target, **options)
    dz = plain["logits"]
    expected = {"hidden": dz @ classifier, "classifier": dz.T @ hidden, "bias": dz.sum(0)}
    fn = getattr(el, f"linear_{loss}")
    on = dict(options, weight=backend.asarray(options["weight"]), bias=backend.asarray(bias),
              chunk_size=2)
    args = (backend.asarray(hidden), backend.asarray(classifier),
            backend.asarray(target, None if kind == "soft" else "int64"))
    got, grads = el.linear_value_and_grad(fn, *args, **on)
    assert_close(got, value, backend, "float64")
    assert_close(fn(*args, **on), value, backend, "float64")
    for name, expect in expected.items():
        assert_close(grads[name], expect, backend, "float64")


def test_linear_entropy_takes_the_cap():
    rng = np.random.default_rng(3)
    hidden, classifier = rng.normal(size=(4, 3)), rng.normal(size=(5, 3))
    capped = el.entropy(hidden @ classifier.T, softcap=0.7)
    np.testing.assert_allclose(el.linear_entropy(hidden, classifier, softcap=0.7), capped,
                               rtol=1e-12)
    p = np.exp(el.log_softmax(0.7 * np.tanh(hidden @ classifier.T / 0.7)))
    np.testing.assert_allclose(capped, -(p * np.log(p)).sum(-1), rtol=1e-12)
    np.testing.assert_allclose(el.softmax(hidden @ classifier.T, softcap=0.7), p, rtol=1e-12)


# --- chunks and identities -----------------------------------------------------------------


@pytest.mark.parametrize("backend", EXPLICIT)
@pytest.mark.parametrize("loss, kind", [("min_ent", "soft"), ("focal", "ignore"),
                                        ("mix_ent", "kdim")])
def test_chunk_size_changes_nothing(backend, loss, kind):
    case = draw(loss, kind, "mean", salt="softcap-chunks")
    case.options.update(softcap=CAP, z_loss=Z)
    logits, target, options = on_backend(case, backend)
    fn = getattr(el, loss)
    whole, g_whole = el.value_and_grad(fn, logits, target, **options)
    chunked, g_chunked = el.value_and_grad(fn, logits, target, chunk_size=2, **options)
    np.testing.assert_allclose(backend.to_numpy(chunked), backend.to_numpy(whole), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(g_chunked["logits"]),
                               backend.to_numpy(g_whole["logits"]), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("loss", LOSSES)
def test_a_huge_cap_is_no_cap_and_a_zero_z_loss_is_off(loss):
    case = draw(loss, "ignore", "mean", salt="softcap-identity")
    fn = getattr(el, loss)
    off, g_off = el.value_and_grad(fn, case.logits, case.target, **case.options)
    huge, g_huge = el.value_and_grad(fn, case.logits, case.target, softcap=1e6, **case.options)
    np.testing.assert_allclose(huge, off, rtol=1e-9)
    np.testing.assert_allclose(g_huge["logits"], g_off["logits"], rtol=1e-9, atol=1e-12)
    zero, g_zero = el.value_and_grad(fn, case.logits, case.target, z_loss=0.0, **case.options)
    assert zero == off and np.array_equal(g_zero["logits"], g_off["logits"])


@pytest.mark.parametrize("backend", EXPLICIT)
def test_a_masked_class_stays_masked_under_the_cap(backend):
    """-inf is capped to -inf, not to -cap: the loss is that of the other classes, and the
    masked class gets no gradient."""
    rng = np.random.default_rng(5)
    kept = rng.normal(scale=3.0, size=(3, 4))
    logits = np.concatenate([kept, np.full((3, 1), -np.inf)], axis=1)
    target = np.array([0, 3, 1])
    options = dict(softcap=CAP, z_loss=Z, reduction="sum")
    value, grads = el.value_and_grad(el.min_ent, backend.asarray(logits),
                                     backend.asarray(target, "int64"), **options)
    assert_close(value, reference.loss("min_ent", kept, target, **options), backend, "float64")
    d = backend.to_numpy(grads["logits"])
    np.testing.assert_allclose(d[:, :4], reference.gradient("min_ent", kept, target, **options),
                               rtol=1e-6, atol=1e-7)
    assert np.all(d[:, 4] == 0)


# --- PaLM's z-loss and Gemma's cap written with torch ---------------------------------------


def test_z_loss_is_palms_definition_written_with_torch():
    """PaLM adds ``z_loss * logsumexp(z)^2`` per token to the cross entropy; Gemma 2 caps
    the logits with ``cap * tanh(z / cap)`` first. Here with class weights (each position
    weighted by its target's weight, the mean over the summed weight) and ignored tokens."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    gen = torch.Generator().manual_seed(0)
    z = (3 * torch.randn(6, 5, generator=gen, dtype=torch.float64)).requires_grad_()
    y = torch.tensor([0, 4, -100, 2, 1, 3])
    w = torch.rand(5, generator=gen, dtype=torch.float64) + 0.5

    def palm(z):
        capped = CAP * torch.tanh(z / CAP)
        counted = y != -100
        s = torch.where(counted, w[y.clamp(min=0)], 0.0)
        z_term = (s * Z * torch.logsumexp(capped, -1) ** 2).sum() / s.sum()
        return F.cross_entropy(capped, y, weight=w, ignore_index=-100) + z_term

    ours = el.cross_entropy(z, y, weight=w, ignore_index=-100, softcap=CAP, z_loss=Z)
    torch.testing.assert_close(ours, palm(z), rtol=1e-12, atol=1e-12)
    g_ours, = torch.autograd.grad(ours, z)
    g_palm, = torch.autograd.grad(palm(z), z)
    torch.testing.assert_close(g_ours, g_palm, rtol=1e-10, atol=1e-12)


def test_second_order_with_both_options():
    torch = pytest.importorskip("torch")
    z = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 1])
    fn = lambda z: el.mix_ent(z, y, softcap=1.5, z_loss=0.2, label_smoothing=0.1)
    assert torch.autograd.gradgradcheck(fn, (z.requires_grad_(),))


def test_the_torch_module_takes_both():
    torch = pytest.importorskip("torch")
    z = torch.randn(4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([[0, 2], [1, -100], [2, 2], [0, 1]])
    from entroloss.backends.torch import CrossEntropyLoss

    module = CrossEntropyLoss(softcap=CAP, z_loss=Z)
    expected = reference.loss("cross_entropy", z.numpy(), y.numpy(), axis=1, ignore_index=-100,
                              softcap=CAP, z_loss=Z)
    np.testing.assert_allclose(float(module(z, y)), expected, rtol=1e-12)


# --- bad values ----------------------------------------------------------------------------

BAD = [("softcap", 0.0, ValueError), ("softcap", -1.0, ValueError),
       ("softcap", float("nan"), ValueError), ("softcap", float("inf"), ValueError),
       ("softcap", True, TypeError), ("softcap", "x", TypeError),
       ("z_loss", -1.0, ValueError), ("z_loss", float("nan"), ValueError),
       ("z_loss", None, TypeError)]


@pytest.mark.parametrize("name, value, error", BAD, ids=[f"{n}={v!r}" for n, v, _ in BAD])
def test_bad_values_are_refused_naming_the_argument(backend, name, value, error):
    logits = backend.asarray(np.zeros((2, 3)))
    target = backend.asarray(np.array([0, 1]), "int64")
    head = backend.asarray(np.zeros((3, 3)))
    for loss in LOSSES:
        with pytest.raises(error, match=name):
            getattr(el, loss)(logits, target, **{name: value})
        with pytest.raises(error, match=name):
            getattr(el, f"linear_{loss}")(logits, head, target, **{name: value})
    if name == "softcap":
        for fn in (el.entropy, el.log_softmax, el.softmax):
            with pytest.raises(error, match=name):
                fn(logits, softcap=value)
        with pytest.raises(error, match=name):
            el.linear_entropy(logits, head, softcap=value)
