"""The grain training input (score_jax.data_loader), prefetch to device (parallel), ArrayRecord
files and the TFRecord -> ArrayRecord converter (score_jax.records)."""
import json
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from score_jax import data as data_lib
from score_jax import data_loader, parallel, records

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _digits(batch_size=16, **kw):
    kw = dict(dict(training=True, random_flip=True, uniform_dequantization=True, seed=3), **kw)
    return data_lib.get_dataset("DIGITS", split="train", batch_size=batch_size, image_size=8,
                                process_index=0, process_count=1, **kw)


def _take(it, n):
    out = [next(it) for _ in range(n)]
    it.close()
    return out


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


# ----------------------------------------------------------------------------------------------
# grain pipeline: deterministic in (seed, step), any worker count, O(1) resume
# ----------------------------------------------------------------------------------------------
def test_grain_in_process_is_the_pipeline_of_seed_and_step():
    p = _digits()
    g = data_loader.GrainPipeline(p, num_workers=0)
    spe = p.steps_per_epoch  # 1617 // 16 = 101: cross an epoch boundary
    got = _take(g.iterate(spe - 2), 4)
    _assert_batches_equal(got, [p.batch(s) for s in range(spe - 2, spe + 2)])
    # every step's batch is a fresh permutation slice: the epochs differ
    assert not np.array_equal(p.batch(0)["label"], p.batch(spe)["label"])
    # resume at k == the uninterrupted stream from k on (no re-reading: the range starts at k)
    full = _take(g.iterate(0), 6)
    _assert_batches_equal(_take(g.iterate(4), 2), full[4:])
    # another seed, another stream
    other = _take(data_loader.GrainPipeline(_digits(seed=4)).iterate(0), 1)
    assert not np.array_equal(other[0]["image"], full[0]["image"])


def test_grain_worker_processes_give_the_same_batches():
    """One worker process (a real grain mp_prefetch): the batches of steps 7.. are the in-process
    ones, so a run may change its worker count between a save and a resume."""
    p = _digits()
    got = _take(data_loader.GrainPipeline(p, num_workers=1, worker_buffer=1).iterate(7), 3)
    _assert_batches_equal(got, [p.batch(s) for s in (7, 8, 9)])


@pytest.mark.slow
def test_grain_two_workers_same_batches():
    p = _digits()
    got = _take(data_loader.GrainPipeline(p, num_workers=2).iterate(3), 5)
    _assert_batches_equal(got, [p.batch(s) for s in range(3, 8)])


def test_iterator_state_round_trip_and_mismatches():
    g = data_loader.GrainPipeline(_digits(), num_workers=0)
    state = json.loads(json.dumps(g.state(12)))  # what the checkpoint's JSON record holds
    assert state["next_index"] == 12 and state["seed"] == 3 and state["batch_size"] == 16
    assert g.resume_step(state, 12) == (12, [])
    assert g.resume_step(None, 5) == (5, [])  # a checkpoint written before the grain pipeline
    with pytest.raises(ValueError, match="data iterator is at step 12, its train state at step 11"):
        g.resume_step(state, 11)
    other = data_loader.GrainPipeline(_digits(batch_size=8, seed=9))
    _, diffs = other.resume_step(state, 12)
    assert diffs == ["seed: checkpoint 3, now 9", "batch_size: checkpoint 16, now 8"]


@pytest.mark.parametrize("value", [-1, 1.5, True, "2"])
def test_bad_num_workers_named(value):
    with pytest.raises(ValueError, match=r"num_workers=.* must be an integer >= 0"):
        data_loader.GrainPipeline(_digits(), num_workers=value)


def test_shard_options_of_this_host_and_explicit():
    s = data_loader.shard_options()
    assert (s.shard_index, s.shard_count, s.drop_remainder) == (0, 1, True)
    s = data_loader.shard_options(2, 4)
    assert (s.shard_index, s.shard_count) == (2, 4)
    with pytest.raises(ValueError, match="shard index 4 of count 4 is invalid"):
        data_loader.shard_options(4, 4)


