"""Converted reference weights reproduce the PyTorch reference (fixtures in
tests/fixtures/reference_nets, see its README), and the converters' file formats and errors."""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import reference_model_configs
from flax import serialization

from score_jax.checkpoint import (
    convert_flax_score_sde,
    convert_pytorch,
    load_variables,
    pytorch_ema_state_dict,
)
from score_jax.convert import main as convert_main
from score_jax.models import get_model, get_sigmas
from score_jax.models import up_or_down_sampling as uds

FIXTURES = Path(__file__).parent / "fixtures" / "reference_nets"
NAMES = ["ncsnpp_ve_fourier", "ddpmpp_vp_positional", "ddpm_vp", "ncsnpp_ve_discrete"]


@functools.cache
def load_fixture(name):
    meta = json.loads((FIXTURES / f"{name}.json").read_text())
    z = np.load(FIXTURES / f"{name}.npz")
    arrays = {k: z[k] for k in z.files}
    state_dict = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
    return meta, arrays, state_dict


@functools.cache
def converted(name):
    """(model, float32 variables) of a fixture; conversion and model built once per session."""
    meta, _, sd = load_fixture(name)
    cfg = meta["config"]
    return (get_model(cfg["model"], **cfg["data"]),
            convert_pytorch(sd, cfg["model"], **cfg["data"]))


@functools.cache
def jitted_apply(name, x64_enabled):
    """One compiled forward per fixture and precision mode, reused by every test."""
    model = converted(name)[0]
    return jax.jit(lambda v, x, labels: model.apply(v, x, labels, train=False))


def forward(name, variables, dtype):
    _, arr, _ = load_fixture(name)
    x = arr["input/x"].transpose(0, 2, 3, 1).astype(dtype)
    labels = arr["input/labels"]
    if labels.dtype.kind == "f":
        labels = labels.astype(dtype)
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
    fn = jitted_apply(name, bool(jax.config.read("jax_enable_x64")))
    return np.asarray(fn(params, jnp.asarray(x), jnp.asarray(labels)))


def score_from_output(meta, y, t, labels):
    """The reference get_score_fn wiring, written out: VE -> y; VP continuous -> -y / s_t with
    log a_t = -t^2 (b1 - b0)/4 - t b0/2, s_t = sqrt(1 - a_t^2); VP discrete ->
    -y / sqrt(1 - alphabar)[label] (float32 table, as the reference)."""
    sde, m = meta["sde"], meta["config"]["model"]
    if sde["cls"] == "VESDE":
        return y
    b0, b1 = m["beta_min"], m["beta_max"]
    if meta["config"]["training"]["continuous"]:
        log_mean = -0.25 * t ** 2 * (b1 - b0) - 0.5 * t * b0
        std = np.sqrt(1.0 - np.exp(2.0 * log_mean))
    else:
        n = sde["N"]
        betas = np.linspace(b0 / n, b1 / n, n)
        table = np.sqrt(1.0 - np.cumprod(1.0 - betas)).astype(np.float32)
        std = table[labels.astype(np.int64)].astype(np.float64)
    return -y / std[:, None, None, None]


def run_fixture(name, dtype):
    meta, arr, _ = load_fixture(name)
    y = forward(name, converted(name)[1], dtype)
    score = score_from_output(meta, y.astype(np.float64), arr["input/t"], arr["input/labels"])
    return meta, arr, y, score


@pytest.mark.parametrize("name", NAMES)
def test_fixture_x64(name, x64):
    meta, arr, y, score = run_fixture(name, np.float64)
    assert y.dtype == np.float64
    y_ref = arr["output/y"].transpose(0, 2, 3, 1)
    s_ref = arr["output/score"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5 * np.abs(y_ref).max())
    np.testing.assert_allclose(score, s_ref, rtol=1e-5, atol=1e-5 * np.abs(s_ref).max())
    if "aux/score_divisor_std" in arr:  # our std formula is the reference's
        np.testing.assert_allclose(-y_ref / s_ref, np.broadcast_to(
            arr["aux/score_divisor_std"][:, None, None, None], y_ref.shape), rtol=1e-6)


