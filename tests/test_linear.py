"""The linear-head losses: ``linear_<loss>(hidden, classifier, target, bias=...)`` equals
the plain loss on ``hidden @ classifier.T + bias`` (its value, and its own gradient
mapped back by the chain rule) on every backend, for every loss x target kind x
reduction of the option grid, chunk size by chunk size; the scalars' gradients against
finite differences; ignored rows; half precision; the bad inputs.
"""

from __future__ import annotations

import doctest
import zlib
from dataclasses import dataclass

import numpy as np
import pytest

import entroloss as el
from entroloss import _linear
from entroloss._math import linear
from entroloss.tools.reference import central_differences
from tests.helpers.assertions import assert_close
from tests.helpers.cases import GRID_ARGS, GRID_IDS, arrays_back, arrays_on, draw, scalar_names
from tests.helpers.platforms import backend_dtype_params, backend_params

FEATURES = 4


@dataclass
class LinearCase:
    loss: str
    hidden: np.ndarray  # (..., H)
    classifier: np.ndarray  # (C, H)
    bias: np.ndarray | None
    target: np.ndarray  # indices (...) or probabilities (..., C)
    options: dict  # the loss's keywords; class weight as NumPy; no axis

    @property
    def logits(self) -> np.ndarray:
        z = self.hidden @ self.classifier.T
        return z if self.bias is None else z + self.bias


def linear_case(loss: str, kind: str, reduction: str, salt: str = "linear") -> LinearCase:
    """A grid case (its target and options), with hidden states and a head in place of
    its logits; classes last."""
    case = draw(loss, kind, reduction, salt)
    options = dict(case.options)
    axis = options.pop("axis", -1) % case.logits.ndim
    num_classes = case.logits.shape[axis]
    target = case.target
    if target.dtype.kind == "f" and axis != target.ndim - 1:
        target = np.moveaxis(target, axis, -1)
    positions = case.logits.shape[:axis] + case.logits.shape[axis + 1:]
    rng = np.random.default_rng(zlib.crc32(f"{loss}|{kind}|{reduction}|{salt}|head".encode()))
    hidden = rng.normal(size=positions + (FEATURES,))
    classifier = rng.normal(scale=0.8, size=(num_classes, FEATURES))
    bias = rng.normal(size=num_classes) if rng.random() < 0.7 else None
    return LinearCase(loss, hidden, classifier, bias, target, options)


def array_scalars(lc: LinearCase) -> dict:
    """Every weight and base of the loss as a 0-d float64 array (so that it is learnt)."""
    out = {}
    for name in scalar_names(lc.loss):
        default = 1.7 if name.endswith("base") else 0.6
        out[name] = np.asarray(float(lc.options.get(name, default)))
    return out


def chain_rule(dz: np.ndarray, lc: LinearCase) -> dict:
    """The head's gradients from the plain loss's ``dl/dlogits``."""
    rows = dz.reshape(-1, dz.shape[-1])
    hidden = lc.hidden.reshape(-1, FEATURES)
    grads = {"hidden": dz @ lc.classifier, "classifier": rows.T @ hidden}
    if lc.bias is not None:
        grads["bias"] = rows.sum(axis=0)
    return grads


def expected(lc: LinearCase, scalars: dict) -> tuple:
    """The plain loss (NumPy, float64) on the logits, and its gradients mapped back."""
    value, grads = el.value_and_grad(getattr(el, lc.loss), lc.logits, lc.target,
                                     **{**lc.options, **scalars})
    out = chain_rule(grads.pop("logits"), lc)
    out.update(grads)
    return value, out


def on_backend(lc: LinearCase, backend, dtype: str = "float64", scalars: dict | None = None):
    """(hidden, classifier, target, keywords) as arrays of ``backend``."""
    target = backend.asarray(lc.target, dtype if lc.target.dtype.kind == "f" else "int64")
    options = arrays_on(lc.options, backend, dtype)
    for name, value in (scalars or {}).items():
        options[name] = backend.asarray(value, dtype)
    if lc.bias is not None:
        options["bias"] = backend.asarray(lc.bias, dtype)
    return backend.asarray(lc.hidden, dtype), backend.asarray(lc.classifier, dtype), target, options


def _learnable(options: dict, scalars: dict) -> list:
    return (["bias"] if "bias" in options else []) + list(scalars)


