"""Every bad-input rule (docs/reliability.md, "Errors"): the exception type, a message
naming the argument, and no loss work started before it is raised."""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses, _math, _prepare
from tests.helpers.cases import LOSSES
from tests.helpers.platforms import needs


@pytest.fixture(autouse=True)
def no_work(monkeypatch):
    """Any loss evaluation reached during these tests is a failure of 'before any work'."""
    refuse_work(monkeypatch)


def refuse_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loss work started before the bad input was refused")

    monkeypatch.setattr(_math, "forward", refuse)


@pytest.fixture
def ok(backend):
    """Valid inputs: logits (4, 3), class indices, soft targets."""
    return (
        backend.asarray(np.zeros((4, 3))),
        backend.asarray(np.array([0, 1, 2, 1])),
        backend.asarray(np.full((4, 3), 1 / 3)),
    )


@pytest.fixture(params=LOSSES)
def loss(request):
    return getattr(el, request.param)


def raises(exc, name, fn, *args, **kwargs):
    with pytest.raises(exc) as info:
        fn(*args, **kwargs)
    assert name in str(info.value), f"message does not name {name!r}: {info.value}"


def test_non_floating_logits(backend, ok, loss):
    raises(TypeError, "logits", loss, backend.asarray(np.zeros((4, 3), dtype=np.int64)), ok[1])
    raises(TypeError, "logits", loss, backend.asarray(np.zeros((4, 3), dtype=bool), "bool"), ok[1])


def test_logits_that_are_not_arrays(ok, loss):
    raises(TypeError, "logits", loss, [[0.0, 1.0]], ok[1])


def test_zero_dimensional_logits(backend, ok, loss):
    raises(ValueError, "logits", loss, backend.asarray(1.0), ok[1])


def test_zero_classes(backend, loss):
    raises(ValueError, "classes", loss, backend.asarray(np.zeros((4, 0))),
           backend.asarray(np.zeros(4, dtype=np.int64)))


def test_target_of_wrong_dtype(backend, ok, loss):
    raises(TypeError, "target", loss, ok[0], backend.asarray(np.zeros(4, dtype=bool), "bool"))


def test_target_of_wrong_shape(backend, ok, loss):
    raises(ValueError, "target", loss, ok[0], backend.asarray(np.array([0, 1, 2])))
    raises(ValueError, "target", loss, ok[0], backend.asarray(np.zeros((4, 3, 1), dtype=np.int64)))
    raises(ValueError, "soft target", loss, ok[0], backend.asarray(np.full((4, 2), 0.5)))


@pytest.mark.parametrize("bad", [3, -1, 100])
def test_class_index_out_of_range(backend, ok, loss, bad):
    target = backend.asarray(np.array([0, bad, 2, 1]))
    raises(ValueError, f"class index {bad}", loss, ok[0], target)
    raises(ValueError, "target", loss, ok[0], target, ignore_index=-100)


def test_ignore_index_is_allowed_out_of_range(backend, ok, loss, monkeypatch):
    monkeypatch.undo()
    target = backend.asarray(np.array([0, -100, 2, 1]))
    assert math.isfinite(float(loss(ok[0], target, ignore_index=-100)))


def test_validate_false_skips_the_data_checks(backend, ok, loss, monkeypatch):
    monkeypatch.undo()
    soft = backend.asarray(np.full((4, 3), 0.5))  # rows sum to 1.5
    loss(ok[0], soft, validate=False)  # no error: the data is not read
    raises(ValueError, "sum to 1", loss, ok[0], soft)


def test_soft_target_negative_or_not_summing_to_one(backend, ok, loss):
    negative = np.full((4, 3), 1 / 3)
    negative[1] = [1.5, -0.5, 0.0]
    raises(ValueError, "non-negative", loss, ok[0], backend.asarray(negative))
    raises(ValueError, "sum to 1", loss, ok[0], backend.asarray(np.full((4, 3), 0.3)))
    nan = np.full((4, 3), 1 / 3)
    nan[0, 0] = np.nan
    raises(ValueError, "soft target", loss, ok[0], backend.asarray(nan))


def test_ignore_index_with_soft_target(ok, loss):
    raises(ValueError, "ignore_index", loss, ok[0], ok[2], ignore_index=0)


def test_ignore_index_outside_the_target_dtype(backend, ok, loss):
    """-100 cannot occur in a uint8 target (a cast would have wrapped it to 156)."""
    small = backend.asarray(np.array([0, 1, 2, 1], dtype=np.uint8))
    raises(ValueError, "ignore_index=-100", loss, ok[0], small, ignore_index=-100)
    raises(ValueError, "ignore_index=300", loss, ok[0], small, ignore_index=300)


def test_chunk_size(ok, loss):
    raises(ValueError, "chunk_size", loss, ok[0], ok[1], chunk_size=0)
    raises(ValueError, "chunk_size", loss, ok[0], ok[1], chunk_size=-4)
    raises(TypeError, "chunk_size", loss, ok[0], ok[1], chunk_size=2.0)
    raises(TypeError, "chunk_size", loss, ok[0], ok[1], chunk_size=True)


def test_ignore_index_type(ok, loss):
    raises(TypeError, "ignore_index", loss, ok[0], ok[1], ignore_index=1.5)


def test_weight(backend, ok, loss):
    raises(ValueError, "weight", loss, ok[0], ok[1], weight=backend.asarray(np.ones(4)))
    raises(ValueError, "weight", loss, ok[0], ok[1], weight=backend.asarray(np.array([1.0, -1, 1])))
    raises(TypeError, "weight", loss, ok[0], ok[1], weight=backend.asarray(np.ones(3, dtype=np.int64)))
    raises(TypeError, "weight", loss, ok[0], ok[1], weight=[1.0, 1.0, 1.0])


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_label_smoothing_outside_unit_interval(ok, loss, value):
    raises(ValueError, "label_smoothing", loss, ok[0], ok[1], label_smoothing=value)


