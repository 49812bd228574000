"""Caption datasets, tokenizers, caption dropout and the text-conditional objective ("text_score")
through config.build and the train step, replicated and FSDP-sharded on 8 fake devices."""
import json
import os
import re
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from score_jax import captions, models, parallel
from score_jax import config as config_lib
from score_jax import data as data_lib
from score_jax import train_step as ts
from score_jax.config import text as config_text
from score_jax.guidance import prompt_guidance


class TinyXAttn(nn.Module):
    """A conv net with one cross-attention to ``context``: the interface of unet2d_condition."""

    features: int = 8

    @nn.compact
    def __call__(self, x, labels, *, train=False, context=None):
        temb = nn.Dense(self.features)(jnp.sin(labels[:, None] / 100.0 * jnp.arange(1, 5)))
        h = nn.Conv(self.features, (3, 3))(x) + temb[:, None, None, :]
        B, H, W, C = h.shape
        a = nn.MultiHeadDotProductAttention(2)(h.reshape(B, H * W, C), context)
        h = h + a.reshape(B, H, W, C)
        return nn.Conv(x.shape[-1], (3, 3))(nn.swish(h))


@pytest.fixture
def tiny_xattn(monkeypatch):
    monkeypatch.setitem(models.MODELS, "tiny_xattn", TinyXAttn)


def text_config(**overrides):
    from configs.default_digits import get_config

    config = get_config("dsm_smoke")
    config.data.dataset = "DIGITS_TEXT"
    config.data.image_size = 8
    config.training.objective = "text_score"
    config.training.n_iters = 3
    config.training.batch_size = 16
    config.training.snapshot_sampling = False
    config.optim.warmup = 0
    config.model = ml_collections.ConfigDict({
        "name": "text_conditioned", "ema_rate": 0.999, "beta_min": 0.1, "beta_max": 20.0,
        "num_scales": 1000, "dropout": 0.0,
        "network": {"name": "tiny_xattn", "features": 8},
        "text_encoder": {"tokenizer": "words", "max_length": 8, "width": 16, "layers": 1,
                         "heads": 2}})
    for k, v in overrides.items():
        sec, key = k.split("__")
        config[sec][key] = v
    return config


def test_digit_captions_held_out_phrasings_differ():
    assert captions.digit_caption(7, "a handwritten {w}") == "a handwritten seven"
    assert captions.digit_caption(7, "the digit {d}") == "the digit 7"
    assert not set(captions.DIGIT_TRAIN_TEMPLATES) & set(captions.DIGIT_HELDOUT_TEMPLATES)
    src = captions.digits_text_source("train", image_size=8, num_channels=1, path=None,
                                      process_index=0, process_count=1)
    k = len(captions.DIGIT_TRAIN_TEMPLATES)
    assert len(src) == 1617 * k
    images, labels, extra = src[np.arange(2 * k)]
    assert images.shape == (2 * k, 8, 8, 1) and np.all(images[:k] == images[0])
    assert [str(c) for c in extra["caption"][:k]] == [
        captions.digit_caption(labels[0], t) for t in captions.DIGIT_TRAIN_TEMPLATES]


def test_pipeline_tokens_deterministic():
    ds = data_lib.get_dataset("DIGITS_TEXT", split="train", batch_size=8, image_size=8,
                              training=True, seed=3)
    tok = captions.get_tokenizer("words", 8)
    p = captions.TokenizedPipeline(ds, tok)
    b0, b1 = p.batch(5), p.batch(5)
    assert b0["tokens"].shape == (8, 8) and b0["tokens"].dtype == np.int32
    np.testing.assert_array_equal(b0["tokens"], b1["tokens"])
    raw = ds.batch(5)
    np.testing.assert_array_equal(b0["tokens"], tok([str(c) for c in raw["caption"]]))
    assert "caption" not in b0


def test_tokenizers():
    tok = captions.WordTokenizer(("a", "seven", "7"), max_length=6)
    out = tok(["A seven, 7 zebra", ""])
    np.testing.assert_array_equal(out, [[1, 4, 5, 6, 3, 2], [1, 2, 0, 0, 0, 0]])
    out = captions.ByteTokenizer(5)(["abcdef"])
    np.testing.assert_array_equal(out, [[1, 100, 101, 102, 2]])  # truncated, EOS kept
    with pytest.raises(ValueError, match=r"tokenizer 'nope' unknown; valid choices: \['bytes'"):
        captions.get_tokenizer("nope")


