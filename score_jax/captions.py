"""Image-caption data for text-conditional training: tokenizers, caption datasets, caption dropout.

Datasets (registered with ``data.register_dataset``; every one yields batches
``{"image", "label", "caption"}`` whose captions `TokenizedPipeline` turns into ``"tokens"``
(n, max_length) int32 before they reach the devices):

- ``DIGITS_TEXT`` (embedded, no download): scikit-learn's digits, each image paired with every
  caption template of `DIGIT_TRAIN_TEMPLATES` ("a handwritten seven", "the digit 7", "number
  seven", ...); `DIGIT_HELDOUT_TEMPLATES` are phrasings never used in training, for evaluation;
- ``CAPTION_FOLDER``: a folder in the Hugging Face ``imagefolder`` layout, a ``metadata.jsonl``
  with one ``{"file_name": ..., "text": ...}`` per line next to the images (``train/`` and
  ``test/`` sub-folders each with their own, or one at the top), or else a ``<image>.txt``
  caption beside every image;
- ``TFDS_TEXT``: a TFDS dataset with an image and a text feature, ``data.path =
  "builder[:text_feature[:image_feature]]"`` (defaults "caption", "image"; e.g.
  ``"my_captions:text"``), read with ``tfds.data_source`` (array_record, no TensorFlow);
  `tfds_caption_recipe` registers one under its own name.

Tokenizers (`get_tokenizer`): ``"bytes"`` (UTF-8 bytes, any text), ``"words"`` (the word vocabulary
of the digits captions, unknown words -> ``[UNK]``) or a tokenizer folder (a Hugging Face
tokenizer saved with ``save_pretrained``, loaded locally, e.g. Stable Diffusion's ``tokenizer/``).
Every tokenizer pads / truncates to ``max_length`` as CLIP does: ``[BOS] tokens [EOS] [PAD]...``.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import data as data_lib

# ----------------------------------------------------------------------------------------------
# Digit captions
# ----------------------------------------------------------------------------------------------
DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# {w}: the number word, {d}: the numeral
DIGIT_TRAIN_TEMPLATES = ("a handwritten {w}", "the digit {d}", "number {w}", "{d}",
                         "an image of the numeral {w}", "a drawing of the number {d}", "{w}",
                         "the handwritten digit {w}")
DIGIT_HELDOUT_TEMPLATES = ("a picture of a {w}", "the number {w}", "a handwritten {d}",
                           "digit {w}")


def digit_caption(label: int, template: str) -> str:
    """The caption of digit ``label`` (0..9) in ``template`` ({w}: word, {d}: numeral)."""
    return template.format(w=DIGIT_WORDS[int(label)], d=int(label))


class DigitsCaptionSource:
    """Every (image, template) pair of the digits as one example: example ``i`` is image
    ``i // K`` with template ``i % K`` (K templates), so the data order stays a pure function of
    ``(seed, step)`` (``data.RandomAccessPipeline``)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, templates: Sequence[str]):
        if not templates:
            raise ValueError("DigitsCaptionSource needs at least one caption template")
        self.images, self.labels = np.asarray(images, np.float32), np.asarray(labels, np.int32)
        self.templates = tuple(templates)

    def __len__(self) -> int:
        return len(self.images) * len(self.templates)

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.asarray(idx))
        img, tpl = idx // len(self.templates), idx % len(self.templates)
        captions = np.asarray([digit_caption(self.labels[i], self.templates[j])
                               for i, j in zip(img, tpl, strict=True)], dtype=object)
        return self.images[img], self.labels[img], {"caption": captions}


def digits_text_source(split: str, *, image_size: int, num_channels: int, path: str | None,
                       process_index: int, process_count: int,
                       templates: Sequence[str] | None = None):
    """``data.dataset="DIGITS_TEXT"``: the digits split (``data.load_digits_images``) with the
    training caption templates (or ``templates``); ``path`` is unused."""
    del path
    x, y = data_lib.load_digits_images(image_size, split)
    if num_channels == 3:
        x = np.repeat(x, 3, axis=-1)
    sl = data_lib.process_slice(len(x), process_index, process_count)
    return DigitsCaptionSource(x[sl], y[sl], DIGIT_TRAIN_TEMPLATES if templates is None
                               else templates)


# ----------------------------------------------------------------------------------------------
# A folder of images with captions
# ----------------------------------------------------------------------------------------------
class CaptionedImageSource(data_lib.ImageFolderSource):
    """Image files with one caption each, read lazily (random access)."""

    def __init__(self, files, captions, image_size: int, num_channels: int):
        super().__init__(files, np.zeros(len(files), np.int32), image_size, num_channels)
        self.captions = np.asarray(list(captions), dtype=object)

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.asarray(idx))
        images, labels = super().__getitem__(idx)
        return images, labels, {"caption": self.captions[idx]}


