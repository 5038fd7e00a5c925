"""A repeated torch call, bound (``_prepare.remember_call``, ``backends/torch.py``'s
``bind``) and its ops replayed (``backends/torch_plans.py``): the same numbers as the
math run call by call, bit for bit, on every loss, option and path; the target's data
still checked on every call; a call keyed by everything its Python reads."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses, _prepare
from tests.helpers.torch_paths import force_path, unbind

torch = pytest.importorskip("torch")
from entroloss.backends import torch as adapter, torch_plans  # noqa: E402

# options given as Python values (what a bound call takes), soft target or not
VARIANTS = {
    "defaults": ({}, False),
    "ignore-smoothing": ({"ignore_index": 1, "label_smoothing": 0.1}, False),
    "sum-softcap-zloss": ({"reduction": "sum", "softcap": 3.0, "z_loss": 1e-3}, False),
    "none-unchecked": ({"reduction": "none", "validate": False}, False),
    "soft-target": ({"label_smoothing": 0.05}, True),
    "denominator": ({"denominator": 4.0}, False),
}


@pytest.fixture(autouse=True)
def _unbound():
    unbind()
    yield
    unbind()


def _inputs(seed: int, soft: bool, masked: bool):
    rng = np.random.default_rng(seed)
    z = torch.tensor(rng.normal(scale=2.0, size=(6, 5)), requires_grad=True)
    if masked:  # a masked class off the target
        z.data[2, 3] = -math.inf
    target = torch.tensor(rng.permutation([0, 1, 2, 4, 1, 0]))
    if soft:
        t = rng.gamma(0.7, size=(6, 5)) + 1e-3
        target = torch.tensor(t / t.sum(-1, keepdims=True), requires_grad=True)
    return z, target


def _run(definition, options, soft, seed):
    z, target = _inputs(seed, soft, masked=not soft and "label_smoothing" not in options)
    value = getattr(el, definition.name)(z, target, **options)
    inputs = [z, target] if soft else [z]
    grads = torch.autograd.grad(value.sum(), inputs)
    return value.detach(), *grads


@pytest.mark.parametrize("autograd", [True, False], ids=["autograd", "function"])
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_a_bound_call_gives_the_maths_numbers_bit_for_bit(definition, variant, autograd,
                                                          monkeypatch):
    """The first call binds; it and two repetitions on other tensors of the same key give
    exactly what the math gives run call by call (``bind`` switched off)."""
    options, soft = VARIANTS[variant]
    options = {**definition.example, **options}
    force_path(monkeypatch, autograd)
    bound = [_run(definition, options, soft, seed) for seed in (1, 2, 3)]
    # a capped call on the Function path goes through NumPy on CPU, which no recording
    # replays: unbound, and never recorded again
    z, target = _inputs(1, soft, masked=False)
    every = _prepare.with_defaults(definition.name, _prepare.defaults(definition), options)
    spec = _prepare.prepare(definition, z, target, every).spec
    refused = "softcap" in options and not adapter.uses_autograd(spec, z)
    assert len(_prepare.BOUND_CALLS) == (0 if refused else 1)
    assert list(_prepare._SEEN.values()) == ([-1] if refused else [])
    monkeypatch.setattr(adapter, "bind", lambda *args: None)
    _prepare.BOUND_CALLS.clear()
    for seed, got in zip((1, 2, 3), bound, strict=True):
        expected = _run(definition, options, soft, seed)
        assert not _prepare.BOUND_CALLS
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a.isnan(), b.isnan())
            assert torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)), (seed, a, b)


def test_a_call_is_bound_on_its_second_call(monkeypatch):
    """Users' calls bind on their second call (the suite's on their first): logits whose
    shape changes every step never pay a recording."""
    monkeypatch.setattr(_prepare, "BIND_AFTER", 2)
    recorded = []
    record = torch_plans.record
    monkeypatch.setattr(torch_plans, "record", lambda *a: recorded.append(1) or record(*a))
    y = torch.tensor([0, 2, 1])
    for _ in range(3):  # (smoothed: plain cross entropy is torch's nll_loss, no recording)
        el.cross_entropy(torch.randn(3, 4), y, label_smoothing=0.1)
    assert len(_prepare.BOUND_CALLS) == 1 and len(recorded) == 1
    for classes in range(5, 9):  # a new shape each call
        el.cross_entropy(torch.randn(3, classes), y, label_smoothing=0.1)
    assert len(_prepare.BOUND_CALLS) == 1 and len(recorded) == 1


def test_a_refused_key_is_not_recorded_again(monkeypatch):
    recorded = []
    record = torch_plans.record
    monkeypatch.setattr(torch_plans, "record", lambda *a: recorded.append(1) or record(*a))
    z, y = torch.randn(4, 3, requires_grad=True), torch.tensor([0, 1, 2, 1])
    for _ in range(3):
        el.focal(z, y, softcap=5.0).backward()  # the cap through NumPy: refused
    assert not _prepare.BOUND_CALLS and len(recorded) == 1


@pytest.mark.parametrize("loss", ["cross_entropy", "focal", "min_ent", "mix_ent"])
def test_one_tensor_as_logits_and_target_is_no_recording(loss, monkeypatch):
    """The logits given as their own soft target: a recording could not tell the two
    apart for the key's later calls. Such a call is never recorded, forward or backward
    (found by review: the key's later calls read the target as the logits)."""
    fn = getattr(el, loss)
    rng = np.random.default_rng(3)

    def soft():
        p = rng.dirichlet(np.ones(4), size=5)
        return torch.tensor(p, requires_grad=True)

    def call(z, t):
        value = fn(z, t, validate=False)
        grads = torch.autograd.grad(value, [z, t] if t is not z else [z])
        return value.detach(), *grads

    both = soft()
    call(both, both)  # first: nothing bound
    z, t = soft(), soft()
    bound = call(z, t)
    assert len(_prepare.BOUND_CALLS) == 1
    call(both, both)  # a bound key: its backward must not record this call
    again = call(z, t)
    _prepare.BOUND_CALLS.clear()
    monkeypatch.setattr(adapter, "bind", lambda *args: None)
    expected = call(z, t)
    for got in (bound, again):
        for a, b in zip(got, expected, strict=True):
            assert torch.equal(a, b)


def test_each_path_is_bound_as_loss_chooses():
    small = torch.randn(8, 5, requires_grad=True)
    large = torch.randn(8, 2**12, requires_grad=True)
    y = torch.randint(0, 5, (8,))
    for _ in range(2):
        smoothed = el.cross_entropy(small, y, label_smoothing=0.1)
        assert type(smoothed.grad_fn).__name__ == "MeanBackward0"
        assert type(el.min_ent(small, y).grad_fn).__name__ == "MeanBackward0"
        # (the Function: above the entropy's threshold)
        assert type(el.min_ent(large, y).grad_fn).__name__ == "_ReplayedBackward"
        # (plain cross entropy is torch's own: tests/test_torch_native.py)
        assert type(el.cross_entropy(small, y).grad_fn).__name__ == "NllLossBackward0"
    assert len(_prepare.BOUND_CALLS) == 4


@pytest.mark.parametrize("loss", ["focal", "min_ent", "cross_entropy"])
def test_second_derivatives_of_a_bound_call_are_the_maths(loss, monkeypatch):
    """``create_graph=True`` through a bound call (the Function's or torch's autograd):
    the same gradient of the gradient as an unbound call, and torch's gradgradcheck."""
    fn = getattr(el, loss)
    y = torch.tensor([0, 2, 1])
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, 4, dtype=torch.float64)

    def hvp():
        (g,) = torch.autograd.grad(fn(z, y), z, create_graph=True)
        return torch.autograd.grad((g * v).sum(), z)[0]

    bound = [hvp(), hvp()]
    assert _prepare.BOUND_CALLS
    assert torch.autograd.gradgradcheck(lambda x: fn(x, y), (z,))
    monkeypatch.setattr(adapter, "bind", lambda *args: None)
    _prepare.BOUND_CALLS.clear()
    expected = hvp()
    for got in bound:
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_a_repeated_call_still_checks_its_target():
    """What prepare reads of the data is read on every bound call: a bad index or soft
    row on a repetition raises as on a first call."""
    z = torch.randn(4, 3, requires_grad=True)
    el.cross_entropy(z, torch.tensor([0, 1, 2, 1]))
    assert _prepare.BOUND_CALLS
    with pytest.raises(ValueError, match="class index 3, outside"):
        el.cross_entropy(z, torch.tensor([0, 1, 3, 1]))
    with pytest.raises(ValueError, match="ignore_index=-100"):
        el.cross_entropy(z, torch.tensor([0, -100, 2, 1]))
    soft = torch.full((4, 3), 1 / 3)
    el.min_ent(z, soft)
    with pytest.raises(ValueError, match="sum"):
        el.min_ent(z, soft * 2)


