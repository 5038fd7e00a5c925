"""Train an MLP on MNIST-1D with an entroloss loss in JAX (jit + grad; CPU or GPU).

    python benchmarks/training/mnist1d_jax.py --loss min_ent --samples 20000 --epochs 40

The loss is differentiated by jax.grad through entroloss's custom_vjp, inside one jitted
training step. MNIST-1D is generated locally by the mnist1d package.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

import jax
import jax.numpy as jnp
import numpy as np

import entroloss as el
from entroloss.tools import training


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--loss", default="min_ent",
                        choices=training.LOSS_NAMES)
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y, xt, yt = training.load_mnist1d(args.samples)
    setting = training.setting_of(args.loss)
    fn, options = setting.loss_fn(), setting.options
    rng = np.random.default_rng(args.seed)
    params = {k: jnp.asarray(v) for k, v in training.init_mlp(rng, x.shape[1], 64, 10).items()}
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)

    def objective(params, xb, yb):
        return fn(training.mlp_forward(jnp, params, xb)[0], yb, **options)

    @jax.jit
    def step(params, velocity, xb, yb):
        loss, grads = jax.value_and_grad(objective)(params, xb, yb)
        velocity = jax.tree_util.tree_map(lambda v, g, p: 0.9 * v + g + 1e-4 * p, velocity, grads, params)
        return jax.tree_util.tree_map(lambda p, v: p - 0.05 * v, params, velocity), velocity, loss

    X, Y = jnp.asarray(x), jnp.asarray(y, dtype=jnp.int32)
    for epoch in range(args.epochs):
        order = rng.permutation(len(y))
        for s in range(math.ceil(len(y) / 64)):
            index = order[s * 64:(s + 1) * 64]
            params, velocity, loss = step(params, velocity, X[index], Y[index])
        print(f"epoch {epoch + 1}: loss {float(loss):.4f}", file=sys.stderr)
    probabilities = np.asarray(el.softmax(training.mlp_forward(jnp, params, jnp.asarray(xt))[0]))
    print(json.dumps({"backend": str(jax.devices()[0]), "loss": args.loss,
                      **training.calibration(probabilities, yt)}))


if __name__ == "__main__":
    main()
