"""Weight layout and conversion of the FID Inception-v3 (``pt_inception-2015-12-05-6726825d.pth``,
pytorch-fid's port of TF-GAN's ``inception-2015-12-05`` graph) into the variables of
``score_jax.evaluation.inception.InceptionV3``; files are read by the one checkpoint reader
(`score_jax.convert.reader`: ``torch.load(weights_only=True)`` or ``.npz``).

    python -m score_jax.convert inception --to_npz pt_inception-2015-12-05-6726825d.pth w.npz

(also ``python -m score_jax.evaluation.inception --to_npz ...``) writes a torch-free ``.npz``
with the same key names.
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from score_jax.convert.reader import read_state_dict, to_numpy
from score_jax.files import atomic_write, file_sha256

NUM_FEATURES = 2048
"""pool_3 width (FID / KID features)."""
NUM_LOGITS = 1008
"""Classes of the 2015-12-05 graph's ``softmax/logits`` (IS)."""

# (name, in_channels, out_channels, kernel_h, kernel_w) of every BasicConv2d, in the order
# torchvision registers them (so the order of the pt_inception state dict).
_STEM = [
    ("Conv2d_1a_3x3", 3, 32, 3, 3),
    ("Conv2d_2a_3x3", 32, 32, 3, 3),
    ("Conv2d_2b_3x3", 32, 64, 3, 3),
    ("Conv2d_3b_1x1", 64, 80, 1, 1),
    ("Conv2d_4a_3x3", 80, 192, 3, 3),
]


def _block_a(cin: int, pool_features: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 64, 1, 1), ("branch5x5_1", cin, 48, 1, 1),
            ("branch5x5_2", 48, 64, 5, 5), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3),
            ("branch_pool", cin, pool_features, 1, 1)]


def _block_b(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch3x3", cin, 384, 3, 3), ("branch3x3dbl_1", cin, 64, 1, 1),
            ("branch3x3dbl_2", 64, 96, 3, 3), ("branch3x3dbl_3", 96, 96, 3, 3)]


def _block_c(cin: int, c7: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 192, 1, 1), ("branch7x7_1", cin, c7, 1, 1),
            ("branch7x7_2", c7, c7, 1, 7), ("branch7x7_3", c7, 192, 7, 1),
            ("branch7x7dbl_1", cin, c7, 1, 1), ("branch7x7dbl_2", c7, c7, 7, 1),
            ("branch7x7dbl_3", c7, c7, 1, 7), ("branch7x7dbl_4", c7, c7, 7, 1),
            ("branch7x7dbl_5", c7, 192, 1, 7), ("branch_pool", cin, 192, 1, 1)]


def _block_d(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch3x3_1", cin, 192, 1, 1), ("branch3x3_2", 192, 320, 3, 3),
            ("branch7x7x3_1", cin, 192, 1, 1), ("branch7x7x3_2", 192, 192, 1, 7),
            ("branch7x7x3_3", 192, 192, 7, 1), ("branch7x7x3_4", 192, 192, 3, 3)]


def _block_e(cin: int) -> list[tuple[str, int, int, int, int]]:
    return [("branch1x1", cin, 320, 1, 1), ("branch3x3_1", cin, 384, 1, 1),
            ("branch3x3_2a", 384, 384, 1, 3), ("branch3x3_2b", 384, 384, 3, 1),
            ("branch3x3dbl_1", cin, 448, 1, 1), ("branch3x3dbl_2", 448, 384, 3, 3),
            ("branch3x3dbl_3a", 384, 384, 1, 3), ("branch3x3dbl_3b", 384, 384, 3, 1),
            ("branch_pool", cin, 192, 1, 1)]


def _conv_layout() -> list[tuple[str, int, int, int, int]]:
    """Every BasicConv2d of the FID Inception as (dotted name, cin, cout, kh, kw)."""
    blocks = [
        ("Mixed_5b", _block_a(192, 32)), ("Mixed_5c", _block_a(256, 64)),
        ("Mixed_5d", _block_a(288, 64)), ("Mixed_6a", _block_b(288)),
        ("Mixed_6b", _block_c(768, 128)), ("Mixed_6c", _block_c(768, 160)),
        ("Mixed_6d", _block_c(768, 160)), ("Mixed_6e", _block_c(768, 192)),
        ("Mixed_7a", _block_d(768)), ("Mixed_7b", _block_e(1280)), ("Mixed_7c", _block_e(2048)),
    ]
    layout = list(_STEM)
    for block, convs in blocks:
        layout += [(f"{block}.{name}", cin, cout, kh, kw) for name, cin, cout, kh, kw in convs]
    return layout


