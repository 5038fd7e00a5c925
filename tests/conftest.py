"""The platform fixtures: ``backend`` (every array namespace and device), ``torch_backend``
and ``jax_backend`` (torch, JAX on each device). A platform that cannot run here is a
parameter marked skip with its reason, never faked (``tests.helpers.platforms``); tests
that also need a dtype parametrize ``"backend, dtype"`` with
``backend_dtype_params(...)``, which generates only the pairs that exist."""

from __future__ import annotations

import pytest

from entroloss import _prepare
from tests.helpers.platforms import backend_params, enable_jax_x64

enable_jax_x64()  # test_jax.py checks x64 off in a subprocess

# Every torch call the suite makes with Python options runs bound, its ops replayed, from
# its first call (users' calls bind on their second: _prepare.BIND_AFTER), so that every
# test of a value, a gradient or an error also tests the replay;
# tests/test_torch_plans.py tests the default.
_prepare.BIND_AFTER = 1


@pytest.fixture(params=backend_params())
def backend(request):
    return request.param


@pytest.fixture(params=backend_params(["torch"]))
def torch_backend(request):
    """torch on each device (for torch-only tests)."""
    return request.param


@pytest.fixture(params=backend_params(["jax"]))
def jax_backend(request):
    """JAX on each device (for JAX-only tests)."""
    return request.param


def pytest_report_header(config):
    import entroloss

    from tests.helpers.platforms import unavailable

    skipped = ", ".join(f"{name} ({reason})" for name, reason in unavailable().items())
    return [f"entroloss from {entroloss.__file__}", f"platforms skipped here: {skipped or 'none'}"]
