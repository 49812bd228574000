"""The FID Inception-v3: parameter tree, shapes, weight converter, preprocessing, sharding.

Synthetic weights are laid out exactly like pytorch-fid's ``pt_inception-2015-12-05`` state
dict; when torch is importable the converted Flax network is checked against a functional
PyTorch forward written from pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` blocks.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.evaluation import (
    InceptionFeatures,
    InceptionV3,
    convert_inception_pytorch,
    load_inception,
    preprocess_for_inception,
    pt_inception_state_dict_shapes,
)
from score_jax.evaluation.inception import _main as inception_main

# Number of floats in the real pt_inception-2015-12-05-6726825d.pth (95.5 MB of float32).
NUM_FLOATS = 23_885_392


def synthetic_state_dict(seed=0, num_batches_tracked=False):
    """Random weights in the real file's layout, scaled so activations stay O(1) (He init)."""
    rng = np.random.default_rng(seed)
    sd = {}
    for key, shape in pt_inception_state_dict_shapes(
            num_batches_tracked=num_batches_tracked).items():
        if key.endswith("conv.weight"):
            fan_in = shape[1] * shape[2] * shape[3]
            sd[key] = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
        elif key.endswith("bn.weight"):
            sd[key] = 1.0 + 0.1 * rng.standard_normal(shape)
        elif key.endswith("running_var"):
            sd[key] = rng.uniform(0.5, 1.5, shape)
        elif key.endswith("num_batches_tracked"):
            sd[key] = np.asarray(1000, np.int64)
        elif key == "fc.weight":
            sd[key] = rng.standard_normal(shape) / math.sqrt(shape[1])
        else:  # bn.bias, running_mean, fc.bias
            sd[key] = 0.1 * rng.standard_normal(shape)
        sd[key] = sd[key].astype(np.float32) if sd[key].dtype != np.int64 else sd[key]
    return sd


@pytest.fixture(scope="module")
def state_dict():
    return synthetic_state_dict()


@pytest.fixture(scope="module")
def variables(state_dict):
    return convert_inception_pytorch(state_dict)


def _paths(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_paths(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = tuple(v.shape)
    return out


def test_parameter_tree_and_output_shapes_at_299():
    module = InceptionV3()
    x = jax.ShapeDtypeStruct((3, 299, 299, 3), jnp.float32)
    abstract = jax.eval_shape(module.init, jax.random.key(0), x)
    assert set(abstract) == {"params", "batch_stats"}
    pool, logits = jax.eval_shape(module.apply, abstract, x)
    assert pool.shape == (3, 2048) and logits.shape == (3, 1008)
    params, stats = _paths(abstract["params"]), _paths(abstract["batch_stats"])
    assert sum(math.prod(s) for s in params.values()) + sum(
        math.prod(s) for s in stats.values()) == NUM_FLOATS
    # Golden spots of the tree (names as torchvision / pytorch-fid, shapes in Flax layout).
    assert params[("Conv2d_1a_3x3", "conv", "kernel")] == (3, 3, 3, 32)
    assert params[("Mixed_5b", "branch_pool", "conv", "kernel")] == (1, 1, 192, 32)
    assert params[("Mixed_6b", "branch7x7_2", "conv", "kernel")] == (1, 7, 128, 128)
    assert params[("Mixed_7c", "branch3x3dbl_3b", "conv", "kernel")] == (3, 1, 384, 384)
    assert params[("fc", "kernel")] == (2048, 1008)
    assert stats[("Mixed_7c", "branch_pool", "bn", "var")] == (192,)
    top = {p[0] for p in params}
    assert top == {"Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1",
                   "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b",
                   "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"}
    # Every pt_inception key maps to exactly one Flax leaf of the transposed shape.
    shapes = pt_inception_state_dict_shapes()
    assert len(shapes) == 94 * 5 + 2
    n_convs = sum(k.endswith(".conv.weight") for k in shapes)
    assert n_convs == 94 and len(params) == 94 * 3 + 2 and len(stats) == 94 * 2
    for key, shape in shapes.items():
        if key.endswith(".conv.weight"):
            path = (*key.split(".")[:-2], "conv", "kernel")
            o, i, kh, kw = shape
            assert params[path] == (kh, kw, i, o), key


def test_converter_maps_every_weight(state_dict, variables):
    p, s = variables["params"], variables["batch_stats"]
    w = state_dict["Mixed_6c.branch7x7dbl_3.conv.weight"]  # (O, I, 1, 7)
    k = p["Mixed_6c"]["branch7x7dbl_3"]["conv"]["kernel"]  # (1, 7, I, O)
    np.testing.assert_array_equal(k[0, 5, 3, 7], w[7, 3, 0, 5])
    np.testing.assert_array_equal(p["Mixed_5d"]["branch5x5_2"]["bn"]["scale"],
                                  state_dict["Mixed_5d.branch5x5_2.bn.weight"])
    np.testing.assert_array_equal(s["Conv2d_4a_3x3"]["bn"]["var"],
                                  state_dict["Conv2d_4a_3x3.bn.running_var"])
    np.testing.assert_array_equal(p["fc"]["kernel"], state_dict["fc.weight"].T)
    # Converted tree equals the module's own tree, leaf for leaf.
    abstract = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                              jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))
    assert _paths(abstract["params"]) == _paths(p)
    assert _paths(abstract["batch_stats"]) == _paths(s)
    # num_batches_tracked (saved by newer PyTorch) is accepted and ignored.
    with_nbt = dict(state_dict)
    with_nbt["Mixed_7c.branch_pool.bn.num_batches_tracked"] = np.asarray(3, np.int64)
    assert _paths(convert_inception_pytorch(with_nbt)["params"]) == _paths(p)