def pt_inception_state_dict_shapes(*, num_batches_tracked: bool = False
                                   ) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of ``pt_inception-2015-12-05-6726825d.pth``, in state-dict order.

    The layout of pytorch-fid's ``fid_inception_v3()`` (torchvision ``Inception3`` with
    ``num_classes=1008, aux_logits=False``): per BasicConv2d ``<name>.conv.weight``
    ``(cout, cin, kh, kw)`` and ``<name>.bn.{weight,bias,running_mean,running_var}`` ``(cout,)``
    (plus the scalar ``bn.num_batches_tracked`` that newer PyTorch versions save), then
    ``fc.weight`` ``(1008, 2048)`` and ``fc.bias`` ``(1008,)``.
    """
    shapes: dict[str, tuple[int, ...]] = {}
    for name, cin, cout, kh, kw in _conv_layout():
        shapes[f"{name}.conv.weight"] = (cout, cin, kh, kw)
        for stat in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{stat}"] = (cout,)
        if num_batches_tracked:
            shapes[f"{name}.bn.num_batches_tracked"] = ()
    shapes["fc.weight"] = (NUM_LOGITS, NUM_FEATURES)
    shapes["fc.bias"] = (NUM_LOGITS,)
    return shapes


def _set(tree: dict, path: Sequence[str], value: np.ndarray) -> None:
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def convert_inception_pytorch(state_dict: Mapping[str, Any]) -> dict[str, dict]:
    """Converts the pt_inception-2015-12-05 state dict to ``InceptionV3`` variables.

    Mapping (PyTorch NCHW / OI -> Flax NHWC / IO):
    ``X.conv.weight (O, I, kh, kw) -> params[X][conv][kernel] (kh, kw, I, O)``,
    ``X.bn.weight / bias -> params[X][bn][scale / bias]``,
    ``X.bn.running_mean / running_var -> batch_stats[X][bn][mean / var]``,
    ``fc.weight (1008, 2048) -> params[fc][kernel] (2048, 1008)``, ``fc.bias -> params[fc][bias]``.
    ``*.num_batches_tracked`` entries are accepted and ignored.

    Args:
      state_dict: mapping from the dotted PyTorch key names to arrays (numpy arrays or torch
        tensors).

    Returns:
      ``{"params": ..., "batch_stats": ...}`` of float32 numpy arrays for ``InceptionV3().apply``.

    Raises:
      ValueError: naming the first missing key, the first unexpected key, or the first key whose
        shape differs from the real file's (with both shapes).
    """
    expected = pt_inception_state_dict_shapes()
    for key, shape in expected.items():
        if key not in state_dict:
            raise ValueError(f"state dict is missing key {key!r} (expected shape {shape}); "
                             "is this the pt_inception-2015-12-05 FID Inception?")
    for key in state_dict:
        if key not in expected and not key.endswith(".bn.num_batches_tracked"):
            shape = tuple(np.shape(to_numpy(state_dict[key])))
            raise ValueError(f"state dict has unexpected key {key!r} with shape {shape}; "
                             "is this the pt_inception-2015-12-05 FID Inception?")
    arrays = {}
    for key, shape in expected.items():
        value = to_numpy(state_dict[key]).astype(np.float32)
        if value.shape != shape:
            raise ValueError(f"state dict key {key!r} has shape {value.shape}, expected {shape}")
        arrays[key] = value

    params: dict = {}
    batch_stats: dict = {}
    for name, *_ in _conv_layout():
        path = name.split(".")
        w = arrays[f"{name}.conv.weight"]
        _set(params, [*path, "conv", "kernel"], np.ascontiguousarray(w.transpose(2, 3, 1, 0)))
        _set(params, [*path, "bn", "scale"], arrays[f"{name}.bn.weight"])
        _set(params, [*path, "bn", "bias"], arrays[f"{name}.bn.bias"])
        _set(batch_stats, [*path, "bn", "mean"], arrays[f"{name}.bn.running_mean"])
        _set(batch_stats, [*path, "bn", "var"], arrays[f"{name}.bn.running_var"])
    params["fc"] = {"kernel": np.ascontiguousarray(arrays["fc.weight"].T),
                    "bias": arrays["fc.bias"]}
    return {"params": params, "batch_stats": batch_stats}


def read_inception_state_dict(path: str) -> dict[str, np.ndarray]:
    """The pt_inception state dict of a local ``.pth`` (``torch.load(weights_only=True)``) or
    ``.npz`` (same keys; ``allow_pickle=False``) as numpy arrays; nothing is downloaded.

    Raises:
      FileNotFoundError: no file at ``path`` (with where to get it).
      ImportError: a ``.pth`` without torch installed (with how to make the torch-free ``.npz``).
      ValueError: the file does not hold a state dict.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception weights not found at {path!r}. Download pt_inception-2015-12-05-"
            "6726825d.pth from the pytorch-fid releases once and pass its local path.")
    kind = "npz" if path.endswith(".npz") else "torch"
    try:
        return read_state_dict(path, entries=("state_dict",), kind=kind)
    except ImportError as e:
        raise ImportError(
            f"reading {path!r} needs PyTorch (pip install 'score_jax[torch]'); or convert it "
            "once, where torch is installed, with `python -m score_jax.evaluation.inception "
            "--to_npz IN.pth OUT.npz` and pass the .npz") from e


