"""Data pipelines: the embedded digits dataset, TFDS datasets and the FFHQ / CelebA-HQ TFRecords.

Every pipeline yields host-local numpy batches ``{"image": (b, H, W, C) float32 in [0, 1],
"label": (b,) int32}`` with ``b = global_batch / process_count``: each process reads its own part
of the data (``tfds.even_splits`` / a strided slice). ``parallel.to_global`` lays a batch out over
the device mesh. Preprocessing follows the reference ``datasets.py``:

- CIFAR-10, SVHN: resize to ``image_size`` (antialiased bilinear);
- CelebA: central crop 140 x 140, then resize;
- LSUN: resize the short side to ``image_size`` and central-crop (resize directly for 128);
- FFHQ / CelebA-HQ TFRecords: the stored ``(shape, data)`` uint8 records at the target size;
- random horizontal flip (training, ``random_flip``), uniform dequantisation
  ``(255 x + u) / 256`` (``uniform_dequantization``);
- centring to [-1, 1] is the *scaler* (``get_data_scaler``), applied on device.

Exact resume: random-access pipelines (embedded data, ``tfds.data_source``) compute the batch of
step ``s`` from ``(seed, s)`` alone: a seeded permutation per epoch and per-step flip /
dequantisation noise. The sequential TFRecord pipeline skips the examples already consumed;
``python -m score_jax.records convert`` rewrites those TFRecords once as ArrayRecord, which
``data.tfrecords_path=FILE.array_record`` reads by index (resume O(1), no TensorFlow). Training
runs these pipelines on grain (``score_jax.data_loader``: worker processes, device prefetch).
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Callable, Iterator

import numpy as np

Batch = dict[str, np.ndarray]

TFDS_DATASETS = {"CIFAR10": "cifar10", "SVHN": "svhn_cropped", "CELEBA": "celeb_a", "LSUN": "lsun"}
TFDS_SPLITS = {"CIFAR10": ("train", "test"), "SVHN": ("train", "test", "extra"),
               "CELEBA": ("train", "validation", "test"), "LSUN": ("train", "validation")}
TFRECORD_DATASETS = ("FFHQ", "CELEBAHQ")
EMBEDDED_DATASETS = ("DIGITS",)
DATASETS = EMBEDDED_DATASETS + tuple(TFDS_DATASETS) + TFRECORD_DATASETS
LSUN_CATEGORIES = ("bedroom", "church_outdoor", "classroom", "conference_room", "dining_room",
                   "kitchen", "living_room", "restaurant", "tower")


class DatasetNotAvailableError(RuntimeError):
    """The dataset is not prepared locally; the message says how to prepare it."""


# ----------------------------------------------------------------------------------------------
# Scalers and preprocessing (numpy, host side)
# ----------------------------------------------------------------------------------------------
def get_data_scaler(centered: bool) -> Callable:
    """Data in [0, 1] -> model range: 2x - 1 if ``centered`` else identity (reference)."""
    return (lambda x: x * 2.0 - 1.0) if centered else (lambda x: x)


def get_data_inverse_scaler(centered: bool) -> Callable:
    """Model range -> [0, 1]: (x + 1) / 2 if ``centered`` else identity (reference)."""
    return (lambda x: (x + 1.0) / 2.0) if centered else (lambda x: x)


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Antialiased bilinear resize of uint8 / float images (N, H, W, C) to (N, size, size, C)."""
    from PIL import Image

    if images.shape[1] == size and images.shape[2] == size:
        return images
    out = []
    for im in images:
        ch = [np.asarray(Image.fromarray(np.asarray(im[..., c], np.float32), mode="F").resize(
            (size, size), Image.BILINEAR, reducing_gap=None)) for c in range(im.shape[-1])]
        out.append(np.stack(ch, axis=-1))
    return np.stack(out).astype(np.float32)


def central_crop(images: np.ndarray, size: int) -> np.ndarray:
    """Central size x size crop of (N, H, W, C)."""
    h, w = images.shape[1:3]
    top, left = (h - size) // 2, (w - size) // 2
    return images[:, top:top + size, left:left + size]


