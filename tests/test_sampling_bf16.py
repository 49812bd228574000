"""A bfloat16 sampler state keeps float32 times (issue 26 item 1): the t handed to score_fn, the
time grid, noise levels and step sizes are float32 whatever the state's dtype, so the t sequence
of a bf16 run equals the float32 run's exactly, and nearby grid points stay distinct (bf16 has 8
significant bits: 0.98991 would become 0.98828)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import flow, sampling, toy
from score_jax.guidance import cfg, inpainting
from score_jax.sde import VPSDE

G = toy.gaussian(jnp.asarray([0.5, -0.5]), 0.5)
N, EPS = 40, 0.9  # grid points 0.1 / 39 apart collapse in bf16 near t = 1 (its spacing is 2^-8 there)

CASES = [
    ("pc", dict(num_steps=N, eps=EPS)),
    ("pc", dict(num_steps=N, eps=EPS, predictor="ancestral_sampling", corrector="ald")),
    ("ode", dict(num_steps=N, eps=EPS, solver="heun")),
    ("sde", dict(num_steps=N, eps=EPS)),
    ("ddim", dict(num_steps=N, eps=EPS, eta=0.5, schedule="time_uniform")),
    ("dpm_solver", dict(num_steps=N, eps=EPS, schedule="time_uniform")),
    ("heun", dict(num_steps=N, eps=EPS, s_churn=5.0, schedule="time_uniform")),
    ("unipc", dict(num_steps=N, eps=EPS, schedule="time_uniform")),
]


def _recording(sf):
    ts = []

    def score_fn(x, t):
        jax.debug.callback(lambda t: ts.append(np.asarray(t[0])), t)
        return sf(x.astype(jnp.float32), t.astype(jnp.float32)).astype(x.dtype)

    return score_fn, ts


def _times(run, dtype):
    score_fn, ts = _recording(G.score_fn(VPSDE(N=N)))
    x = run(score_fn, dtype)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert x.dtype == dtype and bool(jnp.all(jnp.isfinite(x.astype(jnp.float32))))
    return ts


def _check(run):
    t32 = _times(run, jnp.float32)
    t16 = _times(run, jnp.bfloat16)
    assert {t.dtype for t in t16} == {np.dtype(np.float32)}
    # The same times (callbacks may run out of order: compared sorted).
    np.testing.assert_array_equal(np.sort(np.stack(t16)), np.sort(np.stack(t32)))
    return [float(t) for t in t16]


@pytest.mark.parametrize("method,opts", CASES, ids=[f"{m}-{'-'.join(map(str, o.values()))}"
                                                    for m, o in CASES])
def test_bf16_state_keeps_float32_times(method, opts):
    sde = VPSDE(N=N)
    x_T = sde.prior_sampling(jax.random.key(1), (4, 2))

    def run(score_fn, dtype):
        return sampling.sample(jax.random.key(0), sde, score_fn, (4, 2), method, dtype=dtype,
                               x_init=x_T.astype(dtype), **opts)[0]

    firsts = _check(run)
    # The grid's distinct times would collapse in bf16 (the test would catch bf16 times).
    as_bf16 = {float(v) for v in jnp.asarray(firsts, jnp.bfloat16).astype(jnp.float32)}
    assert len(as_bf16) < len(set(firsts))


def test_bf16_adaptive_ode_times_are_float32():
    sde = VPSDE()
    score_fn, ts = _recording(G.score_fn(sde))
    x, _ = sampling.sample(jax.random.key(0), sde, score_fn, (4, 2), "ode", dtype=jnp.bfloat16)
    jax.effects_barrier()
    assert x.dtype == jnp.bfloat16 and {t.dtype for t in ts} == {np.dtype(np.float32)}


def test_bf16_guidance_and_flow_times():
    sde = VPSDE(N=N)  # the recorded score is G's under VP (``_times``)
    data = jnp.ones((4, 2))

    def inpaint_run(score_fn, dtype):
        return inpainting.inpaint(jax.random.key(0), sde, score_fn, data.astype(dtype),
                                  jnp.asarray([1.0, 0.0]), sampler="ddim", num_steps=N, eps=EPS,
                                  schedule="time_uniform")[0]

    _check(inpaint_run)

    # CFG: the wrapper hands the conditional model float32 t.
    seen = []

    def cond(x, t, y):
        seen.append(t.dtype)
        return -x
    guided = cfg.classifier_free_guidance(cond, jnp.zeros(4, jnp.int32), 2.0, 3)
    guided(jnp.ones((4, 2), jnp.bfloat16), jnp.full((4,), 0.5, jnp.float32))
    assert seen and all(d == jnp.float32 for d in seen)

    path = flow.CondOTPath()
    u = flow.MixtureVelocity(toy.ring_mixture(4, radius=1.0, std=0.3), path)
    us = []

    def vel(x, t):
        jax.debug.callback(lambda t: us.append(np.asarray(t).dtype), t)
        return u(x.astype(jnp.float32), t.astype(jnp.float32)).astype(x.dtype)
    x, _ = flow.flow_sample(jax.random.key(0), vel, (4, 2), solver="euler", num_steps=N,
                            dtype=jnp.bfloat16)
    jax.effects_barrier()
    assert us and set(us) == {np.dtype(np.float32)}
