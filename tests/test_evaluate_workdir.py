"""Evaluating the checkpoints of a workdir: test loss, bits/dim, samples -> FID / IS / KID, reports,
and preemption (a finished checkpoint is skipped, an interrupted one resumes to the same numbers).

A tiny network trained 4 steps gives checkpoints at steps 2 and 4; the Inception network is
replaced through the public ``inception_fn`` hook by a cheap fixed random projection of the pixels
(the real network is covered by test_evaluation_inception.py).
"""
import json
import logging
import os
import signal
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import config as config_lib
from score_jax import data as data_lib
from score_jax import parallel, preemption, sample_lib, train_lib, train_step
from score_jax.checkpoint import TrainCheckpointer
from score_jax.evaluation import metrics_report, read_report
from score_jax.evaluation import workdir as wd_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # configs/


class TinyNet(nn.Module):
    """Two convolutions and a time embedding, called like the real networks."""

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        temb = nn.Dense(8)(jnp.sin(labels[:, None] / 100.0 * jnp.arange(1, 5)))
        h = nn.swish(nn.Conv(8, (3, 3))(x) + temb[:, None, None, :])
        return nn.Conv(x.shape[-1], (3, 3))(h)


_PROJ = np.random.default_rng(0).standard_normal((64, 16)) / 8.0


def fake_inception(images):
    """uint8 (N, 8, 8, 1) -> 16-d 'pool_3' and 10 'logits' (a fixed random projection)."""
    x = np.asarray(images, np.float64).reshape(len(images), -1) / 255.0
    pool = np.tanh(x @ _PROJ)
    return pool.astype(np.float32), (3.0 * pool[:, :10]).astype(np.float32)


class CountingInception:
    """``fake_inception`` that counts its calls and can send SIGTERM after call ``term_at``."""

    def __init__(self, term_at=None):
        self.calls, self.term_at = 0, term_at

    def __call__(self, images):
        self.calls += 1
        if self.calls == self.term_at:
            os.kill(os.getpid(), signal.SIGTERM)  # the round still finishes and is saved
        return fake_inception(images)


def _config():
    """The digits smoke config at 8 x 8: 4 training steps, snapshots at steps 2 and 4."""
    from configs.default_digits import get_config

    config = get_config("dsm_smoke")
    config.data.image_size = 8
    t = config.training
    t.n_iters, t.snapshot_freq, t.snapshot_freq_for_preemption = 4, 2, 2
    t.snapshot_sampling = False
    e = config.eval
    e.enable_loss = e.enable_bpd = e.enable_sampling = True
    e.num_samples = 12  # 2 rounds of eval.batch_size = 8, cut to 12
    e.bpd_num_repeats = 2
    e.bpd_max_batches = 1
    e.begin_ckpt, e.end_ckpt = 1, 2  # steps 2 and 4 (snapshot_freq = 2)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = _config()
    wd = str(tmp_path_factory.mktemp("eval_wd"))
    train_lib.train_and_evaluate(config, wd, model=TinyNet())
    assert wd_lib.saved_steps(wd) == [2, 4]
    return config, wd


@pytest.fixture(scope="module")
def reference():
    pool, _ = fake_inception(np.random.default_rng(1).integers(0, 256, (40, 8, 8, 1)))
    return {"mu": pool.mean(0).astype(np.float64), "sigma": np.cov(pool, rowvar=False),
            "pool_3": pool}


@pytest.fixture(scope="module")
def full(trained, reference):
    """The uninterrupted evaluation of both checkpoints."""
    config, wd = trained
    out = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_full", model=TinyNet(),
                                  inception_fn=fake_inception, reference_stats=reference,
                                  progress=False)
    return out