def test_drop_captions_rate_and_determinism():
    tokens = jnp.ones((4000, 3), jnp.int32)
    null = jnp.asarray([1, 2, 0])
    key = jax.random.key(0)
    out = captions.drop_captions(key, tokens, null, 0.25)
    dropped = np.all(np.asarray(out) == np.asarray(null), axis=1)
    kept = np.all(np.asarray(out) == 1, axis=1)
    assert np.all(dropped | kept)
    assert abs(dropped.mean() - 0.25) < 4 * np.sqrt(0.25 * 0.75 / 4000)
    np.testing.assert_array_equal(out, captions.drop_captions(key, tokens, null, 0.25))
    np.testing.assert_array_equal(captions.drop_captions(key, tokens, null, 0.0), tokens)


def _write_folder(root, layout):
    from PIL import Image

    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(0)
    texts = ["a red square", "two blue dots", "an empty field"]
    for i, t in enumerate(texts):
        Image.fromarray(rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)).save(
            os.path.join(root, f"img{i}.png"))
        if layout == "txt":
            with open(os.path.join(root, f"img{i}.txt"), "w") as f:
                f.write(t + "\n")
    if layout == "jsonl":
        with open(os.path.join(root, "metadata.jsonl"), "w") as f:
            for i, t in enumerate(texts):
                f.write(json.dumps({"file_name": f"img{i}.png", "text": t}) + "\n")
    return texts


@pytest.mark.parametrize("layout", ["jsonl", "txt"])
def test_caption_folder(tmp_path, layout):
    texts = _write_folder(str(tmp_path), layout)
    ds = data_lib.get_dataset("CAPTION_FOLDER", split="train", batch_size=3, image_size=8,
                              training=False, num_channels=3, path=str(tmp_path))
    b = ds.batch(0)
    assert b["image"].shape == (3, 8, 8, 3) and 0 <= b["image"].min() <= b["image"].max() <= 1
    assert [str(c) for c in b["caption"]] == texts


def test_caption_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="holds no captioned image"):
        captions.read_caption_folder(str(tmp_path))
    (tmp_path / "metadata.jsonl").write_text(json.dumps({"file_name": "x.png"}) + "\n")
    with pytest.raises(ValueError, match=r"needs 'file_name' and 'text'"):
        captions.read_caption_folder(str(tmp_path))


def test_tfds_caption_source_reads_text_feature():
    rng = np.random.default_rng(0)
    records = [{"image": rng.integers(0, 255, (10, 12, 3), dtype=np.uint8),
                "meta": {"text": np.asarray([b"first caption", b"second"])}} for _ in range(4)]
    src = captions.TFDSCaptionSource(records, 8, 1, text_feature="meta/text")
    images, labels, extra = src[np.arange(4)]
    assert images.shape == (4, 8, 8, 1) and list(extra["caption"]) == ["first caption"] * 4
    assert captions.parse_tfds_path("coco:captions/text") == ("coco", "captions/text", "image")
    with pytest.raises(ValueError, match="has no feature"):
        captions.TFDSCaptionSource(records, 8, 1, text_feature="caption")[[0]]


