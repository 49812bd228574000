"""Loading the FID Inception and the sharded feature function ``images -> (pool_3, logits)``."""
from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from score_jax.convert.inception import (
    NUM_FEATURES,
    NUM_LOGITS,
    PT_INCEPTION_SHA256,
    SOURCE_SHA256_KEY,
    check_inception_sha256,
    convert_inception_pytorch,
    inception_weights_sha256,
    read_inception_state_dict,
)
from score_jax.evaluation.inception.network import InceptionV3
from score_jax.evaluation.inception.preprocess import (
    INCEPTION_IMAGE_SIZE,
    QUANTIZE_MODES,
    preprocess_for_inception,
)
from score_jax.evaluation.metrics import DEFAULT_RESIZE, check_image_range, check_resize
from score_jax.files import file_sha256


def load_inception(path: str, *, dtype: Any = jnp.float32, sha256: str | None = PT_INCEPTION_SHA256
                   ) -> tuple[InceptionV3, dict]:
    """Loads the FID Inception from a local ``.pth`` (pytorch-fid) or ``.npz`` (same keys).

    Nothing is downloaded. ``.pth`` files are read with ``torch.load(weights_only=True)``, which
    never executes code from the file; ``.npz`` files with ``allow_pickle=False``. The file is
    first checked against ``sha256`` (``check_inception_sha256``; default: the pytorch-fid file's
    ``PT_INCEPTION_SHA256``; another 64-hex digest for other files; ``None`` skips the check).

    Returns:
      ``(module, variables)`` for ``module.apply(variables, x)``.

    Raises:
      ValueError: the hash differs from ``sha256`` (naming both), or a bad layout.
    """
    check_inception_sha256(path, sha256)
    state = read_inception_state_dict(path)
    state.pop(SOURCE_SHA256_KEY, None)
    variables = convert_inception_pytorch(state)
    return InceptionV3(dtype=dtype), jax.tree.map(jnp.asarray, variables)



class InceptionFeatures:
    """A jitted ``images -> (pool_3, logits)`` that shards the batch over all devices.

    One code path for 1 and N devices (and N hosts): a 1-D ``Mesh`` over ``jax.devices()`` with
    axis ``"data"``, the images laid out with ``NamedSharding(mesh, P("data"))`` and the
    variables replicated (``P()``). Each process passes its own host-local batch (the same size
    on every process) and gets back the rows of that batch. Batches are padded to
    ``batch_size`` (or to a multiple of the local device count) so one compilation serves every
    call, then the padding is cut off.

    Args:
      variables: ``InceptionV3`` variables (``load_inception`` / ``convert_inception_pytorch``).
      module: the network; defaults to ``InceptionV3()``.
      batch_size: per-call chunk size on this process (a multiple of the local device count);
        larger inputs are processed in chunks. ``None``: the whole input in one call.
      quantize: see ``preprocess_for_inception``.
      mesh: a 1-D mesh with axis ``"data"``; defaults to all devices.
      image_size: the resize target; FID / IS / KID are defined at 299 only, smaller sizes
        (>= 75) serve tests and debugging.
      resize: the resize convention, ``"pytorch"`` (default) or ``"tf1"`` (see
        ``preprocess_for_inception``); kept as ``self.resize``.
    """

    def __init__(self, variables: Mapping[str, Any], *, module: nn.Module | None = None,
                 batch_size: int | None = 200, quantize: str = "floor",
                 mesh: Mesh | None = None, image_size: int = INCEPTION_IMAGE_SIZE,
                 resize: str = DEFAULT_RESIZE):
        self.resize = check_resize(resize)
        if quantize not in QUANTIZE_MODES:
            raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {quantize!r}")
        self.module = module if module is not None else InceptionV3()
        self.mesh = mesh if mesh is not None else Mesh(np.asarray(jax.devices()), ("data",))
        if self.mesh.axis_names != ("data",):
            raise ValueError(f"mesh must have the single axis 'data', got {self.mesh.axis_names}")
        self.num_local_devices = sum(
            d.process_index == jax.process_index() for d in self.mesh.devices.flat)
        if batch_size is not None and (batch_size <= 0 or batch_size % self.num_local_devices):
            raise ValueError(f"batch_size={batch_size} must be a positive multiple of the "
                             f"{self.num_local_devices} local devices")
        self.batch_size = batch_size
        self._data = NamedSharding(self.mesh, P("data"))
        replicated = NamedSharding(self.mesh, P())
        self.variables = jax.device_put(variables, replicated)
        module_ = self.module

        def forward(variables, images):
            x = preprocess_for_inception(images, quantize=quantize, size=image_size,
                                         resize=resize)
            return module_.apply(variables, x)

        self._forward = jax.jit(forward, in_shardings=(replicated, self._data),
                                out_shardings=(self._data, self._data))

    def _local_rows(self, x: jax.Array) -> np.ndarray:
        shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
        return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)], axis=0)

    def _run(self, images: np.ndarray, padded_size: int) -> tuple[np.ndarray, np.ndarray]:
        n = images.shape[0]
        if padded_size > n:
            pad = np.zeros((padded_size - n, *images.shape[1:]), images.dtype)
            images = np.concatenate([images, pad], axis=0)
        global_images = jax.make_array_from_process_local_data(self._data, images)
        pool, logits = self._forward(self.variables, global_images)
        return self._local_rows(pool)[:n], self._local_rows(logits)[:n]

    def __call__(self, images: np.ndarray | jax.Array) -> tuple[np.ndarray, np.ndarray]:
        """Returns ``(pool_3 (N, 2048), logits (N, 1008))`` as float32 numpy arrays.

        Args:
          images: host-local ``(N, H, W, C)`` batch, uint8 or float in [0, 1] (see
            ``preprocess_for_inception``; other ranges raise ``ValueError``).
        """
        images = np.asarray(images)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
        check_image_range(images, name="InceptionFeatures")
        if self.batch_size is None:
            d = self.num_local_devices
            return self._run(images, -(-images.shape[0] // d) * d)
        pools, logits = [], []
        for chunk in iter_chunks(images, self.batch_size):
            p, l = self._run(chunk, self.batch_size)
            pools.append(p)
            logits.append(l)
        if not pools:
            return np.zeros((0, NUM_FEATURES), np.float32), np.zeros((0, NUM_LOGITS), np.float32)
        return np.concatenate(pools), np.concatenate(logits)


def iter_chunks(x: np.ndarray, size: int) -> Iterator[np.ndarray]:
    """Consecutive slices of at most ``size`` rows."""
    for start in range(0, x.shape[0], size):
        yield x[start:start + size]


def get_inception_fn(weights: str | Mapping[str, Any], *, sha256: str | None = PT_INCEPTION_SHA256,
                     **kwargs: Any) -> InceptionFeatures:
    """``InceptionFeatures`` from a weights path (``.pth`` / ``.npz``, checked against ``sha256``
    as in ``load_inception``) or converted variables.

    Keyword arguments go to ``InceptionFeatures`` (``batch_size``, ``quantize``, ``mesh``,
    ``image_size``, ``resize``).
    """
    if isinstance(weights, str | os.PathLike):
        module, variables = load_inception(os.fspath(weights), sha256=sha256)
        return InceptionFeatures(variables, module=module, **kwargs)
    return InceptionFeatures(weights, **kwargs)


__all__ = ["PT_INCEPTION_SHA256", "SOURCE_SHA256_KEY", "file_sha256", "inception_weights_sha256",
           "check_inception_sha256", "load_inception", "InceptionFeatures", "iter_chunks", "get_inception_fn"]
