"""What the two paper recipes (``cifar100_resnet18.py``, ``emnist_vgg5.py``) share: the
loss by name, batches with flip+crop done on tensors (no torchvision needed), AMP on
CUDA, checkpoints, a progress bar, top-1/top-5, and the --smoke mode that the test suite
runs on CPU with generated data."""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time
from typing import Callable

import torch

from entroloss.backends import torch as el_torch
from entroloss.tools.progress import ProgressBar

# the -learnable losses learn their split of a fixed total (learnable=True); -learnable-raw
# is the MIN-ENT/MIX-ENT paper's parametrisation, which switches the loss off under SGD
# (docs/results.md). The noisy-label settings are the study's: mix-ent-noisy is MIX-ENT at
# reverse_weight 2 (lambda 27.6, +18.9 points at 40% symmetric noise on MNIST-1D), sce is
# symmetric cross entropy as a MIX-ENT setting (alpha 0.1, beta 1, A = -4).
LOSSES = {
    "ce": lambda: el_torch.CrossEntropyLoss(),
    "label-smoothing": lambda: el_torch.CrossEntropyLoss(label_smoothing=0.1),
    "min-ent": lambda: el_torch.MinEntLoss(entropy_weight=0.1),
    "min-ent-learnable": lambda: el_torch.MinEntLoss(entropy_weight=0.1, learnable=True),
    "min-ent-learnable-raw": lambda: el_torch.MinEntLoss(entropy_weight=0.1, learnable="raw"),
    "mix-ent": lambda: el_torch.MixEntLoss(reverse_weight=0.02),
    "mix-ent-learnable": lambda: el_torch.MixEntLoss(reverse_weight=0.02, learnable=True),
    "mix-ent-learnable-raw": lambda: el_torch.MixEntLoss(reverse_weight=0.02, learnable="raw"),
    "mix-ent-noisy": lambda: el_torch.MixEntLoss(reverse_weight=2.0),
    "sce": lambda: el_torch.MixEntLoss(ce_weight=0.1, reverse_weight=1.0, eps=math.exp(-4.0)),
    "adaptive": lambda: el_torch.AdaptiveCELoss(),
    "focal": lambda: el_torch.FocalLoss(gamma=2.0),
}


def arguments(description: str, defaults: dict) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--loss", choices=sorted(LOSSES), default="ce")
    parser.add_argument("--data", type=pathlib.Path, help="the local data folder")
    parser.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs"))
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument("--batch", type=int, default=defaults["batch"])
    parser.add_argument("--lr", type=float, default=defaults["lr"])
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=defaults["weight_decay"])
    parser.add_argument("--step-every", type=int, default=defaults["step_every"],
                        help="StepLR: multiply the learning rate by 0.1 every this many epochs")
    parser.add_argument("--device", help="default: cuda where there is one, else the CPU "
                        "(said on stderr)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the checkpoint")
    parser.add_argument("--smoke", action="store_true",
                        help="a few steps on generated data, to check the script end to end")
    args = parser.parse_args()
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
        if args.device == "cpu" and not args.smoke:  # not silently: the recipe takes days there
            print("no CUDA device found: training on the CPU (--device to choose)", file=sys.stderr)
    return args


