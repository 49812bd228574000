"""AutoencoderKL (LDM / SD VAE): equality with diffusers, both state-dict layouts, parameter
count, converter errors and CLI, and the stage-1 / stage-2 helpers.

Reference: tests/fixtures/autoencoder/ written by make_fixtures.py from diffusers'
``AutoencoderKL`` (random weights, float64). ``state_ldm.npz`` is diffusers' state dict renamed by
the generator's own hand-written table ``LDM_RENAMES`` (diffusers -> ldm names, Linear attention
weights unsqueezed to 1x1 convs); the converter maps ldm names to flax paths directly, so the
two layouts test two independent code paths against one reference output.
"""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import serialization, traverse_util

from score_jax.convert_autoencoder import (
    convert_autoencoder_kl,
    detect_layout,
    load_state_dict,
    main,
)
from score_jax.models import get_model
from score_jax.models.autoencoder import (
    autoencoder_loss,
    decode_latents,
    encode_to_latents,
    gaussian_kl,
    latent_scale_factor,
    posterior_sample,
)

FIX = Path(__file__).parent / "fixtures" / "autoencoder"
TINY = {"name": "autoencoder_kl", "block_out_channels": (8, 16), "layers_per_block": 1,
        "latent_channels": 2, "norm_num_groups": 4}
SD = {"name": "autoencoder_kl", "block_out_channels": (128, 256, 512, 512),
      "layers_per_block": 2, "latent_channels": 4, "norm_num_groups": 32}
SD_VAE_PARAMS = 83_653_863  # diffusers / ldm AutoencoderKL at the SD v1 VAE configuration


def _rel(a, b):
    """Norm-wise relative error max|a - b| / max|b|."""
    b = np.asarray(b)
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


def _count(tree):
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


@pytest.fixture(scope="module")
def ref():
    with np.load(FIX / "tiny_f64.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def states():
    return {layout: load_state_dict(FIX / f"state_{layout}.npz")
            for layout in ("diffusers", "ldm")}


@pytest.fixture(scope="module")
def model():
    return get_model(TINY, num_channels=3)


@pytest.fixture(scope="module")
def variables64(states):
    return convert_autoencoder_kl(states["diffusers"], TINY, dtype=np.float64)


# ----------------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------------


def test_sd_vae_parameter_count():
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    model = get_model(SD, num_channels=3)
    n = _count(jax.eval_shape(model.init, jax.random.key(0), x))
    meta = json.loads((FIX / "meta.json").read_text())
    assert n == SD_VAE_PARAMS == meta["sd_vae_num_params"]


def test_tiny_parameter_tree_matches_reference(model, states):
    params = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32))["params"]
    assert _count(params) == sum(v.size for v in states["diffusers"].values())
    assert set(params) == {"encoder", "decoder", "quant_conv", "post_quant_conv"}
    assert "conv_shortcut" in params["decoder"]["up_blocks_1"]["resnets_0"]
    assert "downsamplers_0" not in params["encoder"]["down_blocks_1"]
    assert "upsamplers_0" not in params["decoder"]["up_blocks_1"]


@pytest.mark.parametrize("layout", ["diffusers", "ldm"])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-6), (np.float32, 1e-4)])
def test_matches_diffusers(request, layout, dtype, tol, model, states, ref):
    if dtype == np.float64:
        request.getfixturevalue("x64")
    variables = convert_autoencoder_kl(states[layout], TINY, layout=layout, dtype=dtype)
    encode = jax.jit(functools.partial(model.apply, method="encode"))
    decode = jax.jit(functools.partial(model.apply, method="decode"))
    mean, logvar = encode(variables, jnp.asarray(ref["x"], dtype))
    dec = decode(variables, jnp.asarray(ref["mean"], dtype))
    dec_z = decode(variables, jnp.asarray(ref["z"], dtype))
    assert mean.dtype == dtype and dec.dtype == dtype
    errors = {"mean": _rel(mean, ref["mean"]), "logvar": _rel(logvar, ref["logvar"]),
              "dec": _rel(dec, ref["dec"]), "dec_z": _rel(dec_z, ref["dec_z"])}
    assert max(errors.values()) <= tol, errors


def test_call_decodes_mean_or_sample(x64, model, variables64, ref):
    x = jnp.asarray(ref["x"])
    x_rec, mean, logvar = model.apply(variables64, x)
    assert _rel(x_rec, ref["dec"]) < 1e-10
    key = jax.random.key(3)
    x_s, _, _ = model.apply(variables64, x, key)
    z = ref["mean"] + np.exp(0.5 * ref["logvar"]) * np.asarray(
        jax.random.normal(key, mean.shape, mean.dtype))
    np.testing.assert_allclose(x_s, model.apply(variables64, jnp.asarray(z), method="decode"),
                               rtol=1e-10, atol=1e-12)
    assert not np.allclose(x_s, x_rec)


