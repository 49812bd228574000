"""Convert the released Score SDE checkpoints into score_jax variables (``score_jax.convert``).

Two sources:

* score_sde_pytorch ``.pth`` files: a dict with ``model`` (a ``state_dict`` whose keys are
  ``[module.]all_modules.<i>.<sub>.<param>`` in the order ``forward`` calls the modules, plus the
  ``sigmas`` buffer) and ``ema`` (``shadow_params``: the trainable parameters in
  ``model.parameters()`` order). They are read with ``torch.load(weights_only=True)`` (torch is an
  optional extra); `convert_pytorch` itself takes any mapping of key -> array.
* score_sde (JAX / flax 0.3) checkpoints: msgpack files written by
  ``flax.training.checkpoints.save_checkpoint``, holding ``params_ema`` and
  ``optimizer.target``. They are parsed with ``flax.serialization.msgpack_restore``, which
  builds plain dicts and arrays and never executes code.

The networks in `score_jax.models` use score_sde's module names, so a flax checkpoint maps by
name. For PyTorch, module ``all_modules.<i>`` is the i-th module our network marks as one of the
reference's ``all_modules`` while it builds itself (`score_jax.models.utils.listed`, recorded by
`record_module_order` during an abstract init: one code path builds the network and the key
map, so the two cannot drift apart), and tensors are re-laid out: conv OIHW -> HWIO
(``transpose(2, 3, 1, 0)``), ``nn.Linear`` (out, in) -> (in, out), GroupNorm ``weight`` ->
``scale``; NIN ``W`` / ``b`` and the Fourier ``W`` are kept as they are.

Command line (output: flax msgpack of ``{'params': ...}``, read back with `load_variables`)::

    python -m score_jax.convert checkpoint_26.pth cifar10_ncsnpp.msgpack \
        --config configs/ve/cifar10_ncsnpp_continuous.py
    python -m score_jax.convert checkpoint_26 out.msgpack --config ... --source flax --no_ema

Other architectures have their own converters, re-exported here and reached from the same command
by a first word: `convert_dit` (official DiT checkpoints, `score_jax.convert.dit`) and
`convert_autoencoder_kl` (Stable Diffusion / LDM VAE, diffusers or CompVis layout,
`score_jax.convert.autoencoder`)::

    python -m score_jax.convert dit DiT-XL-2-256x256.pt dit_xl2.msgpack --preset DiT-XL/2
    python -m score_jax.convert autoencoder_kl vae.safetensors sd_vae.msgpack
    python -m score_jax.convert inception --to_npz pt_inception-2015-12-05-6726825d.pth w.npz
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.util
import re
import sys
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization, traverse_util

from score_jax.cli_args import ArgumentParser, existing_path
from score_jax.convert.reader import read_checkpoint
from score_jax.convert.reader import to_numpy as _to_numpy
from score_jax.files import atomic_write
from score_jax.models import DDPM, NCSNpp, get_model, get_sigmas
from score_jax.models.utils import record_module_order

Params = dict[str, Any]

_PT_INDEX = re.compile(r"^all_modules\.(\d+)\.(.+)$")


# ----------------------------------------------------------------------------------------------
# Tree helpers
# ----------------------------------------------------------------------------------------------


def _abstract_init(model: nn.Module, image_size: int, num_channels: int,
                   record_calls: bool = False) -> tuple[Params, list[str]]:
    """Abstract (shape-only) params of ``model`` and, optionally, the names of the modules it
    marks as the reference's ``all_modules`` list, in order (cached per model configuration)."""
    fields = tuple((f.name, getattr(model, f.name)) for f in dataclasses.fields(model)
                   if f.name not in ("parent", "name"))
    try:
        hash(fields)
    except TypeError:
        return _abstract_init_uncached(model, image_size, num_channels, record_calls)
    params, order = _abstract_init_cached(type(model), fields, image_size, num_channels,
                                          record_calls)
    return params, list(order)


@functools.lru_cache(maxsize=16)
def _abstract_init_cached(cls, fields, image_size, num_channels, record_calls):
    params, order = _abstract_init_uncached(cls(**dict(fields)), image_size, num_channels,
                                            record_calls)
    return params, tuple(order)


