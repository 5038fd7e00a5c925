"""The classes sharded over JAX devices (issue 21): ``class_axis=`` inside ``jax.shard_map``,
and ``jax.jit`` over a class-sharded ``NamedSharding`` without it.

Everything runs in one subprocess with 4 CPU devices (``tests/helpers/distributed.py``):
every loss, plain (the logits' slice) and linear (the classifier's rows and the bias's
slice), under a lean set of options, against the one-process loss on the whole logits;
the compiled programs of ``jax.jit`` on class-sharded arrays, read for collectives; bad
input under ``class_axis``.
"""

from __future__ import annotations

import numpy as np
import pytest

import entroloss as el
from tests.helpers.distributed import run_jax_script
from tests.helpers.platforms import needs

DEVICES = 4
OPTIONS = ("ignore-weight-smooth-mean", "softcap-zloss-none", "soft-smooth-sum")
KINDS = ("plain", "linear")

SCRIPT = r"""
import json, re
import jax, jax.numpy as jnp, numpy as np, entroloss as el
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

devices = jax.devices()
assert len(devices) == 4 and all(d.platform == "cpu" for d in devices), devices
assert jax.config.jax_enable_x64
mesh = Mesh(np.array(devices), ("tp",))
shard_map = getattr(jax, "shard_map", None)
if shard_map is None:  # (JAX versions before jax.shard_map)
    from jax.experimental.shard_map import shard_map
rng = np.random.default_rng(21)
N, C, H = 10, 8, 5                   # 2 classes per device; chunks of 4 rows pad the last
z = rng.normal(scale=1.5, size=(N, C))
hidden = rng.normal(size=(N, H))
w, b = rng.normal(scale=0.8, size=(C, H)), rng.normal(size=C)
y = rng.integers(0, C, size=N)
y_ignored = y.copy()
y_ignored[[1, 6]] = -100
soft = rng.dirichlet(np.ones(C), size=N)
cw = rng.uniform(0.2, 2.0, size=C)
LEARNT = {"cross_entropy": ("base", 2.0), "min_ent": ("entropy_weight", 0.4),
          "mix_ent": ("reverse_weight", 0.3), "adaptive_ce": ("base", 3.0),
          "focal": ("base", 2.0), "poly1": ("epsilon", 0.7)}
OPTIONS = {  # name -> (target, options, options given as arrays): every reduction
    "ignore-weight-smooth-mean": (y_ignored, dict(ignore_index=-100, label_smoothing=0.1),
                                  dict(weight=cw)),
    "softcap-zloss-none": (y, dict(softcap=3.0, z_loss=1e-2, reduction="none"), {}),
    "soft-smooth-sum": (soft, dict(label_smoothing=0.05, reduction="sum"), {}),
}
SLICE, ROWS = P(None, "tp"), P("tp", None)
report = {}
# the values do not depend on XLA's optimizations, which take half the compile time; the
# collectives (below) are read from the optimized program
jax.config.update("jax_disable_most_optimizations", True)


def compare(got, want):
    return dict(diff=[float(np.max(np.abs(np.asarray(g) - np.asarray(e))))
                      for g, e in zip(got, want)],
                scale=[float(np.max(np.abs(np.asarray(e)))) for e in want])


def sharded(kind, fn, fixed, is_soft):
    # the loss inside shard_map: (x, [w, b,] target, scalar, arrays) -> loss, the class
    # dimension split over "tp", everything else replicated
    t_spec = SLICE if is_soft else P()
    if kind == "plain":
        body = lambda z, t, s, a, scalar: fn(z, t, class_axis="tp", **{scalar: s}, **fixed, **a)
        specs = (SLICE, t_spec, P(), P())
    else:
        body = lambda h, w, b, t, s, a, scalar: fn(h, w, t, bias=b, chunk_size=4,
                                                  class_axis="tp", **{scalar: s}, **fixed, **a)
        specs = (P(), ROWS, P("tp"), t_spec, P(), P())
    return body, specs


def grid(kind, loss):
    # every option of one loss in one jit (one compilation)
    fn = getattr(el, loss if kind == "plain" else "linear_" + loss)
    scalar, start = LEARNT[loss]
    inputs = (z,) if kind == "plain" else (hidden, w, b)
    n_in = len(inputs)

    def everything(inputs, targets, s, arrays):
        out = {}
        for option, (_, fixed, _) in OPTIONS.items():
            is_soft = OPTIONS[option][0].dtype.kind == "f"
            body, specs = sharded(kind, fn, fixed, is_soft)
            f = shard_map(lambda *a, body=body: body(*a, scalar=scalar), mesh=mesh,
                          in_specs=specs, out_specs=P())
            argnums = tuple(range(n_in + (2 if is_soft else 1))) if is_soft else \
                (*range(n_in), n_in + 1)
            total = lambda *a, f=f: f(*a).sum()
            args = (*inputs, targets[option], s, arrays[option])
            v, g = jax.value_and_grad(total, argnums=argnums)(*args)
            out[option] = (v, g)
            if is_soft:  # the soft target's gradient on one device, for reference
                whole = lambda *a: (fn(a[0], a[1], **{scalar: a[2]}, **fixed) if kind == "plain"
                                    else fn(a[0], a[1], a[3], bias=a[2], chunk_size=3,
                                            **{scalar: a[4]}, **fixed)).sum()
                out[option + "/target"] = jax.grad(whole, argnums=n_in)(
                    *inputs, targets[option], s)
        return out

    targets = {o: jnp.asarray(t) for o, (t, _, _) in OPTIONS.items()}
    arrays = {o: {k: jnp.asarray(v) for k, v in a.items()} for o, (_, _, a) in OPTIONS.items()}
    out = jax.jit(everything)(tuple(map(jnp.asarray, inputs)), targets, jnp.asarray(start),
                              arrays)
    for option, (target, fixed, given) in OPTIONS.items():
        v, g = out[option]
        options = {scalar: np.asarray(start), **fixed, **given}
        if kind == "plain":
            ref_v, ref = el.value_and_grad(fn, z, target, **options)
            want, got = [ref["logits"], ref[scalar]], [g[0], g[-1]]
        else:
            ref_v, ref = el.linear_value_and_grad(fn, hidden, w, target, bias=b, chunk_size=3,
                                                  **options)
            want = [ref["hidden"], ref["classifier"], ref["bias"], ref[scalar]]
            got = [g[0], g[1], g[2], g[-1]]
        if option + "/target" in out:
            want.append(out[option + "/target"])
            got.append(g[n_in])
        report[f"{kind}-{loss}-{option}"] = dict(value=float(v), value_one=float(np.sum(ref_v)),
                                                 **compare(got, want))


for kind in ("plain", "linear"):
    for loss in el.LOSS_NAMES:
        try:
            grid(kind, loss)
        except Exception as e:  # reported by every case of the loss
            for option in OPTIONS:
                report[f"{kind}-{loss}-{option}"] = dict(error=f"{type(e).__name__}: {e}"[:2000])

# --- jax.jit over class-sharded arrays, no class_axis: the collectives XLA compiles ------

jax.config.update("jax_disable_most_optimizations", False)

Nh, Ch, Hh = 16, 256, 8              # a slice: 64 classes; logits 16 x 64, classifier 64 x 8
zh = jax.device_put(jnp.asarray(rng.normal(size=(Nh, Ch))), NamedSharding(mesh, SLICE))
softh = jax.device_put(jnp.asarray(rng.dirichlet(np.ones(Ch), size=Nh)),
                       NamedSharding(mesh, SLICE))
replicated = NamedSharding(mesh, P())
yh = jax.device_put(jnp.asarray(rng.integers(0, Ch, size=Nh)).at[3].set(-100), replicated)
cwh = jax.device_put(jnp.asarray(rng.uniform(0.5, 2.0, size=Ch)), replicated)
hh = jax.device_put(jnp.asarray(rng.normal(size=(Nh, Hh))), replicated)
wh = jax.device_put(jnp.asarray(rng.normal(size=(Ch, Hh))), NamedSharding(mesh, ROWS))
bh = jax.device_put(jnp.asarray(rng.normal(size=Ch)), NamedSharding(mesh, P("tp")))
COLLECTIVE = re.compile(r"= (.+?) (all-gather|all-reduce|reduce-scatter|all-to-all|"
                        r"collective-permute|collective-broadcast)(?:-start)?\(")
SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def collectives(text):
    found = []
    for line in text.splitlines():
        m = COLLECTIVE.search(line)
        if m:
            sizes = [int(np.prod([int(d) for d in s.split(",") if d])) for s in
                     SHAPE.findall(m.group(1))]
            found.append([m.group(2), m.group(1), max(sizes, default=0)])
    return found


hard = dict(ignore_index=-100, softcap=5.0, z_loss=1e-3, reduction="none")
local = lambda x: np.asarray(x)  # the whole array, for NumPy (one process)
for loss in el.LOSS_NAMES:
    fn, lfn = getattr(el, loss), getattr(el, "linear_" + loss)

    def plain(z, y, soft, cw):
        return (fn(z, y, weight=cw, label_smoothing=0.1, **hard).sum()
                + fn(z, soft, reduction="sum"))

    def linear(h, w, b, y, soft, cw):  # chunks of 5 rows: the last one padded
        return (lfn(h, w, y, bias=b, weight=cw, chunk_size=5, **hard).sum()
                + lfn(h, w, soft, bias=b, chunk_size=5, label_smoothing=0.1))

    def one_process(kind, args):
        if kind == "plain":
            z, y, soft, cw = map(local, args)
            parts = (el.value_and_grad(fn, z, y, weight=cw, label_smoothing=0.1, **hard),
                     el.value_and_grad(fn, z, soft, reduction="sum"))
            return [sum(np.sum(v) for v, _ in parts), sum(g["logits"] for _, g in parts)]
        h, w, b, y, soft, cw = map(local, args)
        parts = (el.linear_value_and_grad(lfn, h, w, y, bias=b, weight=cw, chunk_size=3, **hard),
                 el.linear_value_and_grad(lfn, h, w, soft, bias=b, label_smoothing=0.1))
        return [sum(np.sum(v) for v, _ in parts),
                *(sum(g[n] for _, g in parts) for n in ("hidden", "classifier", "bias"))]

    for kind, f, args in (("plain", plain, (zh, yh, softh, cwh)),
                          ("linear", linear, (hh, wh, bh, yh, softh, cwh))):
        key = f"hlo-{kind}-{loss}"
        try:
            step = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2) if kind == "linear" else 0))
            found = collectives(step.lower(*args).compile().as_text())
            got = jax.tree.leaves(step(*args))
            report[key] = dict(collectives=found, **compare(got, one_process(kind, args)))
        except Exception as e:
            report[key] = dict(error=f"{type(e).__name__}: {e}"[:2000])

# --- bad input under class_axis -----------------------------------------------------------

jax.config.update("jax_disable_most_optimizations", True)

bad_y = y.copy()
bad_y[[2, 7]] = (C + 3, -4)          # out of range: NaN at their rows, as under jax.jit
bad_soft = soft.copy()
bad_soft[5] *= 2.0                   # sums to 2 over all slices (each slice sums to less)


def bad_inputs(z, h, w, b, bad_y, bad_soft):
    none = dict(reduction="none")
    on_slices = lambda f, specs: shard_map(f, mesh=mesh, in_specs=specs, out_specs=P())
    plain = on_slices(lambda z, t: el.cross_entropy(z, t, class_axis="tp", **none),
                      (SLICE, P()))(z, bad_y)
    soft_rows = on_slices(lambda z, t: el.mix_ent(z, t, class_axis="tp", **none),
                          (SLICE, SLICE))(z, bad_soft)
    lin = on_slices(lambda h, w, b, t: el.linear_focal(h, w, t, bias=b, chunk_size=4,
                                                       class_axis="tp", **none),
                    (P(), ROWS, P("tp"), P()))(h, w, b, bad_y)
    one = (el.cross_entropy(z, bad_y, **none), el.mix_ent(z, bad_soft, **none),
           el.linear_focal(h, w, bad_y, bias=b, chunk_size=4, **none))
    return (plain, soft_rows, lin), one


sharded_, one = jax.jit(bad_inputs)(*map(jnp.asarray, (z, hidden, w, b, bad_y, bad_soft)))
for name, got, want in zip(("plain-index", "plain-soft-row", "linear-index"), sharded_, one):
    got, want = np.asarray(got), np.asarray(want)
    report["bad-" + name] = dict(nan_rows=np.flatnonzero(np.isnan(got)).tolist(),
                                 nan_rows_one=np.flatnonzero(np.isnan(want)).tolist(),
                                 finite_diff=float(np.nanmax(np.abs(got - want))))


def error_of(call):
    try:
        call()
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


in_tp = lambda f, specs: jax.jit(shard_map(f, mesh=mesh, in_specs=specs, out_specs=P()))
report["error-unknown-axis"] = error_of(lambda: in_tp(
    lambda z, t: el.cross_entropy(z, t, class_axis="model"), (SLICE, P()))(z, y))
report["error-unknown-axis-linear"] = error_of(lambda: in_tp(
    lambda h, w, t: el.linear_cross_entropy(h, w, t, class_axis="model"),
    (P(), ROWS, P()))(hidden, w, y))
report["error-outside-shard-map"] = error_of(
    lambda: el.cross_entropy(jnp.asarray(z), jnp.asarray(y), class_axis="tp"))


def eager():  # shard_map without jax.jit: the value, and jax.grad of it (a linear head,
    # whose custom_vjp JAX cannot run op by op there; the plain losses' op-by-op run takes
    # 10 s of dispatches, and its custom_jvp is the one checked above)
    lin = shard_map(lambda h, w, t: el.linear_focal(h, w, t, chunk_size=4, class_axis="tp"),
                    mesh=mesh, in_specs=(P(), ROWS, P()), out_specs=P())
    lref_v, lref = el.linear_value_and_grad(el.linear_focal, hidden, w, y)
    args = (jnp.asarray(hidden), jnp.asarray(w), jnp.asarray(y))
    got = [lin(*args), *jax.grad(lin, argnums=(0, 1))(*args)]
    return compare(got, [lref_v, lref["hidden"], lref["classifier"]])


try:
    report["eager"] = eager()
except Exception as e:
    report["eager"] = dict(error=f"{type(e).__name__}: {e}"[:2000])
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def results():
    return run_jax_script(SCRIPT, devices=DEVICES)


def _fine(diff: float, scale: float) -> bool:
    return diff <= 1e-10 * max(scale, 1.0)


GRID = [f"{kind}-{loss}-{option}" for kind in KINDS for loss in el.LOSS_NAMES
        for option in OPTIONS]


@needs("jax")
@pytest.mark.parametrize("key", GRID)
def test_class_axis_equals_one_device(results, key):
    """Value and gradients (logits; hidden, classifier, bias; the learnt scalar; a soft
    target's) inside shard_map under jax.jit equal the one-process loss on the whole
    logits (NumPy's; a soft target's gradient JAX's on one device), float64, 1e-10."""
    r = results[key]
    assert "error" not in r, r["error"]
    assert _fine(abs(r["value"] - r["value_one"]), abs(r["value_one"])), r
    for diff, scale in zip(r["diff"], r["scale"], strict=True):
        assert _fine(diff, scale), r


HLO = [f"hlo-{kind}-{loss}" for kind in KINDS for loss in el.LOSS_NAMES]
SLICE_ELEMENTS = 64  # classes per device in the HLO checks (256 over 4)


@needs("jax")
@pytest.mark.parametrize("key", HLO)
def test_jit_on_class_sharded_arrays_gathers_nothing_of_the_classes(results, key):
    """jax.jit over logits (or a classifier and bias) sharded along the classes, without
    class_axis: XLA compiles all-reduces of numbers per row (and, linear, of each chunk's
    hidden-state gradient); no all-gather of anything as large as a slice of the classes
    (logits 16 x 64, classifier 64 x 8, bias 64: the linear heads' padded rows take the
    largest bias from one number per device). Values and gradients equal one device's."""
    r = results[key]
    assert "error" not in r, r["error"]
    kinds = {kind for kind, _, _ in r["collectives"]}
    assert "all-reduce" in kinds, r["collectives"]
    assert kinds <= {"all-reduce", "all-gather"}, r["collectives"]
    gathered = [size for kind, _, size in r["collectives"] if kind == "all-gather"]
    assert all(size < SLICE_ELEMENTS for size in gathered), r["collectives"]
    reduced = [size for kind, _, size in r["collectives"] if kind == "all-reduce"]
    assert max(reduced) < 16 * 64, r["collectives"]  # per row (and chunk x H), never logits
    for diff, scale in zip(r["diff"], r["scale"], strict=True):
        assert _fine(diff, scale), r


@needs("jax")
@pytest.mark.parametrize("name", ["plain-index", "plain-soft-row", "linear-index"])
def test_class_axis_bad_data_gives_nan_as_under_jit(results, name):
    """Traced, nothing can be read or raised: a class index out of range (of all classes)
    or a soft row that is no distribution over all the slices gives NaN at its row, the
    rows jax.jit on one device gives NaN; the other rows are unchanged."""
    r = results["bad-" + name]
    assert r["nan_rows"] == r["nan_rows_one"] and r["nan_rows"], r
    assert r["finite_diff"] <= 1e-12, r


@needs("jax")
@pytest.mark.parametrize("key", ["error-unknown-axis", "error-unknown-axis-linear",
                                 "error-outside-shard-map"])
def test_class_axis_not_bound_is_a_clear_error(results, key):
    error = results[key]
    assert error is not None and error.startswith("ValueError") and "class_axis" in error, error


@needs("jax")
def test_class_axis_with_numpy_arrays_names_class_axis():
    with pytest.raises(TypeError, match="class_axis"):
        el.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), class_axis="tp")


