"""Text -> token ids for the CLIP text encoder, from the user's tokenizer folder.

The tokenizer is transformers' ``CLIPTokenizer`` (the ``tokenizers``-backed BPE of CLIP: lower
case, whitespace-cleaned, byte-level symbols with ``</w>`` word ends), loaded from a local folder
with ``local_files_only=True``: nothing is downloaded. The folder is a Stable Diffusion model's
``tokenizer/`` (``vocab.json``, ``merges.txt``, ``special_tokens_map.json``,
``tokenizer_config.json``) or anything ``CLIPTokenizer.save_pretrained`` wrote (``tokenizer.json``
instead of the first two is accepted). transformers is an optional extra:
``pip install 'score_jax[text]'``.

Every prompt becomes ``<|startoftext|> tokens <|endoftext|> pad ...`` truncated / padded to the
model length (``model_max_length`` of tokenizer_config.json, 77 for CLIP), exactly as
``tokenizer(prompts, padding="max_length", max_length=77, truncation=True)`` in the diffusers
pipelines; the pad token is the folder's (``<|endoftext|>`` for SD 1.x, ``!`` for SD 2.x).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REQUIRED_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
"""A tokenizer folder needs one of these sets of files."""

_DEFAULT_MAX_LENGTH = 77


@dataclass(frozen=True)
class CLIPTokenizer:
    """A loaded tokenizer: ``tok(prompts) -> int32 (B, max_length)``.

    Attributes:
      tokenizer: the transformers ``CLIPTokenizer`` object.
      max_length: the padded / truncated length (the model's ``max_position_embeddings``).
    """

    tokenizer: Any
    max_length: int

    @property
    def pad_token_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    @property
    def eos_token_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def bos_token_id(self) -> int:
        return int(self.tokenizer.bos_token_id)

    def __call__(self, prompts: str | Sequence[str]) -> np.ndarray:
        """Token ids of ``prompts`` (one string or a sequence): int32 (B, max_length), BOS first,
        EOS after the last kept token (truncation keeps EOS), then padding.

        Raises:
          ValueError: a prompt that is not a string.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        bad = [p for p in prompts if not isinstance(p, str)]
        if bad:
            raise ValueError(f"prompts must be strings, got {type(bad[0]).__name__}: {bad[0]!r}")
        enc = self.tokenizer(prompts, padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="np")
        return np.asarray(enc["input_ids"], np.int32)


def load_tokenizer(folder: str | Path, max_length: int | None = None) -> CLIPTokenizer:
    """Load a CLIP tokenizer from a local folder (nothing downloaded).

    Args:
      folder: the tokenizer folder (an SD model's ``tokenizer/``).
      max_length: the padded length; default the folder's ``model_max_length`` when it is a real
        length (<= 4096), else 77.

    Raises:
      FileNotFoundError: the folder is missing, or holds neither vocab.json + merges.txt nor
        tokenizer.json (the missing files named).
      ImportError: transformers is not installed (``pip install 'score_jax[text]'``).
      ValueError: max_length < 2.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} does not exist")
    if not any(all((folder / f).is_file() for f in files) for files in REQUIRED_FILES):
        missing = [f for f in REQUIRED_FILES[0] if not (folder / f).is_file()]
        raise FileNotFoundError(f"tokenizer folder {str(folder)!r} lacks {', '.join(missing)} "
                                "(a CLIP tokenizer folder holds vocab.json, merges.txt, "
                                "special_tokens_map.json, tokenizer_config.json; or tokenizer.json)")
    try:
        from transformers import CLIPTokenizer as _HFCLIPTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("tokenization needs transformers: pip install 'score_jax[text]'") from e
    if max_length is None:
        max_length = _DEFAULT_MAX_LENGTH
        cfg = folder / "tokenizer_config.json"
        if cfg.is_file():
            m = json.loads(cfg.read_text()).get("model_max_length")
            if isinstance(m, int) and 2 <= m <= 4096:
                max_length = m
    if max_length < 2:
        raise ValueError(f"max_length must be >= 2 (BOS and EOS), got {max_length}")
    tok = _HFCLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    return CLIPTokenizer(tok, int(max_length))


__all__ = ["CLIPTokenizer", "REQUIRED_FILES", "load_tokenizer"]
