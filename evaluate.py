"""Evaluate the checkpoints of a training workdir (score_sde ``--mode=eval``).

    python evaluate.py --workdir=workdirs/digits --begin_step=3000 \\
        --config.eval.enable_bpd=True --config.eval.enable_sampling=True
    python evaluate.py --config=configs/vp/cifar10_ddpmpp_continuous.py --workdir=W \\
        --inception=pt_inception-2015-12-05-6726825d.pth --ref_stats=cifar10_stats.npz \\
        --config.eval.enable_sampling=True --config.eval.num_samples=50000 --wait

For every checkpoint of ``<workdir>/checkpoints`` in ``--begin_step .. --end_step`` (default:
``eval.begin_ckpt .. eval.end_ckpt`` times ``training.snapshot_freq``, the reference's
numbering) it computes what ``config.eval`` enables: the test loss (``enable_loss``), bits/dim
with ``eval.bpd_num_repeats`` dequantisations (``enable_bpd``), ``eval.num_samples`` samples and
their FID / IS / KID (``enable_sampling``; without ``--inception`` the samples are saved and the
metrics skipped; the digits configs draw 1000 samples and score the digits metric, the N the
README reports; the CIFAR-style configs keep the reference 50000). Results:
``<workdir>/<eval_folder>/report_<step>.json``, ``summary.json`` and TensorBoard scalars.
Rerunning the command resumes: finished checkpoints are skipped and an interrupted one continues
at its next round; SIGTERM stops after the current round.
"""
import json
import logging
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # configs/ is importable wherever evaluate.py is run from
import _cli  # noqa: E402
from score_jax.config.flags import define_config_flag  # noqa: E402

FLAGS = flags.FLAGS
define_config_flag("config", os.path.join(_HERE, "configs", "default_digits.py"),
                   "The training config of the workdir (FILE[:variant]).")
flags.DEFINE_string("workdir", None, "Training workdir (with checkpoints/).")
flags.DEFINE_string("eval_folder", "eval", "Results go to <workdir>/<eval_folder>.")
flags.DEFINE_string("inception", None, "Local FID Inception weights: "
                    "pt_inception-2015-12-05-6726825d.pth or its .npz. None: skip FID/IS/KID.")
flags.DEFINE_string("ref_stats", None, "Reference statistics .npz of the data (python -m "
                    "score_jax.evaluation.stats). None: IS only.")
flags.DEFINE_enum("fid_resize", None, ["pytorch", "tf1"], "FID / IS / KID resize convention "
                  "(overrides config.eval.fid_resize): pytorch = pytorch-fid / TF2 half-pixel "
                  "bilinear; tf1 = TF1 ResizeBilinear of TTUR / TF-GAN / score_sde. --ref_stats "
                  "must be in the same convention.")
flags.DEFINE_enum("ref_stats_resize", None, ["pytorch", "tf1"], "Convention of a --ref_stats "
                  "file that does not record one (files written here record it).")
flags.DEFINE_string("inception_sha256", None, "Expected sha256 of --inception (default: "
                    "pytorch-fid's pt_inception-2015-12-05-6726825d.pth); 'none' skips the check.")
flags.DEFINE_integer("begin_step", None, "First step (default eval.begin_ckpt x snapshot_freq).")
flags.DEFINE_integer("end_step", None, "Last step (default eval.end_ckpt x snapshot_freq).")
flags.DEFINE_bool("wait", False, "Poll for new snapshots until the last one in range is done.")
flags.DEFINE_float("poll_seconds", 60.0, "Polling interval with --wait.")
flags.DEFINE_integer("seed", None, "Evaluation seed (default config.seed).")
flags.DEFINE_bool("save_samples", True, "Keep the uint8 samples of every round.")
flags.DEFINE_bool("progress", True, "Show progress bars.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("compilation_cache", None, _cli.COMPILATION_CACHE_HELP)
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    _cli.setup_process(FLAGS.compilation_cache)
    logging.getLogger("score_jax").setLevel(logging.INFO)  # per-checkpoint results
    from score_jax import parallel

    if FLAGS.distributed:
        parallel.initialize_distributed()
    from score_jax import config as config_lib
    from score_jax import preemption
    from score_jax.checkpoint import CheckpointError
    from score_jax.data import DatasetNotAvailableError
    from score_jax.evaluation.workdir import evaluate_workdir

    try:
        config = config_lib.resolve_latent_config(_cli.sampler_override(FLAGS.config),
                                                  FLAGS.workdir)  # stored scale factor
        if FLAGS.fid_resize is not None:
            config.eval.fid_resize = FLAGS.fid_resize
        sha = FLAGS.inception_sha256
        sha = "pinned" if sha is None else (None if sha.lower() == "none" else sha)
        if config.eval.enable_bpd:  # latent diffusion / autoencoder: no bits/dim, say so
            config_lib.check_no_bpd(config)
        with preemption.sigterm() as stop:
            out = evaluate_workdir(
                config, FLAGS.workdir, eval_folder=FLAGS.eval_folder,
                inception_path=FLAGS.inception, reference_stats=FLAGS.ref_stats,
                inception_sha256=sha, ref_stats_resize=FLAGS.ref_stats_resize,
                begin_step=FLAGS.begin_step, end_step=FLAGS.end_step, wait=FLAGS.wait,
                poll_seconds=FLAGS.poll_seconds, seed=FLAGS.seed, save_samples=FLAGS.save_samples,
                progress=FLAGS.progress, should_stop=stop.is_set)
    except (ValueError, FileNotFoundError, CheckpointError, DatasetNotAvailableError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    keys = ("eval_loss", "bpd", "fid", "is", "kid", "num_samples_drawn")
    for step, report in out["reports"].items():
        print(json.dumps({"step": step, **{k: report[k] for k in keys if k in report}}))
    print(f"reports and summary: {out['summary'] or out['eval_dir']}"
          + ("  (preempted: rerun to resume)" if out["preempted"] else ""))


if __name__ == "__main__":
    app.run(main, argv=_cli.respell_argv())
