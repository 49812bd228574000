"""Consistency distillation / training and progressive distillation (score_jax.distill) against
closed forms: Gaussian data (N(mu, v I)) has the exact denoiser D(y; s) = mu + v / (v + s^2)(y - mu)
and the probability-flow ODE dy/ds = (y - D) / s keeps (y - mu) / sqrt(v + s^2) constant, so the
consistency function is f*(y, s) = mu + (y - mu) sqrt(v + s_min^2) / sqrt(v + s^2); for a Gaussian
mixture the ODE endpoint is computed by a fine Heun solve of the exact teacher."""
import functools
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from score_jax import edm, parallel, sampling, toy
from score_jax import train_step as ts
from score_jax.distill import consistency as cm
from score_jax.distill import progressive as pd
from score_jax.sampling import consistency as cmsampling
from score_jax.sde import VESDE, VPSDE

MU, V = 0.5, 0.25  # data N(MU, V I)
S_MIN, S_MAX = 0.002, 80.0


def gauss_denoiser(y, sigma):
    sigma = jnp.broadcast_to(sigma, y.shape[:1]).reshape((-1,) + (1,) * (y.ndim - 1))
    return MU + V / (V + sigma**2) * (y - MU)


def gauss_consistency(y, sigma, s_min=S_MIN):
    sigma = jnp.broadcast_to(sigma, y.shape[:1]).reshape((-1,) + (1,) * (y.ndim - 1))
    return MU + (y - MU) * jnp.sqrt(V + s_min**2) / jnp.sqrt(V + sigma**2)


def ode_endpoint(denoiser, y, sigma, s_min=S_MIN, steps=4000):
    """Heun solve of dy/ds = (y - D) / s from sigma (B,) to s_min on a rho = 7 grid per example."""
    u = jnp.linspace(0.0, 1.0, steps + 1)

    def grid(s):
        return (s ** (1 / 7) + u * (s_min ** (1 / 7) - s ** (1 / 7))) ** 7

    sig = jax.vmap(grid)(sigma)  # (B, steps + 1)

    def body(y, i):
        return cm.heun_step(denoiser, y, sig[:, i], sig[:, i + 1]), None

    return jax.lax.scan(body, y, jnp.arange(steps))[0]


class MLP(nn.Module):
    """F(x, c_noise) on flat data: the backbone contract of edm.EDMDenoiser."""

    width: int = 64

    @nn.compact
    def __call__(self, x, labels, *, train=False):
        emb = jnp.stack([labels, jnp.sin(labels), jnp.cos(labels)], -1)
        h = jnp.concatenate([x, emb], -1)
        for _ in range(2):
            h = nn.silu(nn.Dense(self.width)(h))
        return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)


# ----------------------------------------------------------------------------------------------
# The consistency function
# ----------------------------------------------------------------------------------------------
def test_boundary_condition_is_exact():
    pre = cm.ConsistencyPrecond(sigma_data=0.5, sigma_min=S_MIN, sigma_max=S_MAX)
    c_skip, c_out, _, _ = pre.coeffs(jnp.float32(S_MIN))
    assert float(c_skip) == 1.0 and float(c_out) == 0.0
    model = MLP()
    x = jax.random.normal(jax.random.key(0), (5, 3))
    variables = model.init(jax.random.key(1), x, jnp.zeros(5))
    variables = jax.tree_util.tree_map(lambda p: p + 0.3, variables)  # a non-zero network
    f = edm.EDMDenoiser(pre, variables, model)
    np.testing.assert_array_equal(np.asarray(f(x, S_MIN)), np.asarray(x))
    assert float(jnp.max(jnp.abs(f(x, 1.0) - x))) > 1e-2  # elsewhere the network matters


