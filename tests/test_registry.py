"""The registry (``entroloss._losses``) is the one source of every surface: the public
functions and their docstrings, the linear heads, the torch modules, ``__all__``, the
float64 reference, bench's baselines and the error bounds. A term a consumer does not know
fails loudly; it never borrows another term's behaviour."""

from __future__ import annotations

import dataclasses
import inspect
import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _api, _docs, _linear, _losses, _prepare
from entroloss._math import terms
from entroloss.tools import baselines, reference
from tests.helpers import reliability

LOSSES = _losses.LOSSES


@pytest.mark.parametrize("definition", LOSSES, ids=lambda d: d.name)
def test_each_entry_has_its_public_function_with_its_keywords(definition):
    fn = getattr(el, definition.name)
    assert definition.name in el.__all__ and definition.name in el.LOSS_NAMES
    parameters = inspect.signature(fn).parameters
    assert list(parameters)[:2] == ["logits", "target"]
    assert all(p.kind is p.POSITIONAL_ONLY for p in list(parameters.values())[:2])
    keywords = {n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == set(definition.option_names()) | set(_prepare.COMMON)
    for scalar in definition.parameters:  # the defaults the modules and the docs rely on
        assert parameters[scalar.name].default == scalar.default
    assert fn.__name__ == definition.name
    # the docstring is written from the entry: its formula, every keyword, its example
    assert definition.formula in fn.__doc__ and definition.doc_example[0] in fn.__doc__
    for name in keywords:
        assert f"\n    {name}: " in fn.__doc__, name


@pytest.mark.parametrize("definition", LOSSES, ids=lambda d: d.name)
def test_each_entry_has_its_linear_head_and_module(definition):
    head = getattr(el, f"linear_{definition.name}")
    assert head.__name__ in el.__all__
    keywords = set(inspect.signature(head).parameters) - {"hidden", "classifier", "target"}
    assert keywords == (set(definition.option_names()) | set(_prepare.COMMON) | {"bias"}) - {"axis"}
    assert head in _linear.PUBLIC
    torch_modules = pytest.importorskip("entroloss.backends.torch")
    module = getattr(torch_modules, definition.module)
    assert module.definition is definition and definition.module in torch_modules.__all__
    assert set(definition.scalars) <= set(inspect.signature(module).parameters)
    assert definition.summary in module.__doc__


@pytest.mark.parametrize("definition", LOSSES, ids=lambda d: d.name)
def test_each_entry_computes_its_instance_of_the_formula(definition):
    # uniform logits over 4 classes: p = 1/4 everywhere; CE = H = ln 4; the closed forms
    z, y = np.zeros((2, 4)), np.array([1, 3])
    o = definition.defaults()
    gamma = o["gamma"] if definition.gamma is None else definition.gamma
    main = (3 / 4) ** gamma * math.log(4)
    regularizer = {None: 0.0, "entropy": math.log(4),
                   "reverse": -(math.log(1 + 1e-6) + 3 * math.log(1e-6)) / 4,
                   "poly": 3 / 4}
    reg = definition.regularizer
    weight = next((s.default for s in definition.parameters if s.slot == "reg_weight"), 0.0)
    expected = main + weight * regularizer[None if reg is None else reg.name]
    assert float(getattr(el, definition.name)(z, y)) == pytest.approx(expected, rel=1e-12)
    assert float(reference.loss(definition.name, z, y)) == pytest.approx(expected, rel=1e-12)


def test_unknown_keyword_and_misplaced_arguments_name_the_loss():
    z, y = np.zeros((2, 4)), np.array([1, 3])
    with pytest.raises(TypeError, match=r"min_ent\(\) got an unexpected keyword argument 'bogus'"):
        el.min_ent(z, y, bogus=1)
    with pytest.raises(TypeError, match=r"min_ent\(\) takes 2 positional arguments"):
        el.min_ent(z, y, 0.1)
    with pytest.raises(TypeError, match=r"focal\(\) missing 1 required positional argument"):
        el.focal(z)
    with pytest.raises(TypeError, match="unexpected keyword argument 'gamma'"):
        el.value_and_grad(el.cross_entropy, z, y, gamma=2.0)
    with pytest.raises(TypeError, match="linear_value_and_grad"):
        el.value_and_grad(el.linear_min_ent, z, y)


def test_by_name_lists_the_losses_when_it_does_not_know_one():
    assert _losses.by_name("mix_ent") is _losses.MIX_ENT
    with pytest.raises(ValueError, match=", ".join(el.LOSS_NAMES)):
        _losses.by_name("MIN-ENT")


# --- a term no consumer knows fails loudly ----------------------------------------------------


def _dummy_term(**changes):
    """A made-up term, ``G = 7`` per position: distinct from every real term's numbers, so
    that a consumer that fell through to another term's behaviour would be seen."""
    fields = dict(
        name="dummy", symbol="D", formula="D = 7",
        reference=lambda x: 7.0,
        user=lambda m, lp, t, o: 0 * lp.sum(-1) + 7.0,
        user_gradient=lambda m, lp, p, t, v, o: 0 * p,
        user_text="7", bound=lambda num, o: 1234.0, minimum=lambda o: 7.0,
        reads_target=False)
    fields.update(changes)
    return _losses.Term(**fields)


def _dummy_loss(term):
    return _losses.LossDef(
        name="dummy_loss", label="dummy", module="DummyLoss", summary="A dummy.",
        formula="l = CE + dummy_weight * s * D",
        parameters=(_losses.Scalar("dummy_weight", "reg_weight", 0.5, "its weight."),),
        regularizer=term, example={"dummy_weight": 0.5}, doc_example=("", ""))


def test_a_term_without_its_vectorised_math_is_refused_when_registered():
    with pytest.raises(KeyError, match="dummy"):
        _dummy_loss(_dummy_term())


def test_a_term_missing_any_part_cannot_be_made():
    for missing in ("reference", "user", "user_gradient", "bound", "minimum"):
        fields = {f.name: getattr(_dummy_term(), f.name) for f in dataclasses.fields(_losses.Term)}
        del fields[missing]
        with pytest.raises(TypeError, match=missing):
            _losses.Term(**fields)


def test_a_loss_whose_options_are_not_its_terms_is_refused():
    with pytest.raises(TypeError, match="eps"):
        dataclasses.replace(_losses.MIX_ENT, options=())
    with pytest.raises(TypeError, match="slot"):
        dataclasses.replace(_losses.MIN_ENT, parameters=_losses.MIN_ENT.parameters * 2)


def test_every_consumer_reads_a_new_term_from_its_entry(monkeypatch):
    # the dummy's math is the entropy's, its every other part its own: each consumer must
    # give the dummy's numbers (7, bound 1234), not the entropy's or any other term's
    monkeypatch.setitem(terms.REGULARIZERS, "dummy", terms.REGULARIZERS["entropy"])
    definition = _dummy_loss(_dummy_term())
    monkeypatch.setattr(_losses, "LOSSES", (*LOSSES, definition))
    z, y = np.zeros((2, 4)), np.array([1, 3])
    ce = math.log(4)
    # the reference
    assert float(reference.loss("dummy_loss", z, y)) == pytest.approx(ce + 0.5 * 7.0)
    # the error bound of the precision tests
    scale = reliability.coefficient_scale("dummy_loss", z, y, {"reduction": "sum"})
    np.testing.assert_allclose(scale, 2.0 + 0.5 * 1234.0)
    # bench's baselines: the torch/JAX composition and the hand-written NumPy one
    value, grad = baselines.hand_written(np, definition, z, y)
    assert float(value) == pytest.approx(ce + 0.5 * 7.0)
    assert "7" in baselines._user_text(definition)
    # the public function, its docstring and the linear head come from the entry
    fn = _api._make(definition)
    assert fn.__name__ == "dummy_loss" and "D = 7" in fn.__doc__
    assert "dummy_weight" in inspect.signature(fn).parameters
    assert float(fn(z, y, dummy_weight=0.0)) == pytest.approx(ce)
    assert "dummy_weight" in _docs.linear(definition)
