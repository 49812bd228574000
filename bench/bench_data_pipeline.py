"""Images/s of the grain training input next to the train step's demand (issue 22.4).

    python bench/bench_data_pipeline.py [--sizes 32 64 256] [--workers 0 1 2] [--seconds 3]
                                        [--rounds 5]
                                        [--demand vp/cifar10_ddpmpp_continuous:32
                                                  ve/celeba_ncsnpp:64] [--demand_batch 8]
                                        [--real_vs_synthetic default_digits vp/cifar10_ddpmpp_continuous]
    python bench/bench_data_pipeline.py --smoke       # tiny: seconds

1. Pipeline: synthetic uint8 images of each size written once as ArrayRecord (what
   ``python -m score_jax.records convert`` produces), read by the training input of
   ``config.data_loader`` (``data.get_dataset`` -> ``ArrayRecordSource`` -> per-epoch
   permutation, random flip -> ``GrainPipeline`` with 0 / 1 / 2 worker processes), batches of
   the size's default config (128 / 128 / 64). Images/s: the median of ``--rounds`` windows of
   ``--seconds``, the worker counts interleaved; the first batch (worker start-up) apart.
2. Demand: images/s of the jitted train step of the default configs (synthetic batches on the
   device, ``--demand_batch`` examples) on this machine.
3. Starving: seconds per train step fed by the real input (grain in-process + prefetch to
   device, as ``train_lib`` runs it) vs the same step on one device-resident synthetic batch.
Prints one JSON line per measurement.
"""
import argparse
import importlib
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BATCH = {32: 128, 64: 128, 256: 64}  # training.batch_size of default_cifar10 / celeba / lsun


def write_records(folder: str, size: int, n: int) -> str:
    import numpy as np

    from score_jax import records

    path = os.path.join(folder, f"synthetic_{size}.array_record")
    if not os.path.exists(path):
        rng = np.random.default_rng(size)
        records.write_array_record(path, (rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                                          for _ in range(n)), labels=(i % 10 for i in range(n)))
    return path


def pipeline(path: str, size: int, batch: int, workers: int):
    from score_jax import data as data_lib
    from score_jax import data_loader

    p = data_lib.get_dataset("FFHQ", split="train", batch_size=batch, image_size=size,
                             training=True, random_flip=True, tfrecords_path=path,
                             process_index=0, process_count=1)
    return data_loader.GrainPipeline(p, num_workers=workers)


def bench_pipeline(path: str, size: int, batch: int, workers: list[int], seconds: float,
                   rounds: int) -> list[dict]:
    """Images/s of each worker count, measured in interleaved windows of ``seconds`` (0, 1, 2,
    0, 1, 2, ...; every iterator open throughout: an idle one's workers block on their full
    buffers), so a load change on this shared machine hits every count alike. Median of
    ``rounds`` windows; the first batch (worker start-up) is timed apart."""
    import statistics

    its, startup = {}, {}
    for w in workers:
        t0 = time.perf_counter()
        its[w] = pipeline(path, size, batch, w).iterate(0)
        next(its[w])
        startup[w] = time.perf_counter() - t0
    rates: dict[int, list[float]] = {w: [] for w in workers}
    for _ in range(rounds):
        for w in workers:
            n, t1 = 0, time.perf_counter()
            while time.perf_counter() - t1 < seconds or n < 2:
                next(its[w])
                n += 1
            rates[w].append(n * batch / (time.perf_counter() - t1))
    for it in its.values():
        it.close()
    return [{"what": "pipeline", "image_size": size, "batch": batch, "workers": w,
             "images_per_s": round(statistics.median(rates[w]), 1),
             "windows": [round(r, 1) for r in rates[w]], "first_batch_s": round(startup[w], 2)}
            for w in workers]


def _config(name: str, batch: int):
    module, _, variant = name.partition(":")
    config = importlib.import_module("configs." + module.replace("/", ".")).get_config(
        variant or None)
    config.training.batch_size = batch
    return config


def _step(config):
    import jax

    from score_jax import config as config_lib
    from score_jax import parallel, train_step

    mesh = parallel.make_mesh()
    b = config_lib.build(config, mesh=mesh)
    state = b.init(jax.random.key(0))
    loss_fn = config_lib.loss_fn_from_config(config, b.sde, b.model, train=True)
    step = train_step.jit_train_step(loss_fn, b.tx, b.schedule, config.model.ema_rate, mesh)
    return mesh, b, state, step


def _time_steps(step, state, batches, n: int):
    """Seconds per step after a first (compiling) one; returns (seconds, state): the step
    donates its state."""
    import jax

    key = jax.random.key(1)
    state, m = step(state, next(batches), key)  # compile
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for _ in range(n):
        state, m = step(state, next(batches), key)
    jax.block_until_ready(m["loss"])
    return (time.perf_counter() - t0) / n, state


