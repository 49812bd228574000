"""Score any samples from the command line: ``python -m score_jax.evaluation.score``.

    python -m score_jax.evaluation.score --samples samples.npz \\
        --inception pt_inception-2015-12-05-6726825d.pth \\
        --ref_stats cifar10_stats.npz --resize tf1

FID / IS / KID of a ``samples.npz`` (``sample.py``'s output, or any ``.npz`` with an image array)
or a folder of PNG / JPEG files, against reference statistics (``--ref_stats``: a ``save_stats``
file, or score_sde's ``pool_3``-only ``*_stats.npz``) or reference images (``--ref_images``: an
``.npz`` / folder of uint8 images, run through the same Inception in the same convention).

* Convention: ``--resize pytorch`` (default; pytorch-fid / TF2 half-pixel bilinear) or ``tf1``
  (TF1 ResizeBilinear of TTUR / TF-GAN / score_sde). The statistics must be of the same one
  (``metrics.check_stats_resize``); a statistics file that does not record its convention needs
  ``--ref_stats_resize``.
* Float samples in [0, 1] are quantised with score_sde's ``np.clip(x * 255, 0, 255)
  .astype(np.uint8)`` (``--quantize floor``, default) or to the nearest level (``round``);
  uint8 samples are used as they are; other ranges are refused.
* The samples are read in batches (`iter_samples`: an ``.npz`` member is streamed, host memory
  O(batch)) and fed to the Inception with the calls of one array (`InceptionStream`).
* The numbers are printed and merged into ``metrics.json`` (``--out``; default beside the
  samples), keeping the keys already there (e.g. ``sample.py``'s), with the convention, the
  quantisation and the sample count.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from score_jax.cli_args import ArgumentParser
from score_jax.evaluation.metrics import (
    RESIZE_CONVENTIONS,
    check_image_range,
    check_stats_resize,
    load_stats,
    metrics_report,
)

QUANTIZE_CHOICES = ("floor", "round")


def load_samples(path: str, *, key: str | None = None, quantize: str = "floor") -> np.ndarray:
    """uint8 ``(N, H, W, C)`` samples from an ``.npz`` or an image folder.

    Float arrays must lie in [0, 1] (``check_image_range``) and are quantised: ``"floor"`` is
    score_sde's ``np.clip(x * 255, 0, 255).astype(np.uint8)``, ``"round"`` the nearest level.

    Raises:
      ValueError: unknown ``quantize``, a bad shape, or values outside uint8 / [0, 1].
    """
    from score_jax.evaluation import stats as stats_lib

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if os.path.isdir(path):
        files = stats_lib.list_image_files(path)
        return np.concatenate(list(stats_lib.iter_folder_batches(files, 256)))
    with np.load(path, allow_pickle=False) as f:
        if key is None:
            key = next((k for k in ("samples", "images", "x", "arr_0") if k in f.files),
                       f.files[0] if len(f.files) == 1 else None)
            if key is None:
                raise ValueError(f"{path!r} holds several arrays {f.files}; choose one with --key")
        if key not in f.files:
            raise ValueError(f"{path!r} has no array {key!r} (arrays: {f.files})")
        x = f[key]
    if np.issubdtype(x.dtype, np.floating):
        x = quantize_images(x, quantize, name=path)
    return stats_lib._as_nhwc_uint8(x, path)


def iter_samples(path: str, *, batch_size: int, key: str | None = None, quantize: str = "floor",
                 max_images: int | None = None) -> tuple[int, Iterator[np.ndarray]]:
    """`load_samples` batch by batch: ``(N, batches of uint8 (b, H, W, C))``, the first
    ``max_images`` rows, read from the ``.npz`` (``stats.iter_npz_images``) or the folder as
    they are needed, so host memory is O(batch) whatever N. The rows equal `load_samples`'.
    The first batch is read and checked here (a wrong range or shape is refused before any
    Inception is built); a later bad batch raises when it is reached.

    Raises:
      ValueError: unknown ``quantize``, no such array, several arrays without ``key``.
    """
    from score_jax.evaluation import stats as stats_lib

    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    if os.path.isdir(path):
        files = stats_lib.list_image_files(path)[:max_images]
        return len(files), stats_lib.iter_folder_batches(files, batch_size)
    n, raw = stats_lib.iter_npz_images(path, batch_size, key, max_images=max_images,
                                       candidates=("samples", "images", "x", "arr_0"))

    def checked(x: np.ndarray) -> np.ndarray:
        if np.issubdtype(x.dtype, np.floating):
            x = quantize_images(x, quantize, name=path)
        return stats_lib._as_nhwc_uint8(x, path)

    first = next(raw, None)
    first = None if first is None else checked(first)

    def batches() -> Iterator[np.ndarray]:
        if first is not None:
            yield first
        for x in raw:
            yield checked(x)

    return n, batches()


def quantize_images(x: np.ndarray, quantize: str = "floor", *, name: str = "samples"
                    ) -> np.ndarray:
    """Float images in [0, 1] -> uint8: ``"floor"`` is score_sde's ``np.clip(x * 255, 0,
    255).astype(np.uint8)``, ``"round"`` the nearest level (``np.round``; DiT's
    ``sample_ddp.py`` truncates ``127.5 x + 128`` on [-1, 1]: the nearest level, ties up).

    Raises:
      ValueError: unknown ``quantize``, or values outside [0, 1] (``check_image_range``).
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize must be one of {QUANTIZE_CHOICES}, got {quantize!r}")
    check_image_range(x, name=name)
    u = np.clip(np.asarray(x, np.float64) * 255.0, 0.0, 255.0)
    return (np.floor(u) if quantize == "floor" else np.round(u)).astype(np.uint8)