@pytest.mark.parametrize("nan_row", [False, True], ids=["", "nan-row"])
@pytest.mark.parametrize("path", ["autograd", "function"])
@pytest.mark.parametrize("ignore_index", [None, -100, -1], ids=lambda i: f"ignore={i}")
@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_a_bound_call_refuses_every_bad_index(definition, ignore_index, path, nan_row,
                                              monkeypatch):
    """On the CPU a bound call leaves an index's range to the op that reads it (gather,
    nll_loss raise on one outside [0, C); torch_native.target_check): whatever the path
    (and where a NaN row sends the call from torch's log p to the math's), every bad index
    still raises our message, one equal to nll_loss's own ignore_index (-100) too, and
    the call then gives the math's numbers again."""
    force_path(monkeypatch, path == "autograd")
    loss = getattr(el, definition.name)
    options = {} if ignore_index is None else {"ignore_index": ignore_index}
    z = torch.randn(6, 5, dtype=torch.float64)
    if nan_row:
        z[3] = math.nan
    z.requires_grad_()
    good = torch.tensor([0, 1, 2, 4, 1, 0 if ignore_index is None else ignore_index])
    expected = loss(z, good, **options).detach()  # binds the key
    assert _prepare.BOUND_CALLS
    for bad in (5, 9, -5, -100):
        if bad == ignore_index:
            continue
        target = good.clone()
        target[2] = bad
        with pytest.raises(ValueError, match=re.escape(f"class index {bad}, outside [0, 5)")):
            loss(z, target, **options)
    torch.testing.assert_close(loss(z, good, **options).detach(), expected, rtol=0, atol=0,
                               equal_nan=True)


