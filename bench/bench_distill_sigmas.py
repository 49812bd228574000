"""The digits metric of one consistency student at 1 NFE, at 2 NFE over a list of intermediate noise
levels (CM, Song et al. 2023, Algorithm 1 / sec. 6: the 2-step level chosen by a search on the
metric) and at 4 NFE (the default rho grid), in one process:

    PYTHONPATH=. python bench/bench_distill_sigmas.py --workdir=workdirs/digits_cd \\
        --teacher=workdirs/digits --sigmas=2.52,1.2,0.8,0.6,0.4

Prints a markdown table: FD of ``--num_samples`` samples (seed 0) over the fresh floor
(``evaluation.evaluators.digits_report``). "default" = the (num_steps + 1)-point rho = 7 grid.
"""
import argparse
import os

from score_jax import sample_lib
from score_jax.evaluation import digits, evaluators


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--teacher", required=True)
    p.add_argument("--config", default="cd", help="configs/digits_distill.py variant")
    p.add_argument("--sigmas", default="2.52,1.2,0.8,0.6,0.4")
    p.add_argument("--num_samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    from configs import digits_distill

    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        print(f"no checkpoint: {args.workdir!r} has no checkpoints/ (train a student first: "
              f"python train.py --config=configs/digits_distill.py:{args.config} --workdir=...)")
        return
    ref = digits.digits_reference(8)
    runs = [(1, None), (2, None)] + [(2, s) for s in args.sigmas.split(",")] + [(4, None)]
    print("| NFE | intermediate sigma | FD | fresh floor | FD / fresh floor | IS |")
    print("|---|---|---|---|---|---|")
    for n, sig in runs:
        c = digits_distill.get_config(args.config)
        c.distill.teacher_workdir = args.teacher
        c.sampling.num_steps = n
        c.sampling.sigmas = sig
        out = sample_lib.sample_from_checkpoint(
            c, workdir=args.workdir, num_samples=args.num_samples, seed=args.seed,
            output_dir=os.path.join(args.workdir, "bench_sigmas", f"{n}_{sig or 'default'}"))
        r = evaluators.digits_report(out["images"], ref)
        print(f"| {out['nfe']} | {sig or 'default'} | {r['digits_fd']:.3f} | "
              f"{r['digits_fd_floor_fresh']:.3f} | {r['digits_fd_ratio_fresh']:.2f} | "
              f"{r['digits_is']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
