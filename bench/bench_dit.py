"""DiT vs DDPM++ at (nearly) equal parameter count: forward and training-step throughput.

A small DiT (patch 2, hidden 128, depth 8, 2 heads: 256 tokens at 32x32) against the CIFAR-10
DDPM++ architecture shrunk to nf=32, num_res_blocks=2 (both ~2.5M parameters), on 32x32x3
images. Each network is timed on its jitted forward pass and on a full training step
(``losses.get_loss_fn`` DSM loss on the VP SDE, backward, clip-by-global-norm + Adam). Median of
``--iters`` calls after compilation (compile time reported separately).

    python bench/bench_dit.py --batch-size 8 --iters 5
    python bench/bench_dit.py --smoke       # both networks shrunk, batch 1: seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from bench_models import median_seconds  # same folder: python bench/bench_dit.py

from score_jax import losses
from score_jax import sde as sde_lib
from score_jax.models import get_model

DATA = dict(image_size=32, num_channels=3, centered=True)
CONFIGS = {
    "dit_p2_h128_d8": dict(name="dit", patch_size=2, hidden_size=128, depth=8, num_heads=2,
                           mlp_ratio=4.0, num_classes=None, learn_sigma=False),
    "ddpmpp_nf32_nrb2": dict(name="ncsnpp", normalization="GroupNorm", nonlinearity="swish",
                             nf=32, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                             attn_resolutions=(16,), resamp_with_conv=True, conditional=True,
                             fir=False, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
                             resblock_type="biggan", progressive="none",
                             progressive_input="none", progressive_combine="sum",
                             embedding_type="positional", attention_type="ddpm", init_scale=0.0,
                             fourier_scale=16, conv_size=3, scale_by_sigma=False, dropout=0.1),
}


# --smoke: both networks shrunk to CPU seconds (same layer types)
SMOKE = {"dit_p2_h128_d8": dict(hidden_size=32, depth=1),
         "ddpmpp_nf32_nrb2": dict(nf=16, ch_mult=(1, 2), num_res_blocks=1)}


def bench(name: str, batch: int, iters: int, smoke: bool = False) -> dict:
    model = get_model(dict(CONFIGS[name], **(SMOKE[name] if smoke else {})), **DATA)
    key = jax.random.key(0)
    x = jax.random.normal(key, (batch, 32, 32, 3))
    labels = jnp.linspace(1.0, 999.0, batch)
    variables = jax.jit(model.init)(key, x, labels)
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(variables))

    fwd = jax.jit(lambda v, x, l: model.apply(v, x, l, train=False))
    t0 = time.perf_counter()
    jax.block_until_ready(fwd(variables, x, labels))
    compile_fwd = time.perf_counter() - t0
    t_fwd = median_seconds(lambda: fwd(variables, x, labels), iters)

    loss_fn = losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, reduce_mean=True)
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(2e-4))

    @jax.jit
    def train_step(v, o, x0, k):
        (loss, _), g = jax.value_and_grad(loss_fn, has_aux=True)(v, x0, k)
        upd, o = tx.update(g, o, v)
        return optax.apply_updates(v, upd), o, loss

    state = [variables, tx.init(variables)]

    def step():
        state[0], state[1], loss = train_step(*state, x, key)
        return loss

    t0 = time.perf_counter()
    jax.block_until_ready(step())
    compile_train = time.perf_counter() - t0
    t_train = median_seconds(step, iters)
    return {"model": name, "n_params": n_params, "batch": batch,
            "forward_images_per_s": batch / t_fwd, "train_step_images_per_s": batch / t_train,
            "compile_forward_s": compile_fwd, "compile_train_step_s": compile_train}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--smoke", action="store_true",
                    help="shrunk networks, batch 1, 1 iteration: checks the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.batch_size, args.iters = 1, 1
    dev = jax.devices()[0]
    print(json.dumps({"device": f"{dev.platform}: {dev.device_kind}", "cpu_count": os.cpu_count(),
                      "load_avg_1m": os.getloadavg()[0], "jax": jax.__version__,
                      "python": platform.python_version()}))
    res = {}
    for name in CONFIGS:
        res[name] = bench(name, args.batch_size, args.iters, args.smoke)
        print(json.dumps(res[name]))
    dit, unet = res["dit_p2_h128_d8"], res["ddpmpp_nf32_nrb2"]
    print(f"params DiT/DDPM++ = {dit['n_params'] / unet['n_params']:.3f}; "
          f"forward throughput DiT/DDPM++ = "
          f"{dit['forward_images_per_s'] / unet['forward_images_per_s']:.2f}x; train step "
          f"DiT/DDPM++ = {dit['train_step_images_per_s'] / unet['train_step_images_per_s']:.2f}x"
          f" (load avg at end {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