def _abstract_init_uncached(model: nn.Module, image_size: int, num_channels: int,
                            record_calls: bool) -> tuple[Params, list[str]]:
    x = jax.ShapeDtypeStruct((1, image_size, image_size, num_channels), jnp.float32)
    labels = jax.ShapeDtypeStruct((1,), jnp.int32)

    def init(x, labels):
        return model.init(jax.random.key(0), x, labels)

    if not record_calls:
        return dict(jax.eval_shape(init, x, labels)["params"]), []
    with record_module_order() as order:
        variables = jax.eval_shape(init, x, labels)
    return dict(variables["params"]), list(order)


def _flat(tree: Mapping) -> dict[tuple[str, ...], Any]:
    return traverse_util.flatten_dict(dict(tree), keep_empty_nodes=False)


def check_tree(params: Mapping, expected: Mapping, what: str = "checkpoint") -> None:
    """Raise ValueError unless ``params`` has exactly the keys and shapes of ``expected``.

    The message names the first differing key (in sorted order) and both shapes.
    """
    got, want = _flat(params), _flat(expected)
    for key in sorted(set(got) | set(want)):
        name = "/".join(key)
        if key not in got:
            raise ValueError(f"{what} does not match the config: missing parameter {name!r} "
                             f"(expected shape {tuple(want[key].shape)})")
        if key not in want:
            raise ValueError(f"{what} does not match the config: unexpected parameter {name!r} "
                             f"(shape {tuple(np.shape(got[key]))}) not in the model")
        if tuple(np.shape(got[key])) != tuple(want[key].shape):
            raise ValueError(f"{what} does not match the config: parameter {name!r} has shape "
                             f"{tuple(np.shape(got[key]))}, the model expects "
                             f"{tuple(want[key].shape)}")


def _build(model_config: Any, image_size, num_channels, centered) -> tuple[nn.Module, int, int]:
    model = get_model(model_config, image_size=image_size, num_channels=num_channels,
                      centered=centered)
    if getattr(model, "image_size", None) is None:
        raise ValueError("conversion needs the image size (image_size=config.data.image_size)")
    if getattr(model, "num_classes", None) is not None:
        raise ValueError("the released checkpoints have no class embedding; build the model "
                         "with num_classes=None to convert them")
    return model, model.image_size, model.num_channels


# ----------------------------------------------------------------------------------------------
# score_sde_pytorch
# ----------------------------------------------------------------------------------------------