def test_precond_for_sde_matches_sampling_range():
    pre = cm.consistency_precond_for_sde(VESDE(sigma_min=0.002, sigma_max=80.0), eps=1e-9)
    np.testing.assert_allclose([pre.sigma_min, pre.sigma_max], [0.002, 80.0], rtol=1e-5)
    vp = VPSDE()
    lo, hi = cm.sigma_range(vp)
    a, s = vp.marginal_coeffs(jnp.asarray([vp.sampling_eps, 1.0]))
    np.testing.assert_allclose([lo, hi], np.asarray(s / a), rtol=1e-6)


def test_exact_ode_endpoint_is_the_gaussian_consistency_function(x64):
    y = jax.random.normal(jax.random.key(0), (6, 3), jnp.float64) * 4.0
    sigma = jnp.asarray([0.01, 0.1, 0.5, 2.0, 10.0, 80.0])
    y = y * sigma[:, None]
    np.testing.assert_allclose(ode_endpoint(gauss_denoiser, y, sigma), gauss_consistency(y, sigma),
                               rtol=1e-5, atol=1e-5)  # Heun: O(h^2) at 4000 steps


def test_cd_target_with_exact_teacher_and_tiny_step_is_the_exact_ode_map(x64):
    """One teacher Heun step of dsigma = 1e-3 then f* equals f* at the start (O(ds^3))."""
    y = jax.random.normal(jax.random.key(1), (5, 4), jnp.float64) * 3.0
    sigma = jnp.asarray([0.05, 0.3, 1.0, 5.0, 40.0])
    for name, tol in (("heun", 1e-9), ("euler", 1e-5)):
        step = cm.get_teacher_solver(name)
        y_lo = step(gauss_denoiser, y, sigma, sigma * (1 - 1e-3))
        np.testing.assert_allclose(gauss_consistency(y_lo, sigma * (1 - 1e-3)),
                                   gauss_consistency(y, sigma), atol=tol)
    # the loss of the exact consistency function is ~0 on a fine grid (Heun's local error)
    x0 = MU + jnp.sqrt(V) * jax.random.normal(jax.random.key(2), (256, 4), jnp.float64)
    loss, aux = cm.cd_loss(jax.random.key(3), gauss_consistency, gauss_consistency,
                           gauss_denoiser, x0, num_scales=2000)
    assert float(loss) < 1e-10 and aux["losses"].shape == (256,)
    # and not ~0 for a wrong function (the test can fail)
    loss_bad, _ = cm.cd_loss(jax.random.key(3), gauss_denoiser, gauss_consistency, gauss_denoiser,
                             x0, num_scales=2000)
    assert float(loss_bad) > 1e-3


@pytest.mark.parametrize("k", [1, 3])
def test_cd_multistep_teacher_walks_the_grid(x64, k):
    """teacher_steps k: the target point is k teacher Heun steps down the N-point grid from
    sigma_j (fewer below sigma_k), computed here example by example; k = 1 is CM's pairing."""
    n, b = 6, 64
    x0 = MU + jnp.sqrt(V) * jax.random.normal(jax.random.key(5), (b, 3), jnp.float64)
    key = jax.random.key(6)

    def ident(y, sigma):
        return y

    _, aux = cm.cd_loss(key, ident, ident, gauss_denoiser, x0, num_scales=n, teacher_steps=k)
    k_i, k_z = jax.random.split(key)
    j = np.asarray(jax.random.randint(k_i, (b,), 1, n))
    z = jax.random.normal(k_z, x0.shape, jnp.float64)
    # the grid as cd_loss evaluates it (float32 levels of the (B,) index arrays)
    levels = [np.asarray(cm.karras_sigma(jnp.asarray(np.maximum(j - s, 0)), n, S_MIN, S_MAX),
                         np.float64) for s in range(n)]
    want = []
    for e in range(b):
        y = x0[e:e + 1] + levels[0][e] * z[e:e + 1]
        y_hi = y
        for s in range(1, min(k, j[e]) + 1):
            y = cm.heun_step(gauss_denoiser, y, jnp.asarray(levels[s - 1][e:e + 1]),
                             jnp.asarray(levels[s][e:e + 1]))
        want.append(float(jnp.mean((y_hi - y) ** 2)))
    np.testing.assert_allclose(np.asarray(aux["losses"]), want, rtol=1e-10)
    grid = np.asarray(cm.karras_sigma(jnp.arange(n), n, S_MIN, S_MAX), np.float64)
    np.testing.assert_allclose(np.asarray(aux["sigma"]), grid[j], rtol=1e-6)
    assert len(set(j.tolist())) == n - 1  # every level 1..N-1 drawn
    # the exact consistency function is consistent across k-step links too; a wrong one is not
    loss, _ = cm.cd_loss(key, gauss_consistency, gauss_consistency, gauss_denoiser, x0,
                         num_scales=2000, teacher_steps=k)
    bad, _ = cm.cd_loss(key, gauss_denoiser, gauss_consistency, gauss_denoiser, x0,
                        num_scales=2000, teacher_steps=k)
    assert float(loss) < 1e-10 and float(bad) > 1e-3
    with pytest.raises(ValueError, match="teacher_steps"):
        cm.cd_loss(key, ident, ident, gauss_denoiser, x0, teacher_steps=0)


