"""The two FID / IS / KID conventions (issue 23) and the pinned Inception weights.

* ``resize="tf1"`` against TensorFlow's own ``tf.compat.v1.image.resize_bilinear(
  align_corners=False, half_pixel_centers=False)`` (fixture made by
  tests/fixtures/tf1_resize/generate.py with tensorflow-cpu), square and non-square, up and down.
* ``resize="pytorch"`` stays the default and numerically unchanged (closed-form weights).
* Statistics files record their convention; mixing conventions is refused.
* The Inception weights are checked against pytorch-fid's sha256 (explicit override for others).
"""
import os

import numpy as np
import pytest

from score_jax.evaluation import inception as inception_lib
from score_jax.evaluation.inception import (
    PT_INCEPTION_SHA256,
    check_inception_sha256,
    file_sha256,
    preprocess_for_inception,
)
from score_jax.evaluation.inception.preprocess import _bilinear_matrix
from score_jax.evaluation.metrics import check_stats_resize, load_stats, save_stats

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "tf1_resize", "tf1_resize.npz")
CASES = ("sq32_299", "rect28x20_299", "rect64x48_37x53", "down61x47_29x31")


@pytest.fixture(scope="module")
def tf1():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


@pytest.mark.parametrize("case", CASES)
def test_tf1_resize_matches_tensorflow(tf1, case):
    x = tf1[f"{case}_input"]
    oh, ow = (int(v) for v in tf1[f"{case}_size"])
    rows, cols = tf1[f"{case}_rows"], tf1[f"{case}_cols"]
    expected = tf1[f"{case}_output"].astype(np.float64)  # 0..255 grey levels
    if oh == ow == 299:  # the full pipeline (uint8 in, [-1, 1] out) at the Inception size
        out = np.asarray(preprocess_for_inception(x, resize="tf1"), np.float64)
        got = ((out + 1.0) * 127.5)[:, rows, cols, :]
    else:  # non-square outputs: the same separable weights
        mh = _bilinear_matrix(x.shape[1], oh, "tf1").astype(np.float64)
        mw = _bilinear_matrix(x.shape[2], ow, "tf1").astype(np.float64)
        full = np.einsum("ph,nhwc,qw->npqc", mh, x.astype(np.float64), mw)
        got = full[:, rows, cols, :]
    assert np.max(np.abs(got - expected)) <= 2e-3
    # and the pytorch convention is a different resize (no accidental equality)
    if oh == ow == 299:
        other = np.asarray(preprocess_for_inception(x), np.float64)
        assert np.mean(np.abs(((other + 1.0) * 127.5)[:, rows, cols, :] - expected)) > 1.0


def test_resize_weights_closed_form_and_default_unchanged():
    # 2 -> 4 upsampling. pytorch: src = (i + .5)/2 - .5 = [-.25 -> 0, .25, .75, 1.25 -> clamp];
    # tf1: src = i/2 = [0, .5, 1, 1.5 -> clamp].
    pytorch = np.array([[1, 0], [.75, .25], [.25, .75], [0, 1]])
    tf1 = np.array([[1, 0], [.5, .5], [0, 1], [0, 1]])
    np.testing.assert_array_equal(_bilinear_matrix(2, 4), pytorch)
    np.testing.assert_array_equal(_bilinear_matrix(2, 4, "pytorch"), pytorch)
    np.testing.assert_array_equal(_bilinear_matrix(2, 4, "tf1"), tf1)
    # 3 -> 2 downsampling, tf1: src = [0, 1.5]
    np.testing.assert_array_equal(_bilinear_matrix(3, 2, "tf1"), [[1, 0, 0], [0, .5, .5]])
    x = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
    default = np.asarray(preprocess_for_inception(x))
    np.testing.assert_array_equal(default, np.asarray(preprocess_for_inception(x, resize="pytorch")))
    # pinned values of the default pipeline at two output pixels (pytorch-fid formula, by hand):
    # row/col 0 -> src 0 (clamped); row/col 1 -> src = 1.5 * 32 / 299 - .5 (< 0 -> 0)
    np.testing.assert_allclose(default[0, 0, 0], x[0, 0, 0] / 127.5 - 1.0, atol=1e-6)
    s = 150.5 * 32 / 299 - .5  # output pixel 150
    i, lam = int(np.floor(s)), s - np.floor(s)
    v = ((1 - lam) * ((1 - lam) * x[0, i, i].astype(float) + lam * x[0, i, i + 1])
         + lam * ((1 - lam) * x[0, i + 1, i].astype(float) + lam * x[0, i + 1, i + 1]))
    np.testing.assert_allclose(default[0, 150, 150], v / 127.5 - 1.0, atol=2e-6)
    with pytest.raises(ValueError, match=r"resize must be one of \('pytorch', 'tf1'\), got 'tf2'"):
        preprocess_for_inception(x, resize="tf2")


