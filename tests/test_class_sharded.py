"""Classes sharded over processes (``class_group=``, issue 21): real gloo ranks, 2 and 3,
with uneven slices of C = 11 classes (6/5 and 4/3/4), every loss of the registry, plain
and linear head, against the one-process loss on the whole logits (classifier), in
float64 to 1e-10: the value and every gradient (the logits' slice; the hidden states, the
classifier's and bias's slices; a soft target's slice; the weights and bases learnt as
0-d tensors). Then ``entropy``/``linear_entropy``, DTensors (the mesh gives the group),
an ``nn.Module`` loss, and bad input, where every rank must raise (the collectives time
out after 30 s, so a hang fails).

One spawn per world size runs the whole grid inside the ranks (``_work``); each case is
then its own test.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest

from tests.helpers.distributed import needs_gloo, run_ranks
from tests.helpers.platforms import needs_platform

N, C, H = 6, 11, 5  # rows, classes, features
BOUNDS = {2: (0, 6, 11), 3: (0, 4, 7, 11)}  # each rank's first class (uneven slices)
TOL = 1e-10
LOSSES = ("cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal", "poly1")
OWN = {"focal": {"gamma": 1.5}, "mix_ent": {"eps": 1e-3}}  # the losses' own options

# name -> (target kind, options; "W" the class weights, "SW" the sample weights, learn
# every weight and base of the loss as a 0-d tensor)
VARIANTS = {
    "defaults": ("index", {}, False),
    "ignore-weight-smoothing-learnt": ("ignored", {"ignore_index": -100, "weight": "W",
                                                   "label_smoothing": 0.1}, True),
    "softcap-zloss-sampleweight-sum": ("index", {"softcap": 4.0, "z_loss": 1e-3,
                                                 "sample_weight": "SW", "reduction": "sum"},
                                       False),
    "soft-weight-none-learnt": ("soft", {"weight": "W", "reduction": "none"}, True),
    "soft-chunked-smoothing-softcap": ("soft", {"chunk_size": 4, "label_smoothing": 0.1,
                                                "softcap": 5.0}, False),
    "chunked-own-ignore": ("ignored", {"chunk_size": 4, "ignore_index": -100, "own": True},
                           False),
}
# name -> (loss, linear, target kind, options, learn, how the inputs are given)
CASES: dict = {f"{loss}-{'linear' if linear else 'plain'}-{variant}": (
    loss, linear, kind, options, learn, "group")
    for loss in LOSSES for linear in (False, True)
    for variant, (kind, options, learn) in VARIANTS.items()}
CASES.update({
    "entropy-plain-base-learnt": ("entropy", False, None, {}, True, "group"),
    "entropy-plain-softcap": ("entropy", False, None, {"softcap": 3.0}, False, "group"),
    "entropy-linear-bias-chunked-learnt": ("entropy", True, None, {"chunk_size": 4}, True,
                                           "group"),
    "dtensor-cross_entropy-plain-replicated-target": ("cross_entropy", False, "ignored",
                                                      {"ignore_index": -100, "weight": "W"},
                                                      False, "dtensor"),
    "dtensor-min_ent-plain-soft-target": ("min_ent", False, "soft", {"reduction": "none"},
                                          False, "dtensor"),
    "dtensor-cross_entropy-linear-classifier-bias": ("cross_entropy", True, "index",
                                                     {"chunk_size": 4}, False, "dtensor"),
    "dtensor-entropy-plain": ("entropy", False, None, {}, False, "dtensor"),
    "module-MinEntLoss-weight-ignore": ("min_ent", False, "ignored", {"weight": "W"}, False,
                                        "module"),
})

# name -> (exception type, what the message says on rank 0, on the other ranks)
BAD = {
    "index-out-of-range-every-rank": ("ValueError", "outside [0, 11)", "outside [0, 11)"),
    "index-out-of-range-one-rank": ("ValueError", "outside [0, 11)", "different targets"),
    "index-out-of-range-one-rank-linear": ("ValueError", "outside [0, 11)",
                                           "different targets"),
    "different-rows": ("ValueError", "different numbers of rows", "different numbers of rows"),
    "soft-slices-not-summing-to-one": ("ValueError", "sum to 1", "sum to 1"),
    "class-weight-of-local-length": ("ValueError", "weight must have shape (11,)",
                                     "weight must have shape (11,)"),
    "class-weight-of-local-length-linear": ("ValueError", "weight must have shape (11,)",
                                            "weight must have shape (11,)"),
    "class-group-not-a-group": ("TypeError", "class_group", "class_group"),
    "class-group-numpy": ("TypeError", "needs torch tensors", "needs torch tensors"),
    "class-group-and-class-axis": ("ValueError", "not both", "not both"),
    "dtensor-sharded-on-rows": ("ValueError", "only Shard on its class dimension 1",
                                "only Shard on its class dimension 1"),
    "different-options-on-one-rank": ("ValueError", "different options", "different options"),
    "different-targets-unvalidated": ("ValueError", "different targets", "different targets"),
    "entropy-base-bad-on-one-rank": ("ValueError", "base", "refused their arguments"),
    "different-class-weights-on-one-rank": ("ValueError", "different class weights",
                                            "different class weights"),
}


# --- inside the ranks ---------------------------------------------------------------------


def _data():
    import torch

    g = torch.Generator().manual_seed(7)
    r = functools.partial(torch.randn, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (N,), generator=g)
    ignored = y.clone()
    ignored[[1, 4]] = -100
    return {"z": r(N, C) * 3, "index": y, "ignored": ignored,
            "soft": torch.softmax(r(N, C), -1), "W": torch.rand(C, generator=g,
                                                                dtype=torch.float64) + 0.5,
            "SW": torch.rand(N, generator=g, dtype=torch.float64) + 0.5,
            "hidden": r(N, H), "classifier": r(C, H), "bias": r(C), "cotangent": r(N)}


def _learnt(loss):
    """Every weight and base of the loss, as 0-d tensors that require grad."""
    import torch

    from entroloss import _losses

    if loss == "entropy":
        return {"base": torch.tensor(3.0, dtype=torch.float64, requires_grad=True)}
    return {p.name: torch.tensor(3.0 if p.is_base else 0.6, dtype=torch.float64,
                                 requires_grad=True)
            for p in _losses.by_name(loss).parameters}


def _evaluate(case, d, where):
    """The case's value and gradients; ``where`` None: one process, else ``(first class,
    end, group, mesh)`` of this rank (the gradients of the inputs it holds)."""
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor

    import entroloss as el
    from entroloss import _losses
    from entroloss.backends import torch as el_torch

    loss, linear, kind, options, learn, given = case
    a, b = (0, C) if where is None else where[:2]
    dtensor = where is not None and given == "dtensor"
    options = {k: v for k, v in options.items() if k != "own"}
    options.update(OWN.get(loss, {}) if case[3].get("own") else {})
    options = {k: d[v] if isinstance(v, str) and v in d else v for k, v in options.items()}
    leaves = _learnt(loss) if learn else {}
    options.update(leaves)
    if where is not None and not dtensor:
        options["class_group"] = where[2]

    def leaf(name, value, placement=None):
        if dtensor and placement is not None:
            value = distribute_tensor(value, where[3], [placement])
        leaves[name] = value.clone().detach().requires_grad_()
        return leaves[name]

    target = d.get(kind) if kind else None
    if kind == "soft":
        target = leaf("target", target[:, a:b] if not dtensor else target, Shard(-1))
    elif dtensor and target is not None:
        target = distribute_tensor(target, where[3], [Replicate()])
    if linear:
        rows = slice(a, b) if not dtensor else slice(None)
        args = [leaf("hidden", d["hidden"], Replicate()),
                leaf("classifier", d["classifier"][rows], Shard(0))]
        options["bias"] = leaf("bias", d["bias"][rows], Shard(0))
        fn = getattr(el, f"linear_{loss}")
    else:
        args = [leaf("logits", d["z"][:, a:b] if not dtensor else d["z"], Shard(-1))]
        fn = getattr(el, loss)
    if loss == "entropy":
        options["base"] = options.pop("base", 2.0)
    else:
        args.append(target)
    if given == "module":
        module_cls = getattr(el_torch, _losses.by_name(loss).module)
        weight = options.pop("weight", None)
        fn = module_cls(weight, **options)
        options = {}
    value = fn(*args, **options)
    per_row = value.ndim == 1
    (value * d["cotangent"] if per_row else value).sum().backward()
    grads = {}
    for name, t in leaves.items():
        grad = t.grad
        if dtensor and hasattr(grad, "to_local"):
            grads[name + "-placement"] = str(grad.placements)
            grad = grad.to_local()
        grads[name] = grad
    return value.detach(), grads


_CLASS_DIM = {"logits": 1, "target": 1, "classifier": 0, "bias": 0}


def _compare(case, d, where):
    """The largest difference between the sharded call and the one-process one, by part."""
    full_value, full = _evaluate(case, d, None)
    value, grads = _evaluate(case, d, where)
    a, b = where[:2]
    out = {"value": float((value - full_value).abs().max())}
    for name, grad in full.items():
        if name.endswith("-placement"):
            continue
        dim = _CLASS_DIM.get(name)
        if dim is not None:
            grad = grad.narrow(dim, a, b - a)
        if grads.get(name) is None or grads[name].shape != grad.shape:
            out[name] = f"no gradient, or of shape {getattr(grads.get(name), 'shape', None)}"
        else:
            out[name] = float((grads[name] - grad).abs().max())
    out.update({k: v for k, v in grads.items() if k.endswith("-placement")})
    return out


def _bad(name, d, rank, world, group, mesh):
    """Call the bad input ``name`` on this rank."""
    import numpy as np
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    import entroloss as el

    a, b = BOUNDS[world][rank], BOUNDS[world][rank + 1]
    z, y = d["z"][:, a:b], d["index"]
    linear = name.endswith("-linear")
    call = el.linear_cross_entropy if linear else el.cross_entropy
    first = (d["hidden"], d["classifier"][a:b]) if linear else (z,)
    if name.startswith("index-out-of-range"):
        y = y.clone()
        if rank == 0 or name.endswith("every-rank"):
            y[2] = C
        return call(*first, y, class_group=group)
    if name == "different-rows":
        rows = N - 1 if rank == 1 else N
        return el.cross_entropy(z[:rows], y[:rows], class_group=group)
    if name == "soft-slices-not-summing-to-one":  # each slice sums to 1 on its own
        q = torch.softmax(d["z"][:, a:b], -1)
        return el.cross_entropy(z, q, class_group=group)
    if name.startswith("class-weight-of-local-length"):
        return call(*first, y, weight=d["W"][a:b], class_group=group)
    if name == "class-group-not-a-group":
        return el.cross_entropy(z, y, class_group="world")
    if name == "class-group-numpy":
        return el.cross_entropy(np.asarray(z), np.asarray(y), class_group=group)
    if name == "class-group-and-class-axis":
        return el.cross_entropy(z, y, class_group=group, class_axis="classes")
    if name == "different-options-on-one-rank":  # a loss of other numbers, or other chunks
        return el.cross_entropy(z, y, class_group=group, label_smoothing=0.1 * (rank == 1))
    if name == "different-targets-unvalidated":  # not read for the checks, still compared
        y = y.clone()
        if rank == 1:
            y[0] = (y[0] + 1) % C
        return el.cross_entropy(z, y, class_group=group, validate=False)
    if name == "different-class-weights-on-one-rank":  # another loss, silently, if unread
        w = d["W"].clone()
        if rank == 1:
            w[0] += 0.5
        return call(*first, y, weight=w, class_group=group, validate=False)
    if name == "entropy-base-bad-on-one-rank":
        return el.entropy(z, base=-1.0 if rank == 0 else 2.0, class_group=group)
    if name == "dtensor-sharded-on-rows":
        return el.cross_entropy(distribute_tensor(d["z"], mesh, [Shard(0)]), y)
    raise AssertionError(name)


def _masked(d, rank, world, group):
    """entropy and linear_entropy where class 0 is masked (-inf logit, -inf bias): the
    one-process entropy, finite (their stand-in target is class 0, whose cross entropy,
    weighted 0, is +inf there: 0 * inf must not make it NaN)."""
    import torch

    import entroloss as el

    a, b = BOUNDS[world][rank], BOUNDS[world][rank + 1]
    z, bias = d["z"].clone(), d["bias"].clone()
    z[:, 0] = bias[0] = -torch.inf
    h, w = d["hidden"], d["classifier"]
    pairs = {"plain": (el.entropy(z[:, a:b], class_group=group), el.entropy(z)),
             "linear": (el.linear_entropy(h, w[a:b], bias=bias[a:b], class_group=group),
                        el.linear_entropy(h, w, bias=bias))}
    return {name: (bool(torch.isfinite(got).all()), float((got - want).abs().max()))
            for name, (got, want) in pairs.items()}


def _explicit(d, rank, world, group, mesh):
    """value_and_grad (the explicit path) with class_group and with DTensor logits: the
    one-process value, and the gradient of this rank's slice."""
    import torch
    from torch.distributed.tensor import Shard, distribute_tensor

    import entroloss as el

    a, b = BOUNDS[world][rank], BOUNDS[world][rank + 1]
    z, y = d["z"], d["ignored"]
    want, grads = el.value_and_grad(el.min_ent, z, y, ignore_index=-100)
    got, mine = el.value_and_grad(el.min_ent, z[:, a:b], y, ignore_index=-100, class_group=group)
    out = {"group": max(abs(float(got - want)),
                        float((mine["logits"] - grads["logits"][:, a:b]).abs().max()))}
    start = sum(len(c) for c in torch.arange(C).chunk(world)[:rank])
    local = torch.arange(C).chunk(world)[rank]
    got, mine = el.value_and_grad(el.min_ent, distribute_tensor(z, mesh, [Shard(1)]), y,
                                  ignore_index=-100)
    out["dtensor"] = max(abs(float(got - want)), float(
        (mine["logits"] - grads["logits"][:, start:start + len(local)]).abs().max()))
    return out


