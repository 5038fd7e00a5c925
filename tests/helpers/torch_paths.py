"""Which way a torch call is differentiated, forced for a test (``backends/torch.py``'s
``uses_autograd``): torch's autograd at every size (log p and plain cross entropy by
torch's own kernels where ``torch_native`` applies), or the Function at every size (the
native kernels off: plain cross entropy would not reach it)."""

from __future__ import annotations


def force_path(monkeypatch, autograd: bool) -> None:
    """Every threshold of the adapter (log p native or not) at its extreme."""
    from entroloss.backends import torch as adapter, torch_native

    most = 1 << 62 if autograd else 0
    monkeypatch.setattr(adapter, "AUTOGRAD_MAX_ELEMENTS", most)
    for table in ("AUTOGRAD_MAX_ELEMENTS_REGULARIZED", "NATIVE_AUTOGRAD_MAX_ELEMENTS"):
        monkeypatch.setattr(adapter, table, dict.fromkeys(getattr(adapter, table), most))
    monkeypatch.setattr(torch_native, "NATIVE", autograd)


def unbind() -> None:
    """Forget every bound call and every key seen (``_prepare.remember_call``)."""
    from entroloss import _prepare

    _prepare.BOUND_CALLS.clear()
    _prepare._SEEN.clear()