def load_reference(*, resize: str, ref_stats: str | None = None, ref_images: str | None = None,
                   ref_key: str | None = None, ref_stats_resize: str | None = None,
                   max_images: int | None = None) -> tuple[dict | None, np.ndarray | None]:
    """``(reference statistics, None)`` from ``ref_stats`` (checked to be in convention
    ``resize``: `check_stats_resize`, before any Inception is built) or ``(None, uint8 images)``
    from ``ref_images`` (an ``.npz`` or a folder). Exactly one must be given.

    Raises:
      ValueError: neither or both, or statistics of another convention.
      FileNotFoundError: a path that does not exist.
    """
    from score_jax.evaluation import stats as stats_lib

    if (ref_stats is None) == (ref_images is None):
        raise ValueError(f"give exactly one of ref_stats (got {ref_stats!r}) and ref_images "
                         f"(got {ref_images!r})")
    path = ref_stats or ref_images
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference {path!r} does not exist")
    if ref_stats is not None:
        reference = load_stats(ref_stats, resize_if_missing=ref_stats_resize)
        check_stats_resize(reference, resize, source=f"reference statistics {ref_stats!r}")
        return reference, None
    if os.path.isdir(ref_images):
        files = stats_lib.list_image_files(ref_images)[:max_images]
        return None, np.concatenate(list(stats_lib.iter_folder_batches(files, 256)))
    return None, stats_lib.load_npz_images(ref_images, ref_key)[:max_images]


def score_images(images: np.ndarray, inception_fn, *, reference: dict[str, Any] | None = None,
                 ref_images: np.ndarray | None = None, resize: str) -> dict[str, Any]:
    """FID / IS / KID of uint8 ``images`` against ``reference`` (``load_stats`` dict) or
    ``ref_images`` (both through ``inception_fn``, whose convention is ``resize``).
    `InceptionStream` + `score_features` give the same numbers from batches."""
    reference = reference_statistics(inception_fn, reference=reference, ref_images=ref_images,
                                     resize=resize)
    pool, logits = inception_fn(images)
    return metrics_report(pool, logits, reference)


