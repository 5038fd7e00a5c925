"""The test axes: array namespace x device (a "platform", ``entroloss.tools.platforms``) and
dtype, as pytest parameters that exist.

Test axes follow scikit-learn's array-API tests: namespace x device (ids "numpy",
"torch-cpu", "jax-gpu", ...) x dtype, with tolerances derived from the dtype
(``tests.helpers.assertions``). Every platform is loaded once, at collection:

- a platform that cannot run here (no GPU, CuPy not installed) is still a parameter, marked
  skip with the reason, so a run says what it did not check;
- a (platform, dtype) pair is generated only where the platform has the dtype
  (``Platform.dtypes``: NumPy has no bfloat16, array-api-strict has no half precision), so
  no test is collected for a combination that cannot exist.

JAX runs with float64 on (``jax_enable_x64``, set by conftest.py before JAX is loaded);
test_jax.py checks x64 off in a subprocess.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Iterable

import pytest

from entroloss.tools.platforms import ALL, Platform, Unavailable

DTYPES = ("float64", "float32", "float16", "bfloat16")
HALF = ("float16", "bfloat16")


def enable_jax_x64() -> None:
    """float64 on JAX, for the float64 axis (before any JAX array is made)."""
    try:
        import jax
    except ImportError:
        return
    jax.config.update("jax_enable_x64", True)


@functools.cache
def unavailable() -> dict[str, str]:
    """``{platform id: why it cannot run here}``, loading every platform once (imports
    its framework; done at collection, not on importing this module)."""
    enable_jax_x64()
    reasons = {}
    for platform in ALL:
        try:
            platform.load()
        except Unavailable as reason:
            reasons[platform.id] = str(reason)
    return reasons


def _marks(platform: Platform) -> list:
    reason = unavailable().get(platform.id)
    return [pytest.mark.skip(reason=f"{platform.id}: {reason}")] if reason else []


def platforms(libraries: Iterable[str] | None = None) -> list[Platform]:
    """The platforms of ``libraries`` (all by default), available here or not."""
    return [p for p in ALL if libraries is None or p.library in set(libraries)]


def backend_params(libraries: Iterable[str] | None = None) -> list:
    """One parameter per platform; those that cannot run here are marked skip."""
    return [pytest.param(p, id=p.id, marks=_marks(p)) for p in platforms(libraries)]


def backend_dtype_params(dtypes: Iterable[str] = DTYPES,
                         libraries: Iterable[str] | None = None) -> list:
    """``(platform, dtype)`` for each dtype of ``dtypes`` the platform has; for
    ``@pytest.mark.parametrize("backend, dtype", ...)``."""
    dtypes = tuple(dtypes)
    assert set(dtypes) <= set(DTYPES), dtypes
    return [pytest.param(p, d, id=f"{p.id}-{d}", marks=_marks(p))
            for p in platforms(libraries) for d in dtypes if d in p.dtypes]


def needs(module: str) -> pytest.MarkDecorator:
    """Skip unless ``module`` can be imported (an optional test dependency)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a missing parent package of a dotted name
        found = False
    return pytest.mark.skipif(not found, reason=f"{module} is not installed")


def needs_platform(platform_id: str) -> pytest.MarkDecorator:
    """Skip unless the platform ``platform_id`` (e.g. "torch-cuda") can run here."""
    reason = unavailable().get(platform_id)
    return pytest.mark.skipif(reason is not None, reason=f"{platform_id}: {reason}")