def test_per_host_shards_are_disjoint_and_cover_the_data():
    """Two hosts (explicit shard options): contiguous halves (tfds.even_splits), each with its own
    deterministic stream; together one epoch of each host covers every record once."""
    x = np.arange(40, dtype=np.float32).reshape(40, 1, 1, 1) / 40.0
    seen = []
    for i in range(2):
        s = data_loader.shard_options(i, 2)
        sl = data_lib.process_slice(len(x), s.shard_index, s.shard_count)
        p = data_lib.RandomAccessPipeline(data_lib.ArraySource(x[sl]), 4, seed=0,
                                          process_index=s.shard_index)
        g = data_loader.GrainPipeline(p)
        batches = _take(g.iterate(0), p.steps_per_epoch)
        seen.append(np.concatenate([b["image"].ravel() for b in batches]))
    assert set(np.round(seen[0] * 40).astype(int)) == set(range(20))
    assert set(np.round(seen[1] * 40).astype(int)) == set(range(20, 40))


def test_config_builds_the_grain_pipeline_for_training_only():
    from configs.default_digits import get_config
    from score_jax import config as config_lib

    c = get_config("smoke")
    c.data.num_workers = 0
    train = config_lib.dataset_from_config(c, "train", batch_size=16, training=True)
    ev = config_lib.dataset_from_config(c, "test", batch_size=16, training=False)
    assert isinstance(train, data_loader.GrainPipeline)
    assert isinstance(ev, data_lib.RandomAccessPipeline)
    c.data.num_workers = -1
    with pytest.raises(ValueError, match=r"config.data.num_workers=-1 must be an integer >= 0"):
        config_lib.validate_config(c)


# ----------------------------------------------------------------------------------------------
# prefetch to device
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1, 3])
def test_prefetch_to_device_keeps_order_and_shards_over_the_fsdp_mesh(size):
    mesh = parallel.make_mesh(8, fsdp=4)  # 2 x 4
    host = [{"image": np.full((16, 2, 2, 1), i, np.float32), "label": np.arange(16) + i}
            for i in range(5)]
    out = list(parallel.prefetch_to_device(iter(host), mesh, size=size))
    assert len(out) == 5
    for i, (h, g) in enumerate(out):
        assert h is host[i]
        assert g["image"].sharding == parallel.data_sharding(mesh)
        assert len(g["image"].addressable_shards) == 8
        assert g["image"].addressable_shards[0].data.shape == (2, 2, 2, 1)
        np.testing.assert_array_equal(np.asarray(g["image"]), host[i]["image"])
        np.testing.assert_array_equal(np.asarray(g["label"]), host[i]["label"])


def test_prefetch_raises_the_readers_error_at_its_batch_and_stops_on_close():
    mesh = parallel.make_mesh(1)

    def reader():
        yield {"x": np.zeros(2)}
        raise OSError("disk gone")

    it = parallel.prefetch_to_device(reader(), mesh, size=2)
    next(it)
    with pytest.raises(OSError, match="disk gone"):
        next(it)

    def endless():
        i = 0
        while True:
            yield {"x": np.full(2, i)}
            i += 1

    before = threading.active_count()
    it = parallel.prefetch_to_device(endless(), mesh, size=2)
    assert float(next(it)[1]["x"][0]) == 0.0
    it.close()
    assert threading.active_count() == before
    with pytest.raises(ValueError, match="prefetch=-1 must be an integer >= 0"):
        next(parallel.prefetch_to_device(endless(), mesh, size=-1))


# ----------------------------------------------------------------------------------------------
# TFRecord container, tf.train.Example, ArrayRecord, the converter
# ----------------------------------------------------------------------------------------------
def test_crc32c_and_masked_crc_known_values():
    assert records.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    assert records.crc32c(b"") == 0
    c = 0xE3069283
    assert records.masked_crc32c(b"123456789") == (((c >> 15) | (c << 17)) + 0xA282EAD8) % 2 ** 32


def test_example_bytes_match_tensorflow_serialisation():
    """``tf.train.Example(features={'a': Int64List([1])}).SerializeToString()`` (TF 2.x)."""
    assert records.encode_example({"a": [1]}) == b"\n\x0c\n\n\n\x01a\x12\x05\x1a\x03\n\x01\x01"
    ex = records.parse_example(records.encode_example({"shape": [3, 4, 5], "data": [b"xyz"],
                                                       "neg": [-2]}))
    assert ex == {"shape": [3, 4, 5], "data": [b"xyz"], "neg": [-2]}


