"""Text-conditional digits: a cross-attention U-Net and a text encoder trained from scratch on
captions, with classifier-free guidance (Ho & Salimans 2022; Rombach et al. 2022).

The continuous-VP DSM recipe of the embedded digits (``configs/default_digits.py``
``dsm_config``: 8 x 8 digits, batch 64, Adam 1e-3) on ``data.dataset = "DIGITS_TEXT"``: every
training image paired with each phrasing of ``captions.DIGIT_TRAIN_TEMPLATES`` ("a handwritten
seven", "the digit 7", "number seven", "7", ...); the phrasings of
``captions.DIGIT_HELDOUT_TEMPLATES`` ("a picture of a seven", "the number seven", "a handwritten
7", "digit seven") never appear in training and serve evaluation. The network
(``model.name = "text_conditioned"``) is diffusers' UNet2DConditionModel
(``unet2d_condition``; widths 32, 64; cross-attention at 8 x 8, 4 x 4 and in the middle) with a
2-layer text transformer of width 64 over a word vocabulary (``model.text_encoder``), trained
jointly (its parameters are in the train state). Captions are replaced by the empty prompt with
probability ``training.label_dropout = 0.1``; sampling guides with
``eps_uncond + w (eps_text - eps_uncond)``, w = `GUIDANCE_SCALE` (``guidance.text``).

    python train.py --config=configs/digits_text.py --workdir=workdirs/digits_text
    python bench/bench_digits_text.py --workdir=workdirs/digits_text --no-train

Variant ``smoke`` (CPU seconds).
"""
import ml_collections

from configs import default_digits
from configs.common import apply_variant

VARIANTS = (None, "smoke")
GUIDANCE_SCALE = 3.0  # the w of the evaluation (bench/bench_digits_text.py)


def network_config() -> ml_collections.ConfigDict:
    """The small cross-attention U-Net (diffusers UNet2DConditionModel fields)."""
    return ml_collections.ConfigDict(dict(
        name="unet2d_condition", block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
        attention_head_dim=4, norm_num_groups=8, cross_attention_dim=64))


def get_config(arg=None):
    """``arg``: None or "smoke" (ValueError otherwise)."""
    if arg not in (None, "", "None") and arg not in VARIANTS:
        raise ValueError(f"unknown config variant {arg!r}; valid choices: {list(VARIANTS)}")
    config = default_digits.dsm_config()
    config.data.dataset = "DIGITS_TEXT"
    t = config.training
    t.objective = "text_score"
    t.label_dropout = 0.1  # caption dropout
    t.n_iters = 1000
    t.snapshot_freq = 1000
    m = config.model
    for key in list(m.keys()):  # keep the SDE's fields; the networks are below
        if key not in ("beta_min", "beta_max", "num_scales", "ema_rate", "dropout"):
            del m[key]
    m.name = "text_conditioned"
    m.ema_rate = 0.999
    m.network = network_config()
    m.text_encoder = ml_collections.ConfigDict(dict(
        tokenizer="words", max_length=12, width=64, layers=2, heads=4))
    s = config.sampling
    s.method = "dpm_solver"
    s.num_steps = 20
    s.num_samples = 64
    if arg == "smoke":
        config = apply_variant(config, "smoke")
        config.data.dataset = "DIGITS_TEXT"
        config.sampling.num_samples = 8
    return config
