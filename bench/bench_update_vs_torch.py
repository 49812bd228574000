"""The train step's update after the gradient (clip + Adam + EMA + non-finite guard), ours against
the reference's, on the parameter shapes of the CIFAR-10 DDPM++ / NCSN++ networks (CPU).

    python bench/bench_update_vs_torch.py [--model ddpmpp|ncsnpp] [--repeats 5]   # needs torch
    python bench/bench_update_vs_torch.py --smoke                                  # seconds

Ours: the optax chain of the config (``config.optimizer_from_config``: clip_by_global_norm, Adam
with the warmup schedule) + EMA, jitted with the state donated as in ``train_step``, with the
non-finite guard as ``lax.cond`` and the update of ``FusedAdam.fused_update`` (one elementwise
function per leaf: the library now), the same with the optax chain + ``apply_updates`` + EMA
(before), as ``jnp.where(finite, new, old)`` over the
state (the library before), and without a guard. PyTorch: what the reference's ``optimize_fn``
(score_sde_pytorch ``losses.optimization_manager``: warmup lr, ``clip_grad_norm_``, Adam) and
``models/ema.py`` ``ExponentialMovingAverage.update`` do, on tensors of the same shapes. No
network runs: the gradient is fixed (1e-3 everywhere; the cost does not depend on its values),
so that only small elementwise programs are compiled. Timed interleaved, ``--repeats`` rounds.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["ddpmpp", "ncsnpp"], default="ddpmpp")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--smoke", action="store_true",
                    help="the shrunk networks' shapes, 1 repeat; without torch, ours only")
    args = ap.parse_args()
    if args.smoke:
        args.repeats = 1
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_vs_torch.py
    try:
        import torch
    except ImportError:
        if not args.smoke:
            raise SystemExit("torch is not installed (only --smoke runs without it)") from None
        torch = None
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from bench_vs_torch import _load_our_config

    from score_jax import config as config_lib
    from score_jax import train_step as ts

    config = _load_our_config(args.model, args.smoke)
    model = config_lib.model_from_config(config)
    tx, _ = config_lib.optimizer_from_config(config)
    abstract = jax.eval_shape(lambda k: ts.init_state(k, model, tx, (32, 32, 3)),
                              jax.random.key(0))
    shapes = [a.shape for a in jax.tree_util.tree_leaves(abstract.params)]
    n_params = int(sum(np.prod(s) for s in shapes))
    rng = np.random.default_rng(0)
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(rng.standard_normal(a.shape).astype(np.float32) * 0.01),
        abstract.params)
    grads = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 1e-3, jnp.float32),
                                   abstract.params)
    rate = float(config.model.ema_rate)

    def update(state, grads, loss_v, guard):
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss_v) & jnp.isfinite(grad_norm)

        def apply(state):
            u, o = tx.update(grads, state.opt_state, state.params)
            p = optax.apply_updates(state.params, u)
            e = jax.tree_util.tree_map(lambda a, q: a * rate + q * (1.0 - rate),
                                       state.ema_params, p)
            return ts.TrainState(step=state.step + 1, params=p, ema_params=e, opt_state=o)

        def fused(state):  # the library now (train_step with a FusedAdam)
            p, e, o = tx.fused_update(grads, grad_norm, state.opt_state, state.params,
                                      state.ema_params, jnp.float32(rate))
            return ts.TrainState(step=state.step + 1, params=p, ema_params=e, opt_state=o)

        if guard == "fused":
            return jax.lax.cond(finite, fused, lambda s: s, state)
        if guard == "cond":
            return jax.lax.cond(finite, apply, lambda s: s, state)
        new = apply(state)
        if guard == "where":
            new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new

    runs = {}
    for g in ("fused", "cond", "where", "none"):
        st = ts.TrainState(step=jnp.zeros((), jnp.int32),
                           params=jax.tree_util.tree_map(jnp.copy, params),
                           ema_params=jax.tree_util.tree_map(jnp.copy, params),
                           opt_state=tx.init(params))
        c = jax.jit(functools.partial(update, guard=g), donate_argnums=0).lower(
            st, grads, jnp.float32(1)).compile()
        h = {"s": st}

        def run(c=c, h=h):
            h["s"] = c(h["s"], grads, jnp.float32(1))
            jax.block_until_ready(h["s"].step)

        run()
        runs["ours update, guard " + g] = run
    ref = "torch update (optimize_fn + EMA)"
    if torch is not None:
        torch.set_num_threads(2)
        o = config.optim
        tp = [torch.nn.Parameter(torch.from_numpy(np.asarray(a).copy()))
              for a in jax.tree_util.tree_leaves(params)]
        for p in tp:
            p.grad = torch.full_like(p, 1e-3)
        opt = torch.optim.Adam(tp, lr=o.lr, betas=(o.beta1, 0.999), eps=o.eps, weight_decay=0)
        shadow = [p.clone().detach() for p in tp]

        def torch_update():
            for g in opt.param_groups:  # losses.optimization_manager
                g["lr"] = o.lr * min(1 / o.warmup, 1.0)
            torch.nn.utils.clip_grad_norm_(tp, max_norm=o.grad_clip)
            opt.step()
            with torch.no_grad():  # models/ema.py ExponentialMovingAverage.update
                for s, p in zip(shadow, tp, strict=True):
                    s.sub_((1.0 - rate) * (s - p))

        torch_update()
        runs[ref] = torch_update
    times = {k: [] for k in runs}
    for r in range(args.repeats):
        order = list(runs)
        order = order[r % len(order):] + order[:r % len(order)]
        for k in order:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: float(np.median(v)) for k, v in times.items()}
    print(json.dumps({"model": args.model, "n_params": n_params, "n_tensors": len(shapes),
                      "repeats": args.repeats, "load_avg": os.getloadavg(),
                      "median_s": {k: round(v, 4) for k, v in med.items()}}))
    base = med.get(ref, med["ours update, guard none"])
    print(f"| what ({args.model}, {n_params / 1e6:.1f}M parameters in {len(shapes)} tensors) | "
          f"median s | / {'torch' if ref in med else 'ours without guard'} |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.3f} | {v / base:.2f} |")


if __name__ == "__main__":
    main()
