"""Every public sampling entry point at the ends of its time interval (issue 26 item 6): eps at 0,
at T, the smallest and largest valid eps, one step. Each gives finite results or a ValueError
naming the value; nothing returns NaN / inf or hangs. Tiny shapes (2-D data, batch 4), but one
compile per case (~6 min in all on 2 busy cores): slow."""
import jax
import jax.numpy as jnp
import pytest

from score_jax import flow, likelihood, sampling, toy
from score_jax.guidance import cfg, colorization, inpainting
from score_jax.sde import VESDE, VPSDE, subVPSDE

pytestmark = pytest.mark.slow

G = toy.gaussian(jnp.asarray([0.3, -0.3]), 0.5)
SDES = {"vp": VPSDE(N=50), "subvp": subVPSDE(N=50), "ve": VESDE(N=50)}
# eps: 0 and T are refused; the smallest float32-distinct eps and the largest eps below T run.
EPS = {"zero": 0.0, "T": 1.0, "tiny": 1e-7, "near_T": 0.999}
STEPS = {"pc": dict(predictor="reverse_diffusion", corrector="none"), "ode": dict(num_steps=4),
         "sde": {}, "ddim": {}, "euler": {}, "dpm_solver": dict(order=3), "heun": dict(s_churn=1.0),
         "unipc": dict(order=3)}


def _finite_or_valueerror(fn):
    try:
        out = fn()
    except ValueError as e:
        assert str(e), "ValueError without a message"
        return "ValueError"
    leaves = [x for x in jax.tree_util.tree_leaves(out) if hasattr(x, "dtype")]
    assert all(bool(jnp.all(jnp.isfinite(jnp.asarray(x, jnp.float32)))) for x in leaves
               if jnp.issubdtype(x.dtype, jnp.floating)), out
    return "finite"


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("method", list(sampling.METHODS))
def test_sample_at_interval_ends(method, sde_name):
    sde = SDES[sde_name]
    sf = G.score_fn(sde)
    base = dict(STEPS[method])
    results = {}
    for name, eps in EPS.items():
        for denoise, n in ((True, 2), (False, 1)):  # the fewest steps each rule allows
            opts = dict(base, eps=eps, denoise=denoise)
            opts["num_steps"] = 50 if method == "pc" else n
            if method == "pc" and not denoise:
                opts["num_steps"] = 50
            results[(name, denoise)] = _finite_or_valueerror(
                lambda: sampling.sample(jax.random.key(0), sde, sf, (4, 2), method, **opts))
    for denoise in (True, False):
        assert results[("zero", denoise)] == "ValueError"
        assert results[("T", denoise)] == "ValueError"
        assert results[("tiny", denoise)] == "finite", (method, sde_name)
        assert results[("near_T", denoise)] == "finite", (method, sde_name)


def test_guidance_at_interval_ends():
    sde = VPSDE(N=50)
    sf = G.score_fn(sde)
    data = jnp.ones((4, 2))
    for eps, want in ((0.0, "ValueError"), (1.0, "ValueError"), (1e-7, "finite"), (0.999, "finite")):
        for sampler, o in (("pc", dict(num_steps=50)), ("ode", dict(num_steps=2)),
                           ("ddim", dict(num_steps=2)), ("heun", dict(num_steps=2))):
            got = _finite_or_valueerror(lambda: inpainting.inpaint(
                jax.random.key(0), sde, sf, data, jnp.asarray([1.0, 0.0]), sampler=sampler, eps=eps, **o))
            assert got == want, (sampler, eps)
    gray = jnp.full((2, 2, 2, 1), 0.5)
    sf3 = toy.gaussian(jnp.zeros((2, 2, 3)), 0.5).score_fn(sde)
    for eps, want in ((0.0, "ValueError"), (1e-7, "finite"), (0.999, "finite")):
        assert _finite_or_valueerror(lambda: colorization.colorize(
            jax.random.key(0), sde, sf3, gray, sampler="ddim", num_steps=2, eps=eps)) == want
    guided = cfg.classifier_free_guidance(lambda x, t, y: -x, jnp.zeros(4, jnp.int32), 2.0, 3)
    for eps, want in ((0.0, "ValueError"), (1e-7, "finite"), (0.999, "finite")):
        assert _finite_or_valueerror(lambda: sampling.sample(
            jax.random.key(0), sde, guided, (4, 2), "dpm_solver", num_steps=2, eps=eps)) == want


def test_flow_sample_at_interval_ends():
    u = flow.MixtureVelocity(toy.ring_mixture(4, radius=1.0, std=0.3), flow.CondOTPath())
    for solver, n in (("euler", 1), ("heun", 1), ("midpoint", 1), ("euler_maruyama", 1)):
        assert _finite_or_valueerror(lambda: flow.flow_sample(
            jax.random.key(0), u, (4, 2), solver=solver, num_steps=n)) == "finite"
    assert _finite_or_valueerror(lambda: flow.flow_sample(
        jax.random.key(0), u, (4, 2), solver="euler", num_steps=0)) == "ValueError"


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_likelihood_at_interval_ends(sde_name):
    sde = SDES[sde_name]
    sf = G.score_fn(sde)
    x = jnp.asarray([[0.3, -0.3], [0.0, 0.1]])
    for eps, want in ((0.0, "ValueError"), (1.0, "ValueError"), (1e-7, "finite"), (0.999, "finite")):
        got = _finite_or_valueerror(lambda: likelihood.log_likelihood(
            jax.random.key(0), sde, sf, x, eps=eps, num_steps=1, solver="heun"))
        assert got == want, eps
    img = jnp.zeros((2, 2, 2, 1), jnp.uint8)
    sfi = toy.gaussian(jnp.zeros((2, 2, 1)), 0.5).score_fn(sde)
    for eps, want in ((0.0, "ValueError"), (1e-7, "finite"), (0.999, "finite")):
        assert _finite_or_valueerror(lambda: likelihood.bits_per_dim(
            jax.random.key(0), sde, sfi, img, eps=eps, num_steps=1, solver="heun")) == want
