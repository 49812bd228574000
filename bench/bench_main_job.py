"""Time to a good digits grid: train a digits config, then score samplers on it with the digits
quality metric (``score_jax.evaluation.digits``).

    PYTHONPATH=. python bench/bench_main_job.py --config default_digits \\
        --set training.n_iters=1500 --set model.nf=32 \\
        --sampler method=dpm_solver,num_steps=20 --sampler method=unipc,num_steps=10 \\
        [--num_samples 1000] [--workdir /tmp/bench_main_job/run] [--no_train]

Training runs ``train_lib.train_and_evaluate`` in this process (snapshot sampling off, so that the
training time is the loop's alone) into a fresh workdir (deleted first unless ``--no_train``).
Each ``--sampler`` (comma-separated ``key=value`` pairs set on ``config.sampling``; none: the
config's own sampler) then draws ``--num_samples`` digits from the EMA parameters and scores them
with ``digits_metrics`` (FD / floor of the same N, IS). Wall and process CPU time (user + system of
every thread: ``time.process_time``) are reported for training and for each sampler (compilation
included, as sample.py pays it). One JSON line per measurement.
"""
import argparse
import ast
import importlib
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_overrides(config, pairs):
    """Set ``a.b.c=value`` pairs on an ml_collections config (values parsed as Python literals)."""
    for pair in pairs:
        key, _, text = pair.partition("=")
        node = config
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = _value(text)
    return config


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    w, c = _clock()
    return round(w - t[0], 1), round(c - t[1], 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="default_digits",
                    help="module under configs/, optionally with a variant: default_digits:smoke")
    ap.add_argument("--set", action="append", default=[], help="config override key=value")
    ap.add_argument("--sampler", action="append", default=[],
                    help="sampling overrides k=v,k=v (repeatable; none: the config's sampler)")
    ap.add_argument("--num_samples", type=int, default=1000)
    ap.add_argument("--workdir", default="/tmp/bench_main_job/run")
    ap.add_argument("--no_train", action="store_true", help="score the workdir's checkpoint")
    ap.add_argument("--tag", default="")
    ap.add_argument("--eval_steps", default="",
                    help="comma-separated checkpoint steps to score (default: the latest); keep "
                         "them with --set training.snapshot_freq=N (a learning curve)")
    args = ap.parse_args()

    import jax

    from score_jax import sample_lib, train_lib
    from score_jax.evaluation import digits

    module, _, variant = args.config.partition(":")
    config = importlib.import_module("configs." + module.replace("/", ".")).get_config(
        variant or None)
    apply_overrides(config, args.set)
    config.training.snapshot_sampling = False
    common = {"tag": args.tag, "config": args.config, "set": args.set}
    if not args.no_train:
        shutil.rmtree(args.workdir, ignore_errors=True)
        t = _clock()
        state = train_lib.train_and_evaluate(config, args.workdir)
        wall, cpu = _since(t)
        print(json.dumps(dict(common, what="train", steps=int(state.step), wall_s=wall,
                              cpu_s=cpu)), flush=True)
    reference = digits.digits_reference(int(config.data.image_size))
    steps = [int(v) for v in args.eval_steps.split(",") if v] or [None]
    for step, spec in [(st, sp) for st in steps for sp in (args.sampler or [""])]:
        cfg = config.copy_and_resolve_references()
        apply_overrides(cfg, [f"sampling.{p}" for p in spec.split(",") if p])
        params, info = sample_lib.load_params(cfg, workdir=args.workdir, step=step)
        t = _clock()
        images, nfe = sample_lib.sample_built(jax.random.key(0), info["built"], params,
                                              args.num_samples)
        wall, cpu = _since(t)
        m = digits.digits_metrics(images, reference=reference)
        print(json.dumps(dict(common, what="sample", step=int(info["step"]),
                              sampler=spec or "config", nfe=nfe,
                              num_samples=args.num_samples, wall_s=wall, cpu_s=cpu,
                              fd=round(m["fd"], 4), fd_floor=round(m["fd_floor"], 4),
                              fd_ratio=round(m["fd_ratio"], 2),
                              fd_ratio_fresh=round(m["fd_ratio_fresh"], 3),
                              copies=round(m["copy_fraction"], 3), is_=round(m["is"], 3),
                              nonfinite=sample_lib.count_nonfinite(images))), flush=True)


if __name__ == "__main__":
    main()
