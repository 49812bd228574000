"""Reference FID statistics of a dataset: ``python -m score_jax.evaluation.stats``.

    python -m score_jax.evaluation.stats --images cifar10_train.npz \
        --inception pt_inception-2015-12-05-6726825d.pth --out assets/stats/cifar10_stats.npz

Reads uint8 images (an ``.npz`` array of shape (N, H, W, C), or a folder of PNG / JPEG files, or a
prepared TFDS dataset with ``--tfds NAME --split train``) batch by batch (an ``.npz`` is streamed:
`iter_npz_images`), runs them through the FID Inception in batches sharded over all devices,
accumulates the pool_3 mean and covariance in float64 (``StreamingStats``) and writes ``mu``,
``sigma``, ``num_samples``, ``resize`` (the ``--resize`` convention, ``pytorch`` or ``tf1``)
(and, with ``--save_features``, the ``pool_3`` rows that KID needs) with ``save_stats``.

Input convention: uint8 in [0, 255]; integer arrays holding 0..255 are converted to uint8, floats
and other ranges are refused with the range found (a float array could be [0, 1] or [0, 255] or
[-1, 1]: quantise it explicitly).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np

from score_jax.cli_args import ArgumentParser, existing_path
from score_jax.evaluation.metrics import check_uint8_range, image_value_range

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _as_nhwc_uint8(images: np.ndarray, source: str) -> np.ndarray:
    if images.ndim == 3:  # (N, H, W) greyscale
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"{source}: images must be (N, H, W, C), got shape {images.shape}")
    if images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)  # NCHW -> NHWC
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"{source}: images need 1 or 3 channels, got shape {images.shape}")
    if np.issubdtype(images.dtype, np.integer):
        return check_uint8_range(images, name=source)
    lo, hi = image_value_range(images)
    raise ValueError(f"{source}: images must be uint8 (0..255), got dtype {images.dtype} with "
                     f"values in [{lo:g}, {hi:g}]; quantise float images in [0, 1] with "
                     "np.clip(x * 255, 0, 255).astype(np.uint8)")


def load_npz_images(path: str, key: str | None = None) -> np.ndarray:
    """The uint8 image array stored in an ``.npz`` (``key``, or the only / first array)."""
    with np.load(path, allow_pickle=False) as f:
        if key is None:
            for candidate in ("images", "samples", "x", "arr_0"):
                if candidate in f.files:
                    key = candidate
                    break
            else:
                if len(f.files) != 1:
                    raise ValueError(f"{path!r} holds several arrays {f.files}; choose one with "
                                     "--key")
                key = f.files[0]
        if key not in f.files:
            raise ValueError(f"{path!r} has no array {key!r} (arrays: {f.files})")
        return _as_nhwc_uint8(f[key], path)


def npz_array_key(path: str, key: str | None = None,
                  candidates: Sequence[str] = ("images", "samples", "x", "arr_0")) -> str:
    """The array of an ``.npz`` that holds the images: ``key``, else the first of
    ``candidates`` present, else the only array (only the zip's names are read).

    Raises:
      ValueError: no array ``key``, or several arrays and none of ``candidates``.
    """
    import zipfile

    with zipfile.ZipFile(path) as zf:
        files = [n[:-len(".npy")] for n in zf.namelist() if n.endswith(".npy")]
    if key is None:
        key = next((c for c in candidates if c in files), files[0] if len(files) == 1 else None)
        if key is None:
            raise ValueError(f"{path!r} holds several arrays {files}; choose one with --key")
    if key not in files:
        raise ValueError(f"{path!r} has no array {key!r} (arrays: {files})")
    return key


def iter_npz_images(path: str, batch_size: int, key: str | None = None, *,
                    max_images: int | None = None,
                    candidates: Sequence[str] = ("images", "samples", "x", "arr_0")
                    ) -> tuple[int, Iterator[np.ndarray]]:
    """``(N, batches)`` of the image array of an ``.npz`` (`npz_array_key`), read from the file
    in batches of ``batch_size`` rows as they are needed (``sample_io.iter_npz_rows``: host
    memory O(batch), not the whole array), cut to ``max_images``. The batches are the raw
    array's rows (any dtype): check them per batch (``_as_nhwc_uint8`` /
    ``score.quantize_images``)."""
    from score_jax.sample_io import iter_npz_rows, npz_array_shape

    key = npz_array_key(path, key, candidates)
    n = npz_array_shape(path, key)[0]
    n = n if max_images is None else min(n, max(0, int(max_images)))

    def batches() -> Iterator[np.ndarray]:
        left = n
        for rows in iter_npz_rows(path, key, batch_size):
            if left <= 0:
                return
            yield rows[:left]
            left -= len(rows)

    return n, batches()


def list_image_files(folder: str) -> list[str]:
    """Image files directly or recursively under ``folder``, sorted."""
    files = sorted(
        os.path.join(root, name) for root, _, names in os.walk(folder) for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) under {folder!r}")
    return files


def iter_folder_batches(files: Sequence[str], batch_size: int) -> Iterator[np.ndarray]:
    """Batches of RGB uint8 images read with PIL; all images must share one size."""
    from PIL import Image

    size = None
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start:start + batch_size]:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), np.uint8)
            if size is None:
                size = arr.shape
            elif arr.shape != size:
                raise ValueError(f"{path!r} has shape {arr.shape}, but earlier images have "
                                 f"{size}; resize the folder to one size first")
            batch.append(arr)
        yield np.stack(batch)


def iter_tfds_batches(name: str, split: str, batch_size: int, data_dir: str | None
                      ) -> tuple[int, Iterator[np.ndarray]]:
    """(num_examples, batches) of the ``image`` feature of a TFDS dataset prepared offline."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise RuntimeError("--tfds needs tensorflow_datasets installed") from e
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        raise RuntimeError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r} and nothing is "
            "downloaded here; prepare it where there is network (`tfds build "
            f"{name}`) and pass --tfds_data_dir, or export the images to an .npz / folder")
    source = builder.as_data_source(split=split)
    n = len(source)

    def batches() -> Iterator[np.ndarray]:
        for start in range(0, n, batch_size):
            items = [source[i] for i in range(start, min(n, start + batch_size))]
            yield _as_nhwc_uint8(np.stack([np.asarray(it["image"]) for it in items]),
                                 f"tfds:{name}")

    return n, batches()