def _pt_leaf(flax_module: Mapping, pt_leaf: str, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Flax leaf name and re-laid-out array for one PyTorch tensor of a given flax module."""
    if pt_leaf in ("W", "b"):  # NIN (in, out) and the Fourier projection: same layout
        return pt_leaf, value
    if pt_leaf == "bias":
        return "bias", value
    if pt_leaf != "weight":
        raise ValueError(f"unknown PyTorch parameter name {pt_leaf!r}")
    if value.ndim == 4:
        name = "weight" if "weight" in flax_module else "kernel"  # FIR Conv2d vs nn.Conv
        return name, value.transpose(2, 3, 1, 0)
    if value.ndim == 2:
        return "kernel", value.T
    if value.ndim == 1:
        return "scale", value
    raise ValueError(f"unexpected {value.ndim}-D weight")


def _pt_submodule(name: str) -> str:
    """PyTorch attribute names that differ from flax auto-names (``Combine.Conv``)."""
    return name if re.search(r"_\d+$", name) else f"{name}_0"


def convert_pytorch(state_dict: Mapping[str, Any], model_config: Any, *,
                    image_size: int | None = None, num_channels: int | None = None,
                    centered: bool | None = None, check_sigmas: bool = True) -> dict[str, Params]:
    """Convert a score_sde_pytorch ``state_dict`` into score_jax variables.

    Args:
      state_dict: mapping of PyTorch key (``all_modules.<i>...``, an optional ``module.``
        prefix is dropped) to array (numpy, or torch tensors).
      model_config: the reference ``config.model`` (ConfigDict or mapping).
      image_size, num_channels, centered: ``config.data`` values, as for `get_model`.
      check_sigmas: compare the ``sigmas`` buffer, if present, with the config's table.

    Returns:
      ``{'params': params}`` (float32 numpy arrays) for ``model.apply``.

    Raises:
      ValueError: naming the first key / shape that does not match the model the config builds.
    """
    model, size, channels = _build(model_config, image_size, num_channels, centered)
    if not isinstance(model, (NCSNpp, DDPM)):
        raise ValueError(f"score_sde_pytorch checkpoints of {type(model).__name__} are not "
                         "supported (only ncsnpp and ddpm; the reference's NCSN / NCSNv2 "
                         "cannot be built); convert a score_sde (flax) checkpoint instead")
    expected, order = _abstract_init(model, size, channels, record_calls=True)
    # The reference's res-blocks always own a Dense_0 (temb_dim is always passed), unused when
    # conditional=False, where our blocks have none.
    skip_dense = not model.conditional
    out: dict[tuple[str, ...], np.ndarray] = {}
    sources: dict[tuple[str, ...], str] = {}
    for key in state_dict:
        value = _to_numpy(state_dict[key])
        k = key[len("module."):] if key.startswith("module.") else key
        if k == "sigmas":
            if check_sigmas and hasattr(model, "sigma_min"):
                ref = get_sigmas(model.sigma_min, model.sigma_max, model.num_scales)
                if value.shape != ref.shape or not np.allclose(value, ref, rtol=1e-5):
                    raise ValueError("the checkpoint's sigmas buffer differs from the config's "
                                     f"(sigma_min={model.sigma_min}, sigma_max={model.sigma_max},"
                                     f" num_scales={model.num_scales}): shape {value.shape} vs "
                                     f"{ref.shape}")
            continue
        m = _PT_INDEX.match(k)
        if m is None:
            raise ValueError(f"unexpected PyTorch key {key!r}: expected all_modules.<i>.<name>")
        idx, rest = int(m.group(1)), m.group(2).split(".")
        if idx >= len(order):
            raise ValueError(f"PyTorch key {key!r}: module index {idx} but the model built from "
                             f"the config has only {len(order)} top-level modules")
        top = order[idx]
        if skip_dense and len(rest) == 2 and rest[0] == "Dense_0":
            continue
        path = (top, *(_pt_submodule(r) for r in rest[:-1]))
        node: Any = expected
        for p in path:
            if not isinstance(node, Mapping) or p not in node:
                raise ValueError(f"PyTorch key {key!r} maps to {'/'.join(path)!r}, which the "
                                 "model built from the config does not have")
            node = node[p]
        leaf, arr = _pt_leaf(node, rest[-1], value)
        if leaf not in node:
            raise ValueError(f"PyTorch key {key!r} maps to {'/'.join((*path, leaf))!r}, which "
                             "the model built from the config does not have")
        if (*path, leaf) in out:
            raise ValueError(f"PyTorch key {key!r} maps to {'/'.join((*path, leaf))!r}, which "
                             f"another key ({sources[(*path, leaf)]!r}) already filled")
        sources[(*path, leaf)] = key
        out[(*path, leaf)] = np.asarray(arr, dtype=np.float32)
    params = traverse_util.unflatten_dict(out)
    check_tree(params, expected, "PyTorch checkpoint")
    return {"params": params}


def pytorch_ema_state_dict(checkpoint: Mapping[str, Any], model_config: Any, *,
                           image_size: int | None = None, num_channels: int | None = None,
                           centered: bool | None = None) -> dict[str, np.ndarray]:
    """The ``model`` state_dict of a score_sde_pytorch checkpoint with the EMA weights swapped in.

    ``ema.shadow_params`` lists the trainable parameters in ``model.parameters()`` order: the
    state_dict order without buffers (``sigmas``) and without the frozen Gaussian Fourier ``W``.
    """
    sd = dict(checkpoint["model"])
    shadow = list(checkpoint["ema"]["shadow_params"])
    model, size, channels = _build(model_config, image_size, num_channels, centered)
    _, order = _abstract_init(model, size, channels, record_calls=True)
    trainable = []
    for key in sd:
        k = key[len("module."):] if key.startswith("module.") else key
        m = _PT_INDEX.match(k)
        if m is None:  # buffers
            continue
        idx = int(m.group(1))
        if idx < len(order) and order[idx].startswith("GaussianFourierProjection"):
            continue  # frozen (requires_grad=False), not in the EMA
        trainable.append(key)
    if len(trainable) != len(shadow):
        raise ValueError(f"EMA has {len(shadow)} tensors but the model state_dict has "
                         f"{len(trainable)} trainable parameters")
    for key, value in zip(trainable, shadow, strict=True):
        value = _to_numpy(value)
        if value.shape != _to_numpy(sd[key]).shape:
            raise ValueError(f"EMA tensor for {key!r} has shape {value.shape}, the model "
                             f"parameter {_to_numpy(sd[key]).shape}")
        sd[key] = value
    return sd


def load_pytorch_checkpoint(path: str | Path, model_config: Any, *, use_ema: bool = True,
                            **data_kwargs: Any) -> dict[str, Params]:
    """Read a score_sde_pytorch ``.pth`` (``torch.load(weights_only=True)``: tensors and
    containers only, no code) and convert the EMA (default) or raw weights."""
    ckpt = read_checkpoint(path, kind="torch")
    if isinstance(ckpt, Mapping) and "model" in ckpt:
        if use_ema and "ema" in ckpt:
            sd = pytorch_ema_state_dict(ckpt, model_config, **data_kwargs)
        else:
            sd = ckpt["model"]
    else:
        sd = ckpt
    return convert_pytorch(sd, model_config, **data_kwargs)


# ----------------------------------------------------------------------------------------------
# score_sde (JAX / flax)
# ----------------------------------------------------------------------------------------------


def convert_flax_score_sde(state: Mapping[str, Any] | bytes | str | Path, model_config: Any, *,
                           use_ema: bool = True, image_size: int | None = None,
                           num_channels: int | None = None,
                           centered: bool | None = None) -> dict[str, Params]:
    """Convert a score_sde (JAX) training state into score_jax variables.

    Args:
      state: the restored state dict (``{'params_ema': ..., 'optimizer': {'target': ...}}``),
        the msgpack bytes of a checkpoint file, or its path.
      use_ema: take ``params_ema`` (default) rather than ``optimizer.target``.

    Returns:
      ``{'params': params}`` as float32 numpy arrays, checked against the config's model.
    """
    if isinstance(state, (str, Path)):
        state = read_checkpoint(state, kind="msgpack")
    if isinstance(state, (bytes, bytearray)):
        state = serialization.msgpack_restore(bytes(state))
    if not isinstance(state, Mapping):
        raise ValueError(f"expected a score_sde state dict, got {type(state).__name__}")
    if use_ema:
        if "params_ema" not in state:
            raise ValueError(f"no 'params_ema' in the checkpoint (keys: {sorted(state)})")
        params = state["params_ema"]
    else:
        try:
            params = state["optimizer"]["target"]
        except (KeyError, TypeError):
            raise ValueError("no 'optimizer/target' in the checkpoint "
                             f"(keys: {sorted(state)})") from None
    if isinstance(params, Mapping) and set(params) == {"params"}:
        params = params["params"]
    model, size, channels = _build(model_config, image_size, num_channels, centered)
    expected, _ = _abstract_init(model, size, channels)
    flat = {k: np.asarray(v, dtype=np.float32) for k, v in _flat(params).items()}
    params = traverse_util.unflatten_dict(flat)
    check_tree(params, expected, "score_sde checkpoint")
    return {"params": params}


# ----------------------------------------------------------------------------------------------
# Files and command line
# ----------------------------------------------------------------------------------------------


def save_variables(variables: Mapping[str, Any], path: str | Path) -> None:
    """Write variables as flax msgpack (``flax.serialization.msgpack_serialize``), atomically
    (`score_jax.files.atomic_write`: a reader never sees a half-written file)."""
    tree = jax.tree_util.tree_map(np.asarray, dict(variables))
    atomic_write(path, serialization.msgpack_serialize(tree))


def load_variables(path: str | Path) -> dict[str, Any]:
    """Read variables written by `save_variables` (plain dicts of numpy arrays)."""
    return read_checkpoint(path, kind="msgpack")


def _load_config(path: str, arg: str | None = None) -> Any:
    """Run a config file's ``get_config([arg])``; its project root goes on sys.path so that
    ``from configs.default_... import`` works."""
    p = Path(path).resolve()
    for parent in p.parents:
        if parent.name == "configs":
            sys.path.insert(0, str(parent.parent))
            break
    spec = importlib.util.spec_from_file_location(f"_score_jax_config_{p.stem}", p)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load config file {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config(arg) if arg is not None else mod.get_config()


# The converters of ``python -m score_jax.convert``: first word -> (module with ``main(argv)``,
# one line of --help). "score_sde" is the default: a command line that does not start with one of
# these words goes to it.
SUBCOMMANDS = {
    "score_sde": ("score_jax.convert.score_sde", "score_sde / score_sde_pytorch checkpoints "
                  "(NCSN++, DDPM++, NCSNv2, DDPM; .pth or flax checkpoint_<n>) -> msgpack; the "
                  "default (the word may be left out)"),
    "dit": ("score_jax.convert.dit", "official DiT checkpoints (facebookresearch/DiT .pt, "
            ".safetensors, .npz) -> msgpack"),
    "autoencoder_kl": ("score_jax.convert.autoencoder", "Stable Diffusion / LDM AutoencoderKL "
                       "(diffusers folder, or a diffusers / CompVis state dict) -> msgpack"),
    "inception": ("score_jax.convert.inception", "pytorch-fid Inception weights (.pth) -> a "
                  "torch-free .npz (--to_npz IN OUT)"),
}
_NOT_CONVERTED = ("diffusers UNet2DConditionModel and transformers CLIPTextModel folders need no "
                  "conversion: txt2img.py / score_jax.text2image read a Stable Diffusion folder "
                  "as it is (convert.load_diffusers_unet, convert.load_clip_text).")


def usage() -> str:
    """The top-level ``python -m score_jax.convert --help``: every subcommand, one line each."""
    width = max(map(len, SUBCOMMANDS)) + 2
    lines = ["usage: python -m score_jax.convert [SUBCOMMAND] ARGS ...",
             "       python -m score_jax.convert SUBCOMMAND --help",
             "",
             "Convert released checkpoints into score_jax files. Subcommands:"]
    for name, (_, doc) in SUBCOMMANDS.items():
        lines += textwrap.wrap(doc, 100, initial_indent=f"  {name:<{width}}",
                               subsequent_indent=" " * (width + 2))
    lines += ["", "Example: python -m score_jax.convert checkpoint_26.pth out.msgpack \\",
              "           --config configs/ve/cifar10_ncsnpp_continuous.py", ""]
    lines += textwrap.wrap(_NOT_CONVERTED + " Flags are spelled with underscores (--config_arg);"
                           " the hyphen spelling (--config-arg) works too.", 100)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m score_jax.convert [SUBCOMMAND] ...``: the first word picks a converter of
    `SUBCOMMANDS` and the rest of the command line goes to its ``main`` (none of those words:
    `score_sde`, ``IN OUT --config FILE [--source pytorch|flax] [--no_ema]``); no argument or
    ``--help`` prints `usage`. Bad input (a missing file, a wrong shape) exits with one
    ``error:`` line, not a traceback."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        if not argv:
            sys.exit(2)
        return
    try:
        if argv[0] in SUBCOMMANDS and argv[0] != "score_sde":
            importlib.import_module(SUBCOMMANDS[argv[0]][0]).main(argv[1:])
        else:
            _convert_score_sde(argv[1:] if argv[0] == "score_sde" else argv)
    except (FileNotFoundError, IsADirectoryError, ValueError) as e:  # bad input: no traceback
        sys.exit(f"error: {type(e).__name__}: {e}")


def _convert_score_sde(argv: list[str]) -> None:
    ap = ArgumentParser(prog="python -m score_jax.convert [score_sde]",
                        description="Convert a released Score SDE checkpoint. Other converters: "
                        "python -m score_jax.convert --help.")
    ap.add_argument("input", type=existing_path,
                    help="score_sde_pytorch .pth or score_sde checkpoint_<n> file")
    ap.add_argument("output", help="output file (flax msgpack of {'params': ...})")
    ap.add_argument("--config", required=True, type=existing_path,
                    help="config file with get_config()")
    ap.add_argument("--config_arg", default=None, help="argument passed to get_config")
    ap.add_argument("--source", choices=("auto", "pytorch", "flax"), default="auto",
                    help="auto: .pth/.pt -> pytorch, anything else -> flax")
    ap.add_argument("--no_ema", action="store_true", help="convert the raw, not the EMA, weights")
    ap.add_argument("--image_size", type=int, default=None)
    ap.add_argument("--num_channels", type=int, default=None)
    args = ap.parse_args(argv)

    config = _load_config(args.config, args.config_arg)
    data = config.get("data", {}) if hasattr(config, "get") else {}
    kw = {"image_size": args.image_size or data.get("image_size"),
          "num_channels": args.num_channels or data.get("num_channels"),
          "centered": data.get("centered")}
    source = args.source
    if source == "auto":
        source = "pytorch" if Path(args.input).suffix in (".pth", ".pt") else "flax"
    if source == "pytorch":
        variables = load_pytorch_checkpoint(args.input, config.model, use_ema=not args.no_ema,
                                            **kw)
    else:
        variables = convert_flax_score_sde(args.input, config.model, use_ema=not args.no_ema,
                                           **kw)
    save_variables(variables, args.output)
    n = sum(int(np.prod(np.shape(v))) for v in jax.tree_util.tree_leaves(variables))
    print(f"wrote {args.output}: {n:,} parameters ({config.model.name}, {source}, "
          f"{'raw' if args.no_ema else 'EMA'})")


if __name__ == "__main__":
    main()
