"""The documentation runs: every ```python block of README.md and docs/*.md,
each page's blocks in order in one namespace, in a temporary working directory.

Markers (HTML comments, invisible on GitHub):
- ``<!-- docs-test: skip (reason) -->`` on the line before a fence: the block is not run (it needs
  converted weights, a download or a trained checkpoint). Every skip is listed in ``EXPECTED_SKIPS``
  below, so a new one is a visible change to this file.
- ``<!-- docs-test: slow (reason) -->`` anywhere in a page: the page runs in the slow set
  (``-m slow``). Fast pages (README.md, sde, sampling, likelihood, evaluation: about 30 s of CPU
  together) run in the default suite.
- ``<!-- docs-test: setup -->`` before a fence: the block runs like any other; it only marks lines
  that give the following blocks their inputs (tiny shapes).

Every shell command that README.md shows is listed in ``README_COMMANDS`` with the test that runs
it (or why none does), so a new command in the front door needs an entry here.
"""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = os.path.join(ROOT, "docs")

FENCE = re.compile(r"^```(\w*)\s*$")
MARK = re.compile(r"^<!--\s*docs-test:\s*(\w+)\s*(?:\((.*)\))?\s*-->\s*$")

# page -> [(first line of the block, reason)]: the blocks that cannot run in a test.
EXPECTED_SKIPS = {
    "docs/evaluation.md": ["needs the FID Inception weights pt_inception-2015-12-05-6726825d.pth "
                           "and reference statistics (downloads)"],
    "docs/models.md": ["needs the released DiT-XL/2 weights or a converted checkpoint"],
    "docs/text2image.md": [
        "needs a Stable Diffusion folder in the diffusers layout: downloaded weights",   # Text2Image
        "needs a Stable Diffusion folder in the diffusers layout: downloaded weights",   # load_diffusers_unet
        "needs a Stable Diffusion folder in the diffusers layout: downloaded weights",   # load_clip_text
        "needs a U-Net and its weights: a Stable Diffusion folder",                      # DiscreteVPSDE sampling
    ],
}


def pages():
    out = [os.path.join(ROOT, "README.md")]
    out += sorted(os.path.join(DOCS, f) for f in os.listdir(DOCS) if f.endswith(".md"))
    return out


def rel(path):
    return os.path.relpath(path, ROOT)


def parse(path):
    """Returns (blocks, slow): blocks are dicts with lang, line (1-based, of the fence), code, skip."""
    lines = open(path, encoding="utf-8").read().split("\n")
    blocks, slow, i, mark = [], False, 0, None
    while i < len(lines):
        line = lines[i]
        m = MARK.match(line.strip())
        if m:
            if m.group(1) == "slow":
                slow = True
            else:
                mark = (m.group(1), m.group(2))
            i += 1
            continue
        f = FENCE.match(line.strip())
        if f:
            lang, start = f.group(1), i + 1
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            if j == len(lines):
                raise AssertionError(f"{rel(path)}:{start}: unclosed code fence")
            skip = mark[1] if mark and mark[0] == "skip" else None
            if mark and mark[0] not in ("skip", "setup"):
                raise AssertionError(f"{rel(path)}:{start - 1}: unknown docs-test marker {mark[0]!r}")
            if mark and mark[0] == "skip" and not skip:
                raise AssertionError(f"{rel(path)}:{start - 1}: a skip needs its reason in parentheses")
            blocks.append({"lang": lang, "line": start, "code": "\n".join(lines[i + 1:j]), "skip": skip})
            i, mark = j + 1, None
            continue
        if line.strip():
            mark = None  # a marker applies to the fence right after it only
        i += 1
    return blocks, slow


def _params():
    out = []
    for p in pages():
        blocks, slow = parse(p)
        if not any(b["lang"] == "python" for b in blocks):
            continue
        marks = [pytest.mark.slow] if slow else []
        out.append(pytest.param(p, marks=marks, id=rel(p)))
    return out


