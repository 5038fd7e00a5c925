"""The array libraries and devices this machine can run, for the command line and tests.

A platform is one namespace on one device ("numpy", "torch-cuda", "jax-gpu", ...), with
conversions from and to NumPy and a device sync for timings. Loading one imports its
framework, so only the command line and the tests use this module; ``import entroloss``
does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


class Unavailable(Exception):
    """The library is not installed, or has no such device here."""


@dataclass
class Platform:
    id: str
    library: str
    device_kind: str  # "cpu" or "gpu"
    loader: Callable = field(repr=False)
    dtypes: tuple = ("float64", "float32")
    xp: Any = field(default=None, repr=False)
    device: Any = field(default=None, repr=False)
    sync: Callable = field(default=lambda: None, repr=False)

    def load(self) -> "Platform":
        if self.xp is None:
            try:
                self.loader(self)
            except ImportError as error:
                raise Unavailable(f"{self.library} is not installed ({error})") from None
        return self

    def dtype(self, name: str) -> Any:
        return getattr(self.xp, name)

    def asarray(self, a: Any, dtype: str | None = None) -> Any:
        a = np.asarray(a)
        if dtype is None:
            dtype = "float64" if a.dtype.kind == "f" else str(a.dtype)
        if self.library == "jax":  # jax builds on its default device, then moves
            import jax

            if dtype == "int64" and not jax.config.read("jax_enable_x64"):
                dtype = "int32"  # what JAX would truncate to, without its warning
            return jax.device_put(self.xp.asarray(a, dtype=self.dtype(dtype)), self.device)
        return self.xp.asarray(a, dtype=self.dtype(dtype), device=self.device)

    def to_numpy(self, x: Any) -> np.ndarray:
        if self.library == "torch":
            return x.detach().to("cpu").double().numpy()
        if self.library == "cupy":
            return x.get().astype(np.float64)
        if self.library == "jax":
            return np.asarray(x.astype("float32") if str(x.dtype) == "bfloat16" else x, np.float64)
        return np.asarray(x, dtype=np.float64)


def _numpy(p: Platform) -> None:
    import array_api_compat.numpy as xp

    p.xp, p.device = xp, "cpu"


def _strict(p: Platform) -> None:
    import array_api_strict as xp

    p.xp, p.device = xp, xp.Device("CPU_DEVICE")


def _torch(p: Platform) -> None:
    import array_api_compat.torch as xp
    import torch

    if p.device_kind == "gpu":
        if not torch.cuda.is_available():
            raise Unavailable("torch has no CUDA device here")
        p.device, p.sync = torch.device("cuda"), torch.cuda.synchronize
    else:
        p.device = torch.device("cpu")
    p.xp = xp


def _jax(p: Platform) -> None:
    import jax
    import jax.numpy as xp

    kind = "gpu" if p.device_kind == "gpu" else "cpu"
    try:
        p.device = jax.devices(kind)[0]
    except RuntimeError:
        raise Unavailable(f"jax has no {kind} device here") from None
    if not jax.config.read("jax_enable_x64"):
        p.dtypes = tuple(d for d in p.dtypes if d != "float64")
    p.xp = xp


def _cupy(p: Platform) -> None:
    import array_api_compat.cupy as xp
    import cupy

    if not cupy.cuda.is_available():
        raise Unavailable("cupy has no CUDA device here")
    p.xp, p.device = xp, cupy.cuda.Device(0)
    p.sync = lambda: cupy.cuda.Device(0).synchronize()


ALL = [
    Platform("numpy", "numpy", "cpu", _numpy, ("float64", "float32", "float16")),
    Platform("array_api_strict", "array_api_strict", "cpu", _strict),
    Platform("torch-cpu", "torch", "cpu", _torch, ("float64", "float32", "float16", "bfloat16")),
    Platform("torch-cuda", "torch", "gpu", _torch, ("float64", "float32", "bfloat16", "float16")),
    Platform("jax-cpu", "jax", "cpu", _jax, ("float64", "float32", "float16", "bfloat16")),
    Platform("jax-gpu", "jax", "gpu", _jax, ("float64", "float32", "float16", "bfloat16")),
    Platform("cupy", "cupy", "gpu", _cupy, ("float64", "float32", "float16")),
]


def available(library: str | None = None, device: str | None = None) -> tuple[list, list]:
    """(loaded platforms, [(id, reason)] for those that are not available)."""
    kind = {"cuda": "gpu", "gpu": "gpu", "cpu": "cpu", None: None}[device]
    loaded, missing = [], []
    for platform in ALL:
        if library is not None and platform.library != library:
            continue
        if kind is not None and platform.device_kind != kind:
            continue
        try:
            loaded.append(platform.load())
        except Unavailable as reason:
            missing.append((platform.id, str(reason)))
    return loaded, missing
