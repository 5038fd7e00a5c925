"""torch's own CrossEntropyLoss module cases, run against entroloss.

Source: ``torch/testing/_internal/common_modules.py`` (torch 2.x),
``module_inputs_torch_nn_CrossEntropyLoss`` (the inputs, constructor kwargs and
descriptions, ported below case by case) and ``module_error_inputs_torch_nn_CrossEntropyLoss``
(the inputs torch refuses); the expected values come from
``torch/testing/_internal/common_nn.py``, ``cross_entropy_loss_reference`` and its two
helpers (ported as ``_reference`` below), and from ``torch.nn.CrossEntropyLoss`` /
``torch.nn.functional.cross_entropy`` themselves (values and gradients).

torch's module tests draw their tensors with ``torch.testing.make_tensor`` (public API):
floats uniform in [-9, 9] (the class weights too), class indices in [0, 3). We do the same,
seeded per case, so every case is reproducible. Nothing here imports torch's internal
testing modules.
"""

from __future__ import annotations

import zlib

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402
from torch.testing import make_tensor  # noqa: E402

import entroloss as el  # noqa: E402
from entroloss.backends.torch import CrossEntropyLoss  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}
# relative tolerance from the dtype: a few hundred ulps for float64, ~100 ulps for float32
RTOL = {torch.float64: 1e-12, torch.float32: 1e-5}

REDUCTIONS = ["mean", "sum", "none"]
# (desc, constructor kwargs) as in module_inputs_torch_nn_CrossEntropyLoss; "weights" is
# make_weight((3,)), drawn per case below
KWARG_CASES = [
    ("", {}),
    ("weights", {"weight": "make_weight((3,))"}),
    ("ignore_index", {"ignore_index": 1}),
    ("label_smoothing", {"label_smoothing": 0.15}),
    ("ignore_index_label_smoothing", {"ignore_index": 1, "label_smoothing": 0.15}),
]
# (desc prefix, input shape, target): "index" targets have the input's shape minus dim 1
# (make_target(..., low=0, high=3)); "prob" targets are make_input(shape).softmax(dim=1)
INPUT_CASES = [
    ("4d", (2, 3, 5, 5), "index"),
    ("3d", (2, 3, 5), "index"),
    ("2d", (2, 3), "index"),
    ("higher_dim", (2, 3, 5, 5, 2, 2), "index"),
    # only for the kwargs without ignore_index:
    ("4d_prob_target", (5, 3, 4, 2), "prob"),
    ("3d_prob_target", (5, 3, 4), "prob"),
    ("2d_prob_target", (5, 3), "prob"),
    ("higher_dim_prob_target", (2, 3, 5, 5, 2, 2), "prob"),
    ("no_batch_dim", (3,), "index"),  # target make_target((), low=0, high=3)
]


def _cases():
    """Every ModuleInput of module_inputs_torch_nn_CrossEntropyLoss, in its order, with
    torch's ``desc`` as the id: 3 reductions x (5 kwargs x 4 index inputs + 3 kwargs x 5
    more) = 105."""
    out = []
    for reduction in REDUCTIONS:
        for desc, kwargs in KWARG_CASES:
            for prefix, shape, target in INPUT_CASES:
                extra = prefix.endswith("prob_target") or prefix == "no_batch_dim"
                if extra and kwargs.get("ignore_index") is not None:
                    continue  # torch adds these only when there is no ignore_index
                out.append((f"{prefix}_{desc}_{reduction}", reduction, desc, shape, target))
    return out


CASES = _cases()
assert len(CASES) == 105


def _make(case_id, dtype, shape, target, desc):
    """The case's input, target and weight, drawn as torch's module test draws them."""
    gen_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(zlib.crc32(case_id.encode()))
        x = make_tensor(shape, dtype=dtype, device="cpu")
        if target == "prob":
            y = make_tensor(shape, dtype=dtype, device="cpu").softmax(dim=1 if len(shape) > 1 else 0)
        else:
            y = make_tensor(shape[:1] + shape[2:] if len(shape) > 1 else (), dtype=torch.long,
                            device="cpu", low=0, high=3)
        # torch's make_weight((3,)) is uniform in [-9, 9]; entroloss refuses negative class
        # weights (a negative weight rewards a wrong prediction; docs/reliability.md), so the
        # same draw is taken as magnitudes
        weight = make_tensor((3,), dtype=dtype, device="cpu").abs() if desc == "weights" else None
    finally:
        torch.random.set_rng_state(gen_state)
    return x, y, weight


