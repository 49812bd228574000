"""Flow matching through the training system: configs, train_and_evaluate, sampling from the
checkpoint, bits/dim; and the fast samplers' options mapped from ``config.sampling``."""
import inspect
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import ROOT, TinyNet

from score_jax import config as config_lib
from score_jax import flow, sample_lib, sampling, toy, train_lib
from score_jax import sde as sde_lib

FLOW_CONFIG = os.path.join("configs", "flow", "digits_flow.py")


def _load(arg=None):
    import importlib.util

    spec = importlib.util.spec_from_file_location("cfg_digits_flow", os.path.join(ROOT, FLOW_CONFIG))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg)


def _tiny_flow_config():
    """The smoke flow config at 8 x 8 with two steps, sampling at the last one."""
    config = _load("smoke")
    config.data.image_size = 8
    config.model.attn_resolutions = (4,)
    t = config.training
    t.n_iters = 2
    t.snapshot_freq = t.snapshot_freq_for_preemption = t.eval_freq = 2
    t.log_freq = 1
    config.sampling.num_samples = 8
    return config


def test_flow_config_and_smoke_variant_load_and_validate():
    full, smoke = _load(), _load("smoke")
    for c in (full, smoke):
        config_lib.validate_config(c, num_devices=8)
        assert c.training.objective == "flow_matching" and c.training.flow_path == "condot"
        assert c.sampling.method == "flow" and c.sampling.solver == "heun"
        assert config_lib.sampling_options_from_config(c.sampling)[0] == "flow"
    assert full.sampling.num_steps == 25
    assert smoke.data.dataset == "DIGITS" and smoke.training.n_iters < full.training.n_iters
    # the DSM recipe of the digits default is the score objective; the default itself is EDM
    from configs.default_digits import get_config
    assert get_config("dsm").training.objective == "score"
    assert get_config().training.objective == "edm"


@pytest.mark.parametrize("section,key,value,match", [
    ("training", "objective", "dsm", r"training.objective='dsm'.*\['score', 'flow_matching', 'edm', 'autoencoder', 'distill', 'text_score'\]"),
    ("training", "flow_path", "linear", r"training.flow_path='linear'.*\['condot', 'sde'\]"),
    ("training", "flow_t_max", 1.5, r"flow_t_max=1.5 must be in \(0, 1\]"),
    ("sampling", "method", "pc", r"cannot sample a flow-matching model"),
    ("sampling", "solver", "rk4", r"sampling.solver='rk4' unknown for method 'flow'"),
])
def test_bad_flow_config_raises_before_compilation(monkeypatch, tmp_path, section, key, value,
                                                   match):
    config = _tiny_flow_config()
    config[section][key] = value
    monkeypatch.setattr(jax, "jit", lambda *a, **k: pytest.fail("compiled before validation"))
    with pytest.raises(ValueError, match=match):
        config_lib.validate_config(config, num_devices=8)
    with pytest.raises(ValueError, match=match):
        train_lib.train_and_evaluate(config, str(tmp_path / "wd"))
    assert not os.path.exists(tmp_path / "wd")


def test_flow_sampler_needs_flow_objective():
    from configs.default_digits import get_config

    config = get_config("dsm_smoke")
    config.sampling.method = "flow"
    with pytest.raises(ValueError, match=r"needs training.objective='flow_matching'"):
        config_lib.validate_config(config, num_devices=8)
    with pytest.raises(ValueError, match=r"'score', 'flow_matching'"):
        config.training.objective = "velocity"
        config_lib.loss_fn_from_config(config, config_lib.sde_from_config(config), None, train=True)


