"""Training throughput and time to the first step for the CIFAR-10 DDPM++ / NCSN++ configs.

    python bench/bench_train.py [--configs vp/cifar10_ddpmpp_continuous ve/cifar10_ncsnpp_continuous]
                                [--batch_size 8] [--steps 3]
    python bench/bench_train.py --smoke     # the configs' :smoke variants, 1 step: seconds

Uses the real configs (networks, objective, optimiser, EMA, the jitted mesh step of train_lib)
with synthetic uniform images of the config's shape, so that no dataset is needed. Reports, per
config: parameter count, time to the first step (trace + compile + one step), steady-state
seconds per step and images/s, device kind and count, CPU time. Prints one JSON line per config.
"""
import argparse
import json
import os
import resource
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def bench(name: str, batch_size: int, steps: int) -> dict:
    import importlib

    import jax
    import numpy as np

    from score_jax import config as config_lib
    from score_jax import parallel, train_step

    module, _, variant = name.partition(":")  # "vp/cifar10_ddpmpp_continuous:smoke"
    config = importlib.import_module("configs." + module.replace("/", ".")).get_config(
        variant or None)
    nd = jax.device_count()
    config.training.batch_size = batch_size
    mesh = parallel.make_mesh()
    b = config_lib.build(config, mesh=mesh)
    state = b.init(jax.random.key(0))
    n_params = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
    loss_fn = config_lib.loss_fn_from_config(config, b.sde, b.model, train=True)
    step = train_step.jit_train_step(loss_fn, b.tx, b.schedule, config.model.ema_rate, mesh)
    rng = np.random.default_rng(0)
    shape = (batch_size,) + b.image_shape
    batches = [parallel.to_global({"image": rng.random(shape, np.float32),
                                   "label": np.zeros(batch_size, np.int32)}, mesh)
               for _ in range(2)]
    key = jax.random.key(1)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    state, m = step(state, batches[0], key)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t0
    t1 = time.perf_counter()
    for i in range(steps):
        state, m = step(state, batches[(i + 1) % 2], key)
    jax.block_until_ready(m["loss"])
    per_step = (time.perf_counter() - t1) / steps
    return {"config": name, "device": jax.devices()[0].device_kind, "num_devices": nd,
            "batch_size": batch_size, "params_M": round(n_params / 1e6, 2),
            "time_to_first_step_s": round(first, 1), "s_per_step": round(per_step, 2),
            "images_per_s": round(batch_size / per_step, 2),
            "cpu_time_s": round(time.process_time() - cpu0, 1),
            "loss": float(m["loss"]), "maxrss_GB": round(
                resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["vp/cifar10_ddpmpp_continuous",
                                                     "ve/cifar10_ncsnpp_continuous"])
    ap.add_argument("--batch_size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true",
                    help="each config's :smoke variant, 1 step: checks the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.configs = [c if ":" in c else c + ":smoke" for c in args.configs]
        args.steps = 1
    for name in args.configs:
        print(json.dumps(bench(name, args.batch_size, args.steps)), flush=True)


if __name__ == "__main__":
    main()