def test_a_call_is_bound_under_the_options_it_gives():
    """A key holds each option's type and value: ``validate=1`` is refused after a bound
    ``validate=True``; another smoothing, dtype or shape is another call."""
    z = torch.randn(4, 3, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 1])
    el.cross_entropy(z, y, validate=True)
    with pytest.raises(TypeError, match="validate must be"):
        el.cross_entropy(z, y, validate=1)
    a = el.cross_entropy(z, y, label_smoothing=0.1)
    b = el.cross_entropy(z, y, label_smoothing=0.2)
    reference = [el.value_and_grad(el.cross_entropy, z, y, label_smoothing=s)[0] for s in (0.1, 0.2)]
    assert float(a) == pytest.approx(float(reference[0]), rel=1e-14) and float(a) != float(b)
    assert float(b) == pytest.approx(float(reference[1]), rel=1e-14)
    c = el.cross_entropy(z.float(), y, label_smoothing=0.1)
    assert c.dtype == torch.float32
    el.cross_entropy(z[:3], y[:3], label_smoothing=0.1)
    assert len(_prepare.BOUND_CALLS) == 5


def test_a_bound_call_takes_other_layouts_and_autocast():
    """The key holds no strides (the recorded ops read none) and autocast is switched off
    on every call, as on an unbound one."""
    y = torch.tensor([0, 2, 1])
    z = torch.randn(3, 4, dtype=torch.float64)
    transposed = z.T.contiguous().T  # the same numbers, other strides
    assert transposed.stride() != z.stride()
    assert float(el.min_ent(z, y)) == float(el.min_ent(transposed, y))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = el.cross_entropy(z.float(), y)
    assert under.dtype == torch.float32
    assert float(under) == float(el.cross_entropy(z.float(), y))


@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_cpu_autocast_changes_no_number_of_a_bound_call(definition):
    """With torch's log p (the CPU, float32) a bound call asks no autocast question:
    CPU autocast casts neither float32 nor float64 down, so every op after log p is as
    without it: the value and gradient under autocast are those without, bit for bit."""
    loss = getattr(el, definition.name)
    y = torch.tensor([0, 2, 1, 3])
    z = torch.randn(4, 5)

    def run():
        x = z.clone().requires_grad_()
        value = loss(x, y)
        return value.detach(), torch.autograd.grad(value, x)[0]
    plain = [run(), run()]  # the second bound
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = [run(), run()]
    for got in (*plain[1:], *under):
        for a, b in zip(got, plain[0], strict=True):
            assert a.dtype == torch.float32 and torch.equal(a, b)


