"""torch's own fused kernels, where they compute the definition (``backends/torch_native.py``):
cross entropy by ``log_softmax`` and ``nll_loss``, log p by ``log_softmax`` under torch's
autograd. The same numbers as the shared math's own composition (``NATIVE`` off) and as
``F.cross_entropy``; the rows where torch's kernels are not the definition's (only -inf,
NaN, +inf) given the math's numbers; the errors first; and every call they must not take."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses, _prepare
from tests.helpers.torch_paths import unbind

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

from entroloss.backends import torch as adapter, torch_native  # noqa: E402


@pytest.fixture(autouse=True)
def _unbound():
    unbind()
    yield
    unbind()


@pytest.fixture
def used(monkeypatch):
    """What the native kernels gave per call: ``used["cross_entropy"]`` and
    ``used["log_p"]`` list True (torch's numbers) or False (a NaN row: the math's)."""
    seen: dict = {"cross_entropy": [], "log_p": []}

    def spy(kernel, name):
        def run(*args, **kwargs):
            out = kernel(*args, **kwargs)
            seen[name].append(out is not None)
            return out
        return run
    log_p, cross_entropy = torch_native.log_p, torch_native._cross_entropy
    monkeypatch.setattr(torch_native, "log_p", spy(log_p, "log_p"))
    # (a bound call keeps the function _cross_entropy makes for its key)
    monkeypatch.setattr(torch_native, "_cross_entropy",
                        lambda *a: spy(cross_entropy(*a), "cross_entropy"))
    return seen


def _logits(shape, dtype=torch.float64, seed=0, masked=True):
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.normal(scale=3.0, size=shape), dtype=dtype)
    if masked and shape[-1] > 2:  # masked classes: one off the target, one on it
        z[..., 0, 2] = -math.inf
        z[..., 1, 1] = -math.inf
    return z.requires_grad_()


def _target(shape, classes, seed=0):
    rng = np.random.default_rng(seed + 1)
    t = torch.tensor(rng.integers(0, classes, size=shape))
    t[..., 1] = 1  # on the masked class: +inf
    return t


def _value_and_grad(fn, z, t, **options):
    value = fn(z, t, **options)
    (grad,) = torch.autograd.grad(value.sum(), z)
    return value.detach(), grad


def _maths(monkeypatch, fn, z, t, **options):
    """The numbers of the shared math's own composition (the native kernels off)."""
    with monkeypatch.context() as m:
        m.setattr(torch_native, "NATIVE", False)
        unbind()
        out = _value_and_grad(fn, z, t, **options)
    unbind()
    return out


def _close(actual, expected, dtype):
    # torch's log_softmax and the math's composition round alike but for the order of
    # the row's sum (vectorised): a few units in the last place
    tol = {torch.float64: (1e-13, 1e-15), torch.float32: (4e-6, 1e-7)}[dtype]
    torch.testing.assert_close(actual, expected, rtol=tol[0], atol=tol[1], equal_nan=True)


