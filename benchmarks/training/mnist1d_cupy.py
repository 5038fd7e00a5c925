"""Train an MLP on MNIST-1D with an entroloss loss in CuPy (explicit gradients, GPU).

    python benchmarks/training/mnist1d_cupy.py --loss mix_ent --samples 20000

CuPy has no autograd: ``el.value_and_grad`` gives the loss's gradient with respect to the
logits and the MLP is backpropagated by hand (entroloss.tools.training.mlp_gradients).
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

import entroloss as el
from entroloss.tools import training


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--loss", default="mix_ent",
                        choices=training.LOSS_NAMES)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        import array_api_compat.cupy as xp
        import cupy
    except ImportError as err:
        raise SystemExit("this example needs CuPy with a CUDA GPU: pip install cupy-cuda12x") from err
    if not cupy.cuda.is_available():
        raise SystemExit("CuPy is installed but sees no CUDA device")
    x, y, xt, yt = training.load_mnist1d(args.samples)
    setting = training.setting_of(args.loss)
    fn, options = setting.loss_fn(), setting.options
    rng = np.random.default_rng(args.seed)
    params = {k: cupy.asarray(v) for k, v in training.init_mlp(rng, x.shape[1], 64, 10).items()}
    velocity = {k: cupy.zeros_like(v) for k, v in params.items()}
    X, Y = cupy.asarray(x), cupy.asarray(y)
    for epoch in range(args.epochs):
        order = rng.permutation(len(y))
        for s in range(math.ceil(len(y) / 64)):
            index = cupy.asarray(order[s * 64:(s + 1) * 64])
            xb, yb = X[index], Y[index]
            logits, cache = training.mlp_forward(xp, params, xb)
            loss, g = el.value_and_grad(fn, logits, yb, **options)
            grads = training.mlp_gradients(xp, params, xb, cache, g["logits"])
            for k in params:
                velocity[k] = 0.9 * velocity[k] + grads[k] + 1e-4 * params[k]
                params[k] = params[k] - 0.05 * velocity[k]
        print(f"epoch {epoch + 1}: loss {float(loss):.4f}", file=sys.stderr)
    probabilities = cupy.asnumpy(el.softmax(training.mlp_forward(xp, params, cupy.asarray(xt))[0]))
    print(json.dumps({"backend": "cupy", "loss": args.loss, **training.calibration(probabilities, yt)}))


if __name__ == "__main__":
    main()
