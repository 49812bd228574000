"""Controllable generation: inpainting, colorization, classifier-free and classifier guidance."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from score_jax import sampling, toy
from score_jax.guidance import cfg, classifier, colorization, inpainting
from score_jax.score import get_score_fn
from score_jax.sde import VESDE, VPSDE


@struct.dataclass
class GaussianScore:
    """Exact score of N(mu, Q diag(l) Q^T) diffused by ``sde``:
    -(a^2 C + s^2 I)^{-1} (x - a mu), applied in C's eigenbasis."""

    mu: jax.Array
    Q: jax.Array
    lam: jax.Array
    sde: object

    def __call__(self, x, t):
        a, s = self.sde.marginal_coeffs(t)
        xf = x.reshape(x.shape[0], -1)
        r = (xf - a[:, None] * self.mu) @ self.Q
        return (-(r / (a[:, None] ** 2 * self.lam + s[:, None] ** 2)) @ self.Q.T).reshape(x.shape)


def test_replace_known_keeps_mean_in_unknown_region():
    """The reference builds x_mean from the noisy x; here the unknown part of x_mean is kept."""
    sde = VPSDE()
    x = jnp.full((2, 4), 3.0)
    x_mean = jnp.full((2, 4), 1.0)
    known = jnp.full((2, 4), 0.5)
    mask = jnp.asarray([1.0, 1.0, 0.0, 0.0])
    t = jnp.full((2,), 0.5)
    xn, xm = inpainting.replace_known(jax.random.key(0), sde, x, x_mean, t, known, mask)
    a, _ = sde.marginal_coeffs(t)
    np.testing.assert_allclose(xm[:, 2:], 1.0)
    np.testing.assert_allclose(xn[:, 2:], 3.0)
    np.testing.assert_allclose(xm[:, :2], a[:, None] * 0.5 * jnp.ones((2, 2)), rtol=1e-6)


@pytest.mark.parametrize("sampler,opts", [("pc", {"num_steps": 500}), ("ode", {"num_steps": 50}),
                                          ("dpm_solver", {"num_steps": 20, "order": 2}),
                                          ("heun", {"num_steps": 20})])
def test_inpainting_exact_known_and_conditional_of_gaussian(sampler, opts):
    """Gaussian data whose known and unknown blocks are independent, with distinct means and
    variances: the unknown block must follow its conditional N(mu_u, C_uu) (closed form, here
    the block marginal), the known block must be the data exactly."""
    sde = VPSDE()
    mu = jnp.asarray([0.4, -0.3, 0.8, -0.6])
    rot = jnp.asarray([[np.cos(0.6), -np.sin(0.6)], [np.sin(0.6), np.cos(0.6)]])
    Q = jax.scipy.linalg.block_diag(jnp.eye(2), rot)
    lam = jnp.asarray([0.3, 0.2, 0.25, 0.04])
    cov_u = (rot * lam[2:]) @ rot.T
    score = GaussianScore(mu, Q, lam, sde)
    n = 6000
    data = jnp.tile(jnp.asarray([1.2, -0.9, 0.0, 0.0]), (n, 1))
    mask = jnp.asarray([1.0, 1.0, 0.0, 0.0])
    x, nfe = inpainting.inpaint(jax.random.key(0), sde, score, data, mask, sampler=sampler,
                                **opts)
    np.testing.assert_array_equal(np.asarray(x[:, :2]), np.asarray(data[:, :2]))
    xu = np.asarray(x[:, 2:], np.float64)
    se = np.sqrt(np.diag(cov_u) / n)
    np.testing.assert_allclose(xu.mean(0), mu[2:], atol=5 * se.max() + 0.01)
    np.testing.assert_allclose(np.cov(xu.T), cov_u, atol=0.1 * float(lam[2]))


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 6.8 s)
def test_inpainting_images_and_wrapper_shapes():
    sde = VESDE()
    mix = toy.image_mixture(jax.random.key(0), num_modes=2, shape=(4, 4, 3))
    data, _ = mix.sample(jax.random.key(1), 3)
    mask = jnp.zeros((4, 4, 1)).at[:, :2].set(1.0)
    x, nfe = inpainting.inpaint(jax.random.key(2), sde, mix.score_fn(sde), data, mask,
                                sampler="dpm_solver", num_steps=10)
    assert x.shape == data.shape and int(nfe) == 10
    np.testing.assert_array_equal(np.asarray(x[:, :, :2]), np.asarray(data[:, :, :2]))
    # Each inpainted image lies near a mixture mode (the score drives the unknown half there).
    assert float(jnp.min(jnp.max(mix.responsibilities(x), -1))) > 0.99
    with pytest.raises(ValueError, match="does not broadcast"):
        inpainting.inpaint(jax.random.key(2), sde, mix.score_fn(sde), data, jnp.ones((5,)),
                           sampler="ddim", num_steps=4)
    with pytest.raises(ValueError, match="Unknown sampler 'bogus'.*pc"):
        inpainting.inpaint(jax.random.key(2), sde, mix.score_fn(sde), data, mask, sampler="bogus")