def autograd(backend, fn, hidden, classifier, target, options, learnable) -> tuple:
    """The loss and the gradients of its sum through the framework's own autograd
    (torch, JAX), or ``linear_value_and_grad`` (NumPy, CuPy, array-api-strict)."""
    if backend.library == "torch":
        leaves = {"hidden": hidden, "classifier": classifier,
                  **{n: options[n] for n in learnable}}
        leaves = {n: t.detach().requires_grad_() for n, t in leaves.items()}
        kw = {**options, **{n: leaves[n] for n in learnable}}
        value = fn(leaves["hidden"], leaves["classifier"], target, **kw)
        value.sum().backward()
        return value, {n: t.grad for n, t in leaves.items()}
    if backend.library == "jax":
        import jax

        def total(leaves):
            kw = {**options, **{n: leaves[n] for n in learnable}}
            value = fn(leaves["hidden"], leaves["classifier"], target, **kw)
            return value.sum(), value

        leaves = {"hidden": hidden, "classifier": classifier, **{n: options[n] for n in learnable}}
        (_, value), grads = jax.value_and_grad(total, has_aux=True)(leaves)
        return value, grads
    return el.linear_value_and_grad(fn, hidden, classifier, target, **options)


def check_against_plain(backend, args, chunk_size: int) -> None:
    lc = linear_case(*args)
    scalars = array_scalars(lc)
    value, grads = expected(lc, scalars)
    fn = getattr(el, f"linear_{lc.loss}")
    hidden, classifier, target, options = on_backend(lc, backend, scalars=scalars)
    options["chunk_size"] = chunk_size
    floats = {**options, **{name: float(v) for name, v in scalars.items()}}
    assert_close(fn(hidden, classifier, target, **floats), value, backend, "float64")
    got_value, got = autograd(backend, fn, hidden, classifier, target, options,
                              _learnable(options, scalars))
    assert_close(got_value, value, backend, "float64")
    assert set(got) == set(grads)
    for name in grads:
        assert_close(got[name], grads[name], backend, "float64")
    if backend.library in ("torch", "jax"):  # the explicit path on them too
        got_value, got = el.linear_value_and_grad(fn, hidden, classifier, target, **options)
        assert_close(got_value, value, backend, "float64")
        for name in grads:
            assert_close(got[name], grads[name], backend, "float64")


@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_equals_the_plain_loss_on_the_logits(backend, args):
    """Value and every gradient (hidden, classifier, bias, the weights and bases as 0-d
    arrays), three rows a chunk (chunks that do not divide the rows)."""
    check_against_plain(backend, args, 3)


@pytest.mark.parametrize("chunk_size", [1, 1000])
@pytest.mark.parametrize("args", GRID_ARGS, ids=GRID_IDS)
def test_chunk_size_changes_nothing(args, chunk_size):
    """Every row its own chunk, and one chunk for all (more rows than N), on NumPy."""
    check_against_plain(backend_params(["numpy"])[0].values[0], args, chunk_size)


# --- the scalars against finite differences ------------------------------------------------


@pytest.mark.parametrize("loss", [d for d in ("cross_entropy", "min_ent", "mix_ent",
                                              "adaptive_ce", "focal")])
@pytest.mark.parametrize("kind, reduction", [("index", "mean"), ("ignore", "sum"),
                                             ("soft", "none")])
def test_scalar_gradients_match_finite_differences(loss, kind, reduction):
    lc = linear_case(loss, kind, reduction, salt="differences")
    scalars = array_scalars(lc)
    fn = getattr(el, f"linear_{loss}")
    options = {**lc.options, "bias": lc.bias, "chunk_size": 2}
    _, grads = el.linear_value_and_grad(fn, lc.hidden, lc.classifier, lc.target,
                                        **{**options, **scalars})
    for name, value in scalars.items():
        def total(s, name=name):
            return np.sum(fn(lc.hidden, lc.classifier, lc.target,
                             **{**options, **scalars, name: np.asarray(s)}))

        numeric = central_differences(total, value)
        np.testing.assert_allclose(grads[name], numeric, rtol=1e-6, atol=1e-8, err_msg=name)


# --- the entropy ---------------------------------------------------------------------------


def _entropy_case(with_bias: bool = True):
    rng = np.random.default_rng(13)
    hidden = rng.normal(size=(2, 3, FEATURES))
    classifier = rng.normal(scale=0.9, size=(5, FEATURES))
    return hidden, classifier, rng.normal(size=5) if with_bias else None


