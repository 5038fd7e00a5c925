"""Where do the losses help? A seeded study on MNIST-1D and scikit-learn's digits.

    python benchmarks/training/study.py                 # the full study: 5 seeds, 585 runs
                                                        # (21 min on the shared 2-core CPU, ~11 idle)
    python benchmarks/training/study.py --quick --out /tmp/q   # 2 seeds, 2 epochs, small data (~30 s)
    python benchmarks/training/study.py --page-only     # rewrite docs/results.md from docs/results.json

Every loss (cross entropy, label smoothing, MIN-ENT, MIX-ENT, symmetric cross entropy as a
MIX-ENT setting, adaptive CE, focal) trains the same model from the same initialisations on
the same batches, on the same corrupted training set, under seven conditions: clean;
symmetric label noise at 20% and 40%; class-dependent noise (each class flipped to the next)
at 20% and 40%; long-tailed imbalance at ratios 10 and 100. The test sets stay clean. A
learnable MIN-ENT (its weights and bases trained with the model) runs on the clean data,
and each loss's own knob is swept on one setting (MNIST-1D, 40% symmetric noise). The
models, corruptions and training loop are in ``study_torch.py``.

For every loss, condition and metric the JSON holds the per-seed values, their mean and
95% t-interval, and the paired difference to cross entropy (same seed: same data,
initialisation and batches) with its interval. Writes <out>/results.json,
<out>/results-*.png and <out>/results.md (out: docs/ unless --out); the page's conclusion
is docs/results-conclusion.md, written by a person after reading the numbers (the tests
check its figures against results.json); its section on learnt weights comes from
docs/learnable.json, written by ``learnable_weights.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import platform as platform_module
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import study_torch as st  # noqa: E402

from entroloss.tools import training  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
METRICS = ("accuracy", "balanced_accuracy", "tail_recall", "nll", "ece", "entropy")
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306,
         10: 2.262, 15: 2.145, 20: 2.093, 30: 2.045}

PROFILES = {
    "full": {"seeds": 5, "epochs": 30, "mnist1d_samples": 5000},
    "quick": {"seeds": 2, "epochs": 2, "mnist1d_samples": 600},
}
CONDITIONS = (
    st.Condition("clean"),
    st.Condition("symmetric", 0.2), st.Condition("symmetric", 0.4),
    st.Condition("pairflip", 0.2), st.Condition("pairflip", 0.4),
    st.Condition("longtail", 10), st.Condition("longtail", 100),
)
CONDITION_TITLES = {"clean": "clean labels", "symmetric": "symmetric label noise",
                    "pairflip": "class-dependent label noise (c -> c+1)",
                    "longtail": "long-tailed imbalance"}

# Symmetric cross entropy (Wang et al. 2019): alpha CE + beta RCE, RCE = -A (1 - p_y) for a
# one-hot target with log 0 clipped to A. mix_ent's R = -log(eps) (1 - p_y) - log(1 + eps) p_y,
# so ce_weight=alpha, reverse_weight=beta, eps=e^A. Their CIFAR-10 setting: alpha 0.1, beta 1, A -4.
SCE_EPS = math.exp(-4.0)
SCE_LAMBDA = (-math.log(SCE_EPS) + math.log1p(SCE_EPS)) / 0.1  # its (1 - p_y) coefficient over its CE weight
SCE = st.LossSpec("SCE (0.1 CE + 1.0 RCE, A=-4)", "mix_ent",
                  {"ce_weight": 0.1, "reverse_weight": 1.0, "eps": SCE_EPS})
LOSSES = tuple(st.LossSpec(s.label, s.loss.name, dict(s.options)) for s in training.SETTINGS) + (SCE,)
REFERENCE = LOSSES[0].label  # cross entropy
LEARNABLE = st.LossSpec("MIN-ENT learnable", "min_ent",
                        {"entropy_weight": training.TRAINING_OPTIONS["entropy_weight"]},
                        learnable=True)

SWEEP_DATASET, SWEEP_CONDITION = "mnist1d", st.Condition("symmetric", 0.4)
_MIX_WEIGHTS = (0.02, 0.07, 0.2, 0.7, 2.0)  # at eps 1e-6: lambda = w * 13.8 = 0.28 ... 27.6


def _sweep() -> dict:
    """knob -> (axis label, [(x, line, LossSpec)]): x = 0 is plain cross entropy."""
    ce = st.LossSpec("cross entropy", "cross_entropy", {})
    lam6 = -math.log(1e-6)
    mix = [(0.0, "eps=1e-6", ce), (0.0, "eps=e^-4", ce)]
    for w in _MIX_WEIGHTS:
        mix.append((w * lam6, "eps=1e-6", st.LossSpec(f"MIX-ENT reverse_weight={w:g}", "mix_ent",
                                                      {"reverse_weight": w, "eps": 1e-6})))
        if w not in (0.07, 0.7):
            continue
        w4 = round(w * lam6 / 4.0, 4)  # the same lambda at eps = e^-4: only lambda should matter
        mix.append((w4 * 4.0, "eps=e^-4", st.LossSpec(f"MIX-ENT reverse_weight={w4:g}, eps=e^-4",
                                                       "mix_ent", {"reverse_weight": w4, "eps": SCE_EPS})))
    return {
        "entropy_weight": ("MIN-ENT entropy_weight", [(0.0, "MIN-ENT", ce)] + [
            (w, "MIN-ENT", st.LossSpec(f"MIN-ENT entropy_weight={w:g}", "min_ent", {"entropy_weight": w}))
            for w in (0.03, 0.1, 0.3, 1.0)]),
        "reverse_weight": ("MIX-ENT lambda = reverse_weight * (-ln eps)", mix),
        "gamma": ("focal gamma (1 = adaptive CE)", [(0.0, "focal", ce)] + [
            (g, "focal", st.LossSpec(f"focal gamma={g:g}", "focal", {"gamma": g}))
            for g in (0.5, 1.0, 2.0, 3.0, 5.0)]),
        "label_smoothing": ("cross entropy label_smoothing", [(0.0, "label smoothing", ce)] + [
            (e, "label smoothing", st.LossSpec(f"label smoothing {e:g}", "cross_entropy",
                                               {"label_smoothing": e}))
            for e in (0.05, 0.1, 0.2, 0.3)]),
    }


SWEEP = _sweep()


# --- statistics -----------------------------------------------------------------------------

def interval(values) -> list:
    """[mean, half-width of a 95% t-interval] (NaN half-width for a single value)."""
    values = np.asarray(values, float)
    n = len(values)
    if n < 2:
        return [float(values.mean()), math.nan]
    t = T_975.get(n) or T_975[min(T_975, key=lambda k: abs(k - n))]
    return [float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(n))]


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10):
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    centers, accuracy, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            centers.append(float(confidence[in_bin].mean()))
            accuracy.append(float(correct[in_bin].mean()))
            counts.append(int(in_bin.sum()))
    return centers, accuracy, counts


# --- running --------------------------------------------------------------------------------

def _key(dataset: str, condition: st.Condition, spec: st.LossSpec, seed: int) -> str:
    options = ",".join(f"{k}={v!r}" for k, v in sorted(spec.options.items()))
    return f"{dataset}|{condition.name}|{spec.fn}({options}){'+learnt' if spec.learnable else ''}|{seed}"


def tasks(seeds: int) -> dict:
    """Every run of the study once: key -> (dataset, condition, spec, seed)."""
    out = {}
    for dataset in ("mnist1d", "digits"):
        for condition in CONDITIONS:
            specs = LOSSES + ((LEARNABLE,) if condition.kind == "clean" else ())
            if (dataset, condition) == (SWEEP_DATASET, SWEEP_CONDITION):
                specs += tuple(spec for _, points in SWEEP.values() for _, _, spec in points)
            for spec in specs:
                for seed in range(seeds):
                    out.setdefault(_key(dataset, condition, spec, seed), (dataset, condition, spec, seed))
    return out


_DATA: dict = {}


def _load(mnist1d_samples: int) -> dict:
    return {"mnist1d": training.load_mnist1d(mnist1d_samples, 0), "digits": training.load_digits_split(0)}


def _worker_init(mnist1d_samples: int, threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    _DATA.update(_load(mnist1d_samples))


def _run(job):
    key, (dataset, condition, spec, seed), epochs = job
    data = _DATA[dataset]
    start, cpu = time.perf_counter(), time.process_time()
    out = st.train_run(spec, data, dataset=dataset, condition=condition, seed=seed, epochs=epochs)
    result = {"metrics": st.metrics(out["probabilities"], data[3]),
              "counts": out["counts"].tolist(), "history": out["history"],
              "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    if condition.kind == "clean":
        result["probabilities"] = out["probabilities"].astype(np.float32)
    return key, result


def _load_cache(cache: pathlib.Path | None, tag: str) -> dict:
    """Runs recorded by an earlier, interrupted study with the same epochs and data."""
    found = {}
    if cache and cache.exists():
        for line in cache.read_text().splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the interruption
                continue
            if entry.get("tag") == tag:
                result = entry["result"]
                if "probabilities" in result:
                    result["probabilities"] = np.asarray(result["probabilities"], np.float32)
                found[entry["key"]] = result
    return found


def run_all(jobs: dict, *, epochs: int, mnist1d_samples: int, workers: int, threads: int,
            cache: pathlib.Path | None = None, log=sys.stderr) -> tuple:
    """Run every job, in ``workers`` processes of ``threads`` torch threads each; with
    ``cache``, append each finished run to that file and skip the runs already in it.
    Returns (results by key, how many came from the cache)."""
    tag = f"epochs={epochs},mnist1d_samples={mnist1d_samples}"
    results = {k: v for k, v in _load_cache(cache, tag).items() if k in jobs}
    cached = len(results)
    # the MNIST-1D runs first: the longest, so the last ones left are short
    order = sorted(((k, v) for k, v in jobs.items() if k not in results),
                   key=lambda kv: (kv[1][0] != "mnist1d", kv[1][1].kind == "longtail"))
    work = [(k, v, epochs) for k, v in order]
    done, started = 0, time.time()
    if cached:
        print(f"  {cached} runs from {cache}", file=log, flush=True)
    sink = cache.open("a") if cache else None

    def record(item):
        nonlocal done
        key, result = item
        results[key] = result
        if sink:
            saved = dict(result)
            if "probabilities" in saved:
                saved["probabilities"] = saved["probabilities"].tolist()  # float32 values, exact
            sink.write(json.dumps({"tag": tag, "key": key, "result": saved}) + "\n")
            sink.flush()
        done += 1
        if done % 25 == 0 or done == len(work):
            print(f"  {done}/{len(work)} runs, {time.time() - started:.0f} s", file=log, flush=True)

    if workers <= 1:
        _worker_init(mnist1d_samples, threads)
        for job in work:
            record(_run(job))
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with context.Pool(workers, _worker_init, (mnist1d_samples, threads)) as pool:
            for item in pool.imap_unordered(_run, work):
                record(item)
    if sink:
        sink.close()
    return results, cached


def summarise(runs: dict, seeds: int, datasets: dict) -> dict:
    """The report's "datasets" and "sweep" parts from the runs."""
    def per_seed(dataset, condition, spec):
        rows = [runs[_key(dataset, condition, spec, s)]["metrics"] for s in range(seeds)]
        return {m: [r[m] for r in rows] for m in METRICS}

    out = {}
    for dataset, data in datasets.items():
        d = {"train": int(len(data[1])), "test": int(len(data[3])),
             "model": st.MODEL_DESCRIPTIONS[dataset], "conditions": {}}
        for condition in CONDITIONS:
            specs = LOSSES + ((LEARNABLE,) if condition.kind == "clean" else ())
            values = {spec.label: per_seed(dataset, condition, spec) for spec in specs}
            ce = values[REFERENCE]
            first = runs[_key(dataset, condition, LOSSES[0], 0)]
            c = {"kind": condition.kind, "level": condition.level,
                 "train_counts_seed0": first["counts"],
                 "results": {k: {m: interval(v[m]) for m in METRICS} for k, v in values.items()},
                 "vs_cross_entropy": {k: {m: interval(np.subtract(v[m], ce[m])) for m in METRICS}
                                      for k, v in values.items() if k != REFERENCE},
                 "per_seed": values}
            if condition.kind == "clean":
                c["reliability"] = {
                    spec.label: reliability(
                        np.concatenate([runs[_key(dataset, condition, spec, s)]["probabilities"]
                                        for s in range(seeds)]),
                        np.tile(data[3], seeds))
                    for spec in specs}
                histories = [runs[_key(dataset, condition, LEARNABLE, s)]["history"]
                             for s in range(seeds)]
                d["learnt_history"] = histories
                d["learnt_final"] = [h[-1] for h in histories]
            d["conditions"][condition.name] = c
        out[dataset] = d
    sweep = {"dataset": SWEEP_DATASET, "condition": SWEEP_CONDITION.name, "knobs": {}}
    ce_values = per_seed(SWEEP_DATASET, SWEEP_CONDITION, LOSSES[0])
    for knob, (axis, points) in SWEEP.items():
        rows = []
        for x, line, spec in points:
            v = per_seed(SWEEP_DATASET, SWEEP_CONDITION, spec)
            rows.append({"x": x, "line": line, "label": spec.label, "fn": spec.fn,
                         "options": dict(spec.options),
                         "results": {m: interval(v[m]) for m in METRICS},
                         "vs_cross_entropy": {m: interval(np.subtract(v[m], ce_values[m]))
                                              for m in METRICS}})
        sweep["knobs"][knob] = {"axis": axis, "points": rows}
    return out, sweep