@pytest.mark.parametrize("page", _params())
def test_page_python_blocks_run(page, tmp_path, monkeypatch, capsys):
    """Runs the page's python blocks in order in one namespace; a failing block names its line."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(ROOT)
    from score_jax import sampling

    blocks, _ = parse(page)
    ns = {"__name__": "__docs__"}
    ran, skipped = 0, []
    methods = dict(sampling.METHODS)  # a page may register a sampler (docs/sampling.md)
    try:
        for b in blocks:
            if b["lang"] != "python":
                continue
            if b["skip"]:
                skipped.append((b["line"], b["skip"]))
                continue
            code = compile(b["code"], f"{rel(page)}:{b['line']}", "exec")
            try:
                exec(code, ns)
            except Exception as e:  # noqa: BLE001 — re-raised with the block's place
                raise AssertionError(f"{rel(page)}: the python block at line {b['line']} failed: "
                                     f"{type(e).__name__}: {e}") from e
            ran += 1
    finally:
        sampling.METHODS.clear()
        sampling.METHODS.update(methods)
    with capsys.disabled():
        print(f"\n{rel(page)}: ran {ran} python blocks; skipped {len(skipped)}: {skipped}")
    assert ran > 0 or skipped


def test_skips_are_the_listed_ones():
    """The skip list is short and explicit: each skipped block's reason is in EXPECTED_SKIPS."""
    found = {}
    for p in pages():
        blocks, _ = parse(p)
        reasons = [b["skip"] for b in blocks if b["lang"] == "python" and b["skip"]]
        if reasons:
            found[rel(p)] = reasons
    assert found == EXPECTED_SKIPS


def test_no_page_is_read_from_pending():
    assert all("pending" not in rel(p).split(os.sep)[:-1] for p in pages())


LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def test_relative_links_resolve():
    """Every relative link of README.md and docs/*.md names an existing file."""
    bad = []
    for p in pages():
        for n, line in enumerate(open(p, encoding="utf-8"), 1):
            for target, _ in LINK.findall(line):
                if re.match(r"^[a-z]+:", target):
                    continue
                if not os.path.exists(os.path.normpath(os.path.join(os.path.dirname(p), target))):
                    bad.append(f"{rel(p)}:{n}: {target}")
    assert not bad, bad


