"""FID throughput: images/s through the FID Inception (preprocess + network), and the metric math.

    python bench/bench_fid.py                       # all devices of the default backend
    python bench/bench_fid.py --batch-size 512 --num-batches 20   # on a GPU

Uses random weights in the real pt_inception layout (throughput does not depend on the values;
pass --inception PATH to time the real file). Inputs are uint8 CIFAR-sized images (32x32, resized
to 299 on device, as in a CIFAR-10 evaluation). Reports the steady-state rate after one warm-up
call (compilation), then the host-side float64 cost of the statistics: StreamingStats updates,
the 2048-d Frechet distance and KID on 10k x 10k features.
"""

from __future__ import annotations

import argparse
import math
import time

import jax
import numpy as np

from score_jax.evaluation import (
    InceptionFeatures,
    StreamingStats,
    convert_inception_pytorch,
    frechet_distance,
    get_inception_fn,
    kid_from_features,
    pt_inception_state_dict_shapes,
)


def random_variables(seed: int = 0):
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in pt_inception_state_dict_shapes().items():
        if key.endswith("conv.weight"):
            scale = math.sqrt(2.0 / (shape[1] * shape[2] * shape[3]))
        elif key.endswith(("bn.weight", "running_var")):
            sd[key] = np.ones(shape, np.float32)
            continue
        else:
            scale = 0.01
        sd[key] = (scale * rng.standard_normal(shape)).astype(np.float32)
    return convert_inception_pytorch(sd)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch-size", type=int, default=32, help="global batch per call")
    parser.add_argument("--num-batches", type=int, default=3)
    parser.add_argument("--input-size", type=int, default=32)
    parser.add_argument("--inception", default=None, help="real weights (.pth / .npz)")
    parser.add_argument("--skip-math", action="store_true")
    parser.add_argument("--smoke", action="store_true",
                        help="batch 2 of 8 px, one call, 500 feature rows: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.batch_size, args.num_batches, args.input_size = 2, 1, 8

    devices = jax.devices()
    print(f"backend={jax.default_backend()} devices={len(devices)} ({devices[0].device_kind})")
    kwargs = dict(batch_size=args.batch_size)
    fn = (get_inception_fn(args.inception, **kwargs) if args.inception
          else InceptionFeatures(random_variables(), **kwargs))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (args.batch_size, args.input_size, args.input_size, 3),
                          dtype=np.uint8)
    t0 = time.perf_counter()
    fn(images)
    print(f"first call (compile + run): {time.perf_counter() - t0:.1f} s")
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(args.num_batches):
        pool, _ = fn(images)  # returns host numpy arrays: includes the device -> host copy
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    n = args.batch_size * args.num_batches
    print(f"inception: {n} images in {dt:.2f} s = {n / dt:.1f} images/s "
          f"(batch {args.batch_size}, {args.input_size}px -> 299px); "
          f"process CPU time {cpu / n * 1e3:.0f} ms/image")
    if args.skip_math:
        return

    feats = rng.standard_normal((500 if args.smoke else 10_000, 2048)).astype(np.float32)
    t0 = time.perf_counter()
    stats = StreamingStats(2048)
    for start in range(0, len(feats), 1000):
        stats.update(feats[start:start + 1000])
    dt = time.perf_counter() - t0
    print(f"StreamingStats: {len(feats) / dt:.0f} rows/s (float64, 2048-d, batches of 1000)")
    mu, sigma = stats.stats()
    t0 = time.perf_counter()
    frechet_distance(mu, sigma, mu + 0.1, sigma)
    print(f"frechet_distance 2048-d (float64, 2 eigh): {time.perf_counter() - t0:.2f} s "
          "(includes compilation)")
    t0, c0 = time.perf_counter(), time.process_time()
    frechet_distance(mu, sigma, mu + 0.1, sigma)
    print(f"frechet_distance 2048-d, compiled: {time.perf_counter() - t0:.2f} s "
          f"(process CPU {time.process_time() - c0:.1f} s)")
    t0 = time.perf_counter()
    kid_from_features(feats, feats[::-1] + 0.01)
    print(f"KID {len(feats)} x {len(feats)} (float64, TF-GAN blocks of <= 1024): {time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
