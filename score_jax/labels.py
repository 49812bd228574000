"""Class labels for sampling class-conditional models: drawn, fixed, explicit (sample.py
``--labels``), a grid with one row per class (``--per_class``, training snapshots).

The null label of classifier-free guidance is ``num_classes``; labels are drawn with their own
key stream (``_LABEL_STREAM`` folded into the sampling key) so the draws of unconditional models
keep theirs.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_LABEL_STREAM = 0x1ABE1  # labels use their own keys: the draws of unconditional models keep theirs


def class_labels(key: Array, n: int, num_classes: int | None,
                 class_label: int | None = None) -> Array | None:
    """Labels for sampling a class-conditional model: None for an unconditional model;
    ``class_label`` repeated if given (``num_classes`` is the null label); otherwise drawn
    uniformly from [0, num_classes) (never the null label). Shape (n,) int32."""
    if num_classes is None:
        return None
    if class_label is not None:
        if not 0 <= int(class_label) <= int(num_classes):
            raise ValueError(f"class_label={class_label} invalid; valid: 0..{num_classes - 1} "
                             f"or {num_classes} (the null label)")
        return jnp.full((n,), int(class_label), jnp.int32)
    return jax.random.randint(key, (n,), 0, int(num_classes), jnp.int32)



def check_labels(labels: Any, num_classes: int | None, n: int | None = None) -> np.ndarray:
    """Explicit sampling labels as an (N,) int32 numpy array; ValueError (before anything is
    compiled) for an unconditional model, non-integers, a wrong count ``n`` or a label outside
    [0, num_classes)."""
    if num_classes is None:
        raise ValueError("labels were given but the model is not class-conditional (set "
                         "config.model.num_classes)")
    arr = np.asarray(labels)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"labels must be a 1-D list of integers; got {labels!r}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{arr.shape[0]} labels given for {n} samples; give one per sample")
    bad = sorted({int(v) for v in arr if not 0 <= int(v) < int(num_classes)})
    if bad:
        raise ValueError(f"labels {bad} out of range; valid labels: 0..{int(num_classes) - 1} "
                         f"(num_classes={num_classes})")
    return arr.astype(np.int32)


def parse_labels(text: str, num_classes: int | None) -> np.ndarray:
    """``"3,3,7"`` -> array([3, 3, 7]) (sample.py ``--labels``); ValueError for an empty list,
    a non-integer entry or a label outside [0, num_classes)."""
    items = [v.strip() for v in str(text).split(",") if v.strip()]
    if not items:
        raise ValueError(f"--labels={text!r} is empty; give comma-separated class labels, e.g. "
                         f"--labels=3,3,7")
    try:
        values = [int(v) for v in items]
    except ValueError:
        raise ValueError(f"--labels={text!r} must be comma-separated integers, e.g. "
                         f"--labels=3,3,7") from None
    return check_labels(np.asarray(values, np.int64), num_classes)


def grid_labels(num_classes: int, per_class: int) -> np.ndarray:
    """Labels of a grid with one row per class: [0]*per_class + [1]*per_class + ...; lay the
    images out with ``nrow=per_class`` (`image_grid`). Shape (num_classes * per_class,) int32."""
    if int(per_class) < 1:
        raise ValueError(f"per_class={per_class} must be a positive integer")
    return np.repeat(np.arange(int(num_classes), dtype=np.int32), int(per_class))


def _batch_labels(labels: np.ndarray, i: int, bs: int) -> Array:
    y = labels[i * bs:(i + 1) * bs]
    if len(y) < bs:  # the padded tail of the last batch (cut afterwards)
        y = np.concatenate([y, np.full(bs - len(y), y[0] if len(y) else 0, np.int32)])
    return jnp.asarray(y, jnp.int32)



def snapshot_labels(num_classes: int | None, num_samples: int) -> tuple[np.ndarray | None, int]:
    """Labels of a training snapshot: for a class-conditional model one row per class,
    ``per_class = max(1, num_samples // num_classes)`` samples each (`grid_labels`); returns
    ``(labels, nrow)`` with nrow the images per grid row (None, ceil(sqrt(N))-style default for
    an unconditional model: ``(None, 0)``)."""
    if num_classes is None:
        return None, 0
    per_class = max(1, int(num_samples) // int(num_classes))
    return grid_labels(num_classes, per_class), per_class


__all__ = ["class_labels", "check_labels", "parse_labels", "grid_labels", "snapshot_labels"]
