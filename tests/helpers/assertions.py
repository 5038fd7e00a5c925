"""``tolerance`` and ``assert_close``: a result against a float64 expectation, within the
tolerance of the result's dtype."""

from __future__ import annotations

from typing import Any

import array_api_compat as compat
import numpy as np

from entroloss.tools.platforms import Platform


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