def test_logvar_clamped(x64, model, variables64, ref):
    for shift, bound in ((1e3, 20.0), (-1e3, -30.0)):
        v = jax.tree_util.tree_map(np.array, variables64)
        v["params"]["quant_conv"]["bias"][2:] += shift  # channels [latent:] are logvar
        mean, logvar = model.apply(v, jnp.asarray(ref["x"]), method="encode")
        np.testing.assert_array_equal(logvar, bound)
        assert _rel(mean, ref["mean"]) < 1e-12


@pytest.mark.parametrize("config,kw,match", [
    ({**TINY, "norm_num_groups": 3}, {}, "norm_num_groups=3"),
    ({**TINY, "block_out_channels": ()}, {}, "block_out_channels"),
    ({**TINY, "latent_channels": 0}, {}, "latent_channels"),
    (TINY, {"image_size": 15}, "image_size=15"),
    ({**TINY, "name": "autoencoder"}, {}, "autoencoder_kl"),
])
def test_config_errors(config, kw, match):
    with pytest.raises(ValueError, match=match):
        get_model(config, num_channels=3, **kw)


def test_input_errors(model, variables64):
    with pytest.raises(ValueError, match="4 channels"):
        model.apply(variables64, jnp.zeros((1, 16, 16, 4)), method="encode")
    with pytest.raises(ValueError, match="not divisible by 2"):
        model.apply(variables64, jnp.zeros((1, 15, 15, 3)), method="encode")
    with pytest.raises(ValueError, match=r"\(B, h, w, 2\)"):
        model.apply(variables64, jnp.zeros((1, 8, 8, 3)), method="decode")


def test_get_model_from_configdict_with_data_fields():
    import ml_collections
    cfg = ml_collections.ConfigDict({**TINY, "block_out_channels": [8, 16]})
    model = get_model(cfg, image_size=16, num_channels=1, centered=True)
    assert model.block_out_channels == (8, 16) and model.num_channels == 1
    assert model.image_size == 16


# ----------------------------------------------------------------------------------------------
# Converter
# ----------------------------------------------------------------------------------------------


def _flat(v):
    return traverse_util.flatten_dict(v["params"])


def test_layouts_convert_to_the_same_tree(states):
    a = _flat(convert_autoencoder_kl(states["diffusers"], TINY))
    b = _flat(convert_autoencoder_kl(states["ldm"], TINY))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert detect_layout(states["diffusers"]) == "diffusers"
    assert detect_layout(states["ldm"]) == "ldm"


def test_old_diffusers_attention_names(states):
    old = {}
    for k, v in states["diffusers"].items():
        for new, legacy in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                            ("to_out.0", "proj_attn")):
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        old[k] = v
    assert any(".proj_attn." in k for k in old)
    a = _flat(convert_autoencoder_kl(old, TINY))
    b = _flat(convert_autoencoder_kl(states["diffusers"], TINY))
    for k in b:
        np.testing.assert_array_equal(a[k], b[k])


def test_full_checkpoint_prefix_and_loss_keys(states):
    full = {f"first_stage_model.{k}": v for k, v in states["ldm"].items()}
    full["model.diffusion_model.out.0.weight"] = np.zeros(3)
    training = {**states["ldm"], "loss.discriminator.main.0.weight": np.zeros((4, 3, 4, 4))}
    ref = _flat(convert_autoencoder_kl(states["ldm"], TINY))
    for sd in (full, training):
        got = _flat(convert_autoencoder_kl(sd, TINY))
        for k in ref:
            np.testing.assert_array_equal(got[k], ref[k])


