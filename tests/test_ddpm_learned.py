"""The learned-variance DDPM sampler (DiT's official sampler) against the official DiT diffusion
code: ``tests/fixtures/ddpm_learned/fixtures.npz`` from ``make_fixtures.py`` (facebookresearch/DiT
``create_diffusion`` + ``p_sample_loop`` in float64, fixed noise, a toy learned-variance network)."""
import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.sampling.ddpm import learned_variance_loop, space_timesteps
from score_jax.score import LearnedVarianceScoreFn, get_score_fn

FIXTURES = Path(__file__).parent / "fixtures" / "ddpm_learned" / "fixtures.npz"


class ToyLearnedSigma(nn.Module):
    """The toy network of make_fixtures.py, NHWC: 2C channels (eps, v)."""

    @nn.compact
    def __call__(self, x, t, *, train=False, y=None, full_output=False):
        C = x.shape[-1]
        tt = t.astype(x.dtype)[:, None, None, None]
        c = jnp.arange(C, dtype=x.dtype)
        yy = jnp.zeros_like(tt) if y is None else y.astype(x.dtype)[:, None, None, None]
        eps = 0.9 * x + 0.1 * jnp.tanh(0.8 * x + 0.3 * jnp.sin((c + 1) * tt / 97)
                                       + 0.5 * (yy + 1) * (c - 1))
        v = jnp.tanh(0.6 * x * (c + 1) / C - jnp.cos(tt / 311))
        return jnp.concatenate([eps, v], -1) if full_output else eps


@pytest.fixture(scope="module")
def ref():
    with np.load(FIXTURES) as f:
        return dict(f)


def _official_betas():
    return np.linspace(1e-4, 0.02, 1000)  # DiT get_named_beta_schedule("linear", 1000)


def test_vpsde_betas_are_dit_linear_schedule(x64):
    np.testing.assert_allclose(np.asarray(sde_lib.VPSDE(0.1, 20.0, N=1000).discrete_betas),
                               _official_betas(), rtol=1e-14)


@pytest.mark.parametrize("spec", ["6", "3,2,4", "250", "10,15,20", "ddim50", "1000", "7"])
def test_space_timesteps_equals_official(ref, spec):
    assert space_timesteps(1000, spec) == ref[f"space/{spec}"].tolist()


@pytest.mark.parametrize("case,respacing", [("few", "6"), ("sections", "3,2,4"),
                                            ("full250", "250")])
def test_loop_equals_official_p_sample_loop(ref, x64, case, respacing):
    timesteps = space_timesteps(1000, respacing)
    assert timesteps == ref[f"{case}/timesteps"].tolist()
    labels = jnp.asarray(ref[f"{case}/labels"])
    model = ToyLearnedSigma()

    def output_fn(x, t):
        out = model.apply({}, x, t, y=labels, full_output=True)
        c = x.shape[-1]
        return out[..., :c], out[..., c:]

    noise = jnp.asarray(ref[f"{case}/noise"])  # in the order drawn: step K-1 first
    K = len(timesteps)
    x = jax.jit(lambda x0: learned_variance_loop(
        output_fn, jnp.asarray(_official_betas()), timesteps, x0,
        lambda k, x: noise[K - 1 - k]))(jnp.asarray(ref[f"{case}/x_init"]))
    assert x.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(x), ref[f"{case}/sample"], atol=1e-6, rtol=0)
    # the loop is not trivially close: one step of noise changes the sample by far more
    assert np.max(np.abs(ref[f"{case}/sample"] - ref[f"{case}/x_init"])) > 0.1


def _cfg_sample(ref, guided_channels):
    case = "cfg250"
    timesteps = space_timesteps(1000, "250")
    labels = jnp.asarray(ref[f"{case}/labels"])
    score_fn = LearnedVarianceScoreFn(sde_lib.VPSDE(0.1, 20.0, N=1000), {}, ToyLearnedSigma(),
                                      model_kwargs={"y": labels},
                                      guidance_scale=float(ref[f"{case}/cfg_scale"]),
                                      num_classes=5, guided_channels=guided_channels)
    noise = jnp.asarray(ref[f"{case}/noise"])
    K = len(timesteps)
    return np.asarray(learned_variance_loop(score_fn.ddpm_output, jnp.asarray(_official_betas()),
                                            timesteps, jnp.asarray(ref[f"{case}/x_init"]),
                                            lambda k, x: noise[K - 1 - k]))


def test_cfg_equals_official_forward_with_cfg(ref, x64):
    """DiT's forward_with_cfg: guidance on the first 3 of the 4 eps channels, the rest (the
    fourth eps channel, the variance) conditional; guiding all channels is measurably different."""
    np.testing.assert_allclose(_cfg_sample(ref, 3), ref["cfg250/sample"], atol=1e-6, rtol=0)
    assert np.max(np.abs(_cfg_sample(ref, None) - ref["cfg250/sample"])) > 1e-3