def compute_stats(batches: Iterator[np.ndarray], inception_fn, *, total: int | None = None,
                  keep_features: bool = False, progress: bool = True):
    """Runs ``inception_fn`` over ``batches`` and accumulates pool_3 statistics.

    Returns:
      ``(StreamingStats, features or None)``.
    """
    from tqdm import tqdm

    from score_jax.evaluation.metrics import StreamingStats

    stats = StreamingStats(2048)
    kept = []
    with tqdm(total=total, unit="img", disable=not progress, desc="inception") as bar:
        for batch in batches:
            pool, _ = inception_fn(batch)
            stats.update(pool)
            if keep_features:
                kept.append(pool)
            bar.update(batch.shape[0])
    if stats.count < 2:
        raise ValueError(f"need at least 2 images for a covariance, got {stats.count}")
    return stats, (np.concatenate(kept) if keep_features else None)


def main(argv: Sequence[str] | None = None) -> None:
    parser = ArgumentParser(
        prog="python -m score_jax.evaluation.stats",
        description="Compute FID reference statistics (mu, sigma of Inception pool_3).")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=existing_path, help="an .npz of uint8 (N, H, W, C) images, or a folder of "
                     "PNG / JPEG files")
    src.add_argument("--tfds", metavar="NAME", help="a TFDS dataset prepared offline")
    parser.add_argument("--split", default="train", help="TFDS split (default: train)")
    parser.add_argument("--tfds_data_dir", default=None)
    parser.add_argument("--key", default=None, help="array name inside the .npz")
    parser.add_argument("--inception", required=True,
                        help="local path of pt_inception-2015-12-05-6726825d.pth or its .npz")
    parser.add_argument("--inception_sha256", default=None,
                        help="expected sha256 of --inception (default: pytorch-fid's "
                        "pt_inception-2015-12-05-6726825d.pth); 'none' skips the check")
    parser.add_argument("--resize", choices=("pytorch", "tf1"), default="pytorch",
                        help="Inception resize convention, stored in the output (default "
                        "pytorch: pytorch-fid / TF2; tf1: TF1 ResizeBilinear of TTUR / TF-GAN / "
                        "score_sde). Samples are only comparable with statistics of the same one.")
    parser.add_argument("--out", required=True, help="output .npz")
    parser.add_argument("--batch_size", type=int, default=200,
                        help="global batch per Inception call (default 200)")
    parser.add_argument("--max_images", type=int, default=None)
    parser.add_argument("--save_features", action="store_true",
                        help="also store the pool_3 rows (needed for KID)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)

    import jax

    from score_jax.evaluation.inception import get_inception_fn
    from score_jax.evaluation.metrics import save_stats

    n_dev = jax.local_device_count()
    batch_size = max(n_dev, args.batch_size // n_dev * n_dev)
    limit = args.max_images
    if args.tfds:
        total, batches = iter_tfds_batches(args.tfds, args.split, batch_size, args.tfds_data_dir)
    elif os.path.isdir(args.images):
        files = list_image_files(args.images)[:limit]
        total, batches = len(files), iter_folder_batches(files, batch_size)
    else:  # read batch by batch: host memory O(batch), the batches iter_chunks would give
        total, raw = iter_npz_images(args.images, batch_size, args.key, max_images=limit)
        batches = (_as_nhwc_uint8(b, args.images) for b in raw)
    if limit is not None:
        total = min(total, limit)

        def _limited(it, remaining=total):
            for b in it:
                if remaining <= 0:
                    return
                yield b[:remaining]
                remaining -= b.shape[0]

        batches = _limited(batches)

    from score_jax.evaluation.inception import PT_INCEPTION_SHA256
    sha = args.inception_sha256
    sha = PT_INCEPTION_SHA256 if sha is None else (None if sha.lower() == "none" else sha)
    inception_fn = get_inception_fn(args.inception, batch_size=batch_size, resize=args.resize,
                                    sha256=sha)
    stats, features = compute_stats(batches, inception_fn, total=total,
                                    keep_features=args.save_features,
                                    progress=not args.no_progress)
    save_stats(args.out, *stats.stats(), features=features, num_samples=stats.count,
               resize=args.resize)
    print(f"wrote statistics of {stats.count} images ({args.resize} resize) to {args.out}")


def cli(argv: Sequence[str] | None = None) -> None:
    """The command line: `main`, with bad input (``ValueError``, ``FileNotFoundError``,
    ``ImportError``) reported as one ``error:`` line and exit status 1, not a traceback."""
    try:
        main(argv)
    except (ValueError, FileNotFoundError, ImportError) as e:
        raise SystemExit(f"error: {type(e).__name__}: {e}") from None


if __name__ == "__main__":
    cli()
