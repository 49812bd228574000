"""Networks: parameter counts of the full-size reference configs, option coverage, NCSN/NCSNv2
architecture (tree, shapes, a training step), class conditioning, dtype, remat, dropout, errors."""

from __future__ import annotations

import json
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from reference_model_configs import NCSN_CONFIGS, REFERENCE_CONFIGS

from score_jax.models import MODELS, get_model, get_sigmas

PARAM_COUNTS = Path(__file__).parent / "fixtures" / "reference_nets" / "param_counts.json"


def n_params(tree) -> int:
    return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def abstract_init(model, size, channels=3, batch=1):
    x = jax.ShapeDtypeStruct((batch, size, size, channels), jnp.float32)
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return jax.eval_shape(model.init, jax.random.key(0), x, labels)["params"]


def random_variables(model, x, labels, seed=0, **kw):
    """Variables with the model's tree and deterministic random values, without running init
    (cheap on CPU): weights N(0, 1/fan_in), biases N(0, 0.1^2), norm scales 1 + N(0, 0.1^2),
    the Fourier W N(0, 16^2)."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), x, labels, **kw)
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = str(path[-1].key)
        shape = leaf.shape
        if name in ("scale", "gamma", "alpha"):
            v = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name in ("bias", "b", "beta"):
            v = 0.1 * rng.standard_normal(shape)
        elif name == "W" and len(shape) == 1:
            v = 16.0 * rng.standard_normal(shape)
        elif name == "embedding":
            v = 1.0 + 0.3 * rng.standard_normal(shape)
        else:
            v = rng.standard_normal(shape) / np.sqrt(np.prod(shape[:-1]))
        return jnp.asarray(v, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, abstract)


def tiny_ncsnpp(**kw):
    cfg = dict(name="ncsnpp", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
               dropout=0.0, resamp_with_conv=True, conditional=True, fir=True,
               fir_kernel=(1, 3, 3, 1), skip_rescale=True, resblock_type="biggan",
               progressive="none", progressive_input="residual", progressive_combine="sum",
               init_scale=0.5, fourier_scale=16, embedding_type="fourier", scale_by_sigma=True,
               sigma_min=0.01, sigma_max=50, num_scales=1000, nonlinearity="swish")
    cfg.update(kw)
    return cfg


# ---------------------------------------------------------------------------------------------
# Parameter counts (jax.eval_shape: no real initialisation)
# ---------------------------------------------------------------------------------------------


def test_param_counts_equal_reference():
    expected = json.loads(PARAM_COUNTS.read_text())
    assert set(expected) == set(REFERENCE_CONFIGS)
    counted: dict[str, int] = {}
    for name, cfg in REFERENCE_CONFIGS.items():
        key = json.dumps([cfg["model"], cfg["data"]], sort_keys=True, default=list)
        if key not in counted:  # vp / subvp variants share one architecture
            model = get_model(cfg["model"], **cfg["data"])
            counted[key] = n_params(abstract_init(model, cfg["data"]["image_size"]))
        assert counted[key] == expected[name], name


# ---------------------------------------------------------------------------------------------
# Builder and errors
# ---------------------------------------------------------------------------------------------


def test_get_model_builds_from_configdict_and_lists_names():
    cfg = ml_collections.ConfigDict(REFERENCE_CONFIGS["vp/cifar10_ddpmpp_continuous"])
    model = get_model(cfg.model, image_size=cfg.data.image_size,
                      num_channels=cfg.data.num_channels, centered=cfg.data.centered)
    assert isinstance(model, MODELS["ncsnpp"])
    assert (model.image_size, model.centered, model.embedding_type, model.fir) == (
        32, True, "positional", False)
    assert model.ch_mult == (1, 2, 2, 2) and model.fir_kernel == (1, 3, 3, 1)
    # data fields may also live in model_config
    m2 = get_model(dict(cfg.model.to_dict(), image_size=64, dtype="bfloat16", remat=True))
    assert (m2.image_size, m2.dtype, m2.remat) == (64, jnp.dtype(jnp.bfloat16), True)
    assert set(MODELS) == {"ncsnpp", "ddpm", "dit", "ncsn", "ncsnv2_64", "ncsnv2_128", "ncsnv2_256",
                           "autoencoder_kl", "unet2d_condition", "text_conditioned"}


@pytest.mark.parametrize("change, message", [
    ({"name": "unet"}, r"unknown model name 'unet'; valid: \['autoencoder_kl', 'ddpm', 'dit', 'ncsn', 'ncsnpp', "
                       r"'ncsnv2_128', 'ncsnv2_256', 'ncsnv2_64', 'text_conditioned', 'unet2d_condition'\]"),
    ({"progressive": "skip"}, r"progressive='skip' unknown; valid: \['none', 'output_skip', "
                              r"'residual'\]"),
    ({"resblock_type": "vit"}, r"resblock_type='vit' unknown"),
    ({"attention_type": "legacy"}, r"attention_type='legacy' is not supported"),
    ({"nonlinearity": "gelu"}, r"unknown nonlinearity 'gelu'"),
])
def test_get_model_errors(change, message):
    cfg = dict(REFERENCE_CONFIGS["ve/cifar10_ncsnpp_continuous"]["model"], **change)
    with pytest.raises(ValueError, match=message):
        get_model(cfg, image_size=32)


def test_bad_image_sizes():
    ve = REFERENCE_CONFIGS["ve/cifar10_ncsnpp_continuous"]["model"]
    with pytest.raises(ValueError, match=r"ncsnpp: image_size=36 cannot be taken by this "
                                         r"architecture; it must be a positive multiple of 8"):
        get_model(ve, image_size=36)
    model = get_model(ve, image_size=32)
    with pytest.raises(ValueError, match=r"x is 16x16, the model was built for image_size=32"):
        abstract_init(model, 16)
    with pytest.raises(ValueError, match=r"x has 1 channels, the model was built for 3"):
        abstract_init(model, 32, channels=1)
    free = get_model(ve)  # no image_size: any multiple of 8
    with pytest.raises(ValueError, match=r"image size 20x20 is not divisible by 8"):
        abstract_init(free, 20)
    ddpm = dict(REFERENCE_CONFIGS["vp/ddpm/cifar10"]["model"], nf=16)
    with pytest.raises(ValueError, match=r"16 channels is not a multiple of 32"):
        get_model(ddpm, image_size=32)
    with pytest.raises(ValueError, match=r"ncsnv2_256: image_size=36 cannot be taken .* "
                                         r"multiple of 8"):
        get_model(dict(NCSN_CONFIGS["ve/ncsnv2/bedroom"]["model"], name="ncsnv2_256"),
                  image_size=36)


# ---------------------------------------------------------------------------------------------
# NCSN++ options
# ---------------------------------------------------------------------------------------------

VARIANTS = {
    # FIR conv up-sampling in the output pyramid and DDPM++ blocks: what the PyTorch port cannot run
    "residual_pyramids_ddpm_blocks": dict(progressive="residual", progressive_input="residual",
                                          resblock_type="ddpm"),
    "output_skip_input_skip_cat": dict(progressive="output_skip", progressive_input="input_skip",
                                       progressive_combine="cat"),
    "nearest_conv_resampling": dict(fir=False, resblock_type="ddpm", progressive_input="none",
                                    embedding_type="positional", scale_by_sigma=False,
                                    centered=True),
    "no_conv_no_skip_rescale": dict(fir=False, resamp_with_conv=False, resblock_type="ddpm",
                                    progressive="output_skip", progressive_input="input_skip",
                                    skip_rescale=False, conditional=False),
}

EXPECTED_TOP = {
    "residual_pyramids_ddpm_blocks": {
        "AttnBlockpp_0", "AttnBlockpp_1", "AttnBlockpp_2", "Conv_0", "Conv_1", "Conv_2",
        "Dense_0", "Dense_1", "Downsample_0", "Downsample_1", "GaussianFourierProjection_0",
        "GroupNorm_0", "GroupNorm_1", "ResnetBlockDDPMpp_0", "ResnetBlockDDPMpp_1",
        "ResnetBlockDDPMpp_2", "ResnetBlockDDPMpp_3", "ResnetBlockDDPMpp_4",
        "ResnetBlockDDPMpp_5", "ResnetBlockDDPMpp_6", "ResnetBlockDDPMpp_7", "Upsample_0",
        "Upsample_1"},
    "output_skip_input_skip_cat": {
        "AttnBlockpp_0", "AttnBlockpp_1", "AttnBlockpp_2", "Combine_0", "Conv_0", "Conv_1",
        "Conv_2", "Dense_0", "Dense_1", "GaussianFourierProjection_0", "GroupNorm_0",
        "GroupNorm_1", *(f"ResnetBlockBigGANpp_{i}" for i in range(10))},
}


@pytest.mark.parametrize("variant", [
    pytest.param(v, marks=pytest.mark.slow) if v == "no_conv_no_skip_rescale" else v
    for v in sorted(VARIANTS)])
def test_ncsnpp_variants(variant):
    cfg = tiny_ncsnpp(**VARIANTS[variant])
    model = get_model(cfg, image_size=8)
    x = jnp.broadcast_to(jax.random.uniform(jax.random.key(1), (1, 8, 8, 3)), (2, 8, 8, 3))
    labels = (jnp.array([3.0, 400.0]) if cfg["embedding_type"] == "positional"
              else jnp.array([0.5, 20.0]))
    variables = random_variables(model, x, labels)
    params = variables["params"]
    if variant in EXPECTED_TOP:
        assert set(params) == EXPECTED_TOP[variant]
    if variant == "residual_pyramids_ddpm_blocks":
        # FIR conv up-sampler of the output pyramid (8 -> 16 channels at the 4x4 -> 8x8 step)
        assert params["Upsample_1"]["Conv2d_0"]["weight"].shape == (3, 3, 16, 8)
        assert params["Downsample_1"]["Conv2d_0"]["weight"].shape == (3, 3, 3, 8)
    if variant == "output_skip_input_skip_cat":
        assert params["Combine_0"]["Conv_0"]["kernel"].shape == (1, 1, 3, 8)
        assert params["ResnetBlockBigGANpp_2"]["Conv_0"]["kernel"].shape == (3, 3, 16, 16)  # cat
    y = jax.jit(model.apply)(variables, x, labels)
    assert y.shape == x.shape and y.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(y)))
    scale = float(jnp.abs(y).max())
    assert scale > 1e-3
    if cfg["conditional"]:  # same image, different noise level -> different output
        assert float(jnp.abs(y[0] - y[1]).max()) > 1e-3 * scale
    else:
        np.testing.assert_allclose(y[0] * (1.0 if not cfg["scale_by_sigma"] else labels[0]),
                                   y[1] * (1.0 if not cfg["scale_by_sigma"] else labels[1]),
                                   rtol=1e-5, atol=1e-6 * scale)


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_class_conditioning_bf16_and_remat():
    """num_classes adds a (num_classes + 1)-row table whose last row is the null label; remat
    leaves names, outputs and gradients unchanged; bf16 compute keeps float32 params/outputs."""
    cfg = tiny_ncsnpp(num_classes=3, ch_mult=(1,), attn_resolutions=(8,))
    model = get_model(cfg, image_size=8)
    x = jax.random.uniform(jax.random.key(1), (3, 8, 8, 3))
    labels = jnp.array([0.5, 2.0, 20.0])
    y_cls = jnp.array([0, 1, 3])
    variables = random_variables(model, x, labels, y=y_cls)
    assert variables["params"]["label_embed"]["embedding"].shape == (4, 32)
    apply = jax.jit(lambda v, x, l, y: model.apply(v, x, l, y=y))
    out = apply(variables, x, labels, y_cls)
    out_other = apply(variables, x, labels, jnp.array([2, 2, 2]))
    assert float(jnp.abs(out - out_other)[:2].max()) > 1e-3 * float(jnp.abs(out).max())
    out_null = jax.jit(lambda v: model.apply(v, x, labels))(variables)  # y=None -> null label 3
    np.testing.assert_allclose(out_null[2], out[2], rtol=1e-5, atol=1e-6)
    assert float(jnp.abs(out_null[0] - out[0]).max()) > 1e-3 * float(jnp.abs(out).max())
    with pytest.raises(ValueError, match="class labels y were given but the model has "
                                         "num_classes=None"):
        abstract_init_y = get_model(tiny_ncsnpp(), image_size=8)
        jax.eval_shape(abstract_init_y.init, jax.random.key(0), x, labels, y=y_cls)

    remat = get_model(dict(cfg, remat=True), image_size=8)
    assert jax.tree_util.tree_structure(
        jax.eval_shape(remat.init, jax.random.key(0), x, labels, y=y_cls)) == \
        jax.tree_util.tree_structure(variables)
    bf16 = get_model(dict(cfg, dtype="bfloat16"), image_size=8)
    out_remat, out_bf16 = jax.jit(lambda v: (remat.apply(v, x, labels, y=y_cls),
                                             bf16.apply(v, x, labels, y=y_cls)))(variables)
    np.testing.assert_allclose(out_remat, out, rtol=1e-5, atol=1e-6 * float(jnp.abs(out).max()))
    assert out_bf16.dtype == jnp.float32
    rel = float(jnp.abs(out_bf16 - out).max() / jnp.abs(out).max())
    assert 1e-5 < rel < 5e-2  # bf16 was really used, and stays close


@pytest.mark.slow
def test_remat_gradients_equal():
    cfg = tiny_ncsnpp(ch_mult=(1, 2))
    model, remat = get_model(cfg, image_size=8), get_model(dict(cfg, remat=True), image_size=8)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([0.5, 20.0])
    variables = random_variables(model, x, labels)

    def loss(m):
        return lambda v: jnp.sum(m.apply(v, x, labels, train=True,
                                         rngs={"dropout": jax.random.key(0)}) ** 2)

    l0, g0 = jax.jit(jax.value_and_grad(loss(model)))(variables)
    l1, g1 = jax.jit(jax.value_and_grad(loss(remat)))(variables)
    np.testing.assert_allclose(l1, l0, rtol=1e-5)
    scale = max(float(jnp.abs(g).max()) for g in jax.tree_util.tree_leaves(g0))
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale)


def test_dropout_uses_dropout_rng():
    model = get_model(tiny_ncsnpp(dropout=0.5, ch_mult=(1,), attn_resolutions=()), image_size=8)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([0.5, 20.0])
    v = random_variables(model, x, labels)
    f = jax.jit(lambda v, k, train: model.apply(v, x, labels, train=train,
                                                rngs={"dropout": k}), static_argnums=2)
    a, b = f(v, jax.random.key(5), True), f(v, jax.random.key(5), True)
    c = f(v, jax.random.key(6), True)
    e, e2 = f(v, jax.random.key(6), False), f(v, jax.random.key(7), False)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(e, e2)
    assert float(jnp.abs(a - c).max()) > 1e-3 * float(jnp.abs(a).max())
    assert float(jnp.abs(a - e).max()) > 1e-3 * float(jnp.abs(a).max())


def test_ddpm_scale_by_sigma_divides_by_table():
    cfg = dict(REFERENCE_CONFIGS["vp/ddpm/cifar10"]["model"], nf=32, ch_mult=(1,),
               num_res_blocks=1, attn_resolutions=(8,))
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    labels = jnp.array([0, 999])
    plain = get_model(cfg, image_size=8)
    scaled = get_model(dict(cfg, scale_by_sigma=True), image_size=8)
    v = random_variables(plain, x, labels)
    sig = get_sigmas(0.01, 50.0, 1000)
    assert sig[0] == pytest.approx(50.0) and sig[-1] == pytest.approx(0.01)
    both = jax.jit(lambda v: (plain.apply(v, x, labels), scaled.apply(v, x, labels)))
    y_plain, y_scaled = both(v)
    assert float(jnp.abs(y_plain).max()) > 1e-2
    np.testing.assert_allclose(y_scaled, y_plain / sig[[0, 999]][:, None, None, None],
                               rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# NCSN / NCSNv2 (no PyTorch reference can run: checked against the paper's layout and configs)
# ---------------------------------------------------------------------------------------------


def _ncsn_cfg(name, **kw):
    base = dict(NCSN_CONFIGS["ve/ncsnv2/cifar10"]["model"], name=name, nf=8)
    base.update(kw)
    return base


def _top_level_output_shapes(model, size):
    shapes: dict[str, tuple] = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        path = context.module.path
        if len(path) == 1 and context.method_name == "__call__":
            shapes[path[0]] = tuple(out.shape[1:])
        return out

    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)
    with nn.intercept_methods(interceptor):
        params = jax.eval_shape(model.init, jax.random.key(0), x, labels)["params"]
    return params, shapes


def test_ncsnv2_64_tree_and_resolutions():
    model = get_model(_ncsn_cfg("ncsnv2_64"), image_size=16)
    params, shapes = _top_level_output_shapes(model, 16)
    assert set(params) == {"Conv_0", "Conv_1", "InstanceNorm2dPlus_0",
                           *(f"ResidualBlock_{i}" for i in range(8)),
                           *(f"RefineBlock_{i}" for i in range(4))}
    # One down-sampling (16 -> 8), then dilated stages at 8x8 (NCSNv2 paper, App. B.1)
    assert [shapes[f"ResidualBlock_{i}"] for i in range(8)] == [
        (16, 16, 8), (16, 16, 8), (8, 8, 16), (8, 8, 16), (8, 8, 16), (8, 8, 16), (8, 8, 16),
        (8, 8, 16)]
    assert [shapes[f"RefineBlock_{i}"] for i in range(4)] == [
        (8, 8, 16), (8, 8, 16), (8, 8, 16), (16, 16, 8)]
    rb2, rb4 = params["ResidualBlock_2"], params["ResidualBlock_4"]
    assert rb2["ConvMeanPool_0"]["Conv_0"]["kernel"].shape == (3, 3, 8, 16)
    assert rb2["ConvMeanPool_1"]["Conv_0"]["kernel"].shape == (1, 1, 8, 16)
    assert {k: v["kernel"].shape for k, v in rb4.items() if k.startswith("Conv")} == {
        "Conv_0": (3, 3, 16, 16), "Conv_1": (3, 3, 16, 16), "Conv_2": (3, 3, 16, 16)}
    assert rb4["InstanceNorm2dPlus_0"]["alpha"].shape == (1, 1, 1, 16)
    assert set(params["RefineBlock_0"]) == {"RCUBlock_0", "CRPBlock_0", "RCUBlock_1"}
    assert set(params["RefineBlock_3"]) == {"RCUBlock_0", "RCUBlock_1", "MSFBlock_0",
                                            "CRPBlock_0", "RCUBlock_2"}
    assert len(params["RefineBlock_3"]["RCUBlock_2"]) == 6  # end block: 3 RCUs x 2 convs
    assert "bias" not in params["RefineBlock_0"]["CRPBlock_0"]["Conv_0"]
    assert params["RefineBlock_3"]["MSFBlock_0"]["Conv_1"]["kernel"].shape == (3, 3, 16, 8)
    assert params["Conv_1"]["kernel"].shape == (3, 3, 8, 3)
    remat = get_model(_ncsn_cfg("ncsnv2_64", remat=True), image_size=16)
    assert jax.tree_util.tree_map(lambda a: a.shape, abstract_init(remat, 16)) == \
        jax.tree_util.tree_map(lambda a: a.shape, params)


@pytest.mark.parametrize("name, size, refine, ds", [("ncsnv2_128", 16, 5, 4),
                                                   ("ncsnv2_256", 16, 6, 8)])
def test_ncsnv2_large_layouts(name, size, refine, ds):
    model = get_model(_ncsn_cfg(name), image_size=size)
    params, shapes = _top_level_output_shapes(model, size)
    assert sum(k.startswith("RefineBlock") for k in params) == refine
    assert min(s[0] for k, s in shapes.items() if k.startswith("ResidualBlock")) == size // ds
    assert max(s[2] for k, s in shapes.items() if k.startswith("ResidualBlock")) == 32  # 4 nf
    assert shapes["Conv_1"] == (size, size, 3)


def test_ncsn_v1_conditional_norms():
    model = get_model(_ncsn_cfg("ncsn", num_scales=10, scale_by_sigma=False), image_size=16)
    params = abstract_init(model, 16)
    assert "ConditionalResidualBlock_7" in params and "CondRefineBlock_3" in params
    emb = params["ConditionalInstanceNorm2dPlus_0"]["Embed_0"]["embedding"]
    assert emb.shape == (10, 24)  # one row per noise level: gamma, alpha, beta
    x = jnp.broadcast_to(jax.random.uniform(jax.random.key(0), (1, 16, 16, 3)), (2, 16, 16, 3))
    idx = jnp.array([0, 9])
    v = random_variables(model, x, idx)
    # the noise index enters only through the norms: same image, two levels, two outputs
    y = jax.jit(model.apply)(v, x, idx)
    assert y.shape == x.shape and bool(jnp.all(jnp.isfinite(y)))
    assert float(jnp.abs(y[0] - y[1]).max()) > 1e-3 * float(jnp.abs(y).max())


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_ncsnv2_training_step_smoke():
    """SMLD loss (sigma^2-weighted DSM, Song & Ermon 2019 eq. 2) with Adam and EMA: a few steps
    on a fixed batch lower the loss."""
    model = get_model(_ncsn_cfg("ncsnv2_64", num_scales=10, sigma_max=1.0), image_size=8)
    sigmas = jnp.asarray(get_sigmas(0.01, 1.0, 10), jnp.float32)
    x0 = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    idx = jnp.array([0, 3, 6, 9])
    z = jax.random.normal(jax.random.key(1), x0.shape)
    params = random_variables(model, x0, idx)["params"]
    tx = optax.adam(1e-3)
    opt_state = tx.init(params)

    def loss_fn(p):
        s = sigmas[idx][:, None, None, None]
        score = model.apply({"params": p}, x0 + s * z, idx, train=True)
        return 0.5 * jnp.mean(jnp.sum((s * score + z) ** 2, axis=(1, 2, 3)))

    @jax.jit
    def step(p, ema, o):
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, o = tx.update(g, o, p)
        p = optax.apply_updates(p, upd)
        ema = jax.tree_util.tree_map(lambda e, q: 0.9 * e + 0.1 * q, ema, p)
        return p, ema, o, loss

    ema, losses = params, []
    for _ in range(4):
        params, ema, opt_state, loss = step(params, ema, opt_state)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.9 * losses[0], losses
    diff = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), ema, params)
    assert max(jax.tree_util.tree_leaves(diff)) > 0


def test_module_order_record():
    """`listed` records the marked modules' names only inside `record_module_order`, in
    creation order; NCSN++'s parameter-free input-pyramid re-samplers are not marked."""
    from score_jax.models.utils import record_module_order

    cfg = dict(REFERENCE_CONFIGS["ve/celebahq_256_ncsnpp_continuous"]["model"], nf=8,
               ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), resblock_type="ddpm",
               resamp_with_conv=False)
    model = get_model(cfg, image_size=8, num_channels=3)
    x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    jax.eval_shape(model.init, jax.random.key(0), x, t)  # no recorder: nothing happens
    with record_module_order() as order:
        variables = jax.eval_shape(model.init, jax.random.key(0), x, t)
    # Fourier, 2 Dense, conv, block, Downsample (main path), Combine, block, block+attn+block,
    # up path with the main Upsample_0 ...: the pyramid re-samplers (Downsample_1 on the way
    # down, Upsample_1 of the output_skip pyramid) are unlisted.
    assert order[:8] == ["GaussianFourierProjection_0", "Dense_0", "Dense_1", "Conv_0",
                         "ResnetBlockDDPMpp_0", "Downsample_0", "Combine_0",
                         "ResnetBlockDDPMpp_1"]
    assert "Downsample_1" not in order and "Upsample_1" not in order and "Upsample_0" in order
    assert set(order) <= set(variables["params"]) | {"Downsample_0", "Upsample_0"}
    assert len(order) == len(set(order))
