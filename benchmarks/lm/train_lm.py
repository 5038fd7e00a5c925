"""A small causal language model trained on CPU from the same seed and batches with the
linear-head MIN-ENT (``el.linear_min_ent`` on the last hidden states and the head's
weight; the logits are never whole) and with the same loss on the full logits
(``el.min_ent(hidden @ W.T, y)``), and once more on the full logits from a start moved by
one float32 ulp (the control: how far rounding alone drifts over the same training).

    python benchmarks/lm/train_lm.py                # the default run: a few minutes, 2 cores
    python benchmarks/lm/train_lm.py --quick        # seconds (the test's)
    python benchmarks/lm/train_lm.py --steps 100 --width 256 --out results/

The text is Python's standard library, tokenized by a byte-level BPE trained here
(``lm_data.py``; cached under ``--cache``). Writes ``lm_example.json`` and
``lm_example.md`` into ``--out`` (default: ``entroloss-lm`` in the temporary folder): every
run's loss at every step and their largest differences, the gradients of both losses at
the start, the final parameters' largest difference, tokens/s, the held-out cross entropy
and perplexity, and the peak memory of the loss's forward+backward (the head and the loss
alone, and the whole training step), each measured in a fresh process as
``benchmarks/linear_head.py`` does (the peak resident size, Linux).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

import entroloss as el
from entroloss.tools.memory_probe import _reset_peak, resident_kib
from entroloss.tools.training import TRAINING_OPTIONS

HERE = pathlib.Path(__file__).resolve().parent
OUT = pathlib.Path(tempfile.gettempdir()) / "entroloss-lm"  # not the working directory
sys.path.insert(0, str(HERE))
from lm_data import bpe_tokenizer, standard_library_text, token_stream  # noqa: E402
from lm_model import CausalLM, Shape  # noqa: E402

MIB = 2**20
KINDS = ("linear", "naive")
# The third run is the second with its initial weights moved by one float32 ulp: how far
# a rounding-sized difference at the start drifts over the same training, the yardstick
# for the difference between the two losses.
RUNS = {"linear": ("linear", False), "naive": ("naive", False), "control": ("naive", True)}
LABELS = {"linear": "linear head: `el.linear_min_ent(h, W, y)`",
          "naive": "full logits: `el.min_ent(h @ W.T, y)`",
          "control": "full logits, start moved 1 ulp"}
PROFILES = {
    "default": dict(steps=300, batch=8, seq=64, width=128, layers=2, heads=4, vocab=8192,
                    corpus_bytes=4_000_000, chunk_size=128, eval_windows=128),
    "quick": dict(steps=4, batch=4, seq=32, width=32, layers=1, heads=2, vocab=8192,
                  corpus_bytes=1_000_000, chunk_size=32, eval_windows=8),
}
# "head": the head and the loss alone; "step": the whole forward and backward
MEMORY_PARTS = {"none": (), "head": ("head",), "all": ("head", "step")}
# glibc serves a freed block of up to 32 MiB from its heap next time and keeps it resident,
# so the peak would depend on the order of earlier frees; a fixed threshold maps every
# tensor over 128 KiB on its own, and the peak is then of the bytes alive at once
FIXED_MMAP_THRESHOLD = {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
SHOWN_STEPS = (0, 1, 2, 5, 10, 20, 50, 100, 150, 200, 250)


def loss_of(kind: str, hidden, weight, targets, args):
    """The MIN-ENT of the head ``hidden @ weight.T``: chunk by chunk, or on the whole logits."""
    if kind == "linear":
        return el.linear_min_ent(hidden, weight, targets, entropy_weight=args.entropy_weight,
                                 chunk_size=args.chunk_size)
    return el.min_ent(hidden @ weight.T, targets, entropy_weight=args.entropy_weight)


def new_model(args, moved: bool = False) -> CausalLM:
    torch.manual_seed(args.seed)
    model = CausalLM(Shape(args.vocab, args.width, args.layers, args.heads, args.seq, args.tied))
    if moved:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.nextafter(p, torch.tensor(math.inf)))
    return model


def batch_starts(stream_length: int, args) -> torch.Tensor:
    """Every step's window starts ``(steps, batch)``: the same for every run."""
    generator = torch.Generator().manual_seed(args.seed + 1)
    return torch.randint(0, stream_length - args.seq - 1, (args.steps, args.batch),
                         generator=generator)