NATIVE_CROSS_ENTROPY = {  # shape of the logits, options
    "256x10": ((256, 10), {}),
    "128x100-sum": ((128, 100), {"reduction": "sum"}),
    "none": ((6, 5), {"reduction": "none"}),
    "ignore": ((6, 5), {"ignore_index": 3}),
    "ignore-none": ((6, 5), {"ignore_index": 3, "reduction": "none"}),
    "ignore-minus-100": ((6, 5), {"ignore_index": -100}),  # (outside [0, C): the full check)
    "3d": ((2, 4, 5), {}),
    "3d-none": ((2, 4, 5), {"reduction": "none"}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", sorted(NATIVE_CROSS_ENTROPY))
def test_cross_entropy_is_torchs_where_torchs_is_the_definition(case, dtype, used, monkeypatch):
    """Plain cross entropy over class indices is ``nll_loss(log_softmax(z))`` (first call,
    and a bound repetition): ``F.cross_entropy``'s numbers bit for bit, and the math's
    to the rounding of a row's sum, with masked classes (+inf at a masked target)."""
    shape, options = NATIVE_CROSS_ENTROPY[case]
    z, t = _logits(shape, dtype), _target(shape[:-1], shape[-1])
    if "ignore_index" in options:
        t[..., 0] = options["ignore_index"]
    torchs = F.cross_entropy(z.reshape(-1, shape[-1]), t.reshape(-1),
                             ignore_index=options.get("ignore_index", -100),
                             reduction=options.get("reduction", "mean"))
    (torch_grad,) = torch.autograd.grad(torchs.sum(), z)
    for _ in range(2):
        value, grad = _value_and_grad(el.cross_entropy, z, t, **options)
        assert torch.equal(value.reshape(-1), torchs.detach().reshape(-1))
        assert torch.equal(grad, torch_grad)
    assert used["cross_entropy"] == [True, True]
    math_value, math_grad = _maths(monkeypatch, el.cross_entropy, z, t, **options)
    _close(value, math_value, dtype)
    _close(grad, math_grad, dtype)
    if options.get("reduction") == "none":
        assert torch.isposinf(value[..., 1]).all()  # the masked target


NATIVE_LOG_P = {  # loss, options (log p native, the rest the math's, under autograd)
    "smoothing": ("cross_entropy", {"label_smoothing": 0.1}),
    "smoothing-ignore-none": ("cross_entropy", {"label_smoothing": 0.1, "ignore_index": 3,
                                                "reduction": "none"}),
    "poly1": ("poly1", {}),
    "poly1-sum": ("poly1", {"reduction": "sum", "epsilon": 2.0}),
    "unchecked": ("cross_entropy", {"validate": False}),
    "min_ent": ("min_ent", {}),
    "mix_ent-none": ("mix_ent", {"reduction": "none"}),
    "min_ent-soft": ("min_ent", {"soft": True}),
}


@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", sorted(NATIVE_LOG_P))
def test_native_log_p_gives_the_maths_numbers(case, dtype, masked, used, monkeypatch):
    """Under torch's autograd log p is ``log_softmax``'s and the rest the math's recorded
    ops: the math's numbers (its own row statistics), value and gradient, with a masked
    class off the target (the floor of log p kept; smoothing puts mass on every class:
    +inf on a masked one) and without (the floor is the identity: not run)."""
    name, options = NATIVE_LOG_P[case]
    fn = getattr(el, name)
    options = dict(options)
    z, t = _logits((6, 5), dtype, masked=False), _target((6,), 5)
    if options.pop("soft", False):
        t = torch.softmax(torch.randn(6, 5, dtype=dtype), -1)
    if masked:
        z.data[0, 2] = -math.inf
    if "ignore_index" in options:
        t[0] = options["ignore_index"]
    for _ in range(2):
        value, grad = _value_and_grad(fn, z, t, **options)
    assert used["log_p"] == [True, True]
    assert not used["cross_entropy"]
    math_value, math_grad = _maths(monkeypatch, fn, z, t, **options)
    _close(value, math_value, dtype)
    _close(grad, math_grad, dtype)
    assert torch.isfinite(grad).all()


def _hard_rows(kind, dtype):
    z = _logits((5, 4), dtype, masked=False).detach()
    if kind == "all -inf":
        z[1] = -math.inf
    elif kind == "NaN":
        z[1, 2] = math.nan
    elif kind == "+inf":
        z[1, 3] = math.inf
    return z.requires_grad_()


HARD = {  # loss, options
    "cross_entropy": ("cross_entropy", {}),
    "cross_entropy-ignored": ("cross_entropy", {"ignore_index": 0}),
    "cross_entropy-ignored-none": ("cross_entropy", {"ignore_index": 0, "reduction": "none"}),
    "cross_entropy-none": ("cross_entropy", {"reduction": "none"}),
    "smoothing-ignored": ("cross_entropy", {"label_smoothing": 0.1, "ignore_index": 0}),
    "poly1-ignored": ("poly1", {"ignore_index": 0}),
    "focal": ("focal", {}),  # (no log p read: its value's shows the row)
    "min_ent": ("min_ent", {}),
    "focal-ignored-none": ("focal", {"ignore_index": 0, "reduction": "none"}),
}


@pytest.mark.parametrize("kind", ["all -inf", "NaN", "+inf"])
@pytest.mark.parametrize("case", sorted(HARD))
def test_a_row_torchs_kernels_get_wrong_gets_the_maths_numbers(case, kind, used, monkeypatch):
    """A row of only -inf (where ``log_softmax`` gives NaN, and an ignored one a NaN
    gradient), or one holding NaN or +inf: the call runs the math, its numbers bit for
    bit; bound or not. The -inf row ignored: a finite value and a gradient of 0 there."""
    name, options = HARD[case]
    fn = getattr(el, name)
    z, t = _hard_rows(kind, torch.float64), torch.tensor([1, 0, 2, 3, 1])  # row 1 ignored
    if "ignore_index" not in options:
        t[1] = 2
    fine = _logits((5, 4), masked=False, seed=3)
    fn(fine, t, **options)  # binds the key on native numbers
    value, grad = _value_and_grad(fn, z, t, **options)
    if name == "focal" and "ignore_index" not in options:
        assert used["log_p"] == [True, True]  # log p unread; the value read, NaN: the Function
    else:
        assert used["cross_entropy" if name == "cross_entropy" and "label_smoothing" not in options
                    else "log_p"] == [True, False]
    math_value, math_grad = _maths(monkeypatch, fn, z, t, **options)
    assert torch.equal(value.isnan(), math_value.isnan())
    assert torch.equal(value.nan_to_num(), math_value.nan_to_num())
    assert torch.equal(grad.nan_to_num(), math_grad.nan_to_num())
    assert torch.equal(grad.isnan(), math_grad.isnan())
    if kind == "all -inf" and "ignore_index" in options:
        assert torch.isfinite(value).all()
        assert torch.equal(grad[1], torch.zeros(4, dtype=grad.dtype))
        assert not grad.isnan().any()


def test_an_all_minus_inf_row_keeps_the_definitions_numbers():
    """What the math gives there (docs/reliability.md): +inf, and -1/N at the target."""
    z = torch.zeros(2, 3, dtype=torch.float64)
    z[0] = -math.inf
    z.requires_grad_()
    value, grad = _value_and_grad(el.cross_entropy, z, torch.tensor([1, 2]))
    assert value.item() == math.inf
    assert grad[0].tolist() == [0.0, -0.5, 0.0]


def test_an_index_out_of_range_is_refused_before_torchs_kernel(used):
    """The target's check runs first (nll_loss would raise its own message, or ignore
    a -100), on the first call and on a bound one."""
    z = _logits((4, 5), masked=False)
    el.cross_entropy(z, torch.tensor([0, 1, 2, 3]))
    for bad, words in ((torch.tensor([0, 1, 5, 3]), "class index 5, outside [0, 5)"),
                       (torch.tensor([0, -100, 2, 3]), "pass ignore_index=-100")):
        with pytest.raises(ValueError, match=re.escape(words)):
            el.cross_entropy(z, bad)
    assert used["cross_entropy"] == [True]
    el.cross_entropy(z, torch.tensor([0, -100, 2, 3]), ignore_index=-100)  # binds its key
    with pytest.raises(ValueError, match=re.escape("class index 7, outside [0, 5) and not "
                                                   "ignore_index=-100")):
        el.cross_entropy(z, torch.tensor([0, -100, 7, 3]), ignore_index=-100)
    assert used["cross_entropy"] == [True, True]


def _cases_not_native():
    z = _logits((6, 5), masked=False)
    t = _target((6,), 5)
    w = torch.rand(5, dtype=torch.float64) + 0.5
    return {  # name: (loss, logits, target, options, takes native log p)
        "smoothing": ("cross_entropy", z, t, {"label_smoothing": 0.1}, True),
        "class weights": ("cross_entropy", z, t, {"weight": w}, True),
        "sample weights": ("cross_entropy", z, t, {"sample_weight": w[:1].expand(6)}, True),
        "denominator": ("cross_entropy", z, t, {"denominator": 3.0}, True),
        "validate=False": ("cross_entropy", z, t, {"validate": False}, True),
        "int32 target": ("cross_entropy", z, t.to(torch.int32), {}, True),
        "soft target": ("cross_entropy", z, F.one_hot(t, 5).double(), {}, True),
        "softcap": ("cross_entropy", z, t, {"softcap": 5.0}, False),
        "z_loss": ("cross_entropy", z, t, {"z_loss": 1e-3}, False),
        "chunk_size": ("cross_entropy", z, t, {"chunk_size": 2}, False),
        "float16": ("cross_entropy", z.detach().half().requires_grad_(), t, {}, False),
        "bfloat16": ("cross_entropy", z.detach().bfloat16().requires_grad_(), t, {}, False),
        "classes first": ("cross_entropy", z.detach().T.contiguous().requires_grad_(), t,
                          {"axis": 0}, False),
        "min_ent, chunked (the Function)": ("min_ent", z, t, {"chunk_size": 2}, False),
        "focal, class weights (the Function)": ("focal", z, t, {"weight": w}, False),
        "focal, soft target (the Function)": ("focal", z, F.one_hot(t, 5).double(), {}, False),
        "focal, smoothing (the Function)": ("focal", z, t, {"label_smoothing": 0.1}, False),
    }


@pytest.mark.parametrize("case", sorted(_cases_not_native()))
def test_calls_torchs_cross_entropy_does_not_take(case, used):
    """Only plain cross entropy over checked int64 indices, float32/64 classes last on the
    CPU, with no option torch's kernel treats otherwise, is ``nll_loss``; log p is
    ``log_softmax`` only where nothing else reads the row statistics (no cap, z-loss,
    chunks), the logits' own dtype is the compute dtype, and autograd runs."""
    name, z, t, options, log_p = _cases_not_native()[case]
    getattr(el, name)(z, t, **options).sum().backward()
    assert used["cross_entropy"] == []
    assert used["log_p"] == ([True] if log_p else [])


@pytest.mark.parametrize("bound", [False, True], ids=["unbound", "bound-outside"])
@pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1}], ids=["ce", "smoothing"])
def test_no_native_kernel_under_torch_func(options, bound, used, monkeypatch):
    """A torch.func transform cannot read a value (the NaN probe): the math runs, also for
    a key bound outside the transform (``torch.func.grad``; ``vmap``, where the target's
    check cannot read either: ``validate=False``)."""
    z, t = _logits((6, 5), masked=False).detach(), _target((6,), 5)
    unchecked = {**options, "validate": False}
    if bound:
        el.cross_entropy(z, t, **options)
        el.cross_entropy(z[:1], t[:1], **unchecked)
    before = {k: len(v) for k, v in used.items()}
    grad = torch.func.grad(lambda x: el.cross_entropy(x, t, **options))(z)
    rows = torch.func.vmap(lambda x, y: el.cross_entropy(x[None], y[None], **unchecked))(z, t)
    assert not any(any(v[before[k]:]) for k, v in used.items())
    _, expected = _maths(monkeypatch, el.cross_entropy, z.requires_grad_(), t, **options)
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-15)
    expected_rows = el.cross_entropy(z, t, reduction="none", **options)
    torch.testing.assert_close(rows, expected_rows.detach(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name, options", [("cross_entropy", {}), ("cross_entropy", {"label_smoothing": 0.2}),
                                           ("poly1", {})], ids=["ce", "smoothing", "poly1"])