def resize_small(images: np.ndarray, size: int) -> np.ndarray:
    """Resize (one image at a time) so that the short side is ``size``, keeping the aspect ratio."""
    from PIL import Image

    out = []
    for im in images:
        h, w = im.shape[:2]
        r = size / min(h, w)
        nh, nw = max(size, round(h * r)), max(size, round(w * r))
        pil = Image.fromarray(np.asarray(im, np.uint8).squeeze(-1) if im.shape[-1] == 1
                              else np.asarray(im, np.uint8))
        arr = np.asarray(pil.resize((nw, nh), Image.BICUBIC), np.float32)
        out.append(arr[..., None] if arr.ndim == 2 else arr)
    return out


def augment(images: np.ndarray, rng: np.random.Generator, *, random_flip: bool,
            uniform_dequantization: bool) -> np.ndarray:
    """Random horizontal flip and uniform dequantisation of images in [0, 1] (reference order:
    flip, then dequantise)."""
    if random_flip:
        flip = rng.random(images.shape[0]) < 0.5
        images = np.array(images)  # a copy: the caller's array stays as it was
        images[flip] = images[flip, :, ::-1]  # the flipped ones only (not a where over all)
    if uniform_dequantization:
        images = (images * 255.0 + rng.random(images.shape, dtype=np.float32)) / 256.0
    return images.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------------------------
# Random-access datasets with a deterministic, resumable order
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass
class RandomAccessPipeline:
    """Batches of a random-access source, a pure function of ``(seed, step)``.

    Args:
      source: ``len(source)`` and ``source[list_of_indices] -> (images (n,H,W,C) in [0,1], labels)``
        over this process's part of the data, or ``(images, labels, fields)`` with ``fields`` a
        dict of more per-example arrays (e.g. ``"caption"``) that the batch carries.
      batch_size: examples per batch on this process.
      seed: seed of the per-epoch permutations and the augmentation noise.
      shuffle: permute every epoch (training) or read in order (evaluation).
      random_flip / uniform_dequantization: augmentations.
      process_index: mixes into the augmentation seed so that processes draw different noise.
    """

    source: Any
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    random_flip: bool = False
    uniform_dequantization: bool = False
    process_index: int = 0

    def __post_init__(self):
        if len(self.source) < self.batch_size:
            raise ValueError(f"the dataset part on this process has {len(self.source)} examples, "
                             f"fewer than the per-process batch size {self.batch_size}")
        self.steps_per_epoch = len(self.source) // self.batch_size
        self._perm_cache: tuple[int, np.ndarray] | None = None

    def _perm(self, epoch: int) -> np.ndarray:
        if self._perm_cache is None or self._perm_cache[0] != epoch:
            n = len(self.source)
            p = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
            self._perm_cache = (epoch, p)
        return self._perm_cache[1]

    def batch(self, step: int) -> Batch:
        """The batch of training step ``step`` (0-based)."""
        epoch, i = divmod(int(step), self.steps_per_epoch)
        idx = self._perm(epoch)[i * self.batch_size:(i + 1) * self.batch_size]
        images, labels, *extra = self.source[np.sort(idx) if not self.shuffle else idx]
        rng = np.random.default_rng([self.seed, self.process_index, int(step), 1])
        images = augment(np.asarray(images, np.float32), rng, random_flip=self.random_flip,
                         uniform_dequantization=self.uniform_dequantization)
        # a third element: more per-example fields (captions: score_jax.captions)
        return {"image": images, "label": np.asarray(labels, np.int32), **(extra[0] if extra else {})}

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        """Batches of steps start_step, start_step + 1, ... (endless)."""
        step = start_step
        while True:
            yield self.batch(step)
            step += 1

    def epoch(self) -> Iterator[Batch]:
        """One pass in order over this process's part (the remainder is dropped)."""
        for i in range(self.steps_per_epoch):
            yield self.batch(i)


