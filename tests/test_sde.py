"""SDEs against independent closed forms and numerically integrated moment ODEs."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import struct
from scipy.integrate import solve_ivp
from scipy.stats import norm

from score_jax.sde import (
    SDES,
    VESDE,
    VPSDE,
    AbstractSDE,
    batch_mul,
    gaussian_perturb,
    get_sde,
    sde_parameters,
    subVPSDE,
)

TS = np.array([1e-3, 0.1, 0.37, 0.8, 1.0])


def _ref_coeffs(name, t, b0=0.1, b1=20.0, smin=0.01, smax=50.0):
    """Independent closed forms (Song et al. 2021, App. B): f(t), g(t), a_t, s_t."""
    if name == "vesde":
        sig = smin * (smax / smin) ** t
        return 0 * t, sig * np.sqrt(2 * np.log(smax / smin)), 1 + 0 * t, sig
    beta = b0 + t * (b1 - b0)
    integral = b0 * t + 0.5 * (b1 - b0) * t**2  # int_0^t beta
    a = np.exp(-0.5 * integral)
    if name == "vpsde":
        return -0.5 * beta, np.sqrt(beta), a, np.sqrt(1 - np.exp(-integral))
    return -0.5 * beta, np.sqrt(beta * (1 - np.exp(-2 * integral))), a, 1 - np.exp(-integral)


@pytest.mark.parametrize("name", list(SDES))
def test_sde_and_marginal_closed_form(name, x64):
    sde = get_sde(name)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(len(TS), 3, 2)))
    t = jnp.asarray(TS)
    drift, diffusion = sde.sde(x, t)
    mean, std = sde.marginal_prob(x, t)
    f, g, a, s = _ref_coeffs(name, TS)
    np.testing.assert_allclose(drift, f[:, None, None] * np.asarray(x), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(diffusion, g, rtol=1e-12)
    np.testing.assert_allclose(mean, a[:, None, None] * np.asarray(x), rtol=1e-12)
    np.testing.assert_allclose(std, s, rtol=1e-10)


@pytest.mark.parametrize("name", list(SDES))
def test_marginals_match_integrated_moment_odes(name, x64):
    """For dx = f(t) x dt + g(t) dW: m' = f m, v' = 2 f v + g^2 with m(0) = 1 and v(0) = 0, except
    VE, whose reference marginal s_t = sigma(t) is that of the SDE started at noise level sigma_min
    (v(0) = sigma_min^2)."""
    sde = get_sde(name)
    one = jnp.ones((1, 1))

    def rhs(t, y):
        drift, g = sde.sde(one, jnp.array([t]))
        fcoef = float(drift[0, 0])
        return [fcoef * y[0], 2 * fcoef * y[1] + float(g[0]) ** 2]

    v0 = 0.01**2 if name == "vesde" else 0.0
    sol = solve_ivp(rhs, (0.0, 1.0), [1.0, v0], t_eval=TS, rtol=1e-11, atol=1e-13, method="DOP853")
    a, s = sde.marginal_coeffs(jnp.asarray(TS))
    np.testing.assert_allclose(a, sol.y[0], rtol=1e-7)
    np.testing.assert_allclose(np.asarray(s) ** 2, sol.y[1], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", list(SDES))
def test_prior_logp_and_sampling(name, x64):
    sde = get_sde(name)
    z = sde.prior_sampling(jax.random.key(0), (4000, 5), jnp.float64)
    sd = 50.0 if name == "vesde" else 1.0
    assert abs(float(jnp.std(z)) / sd - 1) < 0.02
    zz = np.random.default_rng(1).normal(size=(3, 2, 2)) * sd
    ref = norm.logpdf(zz, scale=sd).reshape(3, -1).sum(-1)
    np.testing.assert_allclose(sde.prior_logp(jnp.asarray(zz)), ref, rtol=1e-12)


def test_discrete_schedules(x64):
    vp, ve = VPSDE(N=1000), VESDE(N=1000)
    betas = np.linspace(0.1 / 1000, 20 / 1000, 1000)
    np.testing.assert_allclose(vp.discrete_betas, betas, rtol=1e-12)
    np.testing.assert_allclose(vp.alphas_cumprod, np.cumprod(1 - betas), rtol=1e-10)
    sig = np.exp(np.linspace(np.log(0.01), np.log(50), 1000))
    np.testing.assert_allclose(ve.discrete_sigmas, sig, rtol=1e-12)
    # time -> index as the reference's (t * (N-1) / T).long() on the sampling grid
    grid = jnp.linspace(1.0, 1e-3, 1000)
    np.testing.assert_array_equal(vp.time_index(grid), np.arange(999, -1, -1))


def test_discretize(x64):
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)))
    t = jnp.array([0.0, 0.5, 1.0])
    N = 1000
    i = np.floor(np.asarray(t) * (N - 1)).astype(int)
    betas = np.linspace(0.1 / N, 20 / N, N)
    f, G = VPSDE().discretize(x, t)
    np.testing.assert_allclose(f, (np.sqrt(1 - betas[i]) - 1)[:, None] * np.asarray(x), rtol=1e-12)
    np.testing.assert_allclose(G, np.sqrt(betas[i]), rtol=1e-12)
    sig = np.exp(np.linspace(np.log(0.01), np.log(50), N))
    prev = np.where(i == 0, 0.0, sig[np.maximum(i - 1, 0)])
    f, G = VESDE().discretize(x, t)
    np.testing.assert_allclose(f, 0.0)
    np.testing.assert_allclose(G, np.sqrt(sig[i] ** 2 - prev**2), rtol=1e-12)
    # sub-VP: Euler-Maruyama with dt = 1/N
    sub = subVPSDE()
    f, G = sub.discretize(x, t)
    _, g, _, _ = _ref_coeffs("subvpsde", np.asarray(t))
    drift = -0.5 * (0.1 + np.asarray(t) * 19.9)[:, None] * np.asarray(x)
    np.testing.assert_allclose(f, drift / N, rtol=1e-12)
    np.testing.assert_allclose(G, g * math.sqrt(1 / N), rtol=1e-12)


@pytest.mark.parametrize("name", list(SDES))
def test_reverse_sde_and_probability_flow(name, x64):
    sde = get_sde(name)
    x = jnp.asarray(np.random.default_rng(3).normal(size=(2, 3)))
    t = jnp.array([0.3, 0.9])
    score_fn = lambda x, t: -2.0 * x + t[:, None]
    f, g = sde.sde(x, t)
    sc = score_fn(x, t)
    rd, rg = sde.reverse(score_fn).sde(x, t)
    np.testing.assert_allclose(rd, f - (g**2)[:, None] * sc, rtol=1e-12)
    np.testing.assert_allclose(rg, g)
    pd, pg = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(pd, f - 0.5 * (g**2)[:, None] * sc, rtol=1e-12)
    np.testing.assert_allclose(pg, 0.0)
    fd, G = sde.discretize(x, t)
    rfd, rG = sde.reverse(score_fn).discretize(x, t)
    np.testing.assert_allclose(rfd, fd - (G**2)[:, None] * sc, rtol=1e-12)
    np.testing.assert_allclose(rG, G)


@pytest.mark.parametrize("name", list(SDES))
def test_ancestral_posterior_matches_gaussian_conditioning(name, x64):
    """q(x_s | x_t, x0) against conditioning the joint Gaussian of (x_s, x_t) given x0."""
    sde = get_sde(name)
    s_time, t_time = 0.4, 0.55
    a_s, sig_s = (float(v[0]) for v in sde.marginal_coeffs(jnp.array([s_time])))
    a_t, sig_t = (float(v[0]) for v in sde.marginal_coeffs(jnp.array([t_time])))
    # joint given x0: x_s = a_s x0 + sig_s e1; x_t = (a_t/a_s) x_s + n, n ~ N(0, sig_t^2 - (a_t/a_s)^2 sig_s^2)
    cov_ss, cov_st, cov_tt = sig_s**2, (a_t / a_s) * sig_s**2, sig_t**2
    x0, xt = 0.7, -0.2
    mean_ref = a_s * x0 + cov_st / cov_tt * (xt - a_t * x0)
    var_ref = cov_ss - cov_st**2 / cov_tt
    mean, std = sde.ancestral_posterior(jnp.full((1, 1), xt), jnp.array([t_time]), jnp.array([s_time]),
                                        jnp.full((1, 1), x0))
    np.testing.assert_allclose(float(mean[0, 0]), mean_ref, rtol=1e-10)
    np.testing.assert_allclose(float(std[0]) ** 2, var_ref, rtol=1e-9)


def test_pytree_jit_vmap_grad(x64):
    sde = VPSDE(beta_min=0.1, beta_max=20.0)
    assert jax.tree_util.tree_leaves(sde) == [0.1, 20.0]
    # parameters are traced: no recompilation for a new beta_max
    f = jax.jit(lambda s, t: s.marginal_coeffs(t)[1])
    f(sde, jnp.array([0.5]))
    n = f._cache_size()
    f(VPSDE(beta_min=0.1, beta_max=10.0), jnp.array([0.5]))
    assert f._cache_size() == n
    # vmap over SDE parameters
    sdes = VPSDE(beta_min=jnp.array([0.1, 0.2]), beta_max=jnp.array([20.0, 10.0]))
    stds = jax.vmap(lambda s: s.marginal_coeffs(jnp.array([0.5]))[1])(sdes)
    np.testing.assert_allclose(stds[:, 0], [_ref_coeffs("vpsde", 0.5)[3], _ref_coeffs("vpsde", 0.5, 0.2, 10.0)[3]])
    # derivative of s_t in t vs finite differences
    ds = jax.grad(lambda t: sde.marginal_coeffs(t)[1])(0.3)
    h = 1e-6
    fd = (_ref_coeffs("vpsde", 0.3 + h)[3] - _ref_coeffs("vpsde", 0.3 - h)[3]) / (2 * h)
    np.testing.assert_allclose(float(ds), fd, rtol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="valid choices"):
        get_sde("cosine")
    with pytest.raises(ValueError, match=r"t must have shape"):
        VPSDE().sde(jnp.ones((4, 2)), jnp.ones((3,)))


def test_batch_mul():
    x = jnp.ones((2, 3, 4))
    np.testing.assert_allclose(batch_mul(jnp.array([2.0, 3.0]), x)[:, 0, 0], [2.0, 3.0])


# --- the declared interface --------------------------------------------------------------------
@struct.dataclass
class _LinearSigmaSDE(AbstractSDE):
    """A new SDE defined only here: dx = sqrt(2t) dW, a_t = 1, s_t = t (the EDM / VE-linear path).
    Nothing outside this class is edited, yet the library's losses and wiring accept it."""

    N: int = struct.field(pytree_node=False, default=100)
    name = "linear_sigma"
    prior_std = 1.0
    sampling_eps = 1e-3

    def marginal_coeffs(self, t):
        return jnp.ones_like(t), t

    def drift_coeff(self, t):
        return jnp.zeros_like(t)

    def diffusion_coeff(self, t):
        return jnp.sqrt(2 * t)

    def discretize(self, x, t):
        return self.euler_maruyama_discretize(x, t)

    def ancestral_step(self, x, t, score, key):
        return self.posterior_ancestral_step(x, t, score, key)

    def langevin_alpha(self, t):
        return jnp.ones_like(t)

    def network_labels(self, t, continuous):
        return t

    def output_to_score(self, out, t, labels, continuous):
        return out

    def discrete_objective(self):
        raise ValueError("no discrete chain")

    def discrete_perturbation(self, labels, x0, noise):
        raise ValueError("no discrete chain")


