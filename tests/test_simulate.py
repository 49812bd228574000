"""sampling.simulate_sde / sampling.langevin and sde.OUProcess against closed forms."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sampling, toy
from score_jax.sde import OUProcess


@pytest.mark.parametrize("solver", ["euler_maruyama", "euler", "sra1"])
def test_ou_marginals_match_closed_form(solver):
    ou = OUProcess(theta=2.0, sigma=0.5)
    n = 20000
    x0 = jnp.ones((n, 1))
    ts = jnp.asarray([0.0, 0.25, 1.0])
    xs = sampling.simulate_sde(jax.random.key(0), ou.drift, ou.diffusion, x0, ts, solver=solver,
                               substeps=50)
    assert xs.shape == (3, n, 1)
    np.testing.assert_array_equal(xs[0], x0)
    for i in (1, 2):
        mean, std = ou.marginal(jnp.ones(()), ts[i])
        np.testing.assert_allclose(float(jnp.mean(xs[i])), float(mean), atol=4 * float(std) / n**0.5 + 0.01)
        # Euler bias of the variance ~ theta dt = 1 %; sampling error sqrt(2 / n) = 1 %.
        np.testing.assert_allclose(float(jnp.std(xs[i])), float(std), rtol=0.04)


def test_ou_stationary_variance_and_closed_form():
    ou = OUProcess(theta=1.5, sigma=0.8)
    np.testing.assert_allclose(float(ou.stationary_std) ** 2, 0.64 / 3.0, rtol=1e-6)
    mean, std = ou.marginal(jnp.asarray([[3.0]]), jnp.asarray([0.7]))
    np.testing.assert_allclose(mean, 3.0 * np.exp(-1.05) * np.ones((1, 1)), rtol=1e-6)
    np.testing.assert_allclose(std**2, 0.64 / 3.0 * (1 - np.exp(-2.1)), rtol=1e-5)
    # Brownian motion: theta = 0, variance sigma^2 t.
    _, std0 = OUProcess(theta=0.0, sigma=2.0).marginal(jnp.zeros(()), 0.5)
    np.testing.assert_allclose(float(std0) ** 2, 2.0, rtol=1e-6)
    n = 20000
    xs = sampling.simulate_sde(jax.random.key(1), ou.drift, ou.diffusion, jnp.full((n, 1), 3.0),
                               jnp.asarray([0.0, 8.0]), substeps=800)
    np.testing.assert_allclose(float(jnp.var(xs[-1])), 0.64 / 3.0, rtol=0.04)
    assert abs(float(jnp.mean(xs[-1]))) < 0.02


def test_simulate_sde_general_drift_and_errors():
    # Deterministic check: zero diffusion, drift = -x  -> x0 e^{-t}.
    xs = sampling.simulate_sde(jax.random.key(0), lambda x, t: -x, lambda x, t: 0.0,
                               jnp.ones((3, 2)), jnp.linspace(0.0, 1.0, 5), solver="heun",
                               substeps=20)
    np.testing.assert_allclose(xs[:, 0, 0], np.exp(-np.linspace(0, 1, 5)), rtol=1e-4)
    with pytest.raises(ValueError, match="valid choices"):
        sampling.simulate_sde(jax.random.key(0), lambda x, t: x, lambda x, t: 1.0,
                              jnp.ones((2, 1)), jnp.linspace(0, 1, 3), solver="rk4")
    with pytest.raises(ValueError, match="substeps"):
        sampling.simulate_sde(jax.random.key(0), lambda x, t: x, lambda x, t: 1.0,
                              jnp.ones((2, 1)), jnp.linspace(0, 1, 3), substeps=0)
    with pytest.raises(ValueError, match="theta"):
        OUProcess(theta=-1.0)
    with pytest.raises(ValueError, match="step_size"):
        sampling.langevin(jax.random.key(0), lambda x: -x, jnp.ones((2, 1)), 0.0, 10)


def test_langevin_reaches_gaussian_mixture():
    mix = toy.GaussianMixture(jnp.asarray([0.2, 0.3, 0.5]),
                              jnp.asarray([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.2]]),
                              jnp.asarray([0.5, 0.5, 0.5]))
    n = 500
    x_init = 3.0 * jax.random.normal(jax.random.key(0), (n, 2))
    x, traj = sampling.langevin(jax.random.key(1), mix.score, x_init, 0.01, 1500,
                                return_trajectory=True)
    assert traj.shape == (1500, n, 2)
    ref = mix.sample(jax.random.key(2), n)[0]
    floor = toy.mmd_rbf(mix.sample(jax.random.key(3), n)[0], mix.sample(jax.random.key(4), n)[0])
    start = toy.mmd_rbf(x_init, ref)
    got = toy.mmd_rbf(x, ref)
    # Unadjusted Langevin bias O(eps) is far below the sampling floor at n = 500.
    assert float(got) < 3 * float(floor) + 1e-3, (float(got), float(floor))
    assert float(start) > 20 * float(got)