def test_converter_errors(states, tmp_path):
    sd = dict(states["diffusers"])
    with pytest.raises(ValueError, match="layout='onnx' unknown"):
        convert_autoencoder_kl(sd, TINY, layout="onnx")
    with pytest.raises(ValueError, match="cannot tell"):
        detect_layout(["foo.weight"])
    bad = {**sd, "encoder.mid_block.attentions.0.to_x.weight": np.zeros((16, 16))}
    with pytest.raises(ValueError, match="unrecognised diffusers AutoencoderKL key"):
        convert_autoencoder_kl(bad, TINY)
    missing = {k: v for k, v in sd.items() if not k.startswith("decoder.conv_out.")}
    with pytest.raises(ValueError, match="missing.*decoder/conv_out"):
        convert_autoencoder_kl(missing, TINY)
    with pytest.raises(ValueError,
                       match=r"stored shape \(16, 8, 3, 3\).*expects \(3, 3, 8, 32\)"):
        convert_autoencoder_kl(sd, {**TINY, "block_out_channels": (8, 32)})
    extra_level = {**sd, "encoder.down_blocks.2.resnets.0.norm1.weight": np.ones(16)}
    with pytest.raises(ValueError, match="not a parameter"):
        convert_autoencoder_kl(extra_level, TINY)
    with pytest.raises(ValueError, match="unrecognised diffusers"):
        convert_autoencoder_kl(states["ldm"], TINY, layout="diffusers")
    (tmp_path / "model.pkl").write_bytes(b"")
    with pytest.raises(ValueError, match="suffix '.pkl'"):
        load_state_dict(str(tmp_path / "model.pkl"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_state_dict(str(tmp_path / "missing.safetensors"))


def test_safetensors_file_and_cli(tmp_path, states, ref):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "vae.safetensors"
    safetensors_numpy.save_file({k: v.astype(np.float32) for k, v in states["ldm"].items()},
                                str(path))
    out = tmp_path / "vae.msgpack"
    main([str(path), str(out), "--block_out_channels", "8,16", "--layers_per_block", "1",
          "--latent_channels", "2", "--norm_num_groups", "4"])
    got = _flat(serialization.msgpack_restore(out.read_bytes()))
    want = _flat(convert_autoencoder_kl(states["diffusers"], TINY))
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == np.float32
        np.testing.assert_array_equal(got[k], want[k].astype(np.float32))


def test_torch_checkpoint_weights_only(tmp_path, states):
    torch = pytest.importorskip("torch")
    path = tmp_path / "vae.ckpt"
    torch.save({"state_dict": {f"first_stage_model.{k}": torch.from_numpy(v)
                               for k, v in states["ldm"].items()}}, path)
    got = _flat(convert_autoencoder_kl(load_state_dict(path), TINY))
    want = _flat(convert_autoencoder_kl(states["ldm"], TINY))
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])


# ----------------------------------------------------------------------------------------------
# Stage 1 / stage 2 helpers
# ----------------------------------------------------------------------------------------------


def test_gaussian_kl_closed_form(x64):
    rng = np.random.default_rng(0)
    mu, logvar = rng.normal(size=(3, 2, 2, 4)), rng.normal(size=(3, 2, 2, 4))
    sigma = np.exp(0.5 * logvar)
    # KL(N(mu, s^2) || N(0, 1)) = -log s + (s^2 + mu^2) / 2 - 1/2, summed per example
    want = np.sum(-np.log(sigma) + 0.5 * (sigma ** 2 + mu ** 2) - 0.5, axis=(1, 2, 3))
    np.testing.assert_allclose(gaussian_kl(jnp.asarray(mu), jnp.asarray(logvar)), want,
                               rtol=1e-12)
    np.testing.assert_allclose(gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3))), 0.0)
    # Monte Carlo: E_q[log q(z) - log p(z)] for one 2-D example
    m, lv = np.array([0.7, -0.3]), np.array([0.4, -1.2])
    z = m + np.exp(0.5 * lv) * rng.normal(size=(400_000, 2))
    log_q = -0.5 * ((z - m) ** 2 / np.exp(lv) + lv)
    log_p = -0.5 * z ** 2
    mc = np.mean(np.sum(log_q - log_p, axis=1))
    np.testing.assert_allclose(gaussian_kl(jnp.asarray(m[None]), jnp.asarray(lv[None]))[0],
                               mc, rtol=1e-2)


def _near_deterministic(variables):
    """quant_conv shifted so logvar clamps at -30 (std 3e-7): the sample is the mean."""
    v = jax.tree_util.tree_map(np.array, variables)
    v["params"]["quant_conv"]["bias"][2:] -= 1e3
    return v


@pytest.mark.parametrize("reconstruction", ["l1", "l2"])
def test_autoencoder_loss_on_fixed_input(x64, reconstruction, model, variables64, ref):
    v = _near_deterministic(variables64)
    x, dec, mean = ref["x"], ref["dec"], ref["mean"]
    d = np.abs(x - dec) if reconstruction == "l1" else (x - dec) ** 2
    rec = np.mean(np.sum(d, axis=(1, 2, 3)))
    kl = np.mean(0.5 * np.sum(mean ** 2 + np.exp(-30.0) - 1.0 + 30.0, axis=(1, 2, 3)))
    loss, aux = autoencoder_loss(v, jnp.asarray(x), jax.random.key(0), model=model,
                                 kl_weight=0.01, reconstruction=reconstruction)
    np.testing.assert_allclose(aux["rec"], rec, rtol=1e-5)
    np.testing.assert_allclose(aux["kl"], kl, rtol=1e-10)
    np.testing.assert_allclose(loss, rec + 0.01 * kl, rtol=1e-5)
    loss_dict, _ = autoencoder_loss(v, {"image": jnp.asarray(x)}, jax.random.key(0),
                                    model=model, kl_weight=0.01, reconstruction=reconstruction)
    assert float(loss_dict) == float(loss)


