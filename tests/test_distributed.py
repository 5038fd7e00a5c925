"""The losses where one process is not enough: torch DistributedDataParallel (gloo, two
CPU processes), JAX with several host devices and sharded logits, and Dask arrays.

``"mean"`` divides by ``D`` (the summed class weight of the counted positions, or the
number of positions for soft targets), and ``D`` differs between data-parallel shards
when class weights or ``ignore_index`` are used. Each rank must therefore divide its
local ``"sum"`` by the *global* ``D``; the per-rank ``"mean"`` averaged over ranks is a
different (and, with a fully ignored shard, NaN) quantity. These tests prove the global
form equals one process on the whole batch, value and gradients, and that the naive one
does not. The recipe (``mean_denominator``, ``ddp_mean``, in ``tests.helpers.distributed``) is in
docs/reliability.md.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import entroloss as el
from tests.helpers.cases import LOSSES
from tests.helpers.distributed import WORLD, ddp_mean, needs_gloo, run_jax_script
from tests.helpers.distributed import ddp_results as shared_ddp_results
from tests.helpers.platforms import needs

# --- torch DistributedDataParallel, gloo, two processes --------------------------------------

FEATURES, CLASSES, BATCH = 5, 4, 12


def _ddp_data():
    """Features, class indices (rank 0's half mostly ignored, rank 1's not), soft targets,
    class weights; float64."""
    rng = np.random.default_rng(42)
    x = rng.normal(size=(BATCH, FEATURES))
    y = rng.integers(0, CLASSES, size=BATCH)
    y[[0, 1, 3, 4]] = -100  # rank 0 keeps 2 of its 6 positions, rank 1 all 6
    soft = rng.dirichlet(np.ones(CLASSES), size=BATCH)
    w = np.array([0.5, 2.0, 1.0, 3.0])
    return x, y, soft, w


DDP_CASES = {  # name -> (loss, target kind, options)
    "cross_entropy-weighted-ignore": ("cross_entropy", "index",
                                      {"weight": True, "ignore_index": -100}),
    "min_ent-weighted-ignore-smoothed": ("min_ent", "index", {"weight": True, "ignore_index": -100,
                                                              "label_smoothing": 0.1,
                                                              "entropy_weight": 0.3}),
    "mix_ent-soft": ("mix_ent", "soft", {"reverse_weight": 0.2}),
}


def _model(torch):
    torch.manual_seed(0)
    return torch.nn.Linear(FEATURES, CLASSES, dtype=torch.float64)


def _options(torch, options, w):
    return {k: (torch.tensor(w) if k == "weight" else v) for k, v in options.items()}


def ddp_job(rank):
    """One rank: for each case and each way of reducing, a DDP backward on its half of the
    batch; the synchronised gradients and the globally reduced value."""
    import torch
    import torch.distributed as dist

    x, y, soft, w = _ddp_data()
    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}
    for name, (loss, kind, options) in DDP_CASES.items():
        fn = getattr(el, loss)
        opts = _options(torch, options, w)
        target = torch.tensor(y[part] if kind == "index" else soft[part])
        for mode in ("sum", "global-mean", "local-mean"):
            model = torch.nn.parallel.DistributedDataParallel(_model(torch))
            logits = model(torch.tensor(x[part]))
            if mode == "sum":  # DDP averages gradients: scale by the world size
                local = fn(logits, target, reduction="sum", **opts)
                objective, value = local * WORLD, local.detach().clone()
            elif mode == "global-mean":
                objective = ddp_mean(fn, logits, target, **opts)
                value = objective.detach() / WORLD
            else:  # the naive per-rank mean
                objective = fn(logits, target, reduction="mean", **opts)
                value = objective.detach() / WORLD
            objective.backward()
            dist.all_reduce(value)  # the loss over the whole batch, as logged
            results[f"{name}|{mode}"] = {
                "value": float(value),
                "grads": [p.grad.numpy().tolist() for p in model.parameters()],
            }
    return results


@pytest.fixture(scope="module")
def ddp_results():
    return shared_ddp_results("tests.test_distributed:ddp_job")


def _single_process(torch, fn, logits, target, opts, reduction):
    model = _model(torch)
    out = model(logits)
    value = fn(out, target, reduction=reduction, **opts)
    value.backward()
    return float(value.detach()), [p.grad.numpy() for p in model.parameters()]


def _expected(name):
    """One process on the whole batch: "sum" and "mean" gradients, and the naive average
    of each half's "mean" (what DDP gives for a per-rank mean)."""
    import torch

    loss, kind, options = DDP_CASES[name]
    fn = getattr(el, loss)
    x, y, soft, w = _ddp_data()
    opts = _options(torch, options, w)
    target = torch.tensor(y if kind == "index" else soft)
    sums = _single_process(torch, fn, torch.tensor(x), target, opts, "sum")
    means = _single_process(torch, fn, torch.tensor(x), target, opts, "mean")
    halves = [_single_process(torch, fn, torch.tensor(x[part]), target[part], opts, "mean")
              for part in (slice(0, BATCH // 2), slice(BATCH // 2, BATCH))]
    naive = (np.mean([v for v, _ in halves]),
             [np.mean([g[i] for _, g in halves], axis=0) for i in range(2)])
    return {"sum": sums, "global-mean": means, "local-mean": naive}


@needs_gloo
@pytest.mark.parametrize("mode", ["sum", "global-mean"])
@pytest.mark.parametrize("name", list(DDP_CASES))
def test_ddp_gradients_equal_one_process_on_the_whole_batch(ddp_results, name, mode):
    value, grads = _expected(name)[mode]
    for rank in range(WORLD):  # DDP leaves the same, synchronised gradients on every rank
        got = ddp_results[rank][f"{name}|{mode}"]
        np.testing.assert_allclose(got["value"], value, rtol=1e-12)
        for g, e in zip(got["grads"], grads, strict=True):
            np.testing.assert_allclose(np.array(g), e, rtol=1e-10, atol=1e-14)


@needs_gloo
@pytest.mark.parametrize("name", ["cross_entropy-weighted-ignore", "min_ent-weighted-ignore-smoothed"])
def test_ddp_with_a_per_rank_mean_is_a_different_loss(ddp_results, name):
    """With class weights or ignored positions the shards' D differ: averaging per-rank
    means is the average of the halves' means, not the batch mean (soft targets with equal
    shards are the exception: D is then the same on every rank)."""
    expected = _expected(name)
    value, grads = expected["local-mean"]
    got = ddp_results[0][f"{name}|local-mean"]
    np.testing.assert_allclose(got["value"], value, rtol=1e-12)
    for g, e in zip(got["grads"], grads, strict=True):
        np.testing.assert_allclose(np.array(g), e, rtol=1e-10, atol=1e-14)
    right_value, right_grads = expected["global-mean"]
    assert abs(got["value"] - right_value) > 1e-2 * abs(right_value)
    assert np.max(np.abs(np.array(got["grads"][0]) - right_grads[0])) > 1e-2 * np.max(np.abs(right_grads[0]))


@needs_gloo
def test_ddp_mean_of_equal_soft_shards_needs_no_correction(ddp_results):
    name = "mix_ent-soft"
    got = ddp_results[0][f"{name}|local-mean"]
    value, grads = _expected(name)["global-mean"]
    np.testing.assert_allclose(got["value"], value, rtol=1e-12)
    for g, e in zip(got["grads"], grads, strict=True):
        np.testing.assert_allclose(np.array(g), e, rtol=1e-10, atol=1e-14)


# --- JAX: several host devices, sharded logits under jax.jit ---------------------------------

JAX_SHARDED = r"""
import json
import jax, jax.numpy as jnp, numpy as np, entroloss as el
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

devices = jax.devices()
assert len(devices) == 4 and all(d.platform == "cpu" for d in devices), devices
assert jax.config.jax_enable_x64
mesh = Mesh(np.array(devices), ("batch",))
batch = NamedSharding(mesh, P("batch"))
rng = np.random.default_rng(0)
z = rng.normal(scale=2.0, size=(16, 5))
y = rng.integers(0, 5, size=16)
y[[0, 1, 2, 5, 9]] = -100          # shards of 4: 1, 3, 4 and 4 positions counted
w = rng.uniform(0.2, 2.0, size=5)
soft = rng.dirichlet(np.ones(5), size=16)
zk = rng.normal(size=(8, 5, 3))    # K-dim, classes on axis 1
yk = rng.integers(0, 5, size=(8, 3))
report = {}

cases = {
    "cross_entropy": (el.cross_entropy, z, y, dict(weight=w, ignore_index=-100)),
    "min_ent": (el.min_ent, z, y, dict(weight=w, ignore_index=-100, label_smoothing=0.1)),
    "mix_ent-soft": (el.mix_ent, z, soft, dict(reverse_weight=0.2)),
    "adaptive_ce-sum": (el.adaptive_ce, z, y, dict(weight=w, ignore_index=-100, reduction="sum")),
    "focal-kdim": (el.focal, zk, yk, dict(axis=1, gamma=0.5)),
}
for name, (fn, logits, target, options) in cases.items():
    options = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
    step = jax.jit(jax.value_and_grad(lambda z, t: fn(z, t, **options)))
    v1, g1 = step(jnp.asarray(logits), jnp.asarray(target))          # one device
    zs = jax.device_put(jnp.asarray(logits), batch)
    ts = jax.device_put(jnp.asarray(target), batch)
    v4, g4 = step(zs, ts)                                           # sharded over 4
    ref_v, ref_g = el.value_and_grad(fn, logits, target,
                                     **{k: np.asarray(v) if isinstance(v, jax.Array) else v
                                        for k, v in options.items()})
    report[name] = dict(
        value_one=float(v1), value_sharded=float(v4), value_numpy=float(ref_v),
        grad_diff=float(np.max(np.abs(np.asarray(g4) - np.asarray(g1)))),
        grad_diff_numpy=float(np.max(np.abs(np.asarray(g4) - ref_g["logits"]))),
        grad_scale=float(np.max(np.abs(ref_g["logits"]))),
        input_devices=len(zs.sharding.device_set),
        grad_devices=len(g4.sharding.device_set),
        grad_sharded_like_logits=bool(g4.sharding.is_equivalent_to(zs.sharding, zs.ndim)),
    )

# shard_map: each device sees its shard only; the global "mean" needs the global D
wj = jnp.asarray(w)

def denominator(y):
    counted = y != -100
    return jnp.sum(jnp.where(counted, wj[jnp.where(counted, y, 0)], 0.0))

def global_mean(z, y):
    local = el.min_ent(z, y, weight=wj, ignore_index=-100, reduction="sum")
    return jax.lax.psum(local, "batch") / jax.lax.psum(denominator(y), "batch")

def naive_mean(z, y):
    return jax.lax.pmean(el.min_ent(z, y, weight=wj, ignore_index=-100), "batch")

zs, ys = jax.device_put(jnp.asarray(z), batch), jax.device_put(jnp.asarray(y), batch)
specs = dict(mesh=mesh, in_specs=(P("batch"), P("batch")), out_specs=P())
good = jax.shard_map(global_mean, **specs)
bad = jax.shard_map(naive_mean, **specs)
full = lambda z: el.min_ent(z, jnp.asarray(y), weight=wj, ignore_index=-100)
gv, gg = jax.jit(jax.value_and_grad(lambda z: good(z, ys)))(zs)
fv, fg = jax.value_and_grad(full)(jnp.asarray(z))
shard_means = [float(el.min_ent(jnp.asarray(z[i:i + 4]), jnp.asarray(y[i:i + 4]), weight=wj,
                                ignore_index=-100)) for i in range(0, 16, 4)]
y_all_ignored = y.copy(); y_all_ignored[:4] = -100
ys_all_ignored = jax.device_put(jnp.asarray(y_all_ignored), batch)
report["shard_map"] = dict(
    global_value=float(gv), full_value=float(fv),
    grad_diff=float(np.max(np.abs(np.asarray(gg) - np.asarray(fg)))),
    naive_value=float(jax.jit(bad)(zs, ys)), mean_of_shard_means=float(np.mean(shard_means)),
    naive_with_an_all_ignored_shard=float(jax.jit(bad)(zs, ys_all_ignored)),
    global_with_an_all_ignored_shard=float(jax.jit(good)(zs, ys_all_ignored)),
    full_with_an_all_ignored_shard=float(el.min_ent(jnp.asarray(z), jnp.asarray(y_all_ignored), weight=wj,
                                                    ignore_index=-100)),
)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def jax_sharded():
    return run_jax_script(JAX_SHARDED, devices=4)


@needs("jax")
@pytest.mark.parametrize("name", ["cross_entropy", "min_ent", "mix_ent-soft", "adaptive_ce-sum",
                                  "focal-kdim"])
def test_jax_sharded_logits_under_jit_equal_unsharded(jax_sharded, name):
    r = jax_sharded[name]
    assert r["input_devices"] == 4
    np.testing.assert_allclose(r["value_sharded"], r["value_one"], rtol=1e-12)
    np.testing.assert_allclose(r["value_sharded"], r["value_numpy"], rtol=1e-12)
    assert r["grad_diff"] <= 1e-12 * r["grad_scale"]
    assert r["grad_diff_numpy"] <= 1e-12 * r["grad_scale"]
    # the gradient stays distributed like the logits (no gather onto one device)
    assert r["grad_devices"] == 4 and r["grad_sharded_like_logits"]


@needs("jax")
def test_jax_shard_map_needs_the_global_denominator(jax_sharded):
    r = jax_sharded["shard_map"]
    np.testing.assert_allclose(r["global_value"], r["full_value"], rtol=1e-12)
    assert r["grad_diff"] <= 1e-14
    # pmean of per-device means: the mean of the shards' means, a different number
    np.testing.assert_allclose(r["naive_value"], r["mean_of_shard_means"], rtol=1e-12)
    assert abs(r["naive_value"] - r["full_value"]) > 1e-2 * r["full_value"]
    # a shard with nothing counted: its mean is NaN, and so is the naive global one
    assert math.isnan(r["naive_with_an_all_ignored_shard"])
    np.testing.assert_allclose(r["global_with_an_all_ignored_shard"],
                               r["full_with_an_all_ignored_shard"], rtol=1e-12)


# --- Dask: lazy, chunked, out of core -------------------------------------------------------

@pytest.fixture
def dask_data(tmp_path):
    """Logits in a memory-mapped .npy file on disk, read by dask in 10 chunks."""
    import dask.array as da

    rng = np.random.default_rng(8)
    n, c = 20000, 10
    path = tmp_path / "logits.npy"
    mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, c))
    mm[:] = rng.normal(scale=3.0, size=(n, c))
    mm.flush()
    z = np.load(path, mmap_mode="r")
    soft = rng.dirichlet(np.ones(c), size=n)
    y = rng.integers(0, c, size=n)
    y[::7] = -100
    chunks = n // 10
    return dict(da=da, z=np.asarray(z), y=y, soft=soft,
                dz=da.from_array(z, chunks=(chunks, c)), dsoft=da.from_array(soft, chunks=(chunks, c)),
                dy=da.from_array(y, chunks=chunks), nbytes=z.nbytes, w=rng.uniform(0.2, 2.0, c))


def _forbid(*args, **kwargs):
    raise AssertionError("dask computed something before .compute() was asked for")


class _Largest:
    """A dask callback recording the largest array any task returns."""

    def __init__(self):
        from dask.callbacks import Callback

        self.largest = 0
        outer = self

        class Record(Callback):
            def _posttask(self, key, result, dsk, state, worker_id):
                outer.largest = max(outer.largest, getattr(result, "nbytes", 0))

        self.callback = Record()


@needs("dask.array")
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("target_kind", ["soft", "index-smoothed-weighted-ignore",
                                         "index-weighted-ignore"])
def test_dask_mean_and_sum_are_lazy_chunked_and_match_numpy(dask_data, loss, target_kind):
    import dask

    d = dask_data
    fn = getattr(el, loss)
    if target_kind == "soft":
        target, dtarget, options = d["soft"], d["dsoft"], {}
    else:
        target, dtarget = d["y"], d["dy"]
        options = {"ignore_index": -100}
        if "smoothed" in target_kind:
            options["label_smoothing"] = 0.1
    for reduction in ("mean", "sum"):
        dopts = dict(options, reduction=reduction)
        nopts = dict(dopts)
        if target_kind != "soft":
            dopts["weight"] = d["da"].from_array(d["w"])
            nopts["weight"] = d["w"]
        # building the graph computes nothing; arrays the loss creates itself (label
        # smoothing's xp.full) take dask's default chunk size, set small here as it would be
        # for data larger than memory
        with dask.config.set({"scheduler": _forbid, "array.chunk-size": "128KiB"}):
            lazy = fn(d["dz"], dtarget, **dopts)
            assert isinstance(lazy, d["da"].Array) and lazy.shape == ()
        recorder = _Largest()
        with dask.config.set(scheduler="synchronous"), recorder.callback:
            value = float(lazy.compute())
        expected = float(fn(d["z"], target, **nopts))
        np.testing.assert_allclose(value, expected, rtol=1e-12)
        # out of core: no task ever held more than a fifth of the logits
        assert 0 < recorder.largest <= d["nbytes"] / 5, (recorder.largest, d["nbytes"])


@needs("dask.array")
@pytest.mark.parametrize("target_kind", ["soft", "index-ignore"])
def test_dask_value_and_grad_is_lazy_and_matches_numpy(dask_data, target_kind):
    import dask

    d = dask_data
    if target_kind == "soft":
        target, dtarget, options = d["soft"], d["dsoft"], {}
    else:
        target, dtarget, options = d["y"], d["dy"], {"ignore_index": -100}
    with dask.config.set(scheduler=_forbid):
        value, grads = el.value_and_grad(el.mix_ent, d["dz"], dtarget, reverse_weight=0.3,
                                         **options)
    assert isinstance(grads["logits"], d["da"].Array)
    assert grads["logits"].chunks == d["dz"].chunks  # the gradient keeps the logits' chunks
    expected_value, expected = el.value_and_grad(el.mix_ent, d["z"], target, reverse_weight=0.3,
                                                 **options)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_allclose(float(value.compute()), float(expected_value), rtol=1e-12)
        np.testing.assert_allclose(grads["logits"].compute(), expected["logits"], rtol=1e-10,
                                   atol=1e-16)