def _work(rank, world):
    """Every case on this rank: the differences by part, or the error raised."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    import torch

    group = dist.group.WORLD
    mesh = init_device_mesh("cpu", (world,))
    d = _data()
    results, chunks = {}, [len(c) for c in torch.arange(C).chunk(world)]
    for name, case in CASES.items():
        bounds = BOUNDS[world] if case[5] != "dtensor" else [0, *torch.tensor(chunks).cumsum(0)]
        where = (int(bounds[rank]), int(bounds[rank + 1]), group, mesh)
        try:
            results[name] = _compare(case, d, where)
        except Exception as e:  # noqa: BLE001 (reported by the test of the case)
            results[name] = {"raised": f"{type(e).__name__}: {e}"}
    for i, name in enumerate(BAD):
        try:
            _bad(name, d, rank, world, group, mesh)
            results[name] = {"raised": None}
        except Exception as e:  # noqa: BLE001
            results[name] = {"raised": type(e).__name__, "message": str(e)}
        # every rank is at the same case still (none stuck in, or skipped, a collective)
        seen = [torch.zeros(1, dtype=torch.int64) for _ in range(world)]
        dist.all_gather(seen, torch.tensor([i]), group=group)
        results[name]["aligned"] = all(int(s) == i for s in seen)
    results["masked"] = _masked(d, rank, world, group)
    results["explicit"] = _explicit(d, rank, world, group, mesh)
    return results


# --- the tests ----------------------------------------------------------------------------


@functools.cache
def _spawn(world):
    with tempfile.TemporaryDirectory(prefix="entroloss-tp-") as out:
        return run_ranks(functools.partial(_work, world=world), Path(out), world=world,
                         timeout=30)


@pytest.fixture(scope="module", params=(2, 3), ids=lambda w: f"{w}ranks")
def ranks(request):
    return _spawn(request.param)


@needs_gloo
@pytest.mark.parametrize("case", list(CASES))
def test_matches_one_process(ranks, case):
    for rank, results in enumerate(ranks):
        parts = results[case]
        assert "raised" not in parts, f"rank {rank}: {parts['raised']}"
        for part, error in parts.items():
            if part.endswith("-placement"):  # a DTensor's gradient: sharded as it was
                assert "Shard" in error or "Replicate" in error, (rank, part, error)
                continue
            assert isinstance(error, float) and error <= TOL, (rank, part, error)
        if case.startswith("dtensor-"):  # the gradient is a DTensor placed as its input
            if "-linear-" in case:
                assert parts["classifier-placement"] == "(Shard(dim=0),)", parts
                assert parts["hidden-placement"] == "(Replicate(),)", parts
            else:
                assert parts["logits-placement"] == "(Shard(dim=1),)", parts


@needs_gloo
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_raises_on_every_rank(ranks, case):
    kind, first, others = BAD[case]
    for rank, results in enumerate(ranks):
        got = results[case]
        assert got["aligned"], f"rank {rank} fell out of step with the others"
        assert got["raised"] == kind, (rank, got)
        assert (first if rank == 0 else others) in got["message"], (rank, got)


@needs_gloo
def test_the_entropy_of_a_masked_class_is_finite(ranks):
    for rank, results in enumerate(ranks):
        for kind, (finite, error) in results["masked"].items():
            assert finite and error <= TOL, (rank, kind, finite, error)


@needs_gloo
def test_value_and_grad_takes_its_slice(ranks):
    for rank, results in enumerate(ranks):
        for how, error in results["explicit"].items():
            assert error <= TOL, (rank, how, error)


# --- NCCL: one rank on a GPU (skips where there is none) ----------------------------------

NCCL_SCRIPT = r"""
import json, sys
import torch, torch.distributed as dist
import entroloss as el

dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{sys.argv[1]}", rank=0,
                        world_size=1)
torch.cuda.set_device(0)
gen = torch.Generator(device="cuda").manual_seed(0)
r = lambda *shape: torch.randn(*shape, device="cuda", dtype=torch.float64, generator=gen)
z, h, w, b = r(64, 1000), r(64, 32), r(1000, 32), r(1000)
y = torch.randint(0, 1000, (64,), device="cuda", generator=gen)
y[:3] = -100
errors = {}
for name in el.LOSS_NAMES:
    for linear, fn in ((False, getattr(el, name)), (True, getattr(el, "linear_" + name))):
        got = []
        for group in (None, dist.group.WORLD):
            args = [t.clone().requires_grad_() for t in ((h, w, b) if linear else (z,))]
            bias = {"bias": args.pop()} if linear else {}
            value = fn(*args, y, ignore_index=-100, label_smoothing=0.1, class_group=group,
                       **bias)
            value.backward()
            got.append([value.detach()] + [a.grad for a in args + list(bias.values())])
        errors[f"{name}-{'linear' if linear else 'plain'}"] = max(
            float((a - b).abs().max()) for a, b in zip(*got))
print(json.dumps(errors))
dist.destroy_process_group()
"""


@needs_platform("torch-cuda")
def test_class_group_on_nccl_cuda_matches_one_process():
    """The NCCL path (the collectives' tensors on the current CUDA device) on one GPU: a
    group of one rank gives the one-process loss and gradients, every loss, plain and
    linear. (Several GPUs' slices are the gloo tests' ranks.)"""
    import json
    import subprocess
    import sys

    import torch.distributed as dist

    from tests.helpers.distributed import _free_port

    if not dist.is_nccl_available():
        pytest.skip("torch.distributed has no NCCL here")
    out = subprocess.run([sys.executable, "-c", NCCL_SCRIPT, str(_free_port())],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    for case, error in json.loads(out.stdout.strip().splitlines()[-1]).items():
        assert error <= TOL, (case, error)
