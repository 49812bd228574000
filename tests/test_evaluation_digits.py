"""The digits quality metric: FD against its closed form, the floor, IS, conditional accuracy,
the input convention and the shipped classifier weights."""

import numpy as np
import pytest
import scipy.linalg

from score_jax.data import load_digits_images
from score_jax.evaluation import digits as D
from score_jax.evaluation.metrics import StreamingStats


@pytest.fixture(scope="module")
def real():
    return load_digits_images(8, "all")


@pytest.fixture(scope="module")
def reference8():
    return D.digits_reference(8)


def _identity_params():
    """A classifier whose 64 features are the 64 pixels (ReLU is the identity on [0, 1])."""
    w0 = np.zeros((64, 128), np.float32)
    w0[:, :64] = np.eye(64)
    w1 = np.zeros((128, 64), np.float32)
    w1[:64] = np.eye(64)
    w2 = np.zeros((64, 10), np.float32)
    return {"w0": w0, "b0": np.zeros(128, np.float32), "w1": w1, "b1": np.zeros(64, np.float32),
            "w2": w2, "b2": np.zeros(10, np.float32)}


def test_fd_matches_gaussian_closed_form():
    # Features = pixels ~ N(m1, A); reference N(m2, B), A and B non-commuting. Closed form
    # (Dowson & Landau 1982) evaluated independently with scipy's sqrtm (pytorch-fid's form):
    # FD = |m1 - m2|^2 + tr(A) + tr(B) - 2 tr((A B)^{1/2}).
    rng = np.random.default_rng(0)
    n, d = 10000, 64
    q1, q2 = (np.linalg.qr(rng.standard_normal((d, d)))[0] for _ in range(2))
    a, b = (0.03 * rng.uniform(0.5, 1.5, d)) ** 2, (0.03 * rng.uniform(0.5, 1.5, d)) ** 2
    cov_a, cov_b = (q1 * a) @ q1.T, (q2 * b) @ q2.T
    m1, m2 = np.full(d, 0.5), 0.5 + 0.01 * rng.standard_normal(d)
    x = (m1 + (rng.standard_normal((n, d)) * np.sqrt(a)) @ q1.T).astype(np.float32)
    assert x.min() > 0 and x.max() < 1  # no clipping: the pixels stay Gaussian
    ref_feats = (m2 + (rng.standard_normal((n, d)) * np.sqrt(b)) @ q2.T).astype(np.float32)
    reference = {"mu": m2, "sigma": cov_b, "features": ref_feats,
                 "logits": np.zeros((n, 10), np.float32)}
    closed = (np.sum((m1 - m2) ** 2) + np.trace(cov_a) + np.trace(cov_b)
              - 2 * np.trace(np.real(scipy.linalg.sqrtm(cov_a @ cov_b))))
    out = D.digits_metrics(x.reshape(n, 8, 8, 1), reference=reference, params=_identity_params())
    assert out["fd"] == pytest.approx(closed, rel=0.01)  # measured: 0.08%
    # The floor: N draws of the reference Gaussian itself; FD's finite-sample bias only.
    assert out["fd_floor"] < 0.05 * closed
    assert out["fd_ratio"] == pytest.approx(out["fd"] / out["fd_floor"])
    # Zero logits: p(y|x) uniform, IS = 1 exactly.
    assert out["is"] == pytest.approx(1.0) and out["is_real"] == pytest.approx(1.0)


@pytest.mark.parametrize("size", [8, 16])
def test_real_digits_score_the_floor(real, size):
    x = load_digits_images(size, "all")[0] if size != 8 else real[0]
    n = 300
    real_subset = x[D.floor_indices(n)]
    out = D.digits_metrics(real_subset)
    assert out["num_samples"] == n
    assert out["fd"] == out["fd_floor"] and out["fd_ratio"] == 1.0
    assert out["is"] == out["is_real"]
    assert 0 < out["fd_floor"] < 5.0
    assert 9.0 < out["is_real"] <= 10.0
    # Reference digits are training digits (or test digits): copies by the NN-ratio test.
    assert out["copy_fraction"] > 0.8
    assert out["fd_ratio_fresh"] == pytest.approx(out["fd"] / out["fd_floor_fresh"])
    hist = np.asarray(out["class_hist"])
    assert hist.shape == (10,) and hist.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(hist, 0.1, atol=0.04)
    # The floor shrinks with the sample count (FD's bias ~ 1 / N).
    bigger = D.digits_metrics(x[D.floor_indices(1000)])
    assert bigger["fd_floor"] < out["fd_floor"]


def test_bad_samples_score_far_above_the_floor(real, reference8):
    rng = np.random.default_rng(0)
    noise = rng.uniform(size=(300, 8, 8, 1)).astype(np.float32)
    out = D.digits_metrics(noise, reference=reference8)
    assert out["fd_ratio"] > 50 and out["is"] < out["is_real"]
    # Only ones: the class histogram and IS see the collapse.
    ones = real[0][real[1] == 1][:150]
    out = D.digits_metrics(ones, reference=reference8, num_floor=150)
    assert out["class_hist"][1] > 0.9 and out["is"] < 1.5 and out["fd_ratio"] > 10