def test_converter_errors_name_the_key(state_dict):
    missing = dict(state_dict)
    del missing["Mixed_6e.branch7x7_3.bn.running_mean"]
    with pytest.raises(ValueError, match=r"missing key 'Mixed_6e.branch7x7_3.bn.running_mean' "
                                         r"\(expected shape \(192,\)\)"):
        convert_inception_pytorch(missing)
    extra = dict(state_dict)
    extra["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
    with pytest.raises(ValueError, match=r"unexpected key 'AuxLogits.fc.weight' with shape "
                                         r"\(1000, 768\)"):
        convert_inception_pytorch(extra)
    wrong = dict(state_dict)
    wrong["fc.weight"] = np.zeros((1000, 2048), np.float32)  # torchvision's 1000 classes
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \(1000, 2048\), expected "
                                         r"\(1008, 2048\)"):
        convert_inception_pytorch(wrong)


def test_load_inception_from_npz(tmp_path, state_dict):
    path = tmp_path / "pt_inception.npz"
    np.savez(path, **state_dict)
    with pytest.raises(ValueError, match="records no source sha256.*expected sha256 6726825d0af5"):
        load_inception(str(path))  # synthetic weights are not the pinned FID file
    module, variables = load_inception(str(path), sha256=None)  # explicit override
    assert isinstance(module, InceptionV3)
    np.testing.assert_array_equal(np.asarray(variables["params"]["fc"]["bias"]),
                                  state_dict["fc.bias"])
    with pytest.raises(FileNotFoundError, match="pytorch-fid"):
        load_inception(str(tmp_path / "absent.pth"))


def _torch_bilinear_reference(u, size):
    """F.interpolate(mode='bilinear', align_corners=False), pixel by pixel in numpy (NHWC)."""
    def sample_1d(x, axis):
        n_in = x.shape[axis]
        src = np.maximum((np.arange(size) + 0.5) * n_in / size - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        shape = [1] * x.ndim
        shape[axis] = size
        lam = (src - i0).reshape(shape)
        return np.take(x, i0, axis=axis) * (1 - lam) + np.take(x, i1, axis=axis) * lam
    return sample_1d(sample_1d(u.astype(np.float64), 1), 2)


@pytest.mark.parametrize("in_size", [32, 400])
def test_preprocess_matches_fid_protocol(in_size):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (2, in_size, in_size + 3, 3), dtype=np.uint8)
    out = np.asarray(preprocess_for_inception(u8))
    assert out.shape == (2, 299, 299, 3) and out.dtype == np.float32
    ref = _torch_bilinear_reference(u8, 299) / 127.5 - 1.0
    np.testing.assert_allclose(out, ref, atol=3e-6)
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_preprocess_quantisation_and_channels():
    # 1.0005 and -0.0005: sampler overshoot within the 1e-3 tolerance, clipped to the ends
    # (wider ranges are refused: test_preprocess_refuses_other_ranges).
    x = np.array([0.0, 0.5, 0.999, 1.0, 1.0005, -0.0005], np.float32).reshape(1, 1, 6, 1)
    x = np.broadcast_to(x, (1, 299, 6, 1))
    x = np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (0, 293), (0, 0)), mode="edge"))
    floor = np.asarray(preprocess_for_inception(x))[0, 0, :6, 0]
    # score_sde: clip(x * 255, 0, 255).astype(uint8) -> 0, 127, 254, 255, 255, 0.
    np.testing.assert_allclose(floor, np.array([0, 127, 254, 255, 255, 0]) / 127.5 - 1, atol=1e-6)
    rounded = np.asarray(preprocess_for_inception(x, quantize="round"))[0, 0, :6, 0]
    np.testing.assert_allclose(rounded, np.array([0, 128, 255, 255, 255, 0]) / 127.5 - 1,
                               atol=1e-6)
    grey = np.asarray(preprocess_for_inception(x))
    assert grey.shape == (1, 299, 299, 3)
    np.testing.assert_array_equal(grey[..., 0], grey[..., 2])
    with pytest.raises(ValueError, match="quantize"):
        preprocess_for_inception(x, quantize="nearest")
    with pytest.raises(ValueError, match="1 or 3 channels"):
        preprocess_for_inception(np.zeros((1, 8, 8, 4), np.uint8))