def test_stats_record_their_convention_and_mixing_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((20, 4))
    mu, sigma = feats.mean(0), np.cov(feats, rowvar=False)
    save_stats(tmp_path / "tf1.npz", mu, sigma, resize="tf1")
    save_stats(tmp_path / "default.npz", mu, sigma)
    assert load_stats(tmp_path / "tf1.npz")["resize"] == "tf1"
    ref = load_stats(tmp_path / "default.npz")
    assert ref["resize"] == "pytorch"
    check_stats_resize(ref, "pytorch")
    with pytest.raises(ValueError, match="computed with the 'pytorch' Inception resize but the "
                                         "samples are scored with 'tf1'"):
        check_stats_resize(ref, "tf1")
    with pytest.raises(ValueError, match="resize must be one of"):
        save_stats(tmp_path / "bad.npz", mu, sigma, resize="bicubic")
    # score_sde's layout (pool_3 only): computed in the TF1 graph
    np.savez(tmp_path / "score_sde.npz", pool_3=feats.astype(np.float32))
    assert load_stats(tmp_path / "score_sde.npz")["resize"] == "tf1"
    # mu / sigma without the key: unknown, refused unless stated
    np.savez(tmp_path / "old.npz", mu=mu, sigma=sigma)
    with pytest.raises(ValueError, match="do not record their Inception resize convention"):
        load_stats(tmp_path / "old.npz")
    assert load_stats(tmp_path / "old.npz", resize_if_missing="tf1")["resize"] == "tf1"


def test_stats_cli_stores_the_convention(tmp_path, monkeypatch):
    from score_jax.evaluation import stats as stats_cli

    calls = []

    def get_fn(path, batch_size, resize="pytorch", sha256=None):
        calls.append((resize, sha256))
        return lambda im: (im.reshape(len(im), -1)[:, :2048].astype(np.float32) / 255,
                           np.zeros((len(im), 1008), np.float32))

    monkeypatch.setattr(inception_lib, "get_inception_fn", get_fn)
    np.savez(tmp_path / "d.npz", images=np.random.default_rng(0).integers(
        0, 256, (8, 30, 30, 3), dtype=np.uint8))
    stats_cli.main(["--images", str(tmp_path / "d.npz"), "--inception", "w.npz", "--out",
                    str(tmp_path / "s.npz"), "--resize", "tf1", "--no-progress"])
    stats_cli.main(["--images", str(tmp_path / "d.npz"), "--inception", "w.npz", "--out",
                    str(tmp_path / "p.npz"), "--inception-sha256", "none", "--no-progress"])
    assert calls == [("tf1", PT_INCEPTION_SHA256), ("pytorch", None)]
    assert load_stats(tmp_path / "s.npz")["resize"] == "tf1"
    assert load_stats(tmp_path / "p.npz")["resize"] == "pytorch"


def test_inception_sha256_check(tmp_path):
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    path.write_bytes(b"not the FID weights")
    found = file_sha256(str(path))
    assert PT_INCEPTION_SHA256.startswith("6726825d")  # the file name's prefix
    with pytest.raises(ValueError, match=f"has sha256 {found}, expected sha256 "
                                         f"{PT_INCEPTION_SHA256}"):
        check_inception_sha256(str(path))
    check_inception_sha256(str(path), found)  # explicit digest of another file
    check_inception_sha256(str(path), found.upper())
    check_inception_sha256(str(path), None)  # explicit skip
    with pytest.raises(ValueError, match="64 hex digits"):
        check_inception_sha256(str(path), "6726825d")
    with pytest.raises(FileNotFoundError, match="pytorch-fid"):
        check_inception_sha256(str(tmp_path / "absent.pth"))


# ---------------------------------------------------------------------------------------------
# python -m score_jax.evaluation.score
# ---------------------------------------------------------------------------------------------
_PROJ = np.random.default_rng(7).standard_normal((6 * 6 * 3, 16))


def _fake_features(images):
    """A fixed projection of the uint8 pixels (stands in for the Inception; 16 features)."""
    assert images.dtype == np.uint8
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    pool = np.tanh(x @ _PROJ).astype(np.float32)
    logits = (x @ _PROJ[:, :10]).astype(np.float32)
    return pool, logits


@pytest.fixture
def fake_get_fn(monkeypatch):
    calls = []

    def get_fn(path, batch_size, resize="pytorch", sha256=None):
        calls.append((path, resize, sha256))
        return _fake_features

    monkeypatch.setattr(inception_lib, "get_inception_fn", get_fn)
    return calls


