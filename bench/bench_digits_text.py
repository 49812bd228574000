"""Text-conditional digits: train ``configs/digits_text.py`` (unless --no-train), then sample
digits from captions with classifier-free guidance and score them with the digits classifier.

For every guidance scale w, two prompt sets: the training phrasings
(``captions.DIGIT_TRAIN_TEMPLATES``) and the held-out ones (``DIGIT_HELDOUT_TEMPLATES``, never
seen in training); each digit 0..9 in each phrasing, ``--per_prompt`` samples each. Reported:
``evaluation.digits.digits_conditional_accuracy`` (the classifier's argmax equals the requested
digit; chance 0.1).

    PYTHONPATH=. python bench/bench_digits_text.py --workdir=/tmp/dt_run --no-train \\
        --png=docs/digits_text_samples.png
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def prompt_set(templates, per_prompt: int) -> tuple[list[str], np.ndarray]:
    """Captions (each digit in each template, ``per_prompt`` times) and their digits."""
    from score_jax import captions

    prompts, labels = [], []
    for tpl in templates:
        for d in range(10):
            prompts += [captions.digit_caption(d, tpl)] * per_prompt
            labels += [d] * per_prompt
    return prompts, np.asarray(labels, np.int32)


def sample_prompts(built, params, prompts, w: float, seed: int, batch: int = 400) -> np.ndarray:
    """Images in [0, 1] (N, H, W, C) for ``prompts`` at guidance ``w`` (the config's sampler)."""
    import jax
    import jax.numpy as jnp

    from score_jax import sampling
    from score_jax.guidance import prompt_guidance

    tok = built.model.tokenizer()
    null = {"tokens": jnp.asarray(tok([""]))}
    out = []
    for i in range(0, len(prompts), batch):
        part = prompts[i:i + batch]
        fn = prompt_guidance(built.make_score_fn, params, {"tokens": jnp.asarray(tok(part))},
                             null, w)
        x, _ = sampling.sample(jax.random.fold_in(jax.random.key(seed), i), built.sde, fn,
                               (len(part),) + tuple(built.image_shape), built.method,
                               **built.options)
        out.append(np.asarray(x))
    x = np.concatenate(out)
    return np.clip((x + 1.0) / 2.0 if built.centered else x, 0.0, 1.0)


def evaluate(config, workdir: str, *, scales, per_prompt: int, seed: int = 0,
             png: str | None = None) -> dict:
    from score_jax import captions, sample_lib
    from score_jax.evaluation.digits import digits_conditional_accuracy

    params, info = sample_lib.load_params(config, workdir=workdir)
    built = info["built"]
    results = {"step": info["step"]}
    for w in scales:
        for name, templates in (("train", captions.DIGIT_TRAIN_TEMPLATES),
                                ("heldout", captions.DIGIT_HELDOUT_TEMPLATES)):
            prompts, labels = prompt_set(templates, per_prompt)
            t0 = time.perf_counter()
            x = sample_prompts(built, params, prompts, w, seed)
            m = digits_conditional_accuracy(x, labels)
            results[f"w={w} {name}"] = dict(m, seconds=round(time.perf_counter() - t0, 1))
            print(f"w={w} {name:8s} accuracy {m['accuracy']:.3f} confidence "
                  f"{m['confidence']:.3f} ({len(prompts)} samples)", flush=True)
    if png:
        from PIL import Image

        from score_jax.sample_io import image_grid

        rows = [captions.digit_caption(d, "a handwritten {w}") for d in range(10)]
        prompts = [p for p in rows for _ in range(8)]
        x = sample_prompts(built, params, prompts, max(scales), seed + 1)
        grid = image_grid(x, nrow=8)
        pil = Image.fromarray(grid.squeeze(-1))
        pil.resize((pil.width * 4, pil.height * 4), Image.NEAREST).save(png)
        print(f"grid ({rows[0]!r} ... {rows[-1]!r}, w={max(scales)}) -> {png}")
    return results


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--no-train", action="store_true")
    p.add_argument("--variant", default=None)
    p.add_argument("--scales", default="0,1,3")
    p.add_argument("--per_prompt", type=int, default=5)
    p.add_argument("--png", default=None)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    from configs import digits_text

    config = digits_text.get_config(a.variant)
    if not a.no_train:
        from score_jax import train_lib

        train_lib.train_and_evaluate(config, a.workdir)
    res = evaluate(config, a.workdir, scales=[float(s) for s in a.scales.split(",")],
                   per_prompt=a.per_prompt, png=a.png)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    main()
