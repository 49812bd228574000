"""The one checkpoint reader (`score_jax.convert.reader`) and the atomic writes
(`score_jax.files`): bf16 safetensors read without torch, exactly; suffix dispatch; every
converter reads through it."""
import json
import struct

import numpy as np
import pytest

from score_jax import files
from score_jax.convert import reader


def _write_safetensors(path, tensors):
    """A safetensors file from its published format: u64 header length, JSON header, bytes.
    ``tensors``: name -> (dtype string, shape, raw bytes)."""
    header, body, off = {}, b"", 0
    for name, (dtype, shape, raw) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        body += raw
        off += len(raw)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + body)


def test_bf16_safetensors_read_exactly_without_torch(tmp_path):
    # bf16 = the top 16 bits of a float32: these values are exact in bf16.
    want = np.array([[1.0, -2.5, 0.15625], [2.0**100, -(2.0**-120), 0.0]], np.float32)
    assert np.array_equal(((want.view(np.uint32) >> 16) << 16).view(np.float32), want)
    bf16 = (want.view(np.uint32) >> 16).astype("<u2").tobytes()
    f32 = np.arange(3, dtype="<f4")
    p = tmp_path / "w.safetensors"
    _write_safetensors(p, {"a": ("BF16", want.shape, bf16), "b": ("F32", (3,), f32.tobytes())})
    got = reader.read_state_dict(p)
    assert got["a"].dtype == np.float32 and np.array_equal(got["a"], want)
    np.testing.assert_array_equal(got["b"], f32)


def test_reader_dispatch_and_errors(tmp_path):
    np.savez(tmp_path / "w.npz", x=np.ones(2))
    assert reader.read_state_dict(tmp_path / "w.npz")["x"].tolist() == [1.0, 1.0]
    (tmp_path / "w.pkl").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"suffix '\.pkl'.*valid: \.pth"):
        reader.read_checkpoint(tmp_path / "w.pkl")
    # a missing file is named as missing, whatever its suffix (not "unknown suffix")
    with pytest.raises(FileNotFoundError, match=r"'.*absent\.pkl' does not exist"):
        reader.read_checkpoint(tmp_path / "absent.pkl")
    with pytest.raises(ValueError, match="kind 'zip'"):
        reader.read_checkpoint(tmp_path / "w.npz", kind="zip")
    with pytest.raises(FileNotFoundError):
        reader.read_checkpoint(tmp_path / "absent.npz")


def test_to_numpy_widens_torch_bf16():
    torch = pytest.importorskip("torch")
    t = torch.tensor([1.0, -2.5, 0.15625], dtype=torch.bfloat16)
    got = reader.to_numpy(t)
    assert got.dtype == np.float32 and got.tolist() == [1.0, -2.5, 0.15625]


def test_every_converter_uses_the_one_reader():
    """No converter keeps its own torch.load / tensor conversion (issue 21 item 5)."""
    import inspect

    from score_jax.convert import autoencoder, dit, inception, score_sde
    for mod in (autoencoder, dit, inception, score_sde):
        src = inspect.getsource(mod)
        assert "torch.load" not in src.replace("``torch.load", ""), mod.__name__
        assert ".detach()" not in src, mod.__name__


def test_atomic_write_leaves_no_partial_file(tmp_path):
    p = tmp_path / "r.json"
    files.atomic_write_json(p, {"a": 1})
    assert json.loads(p.read_text()) == {"a": 1}

    def boom(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        files.atomic_write(p, boom)
    assert json.loads(p.read_text()) == {"a": 1}  # the old content, whole
    assert [q.name for q in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind
