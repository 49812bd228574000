"""Stable Diffusion's cross-attention U-Net (``models.unet_cond``) and its diffusers loader
(``convert.load_diffusers_unet``) against diffusers' PyTorch ``UNet2DConditionModel``.

Fixtures (``tests/fixtures/sd_unet``, made by ``make_fixtures.py`` there with torch 2.13 and
diffusers 0.42.1): two tiny random-weight models saved by ``save_pretrained`` -- ``sd1``
(SD 1.x-like: 1x1-conv projections, 2 heads everywhere, 2 ResNets per level) and ``sd2``
(SD 2.x-like: linear projections, heads (1, 2, 4), two transformer layers at level 1) -- with
their float64 outputs on fixed inputs, and the parameter counts diffusers gives the SD 1.5 and
SD 2.1 configs; and ``variants``: every other config key the port reads at a non-SD value
(centred input, sin-first embedding with freq_shift 1, asymmetric down-sampling padding,
mid-block scale 1.5, time_embedding_dim, 1x1 conv_in, 5x5 conv_out, 3 -> 5 channels).
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import ROOT

from score_jax.convert import load_diffusers_unet
from score_jax.convert.diffusers_unet import convert_diffusers_unet, flax_path
from score_jax.models import get_model, layers, unet_config
from score_jax.models.dit import timestep_embedding
from score_jax.models.unet_cond import (
    SD_UNET_PRESETS,
    sd_timestep_embedding,
    unet_kwargs_from_diffusers,
)

FIX = os.path.join(ROOT, "tests", "fixtures", "sd_unet")
META = json.load(open(os.path.join(FIX, "meta.json")))
CASES = ("sd1", "sd2", "variants")
# the default run checks sd1 (float32 and float64); the other flavour / precision pairs are
# slow (CI budget): every pair runs in ``-m slow``
_SLOW = pytest.mark.slow
CASES64 = ("sd1", pytest.param("sd2", marks=_SLOW), pytest.param("variants", marks=_SLOW))
CASES32 = ("sd1", pytest.param("sd2", marks=_SLOW), pytest.param("variants", marks=_SLOW))


def _io(name):
    with np.load(os.path.join(FIX, f"{name}_io.npz")) as f:
        return {k: f[k] for k in f.files}


def _rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def _jitted(module):
    return jax.jit(lambda v, x, t, c: module.apply(v, x, t, context=c, train=False))


def _apply(module, variables, io, dtype, fn=None):
    fn = fn or _jitted(module)
    return np.asarray(fn(variables, *(jnp.asarray(io[k], dtype) for k in ("x", "t", "context"))))


@pytest.mark.parametrize("name", CASES64)
def test_equals_diffusers_float64(name, x64):
    module, variables = load_diffusers_unet(os.path.join(FIX, name), dtype=jnp.float64)
    io = _io(name)
    out = _apply(module, variables, io, jnp.float64)
    assert out.dtype == np.float64 and out.shape == io["out_f64"].shape
    assert out.shape == (*io["x"].shape[:3], module.out_channels or module.num_channels)
    assert _rel(out, io["out_f64"]) <= 1e-6


@pytest.mark.parametrize("name", CASES32)
def test_equals_diffusers_float32(name):
    module, variables = load_diffusers_unet(os.path.join(FIX, name))
    io = _io(name)
    out = _apply(module, variables, io, jnp.float32)
    assert out.dtype == np.float32
    assert _rel(out, io["out_f64"]) <= 1e-4
    assert _rel(out, io["out_f32"]) <= 1e-4  # diffusers' own float32 output


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 9.6 s)
def test_a_changed_parameter_or_setting_breaks_equality(x64):
    """The equality tests can fail: one projection of one cross-attention perturbed by 1e-3, or
    the SD 2.x head list read as SD 1.x's single head count, moves the output by far more than
    the tolerance."""
    module, variables = load_diffusers_unet(os.path.join(FIX, "sd2"), dtype=jnp.float64)
    io = _io("sd2")
    fn = _jitted(module)
    assert _rel(_apply(module, variables, io, jnp.float64, fn), io["out_f64"]) <= 1e-6
    p = jax.tree_util.tree_map(lambda a: a, variables)
    k = p["params"]["mid_block"]["attentions_0"]["transformer_blocks_0"]["attn2"]["to_k"]
    k["kernel"] = k["kernel"].at[0, 0].add(1e-3)
    assert _rel(_apply(module, p, io, jnp.float64, fn), io["out_f64"]) > 1e-6
    other = module.clone(attention_head_dim=2)
    assert _rel(_apply(other, variables, io, jnp.float64), io["out_f64"]) > 1e-3


@pytest.mark.parametrize("preset,count", [("sd15", 859_520_964), ("sd21", 865_910_724)])
def test_full_size_parameter_counts(preset, count):
    """SD 1.5's U-Net has 859,520,964 parameters, SD 2.1's 865,910,724 (diffusers, counted in
    the fixture generator on the meta device), built abstractly from the configs."""
    assert META["param_counts"][preset] == count
    cfg = SD_UNET_PRESETS[preset]
    model = get_model(unet_config(preset))
    size = cfg["sample_size"]
    shapes = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, size, size, 4)), jnp.zeros((1,)),
        context=jnp.zeros((1, 77, cfg["cross_attention_dim"]))))
    assert sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(shapes)) == count


def test_timestep_embedding_closed_forms(x64):
    """diffusers' sinusoid with (flip_sin_to_cos, freq_shift) = (False, 1) is DDPM's
    (``layers.get_timestep_embedding``), with (True, 0) GLIDE's / DiT's (``dit.timestep_embedding``);
    an odd width gets a zero column."""
    t = jnp.array([0.0, 1.5, 999.0], jnp.float64)
    np.testing.assert_allclose(sd_timestep_embedding(t, 32, flip_sin_to_cos=False, freq_shift=1),
                               layers.get_timestep_embedding(t, 32, dtype=jnp.float64),
                               rtol=0, atol=1e-12)
    np.testing.assert_allclose(sd_timestep_embedding(t, 32), timestep_embedding(t, 32), rtol=0,
                               atol=1e-12)
    odd = sd_timestep_embedding(t, 33)
    assert odd.shape == (3, 33) and np.all(odd[:, -1] == 0)


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 20.4 s)
def test_scalar_timestep_broadcasts_and_class_tokens():
    # one level (eager: a tiny model runs faster op by op than compiled)
    cfg = dict(name="unet2d_condition", block_out_channels=(8,),
               down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
               layers_per_block=1, attention_head_dim=2, norm_num_groups=4, cross_attention_dim=8)
    model = get_model(cfg, num_channels=3)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    ctx = jax.random.normal(jax.random.key(1), (2, 3, 8))
    v = model.init(jax.random.key(2), x, jnp.zeros((2,)), context=ctx)
    np.testing.assert_array_equal(model.apply(v, x, 7.0, context=ctx),
                                  model.apply(v, x, jnp.full((2,), 7.0), context=ctx))
    with pytest.raises(ValueError, match=r"context must be \(2, S, 8\)"):
        model.apply(v, x, 7.0, context=ctx[..., :4])
    # class-conditional from a config: one learned token per label, num_classes the null label
    cond = get_model(dict(cfg, num_classes=10), num_channels=3)
    vc = cond.init(jax.random.key(2), x, jnp.zeros((2,)), y=jnp.array([1, 2]))
    assert vc["params"]["label_embed"]["embedding"].shape == (11, 8)
    null = cond.apply(vc, x, 7.0)
    np.testing.assert_array_equal(null, cond.apply(vc, x, 7.0, y=jnp.array([10, 10])))
    assert not np.allclose(null, cond.apply(vc, x, 7.0, y=jnp.array([1, 2])))
    with pytest.raises(ValueError, match="not both"):
        cond.apply(vc, x, 7.0, y=jnp.array([1, 2]), context=ctx)


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 13.0 s)
def test_remat_and_bfloat16_compute():
    """``remat`` changes memory, not values; ``dtype='bfloat16'`` computes in bf16 with float32
    parameters and returns x's dtype, close to the float32 output."""
    cfg = dict(name="unet2d_condition", block_out_channels=(8,),
               down_block_types=("CrossAttnDownBlock2D",), up_block_types=("CrossAttnUpBlock2D",),
               layers_per_block=1, attention_head_dim=2, norm_num_groups=4, cross_attention_dim=8)
    model = get_model(cfg, num_channels=3)
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, 3))
    ctx = jax.random.normal(jax.random.key(1), (2, 3, 8))
    v = model.init(jax.random.key(2), x, jnp.zeros((2,)), context=ctx)
    ref = model.apply(v, x, 3.0, context=ctx)
    out = get_model(dict(cfg, remat=True), num_channels=3).apply(v, x, 3.0, context=ctx)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    low = get_model(dict(cfg, dtype="bfloat16"), num_channels=3).apply(v, x, 3.0, context=ctx)
    assert low.dtype == jnp.float32
    assert _rel(low, np.asarray(ref, np.float64)) < 5e-2


def test_unsupported_config_keys_are_named(tmp_path):
    cfg = dict(SD_UNET_PRESETS["sd15"], addition_embed_type="text_time", my_key=3,
               only_cross_attention=False, _class_name="UNet2DConditionModel")
    with pytest.raises(ValueError) as e:
        unet_kwargs_from_diffusers(cfg)
    msg = str(e.value)
    assert "addition_embed_type='text_time'" in msg and "my_key=3 (unknown key)" in msg
    assert "only_cross_attention" not in msg  # at its off value: accepted
    with pytest.raises(ValueError, match="down block type 'SimpleCrossAttnDownBlock2D' unknown"):
        get_model(unet_config("sd15", down_block_types=("SimpleCrossAttnDownBlock2D",) * 4))
    with pytest.raises(ValueError, match=r"attention_head_dim=\(5, 10\) has 2 entries"):
        get_model(unet_config("sd21", attention_head_dim=(5, 10)))
    # the loader: the same error from a folder's config.json; missing files named
    folder = tmp_path / "unet"
    shutil.copytree(os.path.join(FIX, "sd1"), folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(dict(cfg, class_embed_type="timestep")))
    with pytest.raises(ValueError, match="class_embed_type='timestep'"):
        load_diffusers_unet(folder)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        load_diffusers_unet(folder)


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 3.8 s)
def test_weights_that_do_not_fit_the_config_are_refused():
    from score_jax.convert.reader import read_state_dict

    state = read_state_dict(os.path.join(FIX, "sd1", "diffusion_pytorch_model.safetensors"))
    assert flax_path("down_blocks.0.attentions.1.transformer_blocks.0.ff.net.0.proj.weight") == (
        ("down_blocks_0", "attentions_1", "transformer_blocks_0", "ff", "net_0", "proj"), "weight")
    model = get_model(unet_kwargs_from_diffusers(
        json.load(open(os.path.join(FIX, "sd1", "config.json")))))
    key = "conv_in.weight"
    bad = dict(state, **{key: state[key][:, :3]})
    with pytest.raises(ValueError, match=r"'conv_in.weight' \(stored shape \(8, 3, 3, 3\)\)"):
        convert_diffusers_unet(bad, model)
    with pytest.raises(ValueError, match="1 parameters missing.*conv_out/bias"):
        convert_diffusers_unet({k: v for k, v in state.items() if k != "conv_out.bias"}, model)
    with pytest.raises(ValueError, match="is not a parameter"):
        convert_diffusers_unet(dict(state, **{"extra.weight": state[key]}), model)


