"""The recipes module of the configs: network presets (reference values, applied with
``model.update``) and the training recipes the config files share (``ncsn_recipe``,
``ddpmpp_continuous_vp``, ``edm_recipe``). Config files import from here and from
``configs/common.py`` (the schema and the variants), never from each other's recipes, so the
import graph of ``configs/`` is a tree (``tests/test_imports.py``).
"""
from score_jax import config as config_lib

NCSNPP = dict(  # NCSN++ (VE, Fourier features, FIR, residual input pyramid)
    name="ncsnpp", scale_by_sigma=True, ema_rate=0.999, normalization="GroupNorm",
    nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=4, attn_resolutions=(16,),
    resamp_with_conv=True, conditional=True, fir=True, fir_kernel=[1, 3, 3, 1], skip_rescale=True,
    resblock_type="biggan", progressive="none", progressive_input="residual",
    progressive_combine="sum", attention_type="ddpm", init_scale=0.0, fourier_scale=16,
    conv_size=3, embedding_type="fourier")

DDPMPP = dict(  # DDPM++ (VP: positional embedding, no FIR, no pyramid, no sigma scaling)
    NCSNPP, scale_by_sigma=False, ema_rate=0.9999, fir=False, progressive_input="none",
    embedding_type="positional")

NCSNPP_VP = dict(NCSNPP, scale_by_sigma=False, ema_rate=0.9999, embedding_type="positional")

NCSNPP_256 = dict(NCSNPP, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2,
                  progressive="output_skip", progressive_input="input_skip")

DDPM = dict(  # the DDPM U-Net of Ho et al. 2020
    name="ddpm", scale_by_sigma=False, ema_rate=0.9999, normalization="GroupNorm",
    nonlinearity="swish", nf=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
    resamp_with_conv=True, conditional=True, conv_size=3)

NCSN = dict(name="ncsn", scale_by_sigma=False, normalization="InstanceNorm++", nonlinearity="elu",
            nf=128, interpolation="bilinear")

NCSN_OPTIM = dict(weight_decay=0.0, optimizer="Adam", lr=1e-3, beta1=0.9, amsgrad=False, eps=1e-8,
                  warmup=0, grad_clip=-1.0)


def ncsn_recipe(config, *, n_steps_each: int, snr: float, **model):
    """The NCSN (v1 network) SMLD recipe shared by configs/ve/ncsn/*: VE SDE, discrete objective,
    corrector-only annealed Langevin sampling; ``model`` overrides (num_scales, sigma_max, ema_rate)."""
    config.training.update(dict(sde="vesde", continuous=False, reduce_mean=False))
    config.sampling.update(dict(method="pc", predictor="none", corrector="ald", n_steps_each=n_steps_each, snr=snr))
    config.model.update(NCSN)
    config.optim.update(NCSN_OPTIM)
    config.model.update(model)
    return config


def ddpmpp_continuous_vp(config):
    """The DDPM++ (continuous VP SDE) recipe: reduce-mean DSM, Euler-Maruyama PC sampling,
    centred data (score_sde ``configs/vp/cifar10_ddpmpp_continuous.py``)."""
    config.training.update(dict(sde="vpsde", continuous=True, reduce_mean=True))
    config.sampling.update(dict(method="pc", predictor="euler_maruyama", corrector="none"))
    config.model.update(DDPMPP)
    config.data.centered = True
    return config


def edm_recipe(config, *, precond="edm", sigma_data=0.5, p_mean=-1.2, p_std=1.2):
    """EDM (Karras et al. 2022) on ``config`` (in place): objective "edm" with its
    preconditioning and log-normal noise levels ln sigma ~ N(p_mean, p_std^2), EDM's sampling SDE
    (VESDE, sigma in [0.002, 80] = ``EDMPrecond().sampling_sde()``), the network's
    ``scale_by_sigma`` off (the preconditioning scales), and EDM's Heun sampler (18 steps on the
    rho = 7 grid, 35 NFE; ``set_sampler`` drops the previous sampler's options)."""
    t = config.training
    t.objective = "edm"
    t.precond = precond
    t.sigma_data = sigma_data
    t.p_mean = p_mean
    t.p_std = p_std
    t.sde = "vesde"
    config.model.sigma_min = 0.002
    config.model.sigma_max = 80.0
    config.model.scale_by_sigma = False
    config_lib.set_sampler(config, "heun", num_steps=18, schedule="edm", rho=7.0)
    return config
