"""Where a consistency student loses accuracy: its f(y_k, sigma_k) along the teacher's own Heun
trajectory (the N = 18-point rho = 7 grid of EDM's sampler, which is also CD's grid), against the
trajectory's endpoint and against the teacher's denoiser D(y_k, sigma_k) (what the student starts
from):

    PYTHONPATH=. python bench/bench_distill_trajectory.py --workdir=workdirs/digits_cd \\
        --teacher=workdirs/digits

Prints, per level k (sigma from 80 down to 0.008): the digits FD / fresh floor of f(y_k, sigma_k)
(1000 samples; what a 1-step sample from y_k would score), the RMS distance of f(y_k, sigma_k) to the
teacher's endpoint y_17 (model units, data in [-1, 1]) and that of D(y_k, sigma_k). A student whose
error at the low levels exceeds D's has been pulled away from the boundary by the high levels:
that is what ``distill.weighting="inverse_cout2"`` corrects (bench/RESULTS.md, "the loss
weighting").
"""
import argparse
import os

import numpy as np


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True, help="the student's workdir")
    p.add_argument("--teacher", required=True, help="the teacher's workdir")
    p.add_argument("--config", default="cd", help="configs/digits_distill.py variant")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from score_jax import xla_flags

    xla_flags.apply_default_cpu_flags()
    import jax
    import jax.numpy as jnp

    from configs import digits_distill
    from score_jax import config as config_lib
    from score_jax import edm, sample_lib, train_lib
    from score_jax.distill import objective as distill_objective
    from score_jax.distill.consistency import heun_step, karras_sigma
    from score_jax.evaluation import digits, evaluators

    for wd in (args.workdir, args.teacher):
        if not os.path.isdir(os.path.join(wd, "checkpoints")):
            print(f"no checkpoint: {wd!r} has no checkpoints/")
            return
    c = digits_distill.get_config(args.config)
    c.distill.teacher_workdir = args.teacher
    teacher = train_lib.load_teacher(c)["denoiser"]
    built = config_lib.build(c)
    params, _ = sample_lib.load_params(c, workdir=args.workdir)
    sde = built.sde
    pre = distill_objective.student_precond(c.distill.method, sde,
                                            sigma_data=float(c.training.sigma_data))
    student = edm.EDMDenoiser(pre, {"params": params}, built.model)
    n, b = 18, args.num_samples
    grid = np.asarray(karras_sigma(jnp.arange(n), n, pre.sigma_min, pre.sigma_max), np.float64)[::-1]
    ref = digits.digits_reference(c.data.image_size)
    shape = (b, c.data.image_size, c.data.image_size, c.data.num_channels)
    y = pre.sigma_max * jax.random.normal(jax.random.key(args.seed), shape)
    step = jax.jit(lambda y, s, s_next: heun_step(teacher, y, jnp.full((b,), s), jnp.full((b,), s_next)))
    f = jax.jit(lambda y, s: student(y, jnp.full((b,), s)))
    d = jax.jit(lambda y, s: teacher(y, jnp.full((b,), s)))

    def ratio(x):
        img = np.clip((np.asarray(x) + 1.0) / 2.0, 0.0, 1.0)
        return evaluators.digits_report(img, ref)["digits_fd_ratio_fresh"]

    ys = [y]
    for k in range(n - 1):
        ys.append(step(ys[-1], grid[k], grid[k + 1]))
    end = ys[-1]
    print(f"student {args.workdir}, teacher {args.teacher}, {b} samples, seed {args.seed}; "
          f"teacher endpoint (sigma {grid[-1]:.3g}): FD / fresh floor {ratio(end):.3f}")
    print("| k | sigma_k | student f: FD / fresh floor | RMS f - endpoint | RMS D - endpoint |")
    print("|---|---|---|---|---|")
    for k in range(n - 1):
        x = f(ys[k], grid[k])
        rf = float(jnp.sqrt(jnp.mean((x - end) ** 2)))
        rd = float(jnp.sqrt(jnp.mean((d(ys[k], grid[k]) - end) ** 2)))
        print(f"| {k} | {grid[k]:.3f} | {ratio(x):.3f} | {rf:.4f} | {rd:.4f} |", flush=True)


if __name__ == "__main__":
    main()