def test_config_variant_validates_and_builds_the_network():
    """``configs/digits_cond.py:unet2d`` (and its smoke) name the network by its registry name
    and pass validation; the smoke shrink is the network's own ``smoke_config``."""
    from configs.digits_cond import get_config
    from score_jax import config as config_lib
    from score_jax.models.unet_cond import UNet2DConditionModel

    for arg in ("unet2d", "unet2d_smoke"):
        c = get_config(arg)
        config_lib.validate_config(c)
        model = config_lib.model_from_config(c)
        assert isinstance(model, UNet2DConditionModel) and model.num_classes == 10
    assert model.block_out_channels == (32, 64) and model.cross_attention_dim == 32


@pytest.mark.slow  # compiled train steps of the U-Net: ~2 min CPU
@pytest.mark.parametrize("fsdp", [1, 8])
def test_trains_from_a_config(fsdp):
    """The path train.py takes: ``config.build`` + one train step of the class-conditional
    digits config with this network (labels as cross-attention tokens, label dropout for CFG),
    replicated and with the parameters sharded over 8 devices (fsdp)."""
    from test_recipes import train_one_step

    from configs.digits_cond import get_config

    config = get_config("unet2d_smoke")
    config.parallel.fsdp = fsdp
    config.parallel.fsdp_min_size = 256
    built, state, _ = train_one_step(config)
    assert "label_embed" in state.params and "mid_block" in state.params
    sharded = [not a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(state.params)]
    assert any(sharded) == (fsdp > 1)
