"""Text-to-image (score_jax.text2image) against a tiny random-weight diffusers
StableDiffusionPipeline (tests/fixtures/txt2img/make_fixture.py: every parameter random,
float64): the same prompt / negative prompt / guidance / initial latents give the same final
latents and decoded images with DDIM and DPM-Solver++ (2M)."""
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip("transformers")

FIX = Path(__file__).parent / "fixtures" / "txt2img"
PROMPT, NEGATIVE, GUIDANCE, STEPS, SIZE = "the seven digit", "the digit", 3.0, 5, 16


@pytest.fixture(scope="module")
def ref():
    return np.load(FIX / "outputs.npz")


@pytest.fixture
def pipe(x64):
    from score_jax.text2image import Text2Image

    return Text2Image.from_pretrained(FIX / "pipeline", dtype=jnp.float64)


@pytest.mark.parametrize("sampler,name", [("ddim", "ddim"), pytest.param("dpm-solver++", "dpm", marks=pytest.mark.slow)])
def test_equals_diffusers_pipeline(pipe, ref, sampler, name):
    """Final latents and the unclamped VAE decode to 1e-10 relative, the output images to 1e-6
    (diffusers returns float32; the issue asks 1e-4); the reference runs diffusers in float64
    (its tables included)."""
    latents = np.transpose(ref["latents_init"], (0, 2, 3, 1))  # NCHW -> NHWC
    kw = dict(negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, num_steps=STEPS,
              sampler=sampler, height=SIZE, width=SIZE, latents=latents)
    want_z = np.transpose(ref[f"{name}/latents"], (0, 2, 3, 1))
    want_x = np.transpose(ref[f"{name}/decoded"], (0, 2, 3, 1))
    images = pipe(PROMPT, **kw)
    assert images.shape == (1, SIZE, SIZE, 3) and images.dtype == np.float64
    # diffusers' output_type="np" is float32 (its image processor casts): its rounding
    np.testing.assert_allclose(images, ref[f"{name}/images"], rtol=0, atol=1e-6)
    z = pipe(PROMPT, output="latents", **kw)
    np.testing.assert_allclose(z, want_z, rtol=0, atol=1e-10 * np.abs(want_z).max())
    x = np.asarray(pipe.decode(jnp.asarray(z)))
    np.testing.assert_allclose(x, want_x, rtol=0, atol=1e-10 * np.abs(want_x).max())
    # the scheduler's own table (float64 here) gives the same steps
    z2 = pipe.with_alphas_cumprod(ref["alphas_cumprod"])(PROMPT, output="latents", **kw)
    np.testing.assert_allclose(z2, z, rtol=0, atol=1e-12 * np.abs(want_z).max())


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 4.0 s)
def test_guidance_and_negative_prompt_matter(pipe, ref):
    latents = np.transpose(ref["latents_init"], (0, 2, 3, 1))
    kw = dict(num_steps=2, height=SIZE, width=SIZE, latents=latents, output="latents")
    a = pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=GUIDANCE, **kw)
    b = pipe(PROMPT, negative_prompt="", guidance_scale=GUIDANCE, **kw)
    c = pipe(PROMPT, negative_prompt=NEGATIVE, guidance_scale=1.0, **kw)
    d = pipe(PROMPT, negative_prompt="", guidance_scale=1.0, **kw)
    assert np.abs(a - b).max() > 1e-6 and np.abs(a - c).max() > 1e-6
    np.testing.assert_allclose(c, d, rtol=1e-10, atol=1e-12)  # s = 1: the null side cancels


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 7.4 s)
def test_seeded_batch_over_devices(pipe):
    """num_images x prompts, latents from the seed, the batch split over the 8 devices."""
    out = pipe(["a", "b"], num_images=4, num_steps=2, sampler="euler", seed=3, height=SIZE,
               width=SIZE)
    assert out.shape == (8, SIZE, SIZE, 3) and np.all((out >= 0) & (out <= 1))
    again = pipe(["a", "b"], num_images=4, num_steps=2, sampler="euler", seed=3, height=SIZE,
                 width=SIZE)
    np.testing.assert_array_equal(out, again)


def test_errors(pipe, tmp_path):
    from score_jax.text2image import Text2Image

    with pytest.raises(ValueError, match=r"sampler='heun' unknown; valid choices: \['ddim'"):
        pipe("a", sampler="heun", num_steps=2)
    with pytest.raises(ValueError, match="must be positive multiples of 4"):
        pipe("a", height=10, width=16, num_steps=2)
    with pytest.raises(FileNotFoundError, match=r"lacks \['unet'"):
        Text2Image.from_pretrained(tmp_path)
    for w in (-1.0, float("nan")):  # refused before anything is encoded or compiled
        with pytest.raises(ValueError, match=r"guidance_scale=.* invalid; valid: a finite number >= 0"):
            pipe("a", guidance_scale=w, num_steps=2)


@pytest.mark.slow  # a subprocess that loads jax and compiles the sampler: ~30-90 s on CPU
def test_cli_writes_grid(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    root = Path(__file__).parent.parent
    out = tmp_path / "grid.png"
    r = subprocess.run([sys.executable, str(root / "txt2img.py"), f"--model={FIX / 'pipeline'}",
                        "--prompt=the seven digit", "--prompt=a digit", "--num_images=2",
                        "--num_steps=2", "--sampler=unipc", f"--output={out}"],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(root)))
    assert r.returncode == 0, r.stderr[-2000:]
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * (SIZE + 2) + 2, 2 * (SIZE + 2) + 2, 3)
    with np.load(tmp_path / "grid.npz") as f:
        assert f["images"].shape == (4, SIZE, SIZE, 3) and list(f["prompts"]) == [
            "the seven digit", "a digit"]