def bench_demand(name: str, batch: int, steps: int) -> dict:
    import itertools

    import jax
    import numpy as np

    from score_jax import parallel

    config = _config(name, batch)
    mesh, b, state, step = _step(config)
    x = parallel.to_global({"image": np.random.default_rng(0).random(
        (batch,) + b.image_shape, np.float32), "label": np.zeros(batch, np.int32)}, mesh)
    sec, _ = _time_steps(step, state, itertools.repeat(x), steps)
    return {"what": "train_step_demand", "config": name, "batch": batch,
            "image_size": int(config.data.image_size), "sec_per_step": round(sec, 4),
            "images_per_s": round(batch / sec, 1), "device": jax.devices()[0].device_kind,
            "num_devices": jax.device_count()}


def bench_real_vs_synthetic(name: str, batch: int, steps: int, folder: str) -> dict:
    """The step fed like train_lib (grain in-process, prefetch 2 to the device) vs a fixed batch."""
    import itertools

    import numpy as np

    from score_jax import config as config_lib
    from score_jax import parallel

    config = _config(name, batch)
    size = int(config.data.image_size)
    if config.data.dataset.upper() != "DIGITS":  # no CIFAR-10 here: its shape from ArrayRecord
        config.data.dataset, config.data.path = "ARRAYRECORD", write_records(folder, size, 1024)
    mesh, b, state, step = _step(config)
    ds = config_lib.dataset_from_config(config, "train", training=True, batch_size=batch)
    real = (g for _, g in parallel.prefetch_to_device(ds.iterate(0), mesh, size=2))
    x = parallel.to_global({"image": np.random.default_rng(0).random(
        (batch,) + b.image_shape, np.float32), "label": np.zeros(batch, np.int32)}, mesh)
    out = {}
    for _ in range(2):  # interleaved: synthetic, real, synthetic, real; the best of each
        for label, batches in (("synthetic", itertools.repeat(x)), ("real", real)):
            sec, state = _time_steps(step, state, batches, steps)
            out[label] = min(out.get(label, float("inf")), sec)
    real.close()
    return {"what": "real_vs_synthetic", "config": name, "batch": batch, "image_size": size,
            "sec_per_step_synthetic": round(out["synthetic"], 4),
            "sec_per_step_real": round(out["real"], 4),
            "real_over_synthetic": round(out["real"] / out["synthetic"], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[32, 64, 256])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds per window")
    ap.add_argument("--rounds", type=int, default=5, help="windows per worker count")
    ap.add_argument("--records", type=int, default=None, help="records per size (default: "
                    "4096 / 2048 / 512 for 32 / 64 / 256 px)")
    ap.add_argument("--demand", nargs="*", default=["vp/cifar10_ddpmpp_continuous",
                                                    "ve/celeba_ncsnpp"])
    ap.add_argument("--demand_batch", type=int, default=8)
    ap.add_argument("--demand_steps", type=int, default=3)
    ap.add_argument("--real_vs_synthetic", nargs="*",
                    default=["default_digits", "vp/cifar10_ddpmpp_continuous"])
    ap.add_argument("--rvs_batch", type=int, default=None, help="batch of the real-vs-synthetic "
                    "runs (default: 64 for digits, --demand_batch otherwise)")
    ap.add_argument("--rvs_steps", type=int, default=10)
    ap.add_argument("--folder", default=None, help="where the ArrayRecord files go (default: a "
                    "temporary folder)")
    ap.add_argument("--smoke", action="store_true", help="16 px, 0 / 1 worker, tiny everything")
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.workers, args.seconds, args.records = [16], [0, 1], 0.2, 64
        args.rounds = 2
        args.demand, args.demand_batch, args.demand_steps = ["default_digits:smoke"], 8, 1
        args.real_vs_synthetic, args.rvs_batch, args.rvs_steps = ["default_digits:smoke"], 8, 1
        BATCH[16] = 8
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder or tmp
        for size in args.sizes:
            n = args.records or {32: 4096, 64: 2048, 256: 512}.get(size, 1024)
            path = write_records(folder, size, n)
            for row in bench_pipeline(path, size, BATCH.get(size, 64), args.workers,
                                      args.seconds, args.rounds):
                print(json.dumps(row), flush=True)
        for name in args.demand:
            print(json.dumps(bench_demand(name, args.demand_batch, args.demand_steps)), flush=True)
        for name in args.real_vs_synthetic:
            batch = args.rvs_batch or (64 if name.startswith("default_digits") else
                                       args.demand_batch)
            print(json.dumps(bench_real_vs_synthetic(name, batch, args.rvs_steps, folder)),
                  flush=True)


if __name__ == "__main__":
    main()
