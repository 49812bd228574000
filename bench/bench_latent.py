"""Two-stage latent diffusion on the embedded digits at 16 x 16 vs a pixel-space model.

    PYTHONPATH=. python bench/bench_latent.py --out=/tmp/bench_latent [--ae_seconds=150 ...]

Stage 1 (``configs/latent/digits_autoencoder.py``) and stage 2 (``configs/latent/digits_ldm.py``,
the default digits EDM DDPM++ on the 8 x 8 x 2 latents) each train for a budget of process CPU
seconds (``--ae_seconds``, ``--ldm_seconds``; the loop saves and returns through ``should_stop``;
CPU time, so that other jobs on the machine do not shrink it); the pixel model
(``configs/default_digits.py`` at image_size 16, same DDPM++, same objective and sampler) trains
for the sum of both budgets. Reported: wall and
process CPU time of each stage and of sampling, steps done, the autoencoder's reconstruction
error on the whole test split (per-pixel MSE and mean |x - D(E(x))| in [0, 1]), and
``digits_metrics`` (fd, both floors and ratios, is, copy_fraction) of ``--num_samples`` samples of each model,
written as JSON to ``<out>/results.json``.
"""
import argparse
import json
import os
import time

import numpy as np


def _timed_training(config, workdir, seconds):
    """Train until ``seconds`` of process CPU time (user + system, all threads) are spent: a budget
    that a loaded machine does not shrink (a wall budget bought 1 step on a machine at load 15)."""
    from score_jax import train_lib

    t0, c0 = time.perf_counter(), time.process_time()
    state = train_lib.train_and_evaluate(config, workdir,
                                         should_stop=lambda: time.process_time() - c0 > seconds)
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
            "steps": int(state.step)}


def _timed_sampling(config, workdir, n, out_dir):
    from score_jax import sample_lib
    from score_jax.evaluation.digits import digits_metrics

    t0, c0 = time.perf_counter(), time.process_time()
    out = sample_lib.sample_from_checkpoint(config, workdir=workdir, num_samples=n,
                                            output_dir=out_dir)
    res = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
           "nfe": out["nfe"], "num_nonfinite": out["num_nonfinite"]}
    m = digits_metrics(out["images"])
    res.update({k: m[k] for k in ("fd", "fd_floor", "fd_ratio", "fd_floor_fresh", "fd_ratio_fresh",
                                  "is", "is_real", "copy_fraction")})
    return res


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="/tmp/bench_latent")
    p.add_argument("--ae_seconds", type=float, default=150)
    p.add_argument("--ldm_seconds", type=float, default=150)
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--num_steps", type=int, default=None,
                   help="sampler steps of both models (default: the configs' sampler, EDM Heun 10)")
    args = p.parse_args()
    from configs import default_digits
    from configs.latent import digits_autoencoder, digits_ldm
    from score_jax import config as config_lib
    from score_jax import latent as latent_lib

    os.makedirs(args.out, exist_ok=True)
    res = {"args": vars(args)}

    def dump():
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(res, f, indent=2)

    big = 10 ** 7
    ae_dir = os.path.join(args.out, "ae")
    c1 = digits_autoencoder.get_config()
    c1.training.n_iters = c1.training.snapshot_freq = big
    res["stage1"] = _timed_training(c1, ae_dir, args.ae_seconds)
    model, variables, _ = config_lib.load_autoencoder_from_config(
        _with_ae(digits_ldm.get_config(), ae_dir))
    ds = config_lib.dataset_from_config(c1, "test", batch_size=64, training=False)
    errs, absd = [], []
    for batch in ds.epoch():
        x = batch["image"]
        rec = latent_lib.reconstruct(model, variables["params"], x)
        errs.append(np.mean((rec - x) ** 2, axis=(1, 2, 3)))
        absd.append(np.mean(np.abs(rec - x), axis=(1, 2, 3)))
    res["stage1"].update({"test_mse_per_pixel": float(np.mean(np.concatenate(errs))),
                          "test_l1_per_pixel": float(np.mean(np.concatenate(absd))),
                          "test_images": int(len(np.concatenate(errs)))})
    dump()

    for name, cfg, wd, secs in (
            ("stage2", _with_ae(digits_ldm.get_config(), ae_dir), "ldm", args.ldm_seconds),
            ("pixel", _pixel(default_digits.get_config()), "pixel",
             args.ae_seconds + args.ldm_seconds)):
        cfg.training.n_iters = cfg.training.snapshot_freq = big
        if args.num_steps is not None:
            cfg.sampling.num_steps = args.num_steps
        cfg.sampling.batch_size = 500
        w = os.path.join(args.out, wd)
        res[name] = _timed_training(cfg, w, secs)
        dump()
        res[name + "_sampling"] = _timed_sampling(cfg, w, args.num_samples,
                                                  os.path.join(w, "bench_samples"))
        if name == "stage2":
            res["scale_factor"] = json.load(open(os.path.join(w, latent_lib.LATENT_FILE)))
        dump()
    print(json.dumps(res, indent=2))


def _with_ae(config, ae_dir):
    config.latent.autoencoder_checkpoint = ae_dir
    return config


def _pixel(config):
    config.data.image_size = 16
    return config


if __name__ == "__main__":
    main()
