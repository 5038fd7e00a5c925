"""The linear-head losses where one process is not enough: torch DistributedDataParallel
(gloo, two CPU processes, each holding half the batch of hidden states) and JAX with the
hidden states and targets sharded over two host devices under ``jax.jit``.

The DDP model is what a user wraps: the classifier and bias (an ``nn.Linear``) and the
loss's learnt scalar, called on the rank's hidden states. The reductions are made global as
docs/reliability.md makes them for the plain losses: ``"sum"`` times the world size, and the
local sum over the all-reduced denominator ``D``. The hidden states, classifier, bias and
scalar then get one process's gradients of the plain loss on ``hidden @ W.T + b`` over the
whole batch (the hidden states' rows split between the ranks).
"""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from tests.helpers.distributed import WORLD, mean_denominator, needs_gloo, run_jax_script
from tests.helpers.distributed import ddp_results as shared_ddp_results
from tests.helpers.platforms import needs

# --- torch DistributedDataParallel, gloo, two processes --------------------------------------

FEATURES, CLASSES, BATCH, SEQUENCE = 5, 4, 6, 2  # hidden (BATCH, SEQUENCE, FEATURES)
CHUNK = 4  # rows of logits at a time: a rank's 6 rows are a chunk and a part of one

# name -> (loss, target kind, fixed options, the learnt scalar and its start, with a bias)
DDP_CASES = {
    "cross_entropy-weighted-ignore": ("cross_entropy", "index",
                                      {"weight": True, "ignore_index": -100}, ("base", 2.0), True),
    "min_ent-weighted-ignore-smoothed": ("min_ent", "index",
                                         {"weight": True, "ignore_index": -100,
                                          "label_smoothing": 0.1}, ("entropy_weight", 0.3), True),
    "mix_ent-soft": ("mix_ent", "soft", {"eps": 1e-3}, ("reverse_weight", 0.2), False),
    "adaptive_ce-ignore": ("adaptive_ce", "index", {"ignore_index": -100}, ("base", 3.0), True),
    "focal-weighted": ("focal", "index", {"weight": True, "gamma": 2.0}, ("base", 2.0), False),
    "entropy": ("entropy", None, {}, ("base", 2.0), True),
}
# the entropy is per position: summed only
KEYS = [f"{name}|{mode}" for name, case in DDP_CASES.items()
        for mode in (("sum", "global-mean") if case[1] else ("sum",))]


def _data():
    """Hidden states, class indices (rank 0's half mostly ignored, rank 1's not), soft
    targets, class weights; float64."""
    rng = np.random.default_rng(43)
    hidden = rng.normal(size=(BATCH, SEQUENCE, FEATURES))
    y = rng.integers(0, CLASSES, size=(BATCH, SEQUENCE))
    y[[0, 0, 1, 2], [0, 1, 1, 0]] = -100  # rank 0 keeps 2 of its 6 positions, rank 1 all 6
    soft = rng.dirichlet(np.ones(CLASSES), size=(BATCH, SEQUENCE))
    return hidden, y, soft, np.array([0.5, 2.0, 1.0, 3.0])


def _head(torch, with_bias, start):
    """The classifier (and bias) and the learnt scalar; the same start on every rank and
    in the single process."""
    torch.manual_seed(0)
    head = torch.nn.Module()
    head.linear = torch.nn.Linear(FEATURES, CLASSES, bias=with_bias, dtype=torch.float64)
    head.scalar = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
    return head


def _case(torch, name, part=slice(None)):
    """(the loss's name, target, fixed options as torch, the scalar's name, the head) for
    ``part`` of the batch."""
    loss, kind, options, (scalar, start), with_bias = DDP_CASES[name]
    _, y, soft, w = _data()
    if "ignore_index" not in options:
        y = np.where(y == -100, 1, y)
    target = None if kind is None else torch.tensor((y if kind == "index" else soft)[part])
    fixed = {k: torch.tensor(w) if k == "weight" else v for k, v in options.items()}
    return loss, target, fixed, scalar, _head(torch, with_bias, start)


