"""The reference-statistics command: inputs (.npz, PNG folder, TFDS), outputs, errors.

The Inception itself is tested in test_evaluation_inception.py; here ``get_inception_fn`` is
replaced by a cheap deterministic feature map so the command's plumbing is checked exactly.
"""

import numpy as np
import pytest
from PIL import Image

from score_jax.evaluation import inception as inception_lib
from score_jax.evaluation import load_stats
from score_jax.evaluation import stats as stats_cli

_PROJ = np.random.default_rng(0).standard_normal((3, 2048))


def _fake_features(images):
    x = np.asarray(images, np.float64).mean(axis=(1, 2)) / 255.0  # (N, 3)
    pool = np.tanh(x @ _PROJ + 0.01 * np.arange(2048))
    return pool.astype(np.float32), np.zeros((len(images), 1008), np.float32)


@pytest.fixture
def fake_inception(monkeypatch):
    calls = []

    def get_fn(path, batch_size, resize="pytorch", sha256=None):
        calls.append((path, batch_size))
        return _fake_features

    monkeypatch.setattr(inception_lib, "get_inception_fn", get_fn)
    return calls


def _images(n=23, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 12, 10, 3), dtype=np.uint8)


def test_stats_from_npz(tmp_path, fake_inception):
    images = _images()
    np.savez(tmp_path / "data.npz", images=images)
    out = tmp_path / "stats" / "ref.npz"
    stats_cli.main(["--images", str(tmp_path / "data.npz"), "--inception", "w.pth",
                    "--out", str(out), "--batch-size", "10", "--save-features",
                    "--no-progress"])
    ref = load_stats(out)
    feats = _fake_features(images)[0].astype(np.float64)
    np.testing.assert_allclose(ref["mu"], feats.mean(0), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(ref["sigma"], np.cov(feats, rowvar=False), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(ref["pool_3"], feats.astype(np.float32))
    assert int(ref["num_samples"]) == 23
    assert fake_inception == [("w.pth", 8)]  # 10 rounded down to a multiple of 8 devices


def test_stats_from_png_folder_nchw_and_limit(tmp_path, fake_inception):
    images = _images(9, seed=1)
    (tmp_path / "pngs" / "sub").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(tmp_path / "pngs" / ("sub" if i % 2 else "") / f"{i:03d}.png")
    out = tmp_path / "ref.npz"
    stats_cli.main(["--images", str(tmp_path / "pngs"), "--inception", "w.npz", "--out",
                    str(out), "--max-images", "7", "--no-progress"])
    files = stats_cli.list_image_files(str(tmp_path / "pngs"))[:7]
    loaded = np.stack([np.asarray(Image.open(f)) for f in files])
    ref = load_stats(out)
    feats = _fake_features(loaded)[0].astype(np.float64)
    np.testing.assert_allclose(ref["mu"], feats.mean(0), rtol=1e-6, atol=1e-7)
    assert int(ref["num_samples"]) == 7 and "pool_3" not in ref
    # NCHW arrays are transposed to NHWC.
    np.savez(tmp_path / "nchw.npz", x=images.transpose(0, 3, 1, 2))
    np.testing.assert_array_equal(stats_cli.load_npz_images(str(tmp_path / "nchw.npz")), images)


def test_stats_errors(tmp_path, fake_inception):
    np.savez(tmp_path / "float.npz", images=np.zeros((4, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="must be uint8"):
        stats_cli.load_npz_images(str(tmp_path / "float.npz"))
    np.savez(tmp_path / "two.npz", a=_images(2), b=_images(2))
    with pytest.raises(ValueError, match="choose one with --key"):
        stats_cli.load_npz_images(str(tmp_path / "two.npz"))
    (tmp_path / "mixed").mkdir()
    Image.fromarray(_images(1)[0]).save(tmp_path / "mixed" / "a.png")
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(tmp_path / "mixed" / "b.png")
    with pytest.raises(ValueError, match=r"b.png' has shape \(5, 5, 3\)"):
        stats_cli.main(["--images", str(tmp_path / "mixed"), "--inception", "w", "--out",
                        str(tmp_path / "o.npz"), "--no-progress"])
    np.savez(tmp_path / "one.npz", images=_images(1))
    with pytest.raises(ValueError, match="at least 2 images"):
        stats_cli.main(["--images", str(tmp_path / "one.npz"), "--inception", "w", "--out",
                        str(tmp_path / "o.npz"), "--no-progress"])


def test_tfds_not_prepared_fails_clearly(tmp_path, fake_inception):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(RuntimeError, match="'cifar10' is not prepared"):
        stats_cli.main(["--tfds", "cifar10", "--tfds-data-dir", str(tmp_path), "--inception",
                        "w", "--out", str(tmp_path / "o.npz"), "--no-progress"])


def test_stats_input_ranges(tmp_path):
    u8 = _images(3)
    # Floats are refused whatever their range, with the range found in the message.
    for arr, found in ((u8.astype(np.float32), r"\[\d+, 255\]"),
                       (u8 / np.float32(127.5) - 1, r"\[-1, 1\]")):
        np.savez(tmp_path / "f.npz", images=arr)
        with pytest.raises(ValueError, match=r"must be uint8.*values in " + found):
            stats_cli.load_npz_images(str(tmp_path / "f.npz"))
    # Integer arrays holding 8-bit levels are accepted as uint8; others refused with the range.
    np.savez(tmp_path / "i.npz", images=u8.astype(np.int64))
    loaded = stats_cli.load_npz_images(str(tmp_path / "i.npz"))
    assert loaded.dtype == np.uint8
    np.testing.assert_array_equal(loaded, u8)
    np.savez(tmp_path / "big.npz", images=u8.astype(np.int32) * 4)
    with pytest.raises(ValueError, match=r"\[0, 255\], found values in \[\d+, 10\d\d\]"):
        stats_cli.load_npz_images(str(tmp_path / "big.npz"))
