"""ResNet-18 on CIFAR-100 with the linearly adaptive CE paper's recipe, for any entroloss
loss (torch, GPU).

    python benchmarks/training/cifar100_resnet18.py --loss adaptive --data ~/data
    python benchmarks/training/cifar100_resnet18.py --smoke      # a few CPU steps, no data

Recipe of J. W. Shim, 'Enhancing Cross Entropy with a Linearly Adaptive Loss Function
for Optimized Classification Performance' (arXiv 2507.10574): SGD lr 0.1, momentum 0.9,
weight decay 5e-4, StepLR x0.1 every 50 epochs, 200 epochs, batch 100, random crop (pad 4)
and horizontal flip, per-pixel mean subtraction; reports top-1 and top-5 error. bfloat16
autocast on CUDA.
"""

from __future__ import annotations

import pathlib
import pickle
import sys

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import recipe  # noqa: E402

LAYOUT = "  <data>/cifar-100-python/train\n  <data>/cifar-100-python/test   (the python pickles)"


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = nn.Sequential()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet18(nn.Module):
    """The CIFAR variant: a 3x3 stem without max-pooling, then 4 stages of 2 blocks."""

    def __init__(self, classes=100):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Linear(512, classes)

    def forward(self, x):
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(self.layers(self.stem(x)), 1), 1))


def load(folder: pathlib.Path | None):
    base = None if folder is None else pathlib.Path(folder).expanduser() / "cifar-100-python"
    if base is None or not (base / "train").exists() or not (base / "test").exists():
        raise recipe.missing_data(base or "--data (not given)", "CIFAR-100", LAYOUT)

    def read(name):
        with open(base / name, "rb") as f:
            d = pickle.load(f, encoding="bytes")
        x = np.asarray(d[b"data"], np.float32).reshape(-1, 3, 32, 32) / 255.0
        return x, np.asarray(d[b"fine_labels"], np.int64)

    x, y = read("train")
    xt, yt = read("test")
    mean = x.mean(0, keepdims=True)  # per-pixel mean subtraction
    return (torch.tensor(x - mean), torch.tensor(y), torch.tensor(xt - mean), torch.tensor(yt))


def generated(n=100, classes=100):
    g = torch.Generator().manual_seed(0)
    return (torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, classes, (n,), generator=g),
            torch.randn(n // 2, 3, 32, 32, generator=g), torch.randint(0, classes, (n // 2,), generator=g))


def main():
    args = recipe.arguments(__doc__, dict(epochs=200, batch=100, lr=0.1, weight_decay=5e-4, step_every=50))
    if args.smoke:
        args.epochs, args.batch, args.device = 1, 50, "cpu"
        data = generated()
    else:
        data = load(args.data)
    final = recipe.train(args, ResNet18, data, pad=4, flip=True)
    print(f"final: top-1 error {final['top1_error']:.4f}, top-5 error {final['top5_error']:.4f}")


if __name__ == "__main__":
    main()