def _local_sum_module(torch, name, part):
    """What DDP wraps: the head, whose forward is the linear-head loss summed over the
    rank's hidden states (the class is made here so that this file imports without
    torch)."""
    loss, target, fixed, scalar, head = _case(torch, name, part)
    fn = getattr(el, f"linear_{loss}")

    class LinearLoss(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, hidden):
            options = dict(bias=self.head.linear.bias, chunk_size=CHUNK,
                           **{scalar: self.head.scalar})
            if target is None:  # the entropy, per position
                return fn(hidden, self.head.linear.weight, **options).sum()
            return fn(hidden, self.head.linear.weight, target, reduction="sum", **options,
                      **fixed)

    return LinearLoss(), target, fixed


def ddp_job(rank):
    """One rank: for each case and way of reducing, a DDP backward on its half of the
    batch; the synchronised head gradients, its hidden states' gradient and the globally
    reduced value."""
    import torch
    import torch.distributed as dist

    part = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    results = {}
    for key in KEYS:
        name, mode = key.split("|")
        module, target, fixed = _local_sum_module(torch, name, part)
        model = torch.nn.parallel.DistributedDataParallel(module)
        hidden = torch.tensor(_data()[0][part]).requires_grad_()
        local = model(hidden)
        if mode == "sum":  # DDP averages gradients: scale by the world size
            objective, value = local * WORLD, local.detach().clone()
        else:
            objective = local * WORLD / _global_denominator(torch, target, fixed)
            value = objective.detach() / WORLD
        objective.backward()
        dist.all_reduce(value)  # the loss over the whole batch, as logged
        results[key] = {
            "value": float(value),
            "hidden": (hidden.grad / WORLD).tolist(),  # these rows' share of the global loss
            **{n: p.grad.tolist() for n, p in model.module.head.named_parameters()},
        }
    return results


def _global_denominator(torch, target, fixed):
    """The all-reduced D of docs/reliability.md's recipe. Of the logits it reads only the
    dtype, device and class count, which a (C,) stand-in has: the logits never exist."""
    import torch.distributed as dist

    stand_in = torch.empty(CLASSES, dtype=torch.float64)
    denominator = mean_denominator(stand_in, target, weight=fixed.get("weight"),
                                   ignore_index=fixed.get("ignore_index"))
    dist.all_reduce(denominator)
    return denominator


@pytest.fixture(scope="module")
def ddp_results():  # one spawn with test_distributed.py's ranks (tests.helpers.distributed)
    return shared_ddp_results("tests.test_linear_distributed:ddp_job")


def _one_process(name, mode):
    """The plain loss on ``hidden @ W.T + b`` over the whole batch, one process: its value
    and the gradients of hidden, the head and the scalar."""
    import torch

    loss, target, fixed, scalar, head = _case(torch, name)
    hidden = torch.tensor(_data()[0]).requires_grad_()
    logits = head.linear(hidden)
    if target is None:
        value = el.entropy(logits, **{scalar: head.scalar}).sum()
    else:
        value = getattr(el, loss)(logits, target, reduction="sum" if mode == "sum" else "mean",
                                  **{scalar: head.scalar}, **fixed)
    value.backward()
    grads = {n: p.grad.numpy() for n, p in head.named_parameters()}
    return float(value.detach()), {"hidden": hidden.grad.numpy(), **grads}


@needs_gloo
@pytest.mark.parametrize("key", KEYS)
def test_ddp_gradients_equal_one_process_on_the_whole_batch(ddp_results, key):
    value, grads = _one_process(*key.split("|"))
    assert set(ddp_results[0][key]) == {"value", *grads}
    for rank in range(WORLD):  # DDP leaves the same, synchronised gradients on every rank
        got = ddp_results[rank][key]
        np.testing.assert_allclose(got["value"], value, rtol=1e-12)
        for name in grads.keys() - {"hidden"}:
            np.testing.assert_allclose(np.array(got[name]), grads[name], rtol=1e-10,
                                       atol=1e-14, err_msg=name)
    hidden = np.concatenate([np.array(ddp_results[r][key]["hidden"]) for r in range(WORLD)])
    np.testing.assert_allclose(hidden, grads["hidden"], rtol=1e-10, atol=1e-14)


# --- JAX: two host devices, the batch of hidden states sharded, under jax.jit -----------------

