"""Network presets shared by the configs (reference values, applied with ``model.update``)."""

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