def _numbers(reports):
    keys = ("eval_loss", "bpd", "bpd_num", "fid", "is", "kid", "kid_std", "num_samples")
    return {step: {k: r.get(k) for k in keys} for step, r in reports.items()}


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 11.0 s)
def test_reports_per_checkpoint(trained, full, reference):
    config, wd = trained
    assert full["evaluated"] == [2, 4] and full["skipped"] == [] and not full["preempted"]
    eval_dir = os.path.join(wd, "eval_full")
    for step in (2, 4):
        r = read_report(eval_dir, step)
        assert r == full["reports"][step] and r["ckpt"] == step
        assert np.isfinite(r["eval_loss"]) and 0.01 < r["eval_loss"] < 10.0
        # 2 dequantisation repeats of one batch of 8; 8 x 8 x 1 data in [-1, 1] (offset 7)
        assert r["bpd_num"] == 16 and r["bpd_num_repeats"] == 2
        assert np.isfinite(r["bpd"]) and 0.0 < r["bpd"] < 40.0
        assert np.isfinite(r["fid"]) and r["fid"] >= 0.0 and r["num_samples"] == 12
        assert 1.0 <= r["is"] <= 10.0 and np.isfinite(r["kid"])
        # FID is that of the saved uint8 samples (2 rounds of 8, the first 12)
        host = os.path.join(eval_dir, f"ckpt_{step}_host_0")
        samples = np.concatenate([np.load(os.path.join(host, f"samples_{i}.npz"))["samples"]
                                  for i in range(2)])[:12]
        assert samples.shape == (12, 8, 8, 1) and samples.dtype == np.uint8
        expected = metrics_report(*fake_inception(samples), reference)
        assert r["fid"] == pytest.approx(expected["fid"], rel=1e-10)
        assert r["is"] == pytest.approx(expected["is"], rel=1e-10)
        assert len([f for f in os.listdir(host) if f.startswith("bpd_")]) == 2
    # the two checkpoints differ (common random numbers: only the parameters changed)
    assert full["reports"][2]["eval_loss"] != full["reports"][4]["eval_loss"]
    # the test loss is the mean of train_step.eval_step over the test split
    b = config_lib.build(config, model=TinyNet())
    ck = TrainCheckpointer(wd, read_only=True)
    state, _ = ck.restore(b.abstract_state, 4)
    ck.close()
    ds = data_lib.get_dataset("DIGITS", split="test", batch_size=8, image_size=8, training=False,
                              num_channels=1)
    p_eval = train_step.jit_eval_step(config_lib.loss_fn_from_config(config, b.sde, b.model,
                                                                   train=False), b.mesh)
    k_loss = jax.random.split(jax.random.fold_in(jax.random.key(config.seed),
                                                 wd_lib._EVAL_STREAM), 3)[0]
    losses = [float(p_eval(state, parallel.to_global(x, b.mesh), jax.random.fold_in(k_loss, i)))
              for i, x in enumerate(ds.epoch())]
    assert len(losses) == 180 // 8 == full["reports"][4]["eval_loss_num_batches"]
    assert full["reports"][4]["eval_loss"] == pytest.approx(np.mean(losses), rel=1e-5)
    # summary and TensorBoard
    with open(full["summary"]) as f:
        summary = json.load(f)
    assert [r["ckpt"] for r in summary["reports"]] == [2, 4]
    fids = {r["ckpt"]: r["fid"] for r in summary["reports"]}
    assert summary["best_step"]["fid"] == min(fids, key=fids.get)
    digits_fd = {r["ckpt"]: r["digits_fd"] for r in summary["reports"]}  # DIGITS: its metric too
    assert summary["best_step"]["digits_fd"] == min(digits_fd, key=digits_fd.get)
    assert summary["best_step"]["digits_fd_ratio_fresh"] == summary["best_step"]["digits_fd"]
    assert any(f.startswith("events") for f in os.listdir(os.path.join(eval_dir, "tensorboard")))