def test_label_smoothing_type(ok, loss):
    raises(TypeError, "label_smoothing", loss, ok[0], ok[1], label_smoothing="0.1")


def test_unknown_reduction(ok, loss):
    raises(ValueError, "reduction", loss, ok[0], ok[1], reduction="avg")


@pytest.mark.parametrize("value", [0.0, -2.0, 1.0, math.inf, math.nan])
def test_bad_base(backend, ok, loss, value):
    for name in _losses.by_name(loss.__name__).bases:
        raises(ValueError, name, loss, ok[0], ok[1], **{name: value})
        raises(ValueError, name, loss, ok[0], ok[1], **{name: backend.asarray(value)})


def test_base_and_weight_types(backend, ok):
    raises(TypeError, "ce_weight", el.min_ent, ok[0], ok[1], ce_weight="1")
    raises(TypeError, "entropy_weight", el.min_ent, ok[0], ok[1], entropy_weight=True)
    raises(ValueError, "reverse_weight", el.mix_ent, ok[0], ok[1], reverse_weight=math.inf)
    raises(ValueError, "entropy_base", el.min_ent, ok[0], ok[1],
           entropy_base=backend.asarray(np.array([2.0, 3.0])))
    raises(TypeError, "base", el.cross_entropy, ok[0], ok[1],
           base=backend.asarray(np.array(2, dtype=np.int64)))


@pytest.mark.parametrize("value", [0.0, -1e-6, math.nan, math.inf])
def test_bad_eps(ok, value):
    raises(ValueError, "eps", el.mix_ent, ok[0], ok[1], eps=value)


@pytest.mark.parametrize("value", [-0.5, math.inf, math.nan])
def test_bad_gamma(ok, value):
    raises(ValueError, "gamma", el.focal, ok[0], ok[1], gamma=value)


@pytest.mark.parametrize("axis", [2, -3, 7])
def test_axis_out_of_range(ok, loss, axis):
    raises(ValueError, "axis", loss, ok[0], ok[1], axis=axis)


def test_axis_type(ok, loss):
    raises(TypeError, "axis", loss, ok[0], ok[1], axis=1.0)


def test_validate_type(ok, loss):
    raises(TypeError, "validate", loss, ok[0], ok[1], validate="no")


@needs("array_api_strict")
def test_mixed_libraries(backend, ok, loss):
    # JAX takes NumPy arrays (as jnp does); every other pair of libraries is refused
    numpy_is_foreign = backend.library not in ("numpy", "jax")
    other = np.array([0, 1, 2, 1]) if numpy_is_foreign else _strict_array([0, 1, 2, 1])
    raises(TypeError, "target", loss, ok[0], other)
    raises(TypeError, "target", loss, ok[0], [0, 1, 2, 1])


@needs("array_api_strict")
def test_mixed_devices(ok, loss):
    import array_api_strict as xp

    logits = xp.zeros((4, 3), dtype=xp.float64)
    elsewhere = xp.asarray([0, 1, 2, 1], device=xp.Device("device1"))
    raises(ValueError, "device", loss, logits, elsewhere)
    weight = xp.ones(3, dtype=xp.float64, device=xp.Device("device1"))
    raises(ValueError, "weight", loss, logits, xp.asarray([0, 1, 2, 1]), weight=weight)


def test_entropy_and_softmax_validate_too(backend):
    raises(TypeError, "logits", el.entropy, backend.asarray(np.zeros(3, dtype=np.int64)))
    raises(ValueError, "axis", el.softmax, backend.asarray(np.zeros(3)), axis=1)
    raises(ValueError, "logits", el.log_softmax, backend.asarray(0.0))
    raises(ValueError, "base", el.entropy, backend.asarray(np.zeros(3)), base=1.0)


def _strict_array(values):
    import array_api_strict as xp

    return xp.asarray(values)


def test_a_call_seen_before_still_reads_its_data(backend, ok, loss, monkeypatch):
    """A repeated call takes its static part from a cache (keyed on the options' values
    and the arrays' type, dtype, shape and device): the checks that read the data and
    those of options given as arrays still run on every call, before any work."""
    monkeypatch.undo()
    eager = dict(validate="eager")  # the data is read on every device
    weight = backend.asarray(np.ones(3))
    for target in ok[1:]:
        loss(ok[0], target, **eager)
        loss(ok[0], target, weight=weight, **eager)
    refuse_work(monkeypatch)
    raises(ValueError, "class index 3", loss, ok[0], backend.asarray(np.array([0, 3, 2, 1])), **eager)
    raises(ValueError, "sum to 1", loss, ok[0], backend.asarray(np.full((4, 3), 0.3)), **eager)
    raises(ValueError, "weight", loss, ok[0], ok[1], weight=backend.asarray(np.array([1.0, -1, 1])),
           **eager)
    raises(ValueError, "weight", loss, ok[0], ok[1], weight=backend.asarray(np.ones(4)), **eager)
    raises(ValueError, "reduction", loss, ok[0], ok[1], reduction="avg", **eager)


def test_the_cache_of_static_parts_stays_bounded(monkeypatch):
    monkeypatch.undo()
    for rows in range(1, 2 * _prepare.STATIC_CALLS_MAX):
        el.cross_entropy(np.zeros((rows, 2)), np.zeros(rows, dtype=np.int64))
    assert 0 < len(_prepare.STATIC_CALLS) <= _prepare.STATIC_CALLS_MAX
