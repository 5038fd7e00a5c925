"""A seeded comparison of the losses on scikit-learn's digits and on MNIST-1D.

    python benchmarks/training/study.py                       # 5 seeds, CPU, NumPy
    python benchmarks/training/study.py --seeds 10 --mnist1d-samples 20000 --backend torch --device cuda

Each loss trains the same MLP from the same initialisations on the same batches (the
model and loop of ``entroloss demo``); only the loss differs. For every loss and metric the
page gets the mean over seeds and a 95% t-interval, a plot of accuracy and ECE with their
intervals, and a reliability diagram. A learnable MIN-ENT (weights and bases as
parameters, trained by the same optimiser, torch) shows where its learnt values go.
Writes docs/results.md, docs/results-*.png and docs/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import numpy as np

from entroloss.tools import training
from entroloss.tools.platforms import available

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
METRICS = ("accuracy", "nll", "ece", "entropy")
T_975 = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776, 6: 2.571, 7: 2.447, 8: 2.365, 9: 2.306,
         10: 2.262, 15: 2.145, 20: 2.093, 30: 2.045}


def interval(values) -> tuple:
    """Mean and half-width of a 95% t-interval."""
    values = np.asarray(values, float)
    n = len(values)
    if n < 2:
        return float(values.mean()), math.nan
    t = T_975.get(n) or T_975[min(T_975, key=lambda k: abs(k - n))]
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(n))


def reliability(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10):
    confidence, correct = probabilities.max(1), probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    centers, accuracy, counts = [], [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        in_bin = (confidence > lo) & (confidence <= hi)
        if in_bin.any():
            centers.append(float(confidence[in_bin].mean()))
            accuracy.append(float(correct[in_bin].mean()))
            counts.append(int(in_bin.sum()))
    return centers, accuracy, counts


def learnable_min_ent(data, *, epochs, seed, device="cpu", lr=0.05):
    """MIN-ENT with all four weights and bases learnt alongside the model (torch)."""
    import torch

    from entroloss.backends.torch import MinEntLoss

    x_train, y_train, x_test, y_test = data
    rng = np.random.default_rng(seed)
    params = {k: torch.tensor(v, device=device, requires_grad=True)
              for k, v in training.init_mlp(rng, x_train.shape[1], 64, 10).items()}
    criterion = MinEntLoss(learnable=True,
                           entropy_weight=training.TRAINING_OPTIONS["entropy_weight"]).to(device)
    optimiser = torch.optim.SGD([*params.values(), *criterion.parameters()], lr=lr, momentum=0.9,
                                weight_decay=1e-4)
    X = torch.tensor(x_train, device=device)
    Y = torch.tensor(y_train, device=device)
    history = [criterion.values()]
    steps = math.ceil(len(y_train) / 64)
    for _ in range(epochs):
        order = rng.permutation(len(y_train))
        for s in range(steps):
            index = torch.tensor(order[s * 64:(s + 1) * 64], device=device)
            h = torch.relu(X[index] @ params["w1"] + params["b1"])
            logits = h @ params["w2"] + params["b2"]
            optimiser.zero_grad()
            criterion(logits, Y[index]).backward()
            optimiser.step()
        history.append(criterion.values())
    with torch.no_grad():
        h = torch.relu(torch.tensor(x_test, device=device) @ params["w1"] + params["b1"])
        probabilities = torch.softmax(h @ params["w2"] + params["b2"], -1).cpu().double().numpy()
    return probabilities, history


def run_study(name, data, platform, seeds, epochs, device):
    results = {}
    pooled = {}
    for setting in training.SETTINGS:
        label = setting.label
        per_seed = []
        probs_all = []
        for seed in range(seeds):
            probabilities, seconds = training.train(platform, setting, data, epochs=epochs,
                                                    seed=seed)
            per_seed.append(training.calibration(probabilities, data[3]))
            probs_all.append(probabilities)
        results[label] = {m: interval([r[m] for r in per_seed]) for m in METRICS}
        pooled[label] = reliability(np.concatenate(probs_all), np.tile(data[3], seeds))
        print(f"  {name} {label}: acc {results[label]['accuracy'][0]:.4f}", file=sys.stderr)
    histories = []
    if "torch" in sys.modules or _has("torch"):
        per_seed, probs_all = [], []
        for seed in range(seeds):
            probabilities, history = learnable_min_ent(data, epochs=epochs, seed=seed,
                                                       device=device)
            per_seed.append(training.calibration(probabilities, data[3]))
            probs_all.append(probabilities)
            histories.append(history)
        label = "MIN-ENT learnable"
        results[label] = {m: interval([r[m] for r in per_seed]) for m in METRICS}
        pooled[label] = reliability(np.concatenate(probs_all), np.tile(data[3], seeds))
    return results, pooled, histories


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def plots(dataset, results, pooled, histories):
    """docs/results-<dataset>-{metrics,reliability,learnt}.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _plot_metrics(plt, dataset, results)
    _plot_reliability(plt, dataset, list(results), pooled)
    if histories:
        _plot_learnt(plt, dataset, histories)


def _save(plt, fig, name: str) -> None:
    fig.tight_layout()
    fig.savefig(DOCS / name, dpi=110)
    plt.close(fig)


