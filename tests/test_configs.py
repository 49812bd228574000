"""Every config file loads, validates, and builds its network shape-only (jax.eval_shape)."""
import glob
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_train_helpers import ROOT

from score_jax import config as config_lib
from score_jax import train_step

CONFIG_FILES = sorted(
    os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"),
                                                recursive=True)
    if not os.path.basename(p).startswith("__") and os.path.basename(p) not in ("common.py",
                                                                                "models.py"))

# Every configuration of the reference (score_sde configs/) must be present.
REFERENCE = [
    "ve/cifar10_ncsnpp", "ve/cifar10_ncsnpp_continuous", "ve/cifar10_ncsnpp_deep_continuous",
    "ve/cifar10_ddpm", "ve/celeba_ncsnpp", "ve/bedroom_ncsnpp_continuous",
    "ve/church_ncsnpp_continuous", "ve/ffhq_256_ncsnpp_continuous",
    "ve/celebahq_256_ncsnpp_continuous", "ve/celebahq_ncsnpp_continuous",
    "ve/ffhq_ncsnpp_continuous", "ve/ncsn/cifar10", "ve/ncsn/cifar10_124", "ve/ncsn/cifar10_1245",
    "ve/ncsn/cifar10_5", "ve/ncsn/celeba", "ve/ncsn/celeba_124", "ve/ncsn/celeba_1245",
    "ve/ncsn/celeba_5", "ve/ncsnv2/cifar10", "ve/ncsnv2/celeba", "ve/ncsnv2/bedroom",
    "vp/cifar10_ddpmpp", "vp/cifar10_ddpmpp_continuous", "vp/cifar10_ddpmpp_deep_continuous",
    "vp/cifar10_ncsnpp", "vp/cifar10_ncsnpp_continuous", "vp/cifar10_ncsnpp_deep_continuous",
    "vp/ddpm/cifar10", "vp/ddpm/cifar10_continuous", "vp/ddpm/celebahq", "vp/ddpm/church",
    "vp/ddpm/bedroom", "subvp/cifar10_ddpm_continuous", "subvp/cifar10_ddpmpp_continuous",
    "subvp/cifar10_ddpmpp_deep_continuous", "subvp/cifar10_ncsnpp_continuous",
    "subvp/cifar10_ncsnpp_deep_continuous",
]


def load(path, arg=None):
    spec = importlib.util.spec_from_file_location("cfg_" + path.replace("/", "_")[:-3],
                                                  os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg is not None else mod.get_config()


def test_all_reference_configs_present():
    have = {p[len("configs/"):-3] for p in CONFIG_FILES}
    missing = [r for r in REFERENCE if r not in have]
    assert not missing, missing
    assert len(CONFIG_FILES) >= len(REFERENCE) + 4  # + default_{cifar10,celeba,lsun,digits}


_SEEN: dict = {}
# configs/released/: sampling-only configs of converted checkpoints (no dataset, no training
# smoke variant); tested end to end in test_released.py
_WITH_GET_CONFIG = [p for p in CONFIG_FILES if "get_config" in open(os.path.join(ROOT, p)).read()
                    and not p.startswith("configs/released/")]


def _build_shape_only(cfg):
    if cfg.training.get("objective") == "autoencoder":  # AutoencoderKL: init(key, x), no labels
        return 1001
    model = config_lib.model_from_config(cfg)
    shape = (cfg.data.image_size, cfg.data.image_size, cfg.data.num_channels)
    key = (repr(model), shape)
    if key not in _SEEN:  # many configs share a network: trace each one once
        tx, _ = config_lib.optimizer_from_config(cfg)
        state = jax.eval_shape(lambda k: train_step.init_state(k, model, tx, shape),
                               jax.random.key(0))
        out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2,) + shape),
                                                   jnp.ones((2,)), train=False), state.params)
        n = sum(int(np.prod(x.shape)) for x in jax.tree_util.tree_leaves(state.params))
        _SEEN[key] = (out.shape, n)
    out_shape, n_params = _SEEN[key]
    assert out_shape == (2,) + shape
    assert n_params > 1000
    return n_params