@pytest.mark.parametrize("name", [
    "ncsnpp_ve_fourier", "ddpm_vp",
    pytest.param("ddpmpp_vp_positional", marks=pytest.mark.slow),
    pytest.param("ncsnpp_ve_discrete", marks=pytest.mark.slow)])
def test_fixture_float32(name):
    meta, arr, y, score = run_fixture(name, np.float32)
    assert y.dtype == np.float32
    y_ref = arr["output/y"].transpose(0, 2, 3, 1)
    s_ref = arr["output/score"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())
    np.testing.assert_allclose(score, s_ref, rtol=1e-4, atol=1e-4 * np.abs(s_ref).max())


def test_mutated_weight_is_detected(x64):
    """The comparison can fail: transposing one attention weight moves y far beyond 1e-5."""
    meta, arr, sd = load_fixture("ddpm_vp")
    cfg = meta["config"]
    sd = dict(sd)
    sd["all_modules.6.NIN_0.W"] = sd["all_modules.6.NIN_0.W"].T.copy()
    variables = convert_pytorch(sd, cfg["model"], **cfg["data"])
    y = forward("ddpm_vp", variables, np.float64)
    y_ref = arr["output/y"].transpose(0, 2, 3, 1)
    assert np.abs(y - y_ref).max() > 1e-3 * np.abs(y_ref).max()


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def test_mismatched_config_names_key_and_shapes():
    meta, _, sd = load_fixture("ncsnpp_ve_fourier")
    cfg = meta["config"]
    wrong = dict(cfg["model"], nf=32)
    with pytest.raises(ValueError, match=r"parameter 'AttnBlockpp_0/GroupNorm_0/bias' has "
                                         r"shape \(32,\), the model expects \(64,\)"):
        convert_pytorch(sd, wrong, **cfg["data"])

    sd_missing = {k: v for k, v in sd.items() if k != "all_modules.25.bias"}
    with pytest.raises(ValueError, match=r"missing parameter 'Conv_1/bias' \(expected shape "
                                         r"\(3,\)\)"):
        convert_pytorch(sd_missing, cfg["model"], **cfg["data"])

    sd_bad = dict(sd)
    sd_bad["all_modules.25.bias"] = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match=r"'Conv_1/bias' has shape \(4,\), the model expects "
                                         r"\(3,\)"):
        convert_pytorch(sd_bad, cfg["model"], **cfg["data"])

    with pytest.raises(ValueError, match="sigmas buffer differs"):
        convert_pytorch(sd, dict(cfg["model"], sigma_max=90), **cfg["data"])

    with pytest.raises(ValueError, match="unexpected PyTorch key 'foo'"):
        convert_pytorch(dict(sd, foo=np.zeros(1)), cfg["model"], **cfg["data"])


# ---------------------------------------------------------------------------------------------
# EMA, score_sde (flax) checkpoints and the command line
# ---------------------------------------------------------------------------------------------


def test_pytorch_ema_mapping_without_torch():
    """shadow_params follow the trainable parameters: no sigmas buffer, no frozen Fourier W."""
    meta, arr, sd = load_fixture("ncsnpp_ve_fourier")
    cfg = meta["config"]
    model_sd = {"module." + k: v for k, v in sd.items()}
    trainable = [k for k in model_sd if k not in ("module.sigmas", "module.all_modules.0.W")]
    shadow = [model_sd[k] * 2.0 for k in trainable]
    ckpt = {"model": model_sd, "ema": {"decay": 0.999, "num_updates": 3,
                                       "shadow_params": shadow}, "step": 3}
    ema_sd = pytorch_ema_state_dict(ckpt, cfg["model"], **cfg["data"])
    v = convert_pytorch(ema_sd, cfg["model"], **cfg["data"])["params"]
    np.testing.assert_array_equal(v["Conv_0"]["bias"], 2.0 * sd["all_modules.3.bias"])
    np.testing.assert_array_equal(v["GaussianFourierProjection_0"]["W"], sd["all_modules.0.W"])
    with pytest.raises(ValueError, match="EMA has 1 tensors"):
        pytorch_ema_state_dict(dict(ckpt, ema={"shadow_params": shadow[:1]}), cfg["model"],
                               **cfg["data"])


