"""One fixture over every installed array namespace and device, and ``assert_close``.

Test axes follow scikit-learn's array-API tests: namespace x device x dtype, with readable
ids ("numpy-float64", "torch-cpu-float32", ...) and tolerances derived from the dtype.
Backends that are not installed, or have no device here, are skipped, never faked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import pytest


@dataclass
class Backend:
    """One namespace on one device, with conversions from and to NumPy float64."""

    id: str  # the test id: "numpy", "torch-cpu", "jax-gpu", ...
    module: str  # the library that must import for this backend to run
    make: Callable = field(repr=False)  # sets xp and device, or skips
    dtypes: tuple = ("float64", "float32")
    xp: Any = None
    device: Any = None

    def load(self) -> "Backend":
        pytest.importorskip(self.module)
        self.make(self)
        return self

    def dtype(self, name: str) -> Any:
        return getattr(self.xp, name)

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        a = np.asarray(a)
        if dtype is None:
            dtype = "float64" if a.dtype.kind == "f" else ("int64" if a.dtype == np.int64 else str(a.dtype))
        return self.xp.asarray(a, dtype=self.dtype(dtype), device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.module == "torch":
            return x.detach().to("cpu").double().numpy()
        if self.module == "cupy":
            return x.get().astype(np.float64)
        return np.asarray(x, dtype=np.float64)


def _numpy(b: Backend) -> None:
    import array_api_compat.numpy as xp

    b.xp, b.device = xp, "cpu"


def _strict(b: Backend) -> None:
    import array_api_strict as xp

    b.xp, b.device = xp, xp.Device("CPU_DEVICE")


BACKENDS = [
    Backend("numpy", "numpy", _numpy),
    Backend("array_api_strict", "array_api_strict", _strict),
]


@pytest.fixture(params=BACKENDS, ids=lambda b: b.id)
def backend(request) -> Backend:
    return request.param.load()


def tolerance(dtype_name: str) -> dict:
    """rtol/atol for comparing a result in ``dtype_name`` with a float64 reference."""
    return {
        "float64": dict(rtol=1e-9, atol=1e-11),
        "float32": dict(rtol=3e-5, atol=3e-6),
        "float16": dict(rtol=3e-3, atol=1e-3),
        "bfloat16": dict(rtol=2e-2, atol=8e-3),
    }[dtype_name]


def assert_close(actual: Any, expected: Any, backend: Backend, dtype: str, *, scale: float = 1.0, shape=None) -> None:
    """Namespace, dtype, shape, device and values (within the dtype's tolerance)."""
    import array_api_compat as compat

    assert compat.array_namespace(actual) is compat.array_namespace(backend.asarray(0.0)), (
        f"result is a {type(actual)}, not an array of {backend.id}"
    )
    assert actual.dtype == backend.dtype(dtype), f"dtype {actual.dtype}, expected {dtype}"
    expected = np.asarray(expected, dtype=np.float64)
    assert tuple(actual.shape) == (expected.shape if shape is None else shape)
    assert compat.device(actual) == backend.device, f"result on {compat.device(actual)}"
    tol = tolerance(dtype)
    np.testing.assert_allclose(
        backend.to_numpy(actual), expected, rtol=tol["rtol"], atol=tol["atol"] * scale, equal_nan=True
    )