def test_colorization_matrix_and_exact_gray():
    M = colorization.decoupling_matrix(jnp.float32)
    np.testing.assert_allclose(M.T @ M, np.eye(3), atol=1e-6)
    ref = np.asarray([[5.7735014e-01, -8.1649649e-01, 4.7008697e-08],
                      [5.7735026e-01, 4.0824834e-01, 7.0710671e-01],
                      [5.7735026e-01, 4.0824822e-01, -7.0710683e-01]])  # score_sde's literal
    np.testing.assert_allclose(M, ref, atol=1e-6)
    sde = VPSDE()
    # Isotropic Gaussian colour images: the chroma coordinates are independent of the grey one,
    # so their conditional law is their marginal, N(M^T mu restricted to chroma, sd^2).
    mu_rgb = jnp.asarray([0.6, -0.2, 0.1])
    mean = jnp.broadcast_to(mu_rgb, (2, 2, 3))
    g = toy.gaussian(mean, 0.3)
    n = 3000
    gray = jnp.full((n, 2, 2, 1), 0.25)
    x, _ = colorization.colorize(jax.random.key(0), sde, g.score_fn(sde), gray,
                                 sampler="dpm_solver", num_steps=20)
    np.testing.assert_allclose(np.asarray(x.mean(-1, keepdims=True)), np.asarray(gray), atol=2e-6)
    chroma = np.asarray(colorization.decouple(x)[..., 1:]).reshape(-1, 2)
    np.testing.assert_allclose(chroma.mean(0), np.asarray(mu_rgb @ M[:, 1:]),
                               atol=0.02)
    np.testing.assert_allclose(chroma.std(0), 0.3, rtol=0.05)


# ----------------------------------------------------------------------------------------------
# Classifier-free guidance
# ----------------------------------------------------------------------------------------------
def _mixture_conditional(mix, sde, num_classes, calls):
    """Exact class-conditional score c(x, t, y): component y's score, or the mixture's for the null
    label; records the batch size of every call (at trace time)."""

    def cond(x, t, y):
        calls.append(x.shape[0])
        a, s = sde.marginal_coeffs(t)
        comps = [toy.GaussianMixture(jnp.ones((1,)), mix.means[k:k + 1], mix.stds[k:k + 1])
                 for k in range(num_classes)]
        per_class = jnp.stack([c.score_t(x, a, s) for c in comps])  # (K, B, ...)
        uncond = mix.score_t(x, a, s)
        pick = per_class[jnp.minimum(y, num_classes - 1), jnp.arange(x.shape[0])]
        return jnp.where((y == num_classes)[:, None], uncond, pick)

    return cond


def test_cfg_combination_and_single_batched_call():
    sde = VPSDE()
    mix = toy.ring_mixture(num_modes=3)
    calls = []
    cond = _mixture_conditional(mix, sde, 3, calls)
    x = jax.random.normal(jax.random.key(0), (5, 2))
    t = jnp.full((5,), 0.4)
    y = jnp.asarray([0, 1, 2, 0, 1])
    c = jax.jit(cond)(x, t, y)
    u = jax.jit(cond)(x, t, jnp.full((5,), 3))
    guided_fn = jax.jit(lambda g, x, t: g(x, t))
    for w in (0.0, 1.0, 3.0):
        calls.clear()
        out = guided_fn(cfg.classifier_free_guidance(cond, y, w, null_label=3), x, t)
        assert calls in ([10], [])  # one network call on the concatenated batch (traced once)
        np.testing.assert_allclose(out, u + w * (c - u), rtol=1e-5, atol=1e-5)
        if w == 1.0:
            np.testing.assert_allclose(out, c, rtol=1e-5, atol=1e-5)
    calls.clear()
    jax.eval_shape(cfg.classifier_free_guidance(cond, y, 2.0, null_label=3), x, t)
    assert calls == [10]


@pytest.mark.parametrize("method,opts", [("dpm_solver", {"num_steps": 15, "order": 3}),
                                         ("pc", {"num_steps": 100})])
def test_cfg_w1_sampling_equals_conditional_sampling(method, opts):
    sde = VPSDE()
    mix = toy.ring_mixture(num_modes=3)
    cond = _mixture_conditional(mix, sde, 3, [])
    y = jnp.asarray([0, 1, 2, 2] * 64)
    guided = cfg.classifier_free_guidance(cond, y, 1.0, null_label=3)
    x_g, n_g = sampling.sample(jax.random.key(0), sde, guided, (256, 2), method, **opts)
    x_c, n_c = sampling.sample(jax.random.key(0), sde, jax.tree_util.Partial(cond, y=y), (256, 2),
                               method, **opts)
    np.testing.assert_allclose(np.asarray(x_g), np.asarray(x_c), rtol=1e-4, atol=1e-4)
    assert int(n_g) == int(n_c)
    # The samples sit in their class's mode.
    resp = mix.responsibilities(x_g)
    assert float(jnp.mean(jnp.argmax(resp, -1) == y)) > 0.99


