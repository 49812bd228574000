"""Prediction-head conversions and the reference network wiring."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import score as S
from score_jax.sde import SDES, VESDE, VPSDE, get_sde, subVPSDE
from score_jax.toy import gaussian


def _heads(sde, x0, eps, t):
    """Every head computed independently from (x0, eps); derivatives by central differences."""
    a, s = (np.asarray(v)[:, None] for v in sde.marginal_coeffs(t))
    h = 1e-6
    ap, sp = (np.asarray(v)[:, None] for v in sde.marginal_coeffs(t + h))
    am, sm = (np.asarray(v)[:, None] for v in sde.marginal_coeffs(t - h))
    da, ds = (ap - am) / (2 * h), (sp - sm) / (2 * h)
    x = a * x0 + s * eps
    return x, {"eps": eps, "x0": x0, "score": -eps / s, "v": a * eps - s * x0, "velocity": da * x0 + ds * eps}


@pytest.mark.parametrize("name", list(SDES))
def test_convert_between_all_heads(name, x64):
    sde = get_sde(name)
    rng = np.random.default_rng(0)
    x0, eps = rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    t = jnp.array([0.05, 0.5, 0.95])
    x, heads = _heads(sde, x0, eps, t)
    for src in S.HEADS:
        for dst in S.HEADS:
            out = S.convert(jnp.asarray(heads[src]), jnp.asarray(x), t, sde, source=src, target=dst)
            np.testing.assert_allclose(out, heads[dst], rtol=1e-6, atol=1e-7, err_msg=f"{src}->{dst}")


@pytest.mark.parametrize("name", list(SDES))
def test_pf_velocity_is_posterior_mean_velocity(name, x64):
    """For Gaussian data, f - g^2 score / 2 = E[a' x0 + s' eps | x_t] (the flow-matching velocity)."""
    sde = get_sde(name)
    mu, sd = 0.4, 0.6
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3)))
    t = jnp.array([0.1, 0.3, 0.6, 0.9])
    a, s, da, ds = S.marginal_coeffs_and_derivs(sde, t)
    a, s, da, ds = (v[:, None] for v in (a, s, da, ds))
    var = a**2 * sd**2 + s**2
    ex0 = mu + a * sd**2 / var * (x - a * mu)  # E[x0 | x_t]
    eeps = s / var * (x - a * mu)  # E[eps | x_t]
    score = gaussian(jnp.full((3,), mu), sd).score_fn(sde)(x, t)
    v_pf = S.ode_velocity_from_score(sde, x, t, score)
    np.testing.assert_allclose(v_pf, da * ex0 + ds * eeps, rtol=1e-9)
    # and the exact score equals converting the posterior-mean eps
    np.testing.assert_allclose(score, -eeps / s, rtol=1e-10)


class _Probe(nn.Module):
    """Returns x * (1 + mean(labels)) and records nothing: lets the test see labels via the output."""

    @nn.compact
    def __call__(self, x, labels, train=False):
        w = self.param("w", nn.initializers.ones, (1,))
        return x * w + labels.astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))


@pytest.mark.parametrize(
    "sde,continuous",
    [(VPSDE(), True), (VPSDE(), False), (subVPSDE(), True), (subVPSDE(), False), (VESDE(), True), (VESDE(), False)],
)
def test_reference_wiring(sde, continuous, x64):
    model = _Probe()
    x = jnp.zeros((2, 2, 2, 1))
    t = jnp.array([0.3, 0.75])
    variables = model.init(jax.random.key(0), x, t)
    sf = S.get_score_fn(sde, model, variables, continuous=continuous)
    out = sf(x, t)
    tn = np.asarray(t)
    if isinstance(sde, VESDE):
        labels = 0.01 * 5000**tn if continuous else np.round((1 - tn) * 999)
        expected = labels  # VE: the network output is the score
    else:
        labels = tn * 999
        if continuous or isinstance(sde, subVPSDE):
            std = np.asarray(sde.marginal_coeffs(t)[1])
        else:
            ac = np.cumprod(1 - np.linspace(0.1 / 1000, 20 / 1000, 1000))
            std = np.sqrt(1 - ac[np.floor(labels).astype(int)])
        expected = -labels / std
    np.testing.assert_allclose(out[:, 0, 0, 0], expected, rtol=1e-6)
    if isinstance(sde, VESDE) and not continuous:
        assert S.time_labels(sde, t, False).dtype == jnp.int32


def test_head_score_fn_and_errors(x64):
    sde = VPSDE()
    g = gaussian(jnp.zeros(3), 0.5)
    exact = g.score_fn(sde)
    eps_fn = lambda x, t: S.convert(exact(x, t), x, t, sde, source="score", target="eps")
    sf = S.score_fn_from_head(sde, eps_fn, "eps")
    x, t = jnp.ones((2, 3)), jnp.array([0.2, 0.7])
    np.testing.assert_allclose(sf(x, t), exact(x, t), rtol=1e-10)
    with pytest.raises(ValueError, match="valid choices"):
        S.convert(x, x, t, sde, source="noise", target="score")
    with pytest.raises(ValueError, match="valid choices"):
        S.get_score_fn(sde, _Probe(), {}, prediction="epsilon")