@needs("torch")
@needs("jax")
def test_class_axis_with_torch_tensors_names_class_axis():
    import torch

    with pytest.raises(TypeError, match="class_axis.*class_group"):
        el.linear_cross_entropy(torch.zeros(2, 4), torch.zeros(3, 4), torch.tensor([0, 1]),
                                class_axis="tp")


@needs("jax")
def test_class_axis_without_jit(results):
    """shard_map called op by op (no jax.jit): the value and jax.grad of a linear head
    (whose custom_vjp is staged by jit there). (The plain losses work op by op too, but
    take some 10 s to run so; they are not run here.)"""
    r = results["eager"]
    assert "error" not in r, r["error"]
    for diff, scale in zip(r["diff"], r["scale"], strict=True):
        assert _fine(diff, scale), r


@needs("jax")
def test_the_same_axis_and_slice_give_the_same_static_spec():
    """The collectives are part of the static spec (custom_jvp/custom_vjp): equal for every
    call with the same axis and slice, so that nothing is traced again."""
    from entroloss._math import ClassSlice
    from entroloss.backends.jax_sharded import Slices

    assert ClassSlice(8, Slices("tp", 2)) == ClassSlice(8, Slices("tp", 2))
    assert hash(ClassSlice(8, Slices("tp", 2))) == hash(ClassSlice(8, Slices("tp", 2)))
    assert Slices("tp", 2) != Slices("tp", 3) and Slices("tp", 2) != Slices("dp", 2)


