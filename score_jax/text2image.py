"""Text-to-image with a Stable Diffusion model folder (diffusers layout), jitted and batched.

    pipe = Text2Image.from_pretrained("stable-diffusion-v1-5")   # unet/ text_encoder/ tokenizer/
    images = pipe("a photo of an astronaut riding a horse",      # vae/ scheduler/
                  negative_prompt="blurry", guidance_scale=7.5, num_steps=50, sampler="ddim",
                  seed=0, height=512, width=512, num_images=4)   # (4, 512, 512, 3) in [0, 1]

The steps, as diffusers' ``StableDiffusionPipeline`` takes them:

1. prompt and negative prompt (the empty prompt by default) -> token ids (the folder's CLIP
   tokenizer, padded to its ``model_max_length``: ``score_jax.text``) -> the text encoder's last
   hidden state (``convert.load_clip_text``);
2. latents z_T ~ N(0, I) of shape (B, H / f, W / f, latent channels) (f the VAE's downsampling)
   from ``jax.random.key(seed)``, or the given ``latents``;
3. sampling on the scheduler config's discrete alphas_cumprod table (``sde.DiscreteVPSDE``, its
   prediction type and timestep spacing: ``sde.discrete_vpsde_from_scheduler_config``) with the
   chosen sampler (``"ddim"``, ``"dpm-solver++"`` (2M), ``"unipc"``, ``"euler"``), each taking the
   timesteps of the matching diffusers scheduler; classifier-free guidance
   ``eps = eps_uncond + s (eps_text - eps_uncond)`` (diffusers' ``guidance_scale`` s; the
   negative prompt is the null condition), the two halves in one U-Net call
   (``guidance.text.prompt_guidance``); the whole loop is one compiled ``lax`` loop
   (``runner.run_sampler``), the batch split over the devices;
4. x = VAE decode(z_0 / scaling_factor) (the ``vae/config.json`` ``scaling_factor``), image =
   clip(x / 2 + 0.5, 0, 1).

Equality with diffusers on a tiny random-weight pipeline (DDIM and DPM-Solver++, float64):
``tests/test_text2image.py``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import parallel, sampling
from score_jax import score as score_lib
from score_jax.guidance.text import prompt_guidance
from score_jax.models.autoencoder import AutoencoderKL

# sampler name -> (score_jax sampling method, diffusers scheduler class of the same steps)
SAMPLERS = {"ddim": ("ddim", "DDIMScheduler"),
            "dpm-solver++": ("dpm_solver", "DPMSolverMultistepScheduler"),
            "unipc": ("unipc", "UniPCMultistepScheduler"),
            "euler": ("euler", "EulerDiscreteScheduler")}
FOLDERS = ("unet", "text_encoder", "tokenizer", "vae", "scheduler")


def load_diffusers_vae(folder: str | os.PathLike, dtype: Any = jnp.float32
                       ) -> tuple[AutoencoderKL, dict, float]:
    """``(module, variables, scaling_factor)`` of a diffusers ``AutoencoderKL`` folder
    (``config.json`` + ``diffusion_pytorch_model.safetensors``): read by
    ``convert.autoencoder.load_diffusers_folder`` (the one reader of such folders, which also
    checks the architecture) and converted by ``convert_autoencoder_kl``. ``scaling_factor``
    defaults to SD's 0.18215 when config.json has none.

    Raises:
      ValueError: no config.json / weights file, or a config value this port does not
        implement (the key named).
    """
    from score_jax.convert.autoencoder import (
        build_autoencoder,
        convert_autoencoder_kl,
        load_diffusers_folder,
    )

    state_dict, cfg = load_diffusers_folder(folder)
    model_config = {k: cfg[k] for k in ("block_out_channels", "layers_per_block",
                                        "latent_channels", "norm_num_groups")}
    num_channels = int(cfg["in_channels"])
    variables = convert_autoencoder_kl(state_dict, model_config, num_channels=num_channels,
                                       layout="diffusers", dtype=np.dtype(dtype))
    module = build_autoencoder(model_config, num_channels)
    scaling = cfg.get("scaling_factor")
    return (module, jax.tree_util.tree_map(jnp.asarray, variables),
            float(0.18215 if scaling is None else scaling))


@dataclasses.dataclass(frozen=True, eq=False)
class Text2Image:
    """A loaded text-to-image model (see the module docstring). Build with `from_pretrained`."""

    unet: nn.Module
    unet_variables: Any
    text_encoder: nn.Module
    text_variables: Any
    tokenizer: Any
    vae: AutoencoderKL
    vae_variables: Any
    scaling_factor: float
    scheduler_config: dict
    sde: Any
    head: str
    spacing: str
    dtype: Any = jnp.float32

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, dtype: Any = jnp.float32) -> Text2Image:
        """Load an SD-layout folder (unet/, text_encoder/, tokenizer/, vae/,
        scheduler/scheduler_config.json); nothing is downloaded.

        Raises:
          FileNotFoundError: a sub-folder is missing (all missing ones named).
          ValueError: a config value the ports do not implement.
        """
        from score_jax import convert, text
        from score_jax.sde import discrete_vpsde_from_scheduler_config

        folder = Path(folder)
        missing = [f for f in FOLDERS if not (folder / f).is_dir()]
        if missing:
            raise FileNotFoundError(f"{str(folder)!r} lacks {missing}: a Stable Diffusion folder "
                                    f"(diffusers save_pretrained layout) has {list(FOLDERS)}")
        unet, unet_vars = convert.load_diffusers_unet(folder / "unet", dtype=dtype)
        text_module, text_vars = convert.load_clip_text(folder / "text_encoder", dtype=dtype)
        tokenizer = text.load_tokenizer(folder / "tokenizer")
        vae, vae_vars, sf = load_diffusers_vae(folder / "vae", dtype=dtype)
        sched = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        sde, head, spacing = discrete_vpsde_from_scheduler_config(sched)
        return cls(unet, unet_vars, text_module, text_vars, tokenizer, vae, vae_vars, sf, sched,
                   sde, head, spacing, dtype)

    def with_alphas_cumprod(self, table: Any) -> Text2Image:
        """The same pipeline on another alphas_cumprod table (N,), e.g. diffusers' own, which it
        computes in float32 (relative difference from this package's float64 table ~1e-7)."""
        from score_jax.sde import discrete_vpsde

        sde = discrete_vpsde(alphas_cumprod=np.asarray(table, np.float64),
                             steps_offset=int(self.scheduler_config.get("steps_offset", 0)))
        return dataclasses.replace(self, sde=sde)

    # ------------------------------------------------------------------------------------------
    def encode_prompt(self, prompts: Sequence[str]) -> jax.Array:
        """Text-encoder last hidden states (B, L, D) of ``prompts`` (``self.dtype``)."""
        ids = jnp.asarray(self.tokenizer(list(prompts)))
        return self._encode_fn(self.text_variables, ids)

    @functools.cached_property
    def _encode_fn(self):
        return jax.jit(lambda v, ids: self.text_encoder.apply(v, ids)[0])

    @functools.cached_property
    def _decode_fn(self):
        return jax.jit(lambda v, z: self.vae.apply(v, z, method=AutoencoderKL.decode))

    def latent_shape(self, height: int, width: int) -> tuple[int, int, int]:
        """(h, w, c) of the latents of an image of ``height`` x ``width``.

        Raises ValueError unless both are multiples of the VAE's factor times 2^(levels - 1)
        of the U-Net."""
        f = self.vae.downsampling_factor
        unit = f * 2 ** (len(self.unet.block_out_channels) - 1)
        if height % unit or width % unit or height <= 0 or width <= 0:
            raise ValueError(f"height={height}, width={width} must be positive multiples of "
                             f"{unit} (VAE factor {f} x U-Net downsampling)")
        return height // f, width // f, self.vae.latent_channels

    @functools.cached_property
    def score_factory(self):
        """``make(variables, {"context": c}) -> score_fn(x, t)`` of the U-Net on the schedule
        (one object per pipeline: the sampler's compilation cache keys on its identity)."""
        unet, sde, head = self.unet, self.sde, self.head

        def make(variables, kwargs):
            return score_lib.get_score_fn(sde, unet, variables, prediction=head,
                                          model_kwargs=kwargs)
        return make

    def sample_latents(self, context: jax.Array, null_context: jax.Array, *,
                       guidance_scale: float, num_steps: int, sampler: str,
                       latents: jax.Array, mesh=None) -> jax.Array:
        """Final latents z_0 (B, h, w, c) from ``latents`` z_T with CFG (module docstring)."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r} unknown; valid choices: {list(SAMPLERS)}")
        method = SAMPLERS[sampler][0]
        denoise = bool(self.scheduler_config.get("set_alpha_to_one", True)) \
            if sampler == "ddim" else True
        fn = prompt_guidance(self.score_factory, self.unet_variables, {"context": context},
                             {"context": null_context}, guidance_scale)
        sharding = None
        if mesh is not None and latents.shape[0] % mesh.devices.size == 0:
            sharding = parallel.data_sharding(mesh)
        x, _ = sampling.sample(jax.random.key(0), self.sde, fn, latents.shape, method,
                               x_init=latents, dtype=latents.dtype, sharding=sharding,
                               num_steps=int(num_steps), schedule=self.spacing, denoise=denoise)
        return x

    def decode(self, z: jax.Array) -> jax.Array:
        """VAE decode of final latents: x = D(z / scaling_factor) (B, H, W, 3), unclamped."""
        return self._decode_fn(self.vae_variables, z / self.scaling_factor)

    def __call__(self, prompt: str | Sequence[str], negative_prompt: str | Sequence[str] | None = None,
                 *, guidance_scale: float = 7.5, num_steps: int = 50, sampler: str = "ddim",
                 seed: int = 0, height: int | None = None, width: int | None = None,
                 num_images: int = 1, latents: Any = None, mesh=None,
                 output: str = "images") -> np.ndarray:
        """Images (N, H, W, 3) float in [0, 1] for ``prompt`` (N = len(prompts) x num_images).

        Args:
          prompt / negative_prompt: one string or one per prompt; negative None: "".
          guidance_scale: s of eps_uncond + s (eps_text - eps_uncond) (1: no guidance).
          num_steps / sampler: the sampler (`SAMPLERS`) and its steps.
          seed: the latents' key ``jax.random.key(seed)`` (ignored when ``latents`` given).
          height / width: pixels (default: the U-Net's sample_size x the VAE factor).
          latents: initial latents z_T, (N, h, w, c) NHWC.
          mesh: a device mesh to split the batch over (default all devices, when they divide N).
          output: "images", "decoded" (unclamped VAE output in [-1, 1]-ish) or "latents".

        Raises:
          ValueError: an unknown sampler / output, a negative or non-finite guidance_scale (valid:
            >= 0; diffusers turns guidance off for a scale <= 1, here 0 <= s < 1 interpolates
            between the negative prompt's and the text's predictions), bad sizes, prompt counts
            that disagree.
        """
        try:
            w = float(guidance_scale)
        except (TypeError, ValueError):
            w = float("nan")
        if isinstance(guidance_scale, bool) or not math.isfinite(w) or w < 0:
            raise ValueError(f"guidance_scale={guidance_scale!r} invalid; valid: a finite number "
                             f">= 0 (1: no guidance, > 1: guided, 0: the negative prompt's "
                             f"prediction)")
        if output not in ("images", "decoded", "latents"):
            raise ValueError(f"output={output!r} unknown; valid choices: ['images', 'decoded', "
                             f"'latents']")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative = "" if negative_prompt is None else negative_prompt
        negatives = [negative] * len(prompts) if isinstance(negative, str) else list(negative)
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; give "
                             f"one, or one per prompt")
        prompts = [p for p in prompts for _ in range(int(num_images))]
        negatives = [p for p in negatives for _ in range(int(num_images))]
        f = self.vae.downsampling_factor
        size = (self.unet.sample_size or self.unet.image_size or 64) * f
        shape = self.latent_shape(int(height or size), int(width or size))
        if latents is None:
            latents = jax.random.normal(jax.random.key(int(seed)), (len(prompts),) + shape,
                                        self.dtype)
        latents = jnp.asarray(latents, self.dtype)
        if latents.shape != (len(prompts),) + shape:
            raise ValueError(f"latents of shape {latents.shape}; expected {(len(prompts),) + shape}"
                             f" (NHWC) for {len(prompts)} images of {height} x {width}")
        if mesh is None and jax.device_count() > 1:
            mesh = parallel.make_mesh()
        z = self.sample_latents(self.encode_prompt(prompts), self.encode_prompt(negatives),
                                guidance_scale=guidance_scale, num_steps=num_steps,
                                sampler=sampler, latents=latents, mesh=mesh)
        if output == "latents":
            return np.asarray(z)
        x = self.decode(z)
        if output == "decoded":
            return np.asarray(x)
        return np.asarray(jnp.clip(x / 2 + 0.5, 0.0, 1.0))


__all__ = ["SAMPLERS", "FOLDERS", "Text2Image", "load_diffusers_vae"]