def read_caption_folder(root: str) -> tuple[list[str], list[str]]:
    """(image files, captions) of ``root``: ``metadata.jsonl`` lines ``{"file_name", "text"}``
    (Hugging Face imagefolder), else a ``.txt`` beside each image. Sorted by file name.

    Raises ValueError when ``root`` is not a folder, holds no captioned image, or an image of the
    metadata is missing."""
    if not os.path.isdir(root):
        raise ValueError(f"config.data.path={root!r} is not a folder of captioned images")
    meta = os.path.join(root, "metadata.jsonl")
    pairs = []
    if os.path.isfile(meta):
        with open(meta) as f:
            for n, line in enumerate(f):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if "file_name" not in rec or "text" not in rec:
                    raise ValueError(f"{meta}:{n + 1}: needs 'file_name' and 'text'; got keys "
                                     f"{sorted(rec)}")
                file = os.path.join(root, rec["file_name"])
                if not os.path.isfile(file):
                    raise ValueError(f"{meta}:{n + 1}: image {file!r} does not exist")
                pairs.append((file, str(rec["text"])))
    else:
        files, _, _ = data_lib._folder_files(root)
        for file in files:
            txt = os.path.splitext(file)[0] + ".txt"
            if os.path.isfile(txt):
                with open(txt) as f:
                    pairs.append((file, f.read().strip()))
    if not pairs:
        raise ValueError(f"{root!r} holds no captioned image: give a metadata.jsonl with "
                         f"'file_name' and 'text' per line, or a .txt beside each image")
    pairs.sort()
    return [p[0] for p in pairs], [p[1] for p in pairs]


def caption_folder_source(split: str, *, image_size: int, num_channels: int, path: str | None,
                          process_index: int, process_count: int):
    """``data.dataset="CAPTION_FOLDER"``: the captioned images under ``data.path`` (its
    ``train/`` / ``test/`` sub-folder when it has them; see `read_caption_folder`)."""
    if not path:
        raise ValueError("data.dataset='CAPTION_FOLDER' needs config.data.path (a folder of "
                         "images with metadata.jsonl or .txt captions)")
    files, captions = read_caption_folder(data_lib._split_root(path, split))
    sl = data_lib.process_slice(len(files), process_index, process_count)
    return CaptionedImageSource(files[sl], captions[sl], image_size, num_channels)


# ----------------------------------------------------------------------------------------------
# TFDS with a text feature
# ----------------------------------------------------------------------------------------------
def _feature(record: Any, name: str) -> Any:
    for part in name.split("/"):  # nested features: "captions/text"
        record = record[part]
    return record


def _text(value: Any) -> str:
    value = np.asarray(value)
    if value.ndim > 0:  # a sequence of captions (e.g. COCO): the first
        value = value.reshape(-1)[0]
    value = value.item() if hasattr(value, "item") else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class TFDSCaptionSource:
    """Image + caption records of a random-access source (``tfds.data_source``, or any sequence
    of feature dicts): images resized (`data._to_square` semantics through ``data.resize``),
    captions from ``text_feature`` (bytes decoded as UTF-8; the first of a caption list)."""

    def __init__(self, records, image_size: int, num_channels: int, *,
                 text_feature: str = "caption", image_feature: str = "image"):
        self.records, self.image_size, self.num_channels = records, image_size, num_channels
        self.text_feature, self.image_feature = text_feature, image_feature

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, idx):
        idx = np.atleast_1d(np.asarray(idx))
        images, captions = [], []
        for i in idx:
            rec = self.records[int(i)]
            try:
                img, txt = _feature(rec, self.image_feature), _feature(rec, self.text_feature)
            except (KeyError, TypeError) as e:
                raise ValueError(f"TFDS record has no feature {e}; valid: {sorted(rec)} (set "
                                 f"data.path='builder:text_feature:image_feature')") from None
            img = np.asarray(img, np.float32)
            img = img[..., None] if img.ndim == 2 else img
            if img.shape[-1] != self.num_channels:
                img = (np.repeat(img[..., :1], 3, -1) if self.num_channels == 3
                       else img.mean(-1, keepdims=True))
            h, w = img.shape[:2]
            s = min(h, w)
            img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            images.append(data_lib.resize(img[None], self.image_size)[0] / 255.0)
            captions.append(_text(txt))
        return (np.clip(np.stack(images), 0.0, 1.0).astype(np.float32),
                np.zeros(len(idx), np.int32), {"caption": np.asarray(captions, dtype=object)})


