"""Execute examples/quickstart.ipynb end to end at tiny settings (slow; needs '.[notebook]').

The cell tagged "parameters" is replaced by tiny settings: the smoke digits config trained for a
few steps in a temporary workdir, and a class-conditional smoke config written next to it, so
every cell (guidance included) runs. Any error in a cell fails the test; the numbers the notebook
prints on its last line ("RESULTS {json}") are then checked.
"""
import json
import os
import sys
import textwrap
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(REPO, "examples", "quickstart.ipynb")
TRAIN_STEPS = 20
FAST_STEPS = 5
NUM_SAMPLES = 16

# The class-conditional model: the default digits config (EDM objective and preconditioning, 8 x 8)
# with labels, trained COND_TRAIN_STEPS steps, so that its guided samples are digits of their class
# when (and only when) the guidance cell wires the network as sample.py does (the EDM score); the
# reference score wiring of the same network gives noise (accuracy at chance, 0.1).
COND_TRAIN_STEPS = 300
MIN_CFG_ACCURACY = 0.5
COND_CONFIG = '''
from configs import default_digits


def get_config(arg=None):
    config = default_digits.get_config()
    config.model.num_classes = 10
    config.training.label_dropout = 0.1
    return config
'''


def tiny_parameters(tmp_path) -> str:
    cond = tmp_path / "cond_smoke.py"
    cond.write_text(COND_CONFIG)
    return textwrap.dedent(f'''\
        WORKDIR = {str(tmp_path / "digits")!r}
        CONFIG, CONFIG_ARG = "configs/default_digits.py", "smoke"
        TRAIN_IF_MISSING = True
        TRAIN_STEPS = {TRAIN_STEPS}
        COND_TRAIN_STEPS = {COND_TRAIN_STEPS}
        COND_CONFIG, COND_CONFIG_ARG = {str(cond)!r}, None
        COND_WORKDIR = {str(tmp_path / "digits_cond")!r}
        GUIDANCE_W = 3.0
        TOY_SAMPLES = 128
        NUM_SAMPLES = {NUM_SAMPLES}
        FAST_STEPS = {FAST_STEPS}
        NUM_BPD = 4
        SEED = 0
        ''')


def run_notebook(path, parameters: str, cwd: str, env: dict):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    nb = nbformat.read(path, as_version=4)
    tagged = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path}: expected one cell tagged 'parameters', found {len(tagged)}"
    tagged[0].source = parameters
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": cwd}})
    client.execute(env=env)  # raises CellExecutionError on the first failing cell
    return nb


def cell_seconds(cell) -> float:
    from datetime import datetime

    t = cell.get("metadata", {}).get("execution", {})
    start, end = t.get("iopub.execute_input"), t.get("shell.execute_reply")
    if not (start and end):
        return float("nan")
    parse = lambda s: datetime.fromisoformat(s.replace("Z", "+00:00"))
    return (parse(end) - parse(start)).total_seconds()


def printed_results(nb) -> dict:
    for cell in reversed(nb.cells):
        for out in cell.get("outputs", []):
            for line in out.get("text", "").splitlines():
                if line.startswith("RESULTS "):
                    return json.loads(line[len("RESULTS "):])
    raise AssertionError("the notebook printed no 'RESULTS {...}' line")


@pytest.mark.slow
def test_quickstart_notebook(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO, MPLBACKEND="Agg")
    # one CPU device in the kernel: drop the 8 fake devices conftest asks for
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "xla_force_host_platform_device_count" not in f)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    t0 = time.perf_counter()
    nb = run_notebook(NOTEBOOK, tiny_parameters(tmp_path), REPO, env)
    print(f"quickstart.ipynb ran in {time.perf_counter() - t0:.0f} s; per code cell:",
          [round(cell_seconds(c)) for c in nb.cells if c.cell_type == "code"])
    r = printed_results(nb)
    # analytic score: PC with the SDE's 1000 steps, predictor + corrector; unipc NFE = steps
    assert r["toy_nfe_pc"] == 2000
    assert r["toy_nfe_unipc"] == FAST_STEPS
    assert 10 < r["toy_nfe_ode"] < 1000
    # the trained (smoke: 16 x 16 x 1) model
    assert r["digits_nfe"] == FAST_STEPS
    assert r["samples_shape"] == [NUM_SAMPLES, 16, 16, 1]
    assert r["seconds"][1] < r["seconds"][0]  # the second call does not compile
    assert r["fd"] > 0 and r["fd_floor"] > 0 and 1.0 <= r["inception"] <= 10.0
    assert len(r["bpd"]) == 4 and all(0.0 < b < 20.0 for b in r["bpd"]) and r["bpd_nfe"] > 0
    assert r["inpaint_nfe"] == 20 and r["inpaint_known_error"] == 0.0
    # guided samples of the EDM model through sample.py's wiring: digits of their class
    assert r["cfg_nfe"] == FAST_STEPS
    assert r["cfg_accuracy"] >= MIN_CFG_ACCURACY, r["cfg_accuracy"]
    assert os.path.isdir(tmp_path / "digits" / "checkpoints")
