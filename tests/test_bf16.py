"""Memory levers of large models: bf16 compute with float32 parameters for every network (the
times handed to the network stay float32), and attention through
``jax.nn.dot_product_attention`` with the numbers of the attention written out."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import losses
from score_jax import sde as sde_lib
from score_jax.models import get_model
from score_jax.models.utils import dot_product_attention

# one tiny config per network family (8 x 8 images)
NETWORKS = {
    "ncsnpp": dict(name="ncsnpp", nf=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                   dropout=0.0, resamp_with_conv=True, conditional=True, fir=True,
                   fir_kernel=(1, 3, 3, 1), skip_rescale=True, resblock_type="biggan",
                   progressive="none", progressive_input="residual", progressive_combine="sum",
                   attention_type="ddpm", init_scale=0.0, embedding_type="positional",
                   fourier_scale=16, conv_size=3, nonlinearity="swish", scale_by_sigma=False,
                   normalization="GroupNorm"),
    "ddpm": dict(name="ddpm", nf=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                 dropout=0.0, resamp_with_conv=True, conditional=True, nonlinearity="swish",
                 scale_by_sigma=False, normalization="GroupNorm"),
    "ncsnv2_64": dict(name="ncsnv2_64", nf=8, normalization="InstanceNorm++", nonlinearity="elu",
                      scale_by_sigma=True, sigma_min=0.01, sigma_max=50.0, num_scales=10),
    "dit": dict(name="dit", patch_size=2, hidden_size=32, depth=2, num_heads=4),
}
AUTOENCODER = {"name": "autoencoder_kl", "block_out_channels": (8, 16), "layers_per_block": 1,
               "latent_channels": 2, "norm_num_groups": 4}


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


def _random_params(model, *args):
    """Float32 parameters of ``model``'s tree with random values (init zeroes some outputs),
    without compiling init: N(0, 1/fan_in) weights, N(1, 0.1^2) scales, N(0, 0.1^2) others."""
    abstract = jax.eval_shape(model.init, jax.random.key(0), *args)
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        name = str(path[-1].key)
        if name == "scale":
            v = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        elif leaf.ndim >= 2:
            v = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        else:
            v = 0.1 * rng.standard_normal(leaf.shape)
        return jnp.asarray(v, leaf.dtype)

    return abstract, jax.tree_util.tree_map_with_path(fill, abstract)


def _labels(name):
    return jnp.array([1, 7]) if name == "ncsnv2_64" else jnp.array([0.3, 0.8])


_SLOW = pytest.mark.slow  # 1-2 min each on the shared 2-core CPU


@pytest.mark.parametrize("name", [pytest.param(n, marks=_SLOW) if n != "dit" else n
                                  for n in sorted(NETWORKS)])
def test_bf16_network_float32_params_and_close_output(name):
    """dtype='bfloat16': parameters float32 (init and the optimiser see float32), the output
    float32 and within bf16 round-off of the float32 network's on the same parameters."""
    cfg = NETWORKS[name]
    f32 = get_model(cfg, image_size=8, num_channels=3)
    bf16 = get_model(dict(cfg, dtype="bfloat16"), image_size=8, num_channels=3)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    labels = _labels(name)
    abstract, params = _random_params(bf16, x, labels)
    assert {leaf.dtype for leaf in _leaves(abstract)} == {jnp.dtype(jnp.float32)}
    out32, out16 = jax.jit(lambda v: (f32.apply(v, x, labels), bf16.apply(v, x, labels)))(params)
    assert out16.dtype == jnp.float32
    assert 1e-5 < _rel(out16, out32) < 5e-2  # bf16 really used, and close


@_SLOW
def test_bf16_autoencoder_float32_params_and_close_output():
    f32 = get_model(AUTOENCODER, num_channels=3)
    bf16 = get_model(dict(AUTOENCODER, dtype="bfloat16"), num_channels=3)
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3)) * 2 - 1
    abstract, params = _random_params(bf16, x)
    assert {leaf.dtype for leaf in _leaves(abstract)} == {jnp.dtype(jnp.float32)}
    (r32, m32, l32), (r16, m16, l16) = jax.jit(lambda v: (f32.apply(v, x), bf16.apply(v, x)))(params)
    assert r16.dtype == m16.dtype == l16.dtype == jnp.float32
    assert 1e-5 < _rel(r16, r32) < 5e-2 and _rel(m16, m32) < 5e-2


_SEEN: list = []


class _Recorder(nn.Module):
    """The network, recording the dtypes it is called with (at trace time) in ``_SEEN``."""

    net: nn.Module

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        _SEEN.append((x.dtype, labels.dtype))
        return self.net(x, labels, train=train, y=y)


@pytest.mark.parametrize("continuous", [True, False])
def test_bf16_network_gets_float32_times_and_images(continuous):
    """The training loss hands a bf16 network float32 images and float32 times / noise levels
    (the time grid never passes through bf16); its loss and gradients are float32."""
    model = _Recorder(get_model(dict(NETWORKS["ddpm"], dtype="bfloat16"), image_size=8,
                                num_channels=3))
    sde = sde_lib.VPSDE()
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 3))
    _, params = _random_params(model, x, jnp.array([0.3, 0.8]))
    _SEEN.clear()
    loss_fn = losses.get_loss_fn(sde, model, train=True, continuous=continuous, reduce_mean=True)
    loss, grads = jax.eval_shape(jax.value_and_grad(lambda p: loss_fn(p, x, jax.random.key(2))[0]),
                                 params)  # dtypes only: abstract evaluation
    assert loss.dtype == jnp.float32
    assert {g.dtype for g in _leaves(grads)} == {jnp.dtype(jnp.float32)}
    assert _SEEN and all(xd == jnp.float32 for xd, _ in _SEEN)
    # continuous: t * 999 (float32); discrete: the integer step index
    assert {ld for _, ld in _SEEN} == {jnp.dtype(jnp.float32 if continuous else jnp.int32)}


def _written_out_attention(q, k, v, scale):
    """The attention as the networks computed it before (einsum, scale, float32 softmax)."""
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * scale
    w = jax.nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
    return jnp.einsum("bhqk,bkhd->bqhd", w.astype(v.dtype), v)


@pytest.mark.parametrize("heads,width", [(1, 16), (4, 8)])
def test_dot_product_attention_equals_written_out(heads, width):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 16, heads, width)) for i in range(3))
    scale = width ** -0.5
    ours = jax.jit(dot_product_attention, static_argnums=3)(q, k, v, scale)
    ref = jax.jit(_written_out_attention, static_argnums=3)(q, k, v, scale)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)
    with jax.default_matmul_precision("highest"):
        q16, k16, v16 = (a.astype(jnp.bfloat16) for a in (q, k, v))
        out16 = jax.jit(dot_product_attention, static_argnums=3)(q16, k16, v16, scale)
    assert out16.dtype == jnp.bfloat16 and _rel(out16, ref) < 3e-2


def test_dot_product_attention_float64(x64):
    q, k, v = (jax.random.normal(jax.random.key(i), (2, 8, 2, 4), jnp.float64) for i in range(3))
    out = dot_product_attention(q, k, v, 0.5)
    assert out.dtype == jnp.float64
    np.testing.assert_allclose(out, _written_out_attention(q, k, v, 0.5), rtol=1e-13)