def _stylegan_tfrecord(path, images):
    """A dataset_tool TFRecord (features shape = (C, H, W), data = CHW bytes): with TensorFlow
    when it is installed (the real writer), else with score_jax.records' writer."""
    try:
        import tensorflow as tf
    except ImportError:
        tf = None
    if tf is None:
        return records.write_tfrecord(path, (records.encode_example(
            {"shape": list(im.transpose(2, 0, 1).shape), "data": [im.transpose(2, 0, 1).tobytes()]})
            for im in images))
    with tf.io.TFRecordWriter(path) as w:
        for im in images:
            chw = im.transpose(2, 0, 1)
            feat = {"shape": tf.train.Feature(int64_list=tf.train.Int64List(value=chw.shape)),
                    "data": tf.train.Feature(bytes_list=tf.train.BytesList(value=[chw.tobytes()]))}
            w.write(tf.train.Example(features=tf.train.Features(feature=feat)).SerializeToString())
    return len(images)


def _images(n=10, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def test_tfrecord_round_trip_and_corruption_named(tmp_path):
    path = str(tmp_path / "x.tfrecords")
    recs = [b"", b"a", os.urandom(300)]  # records at bytes 0, 16, 33
    assert records.write_tfrecord(path, recs) == 3
    assert list(records.read_tfrecord(path, verify_data=True)) == recs
    raw = bytearray(open(path, "rb").read())
    raw[-2] ^= 0xFF  # corrupt the last record's data CRC
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="corrupt record data at byte 33"):
        list(records.read_tfrecord(path, verify_data=True))
    open(path, "wb").write(bytes(raw[:-5]))
    with pytest.raises(ValueError, match="truncated record at byte 33"):
        list(records.read_tfrecord(path))


def test_convert_tfrecords_to_array_record_reads_the_same_images(tmp_path):
    imgs = _images(10)
    tf_path = str(tmp_path / "ffhq-r03.tfrecords")
    _stylegan_tfrecord(tf_path, imgs)
    out = str(tmp_path / "ffhq.array_record")
    assert records.convert_tfrecords(tf_path, out, verify_data=True) == [out]
    src = data_lib.ArrayRecordSource(out, 8)
    assert len(src) == 10
    x, y = src[[3, 0, 9]]
    np.testing.assert_array_equal(x, imgs[[3, 0, 9]].astype(np.float32) / 255.0)
    np.testing.assert_array_equal(y, [0, 0, 0])
    # sharded output: contiguous runs, the same concatenation
    outs = records.convert_tfrecords(tf_path, str(tmp_path / "sh.array_record"), num_shards=3)
    assert [os.path.basename(o) for o in outs] == [f"sh.array_record-0000{i}-of-00003"
                                                    for i in range(3)]
    x2, _ = data_lib.ArrayRecordSource(str(tmp_path / "sh.array_record-*"), 8)[list(range(10))]
    np.testing.assert_array_equal(x2, imgs.astype(np.float32) / 255.0)
    # per-host part: records [5, 10) of process 1 of 2
    x3, _ = data_lib.ArrayRecordSource(out, 8, process_index=1, process_count=2)[[0, 4]]
    np.testing.assert_array_equal(x3, imgs[[5, 9]].astype(np.float32) / 255.0)
    with pytest.raises(ValueError, match="matches no file"):
        records.convert_tfrecords(str(tmp_path / "none*.tfrecords"), out)


def test_ffhq_from_array_record_is_random_access_and_pickles(tmp_path):
    """data.dataset=FFHQ with tfrecords_path=*.array_record: a random-access pipeline (resume is
    O(1): the batch of step s is read directly), resized to image_size, on grain."""
    import pickle

    imgs = _images(12, size=8)
    out = str(tmp_path / "ffhq_8.array_record")
    records.write_array_record(out, imgs)
    ds = data_lib.get_dataset("FFHQ", split="train", batch_size=4, image_size=4, training=True,
                              random_flip=True, tfrecords_path=out, process_index=0,
                              process_count=1)
    assert isinstance(ds, data_lib.RandomAccessPipeline) and ds.steps_per_epoch == 3
    b = ds.batch(5)
    assert b["image"].shape == (4, 4, 4, 3) and b["image"].dtype == np.float32
    clone = pickle.loads(pickle.dumps(ds))  # what a grain worker receives
    np.testing.assert_array_equal(clone.batch(5)["image"], b["image"])
    g = data_loader.GrainPipeline(ds)
    _assert_batches_equal(_take(g.iterate(5), 1), [b])


