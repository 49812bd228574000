"""Every shipped config (file x variant) gives the values it gave before the configs were
reorganised (issue 21 item 2): ``tests/fixtures/config_golden.json`` was dumped from the
configs as they were (commit cce9b7f) by ``dump`` below, as the schema plus each config's
flattened differences from it.

Keys that the schema gained since (another feature's new option) must hold their schema default
in a shipped config unless listed in ``CHANGED``. Deliberate changes are listed in ``CHANGED``.
"""
import glob
import importlib.util
import json
import os

import pytest
from test_train_helpers import ROOT

from score_jax import config as config_lib

GOLDEN = os.path.join(ROOT, "tests", "fixtures", "config_golden.json")
MISSING = "<absent>"
# file -> extra variants dumped besides None and "smoke"
EXTRA_VARIANTS = {
    "configs/default_digits.py": ["dsm", "dsm_smoke"],
    "configs/digits_cond.py": ["dit", "dit_smoke"],
    "configs/latent/digits_ldm.py": ["flow", "cfg", "dit", "cfg,dit", "flow,smoke", "cfg,smoke",
                                     "dit,smoke", "cfg,dit,smoke", "flow,cfg"],
}
# Deliberate changes: "file:variant" -> {flattened key: new value}.
# evaluate.py's samples per checkpoint of every digits config (and variant): 1000, the N of the
# digits metric the README / docs report (was the schema's 50000, CIFAR's FID protocol).
DIGITS_FILES = ("configs/default_digits.py", "configs/digits_cond.py", "configs/edm/digits_edm.py",
                "configs/flow/digits_flow.py", "configs/latent/digits_autoencoder.py",
                "configs/latent/digits_ldm.py")
CHANGED: dict[str, dict] = {name: {"eval.num_samples": 1000}
                            for name in json.load(open(GOLDEN))["configs"]
                            if name.startswith(tuple(f + ":" for f in DIGITS_FILES))}
NOT_CONFIGS = ("common.py", "models.py", "recipes.py")


def flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + k + "."))
        else:
            out[prefix + k] = list(v) if isinstance(v, tuple) else v
    return out


def _jsonable(d):
    return json.loads(json.dumps(d, default=repr))


def config_files():
    return sorted(os.path.relpath(p, ROOT)
                  for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
                  if not os.path.basename(p).startswith("__")
                  and os.path.basename(p) not in NOT_CONFIGS)


def _module(path):
    spec = importlib.util.spec_from_file_location("golden_" + path.replace("/", "_")[:-3],
                                                  os.path.join(ROOT, path))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def dump() -> dict[str, dict]:
    """Every (file, variant) flattened: ``{"file:variant": {key: value}}``."""
    out = {}
    for f in config_files():
        mod = _module(f)
        if not hasattr(mod, "get_config"):  # default_celeba / default_lsun: bases only
            out[f"{f}:get_default_configs"] = _jsonable(flat(mod.get_default_configs().to_dict()))
            continue
        for arg in [None, "smoke"] + EXTRA_VARIANTS.get(f, []):
            c = mod.get_config(arg) if arg is not None else mod.get_config()
            out[f"{f}:{arg or ''}"] = _jsonable(flat(c.to_dict()))
    return out


def _expected(golden, name):
    want = dict(golden["schema"])
    want.update(golden["configs"][name])
    want = {k: v for k, v in want.items() if v != MISSING}
    want.update(CHANGED.get(name, {}))
    return want


@pytest.fixture(scope="module")
def current():
    return dump()


# config files added after the golden was dumped (new features, not reorganised configs)
NEW_CONFIG_FILES = ("configs/digits_distill.py", "configs/released/", "configs/digits_text.py")


def test_every_golden_config_still_exists(current):
    golden = json.load(open(GOLDEN))
    new = sorted(set(current) - set(golden["configs"]))
    assert sorted(set(golden["configs"]) - set(current)) == []
    assert [n for n in new if not n.startswith(NEW_CONFIG_FILES)] == [], new


@pytest.mark.parametrize("name", sorted(json.load(open(GOLDEN))["configs"]))
def test_config_reproduces_the_golden(name, current):
    golden = json.load(open(GOLDEN))
    want = _expected(golden, name)
    have = current[name]
    schema_now = _jsonable(flat(config_lib.base_config().to_dict()))
    diffs = {k: (want.get(k, MISSING), have.get(k, MISSING)) for k in set(want) | set(have)
             if want.get(k, MISSING) != have.get(k, MISSING)
             # a key the schema gained later: the config must keep the schema's default
             and not (k not in golden["schema"] and k not in golden["configs"][name]
                      and k in schema_now and have.get(k) == schema_now[k])}
    assert not diffs, diffs


def test_main_job_config_is_pinned(current):
    """The main job (``python train.py --workdir=...``: configs/default_digits.py) in words."""
    c = current["configs/default_digits.py:"]
    assert (c["training.objective"], c["training.sde"], c["model.name"], c["sampling.method"],
            c["sampling.num_steps"], c["training.n_iters"], c["model.ema_rate"]) == (
        "edm", "vesde", "ncsnpp", "heun", 18, 3000, 0.99)


def _is_thin(path) -> bool:
    """A file that re-uses another config's ``get_config`` (it defines no function)."""
    import ast

    tree = ast.parse(open(os.path.join(ROOT, path)).read())
    return not any(isinstance(n, (ast.FunctionDef, ast.ClassDef)) for n in tree.body)


def test_no_verbatim_twins(current):
    """Issue 21: default_cifar10.py and vp/cifar10_ddpmpp_continuous.py were identical copies;
    digits_edm.py re-applied the default's own recipe. Two files that give the same config: one
    is a thin file that imports the other's ``get_config``."""
    by_value: dict[str, list[str]] = {}
    for name, c in current.items():
        path, _, arg = name.partition(":")
        if arg == "":
            by_value.setdefault(json.dumps(c, sort_keys=True), []).append(path)
    twins = [paths for paths in by_value.values() if len(paths) > 1]
    assert twins, "the thin files (digits_edm, vp/cifar10_ddpmpp_continuous) are expected here"
    for paths in twins:
        thick = [p for p in paths if not _is_thin(p)]
        assert len(thick) == 1, paths
