"""Conditional quality of the shipped class-conditional digits config (issue #13 item 2).

    python bench/bench_conditional.py --workdir=workdirs/digits_cond            # DDPM++
    python bench/bench_conditional.py --workdir=workdirs/digits_cond_dit --variant=dit
    python bench/bench_conditional.py --workdir=W --no-train    # a trained workdir as it is

Trains ``configs/digits_cond.py[:variant]`` in ``--workdir`` (resuming; nothing to do when the
run is complete; ``--n_iters`` overrides the step count), then for each guidance scale w in
``--ws`` (default 0, 1, 2, 4) samples ``--num`` digits with labels uniform over the ten classes
(``num // 10`` of each) with the config's sampler, and reports the conditional accuracy
(fraction the shipped digits classifier assigns to the requested label) and confidence
(mean p(label | x)) of ``evaluation.digits.digits_conditional_accuracy``. Writes
``<workdir>/bench_conditional.json`` and, with ``--png``, a grid with one row per class at
w = ``--png_w`` (10 per row).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--variant", default=None, help="config variant: dit, smoke, dit_smoke")
    p.add_argument("--n_iters", type=int, default=None)
    p.add_argument("--no-train", dest="train", action="store_false")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--ws", default="0,1,2,4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png", default=None, help="write a per-class grid PNG here")
    p.add_argument("--png_w", type=float, default=2.0)
    a = p.parse_args()

    import jax

    from configs.digits_cond import get_config
    from score_jax import sample_lib, train_lib
    from score_jax.evaluation import digits

    config = get_config(a.variant)
    if a.n_iters is not None:
        config.training.n_iters = a.n_iters
        config.training.snapshot_freq = a.n_iters
    out = {"variant": a.variant, "config": "configs/digits_cond.py" + (
        f":{a.variant}" if a.variant else ""), "method": config.sampling.method,
        "num_steps": config.sampling.num_steps, "num": a.num}
    if a.train:
        t0, c0 = time.perf_counter(), time.process_time()
        train_lib.train_and_evaluate(config, a.workdir)
        out["train_wall_s"] = time.perf_counter() - t0
        out["train_cpu_s"] = time.process_time() - c0
    params, info = sample_lib.load_params(config, workdir=a.workdir)
    built = info["built"]
    out["step"] = info["step"]
    labels = np.arange(a.num, dtype=np.int32) % 10
    rows = []
    for i, w in enumerate(float(v) for v in a.ws.split(",")):
        t0 = time.perf_counter()
        images, nfe = sample_lib.sample_built(jax.random.key(a.seed + i), built, params, a.num,
                                              labels=labels, guidance_scale=w)
        secs = time.perf_counter() - t0
        m = digits.digits_conditional_accuracy(np.nan_to_num(images), labels)
        rows.append({"w": w, "accuracy": m["accuracy"], "confidence": m["confidence"],
                     "nfe": nfe, "seconds": secs,
                     "nonfinite": sample_lib.count_nonfinite(images)})
        print(f"w={w:g}: accuracy {m['accuracy']:.4f} confidence {m['confidence']:.4f} "
              f"(nfe {nfe}, {secs:.1f} s)", flush=True)
    out["results"] = rows
    if a.png:
        grid = sample_lib.grid_labels(10, 10)
        images, _ = sample_lib.sample_built(jax.random.key(a.seed + 100), built, params,
                                            len(grid), labels=grid, guidance_scale=a.png_w)
        d = os.path.dirname(os.path.abspath(a.png))
        path = sample_lib.save_samples(images, os.path.join(a.workdir, "bench_grid"), scale=4,
                                       nrow=10)
        os.makedirs(d, exist_ok=True)
        os.replace(path, a.png)
        out["png"] = a.png
    with open(os.path.join(a.workdir, "bench_conditional.json"), "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
