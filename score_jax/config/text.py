"""Objective "text_score": denoising score matching conditioned on captions.

The network is ``config.model.name = "text_conditioned"`` (``models.TextConditioned``: a
cross-attention network plus its text encoder). Batches carry ``"tokens"`` (B, L) int32 (the
caption datasets of ``score_jax.captions``, tokenized host-side by `dataset_from_config`). Per
example, the caption is replaced by the empty prompt with probability ``training.label_dropout``
(None: 0.1; ``captions.drop_captions``, keyed by the loss's key, i.e. by the step key), the
classifier-free guidance training of Ho & Salimans (2022) on text as in Stable Diffusion.

The text encoder is either

- trained from scratch with the network (``model.text_encoder.path`` None): its parameters are
  part of the network's, hence of the train state (optimiser, EMA, FSDP sharding, checkpoints);
- frozen and pretrained (``model.text_encoder.path`` = a CLIP text-encoder folder, e.g. Stable
  Diffusion's ``text_encoder/``; ``model.text_encoder.tokenizer`` its ``tokenizer/`` folder):
  loaded once by ``convert.load_clip_text`` and closed over as constants; the loss and the score
  wiring turn tokens into ``context`` (its last hidden state) before calling the network.

The loss is ``losses.dsm_loss`` (Song et al. 2021 eq. 7) through the reference wiring
``score.get_score_fn`` (continuous labels), so every sampler and ``guidance.text`` CFG apply.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax

from score_jax import captions, losses
from score_jax import score as score_lib
from score_jax.config.objectives import Objective, register_objective
from score_jax.config.schema import DEFAULT_LABEL_DROPOUT

OBJECTIVE = "text_score"
MODEL_NAME = "text_conditioned"


def text_settings(config) -> dict:
    """``config.model.text_encoder`` with its defaults (``models.text_conditioned``)."""
    from score_jax.models.text_conditioned import text_encoder_settings

    return text_encoder_settings(config.model.get("text_encoder"))


def tokenizer_from_config(config):
    """The tokenizer of ``config.model.text_encoder`` (``captions.get_tokenizer``)."""
    s = text_settings(config)
    return captions.get_tokenizer(s["tokenizer"], s["max_length"])


def caption_dropout_from_config(config) -> float:
    """``training.label_dropout`` (None: ``DEFAULT_LABEL_DROPOUT`` = 0.1) for captions."""
    p = config.training.get("label_dropout")
    return DEFAULT_LABEL_DROPOUT if p is None else float(p)


@functools.lru_cache(maxsize=2)
def _load_frozen(folder: str):
    from score_jax import convert

    return convert.load_clip_text(folder)


def frozen_encoder_from_config(config) -> Callable | None:
    """``encode(tokens) -> context`` of a frozen pretrained encoder (``text_encoder.path``; its
    weights constants), or None when the encoder trains with the network."""
    path = text_settings(config)["path"]
    if path is None:
        return None
    module, variables = _load_frozen(str(path))
    variables = jax.lax.stop_gradient(variables)

    def encode(tokens):
        return module.apply(variables, tokens)[0]
    return encode


def _conditioning(frozen: Callable | None, tokens) -> dict:
    return {"tokens": tokens} if frozen is None else {"context": frozen(tokens)}


def _text_loss(config, sde, model, *, train, num_classes, label_dropout):
    del num_classes, label_dropout  # captions, not labels
    t = config.training
    frozen = frozen_encoder_from_config(config)
    p = caption_dropout_from_config(config) if train else 0.0
    null = model.null_tokens()

    def loss_fn(variables, batch, key):
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("objective 'text_score' needs batches with 'tokens' (a caption "
                             f"dataset: {list(captions.CAPTION_DATASETS)})")
        key_loss, key_drop, key_cap = jax.random.split(key, 3)
        tokens = captions.drop_captions(key_cap, batch["tokens"], null, p)
        score_fn = score_lib.get_score_fn(sde, model, variables, continuous=True, train=train,
                                          dropout_key=key_drop,
                                          model_kwargs=_conditioning(frozen, tokens))
        return losses.dsm_loss(key_loss, score_fn, sde, batch["image"],
                               reduce_mean=bool(t.reduce_mean),
                               likelihood_weighting=bool(t.likelihood_weighting))
    return loss_fn


def _text_wiring(config, sde, model):
    """``make(params, model_kwargs) -> score_fn``; ``model_kwargs = {"tokens": (B, L)}`` (None:
    the empty prompt); a frozen encoder turns the tokens into ``context`` here."""
    frozen = frozen_encoder_from_config(config)

    def make(params, model_kwargs=None):
        kwargs = dict(model_kwargs or {})
        if frozen is not None and "context" not in kwargs:
            tokens = kwargs.pop("tokens", None)
            if tokens is None:
                tokens = model.null_tokens()[None]
            kwargs["context"] = frozen(tokens)
        return score_lib.get_score_fn(sde, model, {"params": params}, continuous=True,
                                      model_kwargs=kwargs or None)
    return make


register_objective(Objective(
    OBJECTIVE, _text_loss, _text_wiring, sampler="score", bpd=True, model_name=MODEL_NAME,
    description="text-conditional denoising score matching with caption dropout (classifier-"
                "free guidance, Ho & Salimans 2022; Rombach et al. 2022)"))

__all__ = ["OBJECTIVE", "MODEL_NAME", "text_settings", "tokenizer_from_config",
           "caption_dropout_from_config", "frozen_encoder_from_config"]