def reference_statistics(inception_fn, *, reference: dict[str, Any] | None = None,
                         ref_images: np.ndarray | None = None, resize: str) -> dict[str, Any]:
    """``reference`` (checked to be in convention ``resize``), or the statistics of uint8
    ``ref_images`` through ``inception_fn`` (``mu``, ``sigma``, ``pool_3``, ``resize``).

    Raises:
      ValueError: neither or both given, or statistics of another convention.
    """
    from score_jax.evaluation.metrics import StreamingStats

    if (reference is None) == (ref_images is None):
        raise ValueError("give exactly one of reference statistics or reference images")
    if reference is None:
        feats, _ = inception_fn(ref_images)  # InceptionFeatures runs it in batch_size chunks
        stats = StreamingStats(feats.shape[1]).update(feats)
        reference = {"mu": stats.mean, "sigma": stats.covariance, "pool_3": feats,
                     "resize": resize}
    check_stats_resize(reference, resize)
    return reference


def score_features(pool: np.ndarray, logits: np.ndarray, inception_fn, *,
                   reference: dict[str, Any] | None = None, ref_images: np.ndarray | None = None,
                   resize: str) -> dict[str, Any]:
    """`score_images` from the samples' features (``pool`` (N, 2048), ``logits`` (N, 1008),
    e.g. `InceptionStream.features`)."""
    reference = reference_statistics(inception_fn, reference=reference, ref_images=ref_images,
                                     resize=resize)
    return metrics_report(pool, logits, reference)


class InceptionStream:
    """Inception features of images that arrive in batches of any size, with the calls
    ``inception_fn(all images)`` would make: images are buffered (uint8, fewer than
    ``batch_size`` rows) and passed on in calls of exactly ``batch_size`` rows, the rest in one
    last call (`features`), as ``InceptionFeatures`` chunks one array, so the features equal
    those of the whole array bit for bit. Host memory: the buffer plus the features (N x (2048
    + 1008) float32, ~0.6 GB for 50,000 samples, which FID / IS / KID take); the images are not
    kept.

    Args:
      inception_fn: ``images -> (pool_3, logits)`` (``InceptionFeatures`` or a stand-in).
      batch_size: rows per call (``InceptionFeatures.batch_size``; None: that attribute).
    """

    def __init__(self, inception_fn, batch_size: int | None = None):
        batch_size = getattr(inception_fn, "batch_size", None) if batch_size is None \
            else batch_size
        if batch_size is None or int(batch_size) < 1:
            raise ValueError(f"batch_size={batch_size!r} must be a positive int (the rows per "
                             f"Inception call)")
        self.inception_fn, self.batch_size = inception_fn, int(batch_size)
        self._buffer: list[np.ndarray] = []
        self._buffered = 0
        self._pools: list[np.ndarray] = []
        self._logits: list[np.ndarray] = []

    def add(self, images: np.ndarray) -> None:
        """Append a batch of uint8 ``(b, H, W, C)`` images."""
        self._buffer.append(np.asarray(images))
        self._buffered += len(images)
        if self._buffered >= self.batch_size:
            x = np.concatenate(self._buffer)
            full = len(x) // self.batch_size * self.batch_size
            self._run(x[:full])
            self._buffer, self._buffered = [x[full:]], len(x) - full

    def _run(self, x: np.ndarray) -> None:
        if len(x):
            pool, logits = self.inception_fn(x)
            self._pools.append(np.asarray(pool))
            self._logits.append(np.asarray(logits))

    def features(self) -> tuple[np.ndarray, np.ndarray]:
        """``(pool_3 (N, 2048), logits (N, 1008))`` of all images added (runs the rest)."""
        if self._buffered:
            self._run(np.concatenate(self._buffer))
            self._buffer, self._buffered = [], 0
        if not self._pools:
            raise ValueError("no images were added")
        return np.concatenate(self._pools), np.concatenate(self._logits)