@pytest.mark.parametrize("path", _WITH_GET_CONFIG)
def test_config_loads_validates_and_smoke_builds(path):
    """Full and smoke variants load and validate; the smoke network builds shape-only."""
    config = load(path)
    config_lib.validate_config(config, num_devices=8)
    smoke = load(path, "smoke")
    config_lib.validate_config(smoke, num_devices=8)
    assert smoke.training.n_iters <= 10 and smoke.data.dataset in ("DIGITS", "DIGITS_TEXT")
    assert smoke.model.name == config.model.name and smoke.training.sde == config.training.sde
    _build_shape_only(smoke)


@pytest.mark.slow
@pytest.mark.parametrize("path", _WITH_GET_CONFIG)
def test_config_full_model_builds_shape_only(path):
    """The published network of every config builds shape-only (slow: ~3 min on 2 cores)."""
    _build_shape_only(load(path))


def test_cifar10_ddpmpp_full_model_builds_shape_only():
    n = _build_shape_only(load("configs/vp/cifar10_ddpmpp_continuous.py"))
    assert 65e6 > n > 55e6  # DDPM++ cont. (VP) on CIFAR-10: 61.8M parameters


def test_reference_hyperparameters():
    c = load("configs/ve/cifar10_ncsnpp_continuous.py")
    assert (c.training.batch_size, c.training.n_iters, c.optim.lr, c.optim.warmup,
            c.optim.grad_clip, c.model.ema_rate, c.sampling.snr) == (128, 1300001, 2e-4, 5000, 1.0,
                                                                     0.999, 0.16)
    c = load("configs/vp/cifar10_ddpmpp_deep_continuous.py")
    assert (c.training.n_iters, c.model.num_res_blocks, c.model.ema_rate, c.data.centered,
            c.training.reduce_mean) == (950001, 8, 0.9999, True, True)
    c = load("configs/ve/ffhq_ncsnpp_continuous.py")
    assert (c.model.sigma_max, c.model.num_scales, c.data.image_size, c.model.nf) == (
        1348.0, 2000, 1024, 16)
    c = load("configs/ve/ncsnv2/cifar10.py")
    assert (c.model.name, c.model.num_scales, c.optim.lr, c.optim.grad_clip,
            c.sampling.corrector) == ("ncsnv2_64", 232, 1e-4, -1.0, "ald")


def test_unknown_variant():
    with pytest.raises(ValueError, match=r"unknown config variant 'tiny'; valid choices"):
        load("configs/vp/cifar10_ddpmpp_continuous.py", "tiny")


# ----------------------------------------------------------------------------------------------
# The config boundary (issues #9 and #11)
# ----------------------------------------------------------------------------------------------
def test_unknown_key_rejected_without_the_repo_configs_folder(tmp_path):
    """Issue #9: installed (no configs/ importable) validation accepted unknown keys."""
    import subprocess
    import sys

    pkg = tmp_path / "site"  # the package alone, as installed: no configs/ beside it
    pkg.mkdir()
    os.symlink(os.path.join(ROOT, "score_jax"), pkg / "score_jax")
    code = ("import sys; assert 'configs' not in sys.modules\n"
            "import score_jax.config as c, score_jax.train_step, score_jax.preemption\n"
            "import score_jax.sample_lib, score_jax.train_lib\n"
            f"assert c.__file__.startswith({str(pkg)!r}), c.__file__\n"
            "try:\n    import configs.common\nexcept ImportError:\n    pass\n"
            "else:\n    raise SystemExit('configs/ is importable')\n"
            "cfg = c.base_config(); cfg.model.name = 'ddpm'; cfg.model.ema_rate = 0.999\n"
            "cfg.training.batch_size = 8; cfg.eval.batch_size = 8\n"
            "c.validate_config(cfg, num_devices=1)\n"
            "cfg.training.continuouse = False\n"
            "try:\n    c.validate_config(cfg, num_devices=1)\n"
            "except ValueError as e:\n    print('REJECTED', e)\n")
    env = dict(os.environ, PYTHONPATH=str(pkg), JAX_PLATFORMS="cpu", XLA_FLAGS="")
    r = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "REJECTED config.training.continuouse is not a known key" in r.stdout


def test_inpaint_method_fails_validation():
    """Issue #9: sampling.method='inpaint' passed validation and failed at the first snapshot."""
    config = load("configs/default_digits.py", "dsm_smoke")
    config.sampling.method = "inpaint"
    with pytest.raises(ValueError, match=r"sampling.method='inpaint' unknown; valid choices: "
                                         r"\['pc', 'ode', 'sde'.*need data and a mask"):
        config_lib.validate_config(config, num_devices=8)
    assert "inpaint" not in config_lib.config_methods()
    assert "colorize" not in config_lib.config_methods()


