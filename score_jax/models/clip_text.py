"""The CLIP text encoder (Radford et al. 2021, "Learning Transferable Visual Models From Natural
Language Supervision"), as transformers' ``CLIPTextModel`` (``models/clip/modeling_clip.py``)
computes it, in flax with transformers' module names, so ``save_pretrained`` folders convert
one to one (`score_jax.convert.load_clip_text`).

  h_0 = E_tok[ids] + E_pos[0..L-1]                                  (B, L, D)
  per layer l = 1..N (pre-LayerNorm):
        h += W_o MHA_causal(LN1(h))      q, k, v = W_q, W_k, W_v LN1(h) (+ biases), H heads of
                                         width D/H, softmax(q k^T / sqrt(D/H) + causal mask) v
        h += W_2 act(W_1 LN2(h))         act: quick_gelu x sigmoid(1.702 x), or gelu (erf)
  last_hidden_state = LN_final(h_N)
  pooled = last_hidden_state[b, p_b]    p_b = argmax_j ids[b, j]            if eos_token_id == 2
                                                                            (the configs written
                                                                            before transformers
                                                                            PR #24773)
                                        p_b = first j with ids[b, j] == eos_token_id  otherwise

Stable Diffusion conditions its U-Net on ``last_hidden_state`` (SD 1.x: CLIP ViT-L/14, 12 layers,
quick_gelu; SD 2.x: OpenCLIP ViT-H/14 with 23 of its 24 layers, gelu). "clip skip" (diffusers'
``encode_prompt(clip_skip=k)``) takes the hidden state k layers before the last one and applies
the final LayerNorm to it: ``module.apply(v, ids, clip_skip=k)``.

The module trains from scratch like any flax module (``module.init(key, ids)``); `CLIP_TEXT_CONFIGS`
holds the full-size CLIP ViT-L/14 text configuration (123,060,480 parameters) and a tiny one.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jnp.ndarray

ACTIVATIONS = {
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}
"""transformers' ``hidden_act`` names -> the activation (``activations.py`` ACT2CLS): quick_gelu
is x sigmoid(1.702 x), gelu the exact erf form, gelu_new / gelu_pytorch_tanh the tanh form."""

CLIP_TEXT_CONFIGS: dict[str, dict[str, Any]] = {
    # openai/clip-vit-large-patch14 config.json "text_config" (also SD 1.x text_encoder/config.json)
    "openai/clip-vit-large-patch14": dict(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu",
        layer_norm_eps=1e-5, eos_token_id=2),
    # Stable Diffusion 2.x text_encoder/config.json (OpenCLIP ViT-H/14 text tower, 23 of its 24
    # layers); values as published, not checked against a download here
    "stabilityai/stable-diffusion-2/text_encoder": dict(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
        layer_norm_eps=1e-5, eos_token_id=2),
    # a small encoder for training from scratch on CPU (the CLIP tokenizer's vocabulary)
    "tiny": dict(vocab_size=49408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, eos_token_id=49407),
}
"""Named CLIPTextModel configurations (the `CLIPTextModel` fields)."""


def _layer_norm(eps: float, dtype: Any, param_dtype: Any, name: str) -> nn.LayerNorm:
    # use_fast_variance=False: the two-pass variance torch's LayerNorm computes.
    return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=param_dtype, use_fast_variance=False,
                        name=name)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with q, k, v, out projections (all with bias); ``mask`` is
    additive, broadcast to (B, H, L, L)."""

    hidden_size: int
    num_heads: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, mask: Array) -> Array:
        b, length, d = h.shape
        if d % self.num_heads:
            raise ValueError(f"hidden_size {d} is not divisible by num_attention_heads "
                             f"{self.num_heads}")
        hd = d // self.num_heads

        def proj(name):
            return nn.Dense(d, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

        def heads(x):
            return x.reshape(b, length, self.num_heads, hd).transpose(0, 2, 1, 3)

        q, k, v = (heads(proj(n)(h)) for n in ("q_proj", "k_proj", "v_proj"))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) * (hd ** -0.5)
        sm_dtype = jnp.promote_types(logits.dtype, jnp.float32)  # softmax in >= float32, as torch
        w = jax.nn.softmax(logits.astype(sm_dtype) + mask.astype(sm_dtype), axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", w.astype(v.dtype), v)
        out = out.transpose(0, 2, 1, 3).reshape(b, length, d)
        return proj("out_proj")(out)


class CLIPMLP(nn.Module):
    """fc1 -> activation -> fc2."""

    hidden_size: int
    intermediate_size: int
    hidden_act: str
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array) -> Array:
        h = nn.Dense(self.intermediate_size, dtype=self.dtype, param_dtype=self.param_dtype,
                     name="fc1")(h)
        h = ACTIVATIONS[self.hidden_act](h)
        return nn.Dense(self.hidden_size, dtype=self.dtype, param_dtype=self.param_dtype,
                        name="fc2")(h)


