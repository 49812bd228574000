"""Flow matching: optimal velocity, conversions, loss, sampling and likelihood vs closed forms."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from score_jax import flow, toy
from score_jax.score import ode_velocity_from_score
from score_jax.sde import VESDE, VPSDE

MU = np.array([0.5, -1.0])
SD = 0.4


def _gauss(dtype=jnp.float64):
    return toy.gaussian(jnp.asarray(MU, dtype), SD)


def _u_closed_form(x, t):
    """Marginal CondOT velocity of N(mu, sd^2 I) data:
    u = mu + (t sd^2 - (1 - t)) / (t^2 sd^2 + (1 - t)^2) (x - t mu)."""
    t = t[:, None]
    return MU + (t * SD**2 - (1 - t)) / (t**2 * SD**2 + (1 - t) ** 2) * (x - t * MU)


def test_condot_optimal_velocity_and_conversions(x64):
    path = flow.CondOTPath()
    g = _gauss()
    x = jax.random.normal(jax.random.key(0), (6, 2), jnp.float64) * 1.5
    t = jnp.asarray([0.0, 0.1, 0.3, 0.5, 0.9, 1.0])
    u = flow.MixtureVelocity(g, path)(x, t)
    np.testing.assert_allclose(u, _u_closed_form(x, t), rtol=1e-12, atol=1e-12)
    # The conversions are singular at the ends (alpha_t or sigma_t = 0).
    ti, xi, ui = t[1:-1], x[1:-1], u[1:-1]
    a, s = ti, 1.0 - ti
    np.testing.assert_allclose(flow.velocity_to_score(ui, xi, ti, path), g.score_t(xi, a, s),
                               rtol=1e-10)
    eps = flow.velocity_to_eps(ui, xi, ti, path)
    x1 = flow.velocity_to_x1(ui, xi, ti, path)
    np.testing.assert_allclose(eps, xi - ti[:, None] * ui, rtol=1e-10)  # CondOT: eps = x - t u
    np.testing.assert_allclose(x1, xi + (1 - ti[:, None]) * ui, rtol=1e-10)  # x1 = x + (1-t) u
    np.testing.assert_allclose(a[:, None] * x1 + s[:, None] * eps, xi, rtol=1e-10)
    np.testing.assert_allclose(flow.eps_to_velocity(eps, xi, ti, path), ui, rtol=1e-10)
    np.testing.assert_allclose(flow.score_to_velocity(g.score_t(xi, a, s), xi, ti, path), ui,
                               rtol=1e-10)


def test_flow_matching_target_regresses_to_closed_form(x64):
    """The loss's conditional target regressed on x_t (ordinary least squares at a fixed t) has the
    closed-form optimal velocity's slope and intercept: the loss is minimised by u*."""
    path = flow.CondOTPath()
    n, t0 = 400_000, 0.35
    x1 = MU + SD * jax.random.normal(jax.random.key(1), (n, 2), jnp.float64)
    noise = jax.random.normal(jax.random.key(2), (n, 2), jnp.float64)
    x_t, target = flow.interpolate(path, x1, noise, jnp.full((n,), t0))
    np.testing.assert_allclose(target, x1 - noise, rtol=1e-12)
    for d in range(2):
        slope, intercept = np.polyfit(np.asarray(x_t[:, d]), np.asarray(target[:, d]), 1)
        c = (t0 * SD**2 - (1 - t0)) / (t0**2 * SD**2 + (1 - t0) ** 2)
        assert abs(slope - c) < 0.01, (slope, c)
        assert abs(intercept - (MU[d] - c * t0 * MU[d])) < 0.01