def test_input_convention(real, reference8):
    x = real[0][:64]
    u8 = np.round(x * 255).astype(np.uint8)
    ref = D.digits_metrics(u8.astype(np.float32) / 255, reference=reference8)
    assert D.digits_metrics(u8, reference=reference8) == ref
    # Sampler overshoot within 1e-3 is clipped silently.
    shifted = u8.astype(np.float32) / 255
    shifted[0, 0, 0, 0], shifted[1, 0, 0, 0] = -5e-4, 1 + 5e-4
    np.testing.assert_allclose(D.digits_to_8x8(shifted), D.digits_to_8x8(np.clip(shifted, 0, 1)))
    with pytest.raises(ValueError, match=r"found values in \[0, 255\]"):
        D.digits_metrics(u8.astype(np.float32), reference=reference8)
    with pytest.raises(ValueError, match=r"found values in \[-1, 1\]"):
        D.digits_metrics(2 * x - 1, reference=reference8)
    with pytest.raises(ValueError, match="multiple"):
        D.digits_metrics(np.zeros((4, 12, 12, 1), np.float32))
    with pytest.raises(ValueError, match="at least 2"):
        D.digits_metrics(x[:1], reference=reference8)
    with pytest.raises(ValueError, match=r"digits_reference\(16\)"):
        D.digits_metrics(np.zeros((4, 16, 16, 1), np.float32), reference=reference8)
    # More floor digits than data: a seeded bootstrap.
    assert np.isfinite(D.digits_metrics(x, reference=reference8, num_floor=2000)["fd_floor"])
    # Three identical channels average to the grey image.
    np.testing.assert_allclose(D.digits_to_8x8(np.repeat(x, 3, -1)), D.digits_to_8x8(x),
                               atol=1e-7)


def test_area_downsampling():
    x = np.arange(2 * 16 * 16, dtype=np.float32).reshape(2, 16, 16, 1) / 512
    out = D.digits_to_8x8(x).reshape(2, 8, 8)
    i, j = 3, 5
    expected = x[1, 2 * i:2 * i + 2, 2 * j:2 * j + 2, 0].mean()
    assert out[1, i, j] == pytest.approx(expected)


def test_conditional_accuracy(real):
    x, y = real
    acc = D.digits_conditional_accuracy(x, y)
    params = D.load_digits_classifier()
    assert acc["accuracy"] == pytest.approx(D.classifier_accuracy(params, x.reshape(-1, 64), y))
    assert acc["accuracy"] > 0.97 and 0.9 < acc["confidence"] <= 1.0
    assert acc["num_samples"] == len(y)
    shuffled = D.digits_conditional_accuracy(x, np.random.default_rng(0).permutation(y))
    assert 0.07 < shuffled["accuracy"] < 0.13 and shuffled["confidence"] < 0.15
    with pytest.raises(ValueError, match=r"\[0, 9\]"):
        D.digits_conditional_accuracy(x[:3], np.array([0, 1, 10]))
    with pytest.raises(ValueError, match="labels must be"):
        D.digits_conditional_accuracy(x[:3], np.array([0, 1]))


def test_classifier_functions(real):
    features_fn, logits_fn = D.digits_classifier()
    f, logits = features_fn(real[0][:10]), logits_fn(real[0][:10])
    assert f.shape == (10, D.NUM_DIGITS_FEATURES) and logits.shape == (10, 10)
    assert f.dtype == np.float32 and np.all(f >= 0)
    np.testing.assert_array_equal(np.argmax(logits, -1), real[1][:10])


def test_retraining_reproduces_shipped_weights(real):
    params, info = D.train_digits_classifier()
    shipped = D.load_digits_classifier()
    assert info["test_accuracy"] > 0.94 and info["train_accuracy"] > 0.99
    x, y = real
    assert D.classifier_accuracy(params, x[1617:].reshape(-1, 64), y[1617:]) == pytest.approx(
        D.classifier_accuracy(shipped, x[1617:].reshape(-1, 64), y[1617:]), abs=0.015)
    # Float32 reductions in another order (thread count, device count) move a few weights by
    # ~1e-2 over 600 Adam steps, so the weights are compared in norm and the outputs by their
    # predictions, not bit for bit.
    for k in shipped:
        rel = np.linalg.norm(params[k] - shipped[k]) / np.linalg.norm(shipped[k])
        assert rel < 0.02, (k, rel)
    _, new_logits = D.digits_classifier(params)
    _, old_logits = D.digits_classifier()
    agree = np.mean(np.argmax(new_logits(x), -1) == np.argmax(old_logits(x), -1))
    assert agree > 0.99


def test_load_classifier_checks_shapes(tmp_path):
    bad = dict(D.load_digits_classifier())
    bad["w1"] = bad["w1"][:, :3]
    D.save_digits_classifier(tmp_path / "bad.npz", bad)
    with pytest.raises(ValueError, match=r"w1 of shape \(128, 64\)"):
        D.load_digits_classifier(tmp_path / "bad.npz")


