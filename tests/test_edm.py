"""EDM preconditioning, losses and the denoiser -> score map against closed forms."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from score_jax import edm, sampling, toy
from score_jax.score import get_score_fn
from score_jax.sde import VESDE, VPSDE, subVPSDE

SIGMAS = np.array([0.002, 0.05, 0.5, 1.0, 3.0, 80.0])


class TinyNet(nn.Module):
    """A small backbone F(x, labels, *, train, y) standing in for DDPM++ / NCSN++ / DiT."""

    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        B = x.shape[0]
        h = nn.Dense(16)(x.reshape(B, -1)) + nn.Dense(16)(jnp.sin(labels.reshape(B, 1) / 100.0))
        if self.num_classes is not None:
            h = h + nn.Embed(self.num_classes + 1, 16)(y)
        return nn.Dense(x[0].size)(nn.silu(h)).reshape(x.shape)


def test_edm_coefficients_closed_form(x64):
    sd = 0.5
    c_skip, c_out, c_in, c_noise = edm.EDMPrecond(sigma_data=sd).coeffs(jnp.asarray(SIGMAS))
    np.testing.assert_allclose(c_skip, sd**2 / (SIGMAS**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_out, SIGMAS * sd / np.sqrt(SIGMAS**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(SIGMAS**2 + sd**2), rtol=1e-14)
    np.testing.assert_allclose(c_noise, np.log(SIGMAS) / 4, rtol=1e-14)
    # EDM App. B.6: unit-variance network input and effective training target for std-sd data.
    np.testing.assert_allclose(c_in**2 * (sd**2 + SIGMAS**2), 1.0, rtol=1e-12)
    target_var = ((1 - c_skip) ** 2 * sd**2 + c_skip**2 * SIGMAS**2) / c_out**2
    np.testing.assert_allclose(target_var, 1.0, rtol=1e-12)


def test_vp_ve_coefficients_closed_form(x64):
    c_skip, c_out, c_in, c_noise = edm.VEPrecond().coeffs(jnp.asarray(SIGMAS))
    np.testing.assert_allclose(c_skip, 1.0)
    np.testing.assert_allclose(c_out, SIGMAS)
    np.testing.assert_allclose(c_in, 1.0)
    np.testing.assert_allclose(c_noise, np.log(SIGMAS / 2), rtol=1e-14)
    vp = edm.VPPrecond()
    c_skip, c_out, c_in, c_noise = vp.coeffs(jnp.asarray(SIGMAS))
    np.testing.assert_allclose(c_skip, 1.0)
    np.testing.assert_allclose(c_out, -SIGMAS)
    np.testing.assert_allclose(c_in, 1 / np.sqrt(SIGMAS**2 + 1), rtol=1e-14)
    t = (np.sqrt(0.1**2 + 2 * 19.9 * np.log(1 + SIGMAS**2)) - 0.1) / 19.9
    np.testing.assert_allclose(c_noise, 999 * t, rtol=1e-9)  # log1p vs log(1 + x)
    # The VP preconditioning's sigma(t) is the VPSDE(0.1, 20) path's s_t / a_t.
    sde = vp.sampling_sde()
    tt = jnp.linspace(1e-5, 1.0, 11)
    a, s = sde.marginal_coeffs(tt)
    np.testing.assert_allclose(vp.sigma(tt), s / a, rtol=1e-10)
    np.testing.assert_allclose(vp.sigma_inv(vp.sigma(tt)), tt, rtol=1e-9)


def _quad_lognormal(f, p_mean, p_std, n=80):
    """E f(sigma) for ln sigma ~ N(p_mean, p_std^2) by Gauss-Hermite quadrature."""
    z, w = np.polynomial.hermite_e.hermegauss(n)
    return float(np.sum(w * f(np.exp(p_mean + p_std * z))) / np.sqrt(2 * np.pi))


@pytest.mark.parametrize("data_std", [0.5, 0.2])
def test_edm_loss_at_optimum_closed_form(data_std, x64):
    D, B, sd, pm, ps = 16, 20000, 0.5, -1.2, 1.2
    mean = jnp.full((D,), 0.3)
    x0 = mean + data_std * jax.random.normal(jax.random.key(0), (B, D), jnp.float64)
    den = edm.gaussian_denoiser(mean, data_std)
    loss, aux = edm.edm_loss(jax.random.key(1), den, x0, p_mean=pm, p_std=ps, sigma_data=sd,
                             reduce_mean=True)
    expected = _quad_lognormal(
        lambda s: (s**2 + sd**2) / (s * sd) ** 2 * data_std**2 * s**2 / (data_std**2 + s**2), pm, ps)
    if data_std == sd:
        assert abs(expected - 1.0) < 1e-12  # EDM's weighting: 1 per dimension at every sigma
    se = float(jnp.std(aux["losses"])) / np.sqrt(B)
    assert abs(float(loss) - expected) < 4 * se, (float(loss), expected, se)
    # The optimum: scaling the denoiser's shrinkage either way raises the loss (same noise).
    for f in (0.9, 1.1):
        def worse(y, s, f=f):
            return mean + f * (den(y, s) - mean)
        assert float(edm.edm_loss(jax.random.key(1), worse, x0, p_mean=pm, p_std=ps,
                                  sigma_data=sd, reduce_mean=True)[0]) > float(loss)


def test_loss_at_fixed_sigma_and_sum_reduction(x64):
    D, B, data_std = 8, 40000, 0.3
    x0 = data_std * jax.random.normal(jax.random.key(0), (B, D), jnp.float64)
    sigma = jnp.full((B,), 0.7)
    w = 1 / sigma**2
    loss, _ = edm.weighted_denoising_loss(jax.random.key(2), edm.gaussian_denoiser(0.0, data_std),
                                          x0, sigma, w)
    expected = D * float(edm.gaussian_optimal_loss(0.7, data_std, 1 / 0.7**2))
    assert abs(float(loss) / expected - 1) < 0.02


@pytest.mark.parametrize("loss_fn", [edm.vp_loss, edm.ve_loss])
def test_vp_ve_losses_sigma_ranges(loss_fn):
    x0 = jnp.zeros((4096, 2))
    _, aux = loss_fn(jax.random.key(0), lambda y, s: y * 0, x0)
    s = aux["sigma"]
    if loss_fn is edm.ve_loss:
        assert 0.02 <= float(s.min()) and float(s.max()) <= 100.0
        np.testing.assert_allclose(jnp.mean(jnp.log(s)), 0.5 * np.log(0.02 * 100), atol=0.15)
    else:
        vp = edm.VPPrecond()
        assert float(s.min()) >= float(vp.sigma(1e-5)) * 0.999
        np.testing.assert_allclose(float(s.max()), float(vp.sigma(1.0)), rtol=0.05)


@pytest.mark.parametrize("sde", [VPSDE(), subVPSDE(), VESDE()], ids=["vp", "subvp", "ve"])
def test_denoiser_score_equals_exact_score(sde, x64):
    mean, std = jnp.asarray([0.7, -0.2]), 0.3
    score = edm.edm_score_fn(edm.gaussian_denoiser(mean, std), sde)
    exact = toy.gaussian(mean, std).score_fn(sde)
    x = jax.random.normal(jax.random.key(0), (6, 2), jnp.float64)
    t = jnp.linspace(0.01, 1.0, 6)
    np.testing.assert_allclose(score(x, t), exact(x, t), rtol=1e-10)
    D_back = edm.denoiser_from_score(exact, sde)
    sig = jnp.asarray([0.05, 0.3, 2.0, 3.0, 0.1, 1.0])
    np.testing.assert_allclose(D_back(x, sig), edm.gaussian_denoiser(mean, std)(x, sig), rtol=1e-8)


def test_vp_precond_is_score_sde_vp_parameterisation(x64):
    """EDMDenoiser(VPPrecond) + edm_score_fn(VPSDE) equals the Score SDE VP wiring of the same
    network (label 999 t, score = -F / s_t)."""
    net = TinyNet()
    x = jax.random.normal(jax.random.key(0), (5, 4, 4, 1), jnp.float64)
    variables = net.init(jax.random.key(1), x, jnp.ones((5,)))
    vp = edm.VPPrecond()
    sde = vp.sampling_sde()
    t = jnp.linspace(0.05, 1.0, 5)
    ours = edm.get_edm_score_fn(sde, net, variables, vp)(x, t)
    ref = get_score_fn(sde, net, variables, continuous=True)(x, t)
    np.testing.assert_allclose(ours, ref, rtol=1e-7, atol=1e-9)


def test_heun_on_ve_pairing_is_edm_algorithm1(x64):
    """heun on VESDE(0.002, 80) with the "edm" grid = EDM Algorithm 1 written in numpy."""
    sde = edm.EDMPrecond().sampling_sde()
    mean, std, N = np.array([0.4, -0.4]), 0.5, 8
    den = edm.gaussian_denoiser(jnp.asarray(mean), std)
    x_T = 80.0 * jax.random.normal(jax.random.key(0), (3, 2), jnp.float64)
    x, nfe = sampling.sample(jax.random.key(1), sde, edm.edm_score_fn(den, sde), (3, 2), "heun",
                             x_init=x_T, dtype=jnp.float64, num_steps=N)
    assert int(nfe) == 2 * N - 1
    smin, smax = float(sde.sigma(sde.sampling_eps)), 80.0
    i = np.arange(N) / (N - 1)  # N noise levels, then sigma_N = 0 (EDM eq. 5)
    sig = np.append((smax ** (1 / 7) + i * (smin ** (1 / 7) - smax ** (1 / 7))) ** 7, 0.0)

    def D(y, s):
        return mean + std**2 / (std**2 + s**2) * (y - mean)

    y = np.asarray(x_T)
    for k in range(N):
        d = (y - D(y, sig[k])) / sig[k]
        y_next = y + (sig[k + 1] - sig[k]) * d
        if sig[k + 1] > 0:
            d2 = (y_next - D(y_next, sig[k + 1])) / sig[k + 1]
            y_next = y + (sig[k + 1] - sig[k]) * 0.5 * (d + d2)
        y = y_next
    np.testing.assert_allclose(x, y, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("precond", ["edm", "vp", "ve"])
def test_loss_fn_8_devices_equals_1(precond):
    net = TinyNet(num_classes=3)
    x = jax.random.normal(jax.random.key(0), (16, 4, 4, 1))
    batch = {"image": x, "label": jnp.arange(16) % 3}
    variables = net.init(jax.random.key(1), x, jnp.ones((16,)), y=batch["label"])
    loss_fn = edm.get_edm_loss_fn(net, precond, num_classes=3, label_dropout=0.2)
    grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (l1, aux1), g1 = grad_fn(variables, batch, jax.random.key(2))
    mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
    sharded = jax.device_put(batch, NamedSharding(mesh, P("data")))
    (l8, aux8), g8 = grad_fn(variables, sharded, jax.random.key(2))
    assert len(jax.devices()) >= 8
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    np.testing.assert_allclose(aux8["losses"], aux1["losses"], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), g8, g1)
    assert np.isfinite(float(l1))


def test_precond_for_sde_matches_the_path(x64):
    p = edm.precond_for_sde("edm", VESDE(sigma_min=0.002, sigma_max=80.0), sigma_data=0.3)
    assert (p.sigma_data, p.sigma_min, p.sigma_max) == (0.3, 0.002, 80.0)
    vp = edm.precond_for_sde("vp", VPSDE(beta_min=0.2, beta_max=10.0))
    sde = vp.sampling_sde()
    assert (sde.beta_min, sde.beta_max) == (0.2, 10.0)
    ve = edm.precond_for_sde("ve", VESDE())
    assert (ve.sigma_min, ve.sigma_max) == (0.01, 50.0)
    with pytest.raises(ValueError, match="VPSDE"):
        edm.precond_for_sde("vp", subVPSDE())
    with pytest.raises(ValueError, match="VESDE"):
        edm.precond_for_sde("ve", VPSDE())


def test_errors_name_bad_values():
    with pytest.raises(ValueError, match="'bogus'.*valid choices"):
        edm.get_precond("bogus")
    with pytest.raises(ValueError, match="'bogus'"):
        edm.get_edm_loss_fn(TinyNet(), "bogus")
    with pytest.raises(ValueError, match="label_dropout"):
        edm.get_edm_loss_fn(TinyNet(), "edm", label_dropout=1.5)
    loss_fn = edm.get_edm_loss_fn(TinyNet(num_classes=3), "edm", num_classes=3)
    with pytest.raises(ValueError, match="no 'label'"):
        loss_fn({}, jnp.zeros((2, 4, 4, 1)), jax.random.key(0))