def _entropy_expected(hidden, classifier, bias, base):
    """Values by the plain ``el.entropy``; gradients of their sum by central differences."""
    def total_of(h=hidden, w=classifier, b=bias, s=base):
        z = h @ w.T + (0.0 if b is None else b)
        return np.sum(el.entropy(z, base=np.asarray(s)))

    grads = {"hidden": central_differences(lambda h: total_of(h=h), hidden),
             "classifier": central_differences(lambda w: total_of(w=w), classifier),
             "base": central_differences(lambda s: total_of(s=s), np.asarray(base))}
    if bias is not None:
        grads["bias"] = central_differences(lambda b: total_of(b=b), bias)
    z = hidden @ classifier.T + (0.0 if bias is None else bias)
    return el.entropy(z, base=base), grads


@pytest.mark.parametrize("with_bias", [True, False])
def test_entropy_values_and_gradients(backend, with_bias):
    """Per position, against ``el.entropy`` on the logits and finite differences."""
    hidden, classifier, bias = _entropy_case(with_bias)
    value, grads = _entropy_expected(hidden, classifier, bias, 2.0)
    h, w = backend.asarray(hidden), backend.asarray(classifier)
    options = {"base": backend.asarray(np.asarray(2.0)), "chunk_size": 4}
    if bias is not None:
        options["bias"] = backend.asarray(bias)
    assert_close(el.linear_entropy(h, w, bias=options.get("bias"), base=2.0), value, backend,
                 "float64")
    learnable = ["base"] + (["bias"] if bias is not None else [])
    wrapped = lambda h_, w_, _target, **kw: el.linear_entropy(h_, w_, **kw)
    if backend.library in ("torch", "jax"):
        got_value, got = autograd(backend, wrapped, h, w, None, options, learnable)
    else:
        got_value, got = el.linear_value_and_grad(el.linear_entropy, h, w, **options)
    assert_close(got_value, value, backend, "float64")
    assert set(got) == set(grads)
    for name in grads:
        got_np = backend.to_numpy(got[name])
        np.testing.assert_allclose(got_np, grads[name], rtol=1e-6, atol=1e-8, err_msg=name)