# --- plots ----------------------------------------------------------------------------------

def plots(report: dict, out: pathlib.Path) -> None:
    """<out>/results-<dataset>-{metrics,reliability,learnt,noise,longtail}.png, results-sweep.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset, d in report["datasets"].items():
        clean = d["conditions"]["clean"]
        _plot_metrics(plt, out, dataset, clean["results"])
        _plot_reliability(plt, out, dataset, clean["reliability"])
        _plot_learnt(plt, out, dataset, d["learnt_history"])
        _plot_noise(plt, out, dataset, d["conditions"])
        _plot_longtail(plt, out, dataset, d["conditions"])
    sweep = report["sweep"]
    sce = report["datasets"][sweep["dataset"]]["conditions"][sweep["condition"]]["results"].get(SCE.label)
    _plot_sweep(plt, out, sweep, sce)


def _save(plt, fig, out: pathlib.Path, name: str) -> None:
    fig.tight_layout()
    fig.savefig(out / name, dpi=100)
    plt.close(fig)


def _plot_metrics(plt, out, dataset, results):
    """Clean data: test accuracy and ECE per loss, with their 95% intervals."""
    labels = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("accuracy", "ece"), strict=True):
        means = [results[k][metric][0] for k in labels]
        errors = [results[k][metric][1] for k in labels]
        ax.errorbar(range(len(labels)), means, yerr=errors, fmt="o", capsize=4)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{dataset}, clean: test {metric} (mean, 95% interval)", fontsize=10)
    _save(plt, fig, out, f"results-{dataset}-metrics.png")


def _plot_reliability(plt, out, dataset, pooled):
    """Clean data: accuracy against confidence per loss, all seeds pooled."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for k, (centers, accuracy, _) in pooled.items():
        ax.plot(centers, accuracy, marker="o", ms=3, label=k)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{dataset}, clean: reliability, all seeds pooled", fontsize=10)
    ax.legend(fontsize=6)
    _save(plt, fig, out, f"results-{dataset}-reliability.png")


