"""Few-step generation: consistency distillation / training (``consistency``) and progressive
distillation (``progressive``). Samplers: ``sampling.consistency_sample`` (method "consistency")
for consistency models, ``sampling.ddim_sample`` (schedule "edm", denoise=False) for progressive
students."""
from score_jax.distill import consistency, objective, progressive
from score_jax.distill.consistency import (
    ConsistencyPrecond,
    cd_loss,
    consistency_precond_for_sde,
    ct_loss,
    get_consistency_loss_fn,
)
from score_jax.distill.objective import FrozenTeacher, get_distill_loss_fn, student_precond, teacher_denoiser
from score_jax.distill.progressive import get_progressive_loss_fn, pd_loss, pd_target, student_sigmas

__all__ = [
    "consistency", "progressive", "ConsistencyPrecond", "cd_loss", "ct_loss",
    "consistency_precond_for_sde", "get_consistency_loss_fn", "get_progressive_loss_fn", "pd_loss",
    "pd_target", "student_sigmas", "objective", "get_distill_loss_fn", "student_precond",
    "teacher_denoiser", "FrozenTeacher",
]