class _TinyConditionalNet(nn.Module):
    num_classes: int

    @nn.compact
    def __call__(self, x, labels, *, train=False, y=None):
        h = nn.Dense(32)(jnp.concatenate([x, labels[:, None] / 999.0], -1))
        h = h + nn.Embed(self.num_classes + 1, 32)(y)
        return nn.Dense(x.shape[-1])(nn.silu(h))


def test_cfg_score_fn_for_flax_model():
    sde = VPSDE()
    model = _TinyConditionalNet(num_classes=4)
    x = jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.linspace(0.1, 0.9, 6)
    y = jnp.asarray([0, 1, 2, 3, 0, 1])
    variables = model.init(jax.random.key(1), x, t * 999, y=y)
    guided = cfg.cfg_score_fn(sde, model, variables, y, w=2.5, num_classes=4)
    c = get_score_fn(sde, model, variables, model_kwargs={"y": y})(x, t)
    u = get_score_fn(sde, model, variables, model_kwargs={"y": jnp.full((6,), 4)})(x, t)
    np.testing.assert_allclose(guided(x, t), u + 2.5 * (c - u), rtol=1e-5, atol=1e-5)
    w1 = cfg.cfg_score_fn(sde, model, variables, y, w=1.0, num_classes=4)
    np.testing.assert_allclose(w1(x, t), c, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes=4\)"):
        cfg.cfg_score_fn(sde, model, variables, jnp.asarray([4]), w=1.0, num_classes=4)


# ----------------------------------------------------------------------------------------------
# Classifier guidance
# ----------------------------------------------------------------------------------------------
def _exact_logits(mix, sde):
    """log w_k + log N(x; a mu_k, v_k I): the exact noisy-data classifier of the mixture."""

    def logits(x, t):
        a, s = sde.marginal_coeffs(t)
        v = a[:, None] ** 2 * mix.stds[None] ** 2 + s[:, None] ** 2
        sq = jnp.sum(jnp.square(x[:, None] - a[:, None, None] * mix.means[None]), -1)
        return jnp.log(mix.weights)[None] - 0.5 * x.shape[-1] * jnp.log(v) - 0.5 * sq / v

    return logits


def test_classifier_guidance_w1_is_exact_conditional_score():
    """score + grad log p(y | x, t) = score of component y (Bayes' rule) for the exact classifier."""
    sde = VESDE()
    mix = toy.ring_mixture(num_modes=4)
    x = 2.0 * jax.random.normal(jax.random.key(0), (6, 2))
    t = jnp.linspace(0.05, 0.9, 6)
    y = jnp.asarray([0, 1, 2, 3, 1, 2])
    guided = classifier.classifier_guided_score(mix.score_fn(sde), _exact_logits(mix, sde), y,
                                                w=1.0)
    a, s = sde.marginal_coeffs(t)
    expect = jnp.stack([toy.GaussianMixture(jnp.ones((1,)), mix.means[k:k + 1],
                                            mix.stds[k:k + 1]).score_t(x[i:i + 1], a[i:i + 1],
                                                                       s[i:i + 1])[0]
                        for i, k in enumerate(np.asarray(y))])
    np.testing.assert_allclose(guided(x, t), expect, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_train_noise_conditional_classifier_and_guide():
    """Train the small classifier on noised 2-D mixture data, then guide the unconditional exact
    score towards one class: almost all samples land in that class."""
    sde = VPSDE()
    mix = toy.ring_mixture(num_modes=2, radius=1.5, std=0.2, weights=jnp.ones((2,)))
    clf = classifier.NoiseConditionalClassifier(num_classes=2, features=(32, 32))
    x0, comp = mix.sample(jax.random.key(0), 512)
    variables = clf.init(jax.random.key(1), x0, jnp.zeros((512,)))
    loss_fn = classifier.get_classifier_loss_fn(sde, clf)
    opt = optax.adam(3e-3)
    state = opt.init(variables)

    @jax.jit
    def step(variables, state, key):
        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(
            variables, {"image": x0, "label": comp}, key)
        upd, state = opt.update(g, state)
        return optax.apply_updates(variables, upd), state, aux

    for i in range(200):
        variables, state, aux = step(variables, state, jax.random.key(10 + i))
    # Accuracy on slightly noised data (t = 0.05) is near perfect.
    logits_fn = classifier.ClassifierLogitsFn(sde, variables, clf)
    xt = sde.perturb(x0, jnp.full((512,), 0.05), jax.random.normal(jax.random.key(3), x0.shape))
    assert float(jnp.mean(jnp.argmax(logits_fn(xt, jnp.full((512,), 0.05)), -1) == comp)) > 0.97
    y = jnp.ones((500,), jnp.int32)
    guided = classifier.classifier_guided_score(mix.score_fn(sde), logits_fn, y, w=2.0)
    x, _ = sampling.sample(jax.random.key(4), sde, guided, (500, 2), "dpm_solver", num_steps=20)
    assert float(jnp.mean(jnp.argmax(mix.responsibilities(x), -1) == 1)) > 0.95