def _gaussian_reference(rng, m, d=8):
    scales = np.linspace(0.5, 2.0, d)
    return scales, rng.standard_normal((m, d)) * scales


def test_fresh_floor_is_the_fd_of_new_draws():
    """fresh_floor(R, n) estimates E FD(n new draws, R); the subset floor of the reference's own
    rows is far lower. Closed form of the mean term (Gaussian data, M reference rows):
    E|mean(new n) - mean(R)|^2 = tr(S) (1/n + 1/M) against tr(S) (1/n - 1/M) for a subset
    (sampling without replacement), so the floors differ by about (1/n + 1/M) / (1/n - 1/M)."""
    rng = np.random.default_rng(0)
    m, n = 1000, 500
    scales, ref = _gaussian_reference(rng, m)
    floor = D.fresh_floor(ref, n)
    mu, sigma = StreamingStats(ref.shape[1]).update(ref).stats()
    reference = {"mu": mu, "sigma": sigma}
    new = np.mean([D._fd_to(rng.standard_normal((n, ref.shape[1])) * scales, reference)
                   for _ in range(100)])
    subset = np.mean([D._fd_to(ref[rng.permutation(m)[:n]], reference) for _ in range(100)])
    assert floor == pytest.approx(new, rel=0.15)  # measured: 6% low
    ratio = (1 / n + 1 / m) / (1 / n - 1 / m)  # 3 here
    assert new / subset == pytest.approx(ratio, rel=0.2)  # measured: 3.20


def test_fresh_floor_is_linear_in_inverse_counts():
    """Above M // 2 the same splits serve every N: floor(N) = c (1/N + 1/M) exactly."""
    _, ref = _gaussian_reference(np.random.default_rng(1), 400)
    f1, f2, f3 = (D.fresh_floor(ref, n) for n in (200, 800, 10_000))
    assert f2 / f1 == pytest.approx((1 / 800 + 1 / 400) / (1 / 200 + 1 / 400), rel=1e-12)
    assert f3 / f1 == pytest.approx((1 / 10_000 + 1 / 400) / (1 / 200 + 1 / 400), rel=1e-12)
    assert D.fresh_floor(ref, 200) == f1  # seeded: deterministic
    assert D.fresh_floor(ref, 200, seed=1) != f1
    with pytest.raises(ValueError, match="num >= 2"):
        D.fresh_floor(ref, 1)
    with pytest.raises(ValueError, match="M >= 4"):
        D.fresh_floor(ref[:3], 10)
    with pytest.raises(ValueError, match="num_splits"):
        D.fresh_floor(ref, 10, num_splits=0)


def test_fresh_floor_of_the_digits(reference8):
    """At N = 1000 new digits score about 3.7x the subset floor (measured 1.005 / 0.274): the
    subset floor is what copying the training set scores, not what a model of the data scores."""
    out = D.digits_metrics(np.zeros((8, 8, 8, 1), np.float32), reference=reference8,
                           num_floor=1000)
    assert 0.8 < out["fd_floor_fresh"] < 1.3
    assert 3.0 < out["fd_floor_fresh"] / out["fd_floor"] < 4.5


def test_copy_fraction(real, reference8):
    train = reference8["train_digits"]
    x_train = load_digits_images(8, "train")[0]
    x_test = load_digits_images(8, "test")[0]
    assert train.shape == (1617, 64)
    assert D.copy_fraction(D.digits_to_8x8(x_train[:300]), train) == 1.0
    assert D.copy_fraction(D.digits_to_8x8(x_test), train) == 0.0  # new digits (writers) of the test split
    rng = np.random.default_rng(0)
    near = D.digits_to_8x8(x_train[:300]) + 0.01 * rng.standard_normal((300, 64))
    assert D.copy_fraction(near, train) == 1.0
    assert D.copy_fraction(rng.uniform(size=(300, 64)), train) == 0.0
    # 2 of 4 samples are exact copies.
    mixed = np.concatenate([train[:2], rng.uniform(size=(2, 64))])
    assert D.copy_fraction(mixed, train) == 0.5
    with pytest.raises(ValueError, match="equal D"):
        D.copy_fraction(train[:, :10], train)
    with pytest.raises(ValueError, match="ratio"):
        D.copy_fraction(train[:2], train, ratio=0.0)


def test_metric_input_errors(reference8):
    _, ref = _gaussian_reference(np.random.default_rng(2), 100)
    with pytest.raises(ValueError, match="integer num >= 2"):
        D.fresh_floor(ref, 2.5)
    with pytest.raises(ValueError, match=r"number in \(0, 1\]"):
        D.copy_fraction(ref[:4], ref, ratio="0.5")
    with pytest.raises(ValueError, match="multiple"):
        D.digits_metrics(np.zeros((10, 0, 0, 1), np.float32), reference=reference8)
    with pytest.raises(ValueError, match="num_floor must be an integer"):
        D.digits_metrics(np.zeros((4, 8, 8, 1), np.float32), reference=reference8, num_floor=2.5)
