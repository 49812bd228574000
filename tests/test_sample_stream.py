"""Streamed sampling (``sample_from_checkpoint(keep_images=False)``, ``sample.py
--nokeep_images``, the default above 1 GiB of samples): the same samples.npz, grid, non-finite
count and FID / IS / KID as the in-memory path bit for bit, with host memory bounded by a batch;
the streamed .npz writer / reader; bits/dim of the folder / npz recipes (data.path)."""
import json
import os
import tracemalloc

import jax
import numpy as np
import optax
import pytest
from test_train_helpers import TinyNet, tiny_config

from score_jax import sample_io, sample_lib
from score_jax import train_step as ts
from score_jax.checkpoint import save_variables
from score_jax.evaluation import inception as inception_lib
from score_jax.evaluation import score as score_cli
from score_jax.evaluation.metrics import metrics_report


class _FakeInception:
    """A fixed projection of the uint8 pixels (``dim`` features, 10 logits) that chunks its
    input like ``InceptionFeatures`` and records the row count of every call it makes."""

    def __init__(self, batch_size, dim=16):
        self.batch_size, self.dim, self.calls = batch_size, dim, []

    def __call__(self, images):
        assert images.dtype == np.uint8
        pools, logits = [], []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            self.calls.append(len(chunk))
            x = chunk.reshape(len(chunk), -1).astype(np.float64) / 255.0
            proj = np.random.default_rng(7).standard_normal((x.shape[1], self.dim))
            pools.append(np.tanh(x @ proj).astype(np.float32))
            logits.append((x @ proj[:, :10]).astype(np.float32))
        return np.concatenate(pools), np.concatenate(logits)


@pytest.fixture
def fakes(monkeypatch):
    made = []

    def get_fn(path, batch_size, resize="pytorch", sha256=None):
        made.append(_FakeInception(batch_size))
        return made[-1]

    monkeypatch.setattr(inception_lib, "get_inception_fn", get_fn)
    return made


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A converted-checkpoint file of TinyNet's initial parameters (8 x 8 x 1 digits config)."""
    config = tiny_config()
    config.sampling.num_steps = 2
    config.sampling.batch_size = 8
    params = ts.init_state(jax.random.key(1), TinyNet(), optax.identity(),
                           (8, 8, 1)).params
    path = str(tmp_path_factory.mktemp("ckpt") / "tiny.msgpack")
    save_variables({"params": jax.device_get(params)}, path)
    return config, path


def test_streamed_samples_equal_the_in_memory_ones(tiny_checkpoint, tmp_path, fakes):
    """20 samples in batches of 8 (the last cut to 4), scored with an Inception of batch 16:
    the streamed run writes the same samples.npz and samples.png, counts the same non-finite
    samples, makes the same Inception calls (16 + 4 rows) and writes the same FID / IS / KID as
    the in-memory run, which keeps the images (``out["images"]``) and the streamed one does
    not."""
    config, ckpt = tiny_checkpoint
    ref = np.random.default_rng(0).integers(0, 256, (9, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=ref)
    (tmp_path / "w.pth").write_bytes(b"not read: the Inception is faked")
    fid = sample_lib.FidSpec(inception=str(tmp_path / "w.pth"), ref_images=str(tmp_path / "ref.npz"),
                             inception_sha256=None, batch_size=16)
    kw = dict(checkpoint=ckpt, model=TinyNet(), num_samples=20, seed=3, fid=fid)
    mem = sample_lib.sample_from_checkpoint(config, output_dir=str(tmp_path / "m"),
                                            keep_images=True, **kw)
    streamed = sample_lib.sample_from_checkpoint(config, output_dir=str(tmp_path / "s"),
                                                 keep_images=False, **kw)
    assert mem["images_kept"] and mem["images"].shape == (20, 8, 8, 1)
    assert not streamed["images_kept"] and streamed["images"] is None
    assert [f.calls for f in fakes] == [[9, 16, 4], [16, 4, 9]]  # ref (9 rows), samples
    a = np.load(tmp_path / "m" / "samples.npz")["samples"]
    b = np.load(tmp_path / "s" / "samples.npz")["samples"]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, np.round(np.clip(mem["images"], 0, 1) * 255).astype(np.uint8))
    assert (tmp_path / "m" / "samples.png").read_bytes() == (tmp_path / "s" / "samples.png").read_bytes()
    for k in ("nfe", "num_nonfinite", "num_samples", "npz"):
        assert (streamed[k] == mem[k]) if k != "npz" else streamed[k].endswith("s/samples.npz"), k
    with open(tmp_path / "m" / "metrics.json") as f:
        m_mem = json.load(f)
    with open(tmp_path / "s" / "metrics.json") as f:
        m_str = json.load(f)
    del m_mem["sample_seconds"], m_str["sample_seconds"]
    m_mem = {k: v for k, v in m_mem.items() if not k.startswith("digits_")}  # in memory only
    # FID / IS / KID bit for bit, nfe, the non-finite count
    assert json.dumps(m_str, sort_keys=True) == json.dumps(m_mem, sort_keys=True)
    assert {"fid", "is", "kid", "kid_std", "num_nonfinite", "resize", "quantize"} <= set(m_str)
    # and both equal the numbers of the floor-quantised samples scored independently
    floored = np.floor(np.clip(mem["images"].astype(np.float64) * 255, 0, 255)).astype(np.uint8)
    fake = _FakeInception(16)
    pool, logits = fake(floored)
    rpool, _ = fake(ref)
    want = metrics_report(pool, logits, {"mu": rpool.mean(0), "sigma": np.cov(rpool, rowvar=False),
                                         "pool_3": rpool})
    assert m_str["fid"] == pytest.approx(want["fid"], rel=1e-6)  # np.cov vs StreamingStats
    with open(tmp_path / "s" / "settings.json") as f:
        assert json.load(f)["num_samples"] == 20