def windows(stream: torch.Tensor, starts: torch.Tensor, length: int) -> tuple:
    """Inputs and next-token targets, ``(len(starts), length)`` each."""
    index = starts[:, None] + torch.arange(length)
    return stream[index], stream[index + 1]


def train(run: str, stream: torch.Tensor, args) -> dict:
    kind, moved = RUNS[run]
    model = new_model(args, moved)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.95),
                                  weight_decay=0.1)
    warmup = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / args.warmup))
    losses, seconds, cpu_seconds = [], 0.0, 0.0
    for step, starts in enumerate(batch_starts(len(stream), args)):
        tokens, targets = windows(stream, starts, args.seq)
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = loss_of(kind, model.hidden(tokens), model.head.weight, targets, args)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        warmup.step()
        losses.append(loss.item())
        if step:  # the first step loads code paths: not timed
            seconds += time.perf_counter() - start
            cpu_seconds += time.process_time() - cpu_start
        if step % 50 == 0:
            print(f"{run} step {step}: {losses[-1]:.4f}", file=sys.stderr, flush=True)
    return {"model": model, "losses": losses, "seconds": seconds, "cpu_seconds": cpu_seconds}


def gradients_at_start(stream: torch.Tensor, args) -> dict:
    """Both losses' gradients of every parameter, from the same start on the first batch."""
    tokens, targets = windows(stream, batch_starts(len(stream), args)[0], args.seq)
    grads = []
    for kind in KINDS:
        model = new_model(args)
        loss_of(kind, model.hidden(tokens), model.head.weight, targets, args).backward()
        grads.append([p.grad for p in model.parameters()])
    return {"max_abs_difference": max((a - b).abs().max().item() for a, b in zip(*grads, strict=True)),
            "max_abs_gradient": max(a.abs().max().item() for a in grads[1])}


@torch.no_grad()
def held_out_cross_entropy(model: CausalLM, stream: torch.Tensor, args) -> float:
    """Mean next-token cross entropy (nats) over the first ``eval_windows`` windows of the
    held-out text, by torch's own ``F.cross_entropy`` on the logits: the same yardstick
    for every run, whatever it was trained with."""
    count = min(args.eval_windows, (len(stream) - 1) // args.seq)
    starts = torch.arange(count) * args.seq
    total = 0.0
    for part in starts.split(args.batch):
        tokens, targets = windows(stream, part, args.seq)
        total += F.cross_entropy(model(tokens).flatten(0, 1), targets.flatten(),
                                 reduction="sum").item()
    return total / (count * args.seq)


# --- peak memory, in a fresh process each ----------------------------------------------------

def _one_step(kind: str, model: CausalLM, part: str, tokens, targets, args) -> None:
    if part == "head":  # the head and the loss alone, on hidden states given
        hidden = torch.randn(*tokens.shape, args.width, requires_grad=True)
    else:  # the whole training step's forward and backward
        hidden = model.hidden(tokens)
    loss_of(kind, hidden, model.head.weight, targets, args).backward()


def probe(kind: str, part: str, args) -> int:
    """Bytes by which one forward+backward raises the peak resident size (the gradients
    included); every code path runs once on a small batch first."""
    model = new_model(args)
    small = torch.randint(0, args.vocab, (1, 5))
    _one_step(kind, model, part, small[:, :4], small[:, 1:], args)
    model.zero_grad(set_to_none=True)
    tokens = torch.randint(0, args.vocab, (args.batch, args.seq + 1))
    gc.collect()
    _reset_peak()
    before = resident_kib("VmRSS:")
    _one_step(kind, model, part, tokens[:, :-1], tokens[:, 1:], args)
    return (resident_kib("VmHWM:") - before) * 1024


def peak_memory(kind: str, part: str, args) -> int:
    sizes = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in PROFILES["default"]]
    sizes += [f"--seed={args.seed}", f"--entropy-weight={args.entropy_weight}",
              f"--threads={args.threads}"]
    sizes += ["--tied"] if args.tied else []
    runs = []
    for _ in range(args.memory_runs):
        out = subprocess.run([sys.executable, __file__, "--probe", kind, part, *sizes],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, **FIXED_MMAP_THRESHOLD})
        runs.append(int(out.stdout.split()[-1]))
    return min(runs)