def parse_tfds_path(path: str | None) -> tuple[str, str, str]:
    """``"builder[:text_feature[:image_feature]]"`` -> (builder, text_feature, image_feature)."""
    if not path:
        raise ValueError("data.dataset='TFDS_TEXT' needs config.data.path="
                         "'builder[:text_feature[:image_feature]]', e.g. 'my_captions:text'")
    parts = str(path).split(":")
    if len(parts) > 3 or not parts[0]:
        raise ValueError(f"config.data.path={path!r} invalid for TFDS_TEXT; valid form: "
                         f"'builder[:text_feature[:image_feature]]'")
    parts += ["caption", "image"][len(parts) - 1:]
    return parts[0], parts[1], parts[2]


def tfds_caption_source(split: str, *, image_size: int, num_channels: int, path: str | None,
                        process_index: int, process_count: int, data_dir: str | None = None):
    """``data.dataset="TFDS_TEXT"``: this process's part of ``split`` of the TFDS builder named
    in ``data.path`` (`parse_tfds_path`), via ``tfds.data_source`` (no download).

    Raises data.DatasetNotAvailableError when the dataset is not prepared."""
    import tensorflow_datasets as tfds

    name, text_feature, image_feature = parse_tfds_path(path)
    data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
    sub = tfds.even_splits(split, process_count)[process_index]
    try:
        records = tfds.data_source(name, split=sub, data_dir=data_dir, download=False)
    except Exception as e:  # not prepared: tfds raises AssertionError / DatasetNotFoundError
        raise data_lib.DatasetNotAvailableError(data_lib._prepare_hint(name, data_dir)
                                                + f"\n(cause: {e})") from e
    return TFDSCaptionSource(records, image_size, num_channels, text_feature=text_feature,
                             image_feature=image_feature)


def tfds_caption_recipe(name: str, builder: str, *, text_feature: str = "caption",
                        image_feature: str = "image", eval_split: str = "test",
                        data_dir: str | None = None) -> data_lib.DatasetRecipe:
    """A `data.DatasetRecipe` for one TFDS builder with a text feature (register it with
    ``data.register_dataset``; then ``data.dataset=name`` trains on it, no ``data.path``)."""
    spec = f"{builder}:{text_feature}:{image_feature}"

    def source(split, *, image_size, num_channels, path, process_index, process_count):
        del path
        return tfds_caption_source(split, image_size=image_size, num_channels=num_channels,
                                   path=spec, process_index=process_index,
                                   process_count=process_count, data_dir=data_dir)
    return data_lib.DatasetRecipe(name, source, eval_split=eval_split)


CAPTION_DATASETS = ("DIGITS_TEXT", "CAPTION_FOLDER", "TFDS_TEXT")


def has_captions(dataset: str) -> bool:
    """Whether ``data.dataset`` yields captions (a built-in caption dataset, or a registered
    recipe whose source returns them: it is then the user's to say)."""
    return dataset.upper() in CAPTION_DATASETS


