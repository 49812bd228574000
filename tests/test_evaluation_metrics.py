"""FID / KID / IS / feature statistics / bits-per-dim against closed forms and brute force."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from score_jax.evaluation import (
    StreamingStats,
    bits_per_dim_from_logp,
    check_image_range,
    dataset_bits_per_dim,
    fid_from_features,
    frechet_distance,
    images_to_unit_range,
    inception_score,
    inception_score_splits,
    kid_and_std_from_features,
    kid_from_features,
    load_stats,
    metrics_report,
    save_stats,
    uniform_dequantize,
)


def _random_spd(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


def _fid_sqrtm_reference(mu1, s1, mu2, s2):
    """pytorch-fid / TTUR formula: |mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    covmean = np.real(covmean)
    diff = mu1 - mu2
    return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


# ------------------------------------------------------------------------- Frechet distance


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0, rel=1e-12)
    # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a) - sqrt(b))^2.
    a, b = np.array([1.0, 4.0, 9.0, 0.25]), np.array([4.0, 1.0, 9.0, 1.0])
    mu1, mu2 = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 1.0, 0.0, 3.0])
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected,
                                                                               rel=1e-12)
    # Identical Gaussians: 0, also for a singular covariance (rank 3 in 6 dims).
    rng = np.random.default_rng(0)
    s = _random_spd(rng, 6)
    assert abs(frechet_distance(np.ones(6), s, np.ones(6), s)) < 1e-10
    low = rng.standard_normal((6, 3))
    assert abs(frechet_distance(np.zeros(6), low @ low.T, np.zeros(6), low @ low.T)) < 1e-10


def test_frechet_distance_matches_sqrtm_reference():
    rng = np.random.default_rng(1)
    for d in (3, 17, 64):
        mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
        s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=2.0)
        ref = _fid_sqrtm_reference(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9, abs=1e-9)


def test_frechet_distance_is_nonnegative_for_singular_covariances():
    # Fewer samples than dimensions: singular covariances; the eigh form stays real, >= 0.
    rng = np.random.default_rng(2)
    f1, f2 = rng.standard_normal((20, 50)), rng.standard_normal((20, 50)) + 0.1
    fid = fid_from_features(f1, f2)
    assert np.isfinite(fid) and fid > 0
    # pytorch-fid's offset variant of sqrtm agrees to the size of its eps regulariser.
    mu1, s1 = f1.mean(0), np.cov(f1, rowvar=False)
    mu2, s2 = f2.mean(0), np.cov(f2, rowvar=False)
    off = 1e-6 * np.eye(50)
    ref = _fid_sqrtm_reference(mu1, s1 + off, mu2, s2 + off)
    assert fid == pytest.approx(ref, rel=1e-4)


def test_fid_from_gaussian_samples_within_computed_tolerance():
    rng = np.random.default_rng(3)
    d, n, reps = 6, 20_000, 12
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = _random_spd(rng, d), _random_spd(rng, d, scale=0.5)
    exact = frechet_distance(mu1, s1, mu2, s2)
    l1, l2 = np.linalg.cholesky(s1), np.linalg.cholesky(s2)
    est = np.array([
        fid_from_features(mu1 + rng.standard_normal((n, d)) @ l1.T,
                          mu2 + rng.standard_normal((n, d)) @ l2.T) for _ in range(reps)])
    # The plug-in estimator has bias O(d / n) (E|dmu_hat|^2 = |dmu|^2 + tr(S1 + S2) / n plus
    # the square-root term's O(d / n)); allow that plus 5 standard errors of the mean.
    bias = 2 * (np.trace(s1) + np.trace(s2)) / n
    tol = 5 * est.std(ddof=1) / math.sqrt(reps) + bias
    assert abs(est.mean() - exact) < tol
    assert np.all(np.abs(est - exact) < 5 * est.std(ddof=1) + bias)
    assert tol < 0.05 * exact  # the check is not vacuous


