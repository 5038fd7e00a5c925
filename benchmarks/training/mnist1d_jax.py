"""Train an MLP on MNIST-1D with an entroloss loss in JAX (jit + grad; CPU or GPU).

    python benchmarks/training/mnist1d_jax.py --loss min_ent --samples 20000 --epochs 40

The loss is differentiated by jax.grad through entroloss's custom_vjp, inside one jitted
training step. MNIST-1D is generated locally by the mnist1d package.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

import entroloss as el
from entroloss.tools import demo as _demo

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from study import load_mnist1d  # noqa: E402

OPTIONS = {"min_ent": {"entropy_weight": 0.1}, "mix_ent": {"reverse_weight": 0.02},
           "focal": {"gamma": 2.0}}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--loss", default="min_ent",
                        choices=["cross_entropy", "min_ent", "mix_ent", "adaptive_ce", "focal"])
    parser.add_argument("--samples", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    x, y, xt, yt = load_mnist1d(args.samples)
    fn, options = getattr(el, args.loss), OPTIONS.get(args.loss, {})
    rng = np.random.default_rng(args.seed)
    params = {k: jnp.asarray(v) for k, v in _demo.init_params(rng, x.shape[1], 64, 10).items()}
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)

    def objective(params, xb, yb):
        return fn(_demo.forward(jnp, params, xb)[0], yb, **options)

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
    probabilities = np.asarray(el.softmax(_demo.forward(jnp, params, jnp.asarray(xt))[0]))
    print(json.dumps({"backend": str(jax.devices()[0]), "loss": args.loss,
                      **_demo.calibration(probabilities, yt)}))


if __name__ == "__main__":
    main()