def test_subclass_missing_a_method_fails_at_instantiation():
    @struct.dataclass
    class Incomplete(AbstractSDE):
        N: int = struct.field(pytree_node=False, default=10)
        name = "incomplete"
        prior_std = 1.0
        sampling_eps = 1e-3

        def marginal_coeffs(self, t):
            return jnp.ones_like(t), t

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()
    declared = set(AbstractSDE.__abstractmethods__)
    assert {"marginal_coeffs", "drift_coeff", "diffusion_coeff", "discretize", "ancestral_step",
            "langevin_alpha", "network_labels", "output_to_score", "discrete_objective",
            "discrete_perturbation", "prior_std", "sampling_eps", "N", "name"} == declared
    for cls in SDES.values():
        assert issubclass(cls, AbstractSDE) and not cls.__abstractmethods__
    _LinearSigmaSDE()  # complete: instantiates


def test_final_siblings_and_subvp_has_no_discrete_chain():
    for a in SDES.values():
        for b in SDES.values():
            assert a is b or not issubclass(a, b)
    sub = subVPSDE()
    for attr in ("discrete_betas", "alphas", "alphas_cumprod", "sqrt_alphas_cumprod",
                 "sqrt_1m_alphas_cumprod"):
        assert not hasattr(sub, attr), attr
    with pytest.raises(ValueError, match="sub-VP has no discrete"):
        sub.discrete_objective()
    with pytest.raises(ValueError, match="sub-VP has no discrete"):
        sub.discrete_perturbation(jnp.zeros((2,), jnp.int32), jnp.ones((2, 3)), jnp.ones((2, 3)))
    assert (VPSDE().discrete_objective(), VESDE().discrete_objective()) == ("ddpm", "smld")
    # sub-VP shares VP's schedule and drift, not its marginal std
    t = jnp.array([0.2, 0.6])
    np.testing.assert_allclose(sub.drift_coeff(t), VPSDE().drift_coeff(t))
    assert sub.prior_std == VPSDE().prior_std and sub.sampling_eps == VPSDE().sampling_eps


