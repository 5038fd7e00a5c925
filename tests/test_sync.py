"""No device-to-host sync per call on an accelerator with the default arguments.

The policy (``entroloss._validate.reads_data``): with ``validate=True`` the checks that
read the data run only where reading costs no sync (host arrays); on an accelerator an
out-of-range class index makes its position NaN instead (as under ``jax.jit``), and
``validate="eager"`` reads the data there too. On CPU the policy is tested with torch's
``meta`` device, which has no data to read, so any host read fails or is counted; on a GPU
with torch's sync debug mode, JAX's transfer guard and CuPy's ``allow_synchronize``.
"""

from __future__ import annotations

import collections

import numpy as np
import pytest

import entroloss as el
from entroloss import _losses
from entroloss import _validate as check
from tests.helpers.platforms import needs, needs_platform

HOST_READS = ("_local_scalar_dense", "item", "is_nonzero")


def _calls(torch, device):
    """Every loss, forward and backward, with index and soft targets, class weights and a
    scalar (its first base, else its first weight) given as a tensor: what a training step
    calls."""
    z = torch.randn(8, 5, device=device, requires_grad=True)
    y = torch.randint(0, 5, (8,), device=device)
    t = torch.softmax(torch.randn(8, 5, device=device), -1)
    w = torch.rand(5, device=device) + 0.5
    for definition in _losses.LOSSES:
        fn = getattr(el, definition.name)
        learnt = next((s for s in definition.parameters if s.is_base), definition.parameters[0])
        scalar = {learnt.name: torch.tensor(2.0, device=device)}
        fn(z, y, weight=w, ignore_index=-100, **{**definition.example, **scalar}).backward()
        fn(z, t, label_smoothing=0.1, **definition.example).backward()


@needs("torch")
def test_no_host_read_for_a_tensor_off_the_host():
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Reads(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops[func.overloadpacket.__name__] += 1
            return func(*args, **(kwargs or {}))

    with Reads() as on_device:
        _calls(torch, "meta")
    assert sum(on_device.ops[name] for name in HOST_READS) == 0, on_device.ops
    with Reads() as on_host:  # the CPU does read (and so raises for a bad index)
        _calls(torch, "cpu")
    assert sum(on_host.ops[name] for name in HOST_READS) > 0


@needs("torch")
def test_the_policy_as_a_function_of_the_device():
    import torch

    cpu, meta = torch.zeros(2), torch.zeros(2, device="meta")
    assert check.reads_data(True, cpu) and not check.reads_data(True, meta)
    assert check.reads_data("eager", meta) and check.reads_data("eager", cpu)
    assert not check.reads_data(False, cpu)
    assert check.reads_data(True, np.zeros(2))
    with pytest.raises(RuntimeError, match="meta"):  # "eager" reads a device's data
        el.cross_entropy(torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long,
                                                                       device="meta"), validate="eager")
    with pytest.raises(TypeError, match="validate must be True, False or 'eager'"):
        el.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), validate="sometimes")


@needs("jax")
def test_jax_cpu_arrays_are_on_the_host():
    import jax.numpy as jnp

    assert check.reads_data(True, jnp.zeros(2))


# --- on a GPU ----------------------------------------------------------------------------------


@needs_platform("torch-cuda")
def test_torch_cuda_training_step_makes_no_sync():
    import torch

    model = torch.nn.Linear(16, 5).cuda()
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(32, 16, device="cuda")
    y = torch.randint(0, 5, (32,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for definition in _losses.LOSSES:
            loss = getattr(el, definition.name)(model(x), y, **definition.example)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    y[0] = 7  # out of range, unchecked on the device: NaN, not a number
    assert torch.isnan(el.cross_entropy(model(x), y)).item()
    with pytest.raises(ValueError, match="class index 7"):
        el.cross_entropy(model(x), y, validate="eager")


@needs_platform("jax-gpu")
def test_jax_gpu_eager_call_transfers_nothing_to_the_host():
    import jax
    import jax.numpy as jnp

    gpu = jax.devices("gpu")[0]
    z = jax.device_put(jnp.ones((32, 5)), gpu)
    y = jax.device_put(jnp.arange(32) % 5, gpu)
    with jax.transfer_guard_device_to_host("disallow"):
        for definition in _losses.LOSSES:
            loss = getattr(el, definition.name)
            jax.grad(lambda z, loss=loss, options=definition.example: loss(z, y, **options))(z)


@needs_platform("cupy")
def test_cupy_value_and_grad_makes_no_sync():
    import cupy
    import cupyx

    z = cupy.ones((32, 5))
    y = cupy.arange(32) % 5
    cupy.cuda.Device().synchronize()
    with cupyx.allow_synchronize(False):
        for definition in _losses.LOSSES:
            el.value_and_grad(getattr(el, definition.name), z, y, **definition.example)