def test_fid_validation_errors():
    with pytest.raises(ValueError, match="feature dims differ"):
        fid_from_features(np.zeros((4, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(ValueError, match=r"sigma2 must have shape \(3, 3\)"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(3), np.eye(4))
    with pytest.raises(ValueError, match="2-D"):
        fid_from_features(np.zeros(5), np.zeros((4, 5)))


# ------------------------------------------------------------------------- streaming stats


def test_streaming_stats_equal_numpy_mean_and_cov():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((257, 9)) * np.arange(1, 10) + 1e4  # large offset: no cancellation
    sizes = [1, 100, 0, 37, 119]
    stats, start = StreamingStats(9), 0
    for size in sizes:
        stats.update(x[start:start + size])
        start += size
    assert stats.count == 257
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats.covariance, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-9)
    # Merging per-host statistics equals accumulating everything on one.
    a = StreamingStats(9).update(x[:50])
    b = StreamingStats(9).update(x[50:])
    merged = a.merge(b)
    np.testing.assert_allclose(merged.covariance, stats.covariance, rtol=1e-10, atol=1e-10)
    assert a.count == 50 and merged.count == 257


def test_streaming_stats_errors():
    s = StreamingStats(4).update(np.ones((1, 4)))
    with pytest.raises(ValueError, match="at least 2 samples, got 1"):
        _ = s.covariance
    with pytest.raises(ValueError, match=r"\(batch, 4\)"):
        s.update(np.ones((3, 5)))
    with pytest.raises(ValueError, match="dims 4 and 3"):
        s.merge(StreamingStats(3))


def test_save_load_stats_roundtrip_and_score_sde_format(tmp_path):
    rng = np.random.default_rng(5)
    feats = rng.standard_normal((40, 8)).astype(np.float32)
    s = StreamingStats(8).update(feats)
    save_stats(tmp_path / "a.npz", *s.stats(), features=feats)
    loaded = load_stats(tmp_path / "a.npz")
    np.testing.assert_array_equal(loaded["mu"], s.mean)
    np.testing.assert_array_equal(loaded["pool_3"], feats)
    assert int(loaded["num_samples"]) == 40
    # score_sde's assets/stats files hold only pool_3.
    np.savez(tmp_path / "b.npz", pool_3=feats)
    loaded = load_stats(tmp_path / "b.npz")
    np.testing.assert_allclose(loaded["sigma"], np.cov(feats.astype(np.float64), rowvar=False),
                               rtol=1e-10, atol=1e-12)
    np.savez(tmp_path / "c.npz", other=feats)
    with pytest.raises(ValueError, match="neither mu/sigma nor pool_3"):
        load_stats(tmp_path / "c.npz")


# ------------------------------------------------------------------------- KID


def _mmd2_brute_force(x, y):
    d = x.shape[1]
    k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return kxx + kyy - 2 * kxy


def test_kid_on_known_kernel_values():
    # Constant sets X = {a}, Y = {b} in 2-D: k(a,a) = k(b,b) = (1/2 + 1)^3, k(a,b) = 1.
    x = np.tile([1.0, 0.0], (5, 1))
    y = np.tile([0.0, 1.0], (4, 1))
    assert kid_from_features(x, y) == pytest.approx(2 * 1.5**3 - 2.0, rel=1e-12)
    assert kid_from_features(x, x) == pytest.approx(0.0, abs=1e-12)


def test_kid_matches_brute_force():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((6, 5)), rng.standard_normal((7, 5)) + 0.3
    assert kid_from_features(x, y) == pytest.approx(_mmd2_brute_force(x, y), rel=1e-10)
    # float32 compute path.
    assert kid_from_features(x, y, dtype=jnp.float32) == pytest.approx(
        _mmd2_brute_force(x, y), rel=1e-4)


def test_kid_block_estimator_matches_tfgan_blocking():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((9, 4))
    # max_block_size 4 -> ceil(10 / 4) = 3 blocks: x rows 3,3,4 and y rows 3,3,3 (TF-GAN).
    ests = [_mmd2_brute_force(x[0:3], y[0:3]), _mmd2_brute_force(x[3:6], y[3:6]),
            _mmd2_brute_force(x[6:10], y[6:9])]
    kid, std = kid_and_std_from_features(x, y, max_block_size=4)
    assert kid == pytest.approx(np.mean(ests), rel=1e-10)
    assert std == pytest.approx(np.std(ests, ddof=1) / math.sqrt(3), rel=1e-10)
    # Random subsets (Binkowski et al.): same draws as a seeded numpy generator.
    kid_s, _ = kid_and_std_from_features(x, y, num_subsets=3, subset_size=5, seed=11)
    g = np.random.default_rng(11)
    ests = []
    for _ in range(3):
        i, j = g.choice(10, 5, replace=False), g.choice(9, 5, replace=False)
        ests.append(_mmd2_brute_force(x[i], y[j]))
    assert kid_s == pytest.approx(np.mean(ests), rel=1e-10)


def test_kid_unbiased_for_identical_distributions():
    rng = np.random.default_rng(8)
    d = 16
    # Identical distributions: E[KID] = 0 exactly (unbiased); mean over replicates ~ 0.
    ests = np.array([kid_from_features(rng.standard_normal((200, d)),
                                       rng.standard_normal((200, d))) for _ in range(20)])
    assert abs(ests.mean()) < 4 * ests.std(ddof=1) / math.sqrt(len(ests))
    # A mean shift is detected: the MMD of N(0, I) and N(0.5, I) is far above the noise.
    shifted = kid_from_features(rng.standard_normal((200, d)),
                                rng.standard_normal((200, d)) + 0.5)
    assert shifted > 10 * ests.std(ddof=1)


def test_kid_validation_errors():
    with pytest.raises(ValueError, match="blocks of fewer than 2 rows"):
        kid_from_features(np.zeros((5, 3)), np.zeros((2, 3)), max_block_size=2)
    with pytest.raises(ValueError, match="subset_size=10"):
        kid_from_features(np.zeros((5, 3)), np.zeros((5, 3)), num_subsets=2, subset_size=10)
    with pytest.raises(ValueError, match="feature dims differ"):
        kid_from_features(np.zeros((5, 3)), np.zeros((5, 4)))


# ------------------------------------------------------------------------- Inception Score


def test_inception_score_known_answers():
    c = 10
    # One-hot conditionals with a uniform marginal: IS = number of classes.
    logits = 60.0 * np.eye(c)[np.arange(100) % c]
    assert inception_score(logits) == pytest.approx(c, rel=1e-12)
    assert inception_score(logits, num_splits=10) == pytest.approx(c, rel=1e-12)
    np.testing.assert_allclose(inception_score_splits(logits, 5), c, rtol=1e-12)
    # 4 splits of 25: the marginal is not uniform in a split, the score drops below c.
    assert np.all(inception_score_splits(logits, 4) < c)
    # Identical conditionals: IS = 1.
    same = np.tile(np.random.default_rng(9).standard_normal(c), (50, 1))
    assert inception_score(same) == pytest.approx(1.0, abs=1e-12)
    # Two classes, p(y|x) in {(a, 1-a), (1-a, a)}: IS = 2 exp(-H(a)).
    a = 0.8
    logit = math.log(a / (1 - a))
    two = np.array([[logit, 0.0], [0.0, logit]] * 10)
    h = -(a * math.log(a) + (1 - a) * math.log(1 - a))
    assert inception_score(two) == pytest.approx(2 * math.exp(-h), rel=1e-12)


def test_inception_score_matches_numpy_reference():
    rng = np.random.default_rng(10)
    logits = 3 * rng.standard_normal((300, 1008))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = p.mean(0)
    ref = math.exp(np.mean(np.sum(p * (np.log(p) - np.log(q)), axis=1)))
    assert inception_score(logits) == pytest.approx(ref, rel=1e-10)
    with pytest.raises(ValueError, match="num_splits=400"):
        inception_score(logits, num_splits=400)


# ------------------------------------------------------------------------- bits/dim


def test_bits_per_dim_offsets():
    d = 3072
    # Uniform density on [0,1]^D (log p = 0) is 8 bits/dim; on [-1,1]^D log p = -D ln 2 -> 8.
    assert bits_per_dim_from_logp(0.0, d) == pytest.approx(8.0)
    assert bits_per_dim_from_logp(-d * math.log(2), d, offset=7.0) == pytest.approx(8.0)
    np.testing.assert_allclose(bits_per_dim_from_logp(np.array([-d * math.log(2)] * 2), d, 0),
                               [1.0, 1.0])
    with pytest.raises(ValueError, match="num_dims"):
        bits_per_dim_from_logp(0.0, 0)


@pytest.mark.parametrize("centered", [False, True])
def test_dataset_bits_per_dim_on_known_discrete_density(centered):
    # x: 4 independent dims over 256 levels with probabilities p. Dequantised, y has the
    # piecewise-constant density prod_d 256 p[floor(256 y_d)], so bits/dim of each example is
    # exactly -log2 P(x) / D and the mean over the data is close to the entropy H(p) in bits.
    rng = np.random.default_rng(12)
    p = rng.dirichlet(np.full(256, 0.3))
    d, n = 4, 512
    x = rng.choice(256, size=(n, d), p=p).astype(np.uint8)
    log_p = jnp.asarray(np.log(p))

    def logp_fn(key, y):
        del key
        y01 = (y + 1.0) / 2.0 if centered else y
        idx = jnp.clip(jnp.floor(y01 * 256.0).astype(jnp.int32), 0, 255)
        logp01 = jnp.sum(log_p[idx] + math.log(256.0), axis=1)
        return logp01 - d * math.log(2.0) if centered else logp01

    batches = [x[:200], x[200:400], x[400:]]
    out = dataset_bits_per_dim(logp_fn, batches, jax.random.key(0), num_repeats=2,
                               centered=centered)
    exact = -np.sum(np.log2(p[x]), axis=1) / d
    np.testing.assert_allclose(out["bpd_per_example"], np.tile(exact, 2), rtol=1e-5)
    entropy_bits = -np.sum(p * np.log2(p))
    se = exact.std() / math.sqrt(n)
    assert abs(out["bpd"] - entropy_bits) < 5 * se


def test_uniform_dequantize_stays_in_bin():
    x = jnp.arange(256, dtype=jnp.uint8)[:, None].repeat(64, axis=1)
    y = uniform_dequantize(jax.random.key(1), x)
    lo = np.asarray(x, np.float64) / 256
    assert np.all(np.asarray(y) >= lo) and np.all(np.asarray(y) <= lo + 1 / 256)
    # Float input level / 255 gives the same bins; centred maps to [-1, 1].
    yf = uniform_dequantize(jax.random.key(1), x.astype(jnp.float32) / 255.0, centered=True)
    np.testing.assert_allclose(np.asarray(yf), 2 * np.asarray(y) - 1, atol=1e-6)


def test_metrics_report():
    rng = np.random.default_rng(13)
    ref_feats = rng.standard_normal((300, 8))
    feats = rng.standard_normal((200, 8)) + 0.2
    ref = {"mu": ref_feats.mean(0), "sigma": np.cov(ref_feats, rowvar=False),
           "pool_3": ref_feats}
    logits = 60.0 * np.eye(5)[np.arange(200) % 5]
    out = metrics_report(feats, logits, ref)
    assert out["fid"] == pytest.approx(fid_from_features(feats, ref_feats), rel=1e-12)
    assert out["is"] == pytest.approx(5.0, rel=1e-12)
    assert out["kid"] == pytest.approx(kid_from_features(ref_feats, feats), rel=1e-12)
    assert out["num_samples"] == 200


def test_metrics_leave_jax_config_alone():
    # Issue #9: the float64 reductions run in numpy; no enable_x64 flips inside the library.
    rng = np.random.default_rng(0)
    f1, f2 = rng.standard_normal((20, 4)), rng.standard_normal((30, 4))
    before = jax.config.read("jax_enable_x64")
    fid_from_features(f1, f2)
    kid_and_std_from_features(f1, f2)
    inception_score(rng.standard_normal((20, 5)))
    assert jax.config.read("jax_enable_x64") == before
    assert jnp.zeros(1).dtype == (jnp.float64 if before else jnp.float32)


def test_image_range_convention():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    u8[0, 0, 0, 0], u8[0, 0, 0, 1] = 0, 255
    np.testing.assert_allclose(images_to_unit_range(u8), u8 / 255.0, rtol=1e-6)
    x = u8 / np.float32(255)
    np.testing.assert_array_equal(images_to_unit_range(x), x)
    # Overshoot within 1e-3 is clipped silently.
    y = x.copy()
    y[0, 0, 0, 0], y[0, 0, 0, 1] = -9e-4, 1 + 9e-4
    np.testing.assert_array_equal(images_to_unit_range(y), x)
    with pytest.raises(ValueError, match=r"found values in \[0, 255\].*divide by 255"):
        images_to_unit_range(u8.astype(np.float32))
    with pytest.raises(ValueError, match=r"found values in \[-1, 1\].*\(x \+ 1\) / 2"):
        images_to_unit_range(2 * x - 1)
    with pytest.raises(ValueError, match=r"found values in \[-0.002, 1\]"):
        check_image_range(np.array([-2e-3, 0.5, 1.0], np.float32))
    with pytest.raises(ValueError, match=r"\[0, 256\]"):
        check_image_range(np.array([0, 256], np.int32))
    with pytest.raises(ValueError, match="dtype bool"):
        check_image_range(np.array([True]))
    # bfloat16 samples count as floats.
    np.testing.assert_array_equal(images_to_unit_range(jnp.asarray(x, jnp.bfloat16)),
                                  np.asarray(jnp.asarray(x, jnp.bfloat16), np.float32))
    with pytest.raises(ValueError, match=r"\[nan, nan\]"):
        images_to_unit_range(np.array([0.5, np.nan], np.float32))