def _kwargs(reduction, desc, weight):
    kwargs = dict(KWARG_CASES[[d for d, _ in KWARG_CASES].index(desc)][1])
    kwargs["reduction"] = reduction
    if "weight" in kwargs:
        kwargs["weight"] = weight
    return kwargs


# --- the reference of common_nn.py, ported -------------------------------------------------

def _reference(input, target, weight=None, ignore_index=-100, reduction="mean",
               label_smoothing=0.0):
    """``cross_entropy_loss_reference`` of torch/testing/_internal/common_nn.py (with
    ``cross_entropy_loss_prob_target_reference`` and
    ``cross_entropy_loss_indices_target_reference``), ported; the 1-d input goes through
    ``no_batch_dim_reference_fn`` (common_modules.py): unsqueeze a batch of one, squeeze."""
    if input.dim() == 1:
        out = _reference(input.unsqueeze(0), target.unsqueeze(0), weight, ignore_index,
                         reduction, label_smoothing)
        return out.squeeze(0) if reduction == "none" else out
    log_p = torch.log_softmax(input, 1)
    C = input.size(1)
    view = (1, C) + (1,) * (input.dim() - 2)
    if input.shape == target.shape:  # probabilities
        w = torch.ones(C, dtype=input.dtype) if weight is None else weight
        if label_smoothing > 0.0:
            target = target * (1 - label_smoothing) + label_smoothing / C
        output = -(log_p * target * w.view(view)).sum(dim=1)
        return {"mean": output.mean, "sum": output.sum}.get(reduction, lambda: output)()
    nll = F.nll_loss(log_p, target, weight, ignore_index=ignore_index, reduction=reduction)
    if label_smoothing == 0.0:
        return nll
    weighted = log_p if weight is None else log_p * weight.view(view)
    smooth = -torch.sum(weighted, 1)
    ignore_mask = target == ignore_index
    smooth = smooth.masked_fill(ignore_mask, 0.0)
    if reduction == "mean":
        if weight is not None:
            ret = smooth.sum() / weight.gather(0, target.masked_select(~ignore_mask).flatten()).sum()
        else:
            ret = torch.mean(smooth.masked_select(~ignore_mask))
    elif reduction == "sum":
        ret = smooth.sum()
    else:
        ret = smooth
    return (1 - label_smoothing) * nll + ret * (label_smoothing / C)


# --- helpers -------------------------------------------------------------------------------

def _close(got, want, dtype, what):
    """Within the dtype's rtol, relative to the largest |want| (so entries near 0 in a
    vector are held to the vector's scale, not to their own)."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} vs {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} vs {want.dtype}"
    rtol = RTOL[dtype]
    scale = float(want.detach().abs().max()) if want.numel() else 0.0
    torch.testing.assert_close(got.detach(), want.detach(), rtol=rtol, atol=rtol * scale,
                               msg=lambda m: f"{what}: {m}")


def _value_and_grads(loss_fn, x, y, upstream_seed):
    """The loss and the gradients of <loss, v> w.r.t. the input (and the target, for
    probabilities), v a fixed random upstream gradient (ones-like for a scalar)."""
    x = x.detach().clone().requires_grad_(True)
    leaves = [x]
    if torch.is_floating_point(y):
        y = y.detach().clone().requires_grad_(True)
        leaves.append(y)
    out = loss_fn(x, y)
    g = torch.Generator().manual_seed(upstream_seed)
    v = torch.rand(out.shape, generator=g, dtype=out.dtype) + 0.5
    grads = torch.autograd.grad((out * v).sum(), leaves)
    return out, grads


PARAMS = [pytest.param(c, d, id=f"{c[0]}-{d}") for c in CASES for d in DTYPES]


@pytest.mark.parametrize("case, dtype_name", PARAMS)
def test_module_matches_torch_module(case, dtype_name):
    """entroloss.backends.torch.CrossEntropyLoss(**kwargs) vs torch.nn.CrossEntropyLoss(**kwargs):
    value, input gradient and (probabilities) target gradient."""
    case_id, reduction, desc, shape, target = case
    dtype = DTYPES[dtype_name]
    x, y, weight = _make(case_id, dtype, shape, target, desc)
    kwargs = _kwargs(reduction, desc, weight)
    ours, theirs = CrossEntropyLoss(**kwargs), torch.nn.CrossEntropyLoss(**kwargs)
    seed = zlib.crc32(case_id.encode()) + 1
    got, got_grads = _value_and_grads(ours, x, y, seed)
    want, want_grads = _value_and_grads(theirs, x, y, seed)
    _close(got, want, dtype, "value")
    _close(got_grads[0], want_grads[0], dtype, "d/d input")
    if len(want_grads) > 1:
        _close(got_grads[1], want_grads[1], dtype, "d/d target")


@pytest.mark.parametrize("case, dtype_name", PARAMS)
def test_module_matches_torch_reference(case, dtype_name):
    """The module against common_nn.py's cross_entropy_loss_reference (ported): the check
    torch's TestModule.test_forward makes of torch.nn.CrossEntropyLoss."""
    case_id, reduction, desc, shape, target = case
    dtype = DTYPES[dtype_name]
    x, y, weight = _make(case_id, dtype, shape, target, desc)
    kwargs = _kwargs(reduction, desc, weight)
    _close(CrossEntropyLoss(**kwargs)(x, y), _reference(x, y, **kwargs), dtype, "value")