def augment(x: torch.Tensor, pad: int, flip: bool) -> torch.Tensor:
    """Random crop after zero padding, and a random horizontal flip, per image."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded[torch.arange(n, device=x.device)[:, None, None, None],
                 torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, device=x.device) < 0.5
        out = torch.where(mask[:, None, None, None], out.flip(-1), out)
    return out


def accuracy_top(logits: torch.Tensor, y: torch.Tensor, k: int) -> float:
    return float((logits.topk(k, dim=-1).indices == y[:, None]).any(-1).float().sum())


def train(args, make_model: Callable[[], torch.nn.Module], data, *, pad: int,
          flip: bool) -> dict:
    """``data`` = (x_train, y_train, x_test, y_test) as tensors, inputs already normalised;
    ``make_model()`` builds the model after the seed is set, so ``--seed`` fixes its
    initial weights as well as the batches and the augmentation.

    Prints one JSON line of test errors (and the criterion's learnable values) per epoch
    and checkpoints after each, so ``--resume`` continues where a run stopped.
    """
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    model = make_model().to(device)
    criterion = LOSSES[args.loss]().to(device)
    optimiser = torch.optim.SGD([*model.parameters(), *criterion.parameters()], lr=args.lr,
                                momentum=args.momentum, weight_decay=args.weight_decay)
    schedule = torch.optim.lr_scheduler.StepLR(optimiser, step_size=args.step_every, gamma=0.1)
    state = {"model": model, "criterion": criterion, "optimiser": optimiser, "schedule": schedule}
    x_train, y_train, x_test, y_test = (t.to(device) for t in data)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.out / f"{args.loss}-seed{args.seed}.pt"
    start_epoch = resume(checkpoint, state, device) if args.resume else 0
    amp = device.type == "cuda"
    bar = ProgressBar()
    history = []
    for epoch in range(start_epoch, args.epochs):
        train_epoch(model, criterion, optimiser, (x_train, y_train), args, epoch,
                    pad=pad, flip=flip, amp=amp, bar=bar)
        schedule.step()
        result = {"epoch": epoch + 1, **evaluate(model, x_test, y_test, args.batch, amp)}
        result.update(criterion.values())
        history.append(result)
        print(json.dumps(result), flush=True)
        torch.save({**{k: v.state_dict() for k, v in state.items()}, "epoch": epoch}, checkpoint)
    if not history:  # resumed after the last epoch: report the checkpoint's model
        history.append({"epoch": start_epoch, **evaluate(model, x_test, y_test, args.batch, amp),
                        **criterion.values()})
        print(json.dumps(history[-1]), flush=True)
    return history[-1]


def resume(checkpoint: pathlib.Path, state: dict, device) -> int:
    """Load ``state``'s modules from ``checkpoint`` if there is one; the epoch to start at."""
    if not checkpoint.exists():
        return 0
    saved = torch.load(checkpoint, map_location=device)
    for key, part in state.items():
        part.load_state_dict(saved[key])
    return saved["epoch"] + 1


def train_epoch(model, criterion, optimiser, train_data, args, epoch: int, *, pad: int,
                flip: bool, amp: bool, bar: ProgressBar) -> None:
    """One pass over the shuffled training set, with the progress bar every 20 steps."""
    x_train, y_train = train_data
    model.train()
    device = x_train.device
    order = torch.randperm(len(y_train), device=device)
    steps = math.ceil(len(y_train) / args.batch)
    started = time.time()
    for step in range(steps):
        index = order[step * args.batch:(step + 1) * args.batch]
        x = augment(x_train[index], pad, flip)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            loss = criterion(model(x), y_train[index])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 20 == 0 or step == steps - 1:  # float(loss) waits for the device
            rate = (step + 1) / max(time.time() - started, 1e-9)
            status = f"{step + 1}/{steps} loss {float(loss):.4f} {rate:.1f} it/s"
            bar.draw(step + 1, steps, status, prefix=f"epoch {epoch + 1}/{args.epochs} ")
    bar.finish()
    bar.log(f"epoch {epoch + 1}/{args.epochs} {status}")


@torch.no_grad()
def evaluate(model, x_test, y_test, batch, amp) -> dict:
    model.eval()
    top1 = top5 = 0.0
    for i in range(0, len(y_test), batch):
        with torch.autocast(x_test.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = model(x_test[i:i + batch]).float()
        top1 += accuracy_top(logits, y_test[i:i + batch], 1)
        top5 += accuracy_top(logits, y_test[i:i + batch], min(5, logits.shape[-1]))
    n = len(y_test)
    return {"top1_error": 1 - top1 / n, "top5_error": 1 - top5 / n}


def missing_data(folder, what: str, layout: str) -> SystemExit:
    return SystemExit(
        f"no {what} at {folder}: download it elsewhere and put it there in torchvision's "
        f"layout:\n{layout}\n(or run with --smoke to check the script on generated data)"
    )
