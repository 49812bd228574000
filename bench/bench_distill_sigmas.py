"""The digits metric of one consistency student at 1 NFE, at 2 NFE over a list of intermediate noise
levels (CM, Song et al. 2023, Algorithm 1 / sec. 6: the 2-step level chosen by a search on the
metric) and at 4 NFE (the default rho grid), in one process:

    PYTHONPATH=. python bench/bench_distill_sigmas.py --workdir=workdirs/digits_cd \\
        --teacher=workdirs/digits --sigmas=2.52,1.2,0.8,0.6,0.4
    ... --raw          # the raw weights instead of the EMA; --seed=1 a second sampling seed
    ... --seeds=0,1,2,3 --sigmas=0.6   # each row at four sampling seeds and their mean

Prints a markdown table: FD of ``--num_samples`` samples (seed 0) over the fresh floor
(``evaluation.evaluators.digits_report``). "default" = the config's levels: ``sampling.sigma_mid``
(0.821 for ``:cd`` / ``:ct``) then the rho grid below it, or the (num_steps + 1)-point rho = 7
grid from sigma_max with ``--sigma_mid=none``.
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
    p.add_argument("--seeds", default=None,
                   help="comma-separated sampling seeds (overrides --seed): per-seed ratios + mean")
    p.add_argument("--sigma_mid", default=None,
                   help="sampling.sigma_mid of the default rows: a float, or 'none' for the rho "
                        "grid from sigma_max (default: the config's)")
    p.add_argument("--raw", action="store_true",
                   help="sample the raw weights theta instead of the EMA (model.ema_rate)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    p.add_argument("--nfe", default="1,2,4", help="the NFE rows (2 also runs each of --sigmas)")
    p.add_argument("--rho", type=float, default=None,
                   help="sampling.rho of the default grid (default: the config's)")
    args = p.parse_args(argv)
    from configs import digits_distill

    if not os.path.isdir(os.path.join(args.workdir, "checkpoints")):
        print(f"no checkpoint: {args.workdir!r} has no checkpoints/ (train a student first: "
              f"python train.py --config=configs/digits_distill.py:{args.config} --workdir=...)")
        return
    ref = digits.digits_reference(8)
    nfes = [int(n) for n in args.nfe.split(",")]
    sigmas = [s for s in args.sigmas.split(",") if s]
    runs = [(n, None) for n in nfes if n < 2] + [(2, None) for n in nfes if n == 2]
    runs += [(2, s) for s in sigmas if 2 in nfes] + [(n, None) for n in nfes if n > 2]
    c0 = digits_distill.get_config(args.config)
    seeds = [args.seed] if args.seeds is None else [int(v) for v in args.seeds.split(",")]
    many = len(seeds) > 1
    mid = c0.sampling.get("sigma_mid") if args.sigma_mid is None else (
        None if args.sigma_mid.lower() == "none" else float(args.sigma_mid))
    print(f"student {args.workdir} step {args.step or 'latest'}, {'raw weights' if args.raw else 'EMA'}, "
          f"{args.num_samples} samples, seeds {seeds}, rho {args.rho or c0.sampling.rho or 7}")
    print("| NFE | intermediate levels | FD | fresh floor | FD / fresh floor"
          + (" (per seed) | mean" if many else "") + " | IS |")
    print("|---|---|---|---|---|" + ("---|" if many else "") + "---|")
    for n, sig in runs:
        reports, nfe = [], None
        for seed in seeds:
            c = digits_distill.get_config(args.config)
            c.distill.teacher_workdir = args.teacher
            c.sampling.num_steps = n
            c.sampling.sigmas = sig
            c.sampling.sigma_mid = mid
            if args.rho is not None:
                c.sampling.rho = args.rho
            out = sample_lib.sample_from_checkpoint(
                c, workdir=args.workdir, num_samples=args.num_samples, seed=seed, step=args.step,
                use_ema=not args.raw,
                output_dir=os.path.join(args.workdir, "bench_sigmas",
                                        f"{n}_{sig or 'default'}_{'raw' if args.raw else 'ema'}_s{seed}"
                                        f"_rho{c.sampling.rho}_mid{mid}"))
            reports.append(evaluators.digits_report(out["images"], ref))
            nfe = out["nfe"]
        mean = {k: sum(r[k] for r in reports) / len(reports) for k in
                ("digits_fd", "digits_fd_floor_fresh", "digits_fd_ratio_fresh", "digits_is")}
        if sig:
            label = sig
        elif n >= 2 and mid is not None:
            label = f"sigma_mid {mid:g}"
        else:
            label = f"rho {c.sampling.rho or 7:g} grid"
        ratios = " / ".join(f"{r['digits_fd_ratio_fresh']:.2f}" for r in reports)
        print(f"| {nfe} | {label} | {mean['digits_fd']:.3f} | {mean['digits_fd_floor_fresh']:.3f} | "
              f"{ratios} |" + (f" **{mean['digits_fd_ratio_fresh']:.2f}** |" if many else "")
              + f" {mean['digits_is']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