# --- the report ------------------------------------------------------------------------------

def _parameters_apart(a: CausalLM, b: CausalLM) -> dict:
    """The largest difference of one parameter, and that of all (norm / norm)."""
    pairs = list(zip(a.parameters(), b.parameters(), strict=True))
    squared = sum(((pa - pb) ** 2).sum().item() for pa, pb in pairs)
    return {"final_parameters_max_abs_difference": max((pa - pb).abs().max().item()
                                                       for pa, pb in pairs),
            "final_parameters_relative_difference":
                math.sqrt(squared / sum((pb**2).sum().item() for _, pb in pairs))}


def agreement(runs: dict, at_start: dict) -> dict:
    """How far the linear head's run and the control are from the full-logits run."""
    naive = runs["naive"]
    result = {"gradients_at_start": at_start,
              "max_abs_parameter": max(p.abs().max().item() for p in naive["model"].parameters())}
    for run in ("linear", "control"):
        differences = [abs(a - b) for a, b in zip(runs[run]["losses"], naive["losses"], strict=True)]
        worst = max(range(len(differences)), key=differences.__getitem__)
        result[run] = {"max_abs_loss_difference": differences[worst], "at_step": worst,
                       "first_step_differing": next((i for i, d in enumerate(differences) if d),
                                                    None),
                       **_parameters_apart(runs[run]["model"], naive["model"])}
    return result


def summary(run: str, result: dict, held_out: torch.Tensor, args) -> dict:
    cross_entropy = held_out_cross_entropy(result["model"], held_out, args)
    out = {"first_loss": result["losses"][0], "last_loss": result["losses"][-1],
           "held_out_cross_entropy": cross_entropy,
           "held_out_perplexity": math.exp(cross_entropy)}
    if run == "control":
        return out
    tokens = (args.steps - 1) * args.batch * args.seq
    out.update(tokens_per_second=tokens / result["seconds"],
               tokens_per_cpu_second=tokens / result["cpu_seconds"],
               train_seconds=result["seconds"])
    for part in MEMORY_PARTS[args.memory]:
        out[f"peak_{part}_bytes"] = peak_memory(RUNS[run][0], part, args)
    return out


_ROWS = (("train loss, first step", "first_loss", "{:.5f}"),
         ("train loss, last step", "last_loss", "{:.5f}"),
         ("held-out cross entropy (nats/token)", "held_out_cross_entropy", "{:.4f}"),
         ("held-out perplexity", "held_out_perplexity", "{:.2f}"),
         ("tokens/s (training, wall clock)", "tokens_per_second", "{:.0f}"),
         ("tokens per CPU second", "tokens_per_cpu_second", "{:.0f}"),
         ("peak memory, head + loss forward+backward (MiB)", "peak_head_bytes", "mib"),
         ("peak memory, whole step forward+backward (MiB)", "peak_step_bytes", "mib"))


def _cell(result: dict, key: str, fmt: str) -> str:
    if key not in result:
        return "-"
    return f"{result[key] / MIB:.1f}" if fmt == "mib" else fmt.format(result[key])


def _summary_table(s: dict) -> list:
    lines = ["| | " + " | ".join(LABELS[k] for k in RUNS) + " |", "|---|---:|---:|---:|"]
    for title, key, fmt in _ROWS:
        if key in s["linear"]:
            lines.append(f"| {title} | " + " | ".join(_cell(s[k], key, fmt) for k in RUNS) + " |")
    return lines


def _first(r: dict) -> str:
    step = r["first_step_differing"]
    return "the losses never differ" if step is None else f"the losses first differ at step {step}"


def _agreement_lines(a: dict, steps: int) -> list:
    g, lines = a["gradients_at_start"], [""]
    lines.append(f"Gradients of every parameter on the first batch, from the same start: largest "
                 f"|difference| {g['max_abs_difference']:.2e}, largest |gradient| "
                 f"{g['max_abs_gradient']:.2e}.")
    for run, name in (("linear", "linear head"), ("control", "control")):
        r = a[run]
        lines.append(f"{name} vs full logits over {steps} steps: largest |loss difference| "
                     f"{r['max_abs_loss_difference']:.2e} (step {r['at_step']}; {_first(r)}); "
                     f"final parameters' largest "
                     f"|difference| {r['final_parameters_max_abs_difference']:.2e} (largest "
                     f"|parameter| {a['max_abs_parameter']:.3f}), all parameters' "
                     f"||difference|| / ||parameters|| "
                     f"{r['final_parameters_relative_difference']:.1e}.")
    return lines