def test_preprocess_refuses_other_ranges():
    rng = np.random.default_rng(0)
    u8 = rng.integers(0, 256, (2, 8, 8, 3)).astype(np.uint8)
    # uint8 is accepted and equals the float [0, 1] image of the same levels.
    np.testing.assert_allclose(np.asarray(preprocess_for_inception(u8, size=8)),
                               np.asarray(preprocess_for_inception(u8 / np.float32(255), size=8,
                                                                   quantize="round")), atol=1e-6)
    # Integer arrays holding 8-bit levels (e.g. int32) are accepted too.
    np.testing.assert_array_equal(np.asarray(preprocess_for_inception(u8.astype(np.int32), size=8)),
                                  np.asarray(preprocess_for_inception(u8, size=8)))
    # Floats in [0, 255] used to saturate every pixel; centred [-1, 1] lost half the pixels.
    with pytest.raises(ValueError, match=r"found values in \[0, 255\]"):
        preprocess_for_inception(u8.astype(np.float32), size=8)
    centred = u8.astype(np.float32) / 127.5 - 1.0
    with pytest.raises(ValueError, match=r"found values in \[-1, 1\]"):
        preprocess_for_inception(centred, size=8)
    with pytest.raises(ValueError, match=r"\[-5, 255\]"):
        preprocess_for_inception(np.where(u8 > 127, 255, -5).astype(np.int32), size=8)
    with pytest.raises(ValueError, match=r"nan"):
        preprocess_for_inception(np.full((1, 8, 8, 3), np.nan, np.float32), size=8)


def test_inception_features_refuses_other_ranges(variables):
    fn = InceptionFeatures(variables, batch_size=8, image_size=75)
    u8_ramp = np.broadcast_to(np.linspace(0, 255, 8).astype(np.uint8)[:, None],
                              (2, 8, 8, 3)).copy()
    with pytest.raises(ValueError, match=r"InceptionFeatures.*found values in \[0, 255\]"):
        fn(u8_ramp.astype(np.float32))
    assert fn(u8_ramp)[0].shape == (2, 2048)


def test_tiny_forward_is_finite_and_logits_are_fc_of_pool(variables):
    x = preprocess_for_inception(
        np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8), size=75)
    pool, logits = jax.jit(InceptionV3().apply)(variables, x)
    assert pool.shape == (2, 2048) and logits.shape == (2, 1008)
    assert np.all(np.isfinite(pool)) and np.all(np.asarray(pool) >= 0)  # mean of ReLUs
    ref = np.asarray(pool) @ variables["params"]["fc"]["kernel"] + variables["params"]["fc"]["bias"]
    np.testing.assert_allclose(np.asarray(logits), ref, rtol=1e-4, atol=1e-4)
    assert 0.01 < float(np.std(pool)) < 100  # the He-scaled weights keep activations O(1)
    with pytest.raises(ValueError, match="at least 75x75"):
        InceptionV3().apply(variables, jnp.zeros((1, 64, 64, 3)))


