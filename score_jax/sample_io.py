"""Sample files: the PNG grid and the uint8 ``samples.npz`` of a batch of images, and the count of
non-finite samples (written as 0).

``samples.npz`` holds one uint8 array ``samples`` (N, H, W, C), the layout of score_sde's sample
files. `save_samples` writes it from an array in memory; `SampleWriter` writes the same file
batch by batch (`NpzArrayWriter`: the ``.npy`` member is streamed into the zip), so a run of
50,000 samples at 256 px holds one batch in host memory instead of ~39 GB of float32.
`iter_npz_rows` reads such a member back in batches.
"""
from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Iterator

import numpy as np


def count_nonfinite(images: np.ndarray) -> int:
    """The number of images (first axis) holding any NaN / inf."""
    x = np.asarray(images)
    return int((~np.isfinite(x.reshape(x.shape[0], -1))).any(axis=1).sum())


def image_grid(images: np.ndarray, nrow: int | None = None, padding: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) images in [0, 1] into one uint8 (rows x cols) grid image."""
    n, h, w, c = images.shape
    nrow = nrow or int(math.ceil(math.sqrt(n)))
    ncol = int(math.ceil(n / nrow))
    grid = np.ones((ncol * (h + padding) + padding, nrow * (w + padding) + padding, c), np.float32)
    for i in range(n):
        r, q = divmod(i, nrow)
        y0, x0 = padding + r * (h + padding), padding + q * (w + padding)
        grid[y0:y0 + h, x0:x0 + w] = images[i]
    return np.round(np.clip(np.nan_to_num(grid), 0, 1) * 255).astype(np.uint8)


def save_samples(images: np.ndarray, directory: str, *, scale: int = 1,
                 nrow: int | None = None) -> str:
    """Write ``samples.png`` (a grid, nearest-upscaled by ``scale``) and ``samples.npz`` (uint8
    images, as the reference's sample files) into ``directory``; returns the PNG path.
    Non-finite pixels are written as 0 (count them first with `count_nonfinite`). ``nrow``: images
    per grid row (default about sqrt(N); per_class for a grid with one row per class).
    `SampleWriter` writes the same files batch by batch."""
    path = save_grid(images, directory, scale=scale, nrow=nrow)
    np.savez_compressed(os.path.join(directory, "samples.npz"), samples=to_uint8(images))
    return path


def save_grid(images: np.ndarray, directory: str, *, scale: int = 1,
              nrow: int | None = None) -> str:
    """Write only ``samples.png`` (the grid of `save_samples`) into ``directory``; returns its
    path."""
    from PIL import Image

    os.makedirs(directory, exist_ok=True)
    grid = image_grid(images, nrow=nrow or None)
    pil = Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid)
    if scale > 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    path = os.path.join(directory, "samples.png")
    pil.save(path)
    return path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Float images in [0, 1] -> the uint8 of ``samples.npz``: ``round(clip(x, 0, 1) * 255)``,
    non-finite values as 0 (elementwise: a batch gives the rows of the whole array)."""
    return np.round(np.clip(np.nan_to_num(images), 0.0, 1.0) * 255).astype(np.uint8)


class NpzArrayWriter:
    """Write one array of known shape into an ``.npz`` member in row batches, never holding more
    than a batch: the ``.npy`` header first, then each batch's bytes through ``zipfile``'s
    streaming member writer (ZIP64, deflated when ``compress``: the layout of
    ``np.savez_compressed``; ``np.load(path)[key]`` reads it back).

    The file is written to ``<path>.tmp-<pid>`` and renamed over ``path`` by `close` once all
    ``shape[0]`` rows arrived (atomic, as ``files.atomic_write``); `abort` (or an exception
    inside ``with``) removes the temporary file.

    Raises:
      ValueError: a batch of another row shape or dtype, more rows than ``shape[0]``, or
        `close` before ``shape[0]`` rows.
    """

    def __init__(self, path: str, key: str, shape: tuple[int, ...], dtype, *,
                 compress: bool = True):
        self.path, self.key = os.fspath(path), key
        self.shape, self.dtype = tuple(int(d) for d in shape), np.dtype(dtype)
        self.rows = 0
        self._tmp = f"{self.path}.tmp-{os.getpid()}"
        self._zip = zipfile.ZipFile(self._tmp, "w", zipfile.ZIP_DEFLATED if compress
                                    else zipfile.ZIP_STORED, allowZip64=True)
        self._member = self._zip.open(key + ".npy", "w", force_zip64=True)
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": self.shape}
        _write_npy_header(self._member, header)

    def write(self, rows: np.ndarray) -> None:
        """Append ``rows`` (``(b,) + shape[1:]`` of ``dtype``)."""
        rows = np.ascontiguousarray(rows)
        if rows.shape[1:] != self.shape[1:] or rows.dtype != self.dtype:
            raise ValueError(f"rows of shape {rows.shape} {rows.dtype} do not fit "
                             f"{self.shape[1:]} {self.dtype} of {self.path!r}")
        if self.rows + len(rows) > self.shape[0]:
            raise ValueError(f"{self.rows + len(rows)} rows exceed the {self.shape[0]} of "
                             f"{self.path!r}")
        self._member.write(rows.tobytes())
        self.rows += len(rows)

    def close(self) -> str:
        """Finish the file and move it to ``path``; returns ``path``."""
        if self.rows != self.shape[0]:
            self.abort()
            raise ValueError(f"{self.path!r} got {self.rows} rows of {self.shape[0]}")
        self._member.close()
        self._zip.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished file."""
        try:
            self._member.close()
            self._zip.close()
        finally:
            if os.path.exists(self._tmp):
                os.remove(self._tmp)

    def __enter__(self) -> NpzArrayWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _write_npy_header(f, header: dict) -> None:
    # the header np.save writes (version 1.0, else 2.0 for a header too long for 1.0)
    try:
        np.lib.format.write_array_header_1_0(f, header)
    except ValueError:
        np.lib.format.write_array_header_2_0(f, header)


def iter_npz_rows(path: str, key: str, batch_size: int) -> Iterator[np.ndarray]:
    """The array ``key`` of the ``.npz`` at ``path`` in consecutive batches of at most
    ``batch_size`` rows, read from the zip member as a stream (memory O(batch); any ``.npz`` of
    ``np.savez`` / ``np.savez_compressed`` / `NpzArrayWriter`).

    Raises:
      ValueError: no array ``key``, or a Fortran-ordered / object array.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    with zipfile.ZipFile(path) as zf:
        if key + ".npy" not in zf.namelist():
            raise ValueError(f"{path!r} has no array {key!r} (arrays: "
                             f"{[n[:-4] for n in zf.namelist() if n.endswith('.npy')]})")
        with zf.open(key + ".npy") as f:
            shape, fortran, dtype = npy_header(f)
            if fortran or dtype.hasobject:
                raise ValueError(f"{path!r}[{key!r}] is Fortran-ordered or holds objects; "
                                 f"valid: a C-ordered numeric array")
            row = dtype.itemsize * math.prod(shape[1:])
            for start in range(0, shape[0], batch_size):
                b = min(batch_size, shape[0] - start)
                buf = f.read(b * row)
                if len(buf) != b * row:
                    raise ValueError(f"{path!r}[{key!r}] is truncated at row {start}")
                yield np.frombuffer(buf, dtype).reshape((b,) + tuple(shape[1:]))


def npy_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of the ``.npy`` stream ``f`` (positioned at its start;
    left at the first data byte)."""
    version = np.lib.format.read_magic(f)
    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
            else np.lib.format.read_array_header_2_0)
    return read(f)


def npz_array_shape(path: str, key: str) -> tuple[int, ...]:
    """The shape of the array ``key`` of an ``.npz`` (its header only is read)."""
    with zipfile.ZipFile(path) as zf, zf.open(key + ".npy") as f:
        return tuple(npy_header(f)[0])


class SampleWriter:
    """`save_samples` batch by batch: ``samples.npz`` (uint8, `to_uint8`) is streamed to disk
    (`NpzArrayWriter`), the first ``grid_samples`` float images are kept for ``samples.png``,
    and non-finite samples are counted; host memory O(batch + grid).

    For the same images in any batching, the files equal `save_samples`' of the whole array
    (the grid too when ``grid_samples`` >= N).

    Args:
      directory: the output folder (created).
      num_samples: N, the rows ``add`` will receive in total.
      grid_samples: samples in the PNG grid (the first ones; None: all).

    The image shape (H, W, C) is the first batch's (a latent model's decoded images).
    """

    def __init__(self, directory: str, num_samples: int, *, grid_samples: int | None = None):
        os.makedirs(directory, exist_ok=True)
        self.directory, self.num_samples = directory, int(num_samples)
        self.npz = os.path.join(directory, "samples.npz")
        self.grid_samples = num_samples if grid_samples is None else min(grid_samples,
                                                                         num_samples)
        self.num_nonfinite = 0
        self._grid: list[np.ndarray] = []
        self._kept = 0
        self._writer: NpzArrayWriter | None = None

    def add(self, images: np.ndarray) -> None:
        """Append a batch of float (b, H, W, C) images in [0, 1] (NaN: non-finite)."""
        images = np.asarray(images)
        if self._writer is None:
            self._writer = NpzArrayWriter(self.npz, "samples",
                                          (self.num_samples,) + images.shape[1:], np.uint8)
        self.num_nonfinite += count_nonfinite(images)
        if self._kept < self.grid_samples:
            part = images[:self.grid_samples - self._kept]
            self._grid.append(np.array(part))
            self._kept += len(part)
        self._writer.write(to_uint8(images))

    def close(self, *, scale: int = 1, nrow: int | None = None) -> str:
        """Finish ``samples.npz`` and write ``samples.png``; returns the PNG path.

        Raises:
          ValueError: fewer than ``num_samples`` rows were added (no file is left).
        """
        if self._writer is None:
            raise ValueError(f"no samples were added to {self.npz!r}")
        self._writer.close()
        return save_grid(np.concatenate(self._grid), self.directory, scale=scale, nrow=nrow)

    def abort(self) -> None:
        """Drop the unfinished ``samples.npz``."""
        if self._writer is not None:
            self._writer.abort()


__all__ = ["count_nonfinite", "image_grid", "save_samples", "save_grid", "to_uint8",
           "NpzArrayWriter", "iter_npz_rows", "npy_header", "npz_array_shape", "SampleWriter"]