def test_second_derivatives_through_torchs_kernels(name, options, used, monkeypatch):
    """``create_graph=True`` differentiates ``log_softmax``'s and ``nll_loss``'s
    backward: ``gradgradcheck``, and the math's Hessian-vector product."""
    fn = getattr(el, name)
    z, t = _logits((4, 3), masked=False), torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradgradcheck(lambda x: fn(x, t, **options), (z,))
    v = torch.randn(4, 3, dtype=torch.float64)

    def hvp():
        (g,) = torch.autograd.grad(fn(z, t, **options), z, create_graph=True)
        return torch.autograd.grad((g * v).sum(), z)[0]
    ours = hvp()
    assert any(used.values()) and all(all(u) for u in used.values())
    monkeypatch.setattr(torch_native, "NATIVE", False)
    _prepare.BOUND_CALLS.clear()
    torch.testing.assert_close(ours, hvp(), rtol=1e-12, atol=1e-14)


def test_the_path_thresholds_with_native_log_p():
    """Every regularizer (and none) has a native threshold, and the native one applies
    only where log p is native."""
    from entroloss._math import terms

    assert set(adapter.NATIVE_AUTOGRAD_MAX_ELEMENTS) == {None, *terms.REGULARIZERS}
    most = adapter.NATIVE_AUTOGRAD_MAX_ELEMENTS[None]
    assert most > adapter.AUTOGRAD_MAX_ELEMENTS
    ce = _losses.by_name("cross_entropy")
    spec = _prepare.prepare(ce, torch.zeros(1, most), torch.zeros(1, dtype=torch.int64),
                            _prepare.defaults(ce)).spec
    assert adapter.uses_autograd(spec, torch.zeros(1, most))
    assert not adapter.uses_autograd(spec, torch.zeros(1, most + 1))
    assert not adapter.uses_autograd(spec, torch.zeros(1, most, dtype=torch.float16))