def write_metrics(path: str, values: dict[str, Any]) -> str:
    """Merges ``values`` into the JSON object at ``path`` (created if absent), atomically."""
    from score_jax.files import atomic_write_json

    old: dict[str, Any] = {}
    if os.path.exists(path):
        with open(path) as f:
            old = json.load(f)
    old.update(values)
    return atomic_write_json(path, old, indent=2, sort_keys=False)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(
        prog="python -m score_jax.evaluation.score",
        description="FID / IS / KID of a samples .npz or image folder against reference "
                    "statistics or reference images.")
    parser.add_argument("--samples", required=True, help="samples .npz (uint8 or float in "
                        "[0, 1]) or a folder of PNG / JPEG files")
    parser.add_argument("--key", default=None, help="array name inside the samples .npz")
    ref = parser.add_mutually_exclusive_group(required=True)
    ref.add_argument("--ref_stats", help="reference statistics .npz (save_stats / score_sde)")
    ref.add_argument("--ref_images", help="reference uint8 images: .npz or folder")
    parser.add_argument("--ref_key", default=None, help="array name inside --ref_images")
    parser.add_argument("--ref_stats_resize", choices=RESIZE_CONVENTIONS, default=None,
                        help="convention of a --ref_stats file that does not record one")
    parser.add_argument("--inception", required=True,
                        help="local pt_inception-2015-12-05-6726825d.pth or its .npz")
    parser.add_argument("--inception_sha256", default=None,
                        help="expected sha256 of --inception (default: pytorch-fid's file); "
                        "'none' skips the check")
    parser.add_argument("--resize", choices=RESIZE_CONVENTIONS, default="pytorch",
                        help="Inception resize convention (default pytorch; tf1 = TTUR / TF-GAN "
                        "/ score_sde)")
    parser.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="floor",
                        help="float samples -> uint8 (default floor, score_sde's)")
    parser.add_argument("--batch_size", type=int, default=200)
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--out", default=None,
                        help="metrics.json to merge into (default: beside --samples)")
    args = parser.parse_args(argv)
    for flag, path in (("--samples", args.samples), ("--ref_stats", args.ref_stats),
                       ("--ref_images", args.ref_images)):
        if path is not None and not os.path.exists(path):  # one line, not a traceback
            parser.error(f"{flag} {path!r} does not exist")

    import jax

    from score_jax.evaluation import inception as inception_lib

    total, batches = iter_samples(args.samples, batch_size=256, key=args.key,
                                  quantize=args.quantize, max_images=args.max_images)
    reference, ref_images = load_reference(  # checked before the Inception is built
        resize=args.resize, ref_stats=args.ref_stats, ref_images=args.ref_images,
        ref_key=args.ref_key, ref_stats_resize=args.ref_stats_resize, max_images=args.max_images)
    sha = args.inception_sha256
    sha = inception_lib.PT_INCEPTION_SHA256 if sha is None else (
        None if sha.lower() == "none" else sha)
    n_dev = jax.local_device_count()
    batch_size = max(n_dev, args.batch_size // n_dev * n_dev)
    inception_fn = inception_lib.get_inception_fn(args.inception, batch_size=batch_size,
                                                  resize=args.resize, sha256=sha)
    stream = InceptionStream(inception_fn, batch_size)  # the calls of one array, O(batch)
    for batch in batches:
        stream.add(batch)
    pool, logits = stream.features()
    values = score_features(pool, logits, inception_fn, reference=reference,
                            ref_images=ref_images, resize=args.resize)
    values.update(resize=args.resize, quantize=args.quantize,
                  reference=args.ref_stats or args.ref_images)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.samples))
                                   if not os.path.isdir(args.samples)
                                   else os.path.abspath(args.samples), "metrics.json")
    write_metrics(out, values)
    print(json.dumps(values, indent=2))
    print(f"wrote {out}")
    return values


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line: `main`, with bad input (``ValueError``, ``FileNotFoundError``,
    ``ImportError``: a wrong convention, a wrong Inception digest, torch missing for a ``.pth``)
    reported as one ``error:`` line and exit status 1 instead of a traceback."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {type(e).__name__}: {e}") from None


if __name__ == "__main__":
    cli()