def test_array_record_dataset_recipe_and_bad_input(tmp_path):
    folder = tmp_path / "ar"
    records.write_array_record(str(folder / "train.array_record"), _images(8), labels=range(8))
    records.write_array_record(str(folder / "test.array_record"), _images(4, seed=1))
    ds = data_lib.get_dataset("ARRAYRECORD", split="test", batch_size=4, image_size=8,
                              training=False, path=str(folder), process_index=0, process_count=1)
    np.testing.assert_array_equal(ds.batch(0)["image"], _images(4, seed=1) / np.float32(255.0))
    tr = data_lib.get_dataset("ARRAYRECORD", split="train", batch_size=8, image_size=8,
                              training=False, path=str(folder), process_index=0, process_count=1)
    np.testing.assert_array_equal(tr.batch(0)["label"], np.arange(8))
    with pytest.raises(ValueError, match="matches no ArrayRecord file"):
        data_lib.ArrayRecordSource(str(tmp_path / "nothing.array_record"), 8)
    with pytest.raises(ValueError, match="images must be uint8"):
        records.encode_image_record(np.zeros((2, 2, 3), np.float32))
    with pytest.raises(ValueError, match="num_channels=1"):
        data_lib.ArrayRecordSource(str(folder / "test.array_record"), 8, num_channels=1)[[0]]


def test_convert_cli(tmp_path):
    tf_path = str(tmp_path / "celebahq.tfrecords")
    _stylegan_tfrecord(tf_path, _images(3))
    out = str(tmp_path / "c.array_record")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "score_jax.records", "convert", "--tfrecords",
                           tf_path, "--out", out], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote 3 records to {out}" in proc.stdout
    assert "--config.data.tfrecords_path=" in proc.stdout
    bad = subprocess.run([sys.executable, "-m", "score_jax.records", "convert", "--tfrecords",
                          str(tmp_path / "no.tfrecords"), "--out", out], capture_output=True,
                         text=True, env=env)
    assert bad.returncode == 2 and "matches no file" in bad.stderr


def test_failed_convert_leaves_no_partial_output(tmp_path, capsys):
    """A truncated TFRecord fails the conversion after some records were written: no output file
    (single or sharded), no temporary file, and an output already there is kept as it was."""
    tf_path = tmp_path / "ffhq.tfrecords"
    _stylegan_tfrecord(str(tf_path), _images(6))
    raw = tf_path.read_bytes()
    tf_path.write_bytes(raw[:-5])  # the last record is cut short
    out = tmp_path / "out" / "ffhq.array_record"
    with pytest.raises(ValueError, match="truncated record"):
        records.convert_tfrecords(str(tf_path), str(out))
    assert not os.path.exists(tmp_path / "out") or os.listdir(tmp_path / "out") == []
    # sharded: the last record decodes wrong (its data is short of its shape), after shards 0
    # and 1 were written: they are removed too
    bad = tmp_path / "bad" / "celebahq.tfrecords"
    bad.parent.mkdir()
    chw = [im.transpose(2, 0, 1) for im in _images(5)]
    records.write_tfrecord(str(bad), [records.encode_example(
        {"shape": list(x.shape), "data": [x.tobytes()[:-1] if i == 4 else x.tobytes()]})
        for i, x in enumerate(chw)])
    with pytest.raises(ValueError, match="record data has"):
        records.convert_tfrecords(str(bad), str(bad.parent / "sh.array_record"), num_shards=3)
    assert os.listdir(bad.parent) == [bad.name]
    # the command line: exit status 2, one error line, the earlier good output untouched
    good = _images(2, seed=5)
    records.write_array_record(str(out), good)
    before = out.read_bytes()
    assert records.main(["convert", "--tfrecords", str(tf_path), "--out", str(out)]) == 2
    assert "truncated record" in capsys.readouterr().err
    assert out.read_bytes() == before and os.listdir(out.parent) == [out.name]


def test_stylegan_record_layout_is_chw():
    im = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)  # H=2, W=3, C=3
    rec = records.encode_example({"shape": [3, 2, 3], "data": [im.transpose(2, 0, 1).tobytes()]})
    np.testing.assert_array_equal(records.stylegan_example_image(rec), im)
    with pytest.raises(ValueError, match="features 'shape' and 'data'"):
        records.stylegan_example_image(records.encode_example({"image": [b"x"]}))
    assert struct.calcsize("<iiii") == records.HEADER.size == 16
