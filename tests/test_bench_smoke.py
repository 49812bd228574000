"""Every script in bench/ runs end to end at its smallest setting (slow).

Each script found in ``bench/`` (``*.py`` and ``*.sh``) is run as a user would run it, in a fresh
process on one CPU device, with the arguments listed in `SMOKE`; a new script without an entry
fails `test_every_bench_script_has_a_smoke_setting`, so a script cannot be added (or a library
move break one) without a test noticing. Outputs go to a temporary directory: the test also
checks that no file of ``bench/`` (the recorded CSVs, plots, RESULTS.md) was written.

The PyTorch side of ``bench_vs_torch.py`` (the official networks of score_sde_pytorch) runs when
torch is importable and ``SCORE_SDE_PYTORCH`` names an unmodified checkout of
github.com/yang-song/score_sde_pytorch; it is skipped otherwise.

    python -m pytest tests/test_bench_smoke.py -m slow -q
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")

# Arguments of each script's smallest setting; "{tmp}" is the test's temporary directory.
SMOKE: dict[str, list[str]] = {
    "bench_accelerator.py": ["--smoke", "--json", "{tmp}/accelerator.json"],
    "bench_accelerator.sh": ["--smoke", "--json", "{tmp}/accelerator.json"],  # last --json wins
    "bench_backward_layers.py": ["--smoke"],  # the PyTorch side too where torch is installed
    "bench_async_save.py": ["--mb", "4", "--saves", "2", "--work-s", "0.1", "--digits-steps", "2",
                            "--json", "{tmp}/async.json"],
    "bench_distill.py": ["--workdirs", "{tmp}/none", "--num_samples", "8"],  # rows say "no checkpoint"
    "bench_distill_trajectory.py": ["--workdir", "{tmp}/none", "--teacher", "{tmp}/none"],
    "bench_distill_sigmas.py": ["--workdir", "{tmp}/none", "--teacher", "{tmp}/none",
                                "--num_samples", "8"],  # says "no checkpoint"
    "bench_digits_text.py": ["--workdir", "{tmp}/dt", "--variant", "smoke", "--scales", "0,1",
                             "--per_prompt", "1"],
    "bench_main_job_parts.py": ["--steps", "1", "--rounds", "1", "--variants", "now,no_guard",
                                "--no_snapshot"],
    "bench_dpm_lower_order.py": [],
    "bench_fsdp_memory.py": ["--preset", "DiT-S/2", "--batch", "16", "--fsdp", "1", "8",
                             "--json", "{tmp}/fsdp.json"],
    "bench_checkerboard.py": ["--steps", "2", "--batch", "16", "--n", "32"],
    "bench_compile_cache.sh": [],
    "bench_sample_stream_rss.sh": ["40", "{tmp}/rss"],  # N = 40: in memory vs streamed  # the smoke config already; writes under $TMPDIR
    "bench_data_pipeline.py": ["--smoke"],  # 16 px records, 0 / 1 worker, digits smoke steps
    "bench_conditional.py": ["--workdir", "{tmp}/wd", "--variant", "smoke", "--n_iters", "2",
                             "--num", "10", "--ws", "0,2"],
    "bench_digits_floor.py": [],  # numpy on 8x8 digits: seconds
    "bench_digits_metric.py": [],
    "bench_dit.py": ["--smoke"],
    "bench_fast_samplers.py": ["--smoke", "--out_dir", "{tmp}"],
    "bench_few_step.py": ["--problems", "ring", "--nfes", "5", "--grids", "logSNR",
                          "--families", "ddim,unipc2", "--csv", "{tmp}/few_step.csv"],
    "bench_fid.py": ["--smoke"],
    "bench_latent.py": ["--out", "{tmp}/latent", "--ae_seconds", "0", "--ldm_seconds", "0",
                        "--num_samples", "8", "--num_steps", "2"],
    "bench_main_job.py": ["--config", "default_digits:smoke", "--num_samples", "8",
                          "--workdir", "{tmp}/run"],
    "bench_models.py": ["--smoke"],
    "bench_repeat_calls.py": ["--image-size", "8", "--nf", "16", "--calls", "2"],
    "bench_ring_modes.py": ["--smoke"],
    "bench_samplers.py": ["--smoke"],
    "bench_step_breakdown.py": ["--smoke"],
    "bench_train.py": ["--smoke"],
    "bench_update_vs_torch.py": ["--smoke"],  # the PyTorch side too where torch is installed
    "bench_vs_torch.py": ["--smoke", "--flag_sweep", "default", "--sweep_train"],  # no torch
}
# Runs that need torch and the reference checkout (skipped without them).
TORCH_SMOKE: dict[str, list[str]] = {
    "bench_step_breakdown.py": ["--smoke", "--reference_path", "{reference}"],
    "bench_vs_torch.py": ["--smoke", "--reference_path", "{reference}"],
}


def bench_scripts() -> list[str]:
    return sorted(f for f in os.listdir(BENCH) if f.endswith((".py", ".sh"))
                  and not f.startswith("_"))


def _bench_files() -> dict[str, str]:
    """sha256 of every file under bench/ (what a smoke run must leave alone)."""
    out = {}
    for d, _, files in os.walk(BENCH):
        if "__pycache__" in d:
            continue
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, BENCH)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def _env(tmp) -> dict[str, str]:
    """The user's environment on one CPU device: without the test suite's 8 fake devices."""
    env = dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(tmp), PYTHON=sys.executable,
               MPLBACKEND="Agg", JAX_PLATFORMS="cpu")
    flags = [f for f in env.get("XLA_FLAGS", "").split()
             if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _run(script: str, args: list[str], tmp, **fmt) -> None:
    path = os.path.join(BENCH, script)
    cmd = (["bash", path] if script.endswith(".sh") else [sys.executable, path])
    cmd += [a.format(tmp=tmp, **fmt) for a in args]
    before = _bench_files()
    proc = subprocess.run(cmd, cwd=str(tmp), env=_env(tmp), capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    after = _bench_files()
    changed = [f for f in before if after.get(f) != before[f]]
    # new outputs (not scripts: those may be added by someone editing bench/ meanwhile)
    added = [f for f in after if f not in before and not f.endswith((".py", ".sh"))]
    assert not changed and not added, f"{script} wrote into bench/: {changed + added}"
    if script.endswith(".sh"):  # a shell pipeline hides a failing python behind grep's status
        assert "Error" not in proc.stdout, proc.stdout[-3000:]


def test_every_bench_script_has_a_smoke_setting():
    missing = [s for s in bench_scripts() if s not in SMOKE]
    stale = [s for s in SMOKE if s not in bench_scripts()]
    assert not missing, f"bench scripts without a smoke setting in SMOKE: {missing}"
    assert not stale, f"SMOKE lists scripts that are not in bench/: {stale}"


@pytest.mark.slow
@pytest.mark.parametrize("script", bench_scripts())
def test_bench_script_smoke(script, tmp_path):
    if script not in SMOKE:
        pytest.fail(f"{script} has no smoke setting in SMOKE")
    _run(script, SMOKE[script], tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TORCH_SMOKE))
def test_bench_script_smoke_torch(script, tmp_path):
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    reference = os.environ.get("SCORE_SDE_PYTORCH")
    if not reference or not os.path.isdir(os.path.join(reference, "models")):
        pytest.skip("SCORE_SDE_PYTORCH does not name a score_sde_pytorch checkout")
    _run(script, TORCH_SMOKE[script], tmp_path, reference=reference)
