"""Run the benchmark grid and write docs/benchmarks.md with its figures and a plot.

    python benchmarks/run.py                 # the CPU grid of this machine
    python benchmarks/run.py --device cuda   # the GPU grid, where there is one

It calls the same harness as ``entroloss bench`` (src/entroloss/_bench.py), with the
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
    args = parser.parse_args()
    tag = "gpu" if args.device in ("cuda", "gpu") else "cpu"
    command = [sys.executable, "-m", "entroloss", "bench", "--device", args.device, "--json",
               "--compiled", "--repeats", args.repeats]
    for dtype in args.dtype or ["float32", "bfloat16"]:
        command += ["--dtype", dtype]
    if tag == "cpu":
        command.append("--memory")
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    data = json.loads(out.stdout)
    (DOCS / f"benchmarks-{tag}.json").write_text(json.dumps(data, indent=1))
    plot(data, DOCS / f"benchmarks-{tag}.png")
    print(f"wrote docs/benchmarks-{tag}.json and docs/benchmarks-{tag}.png")


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
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=candidate)
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
    main()