def _score_sde_state(params, target):
    return {"step": np.asarray(7), "optimizer": {"target": target, "state": {"step": 7}},
            "lr": np.asarray(2e-4), "model_state": {}, "ema_rate": np.asarray(0.999),
            "params_ema": params, "rng": np.asarray([0, 1], np.uint32)}


def test_flax_score_sde_checkpoint_and_cli(tmp_path):
    meta, arr, sd = load_fixture("ddpm_vp")
    cfg = meta["config"]
    params = convert_pytorch(sd, cfg["model"], **cfg["data"])["params"]
    target = jax.tree_util.tree_map(lambda a: a + 1.0, params)
    ckpt = tmp_path / "checkpoint_7"
    ckpt.write_bytes(serialization.msgpack_serialize(_score_sde_state(params, target)))

    ema = convert_flax_score_sde(ckpt, cfg["model"], **cfg["data"])["params"]
    raw = convert_flax_score_sde(ckpt, cfg["model"], use_ema=False, **cfg["data"])["params"]
    np.testing.assert_array_equal(ema["Conv_0"]["kernel"], params["Conv_0"]["kernel"])
    np.testing.assert_array_equal(raw["Conv_0"]["kernel"], params["Conv_0"]["kernel"] + 1.0)

    bad = dict(cfg["model"], ch_mult=[1, 2, 2])
    with pytest.raises(ValueError, match="score_sde checkpoint does not match the config"):
        convert_flax_score_sde(ckpt, bad, **cfg["data"])

    # CLI: a reference-style config file under a configs/ folder.
    cdir = tmp_path / "configs"
    cdir.mkdir()
    (cdir / "tiny_ddpm.py").write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.model = ml_collections.ConfigDict({cfg['model']!r})\n"
        f"    c.data = ml_collections.ConfigDict({cfg['data']!r})\n"
        "    return c\n")
    out = tmp_path / "out.msgpack"
    convert_main([str(ckpt), str(out), "--config", str(cdir / "tiny_ddpm.py")])
    loaded = load_variables(out)
    np.testing.assert_array_equal(loaded["params"]["Dense_1"]["kernel"],
                                  params["Dense_1"]["kernel"])
    assert get_model(ml_collections.ConfigDict(cfg["model"]), **cfg["data"]) == converted(
        "ddpm_vp")[0]
    y = forward("ddpm_vp", loaded, np.float32)
    y_ref = arr["output/y"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())


def test_pytorch_pth_file(tmp_path):
    torch = pytest.importorskip("torch")
    meta, arr, sd = load_fixture("ddpm_vp")
    cfg = meta["config"]
    model_sd = {"module." + k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in sd.items()}
    shadow = [t.clone() for k, t in model_sd.items() if k != "module.sigmas"]
    ckpt = {"optimizer": {"state": {}, "param_groups": [{"lr": 2e-4, "betas": (0.9, 0.999)}]},
            "model": model_sd, "ema": {"decay": 0.999, "num_updates": 1, "shadow_params": shadow},
            "step": 1}
    pth = tmp_path / "checkpoint_1.pth"
    torch.save(ckpt, pth)
    cdir = tmp_path / "configs"
    cdir.mkdir()
    (cdir / "tiny.py").write_text(
        "import ml_collections\n\n\ndef get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        f"    c.model = ml_collections.ConfigDict({cfg['model']!r})\n"
        f"    c.data = ml_collections.ConfigDict({cfg['data']!r})\n"
        "    return c\n")
    out = tmp_path / "out.msgpack"
    convert_main([str(pth), str(out), "--config", str(cdir / "tiny.py")])
    y = forward("ddpm_vp", load_variables(out), np.float32)
    y_ref = arr["output/y"].transpose(0, 2, 3, 1)
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4 * np.abs(y_ref).max())


# ---------------------------------------------------------------------------------------------
# FIR resampling (the PyTorch reference cannot run its FIR conv-upsampler)
# ---------------------------------------------------------------------------------------------


def _upfirdn_numpy(x, k, up, down, pad0, pad1):
    """Direct definition: zero-insert, pad, true 2-D convolution ('valid'), keep every down-th."""
    n, h, w, c = x.shape
    u = np.zeros((n, h * up, w * up, c))
    u[:, ::up, ::up] = x
    u = np.pad(u, ((0, 0), (pad0, pad1), (pad0, pad1), (0, 0)))
    kh = k.shape[0]
    kf = k[::-1, ::-1]
    oh, ow = u.shape[1] - kh + 1, u.shape[2] - kh + 1
    out = np.zeros((n, oh, ow, c))
    for i in range(kh):
        for j in range(kh):
            out += kf[i, j] * u[:, i:i + oh, j:j + ow]
    return out[:, ::down, ::down]


def test_fir_resampling_matches_definition(x64):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 6, 3))
    k = np.outer([1, 3, 5, 1], [1, 2, 2, 1]).astype(np.float64)  # asymmetric: catches flips
    k /= k.sum()
    for up, down, p0, p1 in [(2, 1, 2, 1), (1, 2, 1, 1), (1, 1, 2, 2)]:
        got = np.asarray(uds.upfirdn2d(jnp.asarray(x), k, up=up, down=down, pad0=p0, pad1=p1))
        np.testing.assert_allclose(got, _upfirdn_numpy(x, k, up, down, p0, p1), rtol=1e-12,
                                   atol=1e-12)
    assert uds.upsample_2d(jnp.asarray(x), (1, 3, 3, 1)).shape == (2, 12, 12, 3)
    assert uds.downsample_2d(jnp.asarray(x), (1, 3, 3, 1)).shape == (2, 3, 3, 3)
    # A constant image stays constant away from the borders (normalised kernel, gain factor^2).
    ones = jnp.ones((1, 8, 8, 1))
    np.testing.assert_allclose(uds.upsample_2d(ones, (1, 3, 3, 1))[0, 4:12, 4:12, 0], 1.0)


def test_upsample_conv_matches_conv_transpose_formulation(x64):
    """Our lhs-dilated correlation equals score_sde's conv_transpose(flip(w)) + upfirdn."""
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(2, 5, 5, 3)))
    w = jnp.asarray(rng.normal(size=(3, 3, 3, 4)))
    kfir = (1, 3, 3, 1)
    got = uds.upsample_conv_2d(x, w, kfir)
    # Reference formulation (score_sde up_or_down_sampling.upsample_conv_2d, one group).
    wt = jnp.transpose(w[::-1, ::-1], (0, 1, 3, 2))
    y = jax.lax.conv_transpose(x, wt, strides=(2, 2), padding="VALID", transpose_kernel=True,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    k = uds.setup_kernel(kfir) * 4
    p = (k.shape[0] - 2) - 2
    ref = uds.upfirdn2d(y, k, pad0=(p + 1) // 2 + 1, pad1=p // 2 + 1)
    assert got.shape == (2, 10, 10, 4)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-12, atol=1e-12)
    down = uds.conv_downsample_2d(got, jnp.asarray(rng.normal(size=(3, 3, 4, 2))), kfir)
    assert down.shape == (2, 5, 5, 2)


def test_unconditional_pytorch_ncsnpp_drops_unused_dense():
    """PyTorch NCSN++ res-blocks keep a Dense_0 even when conditional=False (never used): the
    converter drops it; the time-embedding Linear layers are absent, shifting module indices."""
    meta, _, sd = load_fixture("ncsnpp_ve_fourier")
    cfg = meta["config"]
    uncond = {}
    for k, v in sd.items():
        if k.startswith(("all_modules.1.", "all_modules.2.")):
            continue
        if k.startswith("all_modules."):
            i, rest = k[len("all_modules."):].split(".", 1)
            k = f"all_modules.{int(i) - 2 if int(i) > 2 else int(i)}.{rest}"
        uncond[k] = v
    params = convert_pytorch(uncond, dict(cfg["model"], conditional=False),
                             **cfg["data"])["params"]
    assert "Dense_0" not in params and "Dense_0" not in params["ResnetBlockBigGANpp_0"]
    np.testing.assert_array_equal(params["Conv_1"]["kernel"],
                                  sd["all_modules.25.weight"].transpose(2, 3, 1, 0))
    # DDPM likewise (its reference res-blocks always own a Dense_0); the reference cannot build
    # an unconditional DDPM at all (see the ddpm_unconditional_noconv grid fixture).
    meta_d, _, sd_d = load_fixture("ddpm_vp")
    uncond = {}
    for k, v in sd_d.items():
        if k.startswith(("all_modules.0.", "all_modules.1.")):
            continue
        if k.startswith("all_modules."):
            i, rest = k[len("all_modules."):].split(".", 1)
            k = f"all_modules.{int(i) - 2}.{rest}"
        uncond[k] = v
    params = convert_pytorch(uncond, dict(meta_d["config"]["model"], conditional=False),
                             **meta_d["config"]["data"])["params"]
    assert "Dense_0" not in params and "Dense_0" not in params["ResnetBlockDDPM_0"]
    np.testing.assert_array_equal(params["Conv_0"]["kernel"],
                                  sd_d["all_modules.2.weight"].transpose(2, 3, 1, 0))


# ---------------------------------------------------------------------------------------------
# The whole NCSN++ option grid and the grid fixtures (tests/fixtures/reference_grid, see
# generate.py there): layouts and outputs of the official PyTorch code.
# ---------------------------------------------------------------------------------------------

GRID_DIR = Path(__file__).parent / "fixtures" / "reference_grid"


@functools.cache
def grid_layouts():
    with gzip.open(GRID_DIR / "layouts.json.gz", "rt") as f:
        return json.load(f)


def _grid_model_config(entry):
    g = grid_layouts()
    if entry["model"] == "ddpm":
        model = dict(reference_model_configs.get("vp/ddpm/cifar10")["model"], nf=32,
                     ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,))
    else:
        base = {k: v for k, v in g["base"].items() if k != "image_size"}
        model = dict(reference_model_configs.get("ve/cifar10_ncsnpp_continuous")["model"],
                     **base)
    model.update(entry["options"])
    return model


def _pairwise_cover(entries):
    """A small subset of ``entries`` in which every pair of option values that occurs in
    ``entries`` occurs at least once (greedy)."""
    def pairs(e):
        items = sorted((k, str(v)) for k, v in e["options"].items())
        return {(a, b) for i, a in enumerate(items) for b in items[i + 1:]}
    todo = set().union(*(pairs(e) for e in entries))
    chosen = []
    while todo:
        best = max(entries, key=lambda e: len(pairs(e) & todo))
        chosen.append(best)
        todo -= pairs(best)
    return chosen


def _check_layout(entry):
    """Convert a state_dict of zeros with the reference's exact keys and shapes: every key must
    land on a distinct parameter of the right shape, and cover the whole flax tree."""
    layout = grid_layouts()["layouts"][entry["layout"]]
    model_config = _grid_model_config(entry)
    sd = {k: np.zeros(shape, np.float32) for k, shape in layout}
    sd["sigmas"] = get_sigmas(model_config["sigma_min"], model_config["sigma_max"],
                              model_config["num_scales"])
    variables = convert_pytorch(sd, model_config, image_size=16, num_channels=3, centered=False)
    # Unconditional: the reference's res-blocks still own a Dense_0 that is never called.
    def unused(k):
        return not model_config["conditional"] and k.split(".")[2:3] == ["Dense_0"]

    assert any(unused(k) for k, _ in layout) == (not model_config["conditional"])
    n_ref = sum(int(np.prod(shape)) for k, shape in layout if k != "sigmas" and not unused(k))
    n_ours = sum(a.size for a in jax.tree_util.tree_leaves(variables))
    assert n_ours == n_ref, (entry["options"], n_ours, n_ref)