def test_cd_weightings(x64):
    """lambda of each CD example: 1 (CM), 1 / (sigma_j - sigma_lo) (iCT), 1 / c_out(sigma_j)^2 with
    the consistency preconditioning's c_out (EDM's lambda): the weighted losses are the uniform
    ones times lambda, example by example."""
    pre = cm.ConsistencyPrecond(sigma_data=0.5, sigma_min=S_MIN, sigma_max=S_MAX)
    sig = jnp.asarray([0.01, 0.3, 80.0], jnp.float64)
    lo = jnp.asarray([S_MIN, 0.14, 57.0], jnp.float64)
    np.testing.assert_allclose(cm.cd_weight("uniform", sig, lo, S_MIN), 1.0)
    np.testing.assert_allclose(cm.cd_weight("inverse_dsigma", sig, lo, S_MIN),
                               [1 / 0.008, 1 / 0.16, 1 / 23.0], rtol=1e-12)
    c_out = pre.coeffs(sig)[1]
    np.testing.assert_allclose(cm.cd_weight("inverse_cout2", sig, lo, S_MIN, 0.5), 1 / c_out**2,
                               rtol=1e-12)
    np.testing.assert_allclose(1 / c_out**2, [(0.25 + 1e-4) / (0.008**2 * 0.25),
                                              (0.25 + 0.09) / (0.298**2 * 0.25),
                                              (0.25 + 6400) / (79.998**2 * 0.25)], rtol=1e-12)
    x0 = MU + jnp.sqrt(V) * jax.random.normal(jax.random.key(7), (32, 3), jnp.float64)
    key = jax.random.key(8)
    base, aux0 = cm.cd_loss(key, gauss_denoiser, gauss_consistency, gauss_denoiser, x0,
                            num_scales=6, teacher_steps=2)
    k_i, _ = jax.random.split(key)
    j = jax.random.randint(k_i, (32,), 1, 6)
    grid = cm.karras_sigma(jnp.arange(6), 6, S_MIN, S_MAX).astype(jnp.float64)
    for w in ("inverse_dsigma", "inverse_cout2"):
        _, aux = cm.cd_loss(key, gauss_denoiser, gauss_consistency, gauss_denoiser, x0,
                            num_scales=6, teacher_steps=2, weighting=w)
        lam = cm.cd_weight(w, grid[j], grid[jnp.maximum(j - 2, 0)], S_MIN, 0.5)
        np.testing.assert_allclose(aux["losses"], aux0["losses"] * lam, rtol=1e-5)
    with pytest.raises(ValueError, match=r"weighting 'snr'; valid choices: \['uniform'"):
        cm.cd_loss(key, gauss_denoiser, gauss_consistency, gauss_denoiser, x0, weighting="snr")