def _steps(config, mesh, n=3):
    b = config_lib.build(config, mesh=mesh)
    state = b.init(jax.random.key(0))
    ds = config_lib.dataset_from_config(config, "train", training=True,
                                        batch_size=config.training.batch_size)
    key = jax.random.key(1)
    for i in range(n):
        state, metrics = b.train_step(state, parallel.to_global(ds.batch(i), b.mesh), key)
        assert bool(metrics["finite"])
    return b, state


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 20.6 s)
def test_text_objective_trains_encoder_fsdp_equals_replicated(tiny_xattn):
    """The encoder's parameters are in the train state and move; the FSDP-sharded step on 8
    devices equals the replicated one."""
    config = text_config()
    b, state = _steps(config, parallel.make_mesh(8))
    init = b.init(jax.random.key(0))
    assert "encoder" in state.params
    moved = jax.tree_util.tree_map(lambda a, c: float(jnp.max(jnp.abs(a - c))),
                                   state.params["encoder"], init.params["encoder"])
    assert min(jax.tree_util.tree_leaves(moved)) > 0
    fconfig = text_config(parallel__fsdp=4, parallel__fsdp_min_size=1)
    fb, fstate = _steps(fconfig, parallel.make_mesh(8, fsdp=4))
    specs = {str(a.sharding.spec) for a in jax.tree_util.tree_leaves(fstate.params)}
    assert any("fsdp" in s for s in specs)
    # the attention key biases have an exactly-zero gradient (softmax is invariant to q.b):
    # Adam normalises float32 round-off there, so they are left out
    got = jax.tree_util.tree_leaves_with_path(jax.device_get(fstate.params))
    for (path, u), v in zip(got, jax.tree_util.tree_leaves(jax.device_get(state.params)),
                            strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" not in name:
            assert np.linalg.norm(u - v) <= 1e-5 * np.linalg.norm(v), name


def test_text_score_depends_on_tokens_and_caption_dropout(tiny_xattn):
    config = text_config()
    b = config_lib.build(config, mesh=parallel.make_mesh(1))
    state = b.init(jax.random.key(0))
    tok = captions.get_tokenizer("words", 8)
    x = jax.random.normal(jax.random.key(2), (2, 8, 8, 1))
    t = jnp.full((2,), 0.5)
    s7 = b.make_score_fn(state.params, {"tokens": tok(["seven", "seven"])})(x, t)
    s1 = b.make_score_fn(state.params, {"tokens": tok(["one", "one"])})(x, t)
    s_null = b.make_score_fn(state.params)(x, t)
    s_empty = b.make_score_fn(state.params, {"tokens": tok(["", ""])})(x, t)
    assert float(jnp.max(jnp.abs(s7 - s1))) > 1e-6
    np.testing.assert_allclose(s_null, s_empty, rtol=1e-6)
    # label_dropout 1: every caption is the empty prompt, so the loss ignores the captions
    config = text_config(training__label_dropout=1.0)
    b = config_lib.build(config, mesh=parallel.make_mesh(1))
    batch = {"image": jnp.zeros((2, 8, 8, 1)), "tokens": jnp.asarray(tok(["seven", "one"]))}
    other = dict(batch, tokens=jnp.asarray(tok(["", ""])))
    key = jax.random.key(4)
    np.testing.assert_allclose(b.train_loss({"params": state.params}, batch, key)[0],
                               b.train_loss({"params": state.params}, other, key)[0], rtol=1e-6)


def test_text_model_needs_captions(tiny_xattn):
    config = text_config()
    config.data.dataset = "DIGITS"
    ds = config_lib.dataset_from_config(config, "train", training=True, batch_size=16)
    with pytest.raises(ValueError, match="needs captions"):
        ds.batch(0)


FIXTURE = Path(__file__).parent / "fixtures" / "txt2img" / "pipeline"  # tiny CLIP (hidden 16)


def frozen_text_config(tokenizer: str | None = None, **overrides):
    """`text_config` with the fixture's pretrained CLIP text encoder, frozen (``path``); its
    tokenizer folder (needs transformers) or ``tokenizer="words"`` (ids < its vocab of 524)."""
    config = text_config(**overrides)
    te = {"tokenizer": str(FIXTURE / "tokenizer"), "path": str(FIXTURE / "text_encoder")}
    if tokenizer is not None:
        te.update(tokenizer=tokenizer, max_length=8)
    config.model.text_encoder = ml_collections.ConfigDict(te)
    return config


_BYTES = {"f64": 8, "i64": 8, "ui64": 8, "f32": 4, "i32": 4, "ui32": 4, "bf16": 2, "f16": 2,
          "i16": 2, "i8": 1, "ui8": 1, "i1": 1}


def constant_sizes(lowered) -> list[int]:
    """Bytes of each ``stablehlo.constant`` of a lowered program (its baked-in arrays)."""
    return [int(np.prod([int(d) for d in dims.split("x") if d], dtype=np.int64)) * _BYTES[dtype]
            for dims, dtype in re.findall(
                r"stablehlo\.constant dense<.*?> : tensor<((?:\d+x)*)(\w+)>", lowered.as_text())]


def _closed_over(b, weights):
    """Today's computation before the frozen argument: the same losses with the encoder's
    weights closed over (constants of the compiled programs)."""
    def train_loss(variables, batch, key):
        return b.train_loss({**variables, "frozen": weights}, batch, key)

    def eval_loss(state, batch, key):
        return b.eval_loss({"params": state.ema_params, "frozen": weights}, batch, key)[0]

    step = ts.jit_train_step(train_loss, b.tx, b.schedule, b.ema_rate, b.mesh,
                             state_sharding=ts.state_sharding_of(b.abstract_state))
    return step, jax.jit(eval_loss)


def test_frozen_encoder_is_a_step_argument(tiny_xattn):
    """model.text_encoder.path: the encoder's weights are the steps' ``frozen`` input, not
    constants: the lowered train step's largest constant is 64 bytes (the closed-over step
    carries all of the weights' bytes as constants), the evaluation loss equals the closed-over
    one and changes when the frozen input changes, and nothing of the encoder is in the train
    state."""
    config = frozen_text_config("words", training__batch_size=4)
    b = config_lib.build(config, mesh=parallel.make_mesh(1))
    state = b.init(jax.random.key(0))
    assert set(state.params) == {"net"}
    weights = config_text.frozen_weights_from_config(config)
    assert set(b.train_step.frozen) == {"text_encoder"}
    weight_bytes = sum(a.nbytes for a in jax.tree_util.tree_leaves(weights))
    assert weight_bytes > 40_000
    tok = b.model.tokenizer()
    batch = {"image": jax.random.uniform(jax.random.key(3), (4, 8, 8, 1)),
             "tokens": jnp.asarray(tok(["a handwritten seven", "the digit 1", "two", ""]))}
    key = jax.random.key(1)
    closed_step, closed_eval = _closed_over(b, weights)
    frozen_consts = constant_sizes(b.train_step.lower(state, batch, key))
    closed_consts = constant_sizes(closed_step.lower(state, batch, key))
    # scalars, RNG seeds and the empty prompt's 8 tokens (32 bytes) only
    assert max(frozen_consts) <= 64, sorted(frozen_consts)[-5:]
    assert sum(closed_consts) - sum(frozen_consts) >= weight_bytes, (closed_consts, weight_bytes)
    loss = b.eval_step(state, batch, key)
    np.testing.assert_allclose(loss, closed_eval(state, batch, key), rtol=1e-6)
    scaled = jax.tree_util.tree_map(lambda a: a * 1.1, b.eval_step.frozen)
    assert abs(float(b.eval_step.jitted(state, batch, key, scaled)) - float(loss)) > 1e-6


def test_frozen_encoder_weights_missing_is_named(tiny_xattn):
    config = frozen_text_config("words", training__batch_size=4)
    b = config_lib.build(config, mesh=parallel.make_mesh(1))
    batch = {"image": jnp.zeros((1, 8, 8, 1)), "tokens": jnp.ones((1, 8), jnp.int32)}
    params = jax.eval_shape(b.init, jax.random.key(0)).params
    with pytest.raises(ValueError, match=r"variables\['frozen'\]\['text_encoder'\]"):
        jax.eval_shape(b.train_loss, {"params": params}, batch, jax.random.key(0))
    with pytest.raises(ValueError, match=r"frozen keys \['text_encoder'\]"):
        config_lib.build(config, mesh=parallel.make_mesh(1), frozen={"text_encoder": {}})


def _leaves_close(got, want, rtol):
    """Relative L2 <= rtol per leaf; the attention key biases have an exactly-zero gradient
    (softmax is invariant to q.b): Adam normalises float32 round-off there, so they are left
    out."""
    got = jax.tree_util.tree_leaves_with_path(jax.device_get(got))
    for (path, u), v in zip(got, jax.tree_util.tree_leaves(jax.device_get(want)), strict=True):
        name = jax.tree_util.keystr(path)
        if "['key']['bias']" not in name:
            assert np.linalg.norm(u - v) <= rtol * np.linalg.norm(v), name


@pytest.mark.slow  # 4 builds on 1 and 8 devices: ~40 s CPU
def test_frozen_pretrained_encoder_fsdp8_equals_replicated_and_closed_over(tiny_xattn):
    """model.text_encoder.path: the CLIP folder's weights encode the tokens (its tokenizer folder
    tokenizes); nothing of the encoder is in the train state, the score sees its context, and
    prompt guidance encodes the prompts (and the empty one) before sampling. Its weights are the steps' ``frozen`` input: on 1 device the train step equals the one with
    the weights closed over (today's constants); on 8 devices with parallel.fsdp = 8 they are
    FSDP-sharded (the largest leaf: 1/8 of its bytes per device) and the parameters and the
    evaluation loss after 2 steps equal the replicated run's (relative L2 <= 1e-5)."""
    from score_jax import convert

    pytest.importorskip("transformers")
    config = frozen_text_config()
    b, state = _steps(config, parallel.make_mesh(8), n=2)
    assert "encoder" not in state.params and set(state.params) == {"net"}
    tok = captions.get_tokenizer(str(FIXTURE / "tokenizer"))
    ids = tok(["the seven digit"])
    module, variables = convert.load_clip_text(FIXTURE / "text_encoder")
    context = module.apply(variables, jnp.asarray(ids))[0]
    x, t = jax.random.normal(jax.random.key(2), (1, 8, 8, 1)), jnp.full((1,), 0.5)
    via_tokens = b.make_score_fn(state.params, {"tokens": jnp.asarray(ids)})(x, t)
    via_context = b.make_score_fn(state.params, {"context": context})(x, t)
    np.testing.assert_allclose(via_tokens, via_context, rtol=1e-5, atol=1e-6)
    # guided sampling: the prompts are encoded once, outside the sampler (contexts as leaves)
    g = prompt_guidance(b.make_score_fn, state.params, {"tokens": ids}, {"tokens": tok([""])},
                        2.0)
    assert set(g.cond_kwargs) == set(g.null_kwargs) == {"context"}
    np.testing.assert_allclose(g.cond_kwargs["context"], context, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g.null_kwargs["context"],
                               module.apply(variables, jnp.asarray(tok([""])))[0], rtol=1e-5,
                               atol=1e-6)

    # 1 device: the frozen argument == the weights closed over (2 train steps)
    b1 = config_lib.build(config, mesh=parallel.make_mesh(1))
    ds = config_lib.dataset_from_config(config, "train", training=True,
                                        batch_size=config.training.batch_size)
    batches = [parallel.to_global(ds.batch(i), b1.mesh) for i in range(2)]
    closed_step, _ = _closed_over(b1, config_text.frozen_weights_from_config(config))
    key = jax.random.key(1)
    s_frozen, s_closed = b1.init(jax.random.key(0)), b1.init(jax.random.key(0))
    for batch in batches:
        s_frozen, m_frozen = b1.train_step(s_frozen, batch, key)
        s_closed, m_closed = closed_step(s_closed, batch, key)
    np.testing.assert_allclose(m_frozen["loss"], m_closed["loss"], rtol=1e-6)
    _leaves_close(s_frozen.params, s_closed.params, 1e-6)
    _leaves_close(s_frozen.params, state.params, 1e-5)  # 1 device == 8 replicated

    # 8 devices, fsdp = 8: the encoder's weights are sharded and the run equals the replicated
    fconfig = frozen_text_config(parallel__fsdp=8, parallel__fsdp_min_size=1)
    fb, fstate = _steps(fconfig, parallel.make_mesh(8, fsdp=8), n=2)
    leaves = jax.tree_util.tree_leaves(fb.train_step.frozen["text_encoder"])
    big = max(leaves, key=lambda a: a.nbytes)
    assert big.shape == (524, 16) and big.sharding.spec == P(None, "fsdp")
    assert {s.data.nbytes for s in big.addressable_shards} == {big.nbytes // 8}
    assert all(a.sharding.mesh.shape["fsdp"] == 8 for a in leaves)
    _leaves_close(fstate.params, state.params, 1e-5)
    np.testing.assert_allclose(fb.eval_step(fstate, parallel.to_global(ds.batch(0), fb.mesh), key),
                               b.eval_step(state, parallel.to_global(ds.batch(0), b.mesh), key),
                               rtol=1e-5)
    # the score wiring encodes with the sharded weights too
    np.testing.assert_allclose(fb.make_score_fn(state.params, {"tokens": jnp.asarray(ids)})(x, t),
                               via_context, rtol=1e-5, atol=1e-6)


@pytest.mark.slow  # 3 train_and_evaluate runs: ~30 s CPU
def test_frozen_encoder_not_checkpointed_and_resume_exact(tmp_path, tiny_xattn):
    """The frozen encoder's weights are not in the checkpoint (the network's are; a resumed run
    reads the encoder's folder again), and 2 steps + a resume to 4 equal 4 steps bit for bit."""
    from score_jax import train_lib

    def run(wd, n_iters):
        config = frozen_text_config("words", training__n_iters=n_iters,
                                    training__snapshot_freq=2, training__eval_freq=2)
        return train_lib.train_and_evaluate(config, str(wd))

    full = run(tmp_path / "a", 4)
    part = run(tmp_path / "b", 2)
    text = "".join(open(os.path.join(d, f), errors="ignore").read()
                   for d, _, files in os.walk(tmp_path / "b" / "checkpoints") for f in files)
    assert "'net'" in text or '"net"' in text
    assert "token_embedding" not in text and "text_encoder" not in text
    resumed = run(tmp_path / "b", 4)
    assert int(part.step) == 2 and int(resumed.step) == int(full.step) == 4
    for u, v in zip(jax.tree_util.tree_leaves(jax.device_get(full)),
                    jax.tree_util.tree_leaves(jax.device_get(resumed)), strict=True):
        np.testing.assert_array_equal(u, v)
