"""A text-conditional network: a text encoder trained jointly with a cross-attention network.

``TextConditioned`` (``config.model.name = "text_conditioned"``) holds

- ``network``: the ``config.model`` of a network that takes ``context`` (B, L, D) by
  cross-attention (``unet2d_condition``, diffusers' UNet2DConditionModel);
- ``text_encoder``: the encoder's settings: ``tokenizer`` ("bytes", "words" or a tokenizer
  folder: ``captions.get_tokenizer``), ``max_length`` (None: 32 bytes, 16 words, the folder's
  length), ``width``, ``layers``, ``heads``, ``path`` (a frozen CLIP text encoder folder).

    model.apply(variables, x, labels, train=False, tokens=None, context=None)

encodes ``tokens`` (B, L) int32 with `TextEncoder` (params under ``text_encoder``: they are in the
train state and trained with the network) and calls the network with the encoder's last hidden
state as ``context``; ``context`` given instead (a frozen pretrained encoder's output) skips the
encoder; neither: the empty prompt (the null condition of classifier-free guidance; also what
``init`` sees). With ``text_encoder.path`` (a frozen pretrained CLIP text encoder folder) the
module has no encoder of its own: the objective encodes with the frozen weights, an input of the
jitted steps (``config.text.FrozenTextEncoder``; ``Built.make_score_fn`` for sampling).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from .base import Network

TEXT_ENCODER_DEFAULTS = {"tokenizer": "bytes", "max_length": None, "width": 64, "layers": 2,
                         "heads": 4, "path": None}


def text_encoder_settings(cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """``config.model.text_encoder`` with the defaults filled in; unknown keys raise ValueError."""
    cfg = dict(cfg or {})
    bad = sorted(set(cfg) - set(TEXT_ENCODER_DEFAULTS))
    if bad:
        raise ValueError(f"config.model.text_encoder keys {bad} unknown; valid keys: "
                         f"{sorted(TEXT_ENCODER_DEFAULTS)}")
    return {**TEXT_ENCODER_DEFAULTS, **cfg}


class TextEncoder(nn.Module):
    """A small CLIP-style text transformer trained from scratch: token + learned position
    embeddings, ``layers`` pre-LayerNorm blocks (causal self-attention, GELU MLP x4), final
    LayerNorm. Returns ``(last_hidden_state (B, L, width), pooled (B, width))``, pooled at the
    first [EOS] (CLIP's ``argmax(input_ids == eos)``)."""

    vocab_size: int
    max_length: int
    width: int = 64
    layers: int = 2
    heads: int = 4
    eos_id: int = 2

    @nn.compact
    def __call__(self, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        L = tokens.shape[-1]
        h = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens)
        h = h + self.param("position_embedding", nn.initializers.normal(0.01),
                           (self.max_length, self.width))[:L]
        mask = nn.make_causal_mask(tokens)
        for i in range(self.layers):
            a = nn.LayerNorm(name=f"layer{i}_ln1")(h)
            h = h + nn.MultiHeadDotProductAttention(self.heads, name=f"layer{i}_attn")(
                a, a, mask=mask)
            m = nn.LayerNorm(name=f"layer{i}_ln2")(h)
            m = nn.Dense(self.width, name=f"layer{i}_fc2")(
                nn.gelu(nn.Dense(4 * self.width, name=f"layer{i}_fc1")(m)))
            h = h + m
        h = nn.LayerNorm(name="final_layer_norm")(h)
        eos = jnp.argmax(tokens == self.eos_id, axis=-1)
        return h, h[jnp.arange(h.shape[0]), eos]


class TextConditioned(Network):
    """See the module docstring. ``network`` / ``text_encoder``: sorted ``(key, value)`` tuples
    (or dicts) of the inner network's ``config.model`` and the encoder settings."""

    network: Any = ()
    text_encoder: Any = ()
    image_size: int | None = None
    num_channels: int | None = None
    centered: bool | None = None

    def settings(self) -> dict[str, Any]:
        return text_encoder_settings(dict(self.text_encoder))

    def tokenizer(self):
        from score_jax import captions

        s = self.settings()
        return captions.get_tokenizer(s["tokenizer"], s["max_length"])

    def null_tokens(self) -> jax.Array:
        """The empty prompt's tokens (L,) int32."""
        return jnp.asarray(self.tokenizer()([""])[0])

    def validate(self) -> None:
        s = self.settings()
        net = dict(self.network)
        if not net.get("name"):
            raise ValueError("config.model.network needs a name (a network taking context=, "
                             "e.g. 'unet2d_condition')")
        if s["path"] is None:
            self.tokenizer()  # raises for an unknown tokenizer

    def setup(self):
        from score_jax import models

        self.net = models.get_model(dict(self.network), image_size=self.image_size,
                                    num_channels=self.num_channels, centered=self.centered)
        s = self.settings()
        if s["path"] is None:
            tok = self.tokenizer()
            self.encoder = TextEncoder(tok.vocab_size, tok.max_length, int(s["width"]),
                                       int(s["layers"]), int(s["heads"]), eos_id=tok.eos_id)
        else:
            self.encoder = None

    def encode(self, tokens: jax.Array) -> jax.Array:
        """Last hidden state (B, L, width) of ``tokens`` (B, L)."""
        if self.encoder is None:
            raise ValueError("this model's text encoder is frozen (text_encoder.path): pass "
                             "context= (Built.make_score_fn.encode(tokens): the frozen "
                             "encoder's hidden states)")
        return self.encoder(tokens)[0]

    def frozen_width(self) -> int:
        """Hidden size of the frozen encoder (``text_encoder.path``'s config.json)."""
        import json
        import os

        with open(os.path.join(self.settings()["path"], "config.json")) as f:
            return int(json.load(f)["hidden_size"])

    def __call__(self, x, labels, *, train: bool = False, tokens=None, context=None):
        if context is None and self.encoder is None and tokens is None and self.is_initializing():
            # a frozen encoder's context has its width: init the cross-attention on zeros
            context = jnp.zeros((x.shape[0], self.tokenizer().max_length, self.frozen_width()),
                                x.dtype)
        if context is None:
            if tokens is None:
                null = self.null_tokens()
                tokens = jnp.broadcast_to(null, (x.shape[0],) + null.shape)
            context = self.encode(tokens)
        elif self.encoder is not None and self.is_initializing():
            null = self.null_tokens()
            self.encode(jnp.broadcast_to(null, (x.shape[0],) + null.shape))
        if context.shape[0] == 1 and x.shape[0] != 1:  # one prompt for the whole batch
            context = jnp.broadcast_to(context, (x.shape[0],) + context.shape[1:])
        return self.net(x, labels, train=train, context=context)

    @classmethod
    def smoke_config(cls, model_config) -> None:
        from score_jax import models

        if "network" in model_config and model_config.network.get("name") in models.MODELS:
            models.smoke_model_config(model_config.network)
        te = model_config.get("text_encoder")
        if te is not None and te.get("path") is None:
            width = model_config.get("network", {}).get("cross_attention_dim") or 16
            te.width, te.layers, te.heads = int(width), 1, 2


__all__ = ["TEXT_ENCODER_DEFAULTS", "text_encoder_settings", "TextEncoder", "TextConditioned"]