def test_rerun_skips_finished_checkpoints(trained, full, reference, monkeypatch):
    config, wd = trained
    calls = []
    monkeypatch.setattr(sample_lib, "draw_samples",
                        lambda *a, **k: calls.append(1) or pytest.fail("sampled again"))
    inception = CountingInception()
    again = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_full", model=TinyNet(),
                                    inception_fn=inception, reference_stats=reference,
                                    progress=False)
    assert again["skipped"] == [2, 4] and again["evaluated"] == []
    assert inception.calls == 0 and not calls
    assert _numbers(again["reports"]) == _numbers(full["reports"])
    # without Inception weights now: the FID already there covers the sampling part
    again = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_full", model=TinyNet(),
                                    progress=False)
    assert again["skipped"] == [2, 4] and not calls
    assert _numbers(again["reports"]) == _numbers(full["reports"])


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 6.6 s)
def test_sigterm_then_resume_gives_uninterrupted_numbers(trained, full, reference):
    config, wd = trained
    # SIGTERM during the first sampling round of step 2: that round is saved, then it stops.
    before = signal.getsignal(signal.SIGTERM)
    with preemption.sigterm() as stop:  # what evaluate.py does
        first = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_kill", model=TinyNet(),
                                        inception_fn=CountingInception(term_at=1),
                                        reference_stats=reference, progress=False,
                                        should_stop=stop.is_set)
    assert first["preempted"] and first["evaluated"] == []
    eval_dir = os.path.join(wd, "eval_kill")
    partial = read_report(eval_dir, 2)
    assert partial["eval_loss"] == full["reports"][2]["eval_loss"] and "fid" not in partial
    assert os.path.exists(os.path.join(eval_dir, "ckpt_2_host_0", "statistics_0.npz"))
    assert not os.path.exists(os.path.join(eval_dir, "ckpt_2_host_0", "statistics_1.npz"))
    assert read_report(eval_dir, 4) is None
    assert signal.getsignal(signal.SIGTERM) is before  # restored
    # Resumed: only the missing round of step 2 and all of step 4 are computed.
    inception = CountingInception()
    resumed = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_kill", model=TinyNet(),
                                      inception_fn=inception, reference_stats=reference,
                                      progress=False)
    assert not resumed["preempted"] and resumed["evaluated"] == [2, 4]
    assert inception.calls == 1 + 2
    assert _numbers(resumed["reports"]) == _numbers(full["reports"])


def test_without_inception_samples_are_saved_then_reused(trained, full, reference, caplog,
                                                         monkeypatch):
    config, wd = trained
    config = _config()
    config.eval.enable_loss = config.eval.enable_bpd = False
    with caplog.at_level(logging.WARNING, logger="score_jax.evaluate"):
        out = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_noinc", model=TinyNet(),
                                      end_step=2, progress=False)
    assert "FID / IS / KID skipped: no Inception weights" in caplog.text
    r = out["reports"][2]
    assert r["num_samples_drawn"] == 16 and "fid" not in r and list(out["reports"]) == [2]
    saved = np.load(os.path.join(wd, "eval_noinc", "ckpt_2_host_0", "samples_1.npz"))["samples"]
    np.testing.assert_array_equal(
        saved, np.load(os.path.join(wd, "eval_full", "ckpt_2_host_0", "samples_1.npz"))["samples"])
    # With an Inception network later: the saved samples are used, not drawn again.
    monkeypatch.setattr(sample_lib, "draw_samples", lambda *a, **k: pytest.fail("sampled again"))
    out = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_noinc", model=TinyNet(),
                                  end_step=2, inception_fn=fake_inception,
                                  reference_stats=reference, progress=False)
    assert out["reports"][2]["fid"] == full["reports"][2]["fid"]
    assert out["reports"][2]["kid"] == full["reports"][2]["kid"]


def test_checkpoint_range_errors(trained):
    config, wd = trained
    config = _config()
    config.eval.begin_ckpt, config.eval.end_ckpt = 9, 26
    assert wd_lib.step_range(config) == (18, 52)
    assert wd_lib.step_range(config, begin_step=3, end_step=None) == (3, 52)
    with pytest.raises(ValueError, match=r"lies in steps \[18, 52\].*saved steps: \[2, 4\]"):
        wd_lib.evaluate_workdir(config, wd, eval_folder="eval_none", model=TinyNet(),
                                progress=False)
    with pytest.raises(ValueError, match=r"--wait: no snapshot can appear in steps \[18, 52\]"):
        wd_lib.evaluate_workdir(config, wd, eval_folder="eval_none", model=TinyNet(), wait=True,
                                progress=False)
    with pytest.raises(ValueError, match="empty checkpoint range"):
        wd_lib.step_range(config, begin_step=5, end_step=4)


