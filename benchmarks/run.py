"""Run the benchmark grid and write docs/benchmarks.md with its figures and a plot.

    python benchmarks/run.py                 # the CPU grid of this machine, into docs/
    python benchmarks/run.py --device cuda   # the GPU grid, where there is one
    python benchmarks/run.py --quick         # two small shapes, float32, nothing compiled,
                                             # into build/benchmarks-quick/ (docs/ untouched)
    python benchmarks/run.py --page-only     # redraw the page and plots from the saved JSON

It calls the same harness as ``entroloss bench`` (src/entroloss/tools/bench.py), with the
torch.compile'd candidates and the torch CPU peak-memory probe switched on, saves the raw
JSON next to the page, and plots, per backend, the forward+backward time of every loss as a
ratio to the native cross entropy and to the user's composition, against problem size.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
QUICK_OUT = ROOT / "build" / "benchmarks-quick"


def main(argv=None) -> None:
    from entroloss._losses import LOSSES, by_name
    from entroloss.tools import bench

    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--dtype", action="append")
    parser.add_argument("--chunk-size", type=int, default=256,
                        help="rows per chunk for the chunked candidates (0: none)")
    parser.add_argument("--compiled-loss", action="append", metavar="NAME",
                        help="only these losses under torch.compile (repeatable; default: all)")
    parser.add_argument("--no-compiled", action="store_true", help="no torch.compile'd candidates")
    parser.add_argument("--quick", action="store_true",
                        help="bench's quick shapes, float32, nothing compiled, no memory probe, "
                        f"into {QUICK_OUT.relative_to(ROOT)}/ unless --out")
    parser.add_argument("--out", type=pathlib.Path, help="where the JSON, plot and page go "
                        "(default: docs/)")
    args = parser.parse_args(argv)
    tag = "gpu" if args.device in ("cuda", "gpu") else "cpu"
    out = args.out or (QUICK_OUT if args.quick else DOCS)
    out.mkdir(parents=True, exist_ok=True)
    dtypes = tuple(args.dtype or (["float32"] if args.quick else ["float32", "bfloat16"]))
    compiled = not (args.no_compiled or args.quick)
    compiled_losses = tuple(by_name(n) for n in args.compiled_loss) if args.compiled_loss else LOSSES
    chunk = None if args.quick or not args.chunk_size else args.chunk_size
    shapes = bench.QUICK_SHAPES if args.quick else None
    rows, missing = bench.run(None, args.device, shapes=shapes, dtypes=dtypes,
                              repeats=3 if args.quick else args.repeats, compiled=compiled,
                              chunk_size=chunk, compiled_losses=compiled_losses,
                              budget_s=4 if args.quick else 20.0,
                              progress=bench._progress_bar(True))
    if not rows:
        sys.exit("entroloss bench timed nothing: " + "; ".join(f"{b}: {r}" for b, r in missing))
    memory = bench._memory(rows, chunk) if tag == "cpu" and not args.quick else {}
    ran = {"device": args.device, "shapes": sorted({tuple(r.shape) for r in rows}),
           "dtypes": list(dtypes), "repeats": args.repeats, "compiled": compiled,
           "compiled_losses": [d.name for d in compiled_losses], "chunk_size": chunk,
           "memory": bool(memory), "quick": args.quick,
           "platforms": list(dict.fromkeys(r.backend for r in rows)), "timings": len(rows)}
    data = bench.report(rows, missing, ran, memory)
    (out / f"benchmarks-{tag}.json").write_text(json.dumps(data, indent=1))
    plot(data, out / f"benchmarks-{tag}.png")
    page(out)
    print(f"wrote {out}/benchmarks-{tag}.json, benchmarks-{tag}.png and benchmarks.md")


def _n(value, spec=".2f") -> str:
    return "-" if value is None else format(value, spec)


def _ops(row) -> str:
    if not row.get("ops"):
        return "-"
    return " / ".join(str(row["ops"][k]["step"]) for k in ("ours", "native", "user"))


def section(tag: str, data: dict) -> list:
    m = data["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m.items()
                         if k not in ("machine", "processor", "cpus", "gpu"))
    where = m.get("gpu") if tag == "gpu" else None
    lines = [f"## {tag.upper()}: {where or m.get('processor') or m['machine']}, {m['cpus']} cores",
             "", f"Versions: {versions}.", ""]
    if not data["rows"] or "loss" not in data["rows"][0]:
        return lines + ["(saved in an older format: run `python benchmarks/run.py` again)", ""]
    lines += ["Times per call in µs (medians); f+b = forward+backward; CE = the backend's native "
              "cross entropy; user = the user's composition for that loss (below); ratios = "
              "ours / baseline; ops = torch ops dispatched by one forward+backward "
              "(ours / CE / user).", "",
              "| backend | N x C | dtype | loss | mode | fwd µs | f+b µs | CE f+b µs | user f+b µs "
              "| f+b / CE | f+b / user | fwd / CE | fwd / user | ops |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["rows"]:
        lines.append(
            f"| {r['backend']} | {r['shape'][0]}x{r['shape'][1]} | {r['dtype']} | {r['loss']} | "
            f"{r['mode']} | {r['ours_forward_us']:.1f} | {r['ours_step_us']:.1f} | "
            f"{r['native_step_us']:.1f} | {_n(r['user_step_us'], '.1f')} | "
            f"{_n(r['step_vs_native'])} | {_n(r['step_vs_user'])} | {_n(r['forward_vs_native'])} | "
            f"{_n(r['forward_vs_user'])} | {_ops(r)} |")
    floors = {(r["backend"], tuple(r["shape"]), r["dtype"]): r for r in data["rows"] if r.get("floor_us")}
    if floors:
        lines += ["", "Bandwidth floor (one read of the logits, one write of a gradient of their "
                  "size: `torch.empty_like(z).copy_(z)`):", "",
                  "| backend | N x C | dtype | floor µs | GB/s |", "|---|---|---|---|---|"]
        lines += [f"| {b} | {s[0]}x{s[1]} | {d} | {r['floor_us']:.1f} | {r['floor_gbps']:.1f} |"
                  for (b, s, d), r in floors.items()]
    lines += ["", f"![time ratios against problem size](benchmarks-{tag}.png)", ""]
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


def page(where: pathlib.Path = DOCS) -> None:
    from entroloss.tools.baselines import USER_BASELINES, timed_options
    from entroloss._losses import LOSSES

    lines = ["# Benchmarks", "",
             "Measured by `python benchmarks/run.py` (the harness behind `entroloss bench`): "
             "forward and forward+backward time of every loss next to the same backend's native "
             "cross entropy (`F.cross_entropy` eager, or compiled for the compiled rows; optax's "
             "integer-label cross entropy under `jax.jit`; a hand-written NumPy forward+backward) "
             "and to what a user would write instead, with the same option values; medians of "
             "interleaved runs after warm-up, a device sync around every timing; class-index "
             "targets.", "",
             "The user's baselines (torch; the same compositions in jnp under `jax.jit`, and "
             "written out with their gradients for NumPy):", ""]
    for loss in LOSSES:
        options = ", ".join(f"{k}={v:g}" for k, v in timed_options(loss).items()) or "defaults"
        lines.append(f"- {loss.name} ({options}): `{USER_BASELINES[loss.name]}`")
    lines.append("")
    analysis = DOCS / "benchmarks-analysis.md"  # written by a person, after reading the numbers
    if analysis.exists():
        lines += [analysis.read_text(), ""]
    for tag in ("cpu", "gpu"):
        path = where / f"benchmarks-{tag}.json"
        if path.exists():
            lines += section(tag, json.loads(path.read_text()))
    (where / "benchmarks.md").write_text("\n".join(lines) + "\n")


def plot(data: dict, path: pathlib.Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data["rows"] if r.get("loss") and r["dtype"] == "float32"]
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    if not backends:
        return
    fig, axes = plt.subplots(2, len(backends), figsize=(4.5 * len(backends), 7.2), squeeze=False)
    for column, backend in enumerate(backends):
        these = [r for r in rows if r["backend"] == backend]
        for ax, key, against in ((axes[0][column], "step_vs_native", "native cross entropy"),
                                 (axes[1][column], "step_vs_user", "user's composition")):
            for loss, mode in dict.fromkeys((r["loss"], r["mode"]) for r in these):
                points = sorted((r["shape"][0] * r["shape"][1], r[key]) for r in these
                                if r["loss"] == loss and r["mode"] == mode and r[key])
                if not points:
                    continue
                style = ":" if mode == "compiled" else "--" if "chunks" in mode else "-"
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o",
                        linestyle=style, label=f"{loss} ({mode})")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_title(f"{backend}, float32, vs {against}", fontsize=9)
            ax.set_xlabel("N x C (logits)")
            ax.set_ylabel("forward+backward time ratio")
            ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    if sys.argv[1:] == ["--page-only"]:
        for tag in ("cpu", "gpu"):
            saved = DOCS / f"benchmarks-{tag}.json"
            if saved.exists():
                plot(json.loads(saved.read_text()), DOCS / f"benchmarks-{tag}.png")
        page()
    else:
        main()
