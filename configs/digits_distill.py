"""Few-step students of the digits main job (``python train.py --workdir=workdirs/digits``, EDM,
Heun 35 NFE): consistency distillation, consistency training and progressive distillation
(``score_jax.distill``; the student has the teacher's network and starts from its EMA weights).

    python train.py --config=configs/digits_distill.py:cd --workdir=workdirs/digits_cd
    python train.py --config=configs/digits_distill.py:ct --workdir=workdirs/digits_ct
    python train.py --config=configs/digits_distill.py:pd --workdir=workdirs/digits_pd4 \\
        --config.distill.pd_num_steps=4
    python train.py --config=configs/digits_distill.py:pd --workdir=workdirs/digits_pd2 \\
        --config.distill.pd_num_steps=2 --config.distill.teacher_workdir=workdirs/digits_pd4
    python sample.py --config=configs/digits_distill.py:cd --workdir=workdirs/digits_cd \\
        --config.sampling.num_steps=2

``distill.teacher_workdir`` (default ``workdirs/digits``) is any workdir of the project trained
with ``distill.teacher_objective`` on this network and SDE (or ``distill.teacher_checkpoint``, a
converted file). Variants (``arg``):
- "cd": consistency distillation (CM Algorithm 2): N = 18 (EDM's rho grid on [0.002, 80]),
  Heun teacher step, L2 distance weighted by EDM's 1 / c_out(sigma)^2 (``distill.weighting``),
  target stopgrad(theta) (iCT sec. 3.2, ECT) and a sampling EMA (model.ema_rate = 0.999 with the
  warmup ramp), batch 256, 500 steps, lr 1e-3 with a cosine decay to 0 over the run
  (bench/RESULTS.md, "Few-step distillation on the digits: the loss weighting"); sampled with
  method "consistency" (1 step; ``--config.sampling.num_steps=2`` for two, re-noised to
  ``sampling.sigma_mid`` = 0.821);
- "ct": improved consistency training (pseudo-Huber, lognormal levels, curriculum 10 -> 160
  scales over the run), initialised from the teacher (ECT) but without its forward passes;
- "pd": one round of progressive distillation (student ``distill.pd_num_steps`` DDIM steps,
  teacher twice as many); sampled with "ddim" on EDM's grid without the final jump (N NFE);
- "smoke": any of the above + ``_smoke`` shrinks to CPU seconds (e.g. "cd_smoke").
"""
from configs import default_digits
from configs.common import apply_variant
from score_jax import config as config_lib

METHODS = ("cd", "ct", "pd")


def distill_recipe(config, method: str, *, teacher_workdir: str = "workdirs/digits"):
    """Objective "distill" with ``method`` on the digits EDM config (in place)."""
    if method not in METHODS:
        raise ValueError(f"unknown distillation variant {method!r}; valid choices: {list(METHODS)}")
    t, d = config.training, config.distill
    t.objective = "distill"
    d.method = method
    d.teacher_workdir = teacher_workdir
    d.teacher_objective = "edm"
    t.n_iters = t.snapshot_freq = 1000
    t.snapshot_freq_for_preemption = 250
    t.eval_freq = 500
    t.log_freq = 50
    o = config.optim
    o.lr = 2e-4
    o.warmup = 50
    o.lr_decay = "constant"
    if method == "cd":
        # the target is stopgrad(theta) (iCT / ECT), so the EMA is only what gets sampled: a slow
        # one (CM samples an EMA of 0.9999 while its target theta^- uses mu = 0.95)
        config.model.ema_rate = 0.999
        d.target = "stopgrad"
        d.num_scales = 18
        # EDM's lambda = 1 / c_out^2: without it the low noise levels, where every consistency
        # chain starts, end up worse than the teacher's own denoiser (bench/RESULTS.md, "the
        # loss weighting")
        d.weighting = "inverse_cout2"
        # one noise level per example: 256 x 500 steps beat 128 x 1000 at the same CPU (~9 CPU
        # minutes) on two training seeds each at 2 NFE
        t.batch_size = 256
        t.n_iters = t.snapshot_freq = 500
        o.lr = 1e-3  # the teacher's lr (2e-4 and 2e-3 were worse with this weighting)
        o.lr_decay = "cosine"  # to 0 at n_iters
        # 2 steps re-noise to ECT's / iCT's level 0.821 (locuslab/ect ct_eval.py --mid_t), more
        # steps continue on the rho grid below it (the plain rho grid puts it at 2.52)
        config_lib.set_sampler(config, "consistency", num_steps=1, reset_tuning=True, sigma_mid=0.821)
    elif method == "ct":
        config.model.ema_rate = 0.99  # sampling EMA; the CT target is stopgrad(theta)
        d.ct_s0, d.ct_s1 = 10, 160
        config_lib.set_sampler(config, "consistency", num_steps=1, reset_tuning=True, sigma_mid=0.821)
    else:
        config.model.ema_rate = 0.99
        d.pd_num_steps = 4
        config_lib.set_sampler(config, "ddim", num_steps=4, schedule="edm", noise_removal=False,
                               reset_tuning=True)
    return config


def get_config(arg=None):
    """``arg``: "cd" (default), "ct", "pd", each optionally with "_smoke" ("smoke" = "cd_smoke")."""
    arg = arg or "cd"
    method, _, variant = ("cd_smoke" if arg == "smoke" else arg).partition("_")
    config = distill_recipe(default_digits.get_config(None), method)
    if variant:
        config = apply_variant(config, variant)
        config.optim.lr_decay = "constant"  # runs of a few steps (the tests resume 2 -> 4)
        config.data.image_size = 8  # the teacher's size (smoke would upsample to 16)
    return config