def test_autoencoder_loss_uses_the_reparameterised_sample(x64, model, variables64, ref):
    key = jax.random.key(7)
    loss, aux = autoencoder_loss(variables64, jnp.asarray(ref["x"]), key, model=model,
                                 kl_weight=0.5)
    z = posterior_sample(key, jnp.asarray(ref["mean"]), jnp.asarray(ref["logvar"]))
    x_rec = model.apply(variables64, z, method="decode")
    rec = np.mean(np.sum(np.abs(ref["x"] - np.asarray(x_rec)), axis=(1, 2, 3)))
    kl = np.mean(0.5 * np.sum(ref["mean"] ** 2 + np.exp(ref["logvar"]) - 1 - ref["logvar"],
                              axis=(1, 2, 3)))
    np.testing.assert_allclose([aux["rec"], aux["kl"], loss], [rec, kl, rec + 0.5 * kl],
                               rtol=1e-10)


def test_autoencoder_loss_errors(model, variables64):
    x = jnp.zeros((1, 16, 16, 3))
    with pytest.raises(ValueError, match="reconstruction='lpips'"):
        autoencoder_loss(variables64, x, jax.random.key(0), model=model, kl_weight=1.0,
                         reconstruction="lpips")
    with pytest.raises(ValueError, match="kl_weight=-1"):
        autoencoder_loss(variables64, x, jax.random.key(0), model=model, kl_weight=-1.0)
    with pytest.raises(ValueError, match="'image'"):
        autoencoder_loss(variables64, {"x": x}, jax.random.key(0), model=model, kl_weight=1.0)


def test_encode_decode_latents(x64, model, variables64, ref):
    x = jnp.asarray(ref["x"])
    z = encode_to_latents(model, variables64, x, scale_factor=0.5)
    np.testing.assert_allclose(z, 0.5 * ref["mean"], rtol=1e-10)
    key = jax.random.key(1)
    zs = encode_to_latents(model, variables64, x, key, sample=True)
    eps = np.asarray(jax.random.normal(key, ref["mean"].shape, jnp.float64))
    np.testing.assert_allclose(zs, ref["mean"] + np.exp(0.5 * ref["logvar"]) * eps, rtol=1e-10)
    with pytest.raises(ValueError, match="needs a PRNG key"):
        encode_to_latents(model, variables64, x, sample=True)
    out = decode_latents(model, variables64, jnp.asarray(0.25 * ref["z"]), scale_factor=0.25)
    assert _rel(out, ref["dec_z"]) < 1e-10


def test_latent_scale_factor(x64):
    z = np.random.default_rng(0).normal(scale=5.0, size=(4, 8, 8, 4)) + 1.0
    s = latent_scale_factor(jnp.asarray(z))
    np.testing.assert_allclose(s, 1.0 / np.std(z.ravel(), ddof=1), rtol=1e-12)
    np.testing.assert_allclose(np.std(s * z.ravel(), ddof=1), 1.0, rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# Slow: gradients; the generator is deterministic (re-run it, compare with the fixtures)
# ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_autoencoder_loss_gradients_finite(model, variables64, ref):
    x = jnp.asarray(ref["x"], jnp.float32)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float32), variables64["params"])
    grads = jax.jit(jax.grad(lambda p: autoencoder_loss({"params": p}, x, jax.random.key(0),
                                                        model=model, kl_weight=1e-6)[0]))(params)
    leaves = jax.tree_util.tree_leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert all(float(jnp.max(jnp.abs(g))) > 0 for g in leaves)


@pytest.mark.slow
def test_fixture_generator_reproduces(tmp_path, ref):
    pytest.importorskip("diffusers")
    import subprocess
    import sys
    subprocess.run([sys.executable, str(FIX / "make_fixtures.py"), "--out", str(tmp_path)],
                   check=True)
    with np.load(tmp_path / "tiny_f64.npz") as f:
        for k in ref:
            np.testing.assert_allclose(f[k], ref[k], rtol=1e-12, atol=1e-12)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["sd_vae_num_params"] == SD_VAE_PARAMS
