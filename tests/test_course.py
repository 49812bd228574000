"""MIT 6.S184 course facts against the library: general Gaussian paths, the SDE extension of a
flow, conditional score matching, flow <-> SDE score maps, bridges (issue #16)."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import flow, sampling, score, toy
from score_jax.sde import VPSDE


def _sqrt_path():
    return flow.GaussianPath(lambda t: t, lambda t: jnp.sqrt(1.0 - t))


def test_sqrt_path_conditional_velocity_and_score_closed_forms(x64):
    path = _sqrt_path()
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (5, 3), jnp.float64)
    z = jax.random.normal(k2, (5, 3), jnp.float64)
    t = jnp.asarray([0.0, 0.2, 0.5, 0.7, 0.95])
    tc = t[:, None]
    want_u = (1 + tc / (2 * (1 - tc))) * z - x / (2 * (1 - tc))
    np.testing.assert_allclose(path.conditional_velocity(x, z, t), want_u, rtol=1e-12)
    np.testing.assert_allclose(path.conditional_score(x, z, t), -(x - tc * z) / (1 - tc),
                               rtol=1e-12)
    a, b, da, db = path.coeffs_and_derivs(t)
    np.testing.assert_allclose(da, np.ones(5), rtol=1e-12)
    np.testing.assert_allclose(db, -0.5 / np.sqrt(1 - t), rtol=1e-12)
    assert isinstance(flow.CondOTPath(), flow.GaussianPath)
    assert isinstance(flow.SDEPath(VPSDE()), flow.GaussianPath)


def test_sqrt_path_marginal_velocity_score_conversions(x64):
    """On the sqrt path: u = (a'/a) x + (b^2 a'/a - b' b) score for the exact marginal velocity and
    score of Gaussian data; the module conversions and their inverses agree."""
    path = _sqrt_path()
    g = toy.gaussian(jnp.asarray([0.5, -1.0], jnp.float64), 0.4)
    x = 1.3 * jax.random.normal(jax.random.key(1), (4, 2), jnp.float64)
    t = jnp.asarray([0.1, 0.4, 0.6, 0.9])
    u = flow.MixtureVelocity(g, path)(x, t)
    s = g.score_fn(path)(x, t)
    tc = t[:, None]
    np.testing.assert_allclose(u, x / tc + ((1 - tc) / tc + 0.5) * s, rtol=1e-10)
    np.testing.assert_allclose(path.velocity_from_score(s, x, t), u, rtol=1e-10)
    np.testing.assert_allclose(path.score_from_velocity(u, x, t), s, rtol=1e-10)
    np.testing.assert_allclose(flow.velocity_to_score(u, x, t, path), s, rtol=1e-10)
    vf = flow.velocity_fn_from_score(g.score_fn(path), path)
    np.testing.assert_allclose(vf(x, t), u, rtol=1e-10)


@pytest.mark.parametrize("path_name", ["condot", "sqrt"])
def test_sde_extension_keeps_conditional_path_marginals(path_name):
    """Dirac data z: the marginal path is N(alpha_t z, beta_t^2 I); the SDE extension with any
    sigma keeps it at intermediate t (MIT 6.S184 lecture 3)."""
    path = flow.CondOTPath() if path_name == "condot" else _sqrt_path()
    z = jnp.asarray([1.5, -0.5])
    u = flow.MixtureVelocity(toy.gaussian(z, 0.0), path)
    n, t1 = 4000, 0.6
    a, b = path.marginal_coeffs(jnp.asarray(t1))
    for i, sigma in enumerate([0.0, 0.5, 1.5, lambda t: 2.0 * (1.0 - t)]):
        x, nfe = flow.flow_sample(jax.random.key(i), u, (n, 2), path=path,
                                  solver="euler_maruyama", sigma=sigma, num_steps=300, t1=t1)
        assert nfe == 300
        np.testing.assert_allclose(np.mean(x, 0), a * z, atol=4 * b / n**0.5 + 0.01)
        np.testing.assert_allclose(np.std(x, 0), [b, b], rtol=0.05)


def test_sde_extension_diffrax_solver_and_bad_options():
    path = flow.CondOTPath()
    g = toy.gaussian(jnp.asarray([1.0, 0.0]), 0.3)
    u = flow.MixtureVelocity(g, path)
    x, nfe = flow.flow_sample(jax.random.key(0), u, (2000, 2), path=path, solver="sra1",
                              sigma=1.0, num_steps=100, t1=0.99)
    assert np.isfinite(x).all() and nfe > 100
    np.testing.assert_allclose(np.mean(x, 0), [0.99, 0.0], atol=0.05)
    np.testing.assert_allclose(np.std(x, 0), np.sqrt(0.99**2 * 0.09 + 0.01**2), rtol=0.08)
    with pytest.raises(ValueError, match="sigma"):
        flow.flow_sample(jax.random.key(0), u, (4, 2), solver="heun", num_steps=4, sigma=1.0)
    with pytest.raises(ValueError, match="sigma must be"):
        flow.flow_sample(jax.random.key(0), u, (4, 2), solver="euler_maruyama", sigma=-1.0)
    with pytest.raises(ValueError, match="t0 < t1"):
        flow.flow_sample(jax.random.key(0), u, (4, 2), solver="heun", num_steps=4, t1=1.5)


def test_sqrt_path_ode_stops_short_of_singular_end():
    path = _sqrt_path()
    g = toy.gaussian(jnp.asarray([1.0, -1.0]), 0.2)
    u = flow.MixtureVelocity(g, path)
    x, _ = flow.flow_sample(jax.random.key(0), u, (1000, 2), path=path, solver="heun",
                            num_steps=100, t1=0.999)
    assert np.isfinite(x).all()
    np.testing.assert_allclose(np.mean(x, 0), [0.999, -0.999], atol=0.03)
    np.testing.assert_allclose(np.std(x, 0), np.sqrt(0.999**2 * 0.04 + 0.001), rtol=0.1)


def test_score_matching_minimised_by_exact_score():
    path = _sqrt_path()
    mix = toy.ring_mixture(num_modes=4, radius=1.5, std=0.3)
    exact = mix.score_fn(path)
    x1 = mix.sample(jax.random.key(0), 8192)[0]
    key = jax.random.key(1)

    def loss(c, shift=0.0):
        return float(flow.score_matching_loss(key, lambda x, t: c * exact(x, t) + shift, path, x1,
                                              t_max=0.9)[0])

    l1 = loss(1.0)
    assert l1 < loss(0.9) and l1 < loss(1.1) and l1 < loss(1.0, 0.1) and l1 < loss(1.0, -0.1)
    # The loss is quadratic in c; its minimiser estimated from three values is 1.
    lm, lp = loss(0.9), loss(1.1)
    c_star = 1.0 - 0.1 * (lp - lm) / (2 * (lp - 2 * l1 + lm))
    assert abs(c_star - 1.0) < 0.03, c_star
    # Weighting multiplies the per-example losses.
    _, aux = flow.score_matching_loss(key, exact, path, x1, t_max=0.9)
    _, aux_w = flow.score_matching_loss(key, exact, path, x1, t_max=0.9,
                                        weighting=lambda t: 1 - t)
    np.testing.assert_allclose(aux_w["losses"], aux["losses"] * (1 - aux["t"]), rtol=1e-5)


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_flow_to_sde_score_equals_exact_score_for_sde_path(x64):
    sde = VPSDE()
    path = flow.SDEPath(sde, eps=1e-3)
    mix = toy.ring_mixture(num_modes=3, radius=1.0, std=0.2, dtype=jnp.float64)
    v = flow.MixtureVelocity(mix, path)  # the optimal flow-matching "model" on this path
    score_fn = flow.score_fn_from_velocity(v, path)
    x = jax.random.normal(jax.random.key(0), (5, 2), jnp.float64)
    s = jnp.asarray([0.01, 0.1, 0.4, 0.7, 1.0])
    np.testing.assert_allclose(score_fn(x, s), mix.score_fn(sde)(x, s), rtol=1e-9, atol=1e-12)
    # The SDE-time "velocity" head is a different quantity (the 1.71 mismatch).
    wrong = score.convert(v(x, path.flow_time(s)), x, s, sde, source="velocity", target="score")
    assert not np.allclose(wrong, mix.score_fn(sde)(x, s), rtol=0.1)
    # The converted score runs in an SDE sampler and reaches the data.
    xs, _ = sampling.sample(jax.random.key(1), sde, flow.score_fn_from_velocity(
        flow.MixtureVelocity(mix, flow.SDEPath(sde, eps=1e-3)), path), (500, 2), method="ode",
        dtype=jnp.float64)
    ref = mix.sample(jax.random.key(2), 500, jnp.float64)[0]
    floor = toy.mmd_rbf(mix.sample(jax.random.key(3), 500, jnp.float64)[0], ref)
    assert float(toy.mmd_rbf(xs, ref)) < 3 * float(floor) + 1e-3
    with pytest.raises(ValueError, match="SDEPath"):
        flow.score_fn_from_velocity(v, flow.CondOTPath(), sde_time=True)


def test_flow_matching_source_batch_bridge():
    """With a source batch x0 = x1 - c (a shift), the CondOT target x1 - x0 = c is exact: a
    constant velocity c has zero loss; shape mismatches raise."""
    x1 = jax.random.normal(jax.random.key(0), (64, 2))
    c = jnp.asarray([0.5, -2.0])
    loss, _ = flow.flow_matching_loss(jax.random.key(1), lambda x, t: jnp.broadcast_to(c, x.shape),
                                      flow.CondOTPath(), x1, x0=x1 - c)
    assert float(loss) < 1e-10
    with pytest.raises(ValueError, match="source batch"):
        flow.flow_matching_loss(jax.random.key(1), lambda x, t: x, flow.CondOTPath(), x1,
                                x0=x1[:3])


@pytest.mark.slow
def test_course_notebook_executes():
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    root = pathlib.Path(__file__).resolve().parents[1]
    nb = nbformat.read(root / "examples" / "course.ipynb", as_version=4)
    client = nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                                     resources={"metadata": {"path": str(root)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