def test_sampler_options_are_the_samplers_keyword_parameters():
    """Options come from the signature: an option of another method is refused by name."""
    import inspect

    from score_jax import sampling

    for method in config_lib.config_methods()[:-1]:
        params = inspect.signature(sampling.METHODS[method]).parameters
        assert set(config_lib.method_options(method)) <= set(params)
    config = load("configs/default_digits.py", "dsm_smoke")
    config.sampling.method = "pc"
    config.sampling.eta = 0.5  # a DDIM option, with method "pc"
    with pytest.raises(ValueError, match=r"sampling.eta=0.5 is not an option of method 'pc'"):
        config_lib.validate_config(config, num_devices=8)


def test_num_classes_and_label_dropout_settable_from_the_command_line():
    """Issue #11.2: --config.model.num_classes=10 works on a locked config (schema
    placeholders), and too few classes for the dataset are refused before compiling."""
    from ml_collections import config_flags  # noqa: F401  (the CLI's override mechanism)

    config = load("configs/default_digits.py", "dsm_smoke")
    config.lock()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    config.sampling.class_label = 3
    config_lib.validate_config(config, num_devices=8)
    for bad in (5, 9):  # 5: NaN loss before; 9: digit 9 trained into the null row
        config.model.num_classes = bad
        with pytest.raises(ValueError, match=rf"num_classes={bad} is smaller than the 10 classes"):
            config_lib.validate_config(config, num_devices=8)
    config.model.num_classes = 10
    config.sampling.class_label = 11
    with pytest.raises(ValueError, match=r"class_label=11 invalid; valid: 0..9, or 10"):
        config_lib.validate_config(config, num_devices=8)


def test_no_dead_code_and_no_global_jit_cache():
    """Issue #9: EXTRA_CONFIG_KEYS (dead) and the hand-keyed module-level jit cache are gone."""
    from score_jax import train_lib

    for mod in (train_lib, config_lib, train_step):
        assert not hasattr(mod, "EXTRA_CONFIG_KEYS") and not hasattr(mod, "_JIT_CACHE")


def test_default_cifar10_does_not_import_the_vp_config():
    """Issue #9: configs/default_cifar10.py and vp/cifar10_ddpmpp_continuous.py imported each
    other; the runnable default equals the vp config."""
    src = open(os.path.join(ROOT, "configs", "default_cifar10.py")).read()
    assert "configs.vp" not in src
    a = load("configs/default_cifar10.py")
    b = load("configs/vp/cifar10_ddpmpp_continuous.py")
    assert a.to_dict() == b.to_dict()


def test_set_sampler_clears_the_previous_methods_options():
    from configs.default_digits import get_config

    c = get_config()  # EDM Heun: schedule "edm", rho 7
    assert c.sampling.method == "heun" and c.sampling.rho == 7.0
    config_lib.set_sampler(c, "flow", solver="heun", num_steps=25)
    assert c.sampling.rho is None and c.sampling.schedule is None
    assert config_lib.sampling_options_from_config(c.sampling) == (
        "flow", {"solver": "heun", "num_steps": 25, "rtol": 1e-5, "atol": 1e-5})
    with pytest.raises(ValueError, match="'rho'.*not options of method 'ddim'"):
        config_lib.set_sampler(c, "ddim", rho=7.0)
    with pytest.raises(ValueError, match="'bogus' unknown; valid choices"):
        config_lib.set_sampler(c, "bogus")


