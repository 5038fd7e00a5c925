"""One fixture over every array namespace and device, and ``assert_close``.

Test axes follow scikit-learn's array-API tests: namespace x device (the ``backend``
fixture, ids "numpy", "torch-cpu", "jax-gpu", ...) x dtype, with tolerances derived from
the dtype. A backend that is not installed, or has no such device here, is skipped with
the reason, never faked.
"""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import numpy as np
import pytest

from entroloss.tools.platforms import ALL, Platform, Unavailable

try:  # float64 on JAX for the float64 axis; test_jax.py checks x64 off in a subprocess
    import jax

    jax.config.update("jax_enable_x64", True)
except ImportError:
    pass

Backend = Platform


def _load(request) -> Platform:
    try:
        return request.param.load()
    except Unavailable as reason:
        pytest.skip(str(reason))


@pytest.fixture(params=ALL, ids=lambda p: p.id)
def backend(request) -> Platform:
    return _load(request)


@pytest.fixture(params=[p for p in ALL if p.library == "torch"], ids=lambda p: p.id)
def tb(request) -> Platform:
    """torch on each device (for torch-only tests)."""
    return _load(request)


@pytest.fixture(params=[p for p in ALL if p.library == "jax"], ids=lambda p: p.id)
def jb(request) -> Platform:
    """JAX on each device (for JAX-only tests)."""
    return _load(request)


def tolerance(dtype_name: str) -> dict:
    """rtol/atol for comparing a result in ``dtype_name`` with a float64 reference."""
    return {
        "float64": dict(rtol=1e-9, atol=1e-11),
        "float32": dict(rtol=3e-5, atol=3e-6),
        "float16": dict(rtol=3e-3, atol=1e-3),
        "bfloat16": dict(rtol=2e-2, atol=8e-3),
    }[dtype_name]


def assert_close(actual: Any, expected: Any, backend: Platform, dtype: str, *,
                 scale: float = 1.0) -> None:
    """Namespace, dtype, shape, device and values (within the dtype's tolerance)."""
    assert compat.array_namespace(actual) is compat.array_namespace(backend.asarray(0.0)), (
        f"result is a {type(actual)}, not an array of {backend.id}"
    )
    assert actual.dtype == backend.dtype(dtype), f"dtype {actual.dtype}, expected {dtype}"
    expected = np.asarray(expected, dtype=np.float64)
    assert tuple(actual.shape) == expected.shape
    assert compat.device(actual) == backend.device, f"result on {compat.device(actual)}"
    tol = tolerance(dtype)
    np.testing.assert_allclose(backend.to_numpy(actual), expected, rtol=tol["rtol"],
                               atol=tol["atol"] * scale, equal_nan=True)