class CLIPEncoderLayer(nn.Module):
    """Pre-LayerNorm transformer layer: h += attn(LN1 h); h += mlp(LN2 h)."""

    hidden_size: int
    intermediate_size: int
    num_heads: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, mask: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        r = _layer_norm(self.layer_norm_eps, name="layer_norm1", **kw)(h)
        h = h + CLIPAttention(self.hidden_size, self.num_heads, name="self_attn", **kw)(r, mask)
        r = _layer_norm(self.layer_norm_eps, name="layer_norm2", **kw)(h)
        return h + CLIPMLP(self.hidden_size, self.intermediate_size, self.hidden_act, name="mlp",
                           **kw)(r)


class CLIPTextEmbeddings(nn.Module):
    """Token embedding + learned absolute position embedding."""

    vocab_size: int
    hidden_size: int
    max_position_embeddings: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array) -> Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        tok = nn.Embed(self.vocab_size, self.hidden_size, name="token_embedding", **kw)(input_ids)
        pos = nn.Embed(self.max_position_embeddings, self.hidden_size, name="position_embedding",
                       **kw)(jnp.arange(input_ids.shape[-1]))
        return tok + pos[None]


class CLIPTextEncoder(nn.Module):
    """The stack of `CLIPEncoderLayer` ``layers_0 .. layers_{N-1}``; returns every hidden state
    (the input and each layer's output: N + 1 arrays)."""

    num_hidden_layers: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    hidden_act: str
    layer_norm_eps: float
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, h: Array, mask: Array) -> tuple[Array, ...]:
        states = [h]
        for i in range(self.num_hidden_layers):
            h = CLIPEncoderLayer(self.hidden_size, self.intermediate_size, self.num_heads,
                                 self.hidden_act, self.layer_norm_eps, dtype=self.dtype,
                                 param_dtype=self.param_dtype, name=f"layers_{i}")(h, mask)
            states.append(h)
        return tuple(states)


class CLIPTextModel(nn.Module):
    """transformers' ``CLIPTextModel`` (no projection head), with its parameter names.

    Fields are the ``CLIPTextConfig`` keys that change the computation; ``dtype`` is the
    computation dtype, ``param_dtype`` the parameters' (float64 for exact comparisons).

    ``__call__(input_ids, attention_mask=None, *, clip_skip=0, output_hidden_states=False)``:

    Args:
      input_ids: int (B, L) token ids, L <= max_position_embeddings (77 for CLIP).
      attention_mask: optional (B, L) 1 = attend, 0 = padding, combined with the causal mask
        (Stable Diffusion pipelines pass none: padding is hidden by causality alone for the tokens
        before it).
      clip_skip: k >= 0; ``last_hidden_state`` is LN_final of the hidden state k layers before
        the last (diffusers ``encode_prompt(clip_skip=k)`` uses ``hidden_states[-(k + 1)]``);
        ``pooled`` is always from the full depth.
      output_hidden_states: also return the N + 1 raw hidden states (embeddings, each layer).

    Returns:
      ``(last_hidden_state (B, L, D), pooled (B, D))`` in ``dtype``, plus the tuple of hidden
      states when ``output_hidden_states``.

    Raises:
      ValueError: an unknown ``hidden_act`` (naming the valid ones), L > max_position_embeddings,
        or clip_skip outside 0..num_hidden_layers - 1.
    """

    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids: Array, attention_mask: Array | None = None, *, clip_skip: int = 0,
                 output_hidden_states: bool = False):
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act {self.hidden_act!r} is not supported; valid: "
                             f"{sorted(ACTIVATIONS)}")
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {input_ids.shape}")
        length = input_ids.shape[1]
        if length > self.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"{self.max_position_embeddings}")
        if not 0 <= clip_skip < self.num_hidden_layers:
            raise ValueError(f"clip_skip must be in 0..{self.num_hidden_layers - 1}, got {clip_skip}")
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        h = CLIPTextEmbeddings(self.vocab_size, self.hidden_size, self.max_position_embeddings,
                               name="embeddings", **kw)(input_ids)
        neg = jnp.finfo(jnp.promote_types(h.dtype, jnp.float32)).min
        causal = jnp.tril(jnp.ones((length, length), bool))[None, None]
        if attention_mask is not None:
            causal = causal & (jnp.asarray(attention_mask) > 0)[:, None, None, :]
        mask = jnp.where(causal, 0.0, neg)
        states = CLIPTextEncoder(self.num_hidden_layers, self.hidden_size, self.intermediate_size,
                                 self.num_attention_heads, self.hidden_act, self.layer_norm_eps,
                                 name="encoder", **kw)(h, mask)
        final_ln = _layer_norm(self.layer_norm_eps, name="final_layer_norm", **kw)
        last = final_ln(states[-1])
        pooled = last[jnp.arange(last.shape[0]), eos_positions(input_ids, self.eos_token_id)]
        if clip_skip:
            last = final_ln(states[-(clip_skip + 1)])
        if output_hidden_states:
            return last, pooled, states
        return last, pooled