def test_mixture_cd_target_is_the_ode_map(x64):
    """On a 2-D ring mixture (exact teacher from score_jax.toy), the CD target of the exact
    consistency function (a fine ODE solve) equals its value one Heun step earlier."""
    mix = toy.ring_mixture(num_modes=4, radius=1.0, std=0.2)
    mix = jax.tree_util.tree_map(lambda a: jnp.asarray(a, jnp.float64), mix)

    def teacher(y, sigma):
        s = jnp.broadcast_to(sigma, y.shape[:1])
        return y + (s**2)[:, None] * mix.score_t(y, jnp.ones_like(s), s)

    f_exact = functools.partial(ode_endpoint, teacher, steps=400)
    y = jax.random.normal(jax.random.key(4), (8, 2), jnp.float64) * 2.0
    sigma = jnp.full((8,), 2.0)
    y_lo = cm.heun_step(teacher, y, sigma, sigma * 0.99)
    np.testing.assert_allclose(f_exact(y_lo, sigma * 0.99), f_exact(y, sigma), atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Curriculum and noise sampling of improved CT
# ----------------------------------------------------------------------------------------------
def test_ct_curriculum_and_lognormal_probs():
    K = 8000  # K' = floor(8000 / (log2(128) + 1)) = 1000
    n = [int(cm.ct_num_scales(k, K)) for k in (0, 999, 1000, 2000, 6999, 7000, 7999)]
    assert n == [11, 11, 21, 41, 641, 1281, 1281]
    p = cm.lognormal_index_probs(jnp.int32(11), 1281, S_MIN, S_MAX)
    assert p.shape == (1280,) and abs(float(jnp.sum(p)) - 1) < 1e-5
    assert float(jnp.sum(p[10:])) == 0.0 and float(jnp.min(p[:10])) > 0
    sig = cm.karras_sigma(jnp.arange(11), 11, S_MIN, S_MAX)
    np.testing.assert_allclose([sig[0], sig[-1]], [S_MIN, S_MAX], rtol=1e-5)
    # the probability of an interval is the lognormal mass between its ends
    from scipy.stats import norm
    cdf = norm.cdf((np.log(np.asarray(sig)) + 1.1) / 2.0)
    np.testing.assert_allclose(p[:10], np.diff(cdf) / (cdf[-1] - cdf[0]), rtol=1e-4, atol=1e-7)


def test_ct_loss_pairs_adjacent_levels_of_the_curriculum_grid():
    """iCT's pair (sigma_i, sigma_{i+1}) lies on the N(step) grid with the same z: the exact
    pseudo-Huber of f(y_{i+1}) - f(y_i) over (sigma_{i+1} - sigma_i), recomputed by hand."""
    x0 = MU + jnp.sqrt(V) * jax.random.normal(jax.random.key(0), (64, 2))
    loss, aux = cm.ct_loss(jax.random.key(1), gauss_denoiser, x0, jnp.int32(1500),
                           total_steps=8000)
    assert int(aux["num_scales"]) == 21
    grid = np.asarray(cm.karras_sigma(jnp.arange(21), 21, S_MIN, S_MAX))
    i = np.argmin(np.abs(grid[None] - np.asarray(aux["sigma"])[:, None]), axis=1)
    np.testing.assert_allclose(grid[i], aux["sigma"], rtol=1e-5)
    assert i.min() >= 1
    k_i, k_z = jax.random.split(jax.random.key(1))
    z = jax.random.normal(k_z, x0.shape)
    hi, lo = jnp.asarray(grid[i]), jnp.asarray(grid[i - 1])
    d = gauss_denoiser(x0 + hi[:, None] * z, hi) - gauss_denoiser(x0 + lo[:, None] * z, lo)
    c = 0.00054 * np.sqrt(2)
    ref = (jnp.sqrt(jnp.sum(d**2, -1) + c**2) - c) / (hi - lo)
    np.testing.assert_allclose(aux["losses"], ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(loss, jnp.mean(ref), rtol=1e-4)


# ----------------------------------------------------------------------------------------------
# A distilled student reaches the exact consistency function
# ----------------------------------------------------------------------------------------------
def test_cd_student_reaches_the_exact_consistency_function():
    s_max = 10.0
    pre = cm.ConsistencyPrecond(sigma_data=0.5, sigma_min=S_MIN, sigma_max=s_max)
    model = MLP()
    loss_fn = cm.get_consistency_loss_fn(model, pre, method="cd", teacher=gauss_denoiser,
                                         target="stopgrad", num_scales=18)
    tx = optax.adam(3e-3)
    params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.zeros(1))["params"]
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, key):
        k_x, k_l = jax.random.split(key)
        x0 = MU + jnp.sqrt(V) * jax.random.normal(k_x, (256, 2))
        grads = jax.grad(lambda p: loss_fn({"params": p}, x0, k_l)[0])(params)
        upd, opt = tx.update(grads, opt, params)
        return optax.apply_updates(params, upd), opt

    for i in range(600):
        params, opt = step(params, opt, jax.random.key(i + 10))
    f = edm.EDMDenoiser(pre, {"params": params}, model)
    sig = cm.karras_sigma(jnp.arange(18), 18, S_MIN, s_max)[1:]
    z = jax.random.normal(jax.random.key(99), (17, 64, 2))
    err = []
    for k in range(17):
        y = MU + jnp.sqrt(V + sig[k] ** 2) * z[k]
        err.append(jnp.sqrt(jnp.mean(jnp.square(f(y, sig[k]) - gauss_consistency(y, sig[k])))))
    # stated tolerance: RMS error below 0.05 (data std 0.5) at every grid level
    assert float(jnp.max(jnp.asarray(err))) < 0.05, err


