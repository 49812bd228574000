"""Sample from, or evaluate bits/dim of, a trained score model.

    python sample.py --workdir=workdirs/digits        # latest checkpoint, the config's sampler
    python sample.py --workdir=W --config=FILE --config.sampling.method=ode --num_samples=64
    python sample.py --config=configs/ve/cifar10_ncsnpp_continuous.py \\
        --checkpoint=checkpoint_24.msgpack --output_dir=out          # converted official checkpoint
    python sample.py --workdir=W --mode=bpd --config.eval.bpd_dataset=test

The checkpoint is a training workdir (orbax, ``--step`` or the latest; EMA weights unless
``--noema``) or a file written by ``python -m score_jax.convert``. Writes ``samples.png`` (grid)
and ``samples.npz`` (uint8 images), or ``bpd.json`` in ``--mode=bpd``. For DIGITS configs it
also prints the digits quality metric of the samples (FD against the fresh and subset floors of
the same N, IS, copies of training digits) and writes it
to ``metrics.json`` beside ``samples.png``. Any ``--num_samples`` works
on any number of devices. A class-conditional model draws labels uniformly from its classes
(``--config.sampling.class_label=K`` for one class), or ``--labels=3,3,7``, or
``--per_class=N`` (a grid with one row per class); ``--guidance_scale=w`` (or
``--config.sampling.guidance_scale=w``) samples with classifier-free guidance, and for the
digits the conditional accuracy is printed and written to ``metrics.json``. If any sample is not finite the command
says how many and exits with status 2. Bits/dim integrate from ``score_jax.config.LIKELIHOOD_EPS``
(1e-5), as evaluate.py does.
"""
import json
import logging
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import _cli  # noqa: E402
from score_jax.config.flags import define_config_flag  # noqa: E402

FLAGS = flags.FLAGS
define_config_flag("config", os.path.join(_HERE, "configs", "default_digits.py"),
                   "The training config file (optionally FILE:variant); "
                   "--config.x=y overrides work with the default too.")
flags.DEFINE_string("workdir", None, "Training workdir with checkpoints/.")
flags.DEFINE_string("checkpoint", None, "Converted checkpoint file (python -m score_jax.convert).")
flags.DEFINE_integer("step", None, "Checkpoint step in the workdir (default: the latest).")
flags.DEFINE_bool("ema", True, "Use the EMA parameters of a workdir checkpoint.")
flags.DEFINE_enum("mode", "sample", ["sample", "bpd"], "Draw samples, or evaluate bits/dim.")
flags.DEFINE_integer("num_samples", None,
                     "Number of samples (default: config.sampling.num_samples).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Sampling seed.")
flags.DEFINE_string("output_dir", None, "Output folder (default <workdir>/samples/"
                    "<method>_step<N>_seed<S>_n<num>_<digest of the settings>).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("compilation_cache", None, _cli.COMPILATION_CACHE_HELP)
flags.DEFINE_string("labels", None, "Class-conditional models: comma-separated labels to "
                    "sample, one per sample (e.g. 3,3,7; their count sets the number of samples).")
flags.DEFINE_integer("per_class", None, "Class-conditional models: a grid with one row per "
                     "class of this many samples each.", lower_bound=1)
flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance scale w (shortcut for "
                   "--config.sampling.guidance_scale): 0 unconditional, 1 conditional, > 1 guided.")


def _with_guidance_scale(config, w):
    """--guidance_scale=w overrides config.sampling.guidance_scale (on an unlocked copy)."""
    if w is None:
        return config
    config = config.copy_and_resolve_references()
    config.sampling.guidance_scale = float(w)
    return config


def _print_conditional(out):
    """The conditional accuracy of class-conditional digits (also in metrics.json)."""
    cond = out.get("conditional")
    if cond is None:
        return
    w = out.get("guidance_scale")
    print(f"conditional accuracy {cond['accuracy']:.4f}, confidence {cond['confidence']:.4f} "
          f"({cond['num_samples']} samples, guidance_scale "
          f"{'None (conditional)' if w is None else w}; digits classifier)")


def _print_digits_metrics(config, out):
    """Print the metrics of the samples the dataset defines (DIGITS: the digits quality metric;
    ``sample_lib.sample_from_checkpoint`` computed them and wrote ``metrics.json``)."""
    from score_jax.evaluation import evaluators

    metrics = evaluators.sample_metrics(config.data.dataset)
    if not metrics or out["png"] is None:
        return
    report = out.get("sample_metrics")
    if not report:
        print(f"digits metric skipped: it needs at least {metrics[0].min_samples} samples (FD "
              f"fits a covariance)")
        return
    for metric in metrics:
        print(f"{metric.format(report)} -> {out['metrics_path']}")


def main(argv):
    del argv
    _cli.setup_process(FLAGS.compilation_cache)
    from score_jax import parallel

    if FLAGS.distributed:
        parallel.initialize_distributed()
    from score_jax import sample_lib

    try:
        config = _cli.sampler_override(FLAGS.config)
        if FLAGS.mode == "sample":
            config = _with_guidance_scale(config, FLAGS.guidance_scale)
            out = sample_lib.sample_from_checkpoint(
                config, workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint, step=FLAGS.step,
                use_ema=FLAGS.ema, num_samples=FLAGS.num_samples, seed=FLAGS.seed,
                output_dir=FLAGS.output_dir, labels=FLAGS.labels, per_class=FLAGS.per_class)
            print(f"samples: {out['png']} ({out['num_samples']} samples, nfe {out['nfe']}, "
                  f"{out['seconds']:.1f} s)")
            _print_digits_metrics(config, out)
            _print_conditional(out)
            if out["num_nonfinite"]:
                logging.error("%d of %d samples are not finite (NaN / inf; written as 0 in %s): "
                              "the sampler diverged; try more steps or another sampler",
                              out["num_nonfinite"], out["num_samples"], out["npz"])
                sys.exit(2)
        else:
            out = sample_lib.bpd_from_checkpoint(
                config, workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint, step=FLAGS.step,
                use_ema=FLAGS.ema, seed=FLAGS.seed, output_dir=FLAGS.output_dir)
            print(json.dumps(out, indent=2))
    except (ValueError, FileNotFoundError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    except Exception as e:
        from score_jax.checkpoint import CheckpointError
        from score_jax.data import DatasetNotAvailableError
        if isinstance(e, (CheckpointError, DatasetNotAvailableError)):
            logging.error("%s: %s", type(e).__name__, e)
            sys.exit(1)
        raise


if __name__ == "__main__":
    app.run(main)
