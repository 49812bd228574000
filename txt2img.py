"""Text-to-image from a Stable Diffusion model folder (diffusers layout: unet/, text_encoder/,
tokenizer/, vae/, scheduler/scheduler_config.json), e.g. stable-diffusion-v1-5 as
``save_pretrained`` / the Hub writes it; nothing is downloaded.

    python txt2img.py --model=stable-diffusion-v1-5 --prompt="a watercolor fox" \\
        --negative_prompt="blurry" --guidance_scale=7.5 --num_steps=50 --sampler=ddim \\
        --seed=0 --height=512 --width=512 --num_images=4 --output=fox.png

Writes ``--output`` (a PNG grid of the images, one row per prompt) and ``<output>.npz`` (uint8
images). Sampling is one compiled loop with classifier-free guidance (``score_jax.text2image``);
the images are split over the local devices when their number divides the batch.
"""
import logging
import os
import sys

from absl import app, flags

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, _HERE)
import _cli  # noqa: E402
from score_jax.config.flags import define_guidance_scale_flag  # noqa: E402

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Stable Diffusion folder (unet/, text_encoder/, tokenizer/, "
                    "vae/, scheduler/).")
flags.DEFINE_multi_string("prompt", None, "Prompt (repeat the flag for several).")
flags.DEFINE_string("negative_prompt", "", "Negative prompt (the null condition of guidance; "
                    "default the empty prompt).")
define_guidance_scale_flag(7.5, "s >= 0 of eps_uncond + s (eps_text - eps_uncond); 1: no guidance "
                           "(the text-conditional model), 0: the negative / empty prompt's.",
                           what="0: the negative prompt's model, 1: no guidance, > 1: guided")
flags.DEFINE_integer("num_steps", 50, "Sampler steps.", lower_bound=1)
flags.DEFINE_enum("sampler", "ddim", ["ddim", "dpm-solver++", "unipc", "euler"],
                  "Sampler (each takes the timesteps of the diffusers scheduler of that name).")
flags.DEFINE_integer("seed", 0, "Seed of the initial latents.")
flags.DEFINE_integer("height", None, "Image height in pixels (default: the U-Net's sample_size "
                     "x the VAE factor, 512 for SD 1.5).")
flags.DEFINE_integer("width", None, "Image width in pixels (default as height).")
flags.DEFINE_integer("num_images", 1, "Images per prompt.", lower_bound=1)
flags.DEFINE_enum("dtype", "float32", ["float32", "float64"], "Parameter and "
                  "compute dtype.")
flags.DEFINE_string("output", "txt2img.png", "Output PNG grid.")
flags.DEFINE_string("compilation_cache", None, _cli.COMPILATION_CACHE_HELP)
flags.mark_flags_as_required(["model", "prompt"])


def main(argv):
    del argv
    _cli.setup_process(FLAGS.compilation_cache)
    import jax
    import jax.numpy as jnp
    import numpy as np
    from PIL import Image

    from score_jax.sample_io import image_grid
    from score_jax.text2image import Text2Image

    if FLAGS.dtype == "float64":
        jax.config.update("jax_enable_x64", True)
    if not os.path.isdir(FLAGS.model):
        logging.error("--model=%r is not a folder (a Stable Diffusion folder has unet/, "
                      "text_encoder/, tokenizer/, vae/, scheduler/)", FLAGS.model)
        sys.exit(1)
    try:
        pipe = Text2Image.from_pretrained(FLAGS.model, dtype=getattr(jnp, FLAGS.dtype))
        images = pipe(FLAGS.prompt, FLAGS.negative_prompt, guidance_scale=FLAGS.guidance_scale,
                      num_steps=FLAGS.num_steps, sampler=FLAGS.sampler, seed=FLAGS.seed,
                      height=FLAGS.height, width=FLAGS.width, num_images=FLAGS.num_images)
    except (ValueError, FileNotFoundError, ImportError) as e:
        logging.error("%s: %s", type(e).__name__, e)
        sys.exit(1)
    images = np.asarray(images, np.float32)
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.output)), exist_ok=True)
    Image.fromarray(image_grid(images, nrow=FLAGS.num_images)).save(FLAGS.output)
    np.savez_compressed(os.path.splitext(FLAGS.output)[0] + ".npz",
                        images=np.round(images * 255).astype(np.uint8),
                        prompts=np.asarray(FLAGS.prompt))
    print(f"{len(images)} images ({FLAGS.sampler}, {FLAGS.num_steps} steps, guidance "
          f"{FLAGS.guidance_scale:g}) -> {FLAGS.output}")


if __name__ == "__main__":
    app.run(main, argv=_cli.respell_argv())
