"""Throughput of the CIFAR-10 score networks: forward and full training step.

Measures images/s of the jitted forward pass and of a full training step (forward, backward,
clip-by-global-norm + Adam, EMA update) for the CIFAR-10 DDPM++ (vp/cifar10_ddpmpp_continuous)
and NCSN++ (ve/cifar10_ncsnpp_continuous) networks, plus peak memory (host RSS on CPU, device
``peak_bytes_in_use`` on accelerators). Compilation is excluded from the timings and reported
separately.

    python bench/bench_models.py --batch-size 8 --iters 5
    python bench/bench_models.py --dtype bfloat16        # on an accelerator
    python bench/bench_models.py --smoke                 # shrunk networks, batch 1: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from score_jax.models import get_model

# Model fields of the reference configs (score_sde configs/vp/cifar10_ddpmpp_continuous.py and
# configs/ve/cifar10_ncsnpp_continuous.py over default_cifar10_configs.py).
_COMMON = dict(normalization="GroupNorm", nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2),
               num_res_blocks=4, attn_resolutions=(16,), resamp_with_conv=True, conditional=True,
               fir_kernel=(1, 3, 3, 1), skip_rescale=True, resblock_type="biggan",
               progressive="none", progressive_combine="sum", attention_type="ddpm",
               init_scale=0.0, fourier_scale=16, conv_size=3, sigma_min=0.01, sigma_max=50,
               num_scales=1000, beta_min=0.1, beta_max=20.0, dropout=0.1)
CONFIGS = {
    "ddpmpp_cifar10": (dict(_COMMON, name="ncsnpp", fir=False, progressive_input="none",
                            embedding_type="positional", scale_by_sigma=False),
                       dict(image_size=32, num_channels=3, centered=True)),
    "ncsnpp_cifar10": (dict(_COMMON, name="ncsnpp", fir=True, progressive_input="residual",
                            embedding_type="fourier", scale_by_sigma=True),
                       dict(image_size=32, num_channels=3, centered=False)),
}


def _peak_memory_mb() -> dict[str, float]:
    out = {"host_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        out["device_peak_mb"] = stats["peak_bytes_in_use"] / 2 ** 20
    return out


# --smoke: each network shrunk to CPU seconds (same layer types)
SMOKE = dict(nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,))


def median_seconds(fn, iters: int) -> float:
    """Median seconds per call of an already compiled ``fn`` (blocks on the result)."""
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def bench(name: str, batch: int, iters: int, dtype: str | None, smoke: bool = False) -> dict:
    model_cfg, data = CONFIGS[name]
    if smoke:
        model_cfg = dict(model_cfg, **SMOKE)
    model = get_model(dict(model_cfg, dtype=dtype), **data)
    key = jax.random.key(0)
    x = jax.random.uniform(key, (batch, 32, 32, 3))
    labels = (jnp.linspace(1.0, 999.0, batch) if model_cfg["embedding_type"] == "positional"
              else jnp.geomspace(0.01, 50.0, batch))
    params = jax.jit(model.init)(key, x, labels)["params"]
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(params))

    fwd = jax.jit(lambda p, x, l: model.apply({"params": p}, x, l, train=False))
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(params, x, labels))
    compile_fwd = time.perf_counter() - t0
    t_fwd = median_seconds(lambda: fwd(params, x, labels), iters)
    mem_fwd = _peak_memory_mb()

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-4, b1=0.9, eps=1e-8))
    opt_state = tx.init(params)
    ema = jax.tree_util.tree_map(jnp.copy, params)

    def loss_fn(p, x0, l, z, k):
        # Denoising loss on a fixed noise level per sample; the network cost is what matters.
        y = model.apply({"params": p}, x0 + 0.5 * z, l, train=True, rngs={"dropout": k})
        return jnp.mean((y + z) ** 2)

    @jax.jit
    def train_step(p, o, e, x0, l, k):
        kz, kd = jax.random.split(k)
        z = jax.random.normal(kz, x0.shape)
        loss, g = jax.value_and_grad(loss_fn)(p, x0, l, z, kd)
        upd, o = tx.update(g, o, p)
        p = optax.apply_updates(p, upd)
        e = jax.tree_util.tree_map(lambda a, b: 0.9999 * a + 0.0001 * b, e, p)
        return p, o, e, loss

    state = [params, opt_state, ema]

    def step():
        state[0], state[1], state[2], loss = train_step(*state, x, labels, key)
        return loss

    t0 = time.perf_counter()
    jax.block_until_ready(step())
    compile_train = time.perf_counter() - t0
    t_train = median_seconds(step, iters)
    mem_train = _peak_memory_mb()
    return {
        "model": name, "n_params": n_params, "batch": batch, "dtype": dtype or "float32",
        "forward_images_per_s": batch / t_fwd, "forward_s_per_batch": t_fwd,
        "train_step_images_per_s": batch / t_train, "train_step_s_per_batch": t_train,
        "compile_forward_s": compile_fwd, "compile_train_step_s": compile_train,
        "peak_memory_after_forward": mem_fwd, "peak_memory_after_train": mem_train,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--dtype", default=None, help="compute dtype, e.g. bfloat16 (params f32)")
    ap.add_argument("--models", nargs="+", default=sorted(CONFIGS), choices=sorted(CONFIGS))
    ap.add_argument("--json", default=None, help="also write the results to this file")
    ap.add_argument("--smoke", action="store_true",
                    help="shrunk networks, batch 1, 1 iteration: checks the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.batch_size, args.iters = 1, 1
    dev = jax.devices()[0]
    env = {"device": f"{dev.platform}: {dev.device_kind}", "n_devices": jax.device_count(),
           "cpu_count": os.cpu_count(), "load_avg_1m": os.getloadavg()[0],
           "jax": jax.__version__, "python": platform.python_version()}
    print(json.dumps(env))
    results = []
    for name in args.models:
        r = bench(name, args.batch_size, args.iters, args.dtype, args.smoke)
        results.append(r)
        print(json.dumps(r))
    env["load_avg_1m_end"] = os.getloadavg()[0]
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"env": env, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