@pytest.mark.parametrize("name", list(SDES))
def test_perturb_and_discrete_perturbation_closed_form(name, x64):
    sde = get_sde(name, N=100)
    rng = np.random.default_rng(5)
    x0, z = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    t = np.array([0.05, 0.5, 0.9])
    _, _, a, s = _ref_coeffs(name, t)
    np.testing.assert_allclose(sde.perturb(jnp.asarray(x0), jnp.asarray(t), jnp.asarray(z)),
                               a[:, None] * x0 + s[:, None] * z, rtol=1e-12)
    np.testing.assert_allclose(gaussian_perturb(jnp.asarray(a), jnp.asarray(s), jnp.asarray(x0), jnp.asarray(z)),
                               a[:, None] * x0 + s[:, None] * z, rtol=1e-12)
    if name == "subvpsde":
        return
    labels = jnp.array([0, 40, 99])
    xi, target, w = sde.discrete_perturbation(labels, jnp.asarray(x0), jnp.asarray(z))
    li = np.asarray(labels)
    assert np.all(np.isfinite(np.asarray(xi)))
    if name == "vpsde":
        ac = np.cumprod(1 - np.linspace(0.1 / 100, 20 / 100, 100))[li]
        np.testing.assert_allclose(xi, np.sqrt(ac)[:, None] * x0 + np.sqrt(1 - ac)[:, None] * z, rtol=1e-12)
        np.testing.assert_allclose(target, z)
        np.testing.assert_allclose(w, 1.0)
    else:
        sig = np.exp(np.linspace(np.log(0.01), np.log(50), 100))[::-1][li]
        np.testing.assert_allclose(xi, x0 + sig[:, None] * z, rtol=1e-12)
        np.testing.assert_allclose(target, -z / sig[:, None], rtol=1e-12)
        np.testing.assert_allclose(w, sig**2, rtol=1e-12)