# ----------------------------------------------------------------------------------------------
# Progressive distillation
# ----------------------------------------------------------------------------------------------
def test_pd_target_matches_the_papers_formula_in_vp_variables(x64):
    """The target in EDM variables equals Salimans & Ho's (z_t'' - (s''/s) z_t) / (a'' - (s''/s) a)
    computed on the VP path a = 1 / sqrt(1 + sigma^2), s = sigma a with DDIM steps in z."""
    y = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64) * 2.0
    sg, sm, sn = (jnp.full((4,), v, jnp.float64) for v in (2.0, 0.7, 0.2))
    ours = pd.pd_target(gauss_denoiser, y, sg, sm, sn)

    def coeffs(sig):
        a = 1 / jnp.sqrt(1 + sig**2)
        return a, sig * a

    def ddim_z(z, sig, sig_next):  # x0 from the EDM denoiser at y = z / a; eps = (z - a x0) / s
        a, s = coeffs(sig)
        a2, s2 = coeffs(sig_next)
        x0 = gauss_denoiser(z / a[0], sig)
        return a2[0] * x0 + s2[0] * (z - a[0] * x0) / s[0]

    a, s = coeffs(sg[0])
    a2, s2 = coeffs(sn[0])
    z = a * y
    z2 = ddim_z(ddim_z(z, sg, sm), sm, sn)
    ref = (z2 - (s2 / s) * z) / (a2 - (s2 / s) * a)
    np.testing.assert_allclose(ours, ref, rtol=1e-10)