FOCAL = {  # loss, options
    "focal-0.5": ("focal", {"gamma": 0.5}),
    "focal-2": ("focal", {}),
    "focal-3.5-none": ("focal", {"gamma": 3.5, "reduction": "none"}),
    "adaptive_ce": ("adaptive_ce", {}),
    "adaptive_ce-ignored-sum": ("adaptive_ce", {"ignore_index": 0, "reduction": "sum"}),
}


def _focal_logits(dtype):
    z = _logits((6, 5), dtype, masked=False).detach()
    z[0, 3] = -math.inf  # masked classes off the target
    z[2, :] = -math.inf  # ... and, ignored with ignore_index=0, all but its target
    z[2, 0] = 1.0
    z[4, :] = -60.0  # a saturated prediction: p = 1 in the dtype
    z[4, 1] = 60.0
    return z.requires_grad_()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", sorted(FOCAL))
def test_the_focal_family_under_autograd_gives_the_functions_numbers(case, dtype, used,
                                                                     monkeypatch):
    """One-hot targets, no class weights: torch's autograd differentiates log_softmax and
    the focal factor (first call and a bound repetition), with the Function's numbers
    (the hand-derived backward), masked classes, a saturated prediction (gamma < 1: the
    factor's ``where``) and an ignored row included; finite everywhere."""
    name, options = FOCAL[case]
    fn = getattr(el, name)
    z, t = _focal_logits(dtype), torch.tensor([0, 1, 0, 2, 1, 4])
    for _ in range(2):
        value = fn(z, t, **options)
        assert type(value.grad_fn).__name__ not in ("_LossBackward", "_ReplayedBackward")
        (grad,) = torch.autograd.grad(value.sum(), z)
    assert used["log_p"] == [True, True]
    function_value, function_grad = _maths(monkeypatch, fn, z, t, **options)
    _close(value.detach(), function_value, dtype)
    _close(grad, function_grad, dtype)
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("options", [{}, {"reduction": "none"}, {"gamma": 0.5, "reduction": "sum"}],
                         ids=["mean", "none", "gamma-0.5-sum"])