def test_loss_is_minimal_at_optimal_velocity(x64):
    path = flow.CondOTPath()
    g = _gauss()
    x1, _ = g.sample(jax.random.key(3), 20000, jnp.float64)
    u_star = flow.MixtureVelocity(g, path)
    key = jax.random.key(4)
    best, _ = flow.flow_matching_loss(key, u_star, path, x1)
    for delta in (0.05, -0.05):
        worse, _ = flow.flow_matching_loss(key, lambda x, t, d=delta: u_star(x, t) + d, path, x1)
        assert float(worse) > float(best) + 0.5 * delta**2


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
def test_sde_path_velocity_is_scaled_probability_flow(sde, x64):
    """On SDEPath(sde), u(x, t) = -(T - eps) F(x, s(t)), F the probability-flow drift."""
    path = flow.SDEPath(sde, eps=1e-3)
    mix = toy.ring_mixture(num_modes=3, dtype=jnp.float64)
    x = 2.0 * jax.random.normal(jax.random.key(5), (5, 2), jnp.float64)
    t = jnp.asarray([0.05, 0.2, 0.5, 0.8, 0.99])
    u = flow.MixtureVelocity(mix, path)(x, t)
    s_time = path.sde_time(t)
    F = ode_velocity_from_score(sde, x, s_time, mix.score_fn(sde)(x, s_time))
    np.testing.assert_allclose(u, -(sde.T - path.eps) * F, rtol=1e-9, atol=1e-9)


def test_flow_sample_orders_and_adaptive(x64):
    """Gaussian data: the CondOT flow map is x_1 = mu + sd x_0. Euler converges at order 1, Heun at
    order 2; the adaptive solver is accurate to its tolerance."""
    g = _gauss()
    u = flow.MixtureVelocity(g, flow.CondOTPath())
    x0 = jax.random.normal(jax.random.key(6), (8, 2), jnp.float64)
    exact = MU + SD * x0
    for solver, order in (("euler", 1), ("heun", 2)):
        errs = []
        for n in (16, 32):
            x, nfe = flow.flow_sample(jax.random.key(0), u, x0.shape, solver=solver, num_steps=n,
                                      x_init=x0, dtype=jnp.float64)
            assert int(nfe) == n * order
            errs.append(float(jnp.max(jnp.abs(x - exact))))
        slope = np.log2(errs[0] / errs[1])
        assert order - 0.3 < slope < order + 0.5, (solver, errs)
    x, nfe = flow.flow_sample(jax.random.key(0), u, x0.shape, solver="tsit5", rtol=1e-8,
                              atol=1e-8, x_init=x0, dtype=jnp.float64)
    np.testing.assert_allclose(x, exact, atol=1e-6)
    assert 0 < int(nfe) < 400


def test_flow_log_likelihood_matches_gaussian_density(x64):
    g = _gauss()
    u = flow.MixtureVelocity(g, flow.CondOTPath())
    x, _ = g.sample(jax.random.key(7), 6, jnp.float64)
    fn = jax.jit(lambda k, x: flow.flow_log_likelihood(k, u, x, hutchinson="exact", rtol=1e-8,
                                                       atol=1e-8))
    logp, z, nfe = fn(jax.random.key(8), x)
    np.testing.assert_allclose(logp, g.log_prob(x), atol=1e-6)
    np.testing.assert_allclose(z, (x - MU) / SD, atol=1e-5)  # the latent is the inverse flow map


@pytest.mark.slow
def test_flow_sample_ring_mixture():
    mix = toy.ring_mixture(num_modes=4, std=0.15)
    u = flow.MixtureVelocity(mix, flow.CondOTPath())
    x, nfe = flow.flow_sample(jax.random.key(0), u, (4000, 2), solver="heun", num_steps=25)
    assert int(nfe) == 50
    x_true, _ = mix.sample(jax.random.key(1), 4000)
    assert abs(float(jnp.mean(mix.log_prob(x)) - jnp.mean(mix.log_prob(x_true)))) < 0.1
    np.testing.assert_allclose(jnp.mean(mix.responsibilities(x), 0), mix.weights, atol=0.025)


