"""Fast samplers (DDIM, DPM-Solver++, EDM Heun) against closed forms on Gaussian data."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from score_jax import sampling, toy
from score_jax.sampling import fast
from score_jax.sde import VESDE, VPSDE, subVPSDE

SDES = {"vp": VPSDE(), "subvp": subVPSDE(), "ve": VESDE()}
MU, SD = 0.7, 0.3


def _gaussian(dtype):
    return toy.gaussian(jnp.asarray([MU, -MU], dtype), SD)


def _pf_ode_exact(sde, x_T, t):
    """Probability-flow ODE solution for N(mu, SD^2 I) data (the flow of a Gaussian is affine):
    x_t - a_t mu = (std_t / std_T)(x_T - a_T mu), std_t^2 = a_t^2 SD^2 + s_t^2."""
    mu = jnp.asarray([MU, -MU], x_T.dtype)
    a_T, s_T = sde.marginal_coeffs(jnp.asarray(sde.T, x_T.dtype))
    a_t, s_t = sde.marginal_coeffs(jnp.asarray(t, x_T.dtype))
    std_T = jnp.sqrt(a_T**2 * SD**2 + s_T**2)
    std_t = jnp.sqrt(a_t**2 * SD**2 + s_t**2)
    return a_t * mu + std_t / std_T * (x_T - a_T * mu)


@pytest.mark.parametrize("name", list(SDES))
def test_inverse_log_snr_roundtrip(name, x64):
    sde = SDES[name]
    t = jnp.linspace(sde.T, sde.sampling_eps, 17, dtype=jnp.float64)
    t_back = fast.inverse_log_snr(sde, sde.log_snr(t))
    np.testing.assert_allclose(t_back, t, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("schedule", fast.CONTINUOUS_SCHEDULES)  # spacings: test_discrete_schedules.py
def test_timesteps_monotone_and_ends(schedule):
    sde = VPSDE()
    t = fast.get_timesteps(sde, 12, 1e-3, schedule)
    assert t[0] == sde.T and np.isclose(t[-1], 1e-3)
    assert bool(jnp.all(jnp.diff(t) < 0))
    lam = sde.log_snr(t)
    if schedule == "logSNR":
        np.testing.assert_allclose(jnp.diff(lam), jnp.diff(lam)[0], rtol=1e-3)
    if schedule == "edm":  # uniform in sigma^(1/7)
        sig = jnp.exp(-lam / 7.0)
        np.testing.assert_allclose(jnp.diff(sig), jnp.diff(sig)[0], rtol=1e-3)


def _ancestral_moments(sde, gauss, t_grid):
    """Exact mean/var (per coordinate) of the ancestral chain
    x_{i+1} ~ q(x_{i+1} | x_i, x0_hat(x_i)) started from the prior, written through
    ``sde.ancestral_posterior`` (a code path independent of DDIM's). Every map is affine for
    Gaussian data, so moments propagate exactly."""
    score = gauss.score_fn(sde)
    m = jnp.zeros((1, 2), jnp.float64)
    v = jnp.full((1, 2), sde.prior_std**2, jnp.float64)
    for i in range(len(t_grid) - 1):
        t = jnp.full((1,), t_grid[i])
        tn = jnp.full((1,), t_grid[i + 1])
        a_t, s_t = sde.marginal_coeffs(t)

        def post_mean(x, t=t, tn=tn, a_t=a_t, s_t=s_t):
            x0 = (x + s_t[:, None] ** 2 * score(x, t)) / a_t[:, None]
            return sde.ancestral_posterior(x, t, tn, x0)

        b, std = post_mean(jnp.zeros((1, 2)))
        A = post_mean(jnp.ones((1, 2)))[0] - b
        m, v = A * m + b, A**2 * v + std[:, None] ** 2
    return m[0], v[0]


@pytest.mark.parametrize("name", list(SDES))
def test_ddim_eta1_equals_ancestral_sampling(name, x64):
    sde = SDES[name]
    g = _gaussian(jnp.float64)
    N, n = 10, 40000
    x, nfe = sampling.sample(jax.random.key(0), sde, g.score_fn(sde), (n, 2), "ddim",
                             dtype=jnp.float64, num_steps=N, eta=1.0, denoise=False,
                             schedule="time_uniform")
    assert int(nfe) == N
    t_grid = fast.get_timesteps(sde, N + 1, sde.sampling_eps, "time_uniform", dtype=jnp.float64)
    m, v = _ancestral_moments(sde, g, t_grid)
    emp_m, emp_v = jnp.mean(x, 0), jnp.var(x, 0)
    np.testing.assert_allclose(emp_m, m, atol=5 * np.sqrt(v.max() / n))
    np.testing.assert_allclose(emp_v, v, rtol=5 * np.sqrt(2 / n))


def _convergence(sde, method, Ns, **opts):
    g = _gaussian(jnp.float64)
    x_T = sde.prior_sampling(jax.random.key(3), (8, 2), jnp.float64)
    ref = _pf_ode_exact(sde, x_T, sde.sampling_eps)
    errs = []
    for N in Ns:
        x, _ = sampling.sample(jax.random.key(1), sde, g.score_fn(sde), (8, 2), method, x_init=x_T,
                               dtype=jnp.float64, num_steps=N, denoise=False, **opts)
        errs.append(float(jnp.max(jnp.abs(x - ref))))
    return np.polyfit(np.log(Ns), np.log(errs), 1)[0], errs


CASES = [("ddim", {}, 1), ("dpm_solver", {"order": 1}, 1), ("dpm_solver", {"order": 2}, 2),
         ("dpm_solver", {"order": 3}, 3), ("heun", {}, 2)]


@pytest.mark.parametrize("method,opts,order", CASES,
                         ids=[f"{m}{o.get('order', '')}" for m, o, _ in CASES])
def test_convergence_order_vp(method, opts, order, x64):
    slope, errs = _convergence(VPSDE(), method, [16, 32], **opts)
    assert errs[-1] < errs[0]
    assert -order - 2.0 < slope < -order + 0.3, (slope, errs)


@pytest.mark.parametrize("name", ["subvp", "ve"])
@pytest.mark.parametrize("method,opts,order", [("dpm_solver", {"order": 3}, 3), ("heun", {}, 2)])
def test_convergence_order_subvp_ve(name, method, opts, order, x64):
    slope, errs = _convergence(SDES[name], method, [16, 32], **opts)
    # One clean-clone CI run saw slope -2.685 (errs [0.00346, 0.00054]) for dpm_solver3 on
    # sub-VP where every isolated run gives -3.81 ([0.0144, 0.00103]), independent of x_T: the
    # context below is printed so that a recurrence can be diagnosed.
    from score_jax import runner

    context = dict(x64=jax.config.read("jax_enable_x64"), runner_cache=runner.cache_info(),
                   grid=np.asarray(sampling.get_timesteps(SDES[name], 17, SDES[name].sampling_eps,
                                                          dtype=jnp.float64)).tolist(),
                   xla_flags=os.environ.get("XLA_FLAGS"), devices=jax.device_count())
    assert -order - 2.0 < slope < -order + 0.3, (slope, errs, context)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SDES))
@pytest.mark.parametrize("method,opts,order", CASES)
@pytest.mark.parametrize("schedule", ["logSNR", "time_quadratic"])
def test_convergence_order_all(name, method, opts, order, schedule, x64):
    slope, errs = _convergence(SDES[name], method, [16, 32, 64, 128], schedule=schedule, **opts)
    assert -order - 1.5 < slope < -order + 0.3, (slope, errs)


@pytest.mark.slow
def test_dpm_solver3_third_order_asymptotically(x64):
    """Documents why fast.py doubles D2: with it the error keeps falling as h^3 (the reference's
    coefficient falls back to h^2 here) and ends far below the second-order solver's."""
    slope3, errs3 = _convergence(VPSDE(), "dpm_solver", [32, 64, 128], order=3)
    _, errs2 = _convergence(VPSDE(), "dpm_solver", [32, 64, 128], order=2)
    assert slope3 < -2.7 and errs3[-1] < 0.05 * errs2[-1]


@pytest.mark.parametrize("method,opts,expected", [
    ("ddim", {"eta": 0.5}, 7), ("dpm_solver", {"order": 3}, 7), ("heun", {"s_churn": 5.0}, 13),
    ("heun", {"denoise": False}, 14),
])
def test_true_nfe(method, opts, expected):
    """The returned NFE is the number of score evaluations actually executed."""
    calls = []
    g = _gaussian(jnp.float32)
    sde = VPSDE()
    exact = g.score_fn(sde)

    def counting_score(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return exact(x, t)

    x, nfe = sampling.sample(jax.random.key(0), sde, counting_score, (4, 2), method, num_steps=7,
                             **opts)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert int(nfe) == expected == len(calls)


@pytest.mark.slow
def test_fast_samplers_quality_on_mixture():
    """On the 2-D ring mixture (exact scores, VP) the solvers approach what the adaptive
    probability-flow ODE (rtol 1e-5) gives: mean log-density of the samples and mode weights."""
    sde = VPSDE()
    mix = toy.ring_mixture(num_modes=4, std=0.15)
    x_ode, _ = sampling.sample(jax.random.key(1), sde, mix.score_fn(sde), (4000, 2), "ode")
    ref = float(jnp.mean(mix.log_prob(x_ode)))
    w_ref = jnp.mean(mix.responsibilities(x_ode), 0)
    for method, opts in [("dpm_solver", {"order": 3, "num_steps": 40}),
                         ("heun", {"num_steps": 40})]:
        # Same prior draw as the ODE run (same key): the deterministic solvers follow the same flow.
        x, _ = sampling.sample(jax.random.key(1), sde, mix.score_fn(sde), (4000, 2), method, **opts)
        lp = float(jnp.mean(mix.log_prob(x)))
        assert abs(lp - ref) < 0.05, (method, lp, ref)
        np.testing.assert_allclose(jnp.mean(mix.responsibilities(x), 0), w_ref, atol=5e-3)


@pytest.mark.parametrize("method,opts", [
    ("ddim", {"eta": 1.0}), ("heun", {"s_churn": 10.0}),
])
def test_sharded_equals_single_device(method, opts):
    devs = jax.devices()
    assert len(devs) == 8
    mesh = Mesh(np.array(devs), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    mix = toy.ring_mixture(num_modes=4)
    sde = VPSDE()
    kw = dict(num_steps=6, **opts)
    x1, n1 = sampling.sample(jax.random.key(2), sde, mix.score_fn(sde), (16, 2), method, **kw)
    x8, n8 = sampling.sample(jax.random.key(2), sde, mix.score_fn(sde), (16, 2), method,
                             sharding=sharding, **kw)
    assert x8.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), rtol=1e-5, atol=1e-5)
    assert int(n1) == int(n8)


def test_errors_name_bad_values():
    sde = VPSDE()
    sf = _gaussian(jnp.float32).score_fn(sde)
    with pytest.raises(ValueError, match="time schedule 'cosine'.*logSNR"):
        sampling.sample(jax.random.key(0), sde, sf, (2, 2), "ddim", num_steps=4, schedule="cosine")
    with pytest.raises(ValueError, match="order must be 1, 2 or 3; got 4"):
        sampling.sample(jax.random.key(0), sde, sf, (2, 2), "dpm_solver", num_steps=4, order=4)
    with pytest.raises(ValueError, match="num_steps must be an int >= 2"):
        sampling.sample(jax.random.key(0), sde, sf, (2, 2), "heun", num_steps=1)
    with pytest.raises(ValueError, match="solver_type 'rk'"):
        sampling.sample(jax.random.key(0), sde, sf, (2, 2), "dpm_solver", num_steps=4,
                        solver_type="rk")
    with pytest.raises(ValueError, match="eta must be >= 0"):
        sampling.sample(jax.random.key(0), sde, sf, (2, 2), "ddim", num_steps=4, eta=-1.0)