def test_cli_method_override_drops_the_configs_own_sampler_options():
    """``--config.sampling.method=ddim`` on the EDM digits default (Heun: rho, schedule "edm")
    samples with DDIM's own defaults instead of failing on rho; options given on the same
    command line are kept and validated."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_cli", os.path.join(ROOT, "_cli.py"))
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    from configs.default_digits import get_config

    c = get_config()
    c.sampling.method, c.sampling.num_steps = "ddim", 20
    cli.sampler_override(c, ["--config.sampling.method=ddim", "--config.sampling.num_steps=20"])
    assert config_lib.sampling_options_from_config(c.sampling) == (
        "ddim", {"num_steps": 20, "denoise": True})
    c = get_config()
    c.sampling.method = "unipc"  # takes schedule and rho too: Heun's EDM grid is not inherited
    cli.sampler_override(c, ["--config.sampling.method=unipc"])
    assert config_lib.sampling_options_from_config(c.sampling) == (
        "unipc", {"num_steps": 18, "denoise": True})
    c = get_config()
    c.sampling.method, c.sampling.rho = "ddim", 3.0
    cli.sampler_override(c, ["--config.sampling.method=ddim", "--config.sampling.rho=3"])
    with pytest.raises(ValueError, match="rho=3.0 is not an option of method 'ddim'"):
        config_lib.sampling_options_from_config(c.sampling)
    c = get_config()  # no method on the command line: the config is left alone
    cli.sampler_override(c, ["--config.sampling.num_steps=5"])
    assert c.sampling.rho == 7.0 and c.sampling.schedule == "edm"
    # A pc config (VE NCSN++: Langevin corrector) switched to the ODE: pc's keys go back to their
    # schema defaults instead of being refused as options of another method.
    from configs.ve.cifar10_ncsnpp_continuous import get_config as ve_config

    c = ve_config()
    c.sampling.method = "ode"
    cli.sampler_override(c, ["--config.sampling.method=ode"])
    assert c.sampling.corrector == "none" and c.sampling.predictor == "euler_maruyama"
    assert config_lib.sampling_options_from_config(c.sampling)[0] == "ode"
    c = ve_config()
    c.sampling.method, c.sampling.snr = "ode", 0.2  # given on the command line: kept, refused
    cli.sampler_override(c, ["--config.sampling.method=ode", "--config.sampling.snr=0.2"])
    with pytest.raises(ValueError, match="snr=0.2 is not an option of method 'ode'"):
        config_lib.sampling_options_from_config(c.sampling)


def test_dit_label_dropout_needs_the_null_row():
    from configs.digits_cond import get_config

    c = get_config("dit_smoke")
    config_lib.validate_config(c)
    c.model.class_dropout_prob = 0.0
    with pytest.raises(ValueError, match="class_dropout_prob=0.0 gives the DiT no null-label row"):
        config_lib.validate_config(c)
    from configs.latent.digits_ldm import get_config as ldm_config

    config_lib.validate_config(ldm_config("dit,cfg,smoke"))  # the combined latent variant


def test_digits_evaluate_range_starts_at_the_first_snapshot():
    from configs.default_digits import get_config
    from score_jax.evaluation.workdir import step_range

    c = get_config()
    assert step_range(c)[0] == c.training.snapshot_freq == c.training.n_iters


def test_evaluate_sample_count_is_the_documented_one_per_dataset():
    """``evaluate.py --workdir=workdirs/digits`` draws the 1000 samples at which the README and
    docs report the digits metric (``configs.default_digits.DIGITS_EVAL_SAMPLES``), in every
    digits config; the CIFAR / CelebA / LSUN ones keep the reference FID protocol, 50000."""
    from configs.default_digits import DIGITS_EVAL_SAMPLES

    assert DIGITS_EVAL_SAMPLES == 1000
    seen = set()
    for path in _WITH_GET_CONFIG:
        c = load(path)
        digits = c.data.dataset.startswith("DIGITS")
        seen.add(digits)
        assert c.eval.num_samples == (1000 if digits else 50000), (path, c.eval.num_samples)
    assert seen == {True, False}


def test_pc_keys_set_for_another_method_are_refused():
    """Every config carries pc's keys; at their schema default they are skipped for other
    methods, set to anything else they would be ignored silently, so they are refused."""
    from configs.default_digits import get_config

    config = get_config()  # heun
    method, opts = config_lib.sampling_options_from_config(config.sampling)
    assert method == "heun" and "snr" not in opts and "predictor" not in opts
    for key, value in (("snr", 0.2), ("corrector", "langevin"), ("predictor", "none"),
                       ("n_steps_each", 2)):
        bad = get_config()
        bad.sampling[key] = value
        with pytest.raises(ValueError, match=rf"config.sampling.{key}=.* is not an option of "
                                             r"method 'heun'; its options: \['denoise'"):
            config_lib.sampling_options_from_config(bad.sampling)
    tol = get_config()
    tol.sampling.rtol = tol.sampling.atol = 1e-3  # likelihood tolerances: never refused
    assert config_lib.sampling_options_from_config(tol.sampling) == (method, opts)
    alias = get_config()
    alias.sampling.noise_removal = False  # the reference's name of `denoise`, which heun takes
    assert config_lib.sampling_options_from_config(alias.sampling)[1]["denoise"] is False