def test_pd_with_exact_teacher_keeps_the_two_step_ddim_map(x64):
    """The loss minimiser (the target x0~ as the student's prediction) makes one student DDIM step
    equal two teacher steps, on every interval of the grid; its loss is 0 and a student equal to
    the teacher (one step) has a positive loss."""
    sde = VESDE(sigma_min=S_MIN, sigma_max=S_MAX)
    sig = pd.student_sigmas(sde, 4)
    assert sig.shape == (9,)
    # grids nest: the 2-step student's teacher grid is the 4-step student's grid
    np.testing.assert_allclose(pd.student_sigmas(sde, 2), sig[::2], rtol=1e-5)
    y = jax.random.normal(jax.random.key(0), (4, 3), jnp.float64) * 5.0
    for j in range(4):
        s0, s1, s2 = (jnp.full((4,), sig[2 * j + k], jnp.float64) for k in range(3))
        x0t = pd.pd_target(gauss_denoiser, y, s0, s1, s2)
        one = pd.ddim_step(lambda yy, ss: x0t, y, s0, s2)
        two = pd.ddim_step(gauss_denoiser, pd.ddim_step(gauss_denoiser, y, s0, s1), s1, s2)
        np.testing.assert_allclose(one, two, rtol=1e-9, atol=1e-9)
    x0 = MU + jnp.sqrt(V) * jax.random.normal(jax.random.key(1), (64, 3), jnp.float64)

    def student_opt(yy, ss):  # the minimiser: x0~ at (y, sigma_2j) on this grid
        j = jnp.argmin(jnp.abs(sig[None, ::2] - ss[:, None]), axis=1)
        return pd.pd_target(gauss_denoiser, yy, sig[2 * j], sig[2 * j + 1], sig[2 * j + 2])

    loss, _ = pd.pd_loss(jax.random.key(2), student_opt, gauss_denoiser, x0, sig)
    assert float(loss) < 1e-10
    loss_teacher, _ = pd.pd_loss(jax.random.key(2), gauss_denoiser, gauss_denoiser, x0, sig)
    assert float(loss_teacher) > 1e-4


# ----------------------------------------------------------------------------------------------
# Sampling
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_steps", [1, 2, 3, 4])
def test_consistency_sampling_nfe_and_exact_one_step_map(num_steps):
    sde = VESDE(sigma_min=S_MIN, sigma_max=S_MAX)
    calls = []
    s_min = cm.sigma_range(sde)[0]

    def denoiser(y, sigma):
        calls.append(1)  # counted while tracing: once per evaluation of the unrolled loop
        return gauss_consistency(y, sigma, s_min=s_min)

    score_fn = edm.edm_score_fn(denoiser, sde)
    x, nfe = sampling.sample(jax.random.key(0), sde, score_fn, (4096, 2), method="consistency",
                             num_steps=num_steps)
    assert nfe == num_steps
    calls.clear()  # the runner also evaluates once to check shapes: count the sampler alone
    from score_jax.sampling.consistency import consistency_sample
    consistency_sample(jax.random.key(0), sde, score_fn, x[:4], num_steps=num_steps)
    assert len(calls) == num_steps
    # f* maps x_T to the data distribution's ODE endpoint: N(MU, (V + s_min^2) s_max^2 / (V + s_max^2))
    np.testing.assert_allclose(float(jnp.mean(x)), MU, atol=0.03)
    np.testing.assert_allclose(float(jnp.std(x)), np.sqrt(V), rtol=0.03)


def test_consistency_sampling_one_step_is_f_of_the_prior_on_vp():
    sde = VPSDE()
    lo, hi = cm.sigma_range(sde)
    score_fn = edm.edm_score_fn(functools.partial(gauss_consistency, s_min=lo), sde)
    x_init = sde.prior_sampling(jax.random.key(0), (16, 3))
    x, nfe = sampling.sample(jax.random.key(1), sde, score_fn, (16, 3), method="consistency",
                             num_steps=1, x_init=x_init)
    a_T, s_T = sde.marginal_coeffs(jnp.float32(1.0))
    np.testing.assert_allclose(x, gauss_consistency(x_init / a_T, s_T / a_T, s_min=lo), rtol=1e-4,
                               atol=1e-5)
    assert nfe == 1


def test_consistency_sampling_intermediate_sigmas_and_errors():
    sde = VESDE(sigma_min=S_MIN, sigma_max=S_MAX)
    score_fn = edm.edm_score_fn(gauss_consistency, sde)
    x, nfe = sampling.sample(jax.random.key(0), sde, score_fn, (8, 2), method="consistency",
                             num_steps=3, sigmas="2.0,0.5")
    assert nfe == 3 and x.shape == (8, 2)
    with pytest.raises(ValueError, match="num_steps - 1 = 1"):
        sampling.sample(jax.random.key(0), sde, score_fn, (8, 2), method="consistency",
                        num_steps=2, sigmas="2.0,0.5")
    with pytest.raises(ValueError, match="decreasing"):
        sampling.sample(jax.random.key(0), sde, score_fn, (8, 2), method="consistency",
                        num_steps=3, sigmas="0.5,2.0")
    with pytest.raises(ValueError, match="num_steps"):
        sampling.sample(jax.random.key(0), sde, score_fn, (8, 2), method="consistency",
                        num_steps=0)