# Every command README.md shows in a ```bash block -> the test that runs it (or why none does).
README_COMMANDS = {
    "python3 -m venv .venv && . .venv/bin/activate":
        ".ci/run (the same install in a fresh venv); no test",
    "pip install -e '.[test]'":
        ".ci/run; no test",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python train.py "
    "--workdir=workdirs/digits":
        "install: .ci/run; train.py on the default config: tests/test_docs.py::test_quick_start_commands (slow, "
        "n_iters shortened)",
    ".venv/bin/python -m pytest tests -n 2":
        ".ci/run (runs it verbatim)",
    ".venv/bin/python sample.py --workdir=workdirs/digits --num_samples=1000":
        "tests/test_docs.py::test_quick_start_commands (slow, --num_samples=16)",
    "python -m pytest tests -n 2":
        ".ci/run (runs it verbatim)",
    "python -m pytest tests -m slow":
        "no test (it is the slow suite itself)",
    # Text-to-image
    'python txt2img.py --model=/models/stable-diffusion-v1-5 --prompt="a watercolor painting of a fox in '
    'the snow" --negative_prompt="blurry" --guidance_scale=7.5 --num_steps=50 --sampler=ddim --seed=0 '
    '--height=512 --width=512 --num_images=4 --output=fox.png':
        "tests/test_text2image.py::test_cli_writes_grid (slow: txt2img.py on the tiny random-weight "
        "pipeline folder, 2 steps); the pipeline against diffusers: test_equals_diffusers_pipeline",
    "python train.py --config=configs/digits_text.py --workdir=workdirs/digits_text":
        "tests/test_digits_text.py::test_recipe_follows_captions (slow: trains configs/digits_text.py "
        "through bench/bench_digits_text.py, in-process train_and_evaluate, not the train.py CLI)",
    # Many hosts
    "python train.py --config=configs/latent/digits_ldm.py:dit --workdir=/shared/run --distributed "
    "--config.parallel.fsdp=8 --config.training.batch_size=256 --config.training.grad_accum_steps=2 "
    "--config.model.dtype=bfloat16 --config.model.remat=True":
        "no test as shown (needs a cluster); the multi-process path with fsdp over processes: "
        "tests/test_multihost.py (slow, 4 CPU processes, --coordinator setup); fsdp and "
        "grad_accum_steps: tests/test_fsdp.py; bf16 / remat: tests/test_bf16.py, "
        "tests/test_dit.py::test_bf16_and_remat_match",
    # Reproducing published numbers (tiny official-layout fixtures, stand-in Inception)
    "python -m score_jax.convert checkpoint_26 cifar10_ncsnpp.msgpack --config "
    "configs/ve/cifar10_ncsnpp_deep_continuous.py":
        "tests/test_released.py::test_score_sde_cifar10_convert_sample_score (slow)",
    "python sample.py --config=configs/ve/cifar10_ncsnpp_deep_continuous.py --checkpoint=cifar10_ncsnpp.msgpack "
    "--output_dir=ncsnpp_fid --num_samples=50000 --config.sampling.batch_size=1000 "
    "--inception=pt_inception-2015-12-05-6726825d.pth --ref_stats=cifar10_stats.npz --fid_resize=tf1":
        "tests/test_released.py::test_score_sde_cifar10_convert_sample_score (slow: "
        "sample_lib.sample_from_checkpoint with a stand-in Inception, few samples)",
    "python -m score_jax.convert dit DiT-XL-2-256x256.pt dit_xl2_256.msgpack --preset DiT-XL/2":
        "tests/test_released.py (the converted fixture: the official DiT state dict, preset DiT-S/2)",
    "python -m score_jax.convert autoencoder_kl sd-vae-ft-ema/ sd_vae.msgpack":
        "tests/test_released.py::test_autoencoder_from_a_diffusers_folder_decodes_as_diffusers",
    "python sample.py --config=configs/released/dit_xl2.py:256 --checkpoint=dit_xl2_256.msgpack "
    "--output_dir=dit256_fid --num_samples=50000 --config.sampling.batch_size=250 "
    "--inception=pt_inception-2015-12-05-6726825d.pth --ref_stats=VIRTUAL_imagenet256_labeled.npz "
    "--ref_stats_resize=tf1 --fid_resize=tf1 --quantize=round":
        "tests/test_released.py::test_dit_cli_end_to_end (slow: sample.py on the :smoke variant) and "
        "test_dit_sample_and_score_in_one_call (sample + score in one call, stand-in Inception)",
}


def readme_commands():
    blocks, _ = parse(os.path.join(ROOT, "README.md"))
    cmds = []
    for b in blocks:
        if b["lang"] != "bash":
            continue
        for line in b["code"].replace("\\\n", " ").split("\n"):
            cmd = re.sub(r"\s+#.*$", "", line).strip()
            cmd = re.sub(r"\s+", " ", cmd)
            if cmd and not cmd.startswith("#"):
                cmds.append(cmd)
    return cmds


def test_every_readme_command_is_accounted_for():
    assert sorted(set(readme_commands())) == sorted(README_COMMANDS)


@pytest.mark.slow
def test_quick_start_commands(tmp_path):
    """The quick start's train.py and sample.py commands, as shown, on the default config (the
    training shortened to 20 steps, 16 samples): train.py writes the grid, sample.py the metric."""
    import json
    import subprocess
    import sys

    wd = str(tmp_path / "workdirs" / "digits")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), f"--workdir={wd}",
                        "--config.training.n_iters=20", "--config.training.snapshot_freq=20",
                        "--compilation_cache=none"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert os.path.exists(os.path.join(wd, "samples", "iter_20", "samples.png"))
    r = subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), f"--workdir={wd}", "--num_samples=16",
                        "--compilation_cache=none"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    found = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(wd, "samples")) for f in fs
             if f == "metrics.json"]
    assert found, os.listdir(os.path.join(wd, "samples"))
    metrics = json.load(open(found[0]))
    assert metrics["digits_num_samples"] == 16 and metrics["digits_fd"] > 0