def _plot_metrics(plt, dataset, results):
    """Test accuracy and ECE per loss, with their 95% intervals."""
    labels = list(results)
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("accuracy", "ece")):
        means = [results[k][metric][0] for k in labels]
        errors = [results[k][metric][1] for k in labels]
        ax.errorbar(range(len(labels)), means, yerr=errors, fmt="o", capsize=4)
        ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right", fontsize=8)
        ax.set_title(f"{dataset}: test {metric} (mean, 95% interval)")
    _save(plt, fig, f"results-{dataset}-metrics.png")


def _plot_reliability(plt, dataset, labels, pooled):
    """Accuracy against confidence per loss, all seeds pooled."""
    fig, ax = plt.subplots(figsize=(5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="calibrated")
    for k in labels:
        centers, accuracy, _ = pooled[k]
        ax.plot(centers, accuracy, marker="o", label=k)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{dataset}: reliability, all seeds pooled")
    ax.legend(fontsize=7)
    _save(plt, fig, f"results-{dataset}-reliability.png")


def _plot_learnt(plt, dataset, histories):
    """The learnable MIN-ENT's weights and bases per epoch, one line per seed."""
    names = list(histories[0][0])
    fig, axes = plt.subplots(1, len(names), figsize=(3.2 * len(names), 3))
    for ax, n in zip(axes, names):
        for h in histories:
            ax.plot([step[n] for step in h], lw=1)
        ax.set_title(n)
        ax.set_xlabel("epoch")
    fig.suptitle(f"{dataset}: learnt MIN-ENT weights and bases (one line per seed)")
    _save(plt, fig, f"results-{dataset}-learnt.png")


def write_page(report: dict) -> None:
    lines = [
        "# Results: the losses compared on real data",
        "",
        "Generated by `python benchmarks/training/study.py` "
        f"(backend {report['backend']}, {report['seeds']} seeds, {report['epochs']} epochs, "
        f"{report['minutes']:.1f} minutes on {report.get('hardware', 'this machine')}). "
        "Every loss trains the same MLP (one hidden layer of 64, ReLU) from the same "
        "initialisations on the same batches: SGD, momentum 0.9, lr 0.05, weight decay 1e-4, "
        "batch 64. Only the loss differs. Entries are the mean over seeds ± the half-width "
        "of a 95% t-interval. NLL is the mean -log p(true class); ECE the expected "
        "calibration error (15 equal-width bins, top label); entropy the mean predictive "
        "entropy in nats.",
        "",
        "Loss settings (the papers do not give their weights): MIN-ENT `entropy_weight=0.1`; "
        "MIX-ENT `reverse_weight=0.02` (eps 1e-6, so the term is ~0.28 (1 - p_y)); focal "
        "gamma 2; label smoothing 0.1. *MIN-ENT learnable* starts from the same values and "
        "learns all four weights and bases with the model (torch, `MinEntLoss(learnable=True)`).",
        "",
    ]
    for name, d in report["datasets"].items():
        lines += [f"## {name} ({d['train']} train / {d['test']} test)", "",
                  "| loss | accuracy | NLL | ECE | entropy |", "|---|---|---|---|---|"]
        for loss, r in d["results"].items():
            cells = " | ".join(f"{r[m][0]:.4f} ± {r[m][1]:.4f}" for m in METRICS)
            lines.append(f"| {loss} | {cells} |")
        lines += ["", f"![accuracy and ECE](results-{name}-metrics.png)", "",
                  f"![reliability diagram](results-{name}-reliability.png)", ""]
        if d["learnt_final"]:
            finals = d["learnt_final"]
            summary = ", ".join(f"{k} {np.mean([f[k] for f in finals]):.3g}" for k in finals[0])
            lines += [f"Learnt values after {report['epochs']} epochs (mean over seeds): "
                      f"{summary}.", "", f"![learnt weights and bases](results-{name}-learnt.png)", ""]
    conclusion = DOCS / "results-conclusion.md"  # written by a person, after reading the numbers
    lines += ["## What this shows", "",
              conclusion.read_text() if conclusion.exists() else "(no conclusion written yet)", ""]
    (DOCS / "results.md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--backend", default="numpy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--mnist1d-samples", type=int, default=5000)
    parser.add_argument("--hardware", default="this machine's CPU (2 cores)")
    parser.add_argument("--page-only", action="store_true",
                        help="rewrite docs/results.md from docs/results.json")
    args = parser.parse_args()
    if args.page_only:
        write_page(json.loads((DOCS / "results.json").read_text()))
        return
    platform = available(args.backend, args.device)[0][0]
    torch_device = "cuda" if args.device in ("cuda", "gpu") else "cpu"
    datasets = {"digits": training.load_digits_split(0),
                "mnist1d": training.load_mnist1d(args.mnist1d_samples)}
    report = {"backend": platform.id, "seeds": args.seeds, "epochs": args.epochs,
              "mnist1d_samples": args.mnist1d_samples, "datasets": {}}
    started = time.time()
    for name, data in datasets.items():
        results, pooled, histories = run_study(name, data, platform, args.seeds, args.epochs,
                                               torch_device)
        plots(name, results, pooled, histories)
        report["datasets"][name] = {
            "train": int(len(data[1])), "test": int(len(data[3])), "results": results,
            "learnt_final": [h[-1] for h in histories],
        }
    report["minutes"] = (time.time() - started) / 60
    report["hardware"] = args.hardware
    (DOCS / "results.json").write_text(json.dumps(report, indent=1))
    write_page(report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
