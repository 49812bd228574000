"""One accelerator benchmark (run by ``bench/bench_accelerator.sh``): train-step, DiT and sampling
throughput, compile times, and the official PyTorch network on the same device.

Sections (each prints ``BENCH section=<name> key=value ...`` lines, all go into ``--json``):

* ``ddpmpp_train``: the CIFAR-10 DDPM++ (``configs/vp/cifar10_ddpmpp_continuous``) train step
  (``config.build``: DSM loss, clip + Adam, EMA) at batch 128, float32 and bf16 compute
  (``model.dtype``), synthetic 32 x 32 x 3 batches: compile seconds, median step seconds, img/s.
* ``dit_xl``: DiT-XL/2 on 256 px latents (32 x 32 x 4), bf16 compute, float32 state: the
  largest per-device batch whose compiled step fits the device (XLA's memory analysis at two
  batch sizes, linear in the batch, then a real run, halving on an out-of-memory), replicated
  (fsdp = 1) and, with more than one device, fsdp = devices; img/s and compile seconds.
* ``sampling``: DDPM++ Euler-Maruyama (``pc``, no corrector) ``--sample-steps`` steps at batch
  ``--sample-batch``: img/s and network evaluations/s.
* ``torch_ddpmpp``: the official score_sde_pytorch DDPM++ train step (``losses.get_step_fn``)
  on the same device, batch 128, float32, when ``torch`` imports and ``--reference_path`` (or
  ``$SCORE_SDE_PYTORCH``) is an unmodified score_sde_pytorch checkout; skipped (with the reason)
  otherwise. Its CUDA ops are stubbed as in ``bench_vs_torch.py`` (the native upfirdn path).

``--smoke`` shrinks every section (tiny networks, batch 8, 2 steps) so that the script runs on
a CPU in a minute (tests/test_bench_accelerator.py). ``--budget-s`` stops starting new sections
once that many seconds have passed (the .sh wrapper keeps the whole call under 10 minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "bench"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_models import median_seconds  # noqa: E402  (bench/ is on sys.path above)

RESULTS: list[dict] = []


def emit(section: str, **fields) -> dict:
    """Print one parseable line and keep the record."""
    row = {"section": section, **fields}
    RESULTS.append(row)
    parts = []
    for k, v in row.items():
        if isinstance(v, float):
            v = f"{v:.6g}"
        parts.append(f"{k}={str(v).replace(' ', '')}")
    print("BENCH " + " ".join(parts), flush=True)
    return row


def _ddpmpp_config(smoke: bool, batch: int, dtype: str | None, fsdp: int = 1):
    from configs.vp.cifar10_ddpmpp_continuous import get_config

    config = get_config()
    config.training.batch_size = batch
    config.eval.batch_size = batch
    config.parallel.fsdp = fsdp
    if dtype:
        config.model.dtype = dtype
    if smoke:
        config.model.nf = 16
        config.model.ch_mult = (1, 2)
        config.model.num_res_blocks = 1
        config.model.attn_resolutions = (16,)
    return config


def _time_train_step(b, batch_shape, iters: int) -> tuple[float, float]:
    """(compile + first step seconds, median step seconds) of ``b.train_step`` on synthetic
    batches in [0, 1]."""
    from score_jax import parallel

    state = b.init(jax.random.key(0))
    host = np.random.default_rng(0).uniform(size=batch_shape).astype(np.float32)
    batch = parallel.to_global(host, b.mesh)
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = b.train_step(state, batch, key)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    holder = {"s": state}

    def run():
        holder["s"], metrics = b.train_step(holder["s"], batch, key)
        return metrics["loss"]

    return compile_s, median_seconds(run, iters)


def section_ddpmpp_train(args) -> None:
    from score_jax import config as config_lib

    batch = 8 if args.smoke else 128
    for dtype in (None, "bfloat16"):
        b = config_lib.build(_ddpmpp_config(args.smoke, batch, dtype))
        compile_s, step_s = _time_train_step(b, (batch, 32, 32, 3), args.iters)
        emit("ddpmpp_train", dtype=dtype or "float32", batch=batch, compile_s=compile_s,
             step_s=step_s, img_per_s=batch / step_s,
             params=sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(
                 b.abstract_state.params)))


def _dit_parts(args, fsdp: int, per_device: int):
    from score_jax import losses, parallel
    from score_jax import sde as sde_lib
    from score_jax import train_step as ts
    from score_jax.models import dit_config, get_model

    if args.smoke:
        cfg = dict(name="dit", patch_size=2, hidden_size=32, depth=2, num_heads=2,
                   learn_sigma=False, dtype="bfloat16")
    else:
        cfg = dit_config("DiT-XL/2", learn_sigma=False, dtype="bfloat16", remat=args.dit_remat)
    model = get_model(cfg, image_size=32, num_channels=4, centered=True)
    n = jax.device_count()
    mesh = parallel.make_mesh(n, fsdp=fsdp)
    tx, schedule = ts.make_optimizer(lr=1e-4, warmup=0, grad_clip=1.0)
    init, abstract = ts.jit_init(model, tx, (32, 32, 4), mesh)
    loss_fn = losses.get_loss_fn(sde_lib.VPSDE(), model, train=True, reduce_mean=True)
    step = ts.jit_train_step(loss_fn, tx, schedule, 0.9999, mesh,
                             state_sharding=ts.state_sharding_of(abstract))
    batch_abs = jax.ShapeDtypeStruct((per_device * n, 32, 32, 4), jnp.float32,
                                     sharding=parallel.data_sharding(mesh))
    return mesh, init, abstract, step, batch_abs


def _peak_bytes(compiled) -> int:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
               + m.temp_size_in_bytes)


def _device_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("bytes_limit")


def _largest_batch(args, fsdp: int) -> tuple[int, dict]:
    """Per-device batch: peak(b) = a + c b from two compiled sizes; the largest multiple of 8
    under 90% of the device memory (CPU / smoke: ``--dit-batch``)."""
    limit = _device_bytes()
    if args.smoke or limit is None:
        return args.dit_batch, {"limit_gib": None}
    b0, b1 = 8, 16
    peaks = []
    t0 = time.perf_counter()
    for b in (b0, b1):
        _, _, abstract, step, batch_abs = _dit_parts(args, fsdp, b)
        peaks.append(_peak_bytes(step.lower(abstract, batch_abs, jax.random.key(0)).compile()))
    c = max((peaks[1] - peaks[0]) / (b1 - b0), 1.0)
    a = peaks[0] - c * b0
    best = int((0.9 * limit - a) // c) // 8 * 8
    return max(best, 8), {"limit_gib": limit / 2 ** 30, "peak_gib_b8": peaks[0] / 2 ** 30,
                          "peak_gib_b16": peaks[1] / 2 ** 30, "search_s": time.perf_counter() - t0}


def section_dit_xl(args) -> None:
    from score_jax import parallel

    n = jax.device_count()
    for fsdp in sorted({1, n}):
        per_device, info = _largest_batch(args, fsdp)
        while per_device >= 1:
            try:
                mesh, init, abstract, step, batch_abs = _dit_parts(args, fsdp, per_device)
                t0 = time.perf_counter()
                compiled = step.lower(abstract, batch_abs, jax.random.key(0)).compile()
                compile_s = time.perf_counter() - t0
                peak = _peak_bytes(compiled)
                state = init(jax.random.key(0))
                host = np.random.default_rng(0).standard_normal(batch_abs.shape).astype(np.float32)
                batch = parallel.to_global(host, mesh)
                holder = {"s": state}

                def run(holder=holder, batch=batch, step=step):
                    holder["s"], m = step(holder["s"], batch, jax.random.key(1))
                    return m["loss"]

                jax.block_until_ready(run())
                step_s = median_seconds(run, args.iters)
                global_batch = per_device * n
                emit("dit_xl", fsdp=fsdp, devices=n, per_device_batch=per_device,
                     global_batch=global_batch, compile_s=compile_s, step_s=step_s,
                     img_per_s=global_batch / step_s, peak_gib_xla=peak / 2 ** 30,
                     remat=bool(args.dit_remat), **info)
                del holder, state
                break
            except Exception as e:  # noqa: BLE001 - out of memory: halve and retry
                if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                    raise
                emit("dit_xl_oom", fsdp=fsdp, per_device_batch=per_device)
                per_device //= 2


def section_sampling(args) -> None:
    from score_jax import config as config_lib
    from score_jax import sampling

    batch = 4 if args.smoke else args.sample_batch
    steps = 3 if args.smoke else args.sample_steps
    b = config_lib.build(_ddpmpp_config(args.smoke, 8 if args.smoke else 128, None))
    params = b.init(jax.random.key(0)).ema_params
    score_fn = b.make_score_fn(params)

    def run():
        x, _ = sampling.sample(jax.random.key(2), b.sde, score_fn, (batch, 32, 32, 3),
                               method="pc", predictor="euler_maruyama", corrector="none",
                               num_steps=steps)
        return x

    t0 = time.perf_counter()
    jax.block_until_ready(run())
    compile_s = time.perf_counter() - t0
    s = median_seconds(run, max(1, args.iters // 2))
    emit("sampling", sampler="euler_maruyama", steps=steps, batch=batch, compile_s=compile_s,
         seconds=s, img_per_s=batch / s, nfe_per_s=batch * steps / s)


def section_torch(args) -> None:
    try:
        import torch
    except ImportError:
        emit("torch_ddpmpp", skipped="torch is not installed")
        return
    ref = args.reference_path or os.environ.get("SCORE_SDE_PYTORCH")
    if not ref or not os.path.isdir(ref):
        emit("torch_ddpmpp", skipped="no score_sde_pytorch checkout (--reference_path or "
                                     "$SCORE_SDE_PYTORCH)")
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.smoke is False and device == "cpu":
        emit("torch_ddpmpp", skipped="no CUDA device for torch")
        return
    from bench_vs_torch import build_reference

    config, model, _, step_fn, make_state = build_reference("ddpmpp", ref, seed=0)
    config.device = torch.device(device)
    model.to(device)
    state = make_state()
    batch = 8 if args.smoke else 128
    x = torch.rand(batch, 3, 32, 32, device=device) * 2 - 1

    def run():
        loss = step_fn(state, x)
        if device == "cuda":
            torch.cuda.synchronize()
        return loss

    t0 = time.perf_counter()
    run()
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.iters):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    s = float(np.median(times))
    emit("torch_ddpmpp", device=device, batch=batch, first_step_s=first, step_s=s,
         img_per_s=batch / s, torch=torch.__version__)


SECTIONS = {"ddpmpp_train": section_ddpmpp_train, "dit_xl": section_dit_xl,
            "sampling": section_sampling, "torch_ddpmpp": section_torch}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="tiny sizes: runs on a CPU")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    p.add_argument("--iters", type=int, default=10, help="timed steps per measurement")
    p.add_argument("--dit-batch", type=int, default=2, help="per-device DiT batch (CPU/smoke)")
    p.add_argument("--dit-remat", action="store_true", help="DiT blocks rematerialised")
    p.add_argument("--sample-batch", type=int, default=256)
    p.add_argument("--sample-steps", type=int, default=100)
    p.add_argument("--reference_path", default=None, help="score_sde_pytorch checkout")
    p.add_argument("--budget-s", type=float, default=540.0,
                   help="start no section after this many seconds")
    p.add_argument("--json", default=None, help="write every record here")
    args = p.parse_args(argv)
    if args.smoke:
        args.iters = min(args.iters, 2)
    t_start = time.perf_counter()
    emit("env", backend=jax.default_backend(), devices=jax.device_count(),
         device_kind=jax.devices()[0].device_kind, jax=jax.__version__,
         python=platform.python_version(), smoke=args.smoke)
    status = 0
    for name in args.sections:
        elapsed = time.perf_counter() - t_start
        if elapsed > args.budget_s:
            emit(name, skipped=f"time budget: {elapsed:.0f} s > {args.budget_s:.0f} s")
            continue
        try:
            SECTIONS[name](args)
        except Exception as e:  # noqa: BLE001 - report and go on to the next section
            traceback.print_exc()
            emit(name, error=f"{type(e).__name__}: {str(e)[:300]}")
            status = 1
    emit("total", seconds=time.perf_counter() - t_start)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(RESULTS, fh, indent=2)
    return status


if __name__ == "__main__":
    sys.exit(main())