# sha256 of pytorch-fid's pt_inception-2015-12-05-6726825d.pth (95,628,359 bytes; the file name
# carries its first 8 hex digits, torch.hub's convention). The same digest is pinned by
# torch-fidelity (``feature_extractor_inceptionv3.py``, URL_INCEPTION_V3 'tf_inception_v3').
PT_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
# The .npz written by ``python -m score_jax.evaluation.inception --to_npz`` records the sha256 of
# the .pth it was converted from under this key; that digest is what a .npz is checked by.
SOURCE_SHA256_KEY = "source_sha256"


def inception_weights_sha256(path: str) -> str | None:
    """The digest a weights file is checked by: a ``.pth``'s own sha256; a ``.npz``'s recorded
    ``source_sha256`` (the .pth it was converted from), or None when it records none."""
    if os.fspath(path).endswith(".npz"):
        with np.load(path, allow_pickle=False) as f:
            return str(f[SOURCE_SHA256_KEY]) if SOURCE_SHA256_KEY in f.files else None
    return file_sha256(path)


def check_inception_sha256(path: str, sha256: str | None = PT_INCEPTION_SHA256) -> None:
    """Checks the FID Inception weights at ``path`` against ``sha256``.

    Args:
      path: a ``.pth`` (its bytes are hashed) or a converted ``.npz`` (its recorded
        ``source_sha256`` is compared; see ``inception_weights_sha256``).
      sha256: the expected hex digest: ``PT_INCEPTION_SHA256`` (default, pytorch-fid's
        ``pt_inception-2015-12-05-6726825d.pth``), another digest for another file, or ``None``
        to skip the check (an explicit override, e.g. for synthetic test weights).

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the digest found differs from ``sha256`` (both are named), or ``sha256`` is not
        64 hex digits.
    """
    if sha256 is None:
        return
    expected = sha256.lower()
    if len(expected) != 64 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be 64 hex digits (or None to skip the check), got {sha256!r}")
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"Inception weights not found at {path!r}. Download pt_inception-2015-12-05-"
            "6726825d.pth from the pytorch-fid releases once and pass its local path.")
    found = inception_weights_sha256(path)
    if found != expected:
        what = ("records no source sha256 (not written by `python -m score_jax.evaluation."
                "inception --to_npz`)" if found is None else f"has sha256 {found}")
        named = ("pt_inception-2015-12-05-6726825d.pth, the FID weights"
                 if expected == PT_INCEPTION_SHA256 else "given")
        raise ValueError(
            f"Inception weights {path!r} {what}, expected sha256 {expected} ({named}). "
            "FIDs are only comparable with the exact FID weights; for other files pass their "
            "digest explicitly (Python: sha256=...; sample.py / evaluate.py / the score CLI: "
            "--inception_sha256=HEX; `convert inception`: --sha256=HEX) or skip the check with "
            "sha256=None / --inception_sha256=none / --sha256=none")


def main(argv: Sequence[str] | None = None) -> None:
    """``--to_npz IN_PTH OUT_NPZ``: the pytorch-fid weights as a torch-free ``.npz``."""
    from score_jax.cli_args import ArgumentParser

    parser = ArgumentParser(
        prog="python -m score_jax.convert inception",
        description="Convert the pytorch-fid Inception weights (.pth) to a torch-free .npz.")
    parser.add_argument("--to_npz", nargs=2, metavar=("IN_PTH", "OUT_NPZ"), required=True)
    parser.add_argument("--sha256", default=None,
                        help="expected sha256 of IN_PTH (default: pytorch-fid's pt_inception-"
                        "2015-12-05-6726825d.pth); 'none' skips the check")
    args = parser.parse_args(argv)
    src, dst = args.to_npz
    if not os.path.exists(src):  # one line, also from `python -m score_jax.evaluation.inception`
        parser.error(f"argument --to_npz: IN_PTH {src!r} does not exist")
    expected = PT_INCEPTION_SHA256 if args.sha256 is None else args.sha256
    check_inception_sha256(src, None if expected.lower() == "none" else expected)
    state = read_inception_state_dict(src)
    convert_inception_pytorch(state)  # validates the layout before writing anything
    arrays = {k: np.asarray(v) for k, v in state.items()}
    arrays[SOURCE_SHA256_KEY] = np.asarray(file_sha256(src))  # what load_inception checks
    atomic_write(dst, lambda f: np.savez(f, **arrays))
    print(f"wrote {len(state)} arrays to {dst}")


__all__ = ["NUM_FEATURES", "NUM_LOGITS", "PT_INCEPTION_SHA256", "SOURCE_SHA256_KEY",
           "inception_weights_sha256", "check_inception_sha256", "pt_inception_state_dict_shapes",
           "convert_inception_pytorch", "read_inception_state_dict", "main"]


if __name__ == "__main__":
    main()
