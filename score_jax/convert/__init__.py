"""Converters of released checkpoints into score_jax variables, over one checkpoint reader.

Modules: ``reader`` (the one reader of torch ``.pth`` with ``weights_only=True``, safetensors,
npz and msgpack files, and the bf16-safe tensor -> numpy), ``score_sde`` (score_sde and
score_sde_pytorch checkpoints of NCSN++ / DDPM++ / NCSNv2 / DDPM), ``dit`` (official DiT),
``autoencoder`` (Stable Diffusion / LDM AutoencoderKL), ``diffusers_unet`` (a diffusers
``UNet2DConditionModel`` folder: `load_diffusers_unet`), ``inception`` (the FID Inception's
pytorch-fid weights), ``clip_text`` (transformers CLIPTextModel folders: `load_clip_text`). Command line::

    python -m score_jax.convert checkpoint_26.pth out.msgpack --config configs/ve/cifar10_ncsnpp_continuous.py
    python -m score_jax.convert dit DiT-XL-2-256x256.pt dit_xl2.msgpack --preset DiT-XL/2
    python -m score_jax.convert autoencoder_kl vae.safetensors sd_vae.msgpack
    python -m score_jax.convert inception --to_npz pt_inception-2015-12-05-6726825d.pth w.npz

Every public name of the former ``score_jax.convert`` module is re-exported here.
"""
from score_jax.convert.autoencoder import convert_autoencoder_kl, load_diffusers_folder
from score_jax.convert.clip_text import convert_clip_text, load_clip_text
from score_jax.convert.diffusers_unet import convert_diffusers_unet, load_diffusers_unet
from score_jax.convert.dit import convert_dit
from score_jax.convert.inception import convert_inception_pytorch
from score_jax.convert.reader import read_checkpoint, read_state_dict, to_numpy
from score_jax.convert.score_sde import (
    _abstract_init,
    _load_config,
    check_tree,
    convert_flax_score_sde,
    convert_pytorch,
    load_pytorch_checkpoint,
    load_variables,
    main,
    pytorch_ema_state_dict,
    save_variables,
)

__all__ = ["read_checkpoint", "read_state_dict", "to_numpy", "check_tree", "convert_pytorch",
           "pytorch_ema_state_dict", "load_pytorch_checkpoint", "convert_flax_score_sde",
           "save_variables", "load_variables", "convert_dit", "convert_autoencoder_kl",
           "load_diffusers_folder", "convert_inception_pytorch", "load_clip_text", "convert_clip_text",
           "convert_diffusers_unet", "load_diffusers_unet", "main", "_abstract_init", "_load_config"]
