"""Checkpoint evaluation rounds: killed and restarted runs give the uninterrupted numbers."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.evaluation import (
    dataset_bits_per_dim,
    evaluate_bpd,
    evaluate_samples,
    metrics_report,
    quantize_samples,
    read_report,
)

_PROJ = np.random.default_rng(0).standard_normal((3, 16))


def fake_inception(images):
    """Cheap deterministic stand-in: 16-d features and 5 logits from the mean colour."""
    x = np.asarray(images, np.float64).mean(axis=(1, 2)) / 255.0
    pool = np.tanh(x @ _PROJ)
    return pool.astype(np.float32), (4.0 * pool[:, :5]).astype(np.float32)


class Sampler:
    """Images in [0, 1] from the key; optionally dies once at a chosen round (preemption)."""

    def __init__(self, batch_size, die_at_call=None):
        self.batch_size, self.die_at_call, self.calls = batch_size, die_at_call, 0

    def __call__(self, key):
        self.calls += 1
        if self.calls == self.die_at_call:
            raise KeyboardInterrupt("preempted")
        return np.asarray(jax.random.uniform(key, (self.batch_size, 6, 6, 3)))


@pytest.fixture
def reference():
    feats = fake_inception(np.random.default_rng(1).integers(0, 256, (50, 6, 6, 3)))[0]
    return {"mu": feats.mean(0).astype(np.float64), "sigma": np.cov(feats, rowvar=False),
            "pool_3": feats}


def test_evaluate_samples_resumes_after_kill(tmp_path, reference):
    key = jax.random.key(3)
    kwargs = dict(reference=reference, ckpt=7, num_samples=10, batch_size=4, key=key, log=None)
    # Uninterrupted run.
    full = evaluate_samples(Sampler(4), fake_inception, eval_dir=str(tmp_path / "a"), **kwargs)
    # Killed in round 2 (third sampler call), then restarted: only round 2 is sampled again.
    dying = Sampler(4, die_at_call=3)
    with pytest.raises(KeyboardInterrupt):
        evaluate_samples(dying, fake_inception, eval_dir=str(tmp_path / "b"), **kwargs)
    assert read_report(str(tmp_path / "b"), 7) is None
    resumed_sampler = Sampler(4)
    resumed = evaluate_samples(resumed_sampler, fake_inception, eval_dir=str(tmp_path / "b"),
                               **kwargs)
    assert resumed_sampler.calls == 1
    for k in ("fid", "is", "kid", "kid_std"):
        assert resumed[k] == full[k]
    # The numbers are metrics_report of the first 10 quantised samples.
    samples = np.concatenate([quantize_samples(Sampler(4)(jax.random.fold_in(
        jax.random.fold_in(key, 0), r))) for r in range(3)])[:10]
    pool, logits = fake_inception(samples)
    expected = metrics_report(pool, logits, reference)
    assert full["fid"] == pytest.approx(expected["fid"], rel=1e-12)
    assert full["is"] == pytest.approx(expected["is"], rel=1e-12)
    assert full["num_samples"] == 10 and full["ckpt"] == 7
    with open(tmp_path / "a" / "report_7.json") as f:
        assert json.load(f)["fid"] == full["fid"]
    saved = np.load(tmp_path / "a" / "ckpt_7_host_0" / "samples_1.npz")["samples"]
    assert saved.dtype == np.uint8 and saved.shape == (4, 6, 6, 3)
    # A finished checkpoint is not sampled again.
    again = Sampler(4)
    evaluate_samples(again, fake_inception, eval_dir=str(tmp_path / "a"), **kwargs)
    assert again.calls == 0
    with pytest.raises(ValueError, match="expected batch_size=4"):
        evaluate_samples(Sampler(3), fake_inception, eval_dir=str(tmp_path / "c"), **kwargs)


def test_quantize_samples_like_score_sde():
    x = np.array([-0.1, 0.0, 0.5, 0.9999, 1.0, 1.2])
    np.testing.assert_array_equal(quantize_samples(x), [0, 0, 127, 254, 255, 255])


def test_evaluate_bpd_resumes_and_matches_dataset_bits_per_dim(tmp_path):
    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(256))
    data = rng.choice(256, size=(30, 5), p=p).astype(np.uint8)
    batches = [data[:10], data[10:20], data[20:]]
    log_p = jnp.asarray(np.log(p))
    calls = []

    def logp_fn(key, y):
        calls.append(1)
        if len(calls) == die_at[0]:
            raise KeyboardInterrupt("preempted")
        idx = jnp.clip(jnp.floor(y * 256.0).astype(jnp.int32), 0, 255)
        return jnp.sum(log_p[idx] + math.log(256.0), axis=1)

    key = jax.random.key(5)
    die_at = [None]
    expected = dataset_bits_per_dim(logp_fn, batches, key, num_repeats=2)
    calls.clear()
    die_at[0] = 4  # killed in round 3 of 6
    with pytest.raises(KeyboardInterrupt):
        evaluate_bpd(logp_fn, batches, eval_dir=str(tmp_path), ckpt=2, key=key, num_repeats=2,
                     log=None)
    calls.clear()
    die_at[0] = None
    report = evaluate_bpd(logp_fn, batches, eval_dir=str(tmp_path), ckpt=2, key=key,
                          num_repeats=2, log=None)
    assert len(calls) == 3  # rounds 3, 4, 5 only
    assert report["bpd"] == pytest.approx(expected["bpd"], rel=1e-12)
    assert report["bpd_num"] == 60
    exact = -np.mean(np.log2(p[data]))  # per-example bits/dim, exact for this density
    assert report["bpd"] == pytest.approx(exact, rel=1e-5)


def test_sample_statistics_does_not_wait_forever_for_other_hosts(tmp_path, monkeypatch):
    """Issue #9: process 0 waited forever for another process's statistics files; now it
    raises TimeoutError naming the missing file."""
    from score_jax.evaluation import run as run_lib

    monkeypatch.setattr(jax, "process_count", lambda: 2)  # host 1 never writes its files
    with pytest.raises(TimeoutError, match=r"ckpt_3_host_1.statistics_0.npz did not appear"):
        run_lib.sample_statistics(Sampler(4), fake_inception, eval_dir=str(tmp_path), ckpt=3,
                                  num_samples=8, batch_size=4, key=jax.random.key(0),
                                  log=None, timeout_s=0.2, poll_s=0.05)
