"""DiT: equality with the official PyTorch DiT on randomised weights (float64 and float32),
parameter counts of the 12 official presets, the converter, and the library wiring (score,
sampling, losses, CFG) with a tiny DiT."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import losses, sampling
from score_jax import sde as sde_lib
from score_jax.convert_dit import convert_dit, load_state_dict
from score_jax.guidance.cfg import cfg_score_fn
from score_jax.models import DIT_PRESETS, DiT, dit_config, get_model
from score_jax.models.dit import sincos_pos_embed_2d, timestep_embedding
from score_jax.score import get_score_fn

FIXTURES = Path(__file__).parent / "fixtures" / "dit"
CASES = ("tiny_p2", "tiny_p4_nonull")
TINY = dict(name="dit", patch_size=2, hidden_size=32, depth=2, num_heads=4, num_classes=10,
            learn_sigma=True)


def load_case(name):
    with np.load(FIXTURES / f"dit_{name}.npz", allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    kw = json.loads(str(data.pop("config")))
    state = {k[3:]: v for k, v in data.items() if k.startswith("sd/")}
    return kw, state, data


def model_config(kw):
    return {"name": "dit", **{k: kw[k] for k in ("patch_size", "hidden_size", "depth",
                                                 "num_heads", "mlp_ratio", "class_dropout_prob",
                                                 "num_classes", "learn_sigma")}}


def rel_err(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("case", CASES)
def test_equals_official_dit_float64(case, x64):
    kw, state, data = load_case(case)
    variables = convert_dit(state, model_config(kw), dtype=np.float64)
    model = get_model(model_config(kw), image_size=kw["input_size"], num_channels=kw["in_channels"])
    assert (model.image_size, model.num_channels) == (kw["input_size"], kw["in_channels"])
    # the full output and the default output in one jitted call (one compile instead of the
    # per-primitive compiles of two eager applies)
    both = jax.jit(lambda v, x, t, y: (model.apply(v, x, t, y=y, full_output=True),
                                       model.apply(v, x, t, y=y)))
    out, pred = both(variables, jnp.asarray(data["x"]), jnp.asarray(data["t"]), jnp.asarray(data["y"]))
    assert out.dtype == jnp.float64 and out.shape == data["out64"].shape
    err = rel_err(out, data["out64"])
    print(f"{case} float64 max rel err {err:.3g}")
    assert err <= 1e-6
    # the default output is the prediction: the first num_channels channels
    np.testing.assert_array_equal(pred, out[..., : kw["in_channels"]])


@pytest.mark.parametrize("case", CASES)
def test_equals_official_dit_float32(case):
    kw, state, data = load_case(case)
    variables = convert_dit(state, model_config(kw))
    model = get_model(model_config(kw), image_size=kw["input_size"], num_channels=kw["in_channels"])
    # jitted: one compile instead of the per-primitive compiles of an eager apply
    apply = jax.jit(lambda v, x, t, y: model.apply(v, x, t, y=y, full_output=True))
    out = apply(variables, jnp.asarray(data["x"], jnp.float32), jnp.asarray(data["t"], jnp.float32),
                jnp.asarray(data["y"]))
    assert out.dtype == jnp.float32
    err = rel_err(out, data["out32"])
    print(f"{case} float32 max rel err {err:.3g}")
    assert err <= 1e-4


def test_fixture_exercises_null_label_and_fractional_t():
    kw, state, data = load_case("tiny_p2")
    assert kw["num_classes"] in data["y"] and state["y_embedder.embedding_table.weight"].shape[0] \
        == kw["num_classes"] + 1
    assert np.any(data["t"] % 1 != 0)
    # every weight randomised: no all-zero tensor (the official init zeroes adaLN / final layer)
    assert all(np.abs(v).max() > 0 for v in state.values())
    kw2, state2, _ = load_case("tiny_p4_nonull")
    assert state2["y_embedder.embedding_table.weight"].shape[0] == kw2["num_classes"]


def test_wrong_weights_break_equality(x64):
    """The equality test can fail: swapping shift and scale of one block's adaLN changes the
    output."""
    kw, state, data = load_case("tiny_p2")
    state = dict(state)
    d = kw["hidden_size"]
    for key in ("blocks.1.adaLN_modulation.1.weight", "blocks.1.adaLN_modulation.1.bias"):
        w = state[key].copy()
        w[:d], w[d:2 * d] = state[key][d:2 * d], state[key][:d]
        state[key] = w
    variables = convert_dit(state, model_config(kw), dtype=np.float64)
    model = get_model(model_config(kw), image_size=8, num_channels=3)
    out = model.apply(variables, jnp.asarray(data["x"]), jnp.asarray(data["t"]),
                      y=jnp.asarray(data["y"]), full_output=True)
    assert rel_err(out, data["out64"]) > 1e-2


@pytest.mark.parametrize("preset", list(DIT_PRESETS))
def test_param_counts_equal_official(preset):
    official = json.loads((FIXTURES / "param_counts.json").read_text())
    model = get_model(dit_config(preset, num_classes=1000), image_size=32, num_channels=4)
    x = jax.ShapeDtypeStruct((1, 32, 32, 4), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.float32)
    y = jax.ShapeDtypeStruct((1,), jnp.int32)
    params = jax.eval_shape(model.init, jax.random.key(0), x, t, y=y)["params"]
    n = sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(params))
    assert n == official[preset]


def test_presets_and_config_errors():
    assert len(DIT_PRESETS) == 12
    assert dit_config("DiT-XL/2", num_classes=10) == {
        "name": "dit", "depth": 28, "hidden_size": 1152, "num_heads": 16, "patch_size": 2,
        "num_classes": 10}
    with pytest.raises(ValueError, match="DiT-XL/2"):
        dit_config("DiT-XXL/2")
    with pytest.raises(ValueError, match="num_heads"):
        get_model({**TINY, "num_heads": 5}, image_size=8, num_channels=1)
    with pytest.raises(ValueError, match="multiple of 2"):
        get_model(TINY, image_size=9, num_channels=1)
    with pytest.raises(ValueError, match="class_dropout_prob"):
        get_model({**TINY, "class_dropout_prob": 1.0}, image_size=8, num_channels=1)


def test_sincos_table_and_timestep_embedding_closed_forms(x64):
    table = sincos_pos_embed_2d(8, 2, 3)  # 2 rows, 3 columns, w = [1, 1e-2]
    w = np.array([1.0, 1e-2])
    i, j = 1, 2  # token 5
    np.testing.assert_allclose(table[i * 3 + j], np.concatenate(
        [np.sin(j * w), np.cos(j * w), np.sin(i * w), np.cos(i * w)]), rtol=1e-15)
    emb = np.asarray(timestep_embedding(jnp.array([2.5]), dim=4))
    f = np.array([1.0, 1e-2])
    np.testing.assert_allclose(emb[0], np.concatenate([np.cos(2.5 * f), np.sin(2.5 * f)]),
                               rtol=1e-15)


def test_converter_errors_name_key_and_shapes(tmp_path):
    kw, state, _ = load_case("tiny_p2")
    bad = dict(state)
    bad["blocks.0.attn.qkv.weight"] = bad["blocks.0.attn.qkv.weight"][:, :-1]
    with pytest.raises(ValueError, match=r"blocks\.0\.attn\.qkv\.weight.*\(96, 31\).*\(32, 96\)"):
        convert_dit(bad, model_config(kw))
    extra = {**state, "blocks.7.attn.qkv.weight": state["blocks.0.attn.qkv.weight"]}
    with pytest.raises(ValueError, match=r"unexpected key 'blocks\.7\.attn\.qkv\.weight'"):
        convert_dit(extra, model_config(kw))
    missing = {k: v for k, v in state.items() if k != "final_layer.linear.bias"}
    with pytest.raises(ValueError, match="final_layer/linear/bias"):
        convert_dit(missing, model_config(kw))
    with pytest.raises(ValueError, match="pos_embed"):
        convert_dit({**state, "pos_embed": state["pos_embed"] + 0.1}, model_config(kw))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match="valid: .pt"):
        load_state_dict(str(tmp_path / "weights.bin"))


def test_converter_file_formats(tmp_path):
    kw, state, _ = load_case("tiny_p4_nonull")
    ref = convert_dit(state, model_config(kw))
    np.savez(tmp_path / "sd.npz", **state)
    from safetensors.numpy import save_file
    save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
              str(tmp_path / "sd.safetensors"))
    paths = [tmp_path / "sd.npz", tmp_path / "sd.safetensors"]
    torch = pytest.importorskip("torch")
    torch.save({f"module.{k}": torch.from_numpy(v) for k, v in state.items()}, tmp_path / "sd.pt")
    paths.append(tmp_path / "sd.pt")
    for path in paths:
        got = convert_dit(load_state_dict(path), model_config(kw))
        jax.tree_util.tree_map(np.testing.assert_array_equal, got, ref)


def test_converter_cli(tmp_path):
    from flax import serialization

    from score_jax.convert_dit import main
    kw, state, _ = load_case("tiny_p2")
    np.savez(tmp_path / "sd.npz", **state)
    out = tmp_path / "out.msgpack"
    with pytest.raises(ValueError, match="pos_embed"):  # DiT-S/2 widths do not fit
        main([str(tmp_path / "sd.npz"), str(out), "--preset", "DiT-S/2", "--num-classes", "10"])
    assert not out.exists()
    main([str(tmp_path / "sd.npz"), str(out), "--preset", "DiT-S/2", "--num-classes", "10",
          "--model", json.dumps({"hidden_size": 32, "depth": 2, "num_heads": 4})])
    got = serialization.msgpack_restore(out.read_bytes())
    jax.tree_util.tree_map(np.testing.assert_array_equal, got, convert_dit(state, model_config(kw)))


def tiny_model():
    return get_model(TINY, image_size=8, num_channels=1)


def tiny_variables(model, seed=0):
    """init, then every leaf perturbed so adaLN / final layer are not zero."""
    x, t = jnp.zeros((2, 8, 8, 1)), jnp.zeros((2,))

    @jax.jit
    def init(key):
        variables = model.init(key, x, t, y=jnp.zeros((2,), jnp.int32))
        leaves, tree = jax.tree_util.tree_flatten(variables)
        keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
        return jax.tree_util.tree_unflatten(tree, [
            a + 0.05 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys, strict=True)])

    return init(jax.random.key(seed))


def test_init_follows_official_initialisation():
    model = tiny_model()
    p = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)),
                            y=jnp.zeros((1,), jnp.int32))["params"]
    for leaf in jax.tree_util.tree_leaves(p["final_layer"]) + jax.tree_util.tree_leaves(
            p["blocks_0"]["adaLN_modulation"]):
        assert not np.any(leaf)
    assert p["y_embedder"]["embedding_table"]["embedding"].shape == (11, 32)
    # a zero-initialised DiT outputs zeros
    out = jax.jit(model.apply)({"params": p}, jnp.ones((1, 8, 8, 1)), jnp.ones((1,)),
                               y=jnp.ones((1,), int))
    assert not np.any(out)


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_labels_null_and_unconditional():
    model = tiny_model()
    v = tiny_variables(model)
    x, t = jax.random.normal(jax.random.key(3), (2, 8, 8, 1)), jnp.array([10.0, 500.5])
    apply = jax.jit(model.apply)
    null = apply(v, x, t)
    np.testing.assert_array_equal(null, apply(v, x, t, y=jnp.array([10, 10])))
    assert not np.allclose(apply(v, x, t, y=jnp.array([1, 2])), null)
    nonull = get_model({**TINY, "class_dropout_prob": 0.0}, image_size=8, num_channels=1)
    with pytest.raises(ValueError, match="null label"):
        nonull.init(jax.random.key(0), x, t)
    uncond = get_model({**TINY, "num_classes": None}, image_size=8, num_channels=1)
    vu = jax.eval_shape(uncond.init, jax.random.key(0), x, t)
    assert "y_embedder" not in vu["params"]
    with pytest.raises(ValueError, match="num_classes=None"):
        uncond.apply(vu, x, t, y=jnp.array([0, 1]))
    with pytest.raises(ValueError, match="channels"):
        model.apply(v, jnp.zeros((2, 8, 8, 3)), t)


@pytest.mark.slow
def test_bf16_and_remat_match():
    model = tiny_model()
    v = tiny_variables(model)
    x, t, y = jax.random.normal(jax.random.key(3), (2, 8, 8, 1)), jnp.array([1.0, 9.0]), \
        jnp.array([0, 10])
    ref = jax.jit(model.apply)(v, x, t, y=y)
    remat = get_model({**TINY, "remat": True}, image_size=8, num_channels=1)
    np.testing.assert_allclose(jax.jit(remat.apply)(v, x, t, y=y), ref, rtol=1e-5, atol=1e-6)
    bf16 = get_model({**TINY, "dtype": "bfloat16"}, image_size=8, num_channels=1)
    out = jax.jit(bf16.apply)(v, x, t, y=y)
    assert out.dtype == jnp.float32
    assert rel_err(out, np.asarray(ref)) < 5e-2


@pytest.mark.slow  # default-suite time budget (CI on 2 cores)
def test_score_sampling_losses_and_cfg_with_tiny_dit():
    model = tiny_model()
    v = tiny_variables(model)
    sde = sde_lib.VPSDE()
    y = jnp.array([3, 7])
    score_fn = get_score_fn(sde, model, v, continuous=True, model_kwargs={"y": y})
    x, nfe = sampling.sample(jax.random.key(0), sde, score_fn, (2, 8, 8, 1), method="ddim",
                             num_steps=2)
    assert x.shape == (2, 8, 8, 1) and np.all(np.isfinite(x))
    loss_fn = losses.get_loss_fn(sde, model, num_classes=10, label_dropout=0.5)
    batch = {"image": jax.random.normal(jax.random.key(1), (2, 8, 8, 1)), "label": y}
    (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        v, batch, jax.random.key(2))
    assert np.isfinite(loss)
    g = grads["params"]
    assert np.any(g["y_embedder"]["embedding_table"]["embedding"][:10])
    assert np.any(g["blocks_1"]["adaLN_modulation"]["kernel"])


@pytest.mark.slow
def test_cfg_sampling_with_tiny_dit():
    model = tiny_model()
    v = tiny_variables(model)
    sde = sde_lib.VPSDE()
    guided = cfg_score_fn(sde, model, v, jnp.array([3, 7]), w=2.0, num_classes=10)
    xg, _ = sampling.sample(jax.random.key(0), sde, guided, (2, 8, 8, 1), method="ddim",
                            num_steps=2)
    assert np.all(np.isfinite(xg))


def test_dit_is_a_registered_model():
    assert isinstance(tiny_model(), DiT)
    assert tiny_model().out_channels == 2