def test_entropy_takes_any_base_and_refuses_a_bad_one():
    hidden, classifier, _ = _entropy_case()
    half = el.linear_entropy(hidden, classifier, base=0.5)
    np.testing.assert_allclose(half, -el.linear_entropy(hidden, classifier, base=2.0))
    with pytest.raises(ValueError, match="base"):
        el.linear_entropy(hidden, classifier, base=1.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'target'"):
        el.linear_value_and_grad(el.linear_entropy, hidden, classifier, target=None)


# --- ignored rows ----------------------------------------------------------------------------


def test_ignored_rows_get_no_gradient_even_when_nan(backend):
    """An ignored position contributes 0 and its hidden state no gradient, even NaN; the
    rest is as if those rows were absent."""
    lc = linear_case("min_ent", "ignore", "mean", salt="nan")
    ignored = lc.target == -100
    dirty = lc.hidden.copy()
    dirty[ignored] = np.nan
    clean = LinearCase(lc.loss, np.where(ignored[..., None], 0.0, lc.hidden), lc.classifier,
                       lc.bias, lc.target, lc.options)
    value, grads = expected(clean, {})
    h, w, target, options = on_backend(LinearCase(**{**lc.__dict__, "hidden": dirty}), backend)
    got_value, got = autograd(backend, el.linear_min_ent, h, w, target,
                              {**options, "chunk_size": 2}, _learnable(options, {}))
    assert_close(got_value, value, backend, "float64")
    for name in grads:
        assert_close(got[name], grads[name], backend, "float64")
    assert np.all(backend.to_numpy(got["hidden"])[ignored] == 0)


def test_every_row_ignored(backend):
    """A mean over nothing is NaN and its gradients 0, as the plain loss gives them."""
    lc = linear_case("focal", "ignore", "mean", salt="all")
    lc.target[...] = -100
    value, grads = expected(lc, {})
    h, w, target, options = on_backend(lc, backend)
    got_value, got = autograd(backend, el.linear_focal, h, w, target, options,
                              _learnable(options, {}))
    assert np.isnan(value) and np.isnan(backend.to_numpy(got_value))
    for name in grads:
        assert_close(got[name], grads[name], backend, "float64")


@pytest.mark.parametrize("backend", backend_params(["numpy", "torch"]))
def test_ignored_rows_are_left_out_of_the_matmuls(backend):
    """Where the target can be read and rows written back by index, only the counted rows
    are multiplied (the call keeps their indices)."""
    target = backend.asarray(np.array([3, -100, 0, -100, -100, 1]), "int64")
    h = backend.asarray(np.ones((6, 2)))
    w = backend.asarray(np.zeros((4, 2)))
    call = _linear.PUBLIC[el.linear_cross_entropy]((h, w, target), {"ignore_index": -100})
    assert backend.to_numpy(call.keep).tolist() == [0, 2, 5]
    counted = backend.asarray(np.array([3, 2, 0, 1, 1, 1]), "int64")
    everything = _linear.PUBLIC[el.linear_cross_entropy]((h, w, counted), {"ignore_index": -100})
    assert everything.keep is None


# --- half precision --------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal"])
@pytest.mark.parametrize("backend, dtype",
                         backend_dtype_params(["float32", "float16", "bfloat16"],
                                              ["torch", "jax", "numpy"]))
def test_lower_precision_accumulates_in_float32(backend, dtype, loss):
    """Inputs in ``dtype``, logits and gradients accumulated in float32: within the
    dtype's tolerance of float64 on the same (rounded) inputs; results in ``dtype``."""
    lc = linear_case(loss, "ignore", "mean", salt="half")
    hidden, classifier, target, options = on_backend(lc, backend, dtype)
    rounded = LinearCase(lc.loss, backend.to_numpy(hidden), backend.to_numpy(classifier),
                         None if lc.bias is None else backend.to_numpy(options["bias"]),
                         lc.target, arrays_back(lc.options, options, backend))
    value, grads = expected(rounded, {})
    fn = getattr(el, f"linear_{loss}")
    got_value, got = autograd(backend, fn, hidden, classifier, target,
                              {**options, "chunk_size": 2}, _learnable(options, {}))
    assert_close(got_value, value, backend, dtype)
    for name in grads:
        assert_close(got[name], grads[name], backend, dtype)


# --- bad inputs ------------------------------------------------------------------------------

_H, _W, _Y = np.ones((2, 3, 4)), np.zeros((5, 4)), np.zeros((2, 3), dtype=np.int64)

BAD = [
    (dict(classifier=np.zeros((5, 3))), ValueError, r"classifier must have shape \(C, 4\)"),
    (dict(classifier=np.zeros((4, 5))), ValueError, r"classifier must have shape \(C, 4\)"),
    (dict(classifier=np.zeros(4)), ValueError, "classifier must have shape"),
    (dict(classifier=np.zeros((5, 4), dtype=np.float32)), TypeError, "classifier must have the hidden"),
    (dict(classifier=np.zeros((0, 4))), ValueError, "classifier has 0 classes"),
    (dict(classifier=np.zeros((5, 4), dtype=np.int64)), TypeError, "classifier must have a real"),
    (dict(classifier=[[0.0] * 4] * 5), TypeError, "classifier must be an array"),
    (dict(hidden=np.ones((2, 3, 5))), ValueError, r"classifier must have shape \(C, 5\)"),
    (dict(hidden=np.ones((2, 3, 4), dtype=np.int64)), TypeError, "hidden must have a real"),
    (dict(hidden=np.ones(())), ValueError, "hidden must have at least 1 dimension"),
    (dict(hidden=[1.0, 2.0]), TypeError, "hidden must be an array"),
    (dict(bias=np.zeros(4)), ValueError, r"bias must have shape \(5,\)"),
    (dict(bias=np.zeros((1, 5))), ValueError, r"bias must have shape \(5,\)"),
    (dict(bias=np.zeros(5, dtype=np.float32)), TypeError, "bias must have the hidden"),
    (dict(target=np.zeros((3, 2), dtype=np.int64)), ValueError,
     r"target of class indices must have shape \(2, 3\) \(hidden's shape"),
    (dict(target=np.zeros((2, 3, 4))), ValueError,
     r"soft target \(probabilities\) must have shape \(2, 3, 5\)"),
    (dict(target=np.full((2, 3), 5)), ValueError, "target holds class index 5"),
    (dict(weight=np.ones(4)), ValueError, r"weight must have shape \(5,\)"),
    (dict(ignore_index=1.5), TypeError, "ignore_index must be a Python int"),
    (dict(label_smoothing=2.0), ValueError, "label_smoothing must be finite and in"),
    (dict(reduction="avg"), ValueError, "reduction must be one of"),
    (dict(chunk_size=0), ValueError, "chunk_size must be a positive int"),
    (dict(base=1.0), ValueError, "base must be a finite number > 1"),
    (dict(axis=1), TypeError, "unexpected keyword argument 'axis'"),
]


@pytest.mark.parametrize("change, error, message", BAD, ids=[m for _, _, m in BAD])
def test_bad_inputs_are_refused_naming_the_argument(change, error, message):
    args = {"hidden": _H, "classifier": _W, "target": _Y, **change}
    positional = [args.pop(name) for name in ("hidden", "classifier", "target")]
    with pytest.raises(error, match=message):
        el.linear_cross_entropy(*positional, **args)
    with pytest.raises(error, match=message):
        el.linear_value_and_grad(el.linear_cross_entropy, *positional, **args)


def test_bad_calls_name_the_function():
    with pytest.raises(TypeError, match="linear_cross_entropy"):
        el.linear_cross_entropy(_H, _W)
    with pytest.raises(TypeError, match="loss_fn must be one of entroloss's linear-head"):
        el.linear_value_and_grad(el.cross_entropy, _H, _W, _Y)
    with pytest.raises(TypeError, match="takes hidden, classifier and target"):
        el.linear_value_and_grad(el.linear_min_ent, _H, _W)


@pytest.mark.parametrize("torch_backend", backend_params(["torch"]))
def test_torch_refusals(torch_backend):
    import torch

    h = torch_backend.asarray(_H).requires_grad_()
    w = torch_backend.asarray(_W)
    weight = torch_backend.asarray(np.ones(5)).requires_grad_()
    with pytest.raises(ValueError, match="weight requires grad"):
        el.linear_cross_entropy(h, w, torch_backend.asarray(_Y), weight=weight)
    value = el.linear_cross_entropy(h, w, torch_backend.asarray(_Y))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(value, h, create_graph=True)


# --- framework specifics ---------------------------------------------------------------------


def test_torch_forms_only_the_gradients_wanted_and_backward_twice(torch_backend):
    """A frozen hidden state gets no gradient (none is formed); a second backward after
    retain_graph=True recomputes what the first handed out."""
    lc = linear_case("mix_ent", "index", "mean", salt="torch")
    value, grads = expected(lc, {})
    h, w, target, options = on_backend(lc, torch_backend)
    w.requires_grad_()
    loss = el.linear_mix_ent(h, w, target, **options, chunk_size=2)
    loss.backward(retain_graph=True)
    assert h.grad is None
    assert_close(w.grad, grads["classifier"], torch_backend, "float64")
    w.grad = None
    (2 * loss).backward()
    assert_close(w.grad, 2 * grads["classifier"], torch_backend, "float64")


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_jax_under_jit(jax_backend, reduction):
    import jax

    lc = linear_case("focal", "ignore", reduction, salt="jit")
    value, grads = expected(lc, {})
    h, w, target, options = on_backend(lc, jax_backend)

    def total(h, w):
        return el.linear_focal(h, w, target, **options, chunk_size=2).sum()

    got = jax.jit(jax.grad(total, argnums=(0, 1)))(h, w)
    assert_close(jax.jit(total)(h, w), np.sum(value), jax_backend, "float64")
    assert_close(got[0], grads["hidden"], jax_backend, "float64")
    assert_close(got[1], grads["classifier"], jax_backend, "float64")


# Under tracing the chunks are one lax.scan body over equal chunks, the rows padded.
SCAN_CASES = [("min_ent", "ignore", "none"), ("mix_ent", "soft", "mean"),
              ("focal", "kdim", "sum"), ("cross_entropy", "ignore", "mean")]


@pytest.mark.parametrize("args", SCAN_CASES, ids=["-".join(a) for a in SCAN_CASES])
def test_jax_scan_equals_the_plain_loss(jax_backend, args):
    """jit(value_and_grad) through the scan: the value and every gradient (hidden,
    classifier, bias, the learnt scalars) as the plain loss on the logits, with class
    weights, in chunks that do not divide the rows (so that the last chunk is padded)."""
    import jax

    lc = linear_case(*args, salt="scan")
    lc.options.setdefault("weight", np.linspace(0.5, 1.5, lc.classifier.shape[0]))
    rows = lc.hidden.reshape(-1, FEATURES).shape[0]
    chunk = next(c for c in (5, 4, 3) if rows % c and rows > c)
    scalars = array_scalars(lc)
    value, grads = expected(lc, scalars)
    hidden, classifier, target, options = on_backend(lc, jax_backend, scalars=scalars)
    learnable = _learnable(options, scalars)
    fn = getattr(el, f"linear_{lc.loss}")

    def total(leaves):
        kw = {**options, **{n: leaves[n] for n in learnable}, "chunk_size": chunk}
        value = fn(leaves["hidden"], leaves["classifier"], target, **kw)
        return value.sum(), value

    leaves = {"hidden": hidden, "classifier": classifier, **{n: options[n] for n in learnable}}
    step = jax.value_and_grad(total, has_aux=True)
    assert " scan[" in str(jax.make_jaxpr(step)(leaves))
    (_, got_value), got = jax.jit(step)(leaves)
    assert_close(got_value, value, jax_backend, "float64")
    assert set(got) == set(grads)
    for name in grads:
        assert_close(got[name], grads[name], jax_backend, "float64")


def test_jax_scan_explicit_path_under_jit(jax_backend):
    """linear_value_and_grad under jit scans too, and agrees with the plain loss."""
    import jax

    lc = linear_case("adaptive_ce", "ignore", "mean", salt="scan-explicit")
    value, grads = expected(lc, {})
    hidden, classifier, target, options = on_backend(lc, jax_backend)

    def explicit(h, w):
        return el.linear_value_and_grad(el.linear_adaptive_ce, h, w, target, **options,
                                        chunk_size=2)

    assert " scan[" in str(jax.make_jaxpr(explicit)(hidden, classifier))
    got_value, got = jax.jit(explicit)(hidden, classifier)
    assert_close(got_value, value, jax_backend, "float64")
    for name in grads:
        assert_close(got[name], grads[name], jax_backend, "float64")


def test_jax_jit_temporaries_are_a_fraction_of_the_naive(jax_backend):
    """XLA's compiled temporary allocation of jit(value_and_grad) (memory analysis: exact,
    nothing runs) of MIN-ENT: with 64-row chunks, under a quarter of the plain loss's on
    ``h @ W.T + b`` at N=1024, H=32, C=4096 float32 (logits of 16 MiB)."""
    import jax
    import jax.numpy as jnp

    n, features, classes = 1024, 32, 4096
    f32 = jnp.float32
    shapes = (jax.ShapeDtypeStruct((n, features), f32), jax.ShapeDtypeStruct((classes, features), f32),
              jax.ShapeDtypeStruct((classes,), f32), jax.ShapeDtypeStruct((n,), jnp.int32))

    def temp(fn):
        step = jax.jit(jax.value_and_grad(fn, argnums=(0, 1, 2)))
        return step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes

    naive = temp(lambda h, w, b, y: el.min_ent(h @ w.T + b, y))
    linear_head = temp(lambda h, w, b, y: el.linear_min_ent(h, w, y, bias=b, chunk_size=64))
    assert naive >= 2 * n * classes * 4  # the logits and their gradient, at least
    assert linear_head <= naive / 4


def test_default_chunk_size_fits_the_budget():
    """chunk_size=None: as many rows as keep the chunk's logits-sized buffers within 64 MiB:
    one for a loss read at a class-index target alone, two with a regularizer, a soft or
    smoothed target or a cap."""
    assert linear.default_chunk_size(32768, 4, 1) == 512
    assert linear.default_chunk_size(32768, 4) == 256
    assert linear.default_chunk_size(256_000, 4) == 32
    assert linear.default_chunk_size(10**9, 4) == 1
    budget, row = linear.LOGITS_BUDGET_BYTES, 5 * 8  # _W's 5 classes in float64
    for fn, options, buffers in [(el.linear_cross_entropy, {}, 1), (el.linear_focal, {}, 1),
                                 (el.linear_cross_entropy, {"label_smoothing": 0.1}, 2),
                                 (el.linear_cross_entropy, {"softcap": 5.0}, 2),
                                 (el.linear_min_ent, {}, 2), (el.linear_poly1, {}, 2)]:
        call = _linear.PUBLIC[fn]((_H, _W, _Y), options)
        assert call.spec.chunk_size == budget // buffers // row, (fn.__name__, options)


@pytest.mark.parametrize("fn, options, buffers, shared", [
    (el.linear_cross_entropy, {}, 1, True), (el.linear_cross_entropy, {"ignore_index": -100}, 1, True),
    (el.linear_focal, {"ignore_index": -100}, 1, True), (el.linear_min_ent, {}, 2, True),
    (el.linear_cross_entropy, {"label_smoothing": 0.1}, 2, False),
    (el.linear_cross_entropy, {"softcap": 5.0}, 2, False),
], ids=["ce", "ce-ignore", "focal-ignore", "min_ent", "ce-smoothed", "ce-capped"])
def test_the_chunk_holds_the_buffers_it_is_sized_for(monkeypatch, fn, options, buffers, shared):
    """What the chunk size counts on (``buffers_at_peak``): a loss read at a class-index
    target writes each chunk's dl/dz into the chunk's own logits, ignored rows included
    (torch), so that cross entropy holds one logits-sized buffer (MIN-ENT's second is its
    log p, in the forward); a dense (smoothed) target or a cap builds dl/dz apart and
    leaves the logits as they were."""
    torch = pytest.importorskip("torch")
    from entroloss._math.chunking import buffers_at_peak

    seen, gradients = [], linear.gradients

    def spy(xp, kernels, spec, kept, chunk, g_rows, asked):
        before = kept.logits.clone()
        out = gradients(xp, kernels, spec, kept, chunk, g_rows, asked)
        seen.append((buffers_at_peak(spec), out[0].data_ptr() == kept.logits.data_ptr(),
                     bool(torch.equal(kept.logits, before))))
        return out

    monkeypatch.setattr(linear, "gradients", spy)
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(12, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 9, (12,), generator=gen)
    if "ignore_index" in options:
        y[:3] = -100
    fn(h, w, y, chunk_size=5, **options).backward()
    assert seen and all(s == (buffers, shared, not shared) for s in seen), seen


def test_docstring_examples():
    result = doctest.testmod(_linear, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted >= 7 and result.failed == 0


# --- entroloss bench --linear ------------------------------------------------------------------


def test_bench_linear_compares_like_with_like():
    """Each pair of ``entroloss bench --linear`` computes one number twice: the linear-head
    loss (in chunks that do not divide the rows) and the naive one on the whole logits
    (torch; JAX's naive losses are ``entroloss bench``'s own, tested in test_bench.py)."""
    from entroloss.tools import bench_linear
    from entroloss.tools.platforms import available

    platforms, _ = available("torch", "cpu")
    if not platforms:
        pytest.skip("torch is not installed")
    p, library = platforms[0], "torch"
    args = bench_linear.inputs(p, (12, 4, 10))
    for loss in bench_linear.LOSSES:
        ours = bench_linear.linear_fn(loss, 5)(*args)
        naive = bench_linear.naive_fn(loss, library)(*args)
        np.testing.assert_allclose(p.to_numpy(ours), p.to_numpy(naive), rtol=1e-5, err_msg=loss)


def test_bench_linear_command_line(capsys, monkeypatch):
    """``entroloss bench --linear --json`` on JAX (nothing in a subprocess), two of the
    three losses (fewer compilations): a row per loss at the shape asked for, the ratios
    those of the figures."""
    pytest.importorskip("jax")
    import json

    from entroloss.__main__ import main
    from entroloss.tools import bench_linear

    monkeypatch.setattr(bench_linear, "LOSSES", ("cross_entropy", "entropy"))
    code = main(["bench", "--linear", "--backend", "jax", "--device", "cpu", "--head",
                 "64x8x32", "--chunk-size", "16", "--repeats", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["ok"]
    assert [r["loss"] for r in out["rows"]] == ["cross_entropy", "entropy"]
    for r in out["rows"]:
        assert r["shape"] == [64, 8, 32] and r["chunk_size"] == 16
        assert r["time_ratio"] == pytest.approx(r["linear_s"] / r["naive_s"])
        assert r["memory_ratio"] == pytest.approx(r["linear_mib"] / r["naive_mib"])


@pytest.mark.parametrize("argv, message", [
    (["bench", "--linear", "--head", "12x3"], "is not NxHxC"),
    (["bench", "--linear", "--head", "0x3x4"], "must be at least 1"),
    (["bench", "--head", "2x3x4"], "--head applies to bench --linear only"),
])
def test_bench_linear_refuses_bad_arguments(argv, message, capsys):
    from entroloss.__main__ import main

    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