def test_a_failed_run_leaves_no_empty_eval_folder(tmp_path):
    """A run that fails before writing anything (no checkpoint in the range, a missing Inception
    file) leaves no ``eval/`` (nor ``eval/tensorboard/``, nor a nested ``--eval_folder``'s
    parents) behind; an eval folder that existed before is kept, with its files."""
    config = _config()
    wd = tmp_path / "wd"
    os.makedirs(wd / "checkpoints")  # a workdir whose training saved nothing yet
    for kw in ({}, {"inception_path": str(tmp_path / "nosuch.pth")}, {"eval_folder": "runs/a/eval"}):
        with pytest.raises((ValueError, FileNotFoundError), match="no checkpoint|does not exist"):
            wd_lib.evaluate_workdir(config, str(wd), model=TinyNet(), progress=False, **kw)
        assert sorted(os.listdir(wd)) == ["checkpoints"], kw
    os.makedirs(wd / "eval")
    (wd / "eval" / "notes.txt").write_text("mine")
    os.makedirs(wd / "empty")
    for folder in ("eval", "empty"):
        with pytest.raises(ValueError, match="no checkpoint"):
            wd_lib.evaluate_workdir(config, str(wd), eval_folder=folder, model=TinyNet(),
                                    progress=False)
    assert sorted(os.listdir(wd)) == ["checkpoints", "empty", "eval"]
    assert os.listdir(wd / "eval") == ["notes.txt"] and os.listdir(wd / "empty") == []
    assert (wd / "eval" / "notes.txt").read_text() == "mine"


@pytest.mark.slow
def test_fid_with_inception_weights_file(trained, tmp_path):
    """The --inception path: a randomly initialised FID Inception in the converter's .npz layout
    (the real weights cannot be downloaded), at the real 299 x 299 input size."""
    from test_evaluation_inception import synthetic_state_dict

    from score_jax.evaluation import get_inception_fn, save_stats

    config, wd = trained
    config = _config()
    config.eval.enable_loss = config.eval.enable_bpd = False
    config.eval.num_samples = 8
    path = str(tmp_path / "pt_inception.npz")
    np.savez(path, **synthetic_state_dict())
    inception = get_inception_fn(path, batch_size=8, sha256=None)  # synthetic: no pinned hash
    ref_images = np.random.default_rng(5).integers(0, 256, (16, 8, 8, 1), dtype=np.uint8)
    pool, _ = inception(ref_images)
    stats_path = str(tmp_path / "ref.npz")
    save_stats(stats_path, pool.mean(0), np.cov(pool.astype(np.float64), rowvar=False),
               features=pool)
    out = wd_lib.evaluate_workdir(config, wd, eval_folder="eval_inception", model=TinyNet(),
                                  end_step=2, inception_path=path, reference_stats=stats_path,
                                  inception_sha256=None,
                                  progress=False)
    r = out["reports"][2]
    assert r["num_samples"] == 8 and np.isfinite(r["fid"]) and r["fid"] > 0
    assert 1.0 <= r["is"] <= 1008 and np.isfinite(r["kid"])
    samples = np.load(os.path.join(wd, "eval_inception", "ckpt_2_host_0", "samples_0.npz"))
    expected = metrics_report(*inception(samples["samples"]), {
        "mu": pool.mean(0), "sigma": np.cov(pool.astype(np.float64), rowvar=False),
        "pool_3": pool})
    assert r["fid"] == pytest.approx(expected["fid"], rel=1e-6)
    assert r["is"] == pytest.approx(expected["is"], rel=1e-6)