def eos_positions(input_ids: Array, eos_token_id: int) -> Array:
    """(B,) the position the pooled output is read at: argmax of the ids when ``eos_token_id ==
    2`` (the legacy configs, whose EOS is the largest id), else the first position holding
    ``eos_token_id`` (0 if there is none, as transformers' argmax of an all-zero row)."""
    ids = jnp.asarray(input_ids)
    if eos_token_id == 2:
        return jnp.argmax(ids, axis=-1)
    return jnp.argmax((ids == eos_token_id).astype(jnp.int32), axis=-1)


def clip_text_model(config: str | dict[str, Any], *, dtype: Any = jnp.float32,
                    param_dtype: Any = None, **overrides) -> CLIPTextModel:
    """A `CLIPTextModel` from a `CLIP_TEXT_CONFIGS` name or a dict of its fields (overrides on
    top); ``param_dtype`` defaults to ``dtype``.

    Raises:
      ValueError: an unknown name or field (naming the valid ones).
    """
    if isinstance(config, str):
        if config not in CLIP_TEXT_CONFIGS:
            raise ValueError(f"unknown CLIP text config {config!r}; valid: {sorted(CLIP_TEXT_CONFIGS)}")
        config = CLIP_TEXT_CONFIGS[config]
    fields = {**dict(config), **overrides}
    valid = [f for f in CLIPTextModel.__dataclass_fields__ if f not in ("parent", "name")]
    bad = [k for k in fields if k not in valid]
    if bad:
        raise ValueError(f"unknown CLIPTextModel field {bad[0]!r}; valid: {valid}")
    if fields.get("hidden_act", "quick_gelu") not in ACTIVATIONS:
        raise ValueError(f"hidden_act {fields['hidden_act']!r} is not supported; valid: "
                         f"{sorted(ACTIVATIONS)}")
    return CLIPTextModel(**fields, dtype=dtype,
                         param_dtype=dtype if param_dtype is None else param_dtype)


def count_params(model: CLIPTextModel, length: int | None = None) -> int:
    """Number of parameters of ``model``, built abstractly (``jax.eval_shape``; nothing allocated)."""
    length = model.max_position_embeddings if length is None else length
    ids = jax.ShapeDtypeStruct((1, length), jnp.int32)
    shapes = jax.eval_shape(lambda i: model.init(jax.random.key(0), i), ids)
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(shapes))


__all__ = ["ACTIVATIONS", "CLIP_TEXT_CONFIGS", "CLIPTextModel", "CLIPTextEncoder", "CLIPEncoderLayer",
           "CLIPAttention", "CLIPMLP", "CLIPTextEmbeddings", "clip_text_model", "eos_positions",
           "count_params"]
