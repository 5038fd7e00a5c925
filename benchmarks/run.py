"""Run the benchmark grid and write docs/benchmarks.md with its figures and a plot.

    python benchmarks/run.py                 # the CPU grid of this machine
    python benchmarks/run.py --device cuda   # the GPU grid, where there is one

It calls the same harness as ``entroloss bench`` (src/entroloss/tools/bench.py), with the
torch.compile'd candidates and the torch CPU peak-memory probe switched on, saves the raw
JSON next to the page, and plots time ratio against problem size per backend.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", default="9")
    parser.add_argument("--dtype", action="append")
    parser.add_argument("--chunk-size", default="256", help="rows per chunk for the chunked candidates")
    args = parser.parse_args()
    tag = "gpu" if args.device in ("cuda", "gpu") else "cpu"
    command = [sys.executable, "-m", "entroloss", "bench", "--device", args.device, "--json",
               "--compiled", "--repeats", args.repeats]
    for dtype in args.dtype or ["float32", "bfloat16"]:
        command += ["--dtype", dtype]
    command += ["--chunk-size", args.chunk_size]
    if tag == "cpu":
        command.append("--memory")
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"entroloss bench failed:\n{out.stderr[-4000:]}")
    data = json.loads(out.stdout)
    (DOCS / f"benchmarks-{tag}.json").write_text(json.dumps(data, indent=1))
    plot(data, DOCS / f"benchmarks-{tag}.png")
    page()
    print(f"wrote docs/benchmarks-{tag}.json, docs/benchmarks-{tag}.png and docs/benchmarks.md")


def section(tag: str, data: dict) -> list:
    m = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.items() if k not in ("machine", "processor", "cpus"))
    lines = [f"## {tag.upper()}: {m.get('processor') or m['machine']}, {m['cpus']} cores", "",
             f"Versions: {versions}.", "",
             "| backend | N x C | dtype | candidate | fwd ms | fwd+bwd ms | fwd ratio | fwd+bwd ratio |",
             "|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['backend']} | {r['shape'][0]}x{r['shape'][1]} | {r['dtype']} | "
                     f"{r['candidate']} | {r['forward_ms']:.3f} | {r['step_ms']:.3f} | "
                     f"{r['forward_ratio']:.2f} | {r['step_ratio']:.2f} |")
    lines += ["", f"![time ratio against problem size](benchmarks-{tag}.png)", ""]
    memory = data.get("memory")
    if memory:
        n, c = memory["shape"]
        lines += [f"Peak extra resident memory of one torch CPU forward+backward at {n}x{c} "
                  f"(logits {n * c * 4 / 2**20:.0f} MiB), in multiples of the logits' bytes:", "",
                  "| candidate | peak extra / logits bytes |", "|---|---|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in memory["extra_over_logits_bytes"].items()]
        lines.append("")
    for s in data.get("skipped", []):
        lines.append(f"- skipped {s['backend']}: {s['reason']}")
    return lines


def page() -> None:
    lines = ["# Benchmarks", "",
             "Measured by `python benchmarks/run.py` (the harness behind `entroloss bench`): "
             "forward and forward+backward time as a ratio to the same backend's native "
             "cross entropy at the same shape and dtype (`F.cross_entropy` eager for torch, "
             "optax's integer-label cross entropy under `jax.jit`, a hand-written NumPy "
             "forward+backward), medians of interleaved runs after warm-up, a device sync "
             "around every timing. Losses with the default options; class-index targets.", ""]
    analysis = DOCS / "benchmarks-analysis.md"  # written by a person, after reading the numbers
    if analysis.exists():
        lines += [analysis.read_text(), ""]
    for tag in ("cpu", "gpu"):
        path = DOCS / f"benchmarks-{tag}.json"
        if path.exists():
            lines += section(tag, json.loads(path.read_text()))
    (DOCS / "benchmarks.md").write_text("\n".join(lines) + "\n")


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r["dtype"] == "float32" and r["baseline"]]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    fig, axes = plt.subplots(1, len(backends), figsize=(4.5 * len(backends), 3.8), squeeze=False)
    for ax, backend in zip(axes[0], backends):
        these = [r for r in rows if r["backend"] == backend]
        for candidate in dict.fromkeys(r["candidate"] for r in these):
            points = sorted((r["shape"][0] * r["shape"][1], r["step_ratio"])
                            for r in these if r["candidate"] == candidate)
            style = ":" if "compiled" in candidate else "--" if "chunks" in candidate else "-"
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", linestyle=style,
                    label=candidate)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{backend}, float32")
        ax.set_xlabel("N x C (logits)")
        ax.set_ylabel("forward+backward time / native")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--page-only"]:  # redraw the page and plots from the saved JSON
        for tag in ("cpu", "gpu"):
            saved = DOCS / f"benchmarks-{tag}.json"
            if saved.exists():
                plot(json.loads(saved.read_text()), DOCS / f"benchmarks-{tag}.png")
        page()
    else:
        main()
