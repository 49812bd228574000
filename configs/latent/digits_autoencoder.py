"""Stage 1 of latent diffusion on the embedded digits at 16 x 16: a small KL autoencoder.

``python train.py --config=configs/latent/digits_autoencoder.py --workdir=workdirs/digits_ae``
trains ``AutoencoderKL`` (``score_jax.models.autoencoder``; widths (32, 64): one down-sampling,
f = 2, so 16 x 16 x 1 digits become 8 x 8 x 2 latents) with ``training.objective =
"autoencoder"``: the L1 reconstruction of a posterior sample + ``kl_weight`` x KL(q(z | x) ||
N(0, I)) (``autoencoder_loss``; no perceptual or adversarial term), Adam, EMA 0.999, orbax
checkpoints. The evaluation loss is the validation reconstruction error of the posterior mean
(per-image sum of |x - D(E(x))| in [-1, 1]); snapshots write input / reconstruction pairs to
``<workdir>/samples/iter_<n>/reconstructions.png`` and every checkpoint exports the EMA
autoencoder to ``<workdir>/autoencoder_ema.msgpack``, which stage 2
(``configs/latent/digits_ldm.py``) loads.

``arg="smoke"``: widths (8, 16), 4 groups, a few steps (tests).
"""
from configs import default_digits
from configs.common import apply_variant

AUTOENCODER = dict(name="autoencoder_kl", block_out_channels=(32, 64), layers_per_block=1,
                   latent_channels=2, norm_num_groups=8)


def get_config(arg=None):
    """Digits 16 x 16 autoencoder; ``arg="smoke"`` gives the CPU-seconds variant."""
    config = default_digits.get_default_configs()
    config.data.image_size = 16
    config.data.centered = True  # the autoencoder works in [-1, 1]
    t = config.training
    t.objective = "autoencoder"
    t.reconstruction = "l1"
    t.kl_weight = 1e-6  # LDM's KL-f8 weight: latents stay close to a deterministic code
    t.batch_size = 64
    t.n_iters = 2000
    t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 500
    t.eval_freq = 250
    config.optim.lr = 1e-3
    config.optim.warmup = 100
    config.model.update(AUTOENCODER)
    config.model.ema_rate = 0.999
    config = apply_variant(config, arg)
    if arg == "smoke":
        config.model.block_out_channels = (8, 16)
        config.model.norm_num_groups = 4
    return config
