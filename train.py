"""Train a score-based model: ``python train.py --workdir=DIR [--config=FILE[:variant]]``.

Without ``--config`` it trains the embedded default (``configs/default_digits.py``: a small DDPM++
on scikit-learn's digits; no download) and writes a sample grid. Override any config value with
``--config.training.batch_size=64``, ``--config.model.num_classes=10`` etc. Re-running the same
command resumes from the workdir's latest checkpoint; SIGTERM saves a checkpoint at the next step
and exits 0. Compiled steps are kept in a persistent XLA cache (``--compilation_cache``), so a
resumed run does not compile again. Multi-host: ``--distributed`` calls
``jax.distributed.initialize()`` (TPU pods, SLURM, ...) or, with ``--coordinator``,
``--num_processes`` and ``--process_id``, a manual setup.
"""
import logging
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # configs/ is importable wherever train.py is run from
import _cli  # noqa: E402
from score_jax.config.flags import define_config_flag  # noqa: E402

FLAGS = flags.FLAGS
define_config_flag("config", os.path.join(_HERE, "configs", "default_digits.py"),
                   "Training config file (optionally FILE:variant, e.g. :smoke).")
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and TensorBoard logs.")
flags.DEFINE_string("compilation_cache", None, _cli.COMPILATION_CACHE_HELP)
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (manual multi-process setup).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    _cli.setup_process(FLAGS.compilation_cache)
    from score_jax import parallel

    if FLAGS.distributed or FLAGS.coordinator:
        parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    from score_jax import preemption, train_lib
    from score_jax.checkpoint import CheckpointError
    from score_jax.data import DatasetNotAvailableError

    try:
        with preemption.sigterm() as stop:
            train_lib.train_and_evaluate(_cli.sampler_override(FLAGS.config), FLAGS.workdir,
                                         should_stop=stop.is_set)
    except (ValueError, CheckpointError, DatasetNotAvailableError,
            train_lib.NonFiniteLossError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main, argv=_cli.respell_argv())
