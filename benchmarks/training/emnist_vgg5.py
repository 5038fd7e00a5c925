"""VGG-5 on EMNIST-Letters (the MIN-ENT / MIX-ENT paper's set-up), for any entroloss loss
(torch, GPU).

    python benchmarks/training/emnist_vgg5.py --loss min-ent --data ~/data
    python benchmarks/training/emnist_vgg5.py --smoke      # a few CPU steps, no data

VGG-5 here is four 3x3 conv layers (64, 64, 128, 128; batch norm, ReLU, max-pooling after
each pair) and one linear classifier: five weight layers. The paper, 'Regularizing cross
entropy loss via minimum entropy and K-L divergence' (arXiv 2501.13709), does not give its
training recipe; the defaults are SGD lr 0.01, momentum 0.9, weight decay 5e-4, 30
epochs, StepLR x0.1 every 10, batch 128, random crop (pad 2), no flip (letters).
"""

from __future__ import annotations

import gzip
import pathlib
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import recipe  # noqa: E402

FILES = {
    "x": "emnist-letters-train-images-idx3-ubyte",
    "y": "emnist-letters-train-labels-idx1-ubyte",
    "xt": "emnist-letters-test-images-idx3-ubyte",
    "yt": "emnist-letters-test-labels-idx1-ubyte",
}
LAYOUT = "\n".join(f"  <data>/EMNIST/raw/{name}  (or {name}.gz)" for name in FILES.values())


class VGG5(nn.Module):
    def __init__(self, classes=26):
        super().__init__()

        def conv(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.features = nn.Sequential(*conv(1, 64), *conv(64, 64), nn.MaxPool2d(2),
                                      *conv(64, 128), *conv(128, 128), nn.MaxPool2d(2))
        self.head = nn.Linear(128 * 7 * 7, classes)

    def forward(self, x):
        return self.head(torch.flatten(self.features(x), 1))


def read_idx(path: pathlib.Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    dims = raw[3]
    shape = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def load(folder: pathlib.Path | None):
    raw = None if folder is None else pathlib.Path(folder).expanduser() / "EMNIST" / "raw"
    found = {}
    for key, name in FILES.items():
        for candidate in ([] if raw is None else [raw / name, raw / f"{name}.gz"]):
            if candidate.exists():
                found[key] = candidate
    if len(found) != len(FILES):
        raise recipe.missing_data(raw or "--data (not given)", "EMNIST-Letters", LAYOUT)
    # EMNIST images are stored transposed; labels are 1..26
    x = read_idx(found["x"]).transpose(0, 2, 1)[:, None].astype(np.float32) / 255.0
    xt = read_idx(found["xt"]).transpose(0, 2, 1)[:, None].astype(np.float32) / 255.0
    mean, std = x.mean(), x.std()
    return (torch.tensor((x - mean) / std), torch.tensor(read_idx(found["y"]).astype(np.int64) - 1),
            torch.tensor((xt - mean) / std), torch.tensor(read_idx(found["yt"]).astype(np.int64) - 1))


def generated(n=256, classes=26):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 1, 28, 28, generator=g), torch.randint(0, classes, (n,), generator=g),
            torch.randn(n // 2, 1, 28, 28, generator=g), torch.randint(0, classes, (n // 2,), generator=g))


def main():
    args = recipe.arguments(__doc__, dict(epochs=30, batch=128, lr=0.01, weight_decay=5e-4, step_every=10))
    if args.smoke:
        args.epochs, args.batch, args.device = 2, 64, "cpu"
        data = generated()
    else:
        data = load(args.data)
    final = recipe.train(args, VGG5, data, pad=2, flip=False)
    print(f"final: top-1 error {final['top1_error']:.4f}, top-5 error {final['top5_error']:.4f}")


if __name__ == "__main__":
    main()
