"""The main job reports how good its digits are (issue #12.1): the digits quality metric at
training snapshots (console + TensorBoard), in sample.py (printed + metrics.json) and in the
sample evaluator of evaluate.py."""
import glob
import json
import logging
import os
import sys

import jax
import numpy as np
import pytest

from score_jax import data as data_lib
from score_jax import sample_lib, train_lib
from score_jax.evaluation import evaluators
from score_jax.evaluation import run as run_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _real_digits(n, size=8):
    x, _ = data_lib.load_digits_images(size, "all")
    return x[np.random.default_rng(1).permutation(len(x))[:n]]


def test_digits_report_keys_and_values():
    real = evaluators.digits_report(_real_digits(500))
    assert set(real) == {"digits_fd", "digits_fd_floor", "digits_fd_ratio", "digits_is",
                         "digits_is_real", "digits_num_samples", "digits_fd_floor_fresh",
                         "digits_fd_ratio_fresh", "digits_copy_fraction"}
    assert real["digits_num_samples"] == 500
    assert real["digits_fd_ratio"] == pytest.approx(real["digits_fd"] / real["digits_fd_floor"])
    assert real["digits_fd_ratio"] < 2.0 and real["digits_is"] > 9.0  # real digits: ~ the floor
    # Digits of the reference itself sit far below the fresh floor (what new digits score) and
    # are copies of training digits (all but the ~10% from the test split).
    assert real["digits_fd_ratio_fresh"] < 0.6 and real["digits_copy_fraction"] > 0.8
    noise = np.random.default_rng(0).random((500, 8, 8, 1)).astype(np.float32)
    noise[0, 0, 0, 0] = np.nan  # non-finite pixels are scored as 0, not an error
    bad = evaluators.digits_report(noise)
    assert bad["digits_fd_ratio"] > 50 and bad["digits_is"] < 5
    assert bad["digits_fd_ratio_fresh"] > 10 and bad["digits_copy_fraction"] == 0.0
    line = evaluators.format_digits_report(bad)
    assert "floor" in line and "fresh floor" in line and "copies 0.0%" in line
    assert evaluators.is_digits("DIGITS") and not evaluators.is_digits("CIFAR10")


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_smoke_snapshot_logs_digits_metric_and_sample_py_writes_metrics_json(tmp_path, caplog):
    from configs.default_digits import get_config

    config = get_config("smoke")
    config.sampling.num_steps = 2
    config.training.n_iters = 2
    config.training.snapshot_freq = 2
    config.training.snapshot_metric_samples = 16  # more than the 8-image grid
    wd = str(tmp_path / "wd")
    with caplog.at_level(logging.INFO, logger="score_jax.train"):
        train_lib.train_and_evaluate(config, wd)
    line = [r.getMessage() for r in caplog.records if "digits FD" in r.getMessage()]
    assert line and "N=16" in line[0]
    events = b"".join(open(f, "rb").read()
                      for f in glob.glob(os.path.join(wd, "tensorboard", "*")))
    for k in evaluators.DIGITS_KEYS:
        assert f"digits_{k}".encode() in events
    # the grid keeps sampling.num_samples digits
    npz = np.load(os.path.join(wd, "samples", "iter_2", "samples.npz"))["samples"]
    assert npz.shape[0] == config.sampling.num_samples

    sys.path.insert(0, ROOT)
    import sample  # the CLI module (flags defined at import, not parsed)

    out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=16,
                                           output_dir=str(tmp_path / "s"))
    # the library is the one writer of metrics.json; sample.py only prints it
    assert out["metrics_path"] == str(tmp_path / "s" / "metrics.json")
    before = (tmp_path / "s" / "metrics.json").read_bytes()
    sample._print_digits_metrics(config, out)
    assert (tmp_path / "s" / "metrics.json").read_bytes() == before
    with open(tmp_path / "s" / "metrics.json") as f:
        m = json.load(f)
    assert m["digits_num_samples"] == 16 and m["nfe"] == out["nfe"]
    assert np.isfinite(m["digits_fd_ratio"]) and m["digits_fd_ratio"] > 0


def test_sample_evaluator_reports_digits_metric(tmp_path):
    real = _real_digits(64)

    def sample_fn(key, params, n):
        r = int(jax.random.randint(key, (), 0, 64 - n))
        return real[r:r + n]

    ev = evaluators.SampleEvaluator(sample_fn, jax.random.key(0), num_samples=32, batch_size=16,
                                    inception_fn=None, reference=None, save_samples=True,
                                    progress=False, should_stop=lambda: False,
                                    eval_dir=str(tmp_path),
                                    metrics=evaluators.sample_metrics("DIGITS"))
    ev.run(1, None)
    report = run_lib.read_report(str(tmp_path), 1)
    assert report["digits_num_samples"] == 32
    assert report["digits_fd_ratio"] > 0 and report["digits_is"] > 5
    ev_off = evaluators.SampleEvaluator(sample_fn, jax.random.key(0), num_samples=32,
                                        batch_size=16, inception_fn=None, reference=None,
                                        save_samples=True, progress=False,
                                        should_stop=lambda: False, eval_dir=str(tmp_path),
                                        metrics=evaluators.sample_metrics("CIFAR10"))
    ev_off.run(2, None)
    assert "digits_fd" not in run_lib.read_report(str(tmp_path), 2)


def test_training_loop_has_no_dataset_branch_and_one_evaluator_signature():
    """train_lib runs evaluators; which metrics apply to which dataset is decided by
    ``evaluators.sample_metrics`` (issue 21 item 4); every evaluator has run(step, state)."""
    import inspect

    src = inspect.getsource(train_lib.train_and_evaluate)
    assert "digits" not in src.lower() and "dataset ==" not in src
    for cls in (evaluators.LossEvaluator, evaluators.BpdEvaluator, evaluators.SampleEvaluator,
                evaluators.BatchLossEvaluator, evaluators.SnapshotEvaluator,
                evaluators.ReconstructionEvaluator):
        assert list(inspect.signature(cls.run).parameters) == ["self", "step", "state"], cls
    assert evaluators.sample_metrics("CIFAR10") == ()
    (m,) = evaluators.sample_metrics("DIGITS")
    assert m.scalars == tuple(f"digits_{k}" for k in evaluators.DIGITS_KEYS)
