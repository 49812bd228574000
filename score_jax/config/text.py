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
  loaded once by ``convert.load_clip_text``. Its weights are the objective's frozen weights
  (`frozen_weights_from_config`, ``{"text_encoder": variables}``): ``config.build`` passes them
  to the jitted train / eval steps as their ``frozen`` argument, laid out like the parameters
  (FSDP-sharded under ``parallel.fsdp``), the way a distillation teacher's weights are
  (``distill.FrozenTeacher``), so they are neither constants of the compiled step nor part of the
  train state (checkpoints hold the network only; a resumed run reads the folder again). The
  loss (`FrozenTextEncoder`, from ``variables["frozen"]``) and the score wiring
  (`TextScoreFactory`, a jitted encoder taking the weights as an argument) turn tokens into
  ``context`` (its last hidden state) before calling the network.

The loss is ``losses.dsm_loss`` (Song et al. 2021 eq. 7) through the reference wiring
``score.get_score_fn`` (continuous labels), so every sampler and ``guidance.text`` CFG apply.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import captions, losses, parallel
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


FROZEN_KEY = "text_encoder"  # variables["frozen"][FROZEN_KEY]: the frozen encoder's weights


@functools.lru_cache(maxsize=2)
def _load_frozen(folder: str):
    from score_jax import convert

    return convert.load_clip_text(folder)


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenTextEncoder:
    """A pretrained text encoder whose weights are an input, not constants: ``encode(variables,
    tokens (B, L) int32) -> context (B, L, D)``, the last hidden state of ``module`` (a
    ``models.clip_text.CLIPTextModel``) under ``lax.stop_gradient`` weights; the loss reads the
    weights from ``variables["frozen"][key]`` (`weights_of`)."""

    module: Any
    key: str = FROZEN_KEY

    def encode(self, weights: Any, tokens: jax.Array) -> jax.Array:
        return self.module.apply(jax.lax.stop_gradient(weights), tokens)[0]

    def weights_of(self, variables: Mapping) -> Any:
        """``variables["frozen"][key]``; ValueError naming what to pass when it is missing."""
        frozen = variables.get("frozen") or {}
        if self.key not in frozen:
            raise ValueError(f"the frozen text encoder's weights are read from "
                             f"variables['frozen'][{self.key!r}]; pass frozen={{{self.key!r}: "
                             f"variables}} to the train / eval step (config.build does: "
                             f"frozen_weights_from_config); got frozen keys {sorted(frozen)}")
        return frozen[self.key]


def frozen_text_from_config(config) -> FrozenTextEncoder | None:
    """The `FrozenTextEncoder` of ``model.text_encoder.path`` (its folder's module), or None when
    the encoder trains with the network."""
    path = text_settings(config)["path"]
    return None if path is None else FrozenTextEncoder(_load_frozen(str(path))[0])


def frozen_weights_from_config(config) -> dict | None:
    """``{"text_encoder": variables}`` of ``model.text_encoder.path`` (``convert.load_clip_text``,
    loaded once per folder), or None: the objective's ``frozen`` record (``config.build`` passes
    it to the steps)."""
    path = text_settings(config)["path"]
    return None if path is None else {FROZEN_KEY: _load_frozen(str(path))[1]}


def frozen_encoder_from_config(config) -> Callable | None:
    """``encode(tokens) -> context`` of a frozen pretrained encoder (``text_encoder.path``) with
    its weights bound as constants (for use outside a jitted step: the objective reads them from
    ``variables["frozen"]``), or None when the encoder trains with the network."""
    enc, weights = frozen_text_from_config(config), frozen_weights_from_config(config)
    if enc is None:
        return None
    return functools.partial(enc.encode, weights[FROZEN_KEY])


def _network_variables(variables: Mapping) -> dict:
    return {k: v for k, v in variables.items() if k != "frozen"}


def _text_loss(config, sde, model, *, train, num_classes, label_dropout):
    del num_classes, label_dropout  # captions, not labels
    t = config.training
    frozen = frozen_text_from_config(config)
    p = caption_dropout_from_config(config) if train else 0.0
    null = model.null_tokens()

    def loss_fn(variables, batch, key):
        if not isinstance(batch, dict) or "tokens" not in batch:
            raise ValueError("objective 'text_score' needs batches with 'tokens' (a caption "
                             f"dataset: {list(captions.CAPTION_DATASETS)})")
        key_loss, key_drop, key_cap = jax.random.split(key, 3)
        tokens = captions.drop_captions(key_cap, batch["tokens"], null, p)
        if frozen is None:
            cond = {"tokens": tokens}
        else:
            cond = {"context": frozen.encode(frozen.weights_of(variables), tokens)}
        score_fn = score_lib.get_score_fn(sde, model, _network_variables(variables),
                                          continuous=True, train=train, dropout_key=key_drop,
                                          model_kwargs=cond)
        return losses.dsm_loss(key_loss, score_fn, sde, batch["image"],
                               reduce_mean=bool(t.reduce_mean),
                               likelihood_weighting=bool(t.likelihood_weighting))
    return loss_fn