def test_grid_reference_accepts_every_ncsnpp_combination():
    """What the reference does with each combination (recorded by generate.py): every NCSN++
    combination builds; the forward pass runs pristine unless it uses the non-FIR Upsample
    ('nearest' passed as scale_factor) or the FIR Upsample with a conv (negative-step slicing,
    then 4-element strides), and an unconditional DDPM cannot be built."""
    combos = grid_layouts()["combinations"]
    ncsnpp = [c for c in combos if c["model"] == "ncsnpp"]
    assert len(ncsnpp) == 2 * 3 * 3 * 2 * 2 * 2 * 2 * 2
    assert all(c["construct_error"] is None and c["layout"] for c in ncsnpp)
    for c in ncsnpp:
        o = c["options"]
        uses_fir_up_conv = o["fir"] and (
            o["progressive"] == "residual"
            or (o["resblock_type"] == "ddpm" and o["resamp_with_conv"]))
        uses_naive_up = not o["fir"] and (
            o["progressive"] != "none" or o["resblock_type"] == "ddpm")
        if uses_fir_up_conv:
            assert "step must be greater than zero" in c["forward_error"], c
            assert c["forward_error_compat"] is not None
        elif uses_naive_up:
            assert "size or scale_factor" in c["forward_error"], c
            assert c["forward_error_compat"] is None
        else:
            assert c["forward_error"] is None, c
    ddpm = [c for c in combos if c["model"] == "ddpm"]
    assert {c["options"]["conditional"] for c in ddpm if c["construct_error"]} == {False}


def _grid_params(entries):
    return [pytest.param(e, id="-".join(str(v) for v in e["options"].values()))
            for e in entries]


def _grid_entries():
    return [c for c in grid_layouts()["combinations"] if c["layout"]]


@pytest.mark.parametrize("entry", _grid_params(_pairwise_cover(_grid_entries())))
def test_grid_layout_pairwise(entry):
    _check_layout(entry)


@pytest.mark.slow
def test_grid_layout_every_combination():
    for entry in _grid_entries():
        _check_layout(entry)


def test_grid_layout_mismatch_is_detected():
    """The layout check can fail: moving the input-pyramid combiner one index down (what the
    old converter did for issue #10's first configuration) is rejected."""
    entry = next(c for c in _grid_entries() if c["options"].get("progressive_input") ==
                 "input_skip" and c["options"].get("resblock_type") == "ddpm")
    layout = grid_layouts()["layouts"][entry["layout"]]
    combiner = next(int(k.split(".")[1]) for k, shape in layout  # Combine: 1x1 conv 3 -> nf
                    if k.endswith(".Conv_0.weight") and shape == [8, 3, 1, 1])
    sd = {}
    for k, shape in layout:
        if k.startswith(f"all_modules.{combiner}."):
            k = k.replace(f"all_modules.{combiner}.", f"all_modules.{combiner - 1}.")
        sd[k] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=f"all_modules.{combiner - 1}"):
        convert_pytorch(sd, _grid_model_config(entry), image_size=16, num_channels=3,
                        check_sigmas=False)


GRID_META = json.loads((GRID_DIR / "fixtures.json").read_text())["fixtures"]
GRID_DEFAULT = ("ncsnpp_ddpm_outskip_inskip_cat", "ncsnpp_biggan_none_none_nofir_noconv")


@functools.cache
def grid_fixture(name):
    meta = GRID_META[name]
    z = np.load(GRID_DIR / f"{name}.npz")
    arr = {k: z[k] for k in z.files}
    sd = {k[len("param/"):]: v for k, v in arr.items() if k.startswith("param/")}
    cfg = meta["config"]
    model = get_model(cfg["model"], **cfg["data"])
    return meta, arr, model, convert_pytorch(sd, cfg["model"], **cfg["data"])


def grid_relerr(name, dtype):
    meta, arr, model, variables = grid_fixture(name)
    x = jnp.asarray(arr["input/x"].transpose(0, 2, 3, 1).astype(dtype))
    labels = jnp.asarray(arr["input/labels"].astype(dtype))
    params = jax.tree_util.tree_map(lambda a: jnp.asarray(a, dtype), variables)
    y = np.asarray(jax.jit(lambda v, x, t: model.apply(v, x, t, train=False))(params, x, labels))
    assert y.dtype == dtype
    y_ref = arr["output/y"].transpose(0, 2, 3, 1)
    return float(np.abs(y.astype(np.float64) - y_ref).max() / np.abs(y_ref).max())


