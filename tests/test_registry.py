"""The registry (``entroloss._losses``) is what the public functions, the modules and the
JAX checks are made of: each entry has its function, its signature, its module."""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest

import entroloss as el
from entroloss import _api, _losses


@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_each_entry_has_its_public_function_with_its_keywords(definition):
    fn = getattr(el, definition.name)
    assert definition.name in el.__all__
    parameters = inspect.signature(fn).parameters
    assert list(parameters)[:2] == ["logits", "target"]
    assert all(p.kind is p.POSITIONAL_ONLY for p in list(parameters.values())[:2])
    keywords = {n for n, p in parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert keywords == set(definition.option_names()) | set(_api.COMMON_OPTIONS)
    for name in definition.scalars:  # the defaults the modules and the docs rely on
        assert parameters[name].default == definition.scalar_default(name)
    assert fn.__doc__ and fn.__name__ == definition.name


@pytest.mark.parametrize("definition", _losses.LOSSES, ids=lambda d: d.name)
def test_each_entry_computes_its_instance_of_the_formula(definition):
    # uniform logits over 4 classes: p = 1/4 everywhere; CE = H = ln 4
    z, y = np.zeros((2, 4)), np.array([1, 3])
    gamma = 2.0 if definition.gamma is None else definition.gamma
    main = (3 / 4) ** gamma * math.log(4)
    regularizer = {None: 0.0, "entropy": math.log(4),
                   "reverse": -(math.log(1 + 1e-6) + 3 * math.log(1e-6)) / 4}
    expected = main + regularizer[definition.regularizer]
    assert float(getattr(el, definition.name)(z, y)) == pytest.approx(expected, rel=1e-12)


def test_a_function_that_does_not_name_its_entrys_keywords_is_refused():
    with pytest.raises(TypeError, match="keywords"):
        @_api._define(_losses.MIN_ENT)
        def min_ent(logits, target, /, *, entropy_weight=1.0):
            """Missing most keywords."""


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


def test_each_entry_has_its_torch_module():
    torch_modules = pytest.importorskip("entroloss.backends.torch")
    for definition in _losses.LOSSES:
        module = getattr(torch_modules, definition.module)
        assert module.definition is definition


def test_by_name_lists_the_losses_when_it_does_not_know_one():
    assert _losses.by_name("mix_ent") is _losses.MIX_ENT
    with pytest.raises(ValueError, match="cross_entropy, min_ent, mix_ent, adaptive_ce, focal"):
        _losses.by_name("MIN-ENT")
