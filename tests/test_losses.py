"""Loss functions against hand computations and closed-form expectations."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import losses
from score_jax.sde import SDES, VESDE, VPSDE, get_sde, subVPSDE
from score_jax.toy import gaussian


@pytest.mark.parametrize("name", list(SDES))
def test_dsm_with_exact_score_equals_posterior_variance(name, x64):
    """With the exact score of N(mu, sd^2 I) data, E[|s score + z|^2 | t] = D a^2 sd^2 / (a^2 sd^2 + s^2)."""
    sde = get_sde(name)
    D, sd = 4, 0.5
    g = gaussian(jnp.full((D,), 0.3), sd)
    x0, _ = g.sample(jax.random.key(1), 20000, jnp.float64)
    loss, aux = losses.dsm_loss(jax.random.key(2), g.score_fn(sde), sde, x0, reduce_mean=True)
    a, s = sde.marginal_coeffs(aux["t"])
    expected = jnp.mean(a**2 * sd**2 / (a**2 * sd**2 + s**2))
    assert abs(float(loss) - float(expected)) < 4 * float(jnp.std(aux["losses"])) / np.sqrt(20000)
    # the exact score minimises the objective: a scaled score is worse with the same draws
    worse, _ = losses.dsm_loss(jax.random.key(2), lambda x, t: 1.1 * g.score_fn(sde)(x, t), sde, x0,
                               reduce_mean=True)
    assert float(worse) > float(loss)


def test_dsm_likelihood_weighting_and_reduction(x64):
    sde = VPSDE()
    x0 = jnp.asarray(np.random.default_rng(0).normal(size=(8, 3, 2)))
    sf = lambda x, t: -x
    key = jax.random.key(3)
    plain, a1 = losses.dsm_loss(key, sf, sde, x0, reduce_mean=False)
    lw, a2 = losses.dsm_loss(key, sf, sde, x0, reduce_mean=False, likelihood_weighting=True)
    mean_red, a3 = losses.dsm_loss(key, sf, sde, x0, reduce_mean=True)
    _, s = sde.marginal_coeffs(a1["t"])
    g2 = sde.diffusion_coeff(a1["t"]) ** 2
    np.testing.assert_allclose(a2["losses"], a1["losses"] * g2 / s**2, rtol=1e-10)
    # 0.5 * sum over 6 dims vs mean over 6 dims
    np.testing.assert_allclose(a1["losses"], a3["losses"] * 3.0, rtol=1e-12)
    # hand computation of one example
    kt, kz = jax.random.split(key)
    t = jax.random.uniform(kt, (8,), jnp.float64, minval=1e-5, maxval=1.0)
    z = jax.random.normal(kz, x0.shape, jnp.float64)
    a, s = sde.marginal_coeffs(t)
    xt = a[:, None, None] * x0 + s[:, None, None] * z
    ref = 0.5 * np.sum(np.asarray(s[:, None, None] * (-xt) + z) ** 2, axis=(1, 2))
    np.testing.assert_allclose(a1["losses"], ref, rtol=1e-12)
    assert float(plain) == pytest.approx(float(np.mean(ref)), rel=1e-12)


def test_smld_and_ddpm_losses_by_hand(x64):
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)))
    key = jax.random.key(4)
    model_fn = lambda x, labels: 0.5 * x + labels.astype(x.dtype)[:, None] * 1e-3
    ve = VESDE(N=10)
    loss, aux = losses.smld_loss(key, model_fn, ve, x0)
    kl, kz = jax.random.split(key)
    labels = jax.random.randint(kl, (6,), 0, 10)
    sig = np.exp(np.linspace(np.log(0.01), np.log(50), 10))[::-1][np.asarray(labels)]
    noise = sig[:, None] * np.asarray(jax.random.normal(kz, x0.shape, jnp.float64))
    target = -noise / sig[:, None] ** 2
    pred = np.asarray(model_fn(x0 + noise, labels))
    ref = 0.5 * np.sum((pred - target) ** 2, -1) * sig**2
    np.testing.assert_allclose(aux["losses"], ref, rtol=1e-10)
    vp = VPSDE(N=100)
    loss, aux = losses.ddpm_loss(key, model_fn, vp, x0)
    labels = jax.random.randint(kl, (6,), 0, 100)
    ac = np.cumprod(1 - np.linspace(0.1 / 100, 20 / 100, 100))[np.asarray(labels)]
    eps = np.asarray(jax.random.normal(kz, x0.shape, jnp.float64))
    xt = np.sqrt(ac)[:, None] * np.asarray(x0) + np.sqrt(1 - ac)[:, None] * eps
    ref = np.mean((np.asarray(model_fn(jnp.asarray(xt), labels)) - eps) ** 2, -1)
    np.testing.assert_allclose(aux["losses"], ref, rtol=1e-10)
    assert float(loss) == pytest.approx(float(ref.mean()), rel=1e-10)


class _Tiny(nn.Module):
    num_classes: int | None = None

    @nn.compact
    def __call__(self, x, labels, train=False, y=None):
        h = nn.Dense(x.shape[-1])(x) + jnp.asarray(labels, x.dtype).reshape(-1, 1) * 1e-3
        if self.num_classes is not None:
            h = h + nn.Embed(self.num_classes + 1, x.shape[-1])(y)
        return h


@pytest.mark.parametrize("sde,continuous", [(VPSDE(), True), (VPSDE(), False), (VESDE(), False), (subVPSDE(), True)])
def test_get_loss_fn_differentiable(sde, continuous):
    model = _Tiny()
    x = jnp.ones((4, 3))
    variables = model.init(jax.random.key(0), x, jnp.zeros((4,)))
    loss_fn = losses.get_loss_fn(sde, model, continuous=continuous)
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(variables, x, jax.random.key(1))
    assert np.isfinite(float(loss)) and float(loss) > 0
    gnorm = sum(float(jnp.sum(g**2)) for g in jax.tree_util.tree_leaves(grads))
    assert gnorm > 0


def test_label_dropout_and_errors():
    labels = jnp.arange(10000) % 7
    dropped = losses.drop_labels(jax.random.key(0), labels, 0.2, 7)
    assert abs(float(jnp.mean(dropped == 7)) - 0.2) < 0.02
    assert bool(jnp.all((dropped == labels) | (dropped == 7)))
    model = _Tiny(num_classes=7)
    x = jnp.ones((4, 3))
    variables = model.init(jax.random.key(0), x, jnp.zeros((4,)), y=jnp.zeros((4,), jnp.int32))
    fn = losses.get_loss_fn(VPSDE(), model, num_classes=7, label_dropout=0.1)
    loss, _ = fn(variables, {"image": x, "label": jnp.arange(4)}, jax.random.key(2))
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="no 'label'"):
        fn(variables, x, jax.random.key(2))
    with pytest.raises(ValueError, match="sub-VP has no discrete"):
        losses.get_loss_fn(subVPSDE(), model, continuous=False)
    with pytest.raises(ValueError, match="VESDE"):
        losses.smld_loss(jax.random.key(0), lambda x, l: x, VPSDE(), x)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()])
@pytest.mark.parametrize("kwargs,match", [
    ({"likelihood_weighting": True}, "likelihood_weighting=True"),
    ({"prediction": "eps"}, "prediction='eps'"),
    ({"prediction": "velocity"}, "prediction='velocity'"),
    ({"eps": 1e-3}, "eps=0.001"),
    ({"eps": 1e-5}, "eps=1e-05"),
])
def test_discrete_training_rejects_continuous_only_options(sde, kwargs, match):
    """The reference asserts these for its SMLD / DDPM objectives; they were silently ignored."""
    with pytest.raises(ValueError, match=match):
        losses.get_loss_fn(sde, _Tiny(), continuous=False, **kwargs)
    losses.get_loss_fn(sde, _Tiny(), continuous=True, **kwargs)  # fine in continuous time


def test_discrete_loss_dispatches_through_the_sde(x64):
    x0 = jnp.asarray(np.random.default_rng(1).normal(size=(6, 4)))
    key = jax.random.key(4)
    model_fn = lambda x, labels: 0.5 * x + labels.astype(x.dtype)[:, None] * 1e-3
    for sde, named in [(VESDE(N=10), losses.smld_loss), (VPSDE(N=100), losses.ddpm_loss)]:
        loss, aux = losses.discrete_loss(key, model_fn, sde, x0, reduce_mean=True)
        ref, ref_aux = named(key, model_fn, sde, x0, reduce_mean=True)
        np.testing.assert_array_equal(aux["losses"], ref_aux["losses"])
    with pytest.raises(ValueError, match="DDPM training needs a VPSDE"):
        losses.ddpm_loss(key, model_fn, VESDE(), x0)
    with pytest.raises(ValueError, match="sub-VP has no discrete"):
        losses.discrete_loss(key, model_fn, subVPSDE(), x0)


def test_dsm_loss_on_a_flow_path_points_to_score_matching_loss():
    """Issue #16 item 4: dsm_loss on a flow path raised AttributeError ('no attribute T')."""
    from score_jax import flow

    x0 = jnp.zeros((4, 2))
    with pytest.raises(ValueError, match=r"dsm_loss needs an SDE.*got CondOTPath.*"
                                         r"flow.score_matching_loss"):
        losses.dsm_loss(jax.random.key(0), lambda x, t: -x, flow.CondOTPath(), x0)