def test_consistency_sampling_sigma_mid_levels():
    """sigma_mid: 2 steps = the explicit level sigma_mid; 3 steps = sigma_mid then the middle of
    the 3-point rho = 7 grid from sigma_mid to sigma_min; explicit sigmas win; bad values named."""
    sde = VESDE(sigma_min=S_MIN, sigma_max=S_MAX)
    score_fn = edm.edm_score_fn(gauss_consistency, sde)
    key = jax.random.key(3)

    def run(**kw):
        return np.asarray(sampling.sample(key, sde, score_fn, (16, 2), method="consistency",
                                          eps=1e-9, **kw)[0])

    np.testing.assert_array_equal(run(num_steps=2, sigma_mid=0.821), run(num_steps=2, sigmas="0.821"))
    mid = ((0.821 ** (1 / 7) + S_MIN ** (1 / 7)) / 2) ** 7
    np.testing.assert_allclose(run(num_steps=3, sigma_mid=0.821),
                               run(num_steps=3, sigmas=f"0.821,{mid!r}"), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(cmsampling.mid_levels(sde, 0.821, 3, 1e-9)),
                               [0.821, mid], rtol=1e-5)
    np.testing.assert_array_equal(run(num_steps=2, sigma_mid=0.821, sigmas="2.0"),
                                  run(num_steps=2, sigmas="2.0"))
    assert not np.allclose(run(num_steps=2, sigma_mid=0.821), run(num_steps=2))  # rho grid: 2.52
    np.testing.assert_array_equal(run(num_steps=1, sigma_mid=0.821), run(num_steps=1))
    with pytest.raises(ValueError, match=r"sigma_mid=100.0 must lie between the SDE's sigma_min"):
        run(num_steps=2, sigma_mid=100.0)
    with pytest.raises(ValueError, match=r"sigma_mid must be > 0 and finite; got -1.0"):
        run(num_steps=2, sigma_mid=-1.0)


# ----------------------------------------------------------------------------------------------
# Losses: errors, and the jitted step sharded over 8 devices equals one device
# ----------------------------------------------------------------------------------------------
def test_loss_fn_errors():
    pre = cm.ConsistencyPrecond()
    with pytest.raises(ValueError, match="valid choices"):
        cm.get_consistency_loss_fn(MLP(), pre, method="xx", teacher=gauss_denoiser)
    with pytest.raises(ValueError, match="needs a teacher"):
        cm.get_consistency_loss_fn(MLP(), pre, method="cd")
    with pytest.raises(ValueError, match="total_steps"):
        cm.get_consistency_loss_fn(MLP(), pre, method="ct")
    with pytest.raises(ValueError, match="valid choices"):
        cm.get_consistency_loss_fn(MLP(), pre, teacher=gauss_denoiser, solver="rk4")
    with pytest.raises(ValueError, match="valid choices"):
        cm.get_consistency_loss_fn(MLP(), pre, teacher=gauss_denoiser, metric="lpips")
    with pytest.raises(ValueError, match="teacher_steps must be an integer >= 1; got 0"):
        cm.get_consistency_loss_fn(MLP(), pre, teacher=gauss_denoiser, teacher_steps=0)
    with pytest.raises(ValueError, match="weighting 'x'; valid choices"):
        cm.get_consistency_loss_fn(MLP(), pre, teacher=gauss_denoiser, weighting="x")
    with pytest.raises(ValueError, match="2N"):
        pd.get_progressive_loss_fn(MLP(), edm.EDMPrecond(), gauss_denoiser, jnp.ones(4))