def _plot_learnt(plt, out, dataset, histories):
    """The learnable MIN-ENT's weights and bases per epoch, one line per seed."""
    names = list(histories[0][0])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
    for ax, n in zip(axes, names, strict=True):
        for h in histories:
            ax.plot([step[n] for step in h], lw=1)
        ax.set_title(n)
        ax.set_xlabel("epoch")
    fig.suptitle(f"{dataset}: learnt MIN-ENT weights and bases (one line per seed)")
    _save(plt, fig, out, f"results-{dataset}-learnt.png")


def _lines(ax, xs, conditions, names, metric, offsets=True):
    labels = list(conditions[names[0]]["results"])
    labels = [k for k in labels if k != LEARNABLE.label]
    for i, k in enumerate(labels):
        shift = (i - len(labels) / 2) * 0.012 * (max(xs) - min(xs) if offsets else 0)
        means = [conditions[n]["results"][k][metric][0] for n in names]
        errors = [conditions[n]["results"][k][metric][1] for n in names]
        ax.errorbar(np.array(xs, float) + shift, means, yerr=errors, marker="o", ms=3, capsize=2,
                    lw=1, label=k)


def _plot_noise(plt, out, dataset, conditions):
    """Accuracy, NLL and ECE against the noise rate, for both kinds of noise."""
    metrics = ("accuracy", "nll", "ece")
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for row, kind in enumerate(("symmetric", "pairflip")):
        names = ["clean", f"{kind}-20", f"{kind}-40"]
        for col, metric in enumerate(metrics):
            ax = axes[row, col]
            _lines(ax, [0, 20, 40], conditions, names, metric)
            ax.set_xticks([0, 20, 40])
            noise = "symmetric" if kind == "symmetric" else "class-dependent"
            ax.set_xlabel(f"{noise} noise (% of training labels)")
            ax.set_title(f"{dataset}: test {metric}", fontsize=10)
    axes[0, 0].legend(fontsize=6)
    _save(plt, fig, out, f"results-{dataset}-noise.png")


