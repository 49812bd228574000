"""Where the train step's time goes, ours against the official PyTorch networks (CPU).

    python bench/bench_step_breakdown.py [--model ddpmpp|ncsnpp|both] [--batch_size 8]
        [--repeats 5] [--reference_path /tmp/ssp]   # the PyTorch side needs torch + the checkout
    python bench/bench_step_breakdown.py --smoke      # shrunk networks, 1 repeat: seconds

Ours (the config of ``bench_vs_torch.py``, built by ``score_jax.config.build``), each compiled
once and then timed interleaved (one call of each per round, ``--repeats`` rounds, so that the
machine's load hits all alike):

* ``forward``: the network in eval mode;
* ``grad``: the training loss (noise, forward, DSM) + its gradient (``jax.value_and_grad``);
* ``step``: the library's jitted train step (``Built.train_step``: loss, gradient, clip, Adam,
  EMA, the non-finite guard); ``step_before``: the same with the guard as it was before
  (``jnp.where(finite, new, old)`` over the state instead of ``lax.cond``);
* ``update``: what the step does after the gradient (clip, Adam, EMA, guard), alone on a fixed
  gradient (state donated, as in the step), and with one part changed: ``update_where_guard``
  (the guard before), ``update_no_guard``, ``update_no_ema``, ``update_no_clip``,
  ``update_sgd`` (``p - lr g`` only). Separate small compiles: the network's backward is
  compiled for ``grad``, ``step`` and ``step_before`` only (``--no_grad`` / ``--no_before``
  leave those out).

Ours runs under the project's XLA CPU flags (`score_jax.xla_flags`, as the CLIs) unless
``--xla_flags xla_default``.

FLOPs per call from XLA's cost analysis of each compiled function
(``jit(f).lower(...).compile().cost_analysis()["flops"]``). PyTorch side (``--reference_path``):
forward, loss + ``backward()``, the reference's full step (``losses.get_step_fn``), with FLOPs
from ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matmuls only: it counts no
elementwise work, so compare it with XLA's count of the same ops at most roughly).

Prints one JSON line per model and a table: median seconds, ratio to our forward (and to
PyTorch's forward for the PyTorch rows).
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

from bench_vs_torch import _load_our_config, build_reference, labels_for  # noqa: E402


def _flops(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    return None if not ca or "flops" not in ca else float(ca["flops"])


def our_variants(name: str, batch: int, seed: int, smoke: bool, with_grad: bool = True,
                 with_before: bool = True):
    """{label: (run() -> None, flops)} of our compiled functions (see module doc)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    from score_jax import config as config_lib
    from score_jax import parallel
    from score_jax import train_step as ts

    config = _load_our_config(name, smoke)
    config.training.batch_size = batch
    mesh = parallel.make_mesh(1)
    b = config_lib.build(config, mesh=mesh)
    rng = np.random.default_rng(seed)
    img = rng.random((batch, 32, 32, 3), dtype=np.float32)
    batch_j = parallel.to_global({"image": img, "label": np.zeros(batch, np.int32)}, mesh)
    x = jnp.asarray(rng.standard_normal((batch, 32, 32, 3)).astype(np.float32))
    labels = jnp.asarray(labels_for(name, rng.uniform(1e-3, 1.0, batch)))
    key = jax.random.key(seed + 1)
    state0 = b.init(jax.random.key(seed))
    params = state0.params

    def loss(p):
        return b.train_loss({"params": p}, batch_j, key)[0]

    plain = {
        "forward": (jax.jit(lambda p: b.model.apply({"params": p}, x, labels, train=False)),
                    (params,)),
    }
    if with_grad:
        plain["grad"] = (jax.jit(jax.value_and_grad(loss)), (params,))
    out = {}
    for label, (fn, args) in plain.items():
        c = fn.lower(*args).compile()
        jax.block_until_ready(c(*args))
        out[label] = (functools.partial(lambda c, a: jax.block_until_ready(c(*a)), c, args),
                      _flops(c))

    lr = float(config.optim.lr)
    no_clip, _ = ts.make_optimizer(lr=lr, beta1=float(config.optim.beta1),
                                   eps=float(config.optim.eps), warmup=int(config.optim.warmup),
                                   grad_clip=-1.0)
    sgd = optax.sgd(lr)
    rate = b.ema_rate

    def update(state, grads, loss_v, *, tx=b.tx, ema=True, guard="cond"):
        """The part of ``train_step.train_step`` after the gradient, with parts switched off;
        ``guard``: "cond" (the library's ``lax.cond``), "where" (``jnp.where`` over the state,
        the library before), None (no guard)."""
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss_v) & jnp.isfinite(grad_norm)

        def apply(state):
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            p = optax.apply_updates(state.params, updates)
            e = (jax.tree_util.tree_map(lambda a, q: a * rate + q * (1.0 - rate),
                                        state.ema_params, p) if ema else state.ema_params)
            return ts.TrainState(step=state.step + 1, params=p, ema_params=e, opt_state=opt_state)

        if guard == "cond":
            return jax.lax.cond(finite, apply, lambda s: s, state)
        new = apply(state)
        if guard == "where":
            new = jax.tree_util.tree_map(lambda n, o: jnp.where(finite, n, o), new, state)
        return new

    def step_before(state, batch, key):
        """The library's train step before the guard became a ``lax.cond``."""
        step_key = jax.random.fold_in(key, state.step)
        (loss_v, _), grads = jax.value_and_grad(
            lambda p: b.train_loss({"params": p}, batch, step_key), has_aux=True)(state.params)
        new = update(state, grads, loss_v, guard="where")
        return new, {"loss": loss_v}

    # The library's step and the step before (each one more compile of the backward), then the
    # update alone on a fixed gradient with parts removed (small compiles).
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    steps = {"step": b.train_step}
    if with_before:
        steps["step_before"] = jax.jit(step_before, in_shardings=(rep, dat, rep),
                                       out_shardings=(rep, rep), donate_argnums=0)
    for label, fn in steps.items():
        st = b.init(jax.random.key(seed))
        c = fn.lower(st, batch_j, key).compile()
        holder = {"s": st}

        def run_step(c=c, holder=holder):
            holder["s"], m = c(holder["s"], batch_j, key)
            jax.block_until_ready(m["loss"])

        run_step()
        out[label] = (run_step, _flops(c))
    # the update's cost does not depend on the gradient's values (no NaN, no denormals)
    grads = jax.tree_util.tree_map(lambda a: jnp.full(a.shape, 1e-3, a.dtype), params)
    loss_v = jnp.float32(1.0)
    updates = {"update": (update, b.tx),
               "update_where_guard": (functools.partial(update, guard="where"), b.tx),
               "update_no_guard": (functools.partial(update, guard=None), b.tx),
               "update_no_ema": (functools.partial(update, ema=False), b.tx),
               "update_no_clip": (functools.partial(update, tx=no_clip), no_clip),
               "update_sgd": (functools.partial(update, tx=sgd, ema=False, guard=None), sgd)}
    for label, (fn, tx) in updates.items():
        st = b.init(jax.random.key(seed))
        st = st.replace(opt_state=tx.init(st.params))
        c = jax.jit(fn, donate_argnums=0).lower(st, grads, loss_v).compile()
        holder = {"s": st}

        def run(c=c, holder=holder):
            holder["s"] = c(holder["s"], grads, loss_v)
            jax.block_until_ready(holder["s"].step)

        run()
        out[label] = (run, _flops(c))
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    return out, n_params


