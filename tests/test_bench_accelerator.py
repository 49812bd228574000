"""bench/bench_accelerator.sh runs end to end on a CPU in --smoke mode (tiny sizes)."""
import json
import os
import subprocess

import pytest
from test_train_helpers import ROOT


@pytest.mark.slow  # compiles DDPM++ (f32, bf16), a tiny DiT and a sampler: minutes on 2 cores
def test_bench_accelerator_smoke(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), JAX_PLATFORMS="cpu",
               BENCH_ACCELERATOR_TIMEOUT="3000", BENCH_ACCELERATOR_BUDGET="3000",
               XLA_FLAGS="--xla_force_host_platform_device_count=2")
    proc = subprocess.run(["bash", os.path.join(ROOT, "bench", "bench_accelerator.sh"),
                           "--smoke"], capture_output=True, text=True, env=env, timeout=3100)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [ln.split()[1:] for ln in proc.stdout.splitlines() if ln.startswith("BENCH ")]
    rows = [dict(kv.split("=", 1) for kv in ln) for ln in lines]
    sections = [r["section"] for r in rows]
    for name in ("env", "ddpmpp_train", "dit_xl", "sampling", "torch_ddpmpp", "total"):
        assert name in sections, sections
    train = [r for r in rows if r["section"] == "ddpmpp_train"]
    assert {r["dtype"] for r in train} == {"float32", "bfloat16"}
    assert all(float(r["img_per_s"]) > 0 for r in train)
    dit = [r for r in rows if r["section"] == "dit_xl"]
    assert {r["fsdp"] for r in dit} == {"1", "2"}  # replicated and sharded over the 2 devices
    with open(tmp_path / "accelerator_results.json") as f:
        records = json.load(f)
    assert [r["section"] for r in records] == sections
