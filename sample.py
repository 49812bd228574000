"""Sample from, or evaluate bits/dim of, a trained score model.

    python sample.py --workdir=workdirs/digits        # latest checkpoint, the config's sampler
    python sample.py --workdir=W --config=FILE --config.sampling.method=ode --num_samples=64
    python sample.py --config=configs/ve/cifar10_ncsnpp_continuous.py \\
        --checkpoint=checkpoint_24.msgpack --output_dir=out          # converted official checkpoint
    python sample.py --workdir=W --mode=bpd --config.eval.bpd_dataset=test

The checkpoint is a training workdir (orbax, ``--step`` or the latest; EMA weights unless
``--noema``) or a file written by ``python -m score_jax.convert``. Writes ``samples.png`` (grid)
and ``samples.npz`` (uint8 images), or ``bpd.json`` in ``--mode=bpd``. Samples whose float32
array exceeds 1 GiB (or any, with ``--nokeep_images``) stream: each batch goes to
``samples.npz`` and to the FID Inception as it is drawn (host memory O(batch)), and
``samples.png`` shows the first 64. For DIGITS configs it
also prints the digits quality metric of the samples (FD against the fresh and subset floors of
the same N, IS, copies of training digits) and writes it
to ``metrics.json`` beside ``samples.png``. Any ``--num_samples`` works
on any number of devices. A class-conditional model draws labels uniformly from its classes
(``--config.sampling.class_label=K`` for one class), or ``--labels=3,3,7``, or
``--per_class=N`` (a grid with one row per class); ``--guidance_scale=w`` (or
``--config.sampling.guidance_scale=w``; w >= 0, a negative w is refused; ``None``: plain
conditional sampling) samples with classifier-free guidance, and for the
digits the conditional accuracy is printed and written to ``metrics.json``. If any sample is not finite the command
says how many and exits with status 2. Bits/dim integrate from ``score_jax.config.LIKELIHOOD_EPS``
(1e-5), as evaluate.py does.

Flags are documented with underscores (``--ref_stats``); the hyphen spelling (``--ref-stats``,
as in ``python -m score_jax.evaluation.score``) works too.

Sample and score in one command: ``--inception=pt_inception-2015-12-05-6726825d.pth`` with
``--ref_stats=STATS.npz`` (or ``--ref_images=NPZ_OR_FOLDER``), ``--fid_resize=tf1|pytorch``
(default ``config.eval.fid_resize``; the statistics must be of the same convention) and
``--quantize=floor`` (default, score_sde's) writes FID / IS / KID into ``metrics.json``::

    python sample.py --config=configs/ve/cifar10_ncsnpp_continuous.py \\
        --checkpoint=cifar10_ncsnpp.msgpack --output_dir=out --num_samples=50000 \\
        --inception=pt_inception-2015-12-05-6726825d.pth --ref_stats=cifar10_stats.npz \\
        --fid_resize=tf1 --ref_stats_resize=tf1
"""
import json
import logging
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import _cli  # noqa: E402
from score_jax.config.flags import define_config_flag, define_guidance_scale_flag  # noqa: E402

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
flags.DEFINE_string("inception", None, "Score the samples: local FID Inception weights "
                    "(pt_inception-2015-12-05-6726825d.pth or its .npz) with --ref_stats or "
                    "--ref_images; FID / IS / KID go to metrics.json.")
flags.DEFINE_string("ref_stats", None, "Reference statistics .npz (python -m "
                    "score_jax.evaluation.stats, or score_sde's cifar10_stats.npz).")
flags.DEFINE_string("ref_images", None, "Reference uint8 images (.npz or a folder), run through "
                    "the same Inception.")
flags.DEFINE_enum("fid_resize", None, ["pytorch", "tf1"], "FID convention (default "
                  "config.eval.fid_resize): pytorch = pytorch-fid / TF2; tf1 = TTUR / TF-GAN / "
                  "score_sde. The reference must be of the same one.")