def torch_variants(name: str, reference_path: str, batch: int, seed: int, smoke: bool):
    """{label: (run, flops)} of the reference: forward, loss + backward, the full step."""
    import numpy as np
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    ref_config, model, sde, step_fn, make_state = build_reference(name, reference_path, seed,
                                                                  smoke)
    losses = sys.modules.get("losses")
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((batch, 3, 32, 32)).astype(np.float32))
    lab = torch.from_numpy(labels_for(name, rng.uniform(1e-3, 1.0, batch)))
    img = rng.random((batch, 3, 32, 32), dtype=np.float32)
    img = torch.from_numpy(2.0 * img - 1.0 if ref_config.data.centered else img)
    loss_fn = losses.get_sde_loss_fn(sde, train=True, reduce_mean=ref_config.training.reduce_mean,
                                     continuous=True,
                                     likelihood_weighting=ref_config.training.likelihood_weighting)
    state = make_state()

    def fwd():
        model.eval()
        with torch.no_grad():
            model(x, lab)

    def grad():
        model.train()
        model.zero_grad(set_to_none=True)
        loss_fn(model, img).backward()

    def step():
        model.train()
        step_fn(state, img)

    out = {}
    for label, fn in (("forward", fwd), ("grad", grad), ("step", step)):
        fn()  # warm-up
        with FlopCounterMode(display=False) as fc:
            fn()
        out[label] = (fn, float(fc.get_total_flops()))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["ddpmpp", "ncsnpp", "both"], default="ddpmpp")
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reference_path", default=None,
                    help="score_sde_pytorch checkout: also time the PyTorch side")
    ap.add_argument("--no_grad", action="store_true",
                    help="skip ours 'grad' (one compile of the backward less)")
    ap.add_argument("--no_before", action="store_true",
                    help="skip ours 'step_before' (one compile of the backward less)")
    ap.add_argument("--smoke", action="store_true",
                    help="shrunk networks, batch 2, 1 repeat: checks the script runs")
    ap.add_argument("--xla_flags", choices=["project", "xla_default"], default="project",
                    help="project (default): score_jax.xla_flags's flags, what the CLIs run; "
                         "xla_default: XLA's own defaults (YNNPACK convolutions)")
    args = ap.parse_args()
    if args.xla_flags == "project":
        from score_jax.xla_flags import apply_default_cpu_flags

        apply_default_cpu_flags()  # before the first jax computation (XLA reads them once)
    if args.smoke:
        args.batch_size, args.repeats = 2, 1
    import numpy as np

    if args.reference_path:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see bench_vs_torch.py
        import torch

        torch.set_num_threads(2)
    names = ["ddpmpp", "ncsnpp"] if args.model == "both" else [args.model]
    for name in names:
        runs, n_params = our_variants(name, args.batch_size, args.seed, args.smoke,
                                      not args.no_grad, not args.no_before)
        runs = {"ours " + k: v for k, v in runs.items()}
        if args.reference_path:
            runs.update({"torch " + k: v for k, v in torch_variants(
                name, os.path.abspath(args.reference_path), args.batch_size, args.seed,
                args.smoke).items()})
        times = {k: [] for k in runs}
        for r in range(args.repeats):
            order = list(runs)
            order = order[r % len(order):] + order[:r % len(order)]
            for k in order:
                t0 = time.perf_counter()
                runs[k][0]()
                times[k].append(time.perf_counter() - t0)
        med = {k: float(np.median(v)) for k, v in times.items()}
        res = {"model": name, "batch": args.batch_size, "repeats": args.repeats,
               "xla_flags": os.environ.get("XLA_FLAGS", ""),
               "n_params": n_params, "load_avg": os.getloadavg(),
               "median_s": {k: round(v, 4) for k, v in med.items()},
               "min_s": {k: round(float(np.min(v)), 4) for k, v in times.items()},
               "flops": {k: v[1] for k, v in runs.items()}}
        print(json.dumps(res), flush=True)
        print(f"\n{name}, batch {args.batch_size}, {args.repeats} interleaved rounds "
              f"(load {os.getloadavg()[0]:.1f})")
        print("| what | median s | / ours forward | / torch forward | GFLOP |")
        print("|---|---|---|---|---|")
        for k, v in med.items():
            tf = med.get("torch forward")
            fl = runs[k][1]
            print(f"| {k} | {v:.3f} | {v / med['ours forward']:.2f} | "
                  f"{'' if tf is None else f'{v / tf:.2f}'} | "
                  f"{'' if fl is None else f'{fl / 1e9:.1f}'} |")


if __name__ == "__main__":
    main()