def test_new_sde_is_one_class(x64):
    """A class defined in a test file works with the moment ODEs, the losses and the wiring."""
    from score_jax import losses
    from score_jax import score as score_lib
    from score_jax.toy import gaussian

    sde = _LinearSigmaSDE()
    one = jnp.ones((1, 1))

    def rhs(t, y):
        drift, g = sde.sde(one, jnp.array([t]))
        return [float(drift[0, 0]) * y[0], 2 * float(drift[0, 0]) * y[1] + float(g[0]) ** 2]

    sol = solve_ivp(rhs, (0.0, 1.0), [1.0, 0.0], t_eval=TS, rtol=1e-11, atol=1e-13, method="DOP853")
    a, s = sde.marginal_coeffs(jnp.asarray(TS))
    np.testing.assert_allclose(np.asarray(s) ** 2, sol.y[1], rtol=1e-6, atol=1e-12)
    g = gaussian(jnp.zeros((2,)), 0.5)
    x0, _ = g.sample(jax.random.key(0), 8, jnp.float64)
    loss, aux = losses.dsm_loss(jax.random.key(1), g.score_fn(sde), sde, x0, reduce_mean=True)
    assert np.isfinite(float(loss))
    t = jnp.array([0.3, 0.7])
    np.testing.assert_allclose(score_lib.time_labels(sde, t, True), t)
    with pytest.raises(ValueError, match="no discrete chain"):
        losses.get_loss_fn(sde, None, continuous=False)