def test_wait_picks_up_new_checkpoints(trained, full, tmp_path):
    """--wait: step 4 appears while the evaluator polls (as training writes it)."""
    import shutil
    import threading

    config, wd = trained
    config = _config()
    config.eval.enable_bpd = config.eval.enable_sampling = False
    new = str(tmp_path / "wd")
    src, dst = os.path.join(wd, "checkpoints"), os.path.join(new, "checkpoints")
    shutil.copytree(src, dst, ignore=lambda d, names: ["4"] if d == src else [])

    def publish():  # like orbax: write elsewhere, then rename into place
        shutil.copytree(os.path.join(src, "4"), os.path.join(new, "tmp4"))
        os.rename(os.path.join(new, "tmp4"), os.path.join(dst, "4"))

    timer = threading.Timer(1.0, publish)
    timer.start()
    try:
        out = wd_lib.evaluate_workdir(config, new, model=TinyNet(), wait=True, poll_seconds=0.2,
                                      progress=False)
    finally:
        timer.cancel()
    assert out["evaluated"] == [2, 4] and not out["preempted"]
    for step in (2, 4):
        assert out["reports"][step]["eval_loss"] == full["reports"][step]["eval_loss"]


def test_sample_py_bpd_runs_the_dataset_bits_per_dim_of_evaluate(trained, tmp_path):
    """sample.py --mode=bpd (``sample_lib.bpd_from_checkpoint``) and evaluate.py share one
    bits/dim loop (``likelihood.bpd_rounds``): the same seed gives the numbers of
    ``likelihood.dataset_bits_per_dim`` on the same data and log-density function."""
    from score_jax import likelihood

    config, wd = trained
    out = sample_lib.bpd_from_checkpoint(config, workdir=wd, step=4, seed=3, model=TinyNet(),
                                         output_dir=str(tmp_path))
    params, info = sample_lib.load_params(config, workdir=wd, step=4, model=TinyNet())
    b, e = info["built"], config.eval
    logp_fn = sample_lib.make_logp_fn(b, rtol=float(config.sampling.rtol),
                                      atol=float(config.sampling.atol))
    ds = config_lib.dataset_from_config(config, e.bpd_dataset, batch_size=e.batch_size,
                                        training=False)
    batches = [bt["image"] for i, bt in zip(range(e.bpd_max_batches), ds.epoch(), strict=False)]
    want = likelihood.dataset_bits_per_dim(lambda k, y: logp_fn(k, params, y)[0], batches,
                                           jax.random.key(3), num_repeats=e.bpd_num_repeats,
                                           centered=b.centered)
    assert out["num_examples"] == len(want["bpd_per_example"])
    # (float32 ODE on a sharded vs a plain array: another key would differ by ~1e-2)
    np.testing.assert_allclose(out["bpd"], want["bpd"], rtol=1e-5)


def test_fid_resize_convention_mismatch_is_refused_before_work(trained, reference, tmp_path,
                                                              monkeypatch):
    """config.eval.fid_resize must match the reference statistics' recorded convention."""
    from score_jax.evaluation import save_stats

    config, wd = trained
    config = _config()
    config.eval.fid_resize = "tf1"
    path = str(tmp_path / "ref_pytorch.npz")
    save_stats(path, reference["mu"], reference["sigma"])  # default convention: pytorch
    monkeypatch.setattr(sample_lib, "draw_samples",
                        lambda *a, **k: pytest.fail("sampled despite the mismatch"))
    with pytest.raises(ValueError, match="computed with the 'pytorch' Inception resize but the "
                                         "samples are scored with 'tf1'"):
        wd_lib.evaluate_workdir(config, wd, eval_folder="eval_mismatch", model=TinyNet(),
                                inception_fn=fake_inception, reference_stats=path,
                                progress=False)
    config.eval.fid_resize = "bicubic"
    with pytest.raises(ValueError, match=r"config.eval.fid_resize='bicubic' unknown; valid "
                                         r"choices: \['pytorch', 'tf1'\]"):
        wd_lib.evaluate_workdir(config, wd, eval_folder="eval_mismatch", model=TinyNet(),
                                inception_fn=fake_inception, reference_stats=path,
                                progress=False)