def test_flow_sample_sharded_equals_single_device():
    mesh = Mesh(np.array(jax.devices()), ("data",))
    sharding = NamedSharding(mesh, P("data"))
    u = flow.MixtureVelocity(toy.ring_mixture(num_modes=4), flow.CondOTPath())
    x1, _ = flow.flow_sample(jax.random.key(0), u, (16, 2), solver="heun", num_steps=8)
    x8, _ = flow.flow_sample(jax.random.key(0), u, (16, 2), solver="heun", num_steps=8,
                             sharding=sharding)
    assert x8.sharding.is_equivalent_to(sharding, 2)
    np.testing.assert_allclose(np.asarray(x8), np.asarray(x1), rtol=1e-6, atol=1e-6)


class _TinyVelocityNet(nn.Module):
    """MLP v(x, label) with an optional class embedding (null label = num_classes)."""

    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        h = jnp.concatenate([x, labels[:, None] / 999.0], axis=-1)
        h = nn.Dense(64)(h)
        if self.num_classes is not None:
            h = h + nn.Embed(self.num_classes + 1, 64)(y)
        h = nn.Dense(64)(nn.silu(h))
        h = nn.Dropout(0.1, deterministic=not train)(nn.silu(h))
        return nn.Dense(x.shape[-1])(h)


@pytest.mark.parametrize("conditional", [pytest.param(False, marks=pytest.mark.slow), True])
def test_get_flow_loss_fn_trains(conditional):
    """The loss_fn contract of losses.get_loss_fn; 300 Adam steps on Gaussian data bring the loss
    down to near its floor E[tr Var(target | x_t)]."""
    model = _TinyVelocityNet(num_classes=3 if conditional else None)
    x = jnp.asarray(MU, jnp.float32) + SD * jax.random.normal(jax.random.key(0), (256, 2))
    batch = {"image": x, "label": jnp.arange(256) % 3} if conditional else x
    y0 = jnp.zeros((256,), jnp.int32) if conditional else None
    variables = model.init(jax.random.key(1), x, jnp.zeros((256,)), y=y0)
    loss_fn = flow.get_flow_loss_fn(model, num_classes=3 if conditional else None,
                                    label_dropout=0.2)
    opt = optax.adam(3e-3)
    state = opt.init(variables)

    @jax.jit
    def step(variables, state, key):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables, batch, key)
        updates, state = opt.update(grads, state)
        return optax.apply_updates(variables, updates), state, loss, aux

    losses = []
    for i in range(300):
        variables, state, loss, aux = step(variables, state, jax.random.key(100 + i))
        losses.append(float(loss))
    assert aux["losses"].shape == (256,)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-30:]) < 0.6 * np.mean(losses[:10])


def test_errors_name_bad_values():
    u = flow.MixtureVelocity(_gauss(jnp.float32), flow.CondOTPath())
    with pytest.raises(ValueError, match="Unknown ODE solver 'rk4'.*euler"):
        flow.flow_sample(jax.random.key(0), u, (2, 2), solver="rk4", num_steps=4)
    with pytest.raises(ValueError, match="'euler' has no error estimate"):
        flow.flow_sample(jax.random.key(0), u, (2, 2), solver="euler")
    with pytest.raises(ValueError, match="Unknown probability path 'cosine'"):
        flow.get_path("cosine")
    with pytest.raises(ValueError, match="t_min < t_max"):
        flow.flow_matching_loss(jax.random.key(0), u, flow.CondOTPath(), jnp.zeros((2, 2)),
                                t_min=0.5, t_max=0.5)


def test_mixture_velocity_and_score_are_one_ground_truth():
    """toy.MixtureVelocity (also flow.MixtureVelocity) and toy.MixtureScore share the mixture's
    component posterior: on a path, u = score_to_velocity(score) (the Gaussian-path identity)."""
    from score_jax import toy

    assert flow.MixtureVelocity is toy.MixtureVelocity
    m = toy.ring_mixture(4, dim=2, std=0.3)
    path = flow.CondOTPath()
    x = jax.random.normal(jax.random.key(0), (16, 2))
    t = jnp.linspace(0.1, 0.9, 16)
    u = flow.MixtureVelocity(m, path)(x, t)
    s = toy.MixtureScore(m, path)(x, t)
    np.testing.assert_allclose(u, flow.score_to_velocity(s, x, t, path), rtol=1e-4, atol=1e-5)