def test_sde_parameters():
    assert sde_parameters("vpsde") == ("beta_min", "beta_max")
    assert sde_parameters("subvpsde") == ("beta_min", "beta_max")
    assert sde_parameters("VESDE") == ("sigma_min", "sigma_max")
    with pytest.raises(ValueError, match="valid choices"):
        sde_parameters("cosine")


def test_core_only_sde_needs_no_discrete_chain_or_reference_wiring():
    """The SDE interface is a thin core (constants, marginal, drift, diffusion); the discrete
    chain and the reference network wiring are optional capabilities (issue 21 item 6)."""
    from score_jax.likelihood import log_likelihood
    from score_jax.sde import DiscreteChain, ReferenceWiring, SDECore

    @struct.dataclass
    class Core(SDECore):  # dx = sqrt(2t) dW: a_t = 1, s_t = t
        N: int = struct.field(pytree_node=False, default=100)
        name = "core"
        prior_std = math.sqrt(2.0)  # p_T = N(0, 1 + T^2) exactly for N(0, 1) data
        sampling_eps = 1e-3

        def marginal_coeffs(self, t):
            return jnp.ones_like(t), t

        def drift_coeff(self, t):
            return jnp.zeros_like(t)

        def diffusion_coeff(self, t):
            return jnp.sqrt(2 * t)

    sde = Core()
    assert set(SDECore.__abstractmethods__) == {"marginal_coeffs", "drift_coeff",
                                                "diffusion_coeff", "prior_std", "sampling_eps",
                                                "N", "name"}
    assert not isinstance(sde, DiscreteChain | ReferenceWiring)
    assert all(isinstance(c(), SDECore | DiscreteChain | ReferenceWiring) for c in SDES.values())
    # data N(0, 1): p_t = N(0, 1 + t^2), score -x / (1 + t^2); the probability-flow ODE keeps
    # the Gaussian, so log p_eps(x) is the closed form.
    x = jnp.array([[0.3, -1.2], [2.0, 0.5]])
    eps = 1e-3
    score_fn = lambda x, t: -x / (1 + t[:, None] ** 2)  # noqa: E731
    logp, _, _ = log_likelihood(jax.random.key(0), sde, score_fn, x, hutchinson="exact", eps=eps,
                                rtol=1e-7, atol=1e-7)
    var = 1 + eps**2
    want = -0.5 * jnp.sum(x**2, -1) / var - jnp.log(2 * jnp.pi * var)
    np.testing.assert_allclose(logp, want, rtol=1e-4, atol=1e-4)