JAX_SHARDED = r"""
import json
import jax, jax.numpy as jnp, numpy as np, entroloss as el
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

devices = jax.devices()
assert len(devices) == 2 and all(d.platform == "cpu" for d in devices), devices
assert jax.config.jax_enable_x64
mesh = Mesh(np.array(devices), ("batch",))
batch, replicated = NamedSharding(mesh, P("batch")), NamedSharding(mesh, P())
rng = np.random.default_rng(5)
h = rng.normal(size=(4, 2, 5))      # (batch, sequence, features): 8 rows, 4 per device
w, b = rng.normal(scale=0.8, size=(6, 5)), rng.normal(size=6)
y = rng.integers(0, 6, size=(4, 2))
counted = y.copy()                   # for the losses without ignore_index
y[0] = -100                          # device 0 counts 2 of its 4 positions
soft = rng.dirichlet(np.ones(6), size=(4, 2))
cw = rng.uniform(0.2, 2.0, size=6)
cases = {  # name -> (loss, target, fixed options, the learnt scalar and its value)
    "min_ent-mean": ("min_ent", y, dict(weight=cw, ignore_index=-100, label_smoothing=0.1),
                     ("entropy_weight", 0.4)),
    "mix_ent-soft-sum": ("mix_ent", soft, dict(reduction="sum"), ("reverse_weight", 0.3)),
    "focal-none": ("focal", counted, dict(gamma=1.5, reduction="none"), ("base", 2.0)),
}
report = {}
for name, (loss, target, fixed, (scalar, start)) in cases.items():
    fn = getattr(el, "linear_" + loss)
    jfixed = {k: jnp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in fixed.items()}

    def total(h, w, b, s, t, fn=fn, jfixed=jfixed, scalar=scalar):
        return fn(h, w, t, bias=b, chunk_size=4, **{scalar: s}, **jfixed).sum()

    step = jax.jit(jax.value_and_grad(total, argnums=(0, 1, 2, 3)))
    s = np.asarray(start)
    t = jax.device_put(jnp.asarray(target), batch)
    hs = jax.device_put(jnp.asarray(h), batch)
    v, g = step(hs, *(jax.device_put(jnp.asarray(a), replicated) for a in (w, b, s)), t)
    ref_v, ref = el.linear_value_and_grad(fn, h, w, target, bias=b, chunk_size=3,
                                          **{scalar: s}, **fixed)
    ref_g = [ref["hidden"], ref["classifier"], ref["bias"], ref[scalar]]
    report[name] = dict(
        value=float(v), value_one_process=float(np.sum(ref_v)),
        grad_diff=[float(np.max(np.abs(np.asarray(a) - e))) for a, e in zip(g, ref_g)],
        grad_scale=[float(np.max(np.abs(e))) for e in ref_g],
        input_devices=len(hs.sharding.device_set),
        hidden_grad_sharded_like_hidden=bool(g[0].sharding.is_equivalent_to(hs.sharding, hs.ndim)),
    )
print(json.dumps(report))
"""
# one case per path through the shards: a mean over the counted rows of every device, a
# soft target, and "none" (whose backward recomputes each chunk from its cotangent); each
# compiles for about 2 s, so the other losses (the same paths) are left to DDP above
JAX_CASES = ("min_ent-mean", "mix_ent-soft-sum", "focal-none")


@pytest.fixture(scope="module")
def jax_sharded():
    return run_jax_script(JAX_SHARDED, devices=2)


@needs("jax")
@pytest.mark.parametrize("name", JAX_CASES)
def test_jax_sharded_hidden_states_under_jit_equal_one_process(jax_sharded, name):
    """Value and the gradients of hidden, classifier, bias and the scalar against the
    unsharded NumPy run of the same loss; the hidden states' gradient stays sharded."""
    r = jax_sharded[name]
    assert r["input_devices"] == 2
    np.testing.assert_allclose(r["value"], r["value_one_process"], rtol=1e-12)
    for diff, scale in zip(r["grad_diff"], r["grad_scale"], strict=True):
        assert diff <= 1e-12 * scale
    assert r["hidden_grad_sharded_like_hidden"]