def test_sharded_features_equal_single_device(variables):
    assert jax.device_count() == 8  # conftest.py
    images = np.random.default_rng(3).integers(0, 256, (11, 20, 20, 3), dtype=np.uint8)
    fn = InceptionFeatures(variables, batch_size=8, image_size=75)
    pool, logits = fn(images)  # 2 chunks of 8, padded, over 8 devices
    assert pool.shape == (11, 2048) and logits.shape == (11, 1008)
    x = preprocess_for_inception(images, size=75)
    ref_pool, ref_logits = jax.jit(InceptionV3().apply)(variables, x)
    np.testing.assert_allclose(pool, np.asarray(ref_pool), rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(logits, np.asarray(ref_logits), rtol=2e-4, atol=2e-4)
    with pytest.raises(ValueError, match="multiple of the 8 local devices"):
        InceptionFeatures(variables, batch_size=12)


# --------------------------------------------------------------------- PyTorch cross-check


def _torch_fid_inception(sd, x):
    """Functional PyTorch forward of pytorch-fid's FIDInceptionV3 (NCHW) from a state dict."""
    import torch.nn.functional as F

    def conv(name, h, stride=1, padding=0):
        h = F.conv2d(h, sd[f"{name}.conv.weight"], stride=stride, padding=padding)
        h = F.batch_norm(h, sd[f"{name}.bn.running_mean"], sd[f"{name}.bn.running_var"],
                         sd[f"{name}.bn.weight"], sd[f"{name}.bn.bias"], training=False,
                         eps=0.001)
        return F.relu(h)

    def avg(h):
        return F.avg_pool2d(h, 3, stride=1, padding=1, count_include_pad=False)

    def block_a(n, h):
        b1 = conv(f"{n}.branch1x1", h)
        b5 = conv(f"{n}.branch5x5_2", conv(f"{n}.branch5x5_1", h), padding=2)
        b3 = conv(f"{n}.branch3x3dbl_1", h)
        b3 = conv(f"{n}.branch3x3dbl_3", conv(f"{n}.branch3x3dbl_2", b3, padding=1), padding=1)
        return torch.cat([b1, b5, b3, conv(f"{n}.branch_pool", avg(h))], 1)

    def block_b(n, h):
        b3 = conv(f"{n}.branch3x3", h, stride=2)
        bd = conv(f"{n}.branch3x3dbl_2", conv(f"{n}.branch3x3dbl_1", h), padding=1)
        bd = conv(f"{n}.branch3x3dbl_3", bd, stride=2)
        return torch.cat([b3, bd, F.max_pool2d(h, 3, stride=2)], 1)

    def block_c(n, h):
        b1 = conv(f"{n}.branch1x1", h)
        b7 = conv(f"{n}.branch7x7_1", h)
        b7 = conv(f"{n}.branch7x7_2", b7, padding=(0, 3))
        b7 = conv(f"{n}.branch7x7_3", b7, padding=(3, 0))
        bd = conv(f"{n}.branch7x7dbl_1", h)
        for i, pad in zip(range(2, 6), [(3, 0), (0, 3), (3, 0), (0, 3)], strict=True):
            bd = conv(f"{n}.branch7x7dbl_{i}", bd, padding=pad)
        return torch.cat([b1, b7, bd, conv(f"{n}.branch_pool", avg(h))], 1)

    def block_d(n, h):
        b3 = conv(f"{n}.branch3x3_2", conv(f"{n}.branch3x3_1", h), stride=2)
        b7 = conv(f"{n}.branch7x7x3_1", h)
        b7 = conv(f"{n}.branch7x7x3_2", b7, padding=(0, 3))
        b7 = conv(f"{n}.branch7x7x3_3", b7, padding=(3, 0))
        b7 = conv(f"{n}.branch7x7x3_4", b7, stride=2)
        return torch.cat([b3, b7, F.max_pool2d(h, 3, stride=2)], 1)

    def block_e(n, h, pool):
        b1 = conv(f"{n}.branch1x1", h)
        b3 = conv(f"{n}.branch3x3_1", h)
        b3 = torch.cat([conv(f"{n}.branch3x3_2a", b3, padding=(0, 1)),
                        conv(f"{n}.branch3x3_2b", b3, padding=(1, 0))], 1)
        bd = conv(f"{n}.branch3x3dbl_2", conv(f"{n}.branch3x3dbl_1", h), padding=1)
        bd = torch.cat([conv(f"{n}.branch3x3dbl_3a", bd, padding=(0, 1)),
                        conv(f"{n}.branch3x3dbl_3b", bd, padding=(1, 0))], 1)
        pooled = avg(h) if pool == "avg" else F.max_pool2d(h, 3, stride=1, padding=1)
        return torch.cat([b1, b3, bd, conv(f"{n}.branch_pool", pooled)], 1)

    import torch

    h = conv("Conv2d_1a_3x3", x, stride=2)
    h = conv("Conv2d_2a_3x3", h)
    h = conv("Conv2d_2b_3x3", h, padding=1)
    h = F.max_pool2d(h, 3, stride=2)
    h = conv("Conv2d_4a_3x3", conv("Conv2d_3b_1x1", h))
    h = F.max_pool2d(h, 3, stride=2)
    for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        h = block_a(n, h)
    h = block_b("Mixed_6a", h)
    for n in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        h = block_c(n, h)
    h = block_d("Mixed_7a", h)
    h = block_e("Mixed_7b", h, "avg")
    h = block_e("Mixed_7c", h, "max")
    pool = F.adaptive_avg_pool2d(h, (1, 1)).flatten(1)
    return pool, F.linear(pool, sd["fc.weight"], sd["fc.bias"])


def _torch_pipeline(sd_np, images_u8, size):
    """pytorch-fid's input path: u / 255, bilinear resize (align_corners=False), 2x - 1."""
    import torch
    import torch.nn.functional as F

    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in sd_np.items()}
    x = torch.from_numpy(images_u8).permute(0, 3, 1, 2).float() / 255.0
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    with torch.no_grad():
        pool, logits = _torch_fid_inception(sd, 2 * x - 1)
    return pool.numpy(), logits.numpy()