def _grid_fixture_params(default):
    return [pytest.param(n, marks=() if n in default else pytest.mark.slow) for n in GRID_META]


@pytest.mark.parametrize("name", _grid_fixture_params(GRID_DEFAULT))
def test_grid_fixture_x64(name, x64):
    assert grid_relerr(name, np.float64) <= 1e-6


@pytest.mark.parametrize("name", _grid_fixture_params(GRID_DEFAULT[:1]))
def test_grid_fixture_float32(name):
    assert grid_relerr(name, np.float32) <= 1e-4


def test_grid_fixtures_cover_every_option_value():
    seen: dict = {}
    for meta in GRID_META.values():
        m, d = meta["config"]["model"], meta["config"]["data"]
        if meta["model"] != "ncsnpp":
            continue
        for key in ("resblock_type", "progressive", "progressive_input", "progressive_combine",
                    "fir", "resamp_with_conv", "embedding_type", "conditional",
                    "scale_by_sigma", "skip_rescale"):
            seen.setdefault(key, set()).add(str(m[key]))
        seen.setdefault("centered", set()).add(str(d["centered"]))
    for key, values in seen.items():
        want = {"resblock_type": {"ddpm", "biggan"},
                "progressive": {"none", "output_skip", "residual"},
                "progressive_input": {"none", "input_skip", "residual"},
                "progressive_combine": {"sum", "cat"},
                "embedding_type": {"fourier", "positional"}}.get(key, {"True", "False"})
        assert values == want, (key, values)
    assert len(seen) == 11
    assert any(m["model"] == "ddpm" and not m["config"]["model"]["conditional"]
               for m in GRID_META.values())


# ---------------------------------------------------------------------------------------------
# The command line: one --help for every converter, a missing path named as missing
# ---------------------------------------------------------------------------------------------
def test_top_level_help_lists_every_converter(capsys):
    """``python -m score_jax.convert --help`` lists every subcommand with its line, and every
    module of score_jax.convert with a command line (its own ``main``) is one of them."""
    import importlib
    import pkgutil

    import score_jax.convert as pkg
    from score_jax.convert.score_sde import SUBCOMMANDS

    convert_main(["--help"])
    out = capsys.readouterr().out
    clis = set()
    for info in pkgutil.iter_modules(pkg.__path__):
        mod = importlib.import_module(f"score_jax.convert.{info.name}")
        if getattr(getattr(mod, "main", None), "__module__", None) == mod.__name__:
            clis.add(mod.__name__)
    assert clis == {m for m, _ in SUBCOMMANDS.values()}
    for name, (_, doc) in SUBCOMMANDS.items():
        assert f"\n  {name} " in out and doc.split()[0] in out, (name, out)
    assert "autoencoder_kl" in out and "dit" in out and "inception" in out
    assert "load_diffusers_unet" in out and "load_clip_text" in out  # the folders read as they are


@pytest.mark.parametrize("argv", [
    ["autoencoder_kl", "{absent}", "{out}"],
    ["dit", "{absent}", "{out}", "--preset", "DiT-S/2"],
    ["{absent}", "{out}", "--config", "{config}"],
    ["score_sde", "{absent}", "{out}", "--config", "{config}"],
    ["inception", "--to_npz", "{absent}", "{out}"],
])
def test_every_converter_names_a_missing_path(argv, tmp_path, capsys):
    """A missing input exits with one line saying it does not exist (not "unknown checkpoint
    suffix"), before anything is read, and writes nothing."""
    config = Path(__file__).parent.parent / "configs" / "default_digits.py"
    fill = {"absent": str(tmp_path / "sd-vae-ft-ema"), "out": str(tmp_path / "o.msgpack"),
            "config": str(config)}
    with pytest.raises(SystemExit) as e:
        convert_main([a.format(**fill) for a in argv])
    msg = (str(e.value.code) if not isinstance(e.value.code, int) else "") + capsys.readouterr().err
    assert e.value.code != 0
    assert "sd-vae-ft-ema" in msg and ("does not exist" in msg or "not found" in msg), msg
    assert "suffix" not in msg and "Traceback" not in msg
    assert not (tmp_path / "o.msgpack").exists()
