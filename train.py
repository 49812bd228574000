"""Train a score-based model: ``python train.py --workdir=DIR [--config=FILE[:variant]]``.

Without ``--config`` it trains the embedded default (``configs/default_digits.py``: a small DDPM++
on scikit-learn's digits; no download) and writes a sample grid. Override any config value with
``--config.training.batch_size=64`` etc. Re-running the same command resumes from the workdir's
latest checkpoint. Multi-host: ``--distributed`` calls ``jax.distributed.initialize()`` (TPU pods,
SLURM, ...) or, with ``--coordinator``, ``--num_processes`` and ``--process_id``, a manual setup.
"""
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)  # configs/ is importable wherever train.py is run from

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", os.path.join(_HERE, "configs", "default_digits.py"),
                                "Training config file (optionally FILE:variant, e.g. :smoke).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, samples and TensorBoard logs.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator", None, "host:port of process 0 (manual multi-process setup).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator).")
flags.DEFINE_integer("process_id", None, "This process's id (with --coordinator).")
flags.mark_flags_as_required(["workdir"])


def main(argv):
    del argv
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from score_jax import parallel

    if FLAGS.distributed or FLAGS.coordinator:
        parallel.initialize_distributed(FLAGS.coordinator, FLAGS.num_processes, FLAGS.process_id)
    from score_jax import train_lib
    from score_jax.checkpoint import CheckpointError

    try:
        train_lib.train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except (ValueError, CheckpointError, train_lib.NonFiniteLossError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
