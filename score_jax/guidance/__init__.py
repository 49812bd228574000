"""Controllable generation: inpainting, colorization, classifier guidance, classifier-free guidance.

- ``inpainting`` / ``colorization``: replacement of the known part after every sampler update
  (PC, fixed-step ODE, DDIM, DPM-Solver++, Heun), entry points ``inpaint`` and ``colorize`` (the
  one sampler runner of ``score_jax.runner``); the known part is exact, the unknown part denoised.

Layer: above ``sampling`` (imports it; ``sampling`` never imports guidance).
- ``cfg``: classifier-free guidance, conditional and unconditional predictions in one batched call.
- ``classifier``: a noise-conditional classifier, its training loss, and the guided score
  score + w grad_x log p(y | x, t).
- ``text``: classifier-free guidance on prompts (`prompt_guidance`: text vs empty / negative
  prompt, one batched call).
"""
from score_jax.guidance import cfg, classifier, colorization, inpainting, text
from score_jax.guidance.cfg import cfg_score_fn, cfg_velocity_fn, classifier_free_guidance
from score_jax.guidance.classifier import (
    ClassifierLogitsFn,
    NoiseConditionalClassifier,
    classifier_guided_score,
    get_classifier_loss_fn,
)
from score_jax.guidance.colorization import colorize, couple, decouple
from score_jax.guidance.inpainting import inpaint
from score_jax.guidance.text import PromptGuidance, prompt_guidance

__all__ = [
    "inpainting", "colorization", "cfg", "classifier", "inpaint", "colorize", "couple", "decouple",
    "classifier_free_guidance", "cfg_score_fn", "cfg_velocity_fn", "NoiseConditionalClassifier",
    "ClassifierLogitsFn", "get_classifier_loss_fn", "classifier_guided_score", "text",
    "PromptGuidance", "prompt_guidance",
]