def test_a_bound_call_keeps_no_tensor_of_its_calls():
    """What is bound is ops and Python values: the first call's logits and target (and
    their graph) are freed with the caller's last reference."""
    import gc
    import weakref

    for loss in (el.cross_entropy, el.focal):  # torch's autograd, the Function
        z = torch.randn(5, 4, requires_grad=True)
        y = torch.tensor([0, 1, 2, 3, 1])
        loss(z, y).backward()
        loss(z, y).backward()
        refs = [weakref.ref(z), weakref.ref(y)]
        del z, y
        gc.collect()
        assert _prepare.BOUND_CALLS and all(r() is None for r in refs), loss


def test_calls_with_arrays_or_large_logits_are_not_bound():
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 1])
    el.cross_entropy(z, y, weight=torch.ones(3))
    el.min_ent(z, y, entropy_weight=torch.tensor(0.5))
    el.cross_entropy(z, y, sample_weight=torch.ones(4))
    el.cross_entropy(z, y, chunk_size=2)
    assert not _prepare.BOUND_CALLS
    from entroloss.backends import torch_kernels

    el.cross_entropy(torch.zeros(2, torch_kernels.BLOCK_ELEMENTS), torch.tensor([0, 1]))
    assert not _prepare.BOUND_CALLS


def test_the_bound_calls_are_bounded(monkeypatch):
    monkeypatch.setattr(_prepare, "BOUND_CALLS_MAX", 4)
    for rows in range(1, 12):
        el.cross_entropy(torch.zeros(rows, 3), torch.zeros(rows, dtype=torch.long))
        assert 0 < len(_prepare.BOUND_CALLS) <= 4


# --- the recorder -------------------------------------------------------------------------


def test_a_plan_replays_the_recorded_ops_on_new_tensors():
    a, b = torch.randn(3, 4), torch.randn(4)
    f = lambda x, y: ((x * 2.0 + y).exp().sum(-1), (x.max(-1), None, 1.5))  # noqa: E731
    plan = torch_plans.record(lambda: f(a, b), (a, b))
    c, d = torch.randn(3, 4), torch.randn(4)
    got, expected = plan(c, d), f(c, d)
    assert torch.equal(got[0], expected[0])
    assert torch.equal(got[1][0].values, expected[1][0].values)
    assert got[1][1:] == (None, 1.5)


def _ops(plan) -> list[str]:
    """The names of the callables a plan runs, in order."""
    return [getattr(f, "__name__", repr(f)) for name, f in plan.run.__globals__.items()
            if name.startswith("k") and name[1:].isdigit() and callable(f)
            and f"= {name}(" in plan.source]


def _graph(value) -> list[str]:
    """The autograd nodes behind ``value``, by name (the leaves' accumulators left out)."""
    seen, stack = set(), [value.grad_fn]
    while stack:
        node = stack.pop()
        if node is not None and node not in seen:
            seen.add(node)
            stack.extend(next_node for next_node, _ in node.next_functions)
    return sorted(type(n).__name__ for n in seen if type(n).__name__ != "AccumulateGrad")


@pytest.mark.parametrize("loss", _losses.LOSSES, ids=lambda d: d.name)
def test_a_bound_call_records_no_more_autograd_nodes_than_the_users_composition(loss):
    """At a small model's size every node is a share of its training step: a bound call's
    graph (the options the benchmarks time) is no larger than what the user would write
    (``tools.baselines``). MIN-ENT and MIX-ENT: one node fewer (the entropy's negation
    folded into its weight; the reverse term's levels one product)."""
    from entroloss.tools.baselines import bound, torch_user_baseline

    z = torch.randn(256, 10, requires_grad=True)
    y = torch.randint(0, 10, (256,))
    ours, user = bound(loss), torch_user_baseline(loss)
    for _ in range(2):
        ours(z, y)
    assert _prepare.BOUND_CALLS
    mine, theirs = _graph(ours(z, y)), _graph(user(z, y))
    assert len(mine) <= len(theirs), (mine, theirs)
    if loss.name in ("min_ent", "mix_ent"):
        assert len(mine) == len(theirs) - 1 and "NegBackward0" not in mine, mine
        assert torch.allclose(ours(z, y), user(z, y), rtol=1e-5)


