"""Draw docs/losses.png: each loss and its gradient against the true-class probability.

    python docs/figures.py

For C = 10 classes, the true class gets probability p and the nine others share 1 - p
equally. Values and gradients come from the package itself (NumPy, value_and_grad).
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import entroloss as el  # noqa: E402

CLASSES = 10
CURVES = [
    ("cross entropy", el.cross_entropy, {}),
    ("MIN-ENT (entropy_weight 0.5)", el.min_ent, {"entropy_weight": 0.5}),
    ("MIX-ENT (reverse_weight 0.05)", el.mix_ent, {"reverse_weight": 0.05}),
    ("adaptive CE", el.adaptive_ce, {}),
    ("focal gamma=2", el.focal, {"gamma": 2.0}),
]


def main() -> None:
    p = np.linspace(0.002, 0.998, 400)
    rest = (1 - p) / (CLASSES - 1)
    logits = np.log(np.concatenate([p[:, None], np.repeat(rest[:, None], CLASSES - 1, 1)], 1))
    target = np.zeros(len(p), dtype=np.int64)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, fn, options in CURVES:
        value, grads = el.value_and_grad(fn, logits, target, reduction="none", **options)
        left.plot(p, value, label=label)
        right.plot(p, grads["logits"][:, 0], label=label)
    left.set(xlabel="p(true class)", ylabel="loss", ylim=(0, 6), title="loss")
    right.set(xlabel="p(true class)", ylabel="d loss / d z_true", title="gradient on the true logit")
    right.axhline(0, color="k", lw=0.6)
    left.legend(fontsize=8)
    fig.tight_layout()
    out = pathlib.Path(__file__).resolve().parent / "losses.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