@pytest.mark.parametrize("kind", ["cd", pytest.param("ct", marks=pytest.mark.slow),
                                  pytest.param("pd", marks=pytest.mark.slow)])
def test_train_step_sharded_equals_one_device(kind):
    model = MLP(width=16)
    if kind == "pd":
        loss_fn = pd.get_progressive_loss_fn(model, edm.EDMPrecond(), gauss_denoiser,
                                             pd.student_sigmas(VESDE(S_MIN, S_MAX), 2))
    else:
        loss_fn = cm.get_consistency_loss_fn(
            model, cm.ConsistencyPrecond(), method=kind, teacher=gauss_denoiser, total_steps=100)
    tx = optax.adam(1e-3)
    x0 = MU + jnp.sqrt(V) * jax.random.normal(jax.random.key(0), (16, 2))
    out = []
    for n in (8, 1):
        mesh = parallel.make_mesh(n)
        params = model.init(jax.random.key(1), jnp.zeros((1, 2)), jnp.zeros(1))["params"]
        state = ts.TrainState(jnp.int32(0), params, jax.tree_util.tree_map(jnp.copy, params),
                              tx.init(params))
        state = parallel.replicate(state, mesh)
        step = ts.jit_train_step(loss_fn, tx, lambda s: 1e-3, 0.9, mesh, state_inputs=True)
        for _ in range(2):
            state, metrics = step(state, parallel.to_global(x0, mesh), jax.random.key(2))
        out.append((float(metrics["loss"]), jax.device_get(state.params)))
    np.testing.assert_allclose(out[0][0], out[1][0], rtol=1e-5)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                           out[0][1], out[1][1])


# ----------------------------------------------------------------------------------------------
# Through train.py's path: teacher workdir -> student trained, resumed, sampled
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", ["cd", "ct", "pd"])
def test_distill_train_resume_sample(tmp_path, method):
    from test_train_helpers import TinyNet

    from configs import digits_distill
    from score_jax import checkpoint as ckpt_lib
    from score_jax import sample_lib, train_lib

    teacher_wd, wd = str(tmp_path / "teacher"), str(tmp_path / "student")
    tconfig = digits_distill.get_config(f"{method}_smoke")
    tconfig.training.objective = "edm"
    tconfig.training.snapshot_sampling = False
    train_lib.train_and_evaluate(tconfig, teacher_wd, model=TinyNet())
    config = digits_distill.get_config(f"{method}_smoke")
    config.distill.teacher_workdir = teacher_wd
    config.training.n_iters = 2
    teacher = train_lib.load_teacher(config, model=TinyNet())
    state = train_lib.train_and_evaluate(config, wd, model=TinyNet())
    assert int(state.step) == 2
    # started from the teacher's weights: one step of lr 2e-4 with warmup moves them little
    config.training.n_iters = 4  # resume
    losses = []
    state = train_lib.train_and_evaluate(config, wd, model=TinyNet(),
                                         callbacks=[lambda s, m: losses.append(float(m["loss"]))])
    assert int(state.step) == 4 and len(losses) == 2 and all(np.isfinite(losses))
    assert ckpt_lib.TrainCheckpointer(wd, read_only=True).latest_step() == 4
    assert teacher is not None and os.path.exists(os.path.join(wd, "samples", "iter_4"))
    config.sampling.num_steps = 2
    out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=8, model=TinyNet(),
                                           output_dir=str(tmp_path / "s"))
    assert out["nfe"] == 2 and out["images"].shape == (8, 8, 8, 1)
    assert np.isfinite(out["images"]).all()


def test_missing_teacher_workdir_is_named(tmp_path):
    """A teacher workdir that does not exist is named as the teacher's flag (not as --workdir)."""
    from configs import digits_distill
    from score_jax import train_lib

    c = digits_distill.get_config("cd_smoke")
    c.distill.teacher_workdir = str(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"^the distillation teacher "
                                                r"--config\.distill\.teacher_workdir='.*nope' does "
                                                r"not exist; train the teacher first"):
        train_lib.load_teacher(c)