def test_a_plan_folds_a_negation_into_the_product_that_reads_it():
    """``-s * c`` is ``s * -c``, bit for bit, value and gradient: one op fewer forward and
    backward (the entropy term's ``-sum(p log p)`` times its weight)."""
    x = torch.randn(64, 7, dtype=torch.float64)
    f = lambda x: (-(x.exp() * x).sum(-1)).mul(0.3) + x[:, 0]  # noqa: E731
    plan = torch_plans.record(lambda: f(x), (x,))
    assert _ops(plan) == ["exp", "mul", "sum", "mul", "__getitem__", "add"]
    a, b = (torch.randn(64, 7, dtype=torch.float64, requires_grad=True) for _ in range(2))
    with torch.no_grad():
        b.copy_(a)
    got, want = plan(a), f(b)
    assert torch.equal(got, want)
    got.sum().backward()
    want.sum().backward()
    assert torch.equal(a.grad, b.grad)


def test_a_negation_read_twice_or_by_another_op_stays():
    x = torch.randn(5)
    twice = torch_plans.record(lambda: (-x) * 2.0 + (-x), (x,))
    assert _ops(twice).count("neg") == 1
    assert torch.equal(twice(x), (-x) * 2.0 + (-x))
    product_of_tensors = torch_plans.record(lambda: (-x) * x, (x,))
    assert _ops(product_of_tensors) == ["neg", "mul"]
    # an integer's negation is not exact (at its least value; an unsigned one wraps)
    for dtype in (torch.int64, torch.uint8):
        i = torch.tensor([0, 1, 2, torch.iinfo(dtype).min], dtype=dtype)
        integer = torch_plans.record(lambda: (-i) * 2.0, (i,))  # noqa: B023
        assert _ops(integer) == ["neg", "mul"]
        assert torch.equal(integer(i), (-i) * 2.0)
    # the int 0 has no sign: -x * 0 is -0.0 where x > 0, x * -0 is +0.0
    by_int = torch_plans.record(lambda: (-x) * 0, (x,))
    assert _ops(by_int) == ["neg", "mul"]
    assert torch.equal(torch.signbit(by_int(x)), torch.signbit((-x) * 0))


def test_a_negation_is_not_folded_past_a_write_to_what_it_negated():
    """``n = -y; y += 10; n * 2``: the product reads ``-y`` as it was (found by review)."""
    def f(x):
        y = x.clone()
        n = y.neg()
        y.add_(10.0)
        return n.mul(2.0)
    x = torch.randn(5)
    plan = torch_plans.record(lambda: f(x), (x,))
    assert "neg" in _ops(plan)
    assert torch.equal(plan(x), f(x))


def test_a_plan_runs_only_the_ops_its_result_reads():
    """What the math computes for its own backward alone (MIX-ENT's log p at the target)
    is not run where autograd differentiates; an op in place is always run."""
    x = torch.randn(4, 3)

    def f(x):
        unread = x.neg().exp()  # noqa: F841
        buffer = torch.zeros_like(x)
        buffer.add_(x)  # read through buffer, written in place
        return buffer * 2.0
    plan = torch_plans.record(lambda: f(x), (x,))
    assert _ops(plan) == ["zeros_like", "add_", "mul"]
    y = torch.randn(4, 3)
    assert torch.equal(plan(y), f(y))
    # an op that may raise on a value (an index out of range) runs though nothing reads it
    index = torch.tensor([[0], [2], [1], [0]])
    checked = torch_plans.record(lambda: (x.gather(-1, index), x * 2.0)[1], (x, index))
    assert _ops(checked) == ["gather", "mul"]
    with pytest.raises(RuntimeError, match="out of bounds"):
        checked(x, torch.tensor([[0], [2], [7], [0]]))


@pytest.mark.parametrize("reads", ["item", "bool", "stride", "contiguous", "requires_grad",
                                   "numpy", "a tensor not given"])
def test_a_function_that_reads_more_than_the_key_is_not_recorded(reads):
    """Values, layout and autograd state are not in a bound call's key: a function that
    reads one is not replayed (record gives None, the caller runs the math)."""
    x, other = torch.randn(3), torch.randn(3)
    body = {"item": lambda: x * x.sum().item(),
            "bool": lambda: x if bool(x.sum() > 0) else -x,
            "stride": lambda: x * x.stride()[0],
            "contiguous": lambda: x if x.is_contiguous() else x.contiguous(),
            "requires_grad": lambda: x * float(x.requires_grad),
            "numpy": lambda: torch.from_numpy(x.numpy() * 2),
            "a tensor not given": lambda: x + other}[reads]
    assert torch_plans.record(body, (x,)) is None
    assert torch_plans.record(lambda: x * x.shape[0] + x.ndim, (x,)) is not None