class TextScoreFactory:
    """``make(params, model_kwargs=None) -> score_fn(x, t)`` of objective "text_score"
    (``Built.make_score_fn``); ``model_kwargs = {"tokens": (B, L) int32}`` or ``{"context": (B,
    L, D)}`` (None: the empty prompt).

    With a frozen encoder, `conditioning` turns tokens into ``context`` by ONE jitted encoder
    that takes the weights (``weights``: ``config.build``'s placed, FSDP-sharded arrays) as an
    argument, outside any sampler program, and returns host arrays (every process gets the
    whole context, whatever mesh the sampler runs on): the samplers then see only the context
    (``guidance.prompt_guidance`` calls `conditioning` on its prompts first). The empty prompt's
    context is computed once. Tokens that are tracers (``make`` called inside a jitted function
    on traced tokens) are encoded in that trace: the weights then become constants of that
    program; pass contexts from `conditioning` instead."""

    def __init__(self, sde, model, frozen: FrozenTextEncoder | None, weights: Any):
        self.sde, self.model, self.frozen, self.weights = sde, model, frozen, weights
        self._encode = None if frozen is None else jax.jit(frozen.encode)
        self._null_context = None

    def encode(self, tokens) -> np.ndarray:
        """The frozen encoder's context (B, L, D) float of concrete ``tokens`` (B, L) int32, on
        the host (also when called inside a trace: evaluated there and then, a constant of it).

        Raises ValueError for a model whose encoder trains with the network (pass tokens)."""
        if self.frozen is None:
            raise ValueError("this model's text encoder trains with the network "
                             "(model.text_encoder.path is None): pass {'tokens': ids}")
        with jax.ensure_compile_time_eval():
            return parallel.to_host(self._encode(self.weights, jnp.asarray(tokens, jnp.int32)))

    def conditioning(self, model_kwargs: Mapping | None) -> dict:
        """``model_kwargs`` with ``tokens`` replaced by the frozen encoder's ``context`` (None or
        no tokens: the empty prompt's); unchanged for an encoder trained with the network."""
        kwargs = dict(model_kwargs or {})
        if self.frozen is None or "context" in kwargs:
            return kwargs
        tokens = kwargs.pop("tokens", None)
        if tokens is None:
            if self._null_context is None:
                self._null_context = self.encode(self.model.null_tokens()[None])
            kwargs["context"] = self._null_context
        elif isinstance(tokens, jax.core.Tracer):
            kwargs["context"] = self.frozen.encode(self.weights, tokens)
        else:
            kwargs["context"] = self.encode(tokens)
        return kwargs

    def __call__(self, params, model_kwargs=None):
        kwargs = self.conditioning(model_kwargs)
        return score_lib.get_score_fn(self.sde, self.model, {"params": params}, continuous=True,
                                      model_kwargs=kwargs or None)


def _text_wiring(config, sde, model, *, frozen: dict | None = None):
    """`TextScoreFactory`; ``frozen``: ``config.build``'s placed frozen weights (None: the
    folder's, loaded here)."""
    enc = frozen_text_from_config(config)
    weights = None
    if enc is not None:
        weights = (frozen_weights_from_config(config) if frozen is None else frozen)[enc.key]
    return TextScoreFactory(sde, model, enc, weights)


register_objective(Objective(
    OBJECTIVE, _text_loss, _text_wiring, sampler="score", bpd=True, model_name=MODEL_NAME,
    frozen=frozen_weights_from_config,
    description="text-conditional denoising score matching with caption dropout (classifier-"
                "free guidance, Ho & Salimans 2022; Rombach et al. 2022)"))

__all__ = ["OBJECTIVE", "MODEL_NAME", "text_settings", "tokenizer_from_config",
           "caption_dropout_from_config", "FROZEN_KEY", "FrozenTextEncoder",
           "frozen_text_from_config", "frozen_weights_from_config", "frozen_encoder_from_config",
           "TextScoreFactory"]