def _compare_with_torch(state_dict, variables, size, n):
    pytest.importorskip("torch")
    images = np.random.default_rng(4).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    t_pool, t_logits = _torch_pipeline(state_dict, images, size)
    pool, logits = jax.jit(InceptionV3().apply)(variables,
                                                preprocess_for_inception(images, size=size))
    scale = np.abs(t_pool).max()
    np.testing.assert_allclose(np.asarray(pool), t_pool, rtol=1e-3, atol=1e-4 * scale)
    np.testing.assert_allclose(np.asarray(logits), t_logits, rtol=1e-3,
                               atol=1e-4 * np.abs(t_logits).max())


def test_matches_pytorch_fid_blocks_small(state_dict, variables):
    _compare_with_torch(state_dict, variables, size=75, n=2)


def test_load_inception_pth_with_weights_only(tmp_path, state_dict):
    torch = pytest.importorskip("torch")
    sd = {k: torch.from_numpy(np.asarray(v)) for k, v in
          synthetic_state_dict(num_batches_tracked=True).items()}
    torch.save(sd, tmp_path / "pt_inception.pth")
    _, variables = load_inception(str(tmp_path / "pt_inception.pth"), sha256=None)
    expected = sd["Mixed_7b.branch1x1.conv.weight"].numpy().transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(
        np.asarray(variables["params"]["Mixed_7b"]["branch1x1"]["conv"]["kernel"]), expected)
    # The one-off converter to a torch-free .npz gives the same variables.
    with pytest.raises(ValueError, match="expected sha256 6726825d0af5"):
        inception_main(["--to-npz", str(tmp_path / "pt_inception.pth"), str(tmp_path / "w.npz")])
    inception_main(["--to-npz", str(tmp_path / "pt_inception.pth"), str(tmp_path / "w.npz"),
                    "--sha256", "none"])
    with pytest.raises(ValueError, match="expected sha256 6726825d0af5"):
        load_inception(str(tmp_path / "w.npz"))
    from score_jax.evaluation.inception import file_sha256
    # the .npz records the digest of the .pth it came from; that digest is what it is checked by
    _, from_npz = load_inception(str(tmp_path / "w.npz"),
                                 sha256=file_sha256(str(tmp_path / "pt_inception.pth")))
    np.testing.assert_array_equal(
        np.asarray(from_npz["params"]["Mixed_7b"]["branch1x1"]["conv"]["kernel"]), expected)


@pytest.mark.slow
def test_matches_pytorch_fid_blocks_at_299(state_dict, variables):
    _compare_with_torch(state_dict, variables, size=299, n=2)
