"""Stage 2 of latent diffusion on the embedded digits at 16 x 16: the default digits DDPM++ on
the 8 x 8 x 2 latents of the stage-1 autoencoder (``digits_autoencoder.py``).

``python train.py --config=configs/latent/digits_ldm.py --workdir=workdirs/digits_ldm
--config.latent.autoencoder_checkpoint=workdirs/digits_ae`` (the default path). The
autoencoder (a stage-1 workdir, or a converted SD VAE ``.msgpack`` with
``config.latent.autoencoder.*`` set) is frozen; images are encoded on the fly to the posterior
mean times ``latent.scale_factor`` (None: 1 / std of the first batch's latents, stored in
``<workdir>/latent.json``); see ``score_jax.latent``. Any objective and backbone of the project
works; ``arg`` is a comma-separated list of:

- ``flow``: conditional-OT flow matching, Heun flow sampler, 25 steps (instead of the digits
  default's EDM objective and EDM Heun sampler, 18 steps, 35 NFE);
- ``cfg``: class-conditional with label dropout 0.1 (classifier-free guidance);
- ``dit``: a DiT backbone (patch 2, hidden 64, depth 4, 4 heads) instead of DDPM++;
- ``smoke``: CPU seconds (tiny networks, 16 x 16, a few steps; the tests).
"""
from configs import default_digits
from configs.common import apply_variant
from score_jax import config as config_lib

VARIANTS = ("flow", "cfg", "dit", "smoke")


def get_config(arg=None):
    """Digits 16 x 16 latent diffusion; see the module docstring for ``arg``."""
    args = [a for a in (arg or "").split(",") if a and a != "None"]
    bad = [a for a in args if a not in VARIANTS]
    if bad:
        raise ValueError(f"unknown digits_ldm variant(s) {bad}; valid choices: {list(VARIANTS)}")
    config = default_digits.get_config(None)  # DDPM++ nf 32, ch_mult (1, 2), for 8 x 8 inputs
    config.data.image_size = 16
    config.data.centered = True  # unused by latents (already ~unit variance after scaling)
    lat = config.latent
    lat.autoencoder_checkpoint = "workdirs/digits_ae"
    lat.scale_factor = None  # 1 / std of the first batch's latents
    config.training.n_iters = 3000
    if "flow" in args:
        t = config.training
        t.objective = "flow_matching"
        t.flow_path = "condot"
        config_lib.set_sampler(config, "flow", solver="heun", num_steps=25)
    if "cfg" in args:
        config.model.num_classes = 10
        config.training.label_dropout = 0.1
    if "dit" in args:
        m = config.model
        for k in ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "resamp_with_conv",
                  "conditional", "fir", "fir_kernel", "skip_rescale", "resblock_type",
                  "progressive", "progressive_input", "progressive_combine",
                  "attention_type", "embedding_type", "init_scale", "fourier_scale",
                  "conv_size", "scale_by_sigma", "normalization", "nonlinearity"):
            if k in m:
                del m[k]
        m.update(dict(name="dit", patch_size=2, hidden_size=64, depth=4, num_heads=4,
                      mlp_ratio=4.0, class_dropout_prob=0.1, learn_sigma=False))
        # class_dropout_prob only creates the null-label row (used with ``cfg``); the labels are
        # dropped by training.label_dropout
    if "smoke" in args:
        config = apply_variant(config, "smoke")
        config.latent.autoencoder_checkpoint = "workdirs/digits_ae_smoke"
        if "dit" in args:
            config.model.update(dict(hidden_size=16, depth=1, num_heads=2))
    return config