@pytest.mark.parametrize("case, dtype_name", PARAMS)
def test_function_matches_torch_function(case, dtype_name):
    """el.cross_entropy(..., axis=1 (0 for a 1-d input), ignore_index=-100 for class
    indices) vs torch.nn.functional.cross_entropy: value and gradients."""
    case_id, reduction, desc, shape, target = case
    dtype = DTYPES[dtype_name]
    x, y, weight = _make(case_id, dtype, shape, target, desc)
    kwargs = _kwargs(reduction, desc, weight)
    ours_kwargs = dict(kwargs, axis=1 if len(shape) > 1 else 0)
    if target == "index":
        ours_kwargs.setdefault("ignore_index", -100)  # torch's default, spelled out
    seed = zlib.crc32(case_id.encode()) + 2
    got, got_grads = _value_and_grads(lambda a, b: el.cross_entropy(a, b, **ours_kwargs), x, y, seed)
    want, want_grads = _value_and_grads(lambda a, b: F.cross_entropy(a, b, **kwargs), x, y, seed)
    _close(got, want, dtype, "value")
    names = ["d/d input", "d/d target"][:len(want_grads)]  # a target gradient for probabilities
    for name, g, h in zip(names, got_grads, want_grads, strict=True):
        _close(g, h, dtype, name)


# --- module_error_inputs_torch_nn_CrossEntropyLoss: what torch refuses, we refuse -----------

def _error_cases():
    make_input = lambda shape: make_tensor(shape, dtype=torch.float64, device="cpu")  # noqa: E731
    return {
        # Non-floating-point target with same shape as input (soft-target path)
        "long_target_input_shape": ({}, lambda: (make_input((2, 3)), torch.zeros((2, 3), dtype=torch.long))),
        # Non-long target with different shape from input (class-index path)
        "float_target_index_shape": ({}, lambda: (make_input((2, 3)), make_input((2,)))),
        # Batch size mismatch
        "batch_size_mismatch": ({}, lambda: (make_input((2, 3)), torch.tensor([0, 1, 2]))),
        # Weight wrong shape
        "weight_wrong_shape": ({"weight": "make_weight((2,))"},
                               lambda: (make_input((2, 3)), torch.tensor([0, 1]))),
        # Prob target with ignore_index
        "prob_target_ignore_index": ({"ignore_index": 1},
                                     lambda: (make_input((2, 3)), make_input((2, 3)).softmax(dim=1))),
        # label_smoothing out of range
        "label_smoothing_1.5": ({"label_smoothing": 1.5},
                                lambda: (make_input((2, 3)), torch.tensor([0, 1]))),
        # Target spatial size mismatch (3D input)
        "target_spatial_mismatch": ({}, lambda: (make_input((2, 3, 5)),
                                                 torch.zeros((2, 4), dtype=torch.long))),
    }


ERROR_CASES = _error_cases()


@pytest.mark.parametrize("name", list(ERROR_CASES))
def test_module_refuses_what_torch_refuses(name):
    kwargs, inputs = ERROR_CASES[name]
    torch.manual_seed(zlib.crc32(name.encode()))
    kwargs = dict(kwargs)
    if "weight" in kwargs:
        # make_weight((2,)), made non-negative so that only the wrong shape is at fault
        kwargs["weight"] = make_tensor((2,), dtype=torch.float64, device="cpu").abs()
    x, y = inputs()
    with pytest.raises((RuntimeError, ValueError)):
        torch.nn.CrossEntropyLoss(**kwargs)(x, y)  # the peer refuses it (its own test)
    with pytest.raises((ValueError, TypeError)):
        CrossEntropyLoss(**kwargs)(x, y)
