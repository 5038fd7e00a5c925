"""Linear-head losses against the naive ``loss(hidden @ W.T + b, y)``: torch CPU float32
peak memory beyond the inputs and the time of one forward+backward.

    python benchmarks/linear_head.py                  # N=8192, H=1024, C=32768, 2 runs each
    python benchmarks/linear_head.py --n 1024 --runs 1 --only linear_cross_entropy
    python benchmarks/linear_head.py --one CANDIDATE N H C   # one measurement (a child)

Each measurement runs in a fresh process (a process's peak resident mark only grows, and
freed blocks stay resident at glibc's choice; ``entroloss.tools.memory_probe`` does the
same): the inputs are made, every code path is run once on a small problem, the peak
mark is reset, and the forward+backward is timed while the peak is taken. "Beyond the
inputs" counts the gradients (``hidden.grad``, ``W.grad``, ``b.grad``) too. Not a test:
the figures go to docs/linear.md by hand.
"""

from __future__ import annotations

import argparse
import gc
import json
import subprocess
import sys
import time

from entroloss.tools.memory_probe import _reset_peak, resident_kib

MIB = 2**20


def _naive(name: str):
    import torch

    import entroloss as el

    def loss(h, w, b, y):
        z = h @ w.T + b
        if name == "cross_entropy":
            return torch.nn.functional.cross_entropy(z, y)
        if name == "entropy":
            return el.entropy(z).mean()
        return getattr(el, name)(z, y)

    return loss


def _linear(name: str):
    import entroloss as el

    if name == "entropy":
        return lambda h, w, b, y: el.linear_entropy(h, w, bias=b).mean()
    return lambda h, w, b, y: getattr(el, f"linear_{name}")(h, w, y, bias=b)


CANDIDATES = {
    "F.cross_entropy(h @ W.T + b, y)": _naive("cross_entropy"),
    "el.linear_cross_entropy": _linear("cross_entropy"),
    "el.min_ent(h @ W.T + b, y)": _naive("min_ent"),
    "el.linear_min_ent": _linear("min_ent"),
    "el.entropy(h @ W.T + b).mean()": _naive("entropy"),
    "el.linear_entropy(...).mean()": _linear("entropy"),
}


def one(which: str, n: int, h: int, c: int) -> dict:
    """One forward+backward of ``which``: seconds and peak bytes beyond the inputs."""
    import torch

    fn = CANDIDATES[which]
    torch.manual_seed(0)
    small = [torch.randn(8, 16, requires_grad=True), torch.randn(32, 16, requires_grad=True),
             torch.randn(32, requires_grad=True), torch.randint(0, 32, (8,))]
    fn(*small).backward()  # every code path loaded before the baseline
    hidden = torch.empty(n, h).normal_().requires_grad_()
    w = torch.empty(c, h).normal_(std=h**-0.5).requires_grad_()
    b = torch.zeros(c, requires_grad=True)
    y = torch.randint(0, c, (n,))
    gc.collect()
    _reset_peak()
    before = resident_kib("VmRSS:")
    start = time.perf_counter()
    fn(hidden, w, b, y).backward()
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_bytes": (resident_kib("VmHWM:") - before) * 1024}


def measure(which: str, n: int, h: int, c: int, runs: int) -> dict:
    results = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, __file__, "--one", which, str(n), str(h), str(c)],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    return {"seconds": min(r["seconds"] for r in results),
            "peak_bytes": min(r["peak_bytes"] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--h", type=int, default=1024)
    parser.add_argument("--c", type=int, default=32768)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", action="append", help="a substring of the candidates' names")
    parser.add_argument("--one", nargs=4, metavar=("CANDIDATE", "N", "H", "C"))
    args = parser.parse_args()
    if args.one:
        which, n, h, c = args.one
        print(json.dumps(one(which, int(n), int(h), int(c))))
        return
    logits = args.n * args.c * 4
    print(f"torch CPU float32, N={args.n}, H={args.h}, C={args.c}: logits {logits / MIB:.0f} MiB, "
          f"grads of hidden + W {(args.n + args.c) * args.h * 4 / MIB:.0f} MiB")
    print("| candidate | forward+backward (s) | peak beyond inputs (MiB) |")
    print("|---|---:|---:|")
    for which in CANDIDATES:
        if args.only and not any(part in which for part in args.only):
            continue
        r = measure(which, args.n, args.h, args.c, args.runs)
        print(f"| `{which}` | {r['seconds']:.2f} | {r['peak_bytes'] / MIB:.0f} |", flush=True)


if __name__ == "__main__":
    main()