class ArraySource:
    """In-memory images (N, H, W, C) in [0, 1] and labels (N,)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None = None):
        self.images = np.asarray(images, np.float32)
        self.labels = (np.zeros(len(images), np.int32) if labels is None
                       else np.asarray(labels, np.int32))

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx):
        return self.images[idx], self.labels[idx]


def process_slice(n: int, process_index: int, process_count: int) -> slice:
    """The contiguous part of n examples read by one process (as tfds.even_splits splits)."""
    lo = n * process_index // process_count
    hi = n * (process_index + 1) // process_count
    return slice(lo, hi)


# ----------------------------------------------------------------------------------------------
# Embedded dataset: scikit-learn's 8x8 handwritten digits (no download)
# ----------------------------------------------------------------------------------------------
def load_digits_images(image_size: int = 16, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1797 images, 8 x 8, 17 grey levels 0..16) as
    (N, image_size, image_size, 1) float32 in [0, 1] with labels; bilinearly resized from 8 x 8.

    ``split``: "train" (the first 1617 images), "test" (the last 180) or "all".
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    splits = {"train": slice(0, 1617), "test": slice(1617, None), "all": slice(None)}
    if split not in splits:
        raise ValueError(f"digits split {split!r} unknown; valid choices: {sorted(splits)}")
    x, y = x[splits[split]], y[splits[split]]
    if image_size != 8:
        x = np.clip(resize(x, image_size), 0.0, 1.0)
    return x, y


# ----------------------------------------------------------------------------------------------
# Dataset recipes: the one place to add a random-access dataset
# ----------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetRecipe:
    """A random-access dataset that ``config.data.dataset = name`` trains on.

    Fields:
      name: the upper-case ``config.data.dataset`` name.
      source: ``source(split, *, image_size, num_channels, path, process_index, process_count)
        -> (images, labels)`` numpy arrays for THIS process's part of ``split`` ("train" /
        "test"): images (n, image_size, image_size, num_channels) float32 in [0, 1], labels
        (n,) int32 (zeros if unlabelled); use `process_slice` to shard. Or any object with
        ``len()`` and ``source[indices] -> (images, labels)`` (loaded lazily).
      num_classes: label classes (None: unlabelled); class-conditional configs need
        ``model.num_classes >= num_classes``.
      eval_split: the split evaluation reads.
      needs_path: ``config.data.path`` must be set (checked by config validation, before
        anything is compiled).
    """

    name: str
    source: Callable
    num_classes: int | None = None
    eval_split: str = "test"
    needs_path: bool = False


DATASET_RECIPES: dict[str, DatasetRecipe] = {}


def register_dataset(recipe: DatasetRecipe, *, replace: bool = False) -> DatasetRecipe:
    """Add ``recipe`` (``config.data.dataset = recipe.name`` then trains on it).

    Raises:
      ValueError: the name is taken by a built-in or registered dataset (``replace=True`` to
        override a registered one on purpose).
    """
    key = recipe.name.upper()
    if key in DATASETS or (key in DATASET_RECIPES and not replace):
        raise ValueError(f"dataset {recipe.name!r} already exists; taken: {dataset_names()}")
    DATASET_RECIPES[key] = dataclasses.replace(recipe, name=key)
    return DATASET_RECIPES[key]


def dataset_names() -> list[str]:
    """Every valid ``config.data.dataset``: the built-ins and the registered recipes."""
    return list(DATASETS) + [k for k in DATASET_RECIPES if k not in DATASETS]


def dataset_num_classes(dataset: str) -> int | None:
    """Label classes of a registered recipe (None: unknown / unlabelled)."""
    r = DATASET_RECIPES.get(dataset.upper())
    return None if r is None else r.num_classes


IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def _to_square(img, image_size: int, num_channels: int) -> np.ndarray:
    """A PIL image -> (image_size, image_size, num_channels) float32 in [0, 1]: grey ("L") or
    RGB, central square crop, antialiased bicubic resize (PIL)."""
    from PIL import Image

    img = img.convert("L" if num_channels == 1 else "RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s))
    if s != image_size:
        img = img.resize((image_size, image_size), Image.BICUBIC)
    x = np.asarray(img, np.float32) / 255.0
    return x.reshape(image_size, image_size, num_channels)


def _folder_files(root: str) -> tuple[list[str], list[int], list[str]]:
    """Sorted image files under ``root`` and their labels: the index of the first-level
    sub-folder in sorted order (torchvision ImageFolder's convention), 0 for files directly in
    ``root``. Returns (files, labels, class names)."""
    if not os.path.isdir(root):
        raise ValueError(f"config.data.path={root!r} is not a folder of images")
    files = []
    for d, _, names in os.walk(root):
        files += [os.path.join(d, n) for n in names if n.lower().endswith(IMAGE_EXTENSIONS)]
    files.sort()
    classes = sorted({os.path.relpath(f, root).split(os.sep)[0] for f in files
                      if os.sep in os.path.relpath(f, root)})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index.get(os.path.relpath(f, root).split(os.sep)[0], 0) for f in files]
    return files, labels, classes


class ImageFolderSource:
    """The images of a folder, read lazily with PIL (random access by index)."""

    def __init__(self, files, labels, image_size: int, num_channels: int):
        self.files, self.labels = list(files), np.asarray(labels, np.int32)
        self.image_size, self.num_channels = image_size, num_channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx):
        from PIL import Image

        idx = np.atleast_1d(idx)
        images = []
        for i in idx:
            with Image.open(self.files[int(i)]) as img:
                images.append(_to_square(img, self.image_size, self.num_channels))
        return np.stack(images), self.labels[idx]


def _split_root(path: str, split: str) -> str:
    sub = os.path.join(path, split)
    return sub if os.path.isdir(os.path.join(path, "train")) else path


def folder_source(split: str, *, image_size: int, num_channels: int, path: str | None,
                  process_index: int, process_count: int):
    """``data.dataset="FOLDER"``: the images under ``data.path`` (png / jpg / ...; sub-folders
    are classes, sorted). With ``train/`` and ``test/`` sub-folders each split reads its own;
    otherwise both splits are the whole folder. Files are sorted, so the order (and the
    per-process shard, `process_slice`) is the same on every host."""
    if not path:
        raise ValueError("data.dataset='FOLDER' needs config.data.path (a folder of images)")
    root = _split_root(path, split)
    files, labels, _ = _folder_files(root)
    if not files:
        raise ValueError(f"config.data.path={root!r} holds no images ({list(IMAGE_EXTENSIONS)})")
    sl = process_slice(len(files), process_index, process_count)
    return ImageFolderSource(files[sl], labels[sl], image_size, num_channels)


def npz_source(split: str, *, image_size: int, num_channels: int, path: str | None,
               process_index: int, process_count: int):
    """``data.dataset="NPZ"``: the arrays of ``data.path`` (``numpy.savez``): ``images`` (N, H, W)
    or (N, H, W, C), uint8 in 0..255 or float in [0, 1], optional ``labels`` (N,); or
    ``train_images`` / ``test_images`` (+ ``train_labels`` / ``test_labels``) per split
    (otherwise both splits are ``images``). Square images of another size are resized
    (antialiased bilinear, `resize`); channels must match ``data.num_channels`` (1 <-> 3 by
    repeating / averaging grey)."""
    if not path:
        raise ValueError("data.dataset='NPZ' needs config.data.path (an .npz of images)")
    if not os.path.isfile(path):
        raise ValueError(f"config.data.path={path!r} is not a file")
    with np.load(path) as f:
        key = f"{split}_images" if f"{split}_images" in f else "images"
        if key not in f:
            raise ValueError(f"{path}: no array 'images' or '{split}_images'; arrays: {list(f)}")
        x = np.asarray(f[key])
        lkey = f"{split}_labels" if key != "images" else "labels"
        y = np.asarray(f[lkey], np.int32) if lkey in f else np.zeros(len(x), np.int32)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[1] != x.shape[2]:
        raise ValueError(f"{path}: images of shape {x.shape}; valid: (N, S, S) or (N, S, S, C)")
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    if x.shape[-1] != num_channels:
        x = (np.repeat(x[..., :1], num_channels, -1) if num_channels == 3
             else x.mean(-1, keepdims=True))
    sl = process_slice(len(x), process_index, process_count)
    x, y = x[sl], y[sl]
    if x.shape[1] != image_size:
        x = np.clip(resize(x, image_size), 0.0, 1.0)
    return x, y


# ----------------------------------------------------------------------------------------------
# TFDS (array_record, random access through tfds.data_source: no TensorFlow needed)
# ----------------------------------------------------------------------------------------------
def tfds_name(dataset: str, category: str | None = None) -> str:
    """TFDS builder name of a config ``data.dataset`` (and LSUN ``data.category``)."""
    key = dataset.upper()
    if key not in TFDS_DATASETS:
        raise ValueError(f"{dataset!r} is not a TFDS dataset; valid choices: "
                         f"{sorted(TFDS_DATASETS)}")
    name = TFDS_DATASETS[key]
    if key == "LSUN":
        if category not in LSUN_CATEGORIES:
            raise ValueError(f"data.category={category!r} is not an LSUN category; valid choices: "
                             f"{list(LSUN_CATEGORIES)}")
        name = f"lsun/{category}"
    return name


def _prepare_hint(name: str, data_dir: str | None) -> str:
    d = data_dir or "~/tensorflow_datasets"
    return (f"TFDS dataset {name!r} is not prepared in data_dir={d!r}, and this run does not "
            f"download (it would hang without network). Prepare it once on a machine with network "
            f"access (TFDS needs TensorFlow to build: pip install 'score_jax[tf]'):\n"
            f"    tfds build {name.split('/')[0]}"
            f"{' --config ' + name.split('/')[1] if '/' in name else ''} "
            f"--data_dir {d} --file_format array_record\n"
            f"then copy the folder and set --config.data.data_dir={d} (or TFDS_DATA_DIR).")


class TFDSSource:
    """A ``tfds.data_source`` over this process's part of a split, with the reference
    preprocessing; indexing returns (images in [0, 1], labels)."""

    def __init__(self, dataset: str, split: str, image_size: int, *, category: str | None = None,
                 data_dir: str | None = None, process_index: int = 0, process_count: int = 1):
        import tensorflow_datasets as tfds

        self.dataset = dataset.upper()
        self.image_size = image_size
        name = tfds_name(dataset, category)
        data_dir = data_dir or os.environ.get("TFDS_DATA_DIR")
        valid = TFDS_SPLITS[self.dataset]
        if split.split("[")[0] not in valid:
            raise ValueError(f"split {split!r} of {name} unknown; valid choices: {list(valid)}")
        sub = tfds.even_splits(split, process_count)[process_index]
        try:
            self.source = tfds.data_source(name, split=sub, data_dir=data_dir, download=False)
        except Exception as e:  # not prepared: tfds raises AssertionError / DatasetNotFoundError
            raise DatasetNotAvailableError(_prepare_hint(name, data_dir) + f"\n(cause: {e})") from e

    def __len__(self) -> int:
        return len(self.source)

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (n, H, W, C) -> float32 (n, S, S, C) in [0, 1] (reference datasets.py)."""
        size = self.image_size
        if self.dataset == "CELEBA":
            images = resize(central_crop(images, 140).astype(np.float32), size)
        elif self.dataset == "LSUN":
            if size == 128:
                images = resize(images.astype(np.float32), size)
            else:
                images = np.stack([central_crop(im[None], size)[0]
                                   for im in resize_small(images, size)])
        else:
            images = resize(images.astype(np.float32), size)
        return np.clip(np.asarray(images, np.float32) / 255.0, 0.0, 1.0)

    def __getitem__(self, idx):
        records = [self.source[int(i)] for i in idx]
        images = np.stack([np.asarray(r["image"]) for r in records])
        labels = np.asarray([int(r.get("label", 0)) if np.ndim(r.get("label", 0)) == 0 else 0
                             for r in records], np.int32)
        return self.preprocess(images), labels


# ----------------------------------------------------------------------------------------------
# ArrayRecord files (random access, no TensorFlow; ``python -m score_jax.records convert``)
# ----------------------------------------------------------------------------------------------
class ArrayRecordSource:
    """The images of ArrayRecord files written by ``score_jax.records`` (one image + label per
    record), records ``[lo, hi)`` of the files' concatenation; indexing returns (images
    (n, image_size, image_size, C) float32 in [0, 1], labels (n,) int32). Images of another size
    are resized (antialiased bilinear, `resize`), as the TFRecord pipeline does. The file handles
    are opened lazily, so the source pickles into grain's worker processes."""

    def __init__(self, pattern: str, image_size: int, *, num_channels: int | None = None,
                 process_index: int = 0, process_count: int = 1):
        from score_jax import records

        self.files = records.array_record_files(pattern)
        self.image_size, self.num_channels = image_size, num_channels
        self._reader = None
        total = len(self._open())
        sl = process_slice(total, process_index, process_count)
        self.lo, self.hi = sl.start, sl.stop

    def _open(self):
        if self._reader is None:
            from array_record.python.array_record_data_source import ArrayRecordDataSource

            self._reader = ArrayRecordDataSource(self.files)
        return self._reader

    def __getstate__(self):
        return dict(self.__dict__, _reader=None)

    def __repr__(self) -> str:
        return f"ArrayRecordSource({self.files!r}, [{self.lo}, {self.hi}), {self.image_size})"

    def __len__(self) -> int:
        return self.hi - self.lo

    def __getitem__(self, idx):
        from score_jax import records

        idx = np.atleast_1d(idx)
        raw = self._open().__getitems__([self.lo + int(i) for i in idx])
        decoded = [records.decode_image_record(r) for r in raw]
        images = np.stack([im for im, _ in decoded])
        if self.num_channels is not None and images.shape[-1] != self.num_channels:
            raise ValueError(f"{self.files[0]}: images have {images.shape[-1]} channels, "
                             f"config.data.num_channels={self.num_channels}")
        labels = np.asarray([lb for _, lb in decoded], np.int32)
        if images.shape[1] == self.image_size and images.shape[2] == self.image_size:
            return np.divide(images, np.float32(255.0), dtype=np.float32), labels  # one pass
        x = resize(images.astype(np.float32), self.image_size)
        return np.clip(x / 255.0, 0.0, 1.0), labels


def is_array_record_path(path: str | None) -> bool:
    """True when ``path`` names ArrayRecord files (``.array_record`` in the name) or a folder."""
    return bool(path) and (".array_record" in os.path.basename(path) or os.path.isdir(path))


def array_record_source(split: str, *, image_size: int, num_channels: int, path: str | None,
                        process_index: int, process_count: int):
    """``data.dataset="ARRAYRECORD"``: the images of ``data.path`` (an ``.array_record`` file,
    a glob, or a folder of them; with ``train*`` / ``test*`` files in a folder each split reads
    its own). Both splits read the same files otherwise."""
    if not path:
        raise ValueError("data.dataset='ARRAYRECORD' needs config.data.path (.array_record files)")
    if os.path.isdir(path):
        import glob

        own = sorted(glob.glob(os.path.join(path, f"{split}*.array_record*")))
        if own:
            path = os.path.join(path, f"{split}*.array_record*")
    return ArrayRecordSource(path, image_size, num_channels=num_channels,
                             process_index=process_index, process_count=process_count)


# ----------------------------------------------------------------------------------------------
# FFHQ / CelebA-HQ TFRecords (sequential; needs TensorFlow)
# ----------------------------------------------------------------------------------------------
class TFRecordPipeline:
    """FFHQ / CelebA-HQ from the reference's TFRecords (features ``shape`` int64[3] and ``data``
    uint8 bytes), read sequentially; each process takes every ``process_count``-th record.
    Resume skips ``step * batch_size`` records of the (seeded, shuffled-by-epoch) stream."""

    def __init__(self, path: str, batch_size: int, image_size: int, *, seed: int = 0,
                 random_flip: bool = True, uniform_dequantization: bool = False,
                 process_index: int = 0, process_count: int = 1, shuffle: bool = True):
        import glob

        if not path or not (glob.glob(path) or "://" in path):
            raise DatasetNotAvailableError(
                f"data.tfrecords_path={path!r} matches no file. Create the TFRecords with the "
                f"StyleGAN/PGGAN dataset_tool (ffhq-r10.tfrecords for 1024, -r08 for 256) and set "
                f"--config.data.tfrecords_path=PATH")
        try:
            import tensorflow as tf
        except ImportError as e:
            raise DatasetNotAvailableError(
                "reading FFHQ / CelebA-HQ TFRecords needs TensorFlow: pip install 'score_jax[tf]'"
            ) from e
        tf.config.set_visible_devices([], "GPU")
        self.tf = tf
        self.path, self.batch_size, self.image_size = path, batch_size, image_size
        self.seed, self.shuffle = seed, shuffle
        self.random_flip, self.uniform_dequantization = random_flip, uniform_dequantization
        self.process_index, self.process_count = process_index, process_count

    def _dataset(self, epoch: int):
        tf = self.tf

        def parse(rec):
            f = tf.io.parse_single_example(rec, {"shape": tf.io.FixedLenFeature([3], tf.int64),
                                                 "data": tf.io.FixedLenFeature([], tf.string)})
            x = tf.reshape(tf.io.decode_raw(f["data"], tf.uint8), f["shape"])
            return tf.transpose(x, (1, 2, 0))

        ds = tf.data.TFRecordDataset(tf.io.gfile.glob(self.path))
        ds = ds.shard(self.process_count, self.process_index)
        if self.shuffle:
            ds = ds.shuffle(10000, seed=self.seed + epoch, reshuffle_each_iteration=False)
        return ds.map(parse).batch(self.batch_size, drop_remainder=True)

    def iterate(self, start_step: int = 0) -> Iterator[Batch]:
        step, epoch = 0, 0
        while True:
            for x in self._dataset(epoch).as_numpy_iterator():
                if step >= start_step:
                    x = x.astype(np.float32)
                    if x.shape[1] != self.image_size:
                        x = resize(x, self.image_size)
                    rng = np.random.default_rng([self.seed, self.process_index, step, 1])
                    x = augment(np.clip(x / 255.0, 0, 1), rng, random_flip=self.random_flip,
                                uniform_dequantization=self.uniform_dequantization)
                    yield {"image": x, "label": np.zeros(len(x), np.int32)}
                step += 1
            epoch += 1
            if not self.shuffle:
                return

    def epoch(self) -> Iterator[Batch]:
        it = TFRecordPipeline(self.path, self.batch_size, self.image_size, seed=self.seed,
                              random_flip=False, uniform_dequantization=self.uniform_dequantization,
                              process_index=self.process_index, process_count=self.process_count,
                              shuffle=False)
        return it.iterate(0)


# ----------------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------------
def get_dataset(dataset: str, *, split: str, batch_size: int, image_size: int, training: bool,
                seed: int = 0, random_flip: bool = False, uniform_dequantization: bool = False,
                category: str | None = None, data_dir: str | None = None,
                tfrecords_path: str | None = None, process_index: int | None = None,
                process_count: int | None = None, num_channels: int | None = None,
                path: str | None = None):
    """Build the pipeline of ``dataset`` for this process.

    Args:
      dataset: one of ``DATASETS`` (case-insensitive), e.g. "CIFAR10", "DIGITS".
      split: "train" or "test" (TFDS splits; CelebA also "validation").
      batch_size: the per-process batch size.
      training: shuffle and augment (flip) when True; in-order, no flip when False.
      uniform_dequantization: add U[0, 1)/256 noise (likelihood training / evaluation).
      num_channels: for the grey-level digits, 3 repeats the grey channel (smoke runs of RGB
        configs); RGB datasets must be asked for 3.
      path: the folder / file of a `DatasetRecipe` that reads one ("FOLDER", "NPZ").

    Returns:
      An object with ``iterate(start_step)`` (endless batches from ``start_step``) and
      ``epoch()`` (one in-order pass), batches as ``{"image", "label"}`` numpy arrays.

    Raises:
      ValueError: unknown dataset / split / category, listing the valid choices.
      DatasetNotAvailableError: the data are not on disk; the message says how to prepare them.
    """
    import jax

    key = dataset.upper()
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    flip = random_flip and training
    if key == "DIGITS":
        x, y = load_digits_images(image_size, split)
        if num_channels not in (None, 1, 3):
            raise ValueError(f"num_channels={num_channels} invalid for DIGITS; valid: [1, 3]")
        if num_channels == 3:
            x = np.repeat(x, 3, axis=-1)
        sl = process_slice(len(x), pi, pc)
        source = ArraySource(x[sl], y[sl])
    elif key in TFDS_DATASETS:
        if num_channels not in (None, 3):
            raise ValueError(f"data.num_channels={num_channels} invalid for {key}; valid: [3]")
        source = TFDSSource(key, split, image_size, category=category, data_dir=data_dir,
                            process_index=pi, process_count=pc)
    elif key in DATASET_RECIPES:
        out = DATASET_RECIPES[key].source(split, image_size=image_size,
                                          num_channels=num_channels or 3, path=path,
                                          process_index=pi, process_count=pc)
        source = ArraySource(*out) if isinstance(out, tuple) else out
    elif key in TFRECORD_DATASETS and is_array_record_path(tfrecords_path):
        source = ArrayRecordSource(tfrecords_path, image_size, process_index=pi, process_count=pc)
    elif key in TFRECORD_DATASETS:
        return TFRecordPipeline(tfrecords_path, batch_size, image_size, seed=seed,
                                random_flip=flip, uniform_dequantization=uniform_dequantization,
                                process_index=pi, process_count=pc, shuffle=training)
    else:
        raise ValueError(f"data.dataset={dataset!r} unknown; valid choices: {dataset_names()}")
    return RandomAccessPipeline(source, batch_size, seed=seed, shuffle=training, random_flip=flip,
                                uniform_dequantization=uniform_dequantization, process_index=pi)


def num_batches(n: int, batch_size: int) -> int:
    """Number of full batches of ``batch_size`` in n examples."""
    return math.floor(n / batch_size)


register_dataset(DatasetRecipe("FOLDER", folder_source, needs_path=True))
register_dataset(DatasetRecipe("NPZ", npz_source, needs_path=True))
register_dataset(DatasetRecipe("ARRAYRECORD", array_record_source, needs_path=True))
