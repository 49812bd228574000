"""One minimum-step rule for every sampler (``sampling/options.py``) and EDM churn noise that is
exactly zero where no churn applies (issue 26, items 2 and 7)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sampling, toy
from score_jax.sampling import options
from score_jax.sde import VESDE, VPSDE

# samplers of a score (the learned-variance sampler needs the raw network output: test_ddpm_learned)
SCORE_METHODS = [m for m in sampling.METHODS if m not in sampling.MODEL_OUTPUT_METHODS]

G = toy.gaussian(jnp.asarray([0.7, -0.7]), 0.3)
SDES = {"vp": VPSDE(beta_max=4.0, N=6), "ve": VESDE(N=6)}


def _opts(method, n, denoise):
    if method == "consistency":  # no denoise option: every evaluation returns x0
        return {"num_steps": n}
    o = {"num_steps": n, "denoise": denoise}
    if method == "pc":
        o.update(corrector="none", predictor="euler_maruyama")  # no discrete chain to re-discretise
    return o


@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("method", SCORE_METHODS)
def test_min_num_steps_one_rule(method, denoise):
    """num_steps below ``min_num_steps(denoise)`` (2 with denoise, 1 without) is refused by
    ``sampling.sample`` and by the sampler function itself, naming the minimum; the minimum runs
    and moves the prior sample. pc with num_steps=1 and denoise returned the untouched prior."""
    # a sampler without a denoise option counts as denoise=False (the consistency sampler)
    has_denoise = "denoise" in sampling.method_options(method)
    lo = options.min_num_steps(denoise and has_denoise)
    assert lo == (2 if denoise and has_denoise else 1)
    sde = SDES["vp"]
    sf = G.score_fn(sde)
    for bad in (lo - 1, 0, 1.5, True):
        if isinstance(bad, int) and not isinstance(bad, bool) and bad >= lo:
            continue
        with pytest.raises(ValueError, match=rf"num_steps must be an int >= {lo} "):
            sampling.sample(jax.random.key(0), sde, sf, (4, 2), method, **_opts(method, bad, denoise))
        with pytest.raises(ValueError, match=rf"num_steps must be an int >= {lo} "):
            sampling.METHODS[method](jax.random.key(0), sde, sf, jnp.zeros((4, 2)),
                                     **_opts(method, bad, denoise))
    x_T = sde.prior_sampling(jax.random.key(1), (256, 2))
    x, _ = sampling.sample(jax.random.key(0), sde, sf, (256, 2), method, x_init=x_T,
                           **_opts(method, lo, denoise))
    assert bool(jnp.all(jnp.isfinite(x)))
    assert float(jnp.max(jnp.abs(x - x_T))) > 0.1


def test_heun_churn_noise_is_exactly_zero_outside_the_churn_range():
    """s_churn > 0 with [s_tmin, s_tmax] holding no grid sigma gives gamma = 0 at every step: the
    result must equal the deterministic sampler's bit for bit (sqrt(sigma_hat^2 - sigma^2) left a
    rounding residue of the noise before)."""
    sde = VPSDE()
    sf = G.score_fn(sde)
    x_T = sde.prior_sampling(jax.random.key(1), (512, 2))
    x0, _ = sampling.sample(jax.random.key(0), sde, sf, (512, 2), "heun", x_init=x_T, num_steps=8)
    x1, _ = sampling.sample(jax.random.key(0), sde, sf, (512, 2), "heun", x_init=x_T, num_steps=8,
                            s_churn=40.0, s_tmin=1e4, s_tmax=2e4)
    np.testing.assert_array_equal(np.asarray(x1), np.asarray(x0))


def test_heun_churn_std_formula(x64):
    """Where churn applies, the added std is sqrt(sigma_hat^2 - sigma^2) = sigma sqrt((1 + gamma)^2 - 1)
    (EDM Algorithm 2): the one-step change with an exact denoiser D = 0 (data at the origin, tiny
    data std) has that std."""
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    zero = toy.gaussian(jnp.zeros(1), 1e-6)
    gamma = min(40.0 / 1, np.sqrt(2) - 1)
    # One step without denoise: churn at sigma_0 = 50, then y_1 = y_hat sigma_1 / sigma_hat for
    # D = 0 (Euler and Heun agree on this linear ODE).
    # float64: the step from sigma_hat = 70.7 to 0.01 cancels 4 digits, which Heun's correction
    # amplifies by sigma_hat / sigma_1 (EDM's generate.py samples in float64 too).
    x_T = jnp.zeros((20000, 1), jnp.float64)
    x, _ = sampling.sample(jax.random.key(0), sde, zero.score_fn(sde), x_T.shape, "heun", x_init=x_T,
                           dtype=jnp.float64, num_steps=1, denoise=False, s_churn=40.0, schedule="edm")
    s0 = 50.0
    s_hat = s0 * (1 + gamma)
    t = sampling.get_timesteps(sde, 2, sde.sampling_eps, "edm", dtype=jnp.float64)
    s1 = float(sde.marginal_coeffs(t)[1][1])
    expect = np.sqrt(s_hat**2 - s0**2) * s1 / s_hat
    np.testing.assert_allclose(float(jnp.std(x)), expect, rtol=0.03)


def test_dpm_solver_lower_order_final_counts_the_jump(x64):
    """With denoise, ``lower_order_final`` counts the final jump as the lowered step (diffusers):
    2M at <= 10 steps is then not lowered (equal to lower_order_final=False), and much closer to
    the exact ODE solution on a narrow Gaussian than lowering the last solver step too
    ("solver_steps": the convention before, 0.87 std ratio at 10 NFE vs 0.97)."""
    sde = VPSDE()
    sd = 0.05
    g = toy.gaussian(jnp.zeros((16,)), sd)
    x_T = sde.prior_sampling(jax.random.key(2), (2000, 16), jnp.float64)
    run = lambda **o: sampling.sample(jax.random.key(0), sde, g.score_fn(sde), x_T.shape, "dpm_solver",
                                      x_init=x_T, dtype=jnp.float64, num_steps=10, eps=1e-3, **o)[0]
    a, s = sde.marginal_coeffs(jnp.asarray(1e-3, jnp.float64))
    a_T, s_T = sde.marginal_coeffs(jnp.asarray(1.0, jnp.float64))
    std_eps, std_T = jnp.sqrt(a**2 * sd**2 + s**2), jnp.sqrt(a_T**2 * sd**2 + s_T**2)
    exact = a * sd**2 / std_eps**2 * (std_eps / std_T) * x_T  # affine PF-ODE map, then the jump
    default, off = run(), run(lower_order_final=False)
    np.testing.assert_array_equal(np.asarray(default), np.asarray(off))
    err = lambda x: float(jnp.sqrt(jnp.mean((x - exact) ** 2)) / jnp.std(exact))
    assert err(default) < 0.05 < 0.1 < err(run(lower_order_count="solver_steps"))
