"""Few-step digits: consistency distillation / training and progressive distillation vs the teacher.

    python bench/bench_distill.py --workdirs=workdirs            # after the runs below
    python bench/bench_distill.py --workdirs=workdirs --num_samples=256 --nfe=1,2   # quicker
    python bench/bench_distill.py --workdirs=workdirs --seeds=0,1,2,3 --only=teacher,cd
        # every row at four sampling seeds and their mean (the 1000-sample metric moves by
        # ~0.3-0.8x of the floor between seeds of one model)

Expects the workdirs of (bench/RESULTS.md, "Few-step distillation on the digits"):
    python train.py --workdir=workdirs/digits                                 # teacher (main job)
    python train.py --config=configs/digits_distill.py:cd --workdir=workdirs/digits_cd
    python train.py --config=configs/digits_distill.py:ct --workdir=workdirs/digits_ct
    python train.py --config=configs/digits_distill.py:pd --workdir=workdirs/digits_pd4 \\
        --config.distill.pd_num_steps=4 --config.sampling.num_steps=4
    (then pd2 from pd4 and pd1 from pd2: --config.distill.teacher_workdir=workdirs/digits_pd4 ...)
each optionally run under ``/usr/bin/time -v ... > workdirs/<name>.log 2>&1``: the CPU time
(user + system) is then read from that log.

Rows: the teacher with EDM's Heun (35 NFE) and with UniPC at each NFE, the CD and CT students with
the consistency sampler at each NFE, the PD student of each round (its own NFE). Metric: the digits
FD of ``num_samples`` samples (``evaluation.evaluators.digits_report``) over the fresh floor of
the same N (what new digits of the data distribution score): 1 is ideal. With ``--seeds`` each
row gives the ratio at every sampling seed and their mean (FD and IS: the means).
"""
from __future__ import annotations

import argparse
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from score_jax import sample_lib  # noqa: E402
from score_jax.evaluation import digits, evaluators  # noqa: E402


def cpu_seconds(log_path: str) -> float | None:
    """User + system seconds from a ``/usr/bin/time -v`` log; None if absent."""
    if not os.path.exists(log_path):
        return None
    text = open(log_path, errors="replace").read()
    u = re.search(r"User time \(seconds\): ([\d.]+)", text)
    s = re.search(r"System time \(seconds\): ([\d.]+)", text)
    return float(u.group(1)) + float(s.group(1)) if u and s else None


def rows(workdirs: str, nfes: list[int]):
    """(label, config, workdir, log name) for every row of the table."""
    from configs import default_digits, digits_distill
    from score_jax import config as config_lib

    teacher = os.path.join(workdirs, "digits")
    yield "teacher, Heun", default_digits.get_config(None), teacher, "teacher"
    for n in nfes:
        c = default_digits.get_config(None)
        # UniPC with the final jump: num_steps evaluations; 1 NFE has no room for it
        if n == 1:
            config_lib.set_sampler(c, "unipc", num_steps=1, noise_removal=False,
                                   reset_tuning=True)
        else:
            config_lib.set_sampler(c, "unipc", num_steps=n, reset_tuning=True)
        yield "teacher, UniPC", c, teacher, None
    for method in ("cd", "ct"):
        for n in nfes:
            c = digits_distill.get_config(method)
            c.distill.teacher_workdir = teacher
            c.sampling.num_steps = n
            yield f"{method.upper()} student", c, os.path.join(workdirs, f"digits_{method}"), method
    for n in nfes:
        c = digits_distill.get_config("pd")
        c.distill.pd_num_steps = c.sampling.num_steps = n
        yield f"PD student (round to {n})", c, os.path.join(workdirs, f"digits_pd{n}"), f"pd{n}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdirs", default="workdirs")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--nfe", default="1,2,4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", default=None,
                   help="comma-separated sampling seeds (overrides --seed): per-seed ratios + mean")
    p.add_argument("--only", default=None,
                   help="comma-separated row kinds to run: teacher, cd, ct, pd (default: all)")
    args = p.parse_args(argv)
    nfes = [int(v) for v in args.nfe.split(",")]
    ref = digits.digits_reference(8)
    seeds = [args.seed] if args.seeds is None else [int(v) for v in args.seeds.split(",")]
    many = len(seeds) > 1
    print("| model | sampler | NFE | FD | fresh floor | FD / fresh floor"
          + (f" (seeds {', '.join(map(str, seeds))}) | mean" if many else "") + " | IS | train CPU s |")
    print("|---|---|---|---|---|---|" + ("---|" if many else "") + "---|---|")
    only = None if args.only is None else tuple(args.only.lower().split(","))
    for label, config, wd, log in rows(args.workdirs, nfes):
        if only is not None and not label.lower().startswith(only):
            continue
        if not os.path.isdir(os.path.join(wd, "checkpoints")):
            print(f"| {label} | - | - | (no checkpoint in {wd}) | | |" + (" |" if many else "")
                  + " | |", flush=True)
            continue
        reports, nfe = [], None
        for seed in seeds:
            sub = f"{config.sampling.method}_{config.sampling.num_steps}" + (f"_s{seed}" if many else "")
            out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=args.num_samples,
                                                   seed=seed,
                                                   output_dir=os.path.join(wd, "bench_distill", sub))
            reports.append(evaluators.digits_report(out["images"], ref))
            nfe = out["nfe"]
        mean = {k: sum(r[k] for r in reports) / len(reports) for k in
                ("digits_fd", "digits_fd_floor_fresh", "digits_fd_ratio_fresh", "digits_is")}
        ratios = " / ".join(f"{r['digits_fd_ratio_fresh']:.2f}" for r in reports)
        cpu = cpu_seconds(os.path.join(args.workdirs, f"{log}.log")) if log else None
        print(f"| {label} | {config.sampling.method} | {nfe} | {mean['digits_fd']:.3f} | "
              f"{mean['digits_fd_floor_fresh']:.3f} | {ratios} |"
              + (f" **{mean['digits_fd_ratio_fresh']:.2f}** |" if many else "")
              + f" {mean['digits_is']:.2f} | {'' if cpu is None else f'{cpu:.0f}'} |", flush=True)


if __name__ == "__main__":
    main()