# ----------------------------------------------------------------------------------------------
# Tokenizers
# ----------------------------------------------------------------------------------------------
class ByteTokenizer:
    """UTF-8 bytes as tokens: id = byte + 3; 0 = [PAD], 1 = [BOS], 2 = [EOS]; vocab 259.

    ``__call__(texts) -> (n, max_length)`` int32: ``[BOS] bytes [EOS] [PAD]...``, truncated to
    keep the [EOS] (CLIP's layout: the pooled output is read at the [EOS])."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, max_length: int = 32):
        self.max_length = int(max_length)
        self.vocab_size = 259

    def ids(self, text: str) -> list[int]:
        return [b + 3 for b in text.encode("utf-8")]

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        out = np.full((len(texts), self.max_length), self.pad_id, np.int32)
        for i, text in enumerate(texts):
            ids = [self.bos_id] + self.ids(str(text))[:self.max_length - 2] + [self.eos_id]
            out[i, :len(ids)] = ids
        return out


class WordTokenizer(ByteTokenizer):
    """Lower-case words and numerals of a fixed vocabulary; 3 = [UNK]; ids from 4 on in the
    order of ``vocab``."""

    unk_id = 3

    def __init__(self, vocab: Sequence[str], max_length: int = 16):
        super().__init__(max_length)
        self.vocab = tuple(vocab)
        self.index = {w: i + 4 for i, w in enumerate(self.vocab)}
        self.vocab_size = len(self.vocab) + 4

    def ids(self, text: str) -> list[int]:
        return [self.index.get(w, self.unk_id) for w in re.findall(r"[a-z]+|[0-9]", text.lower())]


def digit_vocab() -> tuple[str, ...]:
    """Every word of the digit captions (training and held-out templates), sorted."""
    words = set()
    for tpl in DIGIT_TRAIN_TEMPLATES + DIGIT_HELDOUT_TEMPLATES:
        for label in range(10):
            words |= set(re.findall(r"[a-z]+|[0-9]", digit_caption(label, tpl).lower()))
    return tuple(sorted(words))


class HFTokenizer:
    """A CLIP tokenizer folder (``save_pretrained``: Stable Diffusion's ``tokenizer/``), loaded
    locally by ``score_jax.text.load_tokenizer`` and padded to ``max_length`` (default: the
    folder's ``model_max_length``) as diffusers' pipelines call it."""

    def __init__(self, folder: str, max_length: int | None = None):
        from score_jax import text

        self.tok = text.load_tokenizer(folder, max_length)
        self.max_length = int(self.tok.max_length)
        self.vocab_size = len(self.tok.tokenizer)
        self.eos_id = self.tok.eos_token_id

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        return self.tok([str(t) for t in texts])


TOKENIZERS = ("bytes", "words")


def get_tokenizer(spec: str, max_length: int | None = None):
    """``"bytes"`` (`ByteTokenizer`), ``"words"`` (`WordTokenizer` over `digit_vocab`) or a
    tokenizer folder (`HFTokenizer`).

    Raises ValueError for anything else, naming the valid choices."""
    if spec == "bytes":
        return ByteTokenizer(max_length or 32)
    if spec == "words":
        return WordTokenizer(digit_vocab(), max_length or 16)
    if isinstance(spec, str) and os.path.isdir(spec):
        return HFTokenizer(spec, max_length)
    raise ValueError(f"tokenizer {spec!r} unknown; valid choices: {list(TOKENIZERS)} or a "
                     f"tokenizer folder (save_pretrained layout)")


# ----------------------------------------------------------------------------------------------
# Tokens in the pipeline, caption dropout in the loss
# ----------------------------------------------------------------------------------------------
class TokenizedPipeline:
    """A data pipeline whose batches' ``"caption"`` (strings) become ``"tokens"`` (n, L) int32
    (host side, so only arrays reach the devices); ``iterate`` / ``epoch`` as the wrapped one."""

    def __init__(self, pipeline, tokenizer):
        self.pipeline, self.tokenizer = pipeline, tokenizer

    def __getattr__(self, name):  # steps_per_epoch, batch_size, ...
        return getattr(self.pipeline, name)

    def _tokenize(self, batch: dict) -> dict:
        if "caption" not in batch:
            raise ValueError(f"a text-conditional model needs captions, but the dataset's batches "
                             f"have keys {sorted(batch)}; caption datasets: "
                             f"{list(CAPTION_DATASETS)}")
        batch = dict(batch)
        batch["tokens"] = self.tokenizer([str(c) for c in batch.pop("caption")])
        return batch

    def batch(self, step: int) -> dict:
        return self._tokenize(self.pipeline.batch(step))

    def iterate(self, start_step: int = 0) -> Iterator[dict]:
        for b in self.pipeline.iterate(start_step):
            yield self._tokenize(b)

    def epoch(self) -> Iterator[dict]:
        for b in self.pipeline.epoch():
            yield self._tokenize(b)


def drop_captions(key: jax.Array, tokens: jax.Array, null_tokens: jax.Array,
                  p: float) -> jax.Array:
    """Classifier-free guidance training (Ho & Salimans 2022) on text: each example's tokens
    (B, L) are replaced by the empty prompt's ``null_tokens`` (L,) with probability ``p``,
    independently per example, from ``key`` (the loss's key: deterministic in the step key)."""
    if p <= 0:
        return tokens
    drop = jax.random.uniform(key, (tokens.shape[0],)) < p
    return jnp.where(drop[:, None], jnp.asarray(null_tokens, tokens.dtype)[None], tokens)


data_lib.register_dataset(data_lib.DatasetRecipe("DIGITS_TEXT", digits_text_source,
                                                 num_classes=10))
data_lib.register_dataset(data_lib.DatasetRecipe("CAPTION_FOLDER", caption_folder_source,
                                                 needs_path=True))
data_lib.register_dataset(data_lib.DatasetRecipe("TFDS_TEXT", tfds_caption_source,
                                                 needs_path=True))

__all__ = ["DIGIT_WORDS", "DIGIT_TRAIN_TEMPLATES", "DIGIT_HELDOUT_TEMPLATES", "digit_caption",
           "DigitsCaptionSource", "digits_text_source", "CaptionedImageSource",
           "read_caption_folder", "caption_folder_source", "TFDSCaptionSource", "parse_tfds_path",
           "tfds_caption_source", "tfds_caption_recipe", "CAPTION_DATASETS", "has_captions",
           "ByteTokenizer", "WordTokenizer", "digit_vocab", "HFTokenizer", "TOKENIZERS",
           "get_tokenizer", "TokenizedPipeline", "drop_captions"]