def test_a_masked_target_sends_the_focal_family_to_the_function(options, used, monkeypatch):
    """Autograd's derivative of the focal term is NaN at a masked target class (the value
    +inf); the Function's is finite. A call whose value is not finite runs the Function:
    its numbers bit for bit, bound or not."""
    z, t = _focal_logits(torch.float64), torch.tensor([0, 1, 3, 2, 1, 4])  # row 0: masked
    el.focal(_logits((6, 5), masked=False), t, **options)  # binds the key
    value, grad = _value_and_grad(el.focal, z, t, **options)
    assert used["log_p"] == [True, True]  # (torch's log p, then the value read)
    assert math.isinf(value.sum().item()) and torch.isfinite(grad).all()
    function_value, function_grad = _maths(monkeypatch, el.focal, z, t, **options)
    assert torch.equal(value, function_value) and torch.equal(grad, function_grad)


@pytest.mark.parametrize("mask", ["finfo.min", "-1e38", "-inf"])
@pytest.mark.parametrize("name, options", [("min_ent", {"reduction": "sum"}),
                                           ("min_ent", {"entropy_weight": 4.0}),
                                           ("mix_ent", {"reduction": "sum"}),
                                           ("poly1", {"reduction": "sum"})],
                         ids=["min_ent-sum", "min_ent-weight-4", "mix_ent-sum", "poly1-sum"])
def test_classes_masked_with_a_finite_number_keep_the_floor(name, options, mask, used,
                                                           monkeypatch):
    """A class masked with ``finfo.min`` (or -1e38) has a finite log p far below the
    floor: the floor is kept (the least entry of log p is read, not only -inf), else
    ``g * log p`` overflows under a cotangent above 1 (a loss scale, a sum) and 0 * -inf
    spreads NaN over the row (found by review). The math's gradient, finite, first call
    and bound, also under a loss scale of 1024."""
    fn = getattr(el, name)
    dtype = torch.float32
    fill = {"finfo.min": torch.finfo(dtype).min, "-1e38": -1e38, "-inf": -math.inf}[mask]
    z = _logits((6, 5), dtype, masked=False).detach()
    z[:, 3:] = fill
    z.requires_grad_()
    t = torch.tensor([0, 1, 2, 0, 1, 2])
    for _ in range(2):
        value = fn(z, t, **options)
        (grad,) = torch.autograd.grad(value * 1024.0, z)
        assert torch.isfinite(grad).all()
    assert used["log_p"] == [True, True]
    monkeypatch.setattr(torch_native, "NATIVE", False)
    unbind()
    (expected,) = torch.autograd.grad(fn(z, t, **options) * 1024.0, z)
    # (float32 gradients of some hundreds: MIX-ENT's -log eps weighs the rounding of p)
    torch.testing.assert_close(grad, expected, rtol=2e-5, atol=1e-5)