flags.DEFINE_enum("ref_stats_resize", None, ["pytorch", "tf1"], "Convention of a --ref_stats "
                  "file that does not record one (score_sde's files: tf1).")
flags.DEFINE_enum("quantize", "floor", ["floor", "round"], "Float samples -> uint8 for the "
                  "Inception (floor: score_sde's; round: nearest, DiT's).")
flags.DEFINE_string("inception_sha256", None, "Expected sha256 of --inception (default: "
                    "pytorch-fid's file); 'none' skips the check.")
flags.DEFINE_integer("fid_batch_size", 200, "Inception batch size.")
flags.DEFINE_bool("keep_images", None, "Keep all float samples in host memory (default: when "
                  "they take at most 1 GiB). --nokeep_images streams every batch to samples.npz "
                  "and to the FID Inception (host memory O(batch); samples.png shows the first "
                  "64; the digits metric is skipped).")
define_guidance_scale_flag(None, "Classifier-free guidance scale w >= 0 (shortcut for "
                           "--config.sampling.guidance_scale): 0 unconditional, 1 conditional, "
                           "> 1 guided; None: plain conditional sampling (no guidance).",
                           allow_none=True)


def _with_guidance_scale(config, w, given=True):
    """``--guidance_scale=w`` (``given``: the flag is on the command line) overrides
    config.sampling.guidance_scale on an unlocked copy; ``--guidance_scale=None`` sets it to None
    (plain conditional sampling). Not given: the config's own value."""
    if not given:
        return config
    config = config.copy_and_resolve_references()
    config.sampling.guidance_scale = None if w is None else float(w)
    return config


def _fid_spec():
    """The FidSpec of --inception / --ref_stats / --ref_images (None: no scoring)."""
    from score_jax.sample_lib import FidSpec

    given = [f for f in ("ref_stats", "ref_images", "fid_resize", "ref_stats_resize",
                         "inception_sha256") if getattr(FLAGS, f) is not None]
    if FLAGS.inception is None:
        if given:
            raise ValueError(f"--{given[0]} needs --inception (the FID Inception weights)")
        return None
    if (FLAGS.ref_stats is None) == (FLAGS.ref_images is None):
        raise ValueError("--inception needs exactly one of --ref_stats and --ref_images")
    sha = FLAGS.inception_sha256
    sha = "pinned" if sha is None else (None if sha.lower() == "none" else sha)
    return FidSpec(inception=FLAGS.inception, ref_stats=FLAGS.ref_stats,
                   ref_images=FLAGS.ref_images, resize=FLAGS.fid_resize,
                   ref_stats_resize=FLAGS.ref_stats_resize, quantize=FLAGS.quantize,
                   inception_sha256=sha, batch_size=FLAGS.fid_batch_size)


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
    if not out.get("images_kept", True):
        print("digits metric skipped: the samples were streamed to samples.npz (--keep_images "
              "keeps them in memory)")
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
            config = _with_guidance_scale(config, FLAGS.guidance_scale,
                                          FLAGS["guidance_scale"].present)
            out = sample_lib.sample_from_checkpoint(
                config, workdir=FLAGS.workdir, checkpoint=FLAGS.checkpoint, step=FLAGS.step,
                use_ema=FLAGS.ema, num_samples=FLAGS.num_samples, seed=FLAGS.seed,
                output_dir=FLAGS.output_dir, labels=FLAGS.labels, per_class=FLAGS.per_class,
                fid=_fid_spec(), keep_images=FLAGS.keep_images)
            print(f"samples: {out['png']} ({out['num_samples']} samples, nfe {out['nfe']}, "
                  f"{out['seconds']:.1f} s)")
            _print_digits_metrics(config, out)
            _print_conditional(out)
            if out["fid_metrics"]:
                print(json.dumps(out["fid_metrics"]) + f" -> {out['metrics_path']}")
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
    app.run(main, argv=_cli.respell_argv())