@functools.cache
def _tiny_dit(learn_sigma=True):
    from score_jax.models import dit_config, get_model

    model = get_model(dit_config("DiT-S/2", depth=1, hidden_size=16, num_heads=2, num_classes=4,
                                 learn_sigma=learn_sigma), image_size=4, num_channels=4)
    x = jnp.zeros((1, 4, 4, 4))
    variables = jax.jit(lambda k: model.init(k, x, jnp.zeros((1,)),
                                             y=jnp.zeros((1,), jnp.int32)))(jax.random.key(0))
    return model, variables


@pytest.mark.slow  # a DiT init + two compiles (~5 s unloaded; test_released covers the DiT path)
def test_sample_method_on_a_dit_and_the_eps_half_score():
    sde = sde_lib.VPSDE(0.1, 20.0, N=1000)
    model, variables = _tiny_dit()
    y = jnp.array([0, 3])
    fn = LearnedVarianceScoreFn(sde, variables, model, model_kwargs={"y": y},
                                guidance_scale=1.5, num_classes=4)
    x, nfe = sampling.sample(jax.random.key(1), sde, fn, (2, 4, 4, 4), "learned_variance",
                             num_steps=5)
    assert nfe == 5 and x.shape == (2, 4, 4, 4) and bool(jnp.all(jnp.isfinite(x)))
    # the score of the eps half equals the plain discrete VP wiring of the same network
    plain = get_score_fn(sde, model, variables, continuous=False, model_kwargs={"y": y})
    unguided = LearnedVarianceScoreFn(sde, variables, model, model_kwargs={"y": y})
    xt, t = jax.random.normal(jax.random.key(2), (2, 4, 4, 4)), jnp.array([0.3, 0.9])
    a, b = jax.jit(lambda f, g, x, t: (f(x, t), g(x, t)))(unguided, plain, xt, t)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    # fast samplers on the same object: tests/test_released.py (slow), ddim on a released config


def test_errors():
    sde = sde_lib.VPSDE(0.1, 20.0, N=1000)
    with pytest.raises(ValueError, match="valid: 2..1000"):
        sampling.validate_options("learned_variance", sde, {"num_steps": 1})
    with pytest.raises(ValueError, match="cannot divide"):
        sampling.validate_options("learned_variance", sde, {"num_steps": 2000})
    with pytest.raises(ValueError, match="integer stride"):
        sampling.validate_options("learned_variance", sde, {"respacing": "ddim999"})
    with pytest.raises(ValueError, match="LearnedVarianceScoreFn"):
        sampling.sample(jax.random.key(0), sde, lambda x, t: -x, (1, 2), "learned_variance",
                        num_steps=3)
    fn = LearnedVarianceScoreFn(sde_lib.VESDE(), {}, ToyLearnedSigma())
    with pytest.raises(ValueError, match="VPSDE"):
        sampling.sample(jax.random.key(0), sde_lib.VESDE(), fn, (1, 2, 2, 4),
                        "learned_variance", num_steps=3)
    fn = LearnedVarianceScoreFn(sde, {}, EpsOnly())
    with pytest.raises(ValueError, match="2C = 8"):
        sampling.sample(jax.random.key(0), sde, fn, (1, 2, 2, 4), "learned_variance",
                        num_steps=3)


class EpsOnly(nn.Module):
    """A network without the variance channels (DiT with learn_sigma=False)."""

    @nn.compact
    def __call__(self, x, t, *, train=False, y=None, full_output=False):
        return -x


def test_loop_in_float32_stays_close_to_official(ref):
    """The production precision: float32 state and coefficients (log-space schedule) within
    1e-5 of the float64 official samples (measured 9.5e-7 for 250 steps)."""
    timesteps = space_timesteps(1000, "250")
    labels = jnp.asarray(ref["full250/labels"])
    model = ToyLearnedSigma()

    def output_fn(x, t):
        out = model.apply({}, x, t, y=labels, full_output=True)
        return out[..., :x.shape[-1]], out[..., x.shape[-1]:]

    noise = jnp.asarray(ref["full250/noise"], jnp.float32)
    x = jax.jit(lambda x0: learned_variance_loop(
        output_fn, jnp.asarray(_official_betas(), jnp.float32), timesteps, x0,
        lambda k, x: noise[len(timesteps) - 1 - k]))(jnp.asarray(ref["full250/x_init"], jnp.float32))
    assert x.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(x), ref["full250/sample"], atol=1e-5, rtol=0)
