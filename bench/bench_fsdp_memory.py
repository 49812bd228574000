"""XLA's memory analysis of the DiT train step, replicated vs FSDP, from abstract shapes only.

The train step of ``score_jax.train_step`` (DSM loss on the VP SDE, clip + Adam, EMA) for a DiT
preset on latents (default DiT-XL/2 on 32 x 32 x 4, the 256 px latent model), global batch
``--batch`` over ``--devices`` devices, is lowered with ``jax.ShapeDtypeStruct`` inputs that carry
the shardings of ``parallel.state_shardings`` (nothing is allocated) and compiled; XLA's
``compiled.memory_analysis()`` gives the per-device buffers of the partitioned program:
arguments (the state shard + the batch shard), outputs, aliased (donated) bytes and temporaries
(activations, gradients, all-gathered weights). Peak ~ arguments + outputs - aliased + temporaries.
On CPU the devices are fake (``--xla_force_host_platform_device_count``) and the analysis is
that of the CPU backend's buffer assignment: a proxy for a GPU's, same program.

    python bench/bench_fsdp_memory.py                           # DiT-XL/2, batch 256, 8 devices
    python bench/bench_fsdp_memory.py --preset DiT-S/2 --fsdp 1 8 --json out.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _setup_devices(n: int) -> None:
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()


def measure(preset: str, batch: int, fsdp: int, *, devices: int, dtype: str | None,
            remat: bool, grad_accum_steps: int, min_shard_size: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from score_jax import losses, parallel
    from score_jax import sde as sde_lib
    from score_jax import train_step as ts
    from score_jax.models import dit_config, get_model

    cfg = dit_config(preset, num_classes=None, learn_sigma=False, remat=remat,
                     **({"dtype": dtype} if dtype else {}))
    model = get_model(cfg, image_size=32, num_channels=4, centered=True)
    mesh = parallel.make_mesh(devices, fsdp=fsdp)
    tx, schedule = ts.make_optimizer(lr=1e-4, warmup=0, grad_clip=1.0)
    _, abstract = ts.jit_init(model, tx, (32, 32, 4), mesh, min_shard_size=min_shard_size)
    loss_fn = losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, reduce_mean=True)
    step = ts.jit_train_step(loss_fn, tx, schedule, 0.9999, mesh,
                             state_sharding=ts.state_sharding_of(abstract),
                             grad_accum_steps=grad_accum_steps)
    batch_abs = jax.ShapeDtypeStruct((batch, 32, 32, 4), jnp.float32,
                                     sharding=parallel.data_sharding(mesh))
    leaves = jax.tree_util.tree_leaves(abstract)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(abstract.params))
    state_bytes = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in leaves)
    shard_bytes = sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize
                      for a in leaves)
    t0 = time.perf_counter()
    lowered = step.lower(abstract, batch_abs, jax.random.key(0))
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t0
    m = compiled.memory_analysis()
    text = compiled.as_text()
    gib = 2.0 ** 30
    out = {
        "preset": preset, "global_batch": batch, "devices": devices, "fsdp": fsdp,
        "mesh": dict(mesh.shape), "dtype": dtype or "float32", "remat": remat,
        "grad_accum_steps": grad_accum_steps, "params": n_params,
        "state_gib_total": state_bytes / gib, "state_gib_per_device": shard_bytes / gib,
        "argument_gib": m.argument_size_in_bytes / gib,
        "output_gib": m.output_size_in_bytes / gib,
        "alias_gib": m.alias_size_in_bytes / gib,
        "temp_gib": m.temp_size_in_bytes / gib,
        "peak_gib": (m.argument_size_in_bytes + m.output_size_in_bytes
                     - m.alias_size_in_bytes + m.temp_size_in_bytes) / gib,
        "all_gather": text.count("all-gather-start") + text.count(" all-gather("),
        "reduce_scatter": text.count("reduce-scatter"),
        "all_reduce": text.count("all-reduce-start") + text.count(" all-reduce("),
        "compile_s": t_compile, "backend": jax.default_backend(),
    }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="DiT-XL/2")
    p.add_argument("--batch", type=int, default=256, help="global batch")
    p.add_argument("--devices", type=int, default=8)
    p.add_argument("--fsdp", type=int, nargs="+", default=[1, 8])
    p.add_argument("--dtype", default=None, help="compute dtype, e.g. bfloat16 (default float32)")
    p.add_argument("--remat", action="store_true")
    p.add_argument("--grad-accum-steps", type=int, default=1)
    p.add_argument("--min-shard-size", type=int, default=2 ** 16)
    p.add_argument("--json", default=None, help="write the rows to this file")
    args = p.parse_args(argv)
    _setup_devices(args.devices)
    rows = []
    for f in args.fsdp:
        row = measure(args.preset, args.batch, f, devices=args.devices, dtype=args.dtype,
                      remat=args.remat, grad_accum_steps=args.grad_accum_steps,
                      min_shard_size=args.min_shard_size)
        rows.append(row)
        print("FSDP_MEMORY " + " ".join(
            f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}".replace(" ", "")
            for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
