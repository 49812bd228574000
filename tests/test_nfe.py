"""The returned NFE equals the number of score evaluations actually executed, for every method,
solver, SDE and tolerance (counted by a jax.debug.callback inside the score function)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import flow, ode, sampling, toy
from score_jax.guidance import inpainting
from score_jax.sde import VESDE, VPSDE, subVPSDE

# beta_max = 4: PC's chain re-discretised with 5 steps stays valid (beta_i <= 0.8; VP's default
# beta_max = 20 needs >= 21 steps, refused by validation)
SDES = {"vp": VPSDE(beta_max=4.0, N=6), "subvp": subVPSDE(beta_max=4.0, N=6), "ve": VESDE(N=6)}
MIX = toy.ring_mixture(4, radius=1.0, std=0.3)


def _counting(fn):
    calls = []

    def counted(x, t):
        jax.debug.callback(lambda: calls.append(1))
        return fn(x, t)

    return counted, calls


def _check(run):
    """``run(score_wrapper) -> (x, nfe)``; asserts nfe == executed score evaluations."""
    def wrap(fn):
        counted, calls = _counting(fn)
        wrap.calls = calls
        return counted

    x, nfe = run(wrap)
    jax.block_until_ready(x)
    jax.effects_barrier()
    assert isinstance(nfe, int)
    assert nfe == len(wrap.calls), (nfe, len(wrap.calls))
    return nfe


def _sample_case(sde_name, method, opts):
    sde = SDES[sde_name]
    return _check(lambda w: sampling.sample(jax.random.key(0), sde, w(MIX.score_fn(sde)), (4, 2),
                                            method, **opts))


ADAPTIVE = [s for s in ode.ODE_SOLVERS if s not in ode.FIXED_STEP_ONLY]
TOLS = [1e-3, 1e-4, 1e-5, 1e-6]


def _all_cases():
    cases = []
    for p, c, denoise in itertools.product(sampling.PREDICTORS, sampling.CORRECTORS,
                                           (True, False)):
        cases.append(("pc", dict(predictor=p, corrector=c, n_steps=2, num_steps=5,
                                 denoise=denoise)))
    for s in ode.ODE_SOLVERS:
        cases.append(("ode", dict(solver=s, num_steps=5)))
        cases.append(("ode", dict(solver=s, num_steps=5, denoise=False)))
    for s, tol in itertools.product(ADAPTIVE, TOLS):
        cases.append(("ode", dict(solver=s, rtol=tol, atol=tol)))
    for s, denoise in itertools.product(sampling.SDE_SOLVERS, (True, False)):
        cases.append(("sde", dict(solver=s, num_steps=5, denoise=denoise)))
    for denoise in (True, False):
        cases.append(("ddim", dict(num_steps=5, eta=0.5, denoise=denoise)))
        for order in (1, 2, 3):
            cases.append(("dpm_solver", dict(num_steps=5, order=order, denoise=denoise)))
        cases.append(("heun", dict(num_steps=5, denoise=denoise)))
        cases.append(("heun", dict(num_steps=5, s_churn=5.0, denoise=denoise)))
    return cases


ALL = [(n, m, o) for n in SDES for m, o in _all_cases()]
# A representative subset for the default run: every method and solver family once.
DEFAULT = [
    ("vp", "pc", dict(predictor="reverse_diffusion", corrector="langevin", n_steps=2, num_steps=5)),
    ("ve", "pc", dict(predictor="none", corrector="ald", num_steps=5)),
    ("subvp", "pc", dict(predictor="ancestral_sampling", corrector="none", num_steps=5,
                         denoise=False)),
    ("vp", "ode", dict(solver="tsit5", rtol=1e-6, atol=1e-6)),
    ("ve", "ode", dict(solver="dopri8", rtol=1e-3, atol=1e-3)),
    ("subvp", "ode", dict(solver="heun", num_steps=5)),
    ("vp", "sde", dict(solver="sea", num_steps=5)),
    ("ve", "dpm_solver", dict(num_steps=5, order=3)),
    ("vp", "heun", dict(num_steps=5, s_churn=5.0)),
]


def _id(case):
    n, m, o = case
    return f"{n}-{m}-" + "-".join(f"{k}={v}" for k, v in o.items())


@pytest.mark.parametrize("case", DEFAULT, ids=[_id(c) for c in DEFAULT])
def test_reported_nfe_equals_counted(case):
    _sample_case(*case)


@pytest.mark.slow
@pytest.mark.parametrize("case", ALL, ids=[_id(c) for c in ALL])
def test_reported_nfe_equals_counted_sweep(case):
    _sample_case(*case)


@pytest.mark.parametrize("sampler,opts", [
    ("ode", dict(solver="tsit5", num_steps=5)), ("ode", dict(solver="heun", num_steps=5)),
    ("pc", dict(num_steps=5, corrector="langevin")), ("heun", dict(num_steps=5)),
])
def test_inpainting_nfe_equals_counted(sampler, opts):
    """With the replacement hook the ODE re-evaluates FSAL stages after every step."""
    sde = VPSDE(beta_max=4.0)
    data = jnp.ones((4, 2))
    _check(lambda w: inpainting.inpaint(jax.random.key(0), sde, w(MIX.score_fn(sde)), data,
                                        jnp.asarray([1.0, 0.0]), sampler=sampler, **opts))


@pytest.mark.parametrize("solver,num_steps,tol", [
    ("euler", 4, None), ("heun", 4, None), ("tsit5", None, 1e-6), ("bosh3", None, 1e-4),
])
def test_flow_sample_nfe_equals_counted(solver, num_steps, tol):
    path = flow.CondOTPath()
    u = flow.MixtureVelocity(MIX, path)
    kw = {} if tol is None else dict(rtol=tol, atol=tol)
    _check(lambda w: flow.flow_sample(jax.random.key(0), w(u), (4, 2), solver=solver,
                                      num_steps=num_steps, **kw))


@pytest.mark.parametrize("solver", ADAPTIVE)
def test_adaptive_nfe_counts_a_rejected_first_step(solver):
    """A stiff start rejects the first step (dt0 = (t1 - t0) / 100 with dy/dt = -3000 y): FSAL solvers
    must not re-evaluate their first stage uncounted (diffrax keeps the "first step" flag on a
    rejection; bosh3 on VE counted 235 for 236 evaluations)."""
    import diffrax as dfx

    calls = []

    def v(t, y):
        jax.debug.callback(lambda: calls.append(1))
        return -3000.0 * y

    y0 = jnp.ones((3,))
    # The premise: diffrax itself rejects the first step here (its first accepted step is shorter).
    sol = dfx.diffeqsolve(dfx.ODETerm(lambda t, y, a: -3000.0 * y), ode.get_ode_solver(solver), 0.0, 0.1,
                          dt0=1e-3, y0=y0, stepsize_controller=dfx.PIDController(rtol=1e-4, atol=1e-4),
                          saveat=dfx.SaveAt(steps=True), max_steps=4096)
    assert int(sol.stats["num_rejected_steps"]) >= 1
    assert float(sol.ts[0]) < 0.99e-3
    y1, nfe = jax.jit(lambda y: ode.solve_ode(v, y, 0.0, 0.1, solver=solver, rtol=1e-4, atol=1e-4))(y0)
    jax.block_until_ready(y1)
    jax.effects_barrier()
    assert int(nfe) == len(calls), (int(nfe), len(calls))
    np.testing.assert_allclose(y1, 0.0, atol=1e-3)