def test_score_cli_floor_quantisation_reference_images_and_stats(tmp_path, fake_get_fn):
    import json

    from score_jax.evaluation import score as score_cli
    from score_jax.evaluation.metrics import metrics_report

    rng = np.random.default_rng(3)
    samples = rng.uniform(0, 1, (30, 6, 6, 3)).astype(np.float32)
    ref = rng.integers(0, 256, (40, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", samples=samples)
    np.savez(tmp_path / "ref.npz", images=ref)
    with open(tmp_path / "metrics.json", "w") as f:  # sample.py's metrics stay
        json.dump({"nfe": 7}, f)
    out = score_cli.main(["--samples", str(tmp_path / "samples.npz"), "--ref-images",
                          str(tmp_path / "ref.npz"), "--inception", "w.pth", "--resize", "tf1"])
    # independent: score_sde's quantisation by hand, metrics_report against the reference rows
    floored = np.clip(samples.astype(np.float64) * 255, 0, 255).astype(np.uint8)
    rpool, _ = _fake_features(ref)
    want = metrics_report(*_fake_features(floored), {
        "mu": rpool.mean(0), "sigma": np.cov(rpool.astype(np.float64), rowvar=False),
        "pool_3": rpool})
    assert out["fid"] == pytest.approx(want["fid"], rel=1e-6)
    assert out["is"] == pytest.approx(want["is"], rel=1e-6)
    assert out["kid"] == pytest.approx(want["kid"], rel=1e-6, abs=1e-9)
    assert fake_get_fn[-1] == ("w.pth", "tf1", PT_INCEPTION_SHA256)
    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    assert written["nfe"] == 7 and written["fid"] == pytest.approx(out["fid"])
    assert written["resize"] == "tf1" and written["quantize"] == "floor"
    # --quantize round differs from floor on these floats
    rounded = score_cli.main(["--samples", str(tmp_path / "samples.npz"), "--ref-images",
                              str(tmp_path / "ref.npz"), "--inception", "w.pth", "--resize",
                              "tf1", "--quantize", "round", "--out", str(tmp_path / "r.json")])
    assert rounded["fid"] != out["fid"]
    # the same reference as a statistics file gives the same numbers; the wrong convention is
    # refused before anything is computed
    save_stats(tmp_path / "ref_stats.npz", rpool.mean(0),
               np.cov(rpool.astype(np.float64), rowvar=False), features=rpool, resize="tf1")
    again = score_cli.main(["--samples", str(tmp_path / "samples.npz"), "--ref-stats",
                            str(tmp_path / "ref_stats.npz"), "--inception", "w.pth", "--resize",
                            "tf1", "--out", str(tmp_path / "s.json")])
    assert again["fid"] == pytest.approx(out["fid"], rel=1e-6)
    n_calls = len(fake_get_fn)
    with pytest.raises(ValueError, match="computed with the 'tf1' Inception resize"):
        score_cli.main(["--samples", str(tmp_path / "samples.npz"), "--ref-stats",
                        str(tmp_path / "ref_stats.npz"), "--inception", "w.pth"])
    assert len(fake_get_fn) == n_calls
    with pytest.raises(ValueError, match=r"float images must lie in \[0, 1\].*centred"):
        np.savez(tmp_path / "centred.npz", samples=samples * 2 - 1)
        score_cli.main(["--samples", str(tmp_path / "centred.npz"), "--ref-stats",
                        str(tmp_path / "ref_stats.npz"), "--inception", "w.pth"])


def test_score_cli_accepts_both_spellings(tmp_path, fake_get_fn):
    """``--ref_stats`` (sample.py's spelling, the documented one) and ``--ref-stats`` give the
    same numbers; so do ``--max_images`` / ``--max-images``."""
    from score_jax.evaluation import score as score_cli

    rng = np.random.default_rng(4)
    np.savez(tmp_path / "samples.npz", samples=rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8))
    rpool, _ = _fake_features(rng.integers(0, 256, (30, 6, 6, 3), dtype=np.uint8))
    save_stats(tmp_path / "ref.npz", rpool.mean(0), np.cov(rpool.astype(np.float64), rowvar=False),
               features=rpool, resize="pytorch")
    common = ["--samples", str(tmp_path / "samples.npz"), "--inception", "w.pth"]
    a = score_cli.main(common + ["--ref_stats", str(tmp_path / "ref.npz"), "--max_images=15",
                                 "--out", str(tmp_path / "a.json")])
    b = score_cli.main(common + ["--ref-stats", str(tmp_path / "ref.npz"), "--max-images=15",
                                 "--out", str(tmp_path / "b.json")])
    assert a["fid"] == b["fid"] and a["reference"] == b["reference"]


def test_score_cli_missing_inception_is_one_line(tmp_path, capsys):
    """A missing Inception file: one ``error:`` line naming it, a non-zero exit, no traceback."""
    from score_jax.evaluation import score as score_cli

    np.savez(tmp_path / "samples.npz", samples=np.zeros((4, 6, 6, 3), np.uint8))
    np.savez(tmp_path / "ref.npz", images=np.zeros((4, 6, 6, 3), np.uint8))
    absent = str(tmp_path / "pt_inception.pth")
    with pytest.raises(SystemExit) as e:
        score_cli.cli(["--samples", str(tmp_path / "samples.npz"), "--ref_images",
                       str(tmp_path / "ref.npz"), "--inception", absent])
    msg = str(e.value.code)
    assert msg.startswith("error: FileNotFoundError: Inception weights not found at")
    assert absent in msg and "\n" not in msg and "Traceback" not in capsys.readouterr().err