def _plot_longtail(plt, out, dataset, conditions):
    """Balanced accuracy, tail recall and ECE against the imbalance ratio."""
    metrics = ("balanced_accuracy", "tail_recall", "ece")
    names = ["clean", "longtail-10", "longtail-100"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, metric in zip(axes, metrics, strict=True):
        _lines(ax, [0, 1, 2], conditions, names, metric)
        ax.set_xticks([0, 1, 2], ["1 (balanced)", "10", "100"])
        ax.set_xlabel("imbalance ratio (largest / smallest class)")
        ax.set_title(f"{dataset}: test {metric}", fontsize=10)
    axes[0].legend(fontsize=6)
    _save(plt, fig, out, f"results-{dataset}-longtail.png")


def _plot_sweep(plt, out, sweep, sce=None):
    """Accuracy, NLL and ECE against each loss's knob; x = 0 is cross entropy. SCE's
    0.1 CE + 4.018 (1 - p_y) is drawn at lambda = 40.2: Adam's steps do not depend on the
    loss's overall scale, so it trains like CE + 40.2 (1 - p_y)."""
    knobs = sweep["knobs"]
    metrics = ("accuracy", "nll", "ece")
    fig, axes = plt.subplots(len(metrics), len(knobs), figsize=(3.6 * len(knobs), 8.5))
    for col, (knob, k) in enumerate(knobs.items()):
        lines = dict.fromkeys(p["line"] for p in k["points"])
        for row, metric in enumerate(metrics):
            ax = axes[row, col]
            for line in lines:
                pts = [p for p in k["points"] if p["line"] == line]
                xs = [p["x"] for p in pts]
                if knob == "reverse_weight":
                    xs = [x if x > 0 else 0.1 for x in xs]  # cross entropy drawn at the left edge
                ax.errorbar(xs, [p["results"][metric][0] for p in pts],
                            yerr=[p["results"][metric][1] for p in pts], marker="o", ms=3,
                            capsize=2, lw=1, label=line)
            if knob == "reverse_weight" and sce:
                ax.errorbar([SCE_LAMBDA], [sce[metric][0]], yerr=[sce[metric][1]], fmt="*",
                            ms=8, capsize=2, color="k", label="SCE, as lambda / alpha")
            if knob == "reverse_weight":
                ax.set_xscale("log")
                if row == 0:
                    ax.legend(fontsize=7)
            ax.set_title(metric, fontsize=9)
            if row == len(metrics) - 1:
                ax.set_xlabel(k["axis"], fontsize=8)
    fig.suptitle(f"knob sweep on {sweep['dataset']}, {sweep['condition']} "
                 "(mean and 95% interval over seeds; x = 0: cross entropy)")
    _save(plt, fig, out, "results-sweep.png")


# --- the page -------------------------------------------------------------------------------

def _cell(value) -> str:
    mean, half = value
    return f"{mean:.3f} ± {half:.3f}"


def _diff(value) -> str:
    mean, half = value
    mark = "" if abs(mean) <= half else " *"
    return f"{mean:+.3f} ± {half:.3f}{mark}"


def _table(c: dict, metrics: tuple, diffs: tuple = ("accuracy", "ece")) -> list:
    head = " | ".join(metrics) + "".join(f" | Δ {m} vs CE" for m in diffs)
    lines = [f"| loss | {head} |", "|---|" + "---|" * (len(metrics) + len(diffs))]
    for loss, r in c["results"].items():
        cells = " | ".join(_cell(r[m]) for m in metrics)
        d = c["vs_cross_entropy"].get(loss)
        changes = " | ".join(_diff(d[m]) if d else "—" for m in diffs)
        lines.append(f"| {loss} | {cells} | {changes} |")
    return lines


def _overview(d: dict, metric: str) -> list:
    """One row per loss, one column per condition: the paired difference to cross entropy."""
    names = list(d["conditions"])
    losses = [k for k in d["conditions"][names[0]]["results"] if k not in (REFERENCE, LEARNABLE.label)]
    lines = ["| loss | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    base = " | ".join(f"{d['conditions'][n]['results'][REFERENCE][metric][0]:.3f}" for n in names)
    lines.append(f"| *cross entropy (value)* | {base} |")
    for loss in losses:
        lines.append(f"| {loss} | " + " | ".join(
            _diff(d["conditions"][n]["vs_cross_entropy"][loss][metric]) for n in names) + " |")
    return lines


def _cpu_note(cfg: dict) -> str:
    cpu = cfg.get("cpu_seconds", math.nan)
    if not math.isfinite(cpu):
        return ""
    idle = cpu / 60 / max(1, cfg["workers"] * cfg["threads"])
    if cfg.get("cpu_seconds_source"):  # entered by hand for a run made before the script measured it
        return (f"The training itself took about {cpu / 60:.0f} CPU-minutes, not measured by "
                f"the script for this run but read by hand: {cfg['cpu_seconds_source']}. ")
    return (f"The training itself used {cpu / 60:.1f} CPU-minutes (the sum of each run's "
            f"`time.process_time()`), so on an idle machine with {cfg['workers']} free cores the "
            f"study takes about {idle:.0f} minutes. ")


def write_page(report: dict, out: pathlib.Path) -> None:
    cfg = report
    lines = [
        "# Results: where do the losses help?",
        "",
        f"Generated by `python benchmarks/training/study.py` (profile *{cfg['profile']}*: "
        f"{cfg['seeds']} seeds, {cfg['epochs']} epochs, MNIST-1D with {cfg['mnist1d_samples']} "
        f"samples) in **{cfg['minutes']:.1f} minutes** of wall time on {cfg['hardware']} "
        f"({cfg['workers']} worker processes of {cfg['threads']} torch thread each; load "
        f"average {cfg['load_before']:.1f} before, {cfg['load_after']:.1f} after: the machine "
        "is shared with other jobs). " + _cpu_note(cfg) +
        f"torch {cfg['torch']}, entroloss {cfg['entroloss']}, Python {cfg['python']}. "
        "`python benchmarks/training/study.py --page-only` rewrites this page from "
        "`results.json`; the same command without it reruns the study, seed for seed.",
        "",
        "## Set-up",
        "",
        "- **Models.** MNIST-1D: " + report["datasets"]["mnist1d"]["model"] + ". digits: "
        + report["datasets"]["digits"]["model"] + ". AdamW (weight decay 1e-4), one-cycle "
        "learning rate peaking at 0.01, batch 100, the same epochs for every loss; the model "
        "after the last epoch is evaluated (no early stopping, no clean validation set).",
        "- **Pairing.** Seed *s* fixes the initialisation, the batch order and the corruption "
        "of the training set (which labels flip, which samples a long tail keeps); within a "
        "seed every loss sees exactly the same. Test sets are always clean and complete.",
        "- **Conditions.** *symmetric-r*: a fraction r of the training labels, drawn at "
        "random, replaced by a uniformly drawn other class. *pairflip-r* (class-dependent): a "
        "fraction r of each class relabelled as the next class (c → c+1 mod 10). "
        "*longtail-ρ*: class c keeps ⌊n_max ρ^(-c/9)⌋ of its training samples (at least 1), "
        "so class 0 keeps all and class 9 a 1/ρ share (Cui et al., 'Class-Balanced Loss "
        "Based on Effective Number of Samples', 2019, profile).",
        "- **Metrics.** accuracy; balanced accuracy (mean per-class recall); tail recall "
        "(mean recall of classes 7-9, the rarest under the long tail); NLL (mean -log p of "
        "the true class); ECE (15 equal-width bins, top label); entropy (mean predictive "
        "entropy, nats). The test sets are (nearly) class-balanced, so accuracy and balanced "
        "accuracy nearly coincide; the tail recall is what a long tail hurts.",
        "- **Intervals.** Each entry is the mean over seeds ± the half-width of a 95% "
        "t-interval. *Δ vs CE* is the paired difference to cross entropy (same seeds) with "
        "its 95% interval; ' *' marks a difference whose interval excludes 0. With "
        f"{cfg['seeds']} seeds and ~{len(report['datasets'])} x 7 x {len(LOSSES)} comparisons, a "
        "few marks are expected by chance alone: read the pattern, not a single star.",
        "",
        "**Loss settings.** " + "; ".join(
            f"*{s.label}*: `{s.fn}({', '.join(f'{k}={v:.4g}' for k, v in s.options.items())})`"
            for s in LOSSES) + ". MIN-ENT's and MIX-ENT's weights are the package's modest "
        "defaults for training (the papers do not give theirs). "
        "*SCE* is symmetric cross entropy (Wang et al., 'Symmetric Cross Entropy for Robust "
        "Learning with Noisy Labels', ICCV 2019), `alpha CE + beta RCE` with `log 0` clipped "
        "to `A`, so that `RCE = -A (1 - p_y)` for a one-hot label. MIX-ENT's reverse term is "
        "`R = -log(eps) (1 - p_y) - log(1 + eps) p_y`, so SCE is "
        "`mix_ent(ce_weight=alpha, reverse_weight=beta, eps=exp(A))`, exact up to the "
        "`-log(1 + eps) p_y` term (0.018 p_y at A = -4: an effective A of -4.018 and a "
        "constant). We use their CIFAR-10 setting alpha = 0.1, beta = 1.0, A = -4. *MIN-ENT "
        "learnable* (clean data only) starts from MIN-ENT's values and learns all four "
        "weights and bases with the model in the paper's parametrisation "
        "(`MinEntLoss(learnable=\"raw\")`, in the optimiser without weight decay); the "
        "package's `learnable=True` is measured in its own section below.",
        "",
    ]
    lines += ["## Overview", "",
              "The paired difference to cross entropy in every condition (first row: cross "
              "entropy's own value). ' *': the 95% interval excludes 0. The conditions: "
              "clean; symmetric and class-dependent (pairflip) noise at 20% and 40%; long "
              "tails at ratios 10 and 100.", ""]
    for dataset, d in report["datasets"].items():
        for metric, what in (("accuracy", "test accuracy"), ("nll", "test NLL (lower is better)"),
                             ("ece", "ECE (lower is better)")):
            lines += [f"**{dataset}: Δ {what}**", ""] + _overview(d, metric) + [""]
    for dataset, d in report["datasets"].items():
        conds = d["conditions"]
        lines += [f"## {dataset} ({d['train']} train / {d['test']} test)", ""]
        lines += ["### Clean labels", ""] + _table(conds["clean"], ("accuracy", "nll", "ece", "entropy"))
        lines += ["", f"![accuracy and ECE, clean](results-{dataset}-metrics.png)", "",
                  f"![reliability diagram, clean](results-{dataset}-reliability.png)", ""]
        finals = d["learnt_final"]
        summary = ", ".join(f"{k} {np.mean([f[k] for f in finals]):.3g}" for k in finals[0])
        lines += [f"Learnt values of *MIN-ENT learnable* after {cfg['epochs']} epochs (mean over "
                  f"seeds): {summary}.", "", f"![learnt weights and bases](results-{dataset}-learnt.png)", ""]
        lines += ["### Label noise", "", f"![label noise](results-{dataset}-noise.png)", ""]
        for name, c in conds.items():
            if c["kind"] in ("symmetric", "pairflip"):
                lines += [f"**{name}** ({CONDITION_TITLES[c['kind']]}, {c['level']:.0%} of the "
                          "training labels)", ""] + _table(c, ("accuracy", "nll", "ece", "entropy")) + [""]
        lines += ["### Class imbalance", "", f"![long tail](results-{dataset}-longtail.png)", ""]
        for name, c in conds.items():
            if c["kind"] == "longtail":
                counts = c["train_counts_seed0"]
                lines += [f"**{name}** (training class sizes {counts[0]} … {counts[-1]}, "
                          f"{sum(counts)} in all)", ""]
                lines += _table(c, ("accuracy", "balanced_accuracy", "tail_recall", "nll", "ece"),
                                ("balanced_accuracy", "tail_recall", "ece")) + [""]
    sweep = report["sweep"]
    lines += [f"## Knob sweep ({sweep['dataset']}, {sweep['condition']})", "",
              "Each loss's own knob on one setting; x = 0 is cross entropy. MIX-ENT's knob "
              "is drawn as `lambda = reverse_weight * (-ln eps)`, the coefficient of "
              "`(1 - p_y)` it adds to cross entropy for one-hot labels, at two `eps`: with "
              "one-hot labels only lambda matters, and the two lines should agree (cross "
              "entropy is drawn at lambda 0.1 on the log axis). The black star is SCE: its "
              "`0.1 CE + 4.018 (1 - p_y)` trains under Adam, whose steps do not depend on the "
              "loss's overall scale, like `CE + 40.2 (1 - p_y)`, i.e. lambda 40.2.", "",
              "![knob sweep](results-sweep.png)", "",
              "| knob | setting | accuracy | NLL | ECE | entropy | Δ accuracy vs CE |",
              "|---|---|---|---|---|---|---|"]
    for knob, k in sweep["knobs"].items():
        seen = set()
        for p in k["points"]:
            if p["label"] in seen:
                continue
            seen.add(p["label"])
            r = p["results"]
            x = f"lambda {p['x']:.3g}, " if knob == "reverse_weight" else ""
            lines.append(f"| {knob} | {x}{p['label']} | " + " | ".join(
                _cell(r[m]) for m in ("accuracy", "nll", "ece", "entropy"))
                + f" | {_diff(p['vs_cross_entropy']['accuracy']) if p['x'] else '—'} |")
    learnable = DOCS / "learnable.json"  # benchmarks/training/learnable_weights.py writes it
    if learnable.exists():
        import learnable_weights

        lines += ["", learnable_weights.page(json.loads(learnable.read_text())).rstrip()]
    conclusion = DOCS / "results-conclusion.md"  # written by a person, after reading the numbers
    lines += ["", "## What this shows", "",
              conclusion.read_text() if conclusion.exists() else "(no conclusion written yet)", ""]
    (out / "results.md").write_text("\n".join(lines))


# --- main -----------------------------------------------------------------------------------

def hardware() -> str:
    model = platform_module.processor() or platform_module.machine()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"a {os.cpu_count()}-core CPU ({model})"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="the test suite's profile: 2 seeds, 2 epochs, 600 MNIST-1D samples")
    parser.add_argument("--seeds", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--mnist1d-samples", type=int)
    parser.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--out", type=pathlib.Path, default=DOCS,
                        help="where results.json, results.md and the plots go (default docs/)")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--cache", type=pathlib.Path,
                        help="a file each finished run is appended to; a rerun with the same "
                        "file skips the runs in it (resumes an interrupted study)")
    parser.add_argument("--page-only", action="store_true",
                        help="rewrite <out>/results.md (and the plots) from <out>/results.json")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.page_only:
        report = json.loads((args.out / "results.json").read_text())
        if not args.no_plots:
            plots(report, args.out)
        write_page(report, args.out)
        return
    profile = "quick" if args.quick else "full"
    cfg = dict(PROFILES[profile])
    for name in cfg:
        if getattr(args, name) is not None:
            cfg[name] = getattr(args, name)
            profile = "custom" if not args.quick else "quick (custom)"
    jobs = tasks(cfg["seeds"])
    print(f"study ({profile}): {len(jobs)} runs, {args.workers} workers", file=sys.stderr)
    load_before = os.getloadavg()[0]
    started = time.time()
    runs, cached = run_all(jobs, epochs=cfg["epochs"], mnist1d_samples=cfg["mnist1d_samples"],
                           workers=args.workers, threads=args.threads, cache=args.cache)
    minutes = (time.time() - started) / 60
    import torch

    import entroloss

    datasets = _load(cfg["mnist1d_samples"])
    results, sweep = summarise(runs, cfg["seeds"], datasets)
    report = {"profile": profile, **cfg, "runs": len(jobs), "runs_from_cache": cached,
              "minutes": minutes,
              "run_seconds": sum(r["seconds"] for r in runs.values()),
              "cpu_seconds": sum(r.get("cpu_seconds", math.nan) for r in runs.values()),
              "workers": args.workers, "threads": args.threads, "hardware": hardware(),
              "load_before": load_before, "load_after": os.getloadavg()[0],
              "torch": torch.__version__, "entroloss": getattr(entroloss, "__version__", "?"),
              "python": platform_module.python_version(), "metrics": list(METRICS),
              "losses": {s.label: {"fn": s.fn, "options": dict(s.options)} for s in LOSSES},
              "conditions": [c.name for c in CONDITIONS],
              "datasets": results, "sweep": sweep}
    (args.out / "results.json").write_text(json.dumps(report, indent=1))
    if not args.no_plots:
        plots(report, args.out)
    write_page(report, args.out)
    print(f"study ({profile}): {len(jobs)} runs in {minutes:.1f} min -> {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
