"""Peak extra resident memory of one torch CPU forward+backward, in a fresh process.

    python -m entroloss.tools.memory_probe N C WHICH

prints how many bytes the peak resident set size (``VmHWM``) rose above the resident size
just before the call, for ``N x C`` float32 logits. ``WHICH`` names a candidate of
``entroloss bench``: ``F.cross_entropy``, ``el.<loss>`` or ``el.<loss> chunks of <rows>``.
``entroloss bench --memory`` runs it several times per candidate (see
`entroloss.tools.bench.peak_extra_memory`): a process of its own per measurement, because
a process's peak mark only ever grows and freed blocks stay resident at glibc's choice.
Linux only (``/proc/self/status`` and ``clear_refs``).
"""

from __future__ import annotations

import gc
import sys


def resident_kib(key: str) -> int:
    """A ``/proc/self/status`` figure in KiB: ``VmRSS:`` now, ``VmHWM:`` the peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key):
                return int(line.split()[1])
    raise KeyError(key)


def candidate(which: str) -> tuple:
    """(the loss function, its options, the chunking options) that ``which`` names."""
    import torch

    import entroloss as el
    from entroloss._losses import by_name
    from entroloss.tools.baselines import timed_options

    which, _, chunk = which.partition(" chunks of ")  # "el.min_ent chunks of 512"
    chunking = {"chunk_size": int(chunk)} if chunk else {}
    if which == "F.cross_entropy":
        return torch.nn.functional.cross_entropy, {}, chunking
    name = which.split(".")[1]
    return getattr(el, name), timed_options(by_name(name)), chunking


def _reset_peak() -> None:
    """Reset the peak-RSS mark (Linux >= 4.0): a child inherits its parent's mark otherwise."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def measure(n: int, c: int, which: str) -> int:
    """Bytes by which one forward+backward of ``which`` raises the peak resident size."""
    import torch

    fn, options, chunking = candidate(which)
    torch.manual_seed(0)
    z = torch.empty(n, c).normal_()  # in place: no temporary
    y = torch.randint(0, c, (n,))
    small = torch.randn(8, 16, requires_grad=True)  # load every code path before the baseline
    fn(small, torch.randint(0, 16, (8,)), **options).backward()
    gc.collect()
    _reset_peak()
    before = resident_kib("VmRSS:")
    fn(z.requires_grad_(True), y, **options, **chunking).backward()
    return (resident_kib("VmHWM:") - before) * 1024


def main(argv: list[str] | None = None) -> None:
    n, c, which = argv or sys.argv[1:]
    print(measure(int(n), int(c), which))


if __name__ == "__main__":
    main()