def test_loss_fn_from_config_is_flow_matching_on_scaled_data():
    """The flow objective of the config equals flow.get_flow_loss_fn on 2x - 1 scaled data."""
    config = _tiny_flow_config()
    model = TinyNet()
    sde = config_lib.sde_from_config(config)
    x = jax.random.uniform(jax.random.key(1), (4, 8, 8, 1))
    variables = jax.jit(lambda k: model.init(k, x, jnp.ones((4,)), train=False))(
        jax.random.key(0))
    key = jax.random.key(2)
    got, _ = jax.jit(config_lib.loss_fn_from_config(config, sde, model, train=False))(
        variables, x, key)
    want, _ = jax.jit(flow.get_flow_loss_fn(model, flow.CondOTPath(), train=False,
                                            reduce_mean=True))(variables, 2 * x - 1, key)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    config.training.flow_path = "sde"
    assert isinstance(config_lib.flow_path_from_config(config, sde), flow.SDEPath)


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_flow_train_sample_and_bpd_from_checkpoint(tmp_path, monkeypatch):
    """train_and_evaluate (with snapshot sampling), then sample.py's sample and bits/dim paths,
    on the smoke flow config; the tiny network stands in for DDPM++ to keep this in seconds."""
    config = _tiny_flow_config()
    monkeypatch.setattr(config_lib, "model_from_config", lambda c: TinyNet())
    wd = str(tmp_path / "flow")
    losses = []
    state = train_lib.train_and_evaluate(config, wd,
                                         callbacks=[lambda s, m: losses.append(float(m["loss"]))])
    assert int(state.step) == 2 and len(losses) == 2 and np.isfinite(losses).all()
    assert os.path.isdir(os.path.join(wd, "checkpoints", "2"))
    snap = np.load(os.path.join(wd, "samples", "iter_2", "samples.npz"))["samples"]
    assert snap.shape == (8, 8, 8, 1)

    out = sample_lib.sample_from_checkpoint(config, workdir=wd, num_samples=8)
    images = out["images"]
    assert images.shape == (8, 8, 8, 1) and np.isfinite(images).all()
    assert images.min() >= 0.0 and images.max() <= 1.0
    assert int(out["nfe"]) == 2 * config.sampling.num_steps  # heun: 2 evaluations a step
    assert os.path.exists(out["png"])

    bpd = sample_lib.bpd_from_checkpoint(config, workdir=wd, output_dir=str(tmp_path / "bpd"))
    assert np.isfinite(bpd["bpd"]) and bpd["bpd"] > 0 and bpd["num_examples"] > 0

    # evaluate.py's bits/dim of a flow model (issue #9: raised "not supported yet")
    from score_jax.evaluation import workdir as wd_lib

    config.eval.enable_loss = config.eval.enable_sampling = False
    config.eval.enable_bpd = True
    out = wd_lib.evaluate_workdir(config, wd, model=TinyNet(), begin_step=2, end_step=2,
                                  progress=False)
    got = out["reports"][2]["bpd"]
    assert np.isfinite(got) and got > 0


def _digits_sampling(method, **kw):
    from configs.default_digits import get_config

    s = get_config("dsm").sampling
    s.method = method
    for k, v in kw.items():
        s[k] = v
    return s


def test_fast_sampler_defaults_left_to_the_sampler():
    """Unset (None) options are not passed: the sampler's own defaults apply."""
    for method in ("ddim", "dpm_solver", "heun"):
        s = _digits_sampling(method, num_steps=20)
        assert config_lib.sampling_options_from_config(s) == (
            method, {"num_steps": 20, "denoise": True})


@pytest.mark.parametrize("method,overrides,want", [
    ("ddim", dict(num_steps=6, eta=0.5, schedule="logSNR", eps=1e-3),
     dict(num_steps=6, eta=0.5, schedule="logSNR", eps=1e-3, denoise=True)),
    ("dpm_solver", dict(num_steps=5, order=3, solver_type="heun", lower_order_final=False,
                        noise_removal=False),
     dict(num_steps=5, order=3, solver_type="heun", lower_order_final=False, denoise=False)),
    ("heun", dict(num_steps=4, rho=5.0, s_churn=1.0, s_noise=1.003, s_tmin=0.05, s_tmax=50.0),
     dict(num_steps=4, rho=5.0, s_churn=1.0, s_noise=1.003, s_tmin=0.05, s_tmax=50.0,
          denoise=True)),
])
def test_fast_sampler_options_from_config_are_accepted(method, overrides, want):
    s = _digits_sampling(method, **overrides)
    got_method, opts = config_lib.sampling_options_from_config(s)
    assert got_method == method and opts == want
    accepted = set(inspect.signature(sampling.METHODS[method]).parameters)
    assert set(opts) <= accepted
    # the options run: the exact score of a 2-D Gaussian on the VP SDE
    sde = sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000)
    mix = toy.gaussian(jnp.asarray([0.5, -0.5]), 0.2)
    x, nfe = sampling.sample(jax.random.key(0), sde, mix.score_fn(sde), (16, 2), method=method,
                             **opts)
    assert x.shape == (16, 2) and np.isfinite(np.asarray(x)).all() and int(nfe) > 0


@pytest.mark.parametrize("key,value,match", [
    ("num_steps", None, r"sampling method 'dpm_solver' needs option 'num_steps'"),
    ("schedule", "cosine", r"time schedule 'cosine'; valid choices: \['logSNR'"),
    ("order", 4, r"order must be 1, 2 or 3; got 4"),
    ("solver_type", "rk4", r"solver_type 'rk4'; valid choices: \['midpoint', 'heun'\]"),
])
def test_bad_fast_sampler_config_raises(key, value, match):
    from configs.default_digits import get_config

    config = get_config("dsm_smoke")
    config.sampling.method = "dpm_solver"
    config.sampling[key] = value
    with pytest.raises(ValueError, match=match):
        config_lib.validate_config(config, num_devices=8)