@needs("jax")
def test_the_guide_s_jax_examples_run():
    """docs/tensor-parallel.md's two JAX blocks, as written, on 4 host devices: the
    shard_map MIN-ENT head and plain cross entropy, then jit over a NamedSharding
    classifier; each value against the one-device loss of the same arrays."""
    import re
    from pathlib import Path

    page = (Path(__file__).parents[1] / "docs" / "tensor-parallel.md").read_text()
    jax_blocks = [b for b in re.findall(r"```python\n(.*?)```", page, re.S) if "jax" in b]
    assert len(jax_blocks) == 2, "the guide's JAX examples moved: update this test"
    shard_map_block, jit_block = jax_blocks
    check = r"""
import json
w = np.asarray(classifier)
one = lambda f, *a, **k: float(f(*(np.asarray(x) for x in a), **k))
out = {"min_ent": (float(min_ent), one(el.linear_min_ent, hidden, w, target,
                                       entropy_weight=0.1)),
       "plain": (float(plain), one(el.cross_entropy, np.asarray(hidden) @ w.T, target)),
       "jit": (float(value), one(el.linear_cross_entropy, hidden, w, target))}
print(json.dumps(out))
"""
    script = shard_map_block + "\nmin_ent = value\n" + jit_block + check
    for name, (sharded, one_device) in run_jax_script(script, DEVICES).items():
        assert sharded == pytest.approx(one_device, rel=1e-10), name
