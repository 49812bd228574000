"""The main job's parts, A/B in one process: per-step time of the default digits config's train
step with each suspect of the 3 min 15 s -> 4 min 35 s slowdown switched back, and the snapshot's
cost with and without the raw-weight sampling of the EMA check.

    PYTHONPATH=. python bench/bench_main_job_parts.py [--steps 20] [--rounds 3] [--no_snapshot]

Train-step variants (each compiled once, its compile time reported, then timed interleaved:
``--rounds`` rounds of ``--steps`` steps each (per-step time of each round; median over rounds), the order rotated every round):

- ``now``: the library (attention through ``jax.nn.dot_product_attention``, guard ``lax.cond``,
  `train_step.FusedAdam.fused_update`);
- ``einsum_attention``: the attention written out (einsum, float32 softmax, einsum), as before;
- ``optax_chain``: the optax chain + ``apply_updates`` + EMA instead of the fused update;
- ``no_guard`` / ``where_guard``: the non-finite guard left out / as ``jnp.where`` over the state.

Snapshot: ``SnapshotEvaluator.run`` of the default config (256 samples, EDM Heun 18 steps, the
digits metric) on the initial state, with the EMA check (EMA + raw samples, as now) and without
(``ema_rate`` None: EMA samples only), compilation excluded (one warm-up call each). One JSON line
per measurement; the synthetic batch's values do not change the cost.
"""
import argparse
import contextlib
import json
import logging
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@contextlib.contextmanager
def patched(variant):
    """Switch one suspect back while a step is traced."""
    import jax
    import jax.numpy as jnp

    from score_jax import train_step as ts
    from score_jax.models import layers

    saved = (layers.dot_product_attention, jax.lax.cond, ts.FusedAdam.fused_update)
    if variant == "einsum_attention":
        def einsum_attention(q, k, v, scale):
            logits = jnp.einsum("btnh,bsnh->bnts", q, k) * scale
            return jnp.einsum("bnts,bsnh->btnh", jax.nn.softmax(logits, axis=-1), v)
        layers.dot_product_attention = einsum_attention
    if variant in ("no_guard", "where_guard"):
        def cond(pred, true_fn, false_fn, *ops):
            new = true_fn(*ops)
            if variant == "no_guard":
                return new
            return jax.tree_util.tree_map(lambda n, o: jnp.where(pred, n, o), new, ops[0])
        jax.lax.cond = cond
    try:
        yield
    finally:
        layers.dot_product_attention, jax.lax.cond, ts.FusedAdam.fused_update = saved


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--variants", default="now,einsum_attention,optax_chain,no_guard,where_guard")
    ap.add_argument("--no_snapshot", action="store_true")
    args = ap.parse_args()
    import jax
    import numpy as np

    from configs.default_digits import get_config
    from score_jax import config as config_lib
    from score_jax import parallel
    from score_jax import train_step as ts

    config = get_config()
    b = config_lib.build(config)
    rng = np.random.default_rng(0)
    batch = {"image": rng.random((config.training.batch_size, 8, 8, 1), np.float32),
             "label": np.zeros((config.training.batch_size,), np.int32)}
    gbatch = parallel.to_global(batch, b.mesh)
    key = jax.random.key(0)
    runs, compile_s, cost = {}, {}, {}
    for v in args.variants.split(","):
        tx = b.tx.chain if v == "optax_chain" else b.tx
        step = ts.jit_train_step(b.train_loss, tx, b.schedule, b.ema_rate, b.mesh,
                                 ema_warmup=b.ema_warmup,
                                 state_sharding=ts.state_sharding_of(b.abstract_state))
        state = b.init(jax.random.key(1))
        t0 = time.perf_counter()
        with patched(v):
            compiled = step.lower(state, gbatch, key).compile()
        compile_s[v] = time.perf_counter() - t0
        ca = compiled.cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        cost[v] = {"gflop": round(float(ca.get("flops", 0)) / 1e9, 4),
                   "gbytes_accessed": round(float(ca.get("bytes accessed", 0)) / 1e9, 4)}
        print(f"compiled {v} in {compile_s[v]:.1f} s", file=sys.stderr, flush=True)
        holder = {"s": state}

        def run(compiled=compiled, holder=holder):
            for _ in range(args.steps):
                holder["s"], m = compiled(holder["s"], gbatch, key)
            jax.block_until_ready(holder["s"])

        run()
        runs[v] = run
    times = {v: [] for v in runs}
    cpu = {v: [] for v in runs}  # process CPU time (all threads): less sensitive to others' load
    for r in range(args.rounds):
        order = list(runs)[r % len(runs):] + list(runs)[:r % len(runs)]
        for v in order:
            t0, c0 = time.perf_counter(), time.process_time()
            runs[v]()
            times[v].append((time.perf_counter() - t0) / args.steps)
            cpu[v].append((time.process_time() - c0) / args.steps)
    base = float(np.median(times["now"])) if "now" in times else None
    cbase = float(np.median(cpu["now"])) if "now" in cpu else None
    for v, ts_ in times.items():
        med, cmed = float(np.median(ts_)), float(np.median(cpu[v]))
        print(json.dumps({"what": "train_step", "variant": v, "median_ms": round(1e3 * med, 2),
                          "min_ms": round(1e3 * min(ts_), 2),
                          "vs_now": None if base is None else round(med / base, 3),
                          "cpu_median_ms": round(1e3 * cmed, 2),
                          "cpu_vs_now": None if cbase is None else round(cmed / cbase, 3),
                          **cost[v], "compile_s": round(compile_s[v], 1),
                          "load_avg": os.getloadavg()}), flush=True)
    if args.no_snapshot:
        return
    from score_jax.evaluation.build import training_evaluators

    class Batches:  # the loss evaluator's data (not run here)
        def iterate(self, start=0):
            while True:
                yield batch

    state = b.init(jax.random.key(1))
    out = {}
    for name, rate in (("ema_and_raw", b.ema_rate), ("ema_only", None)):
        ev = [e for e in training_evaluators(config, b, "/tmp/bench_main_job_parts", eval_ds=Batches(),
                                             start=0, k_eval=key, k_sample=key,
                                             write=lambda s: None, log=logging.getLogger("bench"),
                                             image_hook=None).every_snapshot
              if hasattr(e, "ema_rate")][0]
        ev.ema_rate = rate
        ev.run(0, state)  # compile
        out[name] = ev
    times = {k: [] for k in out}
    for r in range(min(args.rounds, 4)):
        for k in (list(out) if r % 2 == 0 else list(out)[::-1]):
            t0, c0 = time.perf_counter(), time.process_time()
            out[k].run(r + 1, state)
            times[k].append((time.perf_counter() - t0, time.process_time() - c0))
    for k, v in times.items():
        wall, cpu_s = [w for w, _ in v], [c for _, c in v]
        print(json.dumps({"what": "snapshot", "variant": k, "median_s": round(float(np.median(wall)), 2),
                          "min_s": round(min(wall), 2), "cpu_median_s": round(float(np.median(cpu_s)), 2),
                          "load_avg": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