def test_keep_images_default_is_one_gib_of_float32():
    assert sample_lib.keeps_images(None, 50_000, (32, 32, 3))  # CIFAR-10: 614 MB
    assert not sample_lib.keeps_images(None, 50_000, (256, 256, 3))  # DiT 256 px: 39 GB
    assert sample_lib.keeps_images(None, 1 << 28, (1,)) and not sample_lib.keeps_images(
        None, (1 << 28) + 1, (1,))
    assert sample_lib.keeps_images(True, 50_000, (256, 256, 3))
    assert not sample_lib.keeps_images(False, 2, (1,))


def _stream_peak(n, tmp_path, monkeypatch):
    """Peak traced host memory (tracemalloc: numpy's allocations) of `_stream_samples` on ``n``
    float32 samples of 64 x 64 x 3 in batches of 10, with FID (a stand-in Inception of batch
    32); returns (peak bytes, the output, the first batch's first rows, Inception calls)."""
    bs, shape = 10, (64, 64, 3)
    monkeypatch.setattr(sample_lib, "GRID_MAX_SAMPLES", 4)
    first = []

    def batches():
        for i in range(n // bs):
            x = np.random.default_rng(i).random((bs,) + shape, dtype=np.float32)
            if i == 0:
                first.append(x[:2].copy())
            yield x, 5

    calls = []
    monkeypatch.setattr(inception_lib, "get_inception_fn",
                        lambda *a, batch_size, **k: calls.append(_FakeInception(batch_size))
                        or calls[-1])
    d = tmp_path / f"n{n}"
    d.mkdir()
    (d / "w.pth").write_bytes(b"x")
    ref = np.zeros((4,) + shape, np.uint8) + 7
    fid = sample_lib.FidSpec(inception=str(d / "w.pth"), ref_images="ref.npz",
                             inception_sha256=None, batch_size=32)
    tracemalloc.start()
    try:
        out = sample_lib._stream_samples(batches(), out_dir=str(d / "o"), n=n, nrow=None,
                                         scale=1, fid=fid, prepared_fid=("pytorch", None, ref, None))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, out, first[0], calls[0].calls


def test_stream_holds_a_batch_not_the_samples(monkeypatch, tmp_path):
    """Streaming 400 samples (19.7 MB as one float32 array) peaks at about what 100 samples
    (4.9 MB) take: a batch, the Inception's chunk and the grid, not the samples; the file holds
    all 400, the Inception got whole batches of 32 then the rest."""
    peak_small, _, _, _ = _stream_peak(100, tmp_path, monkeypatch)
    peak, out, first, calls = _stream_peak(400, tmp_path, monkeypatch)
    total = 400 * 64 * 64 * 3 * 4
    assert peak < 1.25 * peak_small and peak < total / 2, (peak_small, peak, total)
    assert out["nfe"] == 5 and out["num_nonfinite"] == 0 and np.isfinite(out["fid_metrics"]["fid"])
    npz = str(tmp_path / "n400" / "o" / "samples.npz")
    assert sample_io.npz_array_shape(npz, "samples") == (400, 64, 64, 3)
    np.testing.assert_array_equal(next(sample_io.iter_npz_rows(npz, "samples", 2)),
                                  sample_io.to_uint8(first))
    assert calls == [32] * 12 + [16] + [4]  # whole Inception batches, the rest, the reference


def test_npz_array_writer_and_row_reader(tmp_path):
    """The streamed member reads back with np.load; iter_npz_rows reads np.savez /
    np.savez_compressed / streamed files in batches; a short or overfull write is refused and
    leaves no file."""
    x = np.arange(7 * 3 * 2, dtype=np.int16).reshape(7, 3, 2)
    with sample_io.NpzArrayWriter(str(tmp_path / "a.npz"), "x", x.shape, x.dtype) as w:
        w.write(x[:4])
        w.write(x[4:])
        w.close()
    np.testing.assert_array_equal(np.load(tmp_path / "a.npz")["x"], x)
    np.savez(tmp_path / "b.npz", x=x, y=x[:1])
    np.savez_compressed(tmp_path / "c.npz", x=x)
    for name in ("a", "b", "c"):
        parts = list(sample_io.iter_npz_rows(str(tmp_path / f"{name}.npz"), "x", 3))
        assert [len(p) for p in parts] == [3, 3, 1]
        np.testing.assert_array_equal(np.concatenate(parts), x)
    with pytest.raises(ValueError, match=r"has no array 'z' \(arrays: \['x', 'y'\]\)"):
        next(sample_io.iter_npz_rows(str(tmp_path / "b.npz"), "z", 3))
    w = sample_io.NpzArrayWriter(str(tmp_path / "d.npz"), "x", x.shape, x.dtype)
    with pytest.raises(ValueError, match="exceed the 7"):
        w.write(np.concatenate([x, x[:1]]))
    with pytest.raises(ValueError, match="do not fit"):
        w.write(x.astype(np.int32))
    w.write(x[:2])
    with pytest.raises(ValueError, match="got 2 rows of 7"):
        w.close()
    assert not list(tmp_path.glob("d.npz*"))


def test_inception_stream_makes_the_calls_of_one_array():
    """Batches of 5, 1, 7, 2 rows through InceptionStream(batch 4): calls of 4, 4, 4 rows then
    the rest (3), the chunks of one call on all 15 rows, and the same features."""
    x = np.random.default_rng(0).integers(0, 256, (15, 4, 4, 1), dtype=np.uint8)
    whole = _FakeInception(4)
    want = whole(x)
    fake = _FakeInception(4)
    stream = score_cli.InceptionStream(fake)
    for a, b in ((0, 5), (5, 6), (6, 13), (13, 15)):
        stream.add(x[a:b])
    got = stream.features()
    assert fake.calls == whole.calls == [4, 4, 4, 3]
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    with pytest.raises(ValueError, match="batch_size=None must be a positive int"):
        score_cli.InceptionStream(lambda im: im)


def test_bpd_reads_the_npz_recipe_at_data_path(tiny_checkpoint, tmp_path, monkeypatch):
    """sample.py --mode=bpd with data.dataset=npz reads config.data.path: the likelihood sees
    the dequantised test_images of that file (a stand-in logp: no ODE is compiled)."""
    config, ckpt = tiny_checkpoint
    config = config.copy_and_resolve_references()
    rng = np.random.default_rng(0)
    test = rng.integers(0, 256, (8, 8, 8, 1), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", train_images=test[:1], test_images=test)
    config.data.dataset = "npz"
    config.data.path = str(tmp_path / "d.npz")
    config.eval.batch_size = 8
    seen = []

    def fake_logp_fn(built, *, rtol, atol, eps=None):
        def logp_fn(key, params, y):
            seen.append(np.asarray(y))
            return -jax.numpy.sum(y.reshape(len(y), -1) ** 2, axis=1), 3
        return logp_fn

    monkeypatch.setattr(sample_lib, "make_logp_fn", fake_logp_fn)
    out = sample_lib.bpd_from_checkpoint(config, checkpoint=ckpt, model=TinyNet(),
                                         output_dir=str(tmp_path / "o"))
    assert out["num_examples"] == 8 and out["dataset"] == "npz" and out["mean_nfe"] == 3
    y = seen[0]
    x = (y + 1.0) / 2.0 if config.data.centered else y  # back to [0, 1]: (x * 255 + u) / 256
    np.testing.assert_array_equal(np.floor(x * 256.0).astype(np.uint8), test)
    assert os.path.isfile(tmp_path / "o" / "bpd.json")


def test_score_and_stats_clis_read_the_samples_in_batches(tmp_path, fakes, monkeypatch):
    """``python -m score_jax.evaluation.score`` on 300 float samples (more than its 256-row read
    batch) scores them with the Inception calls of one array (batch 16), the numbers of
    `score_images` on `load_samples`' whole array bit for bit; iter_samples gives
    load_samples' rows; the stats CLI reads an .npz in batches too (no whole-array load)."""
    from score_jax.evaluation import stats as stats_cli

    rng = np.random.default_rng(5)
    samples = rng.uniform(0, 1, (300, 4, 4, 3)).astype(np.float32)
    ref = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", samples=samples, other=samples[:1])
    np.savez(tmp_path / "ref.npz", images=ref)
    whole = score_cli.load_samples(str(tmp_path / "samples.npz"))
    n, batches = score_cli.iter_samples(str(tmp_path / "samples.npz"), batch_size=128,
                                        max_images=290)
    parts = list(batches)
    assert n == 290 and [len(p) for p in parts] == [128, 128, 34]
    np.testing.assert_array_equal(np.concatenate(parts), whole[:290])
    got = score_cli.main(["--samples", str(tmp_path / "samples.npz"), "--ref_images",
                          str(tmp_path / "ref.npz"), "--inception", "w.pth", "--batch_size", "16",
                          "--inception_sha256", "none", "--out", str(tmp_path / "m.json")])
    assert fakes[-1].calls == [16] * 18 + [12] + [16, 4]  # the samples, then the reference
    want = score_cli.score_images(whole, _FakeInception(16), ref_images=ref, resize="pytorch")
    for k in ("fid", "is", "kid", "num_samples"):
        assert got[k] == want[k], k
    monkeypatch.setattr(stats_cli, "load_npz_images", None)  # the CLI must not load it whole
    monkeypatch.setattr(inception_lib, "get_inception_fn",  # the stats keep 2048 features
                        lambda *a, batch_size, **k: fakes.append(_FakeInception(batch_size, 2048))
                        or fakes[-1])
    np.savez(tmp_path / "u8.npz", images=(samples * 255).astype(np.uint8))
    stats_cli.main(["--images", str(tmp_path / "u8.npz"), "--inception", "w", "--out",
                    str(tmp_path / "st.npz"), "--inception_sha256", "none", "--batch_size", "16",
                    "--max_images", "100", "--no_progress"])
    assert fakes[-1].calls == [16] * 6 + [4]
    assert int(np.load(tmp_path / "st.npz")["num_samples"]) == 100


def test_sample_cli_keep_images_flag(capsys):
    """sample.py's --keep_images: default None (the 1 GiB rule), both spellings of the negation
    reach --nokeep_images, and a streamed digits run says why the digits metric is missing."""
    from absl import flags

    import _cli
    import sample  # the CLI module (flags defined at import, not parsed)

    assert flags.FLAGS["keep_images"].default is None
    assert _cli.respell_argv(["sample.py", "--no-keep-images"]) == ["sample.py", "--nokeep_images"]
    assert _cli.respell_argv(["sample.py", "--keep-images"]) == ["sample.py", "--keep_images"]
    with pytest.raises(SystemExit, match="--keep_images is given twice"):  # both: contradictory
        _cli.respell_argv(["sample.py", "--no-keep-images", "--keep-images"])
    sample._print_digits_metrics(tiny_config(), {"png": "p.png", "images_kept": False})
    assert "digits metric skipped: the samples were streamed" in capsys.readouterr().out
