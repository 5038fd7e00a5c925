"""What the multi-process tests share (``test_distributed.py``, ``test_linear_distributed.py``):
the global-mean recipe of docs/reliability.md, starting the DDP ranks, and running a JAX
script on several host devices."""

from __future__ import annotations

import functools
import importlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

WORLD = 2  # the DDP ranks


def _why_no_gloo() -> str | None:
    try:
        import torch.distributed as dist
    except ImportError as error:
        return f"torch is not installed ({error})"
    if not dist.is_available() or not dist.is_gloo_available():
        return "torch.distributed with gloo is not available"
    return None


_NO_GLOO = _why_no_gloo()
needs_gloo = pytest.mark.skipif(_NO_GLOO is not None, reason=_NO_GLOO or "")

# --- the recipe of docs/reliability.md ------------------------------------------------------


def mean_denominator(logits, target, *, axis=-1, weight=None, ignore_index=None):
    """This shard's share of "mean"'s denominator D (torch's rule), as a tensor: the
    summed class weight of its counted positions, or its number of positions for soft
    targets."""
    import torch

    if target.is_floating_point():  # soft targets: one per position
        return torch.tensor(target.numel() / logits.shape[axis], dtype=logits.dtype,
                            device=logits.device)
    counted = torch.ones_like(target, dtype=torch.bool) if ignore_index is None else target != ignore_index
    if weight is None:
        return counted.sum().to(logits.dtype)
    return torch.where(counted, weight[torch.where(counted, target, 0)], 0).sum().to(logits.dtype)


def ddp_mean(loss_fn, logits, target, /, **options):
    """``loss_fn(..., reduction="mean")`` over the global batch, for a model wrapped in
    DistributedDataParallel (which averages gradients over ranks): the local sum divided
    by the all-reduced D, times the world size."""
    import torch.distributed as dist

    denominator = mean_denominator(logits, target, axis=options.get("axis", -1),
                                   weight=options.get("weight"),
                                   ignore_index=options.get("ignore_index")).detach()
    dist.all_reduce(denominator)  # the global D, on every rank
    local_sum = loss_fn(logits, target, reduction="sum", **options)
    return local_sum * dist.get_world_size() / denominator


# --- torch DistributedDataParallel, gloo, WORLD processes ------------------------------------


def _rank(rank: int, port: int, out_dir: str, job: Callable, world: int = WORLD,
          timeout: float = 60) -> None:
    """One rank: joins the gloo group of ``world`` ranks (its collectives time out after
    ``timeout`` seconds: a hang fails), runs ``job(rank)`` and writes what it returns."""
    import torch.distributed as dist

    if sys.platform.startswith("linux"):  # keep gloo's own connections on the loopback
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    from datetime import timedelta

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout))
    try:
        results = job(rank)
        with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
            json.dump(results, f)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(job: Callable, out_dir, world: int = WORLD, timeout: float = 60) -> list:
    """``job(rank)`` (a module-level function, JSON-able result) on ``world`` spawned ranks
    of one gloo group; the results, rank by rank. A collective waits at most ``timeout``
    seconds, the whole run twice that."""
    import torch.multiprocessing as mp

    # gloo's rendezvous can die of a signal on a loaded machine ("terminate called without
    # an active exception" in its transport threads, before any loss runs): such a start is
    # tried again on a fresh port. A Python error in a rank is not retried.
    for attempt in range(3):
        context = mp.start_processes(_rank, args=(_free_port(), str(out_dir), job, world,
                                                  timeout),
                                     nprocs=world, join=False, start_method="spawn")
        deadline = time.monotonic() + 2 * timeout
        try:
            while not context.join(timeout=1):
                if time.monotonic() > deadline:
                    for process in context.processes:
                        process.kill()
                    pytest.fail(f"the ranks did not finish within {2 * timeout:g} s")
            break
        except mp.ProcessExitedException as died:
            if died.signal_name is None or attempt == 2:
                raise
    return [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(world)]


# Every rank's work of the suite, run by one spawn: a rank's first DistributedDataParallel
# imports torch._dynamo (and sympy), about 5 s of both cores, paid once rather than per
# file. Each entry is a module-level function of the rank returning a JSON-able result.
DDP_JOBS = ("tests.test_distributed:ddp_job", "tests.test_linear_distributed:ddp_job",
            "tests.test_normalization:ddp_job")


def _every_job(rank: int) -> dict:
    results = {}
    for job in DDP_JOBS:
        module, name = job.split(":")
        results[job] = getattr(importlib.import_module(module), name)(rank)
    return results


@functools.cache
def _ddp_run() -> list:
    with tempfile.TemporaryDirectory(prefix="entroloss-ddp-") as out:
        return run_ranks(_every_job, Path(out))


def ddp_results(job: str) -> list:
    """What ``job`` (an entry of ``DDP_JOBS``) returned on each rank; the ranks run once
    per test session, for every job."""
    assert job in DDP_JOBS, f"{job} is not in DDP_JOBS"
    return [rank[job] for rank in _ddp_run()]


# --- JAX on several host devices ------------------------------------------------------------


def run_jax_script(script: str, devices: int) -> dict:
    """Runs ``script`` in a fresh Python with ``devices`` CPU devices and float64 (the
    device count is fixed when JAX starts, hence the subprocess); the JSON object its last
    line prints."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "JAX_PLATFORMS": "cpu",
           "JAX_ENABLE_X64": "1", "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
