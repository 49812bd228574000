"""CLIP text encoder (issue 24 items 2 and 6): equality with transformers' CLIPTextModel on random
float64 weights (fixtures by tests/fixtures/make_clip_fixture.py), the loader's errors, the
tokenizer against transformers' CLIPTokenizer output, and the ViT-L/14 parameter count."""
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.convert import load_clip_text
from score_jax.convert.clip_text import clip_text_fields
from score_jax.models.clip_text import CLIP_TEXT_CONFIGS, clip_text_model, count_params, eos_positions

FIX = Path(__file__).parent / "fixtures" / "clip"
NAMES = ("quick_gelu", "gelu")


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize("name", NAMES)
def test_clip_text_float64_equals_transformers(name, x64):
    ref = np.load(FIX / "outputs.npz")
    module, variables = load_clip_text(FIX / name, dtype=jnp.float64)
    ids = ref[f"{name}/input_ids"]
    last, pooled, states = module.apply(variables, ids, output_hidden_states=True)
    assert last.dtype == jnp.float64 and last.shape == ref[f"{name}/last_hidden_state"].shape
    assert _rel(last, ref[f"{name}/last_hidden_state"]) <= 1e-6
    assert _rel(pooled, ref[f"{name}/pooler_output"]) <= 1e-6
    assert len(states) == module.num_hidden_layers + 1
    for i, h in enumerate(states):
        assert _rel(h, ref[f"{name}/hidden_states_{i}"]) <= 1e-6
    # clip skip k: the final LayerNorm of hidden_states[-(k + 1)] (diffusers encode_prompt)
    skip, _ = module.apply(variables, ids, clip_skip=1)
    ln = variables["params"]["final_layer_norm"]
    h = ref[f"{name}/hidden_states_{module.num_hidden_layers - 1}"]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    want = (h - mu) / np.sqrt(var + module.layer_norm_eps) * np.asarray(ln["scale"]) + np.asarray(ln["bias"])
    assert _rel(skip, want) <= 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_clip_text_float32(name):
    ref = np.load(FIX / "outputs.npz")
    module, variables = load_clip_text(FIX / name)
    assert jax.tree_util.tree_leaves(variables)[0].dtype == jnp.float32
    last, pooled = jax.jit(module.apply)(variables, ref[f"{name}/input_ids"])
    assert last.dtype == jnp.float32
    assert _rel(last, ref[f"{name}/last_hidden_state"]) <= 1e-4
    assert _rel(pooled, ref[f"{name}/pooler_output"]) <= 1e-4


def test_pooled_position_conventions():
    # legacy eos_token_id == 2: argmax of the ids; otherwise the first EOS (padding may equal EOS)
    ids = np.array([[0, 5, 9, 7, 7], [0, 9, 3, 9, 9]])
    np.testing.assert_array_equal(eos_positions(ids, 2), [2, 1])
    np.testing.assert_array_equal(eos_positions(ids, 9), [2, 1])
    np.testing.assert_array_equal(eos_positions(ids, 7), [3, 0])


def test_vit_l14_parameter_count():
    assert count_params(clip_text_model("openai/clip-vit-large-patch14")) == 123_060_480


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 5.5 s)
def test_train_from_scratch_small_config():
    import optax

    model = clip_text_model(CLIP_TEXT_CONFIGS["tiny"], vocab_size=50, hidden_size=16,
                            intermediate_size=32, max_position_embeddings=8, eos_token_id=49)
    ids = jnp.array([[0, 3, 4, 49, 49, 49, 49, 49], [0, 7, 49, 49, 49, 49, 49, 49]])
    params = model.init(jax.random.key(0), ids)["params"]
    target = jax.random.normal(jax.random.key(1), (2, 16))
    opt = optax.adam(1e-2)
    state = opt.init(params)

    def loss(p):
        return jnp.mean((model.apply({"params": p}, ids)[1] - target) ** 2)

    l0 = loss(params)
    @jax.jit
    def step(p, s):
        updates, s = opt.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, updates), s

    for _ in range(30):
        params, state = step(params, state)
    assert loss(params) < 0.5 * l0


def test_unsupported_config_names_key(tmp_path):
    cfg = json.loads((FIX / "gelu" / "config.json").read_text())
    with pytest.raises(ValueError, match="hidden_act"):
        clip_text_fields({**cfg, "hidden_act": "relu2"})
    with pytest.raises(ValueError, match="model_type"):
        clip_text_fields({**cfg, "model_type": "t5"})
    with pytest.raises(ValueError, match="architectures"):
        clip_text_fields({**cfg, "architectures": ["CLIPTextModelWithProjection"]})
    folder = tmp_path / "te"
    shutil.copytree(FIX / "gelu", folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu2"}))
    with pytest.raises(ValueError, match="'hidden_act'"):
        load_clip_text(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match="unexpected key 'encoder.layers.2"):
        load_clip_text(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_clip_text(folder)
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_clip_text(tmp_path)


def test_legacy_text_model_prefix(tmp_path):
    # transformers < 5 writes 'text_model.'-prefixed keys and the position_ids buffer
    from safetensors.numpy import load_file, save_file

    folder = tmp_path / "te"
    shutil.copytree(FIX / "quick_gelu", folder)
    sd = load_file(folder / "model.safetensors")
    sd = {f"text_model.{k}": v for k, v in sd.items()}
    sd["text_model.embeddings.position_ids"] = np.arange(10, dtype=np.int64)[None]
    save_file(sd, folder / "model.safetensors")
    _, v1 = load_clip_text(folder)
    _, v0 = load_clip_text(FIX / "quick_gelu")
    jax.tree_util.tree_map(np.testing.assert_array_equal, v1, v0)


def test_tokenizer_equals_transformers():
    pytest.importorskip("transformers")
    from score_jax.text import load_tokenizer

    ref = np.load(FIX / "tokenizer_ids.npz")
    tok = load_tokenizer(FIX / "tokenizer")
    ids = tok(list(ref["prompts"]))
    assert ids.dtype == np.int32 and ids.shape == (len(ref["prompts"]), 77)
    np.testing.assert_array_equal(ids, ref["input_ids"])
    assert ids[-1, -1] == tok.eos_token_id  # the truncated prompt keeps its EOS
    np.testing.assert_array_equal(tok("the digit 7"), ids[1:2])


def test_tokenizer_missing_files(tmp_path):
    from score_jax.text import load_tokenizer

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    shutil.copytree(FIX / "tokenizer", tmp_path / "tok")
    (tmp_path / "tok" / "merges.txt").unlink()
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        load_tokenizer(tmp_path / "tok")