def _steps_table(steps: list) -> list:
    lines = ["", "| step | linear head | full logits | linear - full | control - full |",
             "|---:|---:|---:|---:|---:|"]
    last = len(steps) - 1
    for step in sorted({i for i in SHOWN_STEPS if i < last} | {last}):
        row = steps[step]
        lines.append(f"| {step} | {row['linear']:.6f} | {row['naive']:.6f} | "
                     f"{row['linear'] - row['naive']:.1e} | {row['control'] - row['naive']:.1e} |")
    return lines


def markdown(report: dict) -> str:
    lines = _summary_table(report["summary"])
    lines += _agreement_lines(report["agreement"], len(report["steps"]))
    return "\n".join(lines + _steps_table(report["steps"])) + "\n"


def setup(args) -> dict:
    corpus = standard_library_text(args.corpus_bytes)
    start = time.perf_counter()
    tokenizer = bpe_tokenizer(corpus, args.vocab, args.cache)
    tokenizer_seconds = time.perf_counter() - start
    train_stream, held_out = (token_stream(tokenizer, texts) for texts in (corpus.train, corpus.held_out))
    data = {"files": corpus.files, "train_bytes": corpus.train_bytes,
            "train_tokens": len(train_stream), "held_out_tokens": len(held_out),
            "vocab_size": tokenizer.get_vocab_size(), "tokenizer_seconds": tokenizer_seconds}
    return {"train": train_stream, "held_out": held_out, "data": data}


def run(args) -> dict:
    load_before = os.getloadavg()
    texts = setup(args)
    print(json.dumps(texts["data"]), flush=True)
    at_start = gradients_at_start(texts["train"], args)
    runs = {run: train(run, texts["train"], args) for run in RUNS}
    losses = [run["losses"] for run in runs.values()]
    return {"options": {k: (str(v) if isinstance(v, pathlib.Path) else v)
                        for k, v in vars(args).items() if k != "probe"},
            "machine": {"python": platform.python_version(), "torch": torch.__version__,
                        "entroloss": el.__version__, "threads": torch.get_num_threads(),
                        "cpus": len(os.sched_getaffinity(0)), "load_average_before": load_before,
                        "load_average_after": os.getloadavg()},
            "data": texts["data"],
            "steps": [dict(zip(RUNS, values, strict=True)) for values in zip(*losses, strict=True)],
            "agreement": agreement(runs, at_start),
            "summary": {run: summary(run, runs[run], texts["held_out"], args) for run in RUNS}}


def options(argv: list | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a run of a few seconds")
    for key, value in PROFILES["default"].items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value}")
    parser.add_argument("--memory", choices=MEMORY_PARTS, default=None,
                        help="which peak-memory figures to measure (quick: head; else all)")
    parser.add_argument("--tied", action="store_true", help="the head's weight is the embedding")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: its default)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=30, help="steps of linear warm-up")
    parser.add_argument("--entropy-weight", type=float, default=TRAINING_OPTIONS["entropy_weight"])
    parser.add_argument("--memory-runs", type=int, default=1,
                        help="fresh processes per peak-memory figure (the least is kept)")
    parser.add_argument("--cache", type=pathlib.Path, default=HERE / "cache")
    parser.add_argument("--out", type=pathlib.Path, default=OUT,
                        help=f"where lm_example.json and lm_example.md go (default {OUT})")
    parser.add_argument("--probe", nargs=2, metavar=("KIND", "PART"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for key, value in PROFILES["quick" if args.quick else "default"].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.memory is None:
        args.memory = "head" if args.quick else "all"
    return args


def main(argv: list | None = None) -> None:
    args = options(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.probe:
        print(probe(*args.probe, args))
        return
    report = run(args)
    table = markdown(report)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lm_example.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "lm_example.md").write_text(table)
    print(f"wrote lm_example.json and lm_example.md to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
