"""Checkerboard flow matching (MIT 6.S184 lab 2; issue #16): train a small MLP velocity on the 2-D
checkerboard with ``flow.flow_matching_loss`` (CondOT path), sample it by the ODE (Heun) and by the
SDE extension (Euler-Maruyama, several sigma), and compare to fresh data by RBF MMD^2 and sliced
W2 against the data-vs-data floor (same sample size). ``--bridge`` also trains the circles ->
checkerboard bridge (source batches x0 from ``toy.circles``).

    python -m bench.bench_checkerboard [--steps 3000] [--n 2000] [--bridge]

Prints a markdown table (paste into bench/RESULTS.md) with wall and CPU time.
"""
from __future__ import annotations

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from score_jax import flow, toy


class MLPVelocity(nn.Module):
    """v(x, t): an MLP on [x, sin/cos features of t]."""

    width: int = 128
    depth: int = 4

    @nn.compact
    def __call__(self, x, t):
        freqs = jnp.arange(1, 9, dtype=x.dtype) * jnp.pi
        te = jnp.concatenate([jnp.sin(t[:, None] * freqs), jnp.cos(t[:, None] * freqs)], -1)
        h = jnp.concatenate([x, te], -1)
        for _ in range(self.depth):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1])(h)


def train(key, data_fn, steps, batch, source_fn=None, lr=2e-3):
    model = MLPVelocity()
    k_init, k_loop = jax.random.split(key)
    params = model.init(k_init, jnp.zeros((1, 2)), jnp.zeros((1,)))
    opt = optax.adam(optax.cosine_decay_schedule(lr, steps, 0.05))
    state = opt.init(params)
    path = flow.CondOTPath()

    @jax.jit
    def step(params, state, key):
        kd, ks, kl = jax.random.split(key, 3)
        x1 = data_fn(kd, batch)
        x0 = None if source_fn is None else source_fn(ks, batch)

        def loss_fn(p):
            return flow.flow_matching_loss(kl, lambda x, t: model.apply(p, x, t), path, x1,
                                           x0=x0)[0]

        loss, g = jax.value_and_grad(loss_fn)(params)
        upd, state = opt.update(g, state, params)
        return optax.apply_updates(params, upd), state, loss

    keys = jax.random.split(k_loop, steps)
    losses = []
    for i in range(steps):  # host loop over training steps (each step jitted)
        params, state, loss = step(params, state, keys[i])
        if i % 500 == 0 or i == steps - 1:
            losses.append(float(loss))
    return model, params, losses


def metrics(key, x, ref, ref2):
    k1, k2 = jax.random.split(key)
    return (float(toy.mmd_rbf(x, ref)), float(toy.sliced_w2(k1, x, ref)),
            float(toy.mmd_rbf(ref2, ref)), float(toy.sliced_w2(k2, ref2, ref)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--bridge", action="store_true")
    args = ap.parse_args()
    data = toy.checkerboard
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    model, params, losses = train(jax.random.key(0), data, args.steps, args.batch)
    train_wall, train_cpu = time.perf_counter() - t_wall, time.process_time() - t_cpu
    print(f"trained {args.steps} steps (batch {args.batch}): wall {train_wall:.1f}s, "
          f"CPU {train_cpu:.1f}s; loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    v = jax.tree_util.Partial(_apply(model), params)
    ref = data(jax.random.key(100), args.n)
    ref2 = data(jax.random.key(101), args.n)
    rows = []
    runs = [("ODE heun", dict(solver="heun", num_steps=50)),
            ("ODE tsit5 (adaptive)", dict(solver="tsit5")),
            ("SDE EM sigma=0.5", dict(solver="euler_maruyama", sigma=0.5, num_steps=200)),
            ("SDE EM sigma=1.0", dict(solver="euler_maruyama", sigma=1.0, num_steps=200)),
            ("SDE EM sigma=2(1-t)", dict(solver="euler_maruyama", sigma=_sigma_lin,
                                         num_steps=200))]
    for name, opts in runs:
        t0 = time.perf_counter()
        x, nfe = flow.flow_sample(jax.random.key(7), v, (args.n, 2), **opts)
        x.block_until_ready()
        dt = time.perf_counter() - t0
        rows.append((name, nfe, *metrics(jax.random.key(9), x, ref, ref2), dt))
    if args.bridge:
        t0 = time.perf_counter()
        bmodel, bparams, blosses = train(jax.random.key(1), data, args.steps, args.batch,
                                         source_fn=toy.circles)
        vb = jax.tree_util.Partial(_apply(bmodel), bparams)
        src = toy.circles(jax.random.key(8), args.n)
        x, nfe = flow.flow_sample(jax.random.key(7), vb, (args.n, 2), solver="heun",
                                  num_steps=50, x_init=src)
        rows.append(("bridge circles->checkerboard, ODE heun", nfe,
                     *metrics(jax.random.key(9), x, ref, ref2), time.perf_counter() - t0))
    print("| sampler | NFE | MMD^2 | floor MMD^2 | sliced W2 | floor sliced W2 | wall s |")
    print("|---|---|---|---|---|---|---|")
    for name, nfe, mmd, sw, fm, fsw, dt in rows:
        print(f"| {name} | {nfe} | {mmd:.5f} | {fm:.5f} | {sw:.4f} | {fsw:.4f} | {dt:.1f} |")
    print(f"total wall {time.perf_counter() - t_wall:.1f}s, CPU {time.process_time() - t_cpu:.1f}s")


def _sigma_lin(t):
    return 2.0 * (1.0 - t)


def _apply(model):
    """velocity_fn(params, x, t) for ``jax.tree_util.Partial(_apply(model), params)`` (params are
    traced leaves: the samplers compile once)."""
    def fn(params, x, t):
        return model.apply(params, x, t)
    return fn


if __name__ == "__main__":
    main()
