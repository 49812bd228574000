"""Released checkpoints, each one command after its conversion, on tiny official-layout fixtures:
DiT-XL/2 + the SD VAE (``configs/released/dit_xl2.py``: no dataset, DiT's learned-variance
sampler, CFG), the SD VAE from a diffusers folder, and sampling + scoring a converted checkpoint
in one call (``sample.py --inception ... --ref_stats/--ref_images``)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.released import dit_xl2
from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import sample_lib
from score_jax.convert import autoencoder as ae_convert
from score_jax.convert import score_sde as convert_cli
from score_jax.evaluation import inception as inception_lib
from score_jax.evaluation import score as score_cli
from score_jax.evaluation.metrics import metrics_report
from score_jax.models import get_model

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
VAE_FOLDER = FIX / "autoencoder" / "diffusers_tiny"
TINY_DIT = dit_xl2.SMOKE_DIT  # the shapes of tests/fixtures/dit/dit_tiny_p2.npz
TINY_VAE = dit_xl2.SMOKE_VAE  # and of tests/fixtures/autoencoder/diffusers_tiny


# ---------------------------------------------------------------------------------------------
# The SD VAE from a diffusers folder
# ---------------------------------------------------------------------------------------------
def test_autoencoder_from_a_diffusers_folder_decodes_as_diffusers(tmp_path, capsys):
    """``python -m score_jax.convert autoencoder_kl FOLDER out.msgpack`` (the architecture from
    config.json) decodes / encodes as diffusers' own AutoencoderKL (float32, 1e-4). Before the
    fix a folder failed with ``unknown checkpoint suffix ''``."""
    out = tmp_path / "vae.msgpack"
    convert_cli.main(["autoencoder_kl", str(VAE_FOLDER), str(out)])
    assert "scaling_factor 0.18215" in capsys.readouterr().out
    state, cfg = ae_convert.load_diffusers_folder(VAE_FOLDER)
    assert {k: cfg[k] for k in TINY_VAE} == TINY_VAE and cfg["scaling_factor"] == 0.18215
    assert set(ae_convert.load_state_dict(VAE_FOLDER)) == set(state)  # a folder is a source too
    vae = get_model({"name": "autoencoder_kl", **TINY_VAE}, num_channels=3)
    variables = ckpt_lib.load_variables(str(out))
    ref = np.load(FIX / "autoencoder" / "diffusers_tiny_ref.npz")
    # jitted: one compile each instead of the many per-primitive compiles of an eager apply
    dec = jax.jit(lambda v, z: vae.apply(v, z, method="decode"))(variables, jnp.asarray(ref["z"]))
    np.testing.assert_allclose(np.asarray(dec), ref["dec"], atol=1e-4, rtol=0)
    mean, _ = jax.jit(lambda v, x: vae.apply(v, x, method="encode"))(variables, jnp.asarray(ref["x"]))
    np.testing.assert_allclose(np.asarray(mean), ref["mean"], atol=1e-4, rtol=0)
    # the same weights as a file
    convert_cli.main(["autoencoder_kl", str(VAE_FOLDER / "diffusion_pytorch_model.safetensors"),
                      str(tmp_path / "f.msgpack"), "--block_out_channels", "8,16",
                      "--layers_per_block", "1", "--latent_channels", "3",
                      "--norm_num_groups", "4"])
    assert (tmp_path / "f.msgpack").read_bytes() == out.read_bytes()


def test_diffusers_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="without config.json"):
        ae_convert.load_diffusers_folder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ValueError, match="no weights file"):
        ae_convert.load_diffusers_folder(tmp_path)
    cfg = json.loads((VAE_FOLDER / "config.json").read_text())
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(
        (VAE_FOLDER / "diffusion_pytorch_model.safetensors").read_bytes())
    (tmp_path / "config.json").write_text(json.dumps(dict(cfg, act_fn="gelu")))
    with pytest.raises(ValueError, match="act_fn='gelu' is not supported"):
        ae_convert.load_diffusers_folder(tmp_path)


# ---------------------------------------------------------------------------------------------
# DiT-XL/2 + SD VAE (configs/released/dit_xl2.py) on a tiny official-layout DiT
# ---------------------------------------------------------------------------------------------
def _official_tiny_dit(tmp_path) -> Path:
    """The official state dict of tests/fixtures/dit/dit_tiny_p2.npz (8 x 8 x 3 inputs,
    learn_sigma, 10 classes + null) as an .npz of official keys."""
    with np.load(FIX / "dit" / "dit_tiny_p2.npz") as f:
        sd = {k[3:]: f[k].astype(np.float32) for k in f.files if k.startswith("sd/")}
    path = tmp_path / "dit_official.npz"
    np.savez(path, **sd)
    return path


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("released")
    dit = tmp / "dit.msgpack"
    convert_cli.main(["dit", str(_official_tiny_dit(tmp)), str(dit), "--preset", "DiT-S/2",
                      "--model", json.dumps({k: v for k, v in TINY_DIT.items()
                                             if k not in ("num_classes", "patch_size")}),
                      "--num-classes", "10"])
    vae = tmp / "vae.msgpack"
    convert_cli.main(["autoencoder_kl", str(VAE_FOLDER), str(vae)])
    return dit, vae


def _dit_config(vae_path, **sampling):
    config = dit_xl2.get_config("smoke")  # 8 x 8 x 3 latents of 16 px images, 4 steps
    config.latent.autoencoder_checkpoint = str(vae_path)
    config.sampling.update(sampling)
    return config


def test_dit_config_needs_no_dataset_and_refuses_training():
    for size in ("256", "512"):
        config = dit_xl2.get_config(size)
        config_lib.validate_config(config, num_devices=1)  # no built-in dataset, 1000 classes
        assert config.data.dataset == config_lib.NO_DATASET and config.model.num_classes == 1000
        assert config.sampling.method == "learned_variance" and config.sampling.num_steps == 250
        assert config.sampling.guidance_scale == 1.5 and config.latent.scale_factor == 0.18215
    assert dit_xl2.get_config("512").data.image_size == 512
    for bad in ("1024", "256,512"):
        with pytest.raises(ValueError, match="valid choices"):
            dit_xl2.get_config(bad)
    with pytest.raises(ValueError, match="has no data"):
        config_lib.dataset_from_config(dit_xl2.get_config(), "train", batch_size=8, training=True)


def _fake_features(images):
    """A fixed projection of the uint8 pixels (stands in for the Inception; 16 features)."""
    assert images.dtype == np.uint8
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    proj = np.random.default_rng(7).standard_normal((x.shape[1], 16))
    return np.tanh(x @ proj).astype(np.float32), (x @ proj[:, :10]).astype(np.float32)


@pytest.fixture
def fake_inception(monkeypatch):
    calls = []

    def get_fn(path, batch_size, resize="pytorch", sha256=None):
        calls.append((path, resize, sha256))
        return _fake_features

    monkeypatch.setattr(inception_lib, "get_inception_fn", get_fn)
    return calls


def test_dit_sample_and_score_in_one_call(converted, tmp_path, fake_inception):
    """DiT's sampler (learned variance, CFG) from the converted tiny DiT + VAE, scored in the same
    call: metrics.json (one writer) holds FID / IS / KID of the floor-quantised samples against
    the reference images, equal to the score CLI on the same samples."""
    dit, vae = converted
    ref = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3), dtype=np.uint8)
    np.savez(tmp_path / "ref.npz", images=ref)
    (tmp_path / "w.pth").write_bytes(b"not read: the Inception is faked")
    sha = _sha256(tmp_path / "w.pth")  # the pin is checked before sampling: name this file's
    config = _dit_config(vae)
    fid = sample_lib.FidSpec(inception=str(tmp_path / "w.pth"), ref_images=str(tmp_path / "ref.npz"),
                             resize="tf1", inception_sha256=sha)
    with pytest.raises(ValueError, match=inception_lib.PT_INCEPTION_SHA256):  # default: the pin
        sample_lib.sample_from_checkpoint(config, checkpoint=str(dit), num_samples=4,
                                          output_dir=str(tmp_path / "s"),
                                          fid=dataclasses_replace(fid, inception_sha256="pinned"))
    assert not (tmp_path / "s").exists()
    out = sample_lib.sample_from_checkpoint(config, checkpoint=str(dit), num_samples=4,
                                            labels=[1, 2, 9, 0], output_dir=str(tmp_path / "s"),
                                            fid=fid)
    assert out["images"].shape == (4, 16, 16, 3) and out["num_nonfinite"] == 0 and out["nfe"] == 4
    assert fake_inception == [(str(tmp_path / "w.pth"), "tf1", sha)]
    floored = np.floor(np.clip(out["images"].astype(np.float64) * 255, 0, 255)).astype(np.uint8)
    pool, logits = _fake_features(floored)
    rpool, _ = _fake_features(ref)
    want = metrics_report(pool, logits, {"mu": rpool.mean(0), "sigma": np.cov(rpool, rowvar=False),
                                         "pool_3": rpool})
    with open(out["metrics_path"]) as f:
        m = json.load(f)
    for k in ("fid", "is", "kid"):
        assert m[k] == pytest.approx(want[k], rel=1e-5), k
    assert m["resize"] == "tf1" and m["quantize"] == "floor" and m["nfe"] == 4


def test_dit_streamed_samples_are_the_decoded_images(converted, tmp_path):
    """A latent model streamed (keep_images=False, the default for 50,000 DiT samples at 256 px):
    samples.npz holds the decoded 16 x 16 x 3 images (not the 8 x 8 x 4 latents), the same
    uint8 array as the in-memory run (tests/test_sample_stream.py: the pixel-space case)."""
    dit, vae = converted
    kw = dict(checkpoint=str(dit), num_samples=4, labels=[1, 2, 9, 0])
    mem = sample_lib.sample_from_checkpoint(_dit_config(vae), **kw, output_dir=str(tmp_path / "m"))
    streamed = sample_lib.sample_from_checkpoint(_dit_config(vae), **kw, keep_images=False,
                                                 output_dir=str(tmp_path / "s"))
    assert mem["images_kept"] and streamed["images"] is None and streamed["nfe"] == mem["nfe"]
    a = np.load(tmp_path / "m" / "samples.npz")["samples"]
    np.testing.assert_array_equal(np.load(tmp_path / "s" / "samples.npz")["samples"], a)
    assert a.shape == (4, 16, 16, 3)
    assert not sample_lib.keeps_images(None, 50_000, (256, 256, 3))  # DiT's FID run streams


@pytest.mark.slow  # three more compiled samplers (~20 s on 2 cores)
def test_dit_guidance_is_applied_and_fast_samplers_run(converted, tmp_path):
    dit, vae = converted
    kw = dict(checkpoint=str(dit), num_samples=4, labels=[1, 2, 9, 0])
    guided = sample_lib.sample_from_checkpoint(_dit_config(vae), **kw,
                                               output_dir=str(tmp_path / "g"))
    plain = sample_lib.sample_from_checkpoint(_dit_config(vae, guidance_scale=None), **kw,
                                              output_dir=str(tmp_path / "p"))
    assert np.max(np.abs(plain["images"] - guided["images"])) > 1e-3  # guidance is on
    # a fast sampler on the eps half of the same checkpoint, random classes
    fast = sample_lib.sample_from_checkpoint(
        _dit_config(vae, method="ddim"), checkpoint=str(dit), num_samples=2,
        output_dir=str(tmp_path / "d"))
    assert fast["num_nonfinite"] == 0 and fast["nfe"] == 4 and fast["labels"] is not None


def test_reference_of_another_convention_is_refused_before_sampling(converted, tmp_path,
                                                                    fake_inception):
    from score_jax.evaluation.metrics import save_stats

    dit, vae = converted
    feats = np.random.default_rng(0).standard_normal((8, 16))
    save_stats(str(tmp_path / "stats.npz"), feats.mean(0), np.cov(feats, rowvar=False),
               resize="pytorch")
    (tmp_path / "w.pth").write_bytes(b"x")
    fid = sample_lib.FidSpec(inception=str(tmp_path / "w.pth"), ref_stats=str(tmp_path / "stats.npz"),
                             resize="tf1", inception_sha256=None)
    with pytest.raises(ValueError, match="pytorch"):
        sample_lib.sample_from_checkpoint(_dit_config(vae), checkpoint=str(dit), num_samples=2,
                                          output_dir=str(tmp_path / "s"), fid=fid)
    assert not (tmp_path / "s").exists() and fake_inception == []


@pytest.mark.slow  # subprocesses importing jax (~1 min on 2 cores)
def test_dit_cli_end_to_end(converted, tmp_path, monkeypatch):
    """convert (above) -> ``sample.py --config=configs/released/dit_xl2.py`` -> the score CLI."""
    dit, vae = converted
    cmd = [sys.executable, str(ROOT / "sample.py"),
           f"--config={ROOT / 'configs/released/dit_xl2.py'}:smoke", f"--checkpoint={dit}",
           f"--output_dir={tmp_path / 'out'}", "--labels=3,7,1", "--guidance_scale=4.0",
           "--config.sampling.num_steps=5", f"--config.latent.autoencoder_checkpoint={vae}"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "3 samples, nfe 5" in r.stdout
    samples = np.load(tmp_path / "out" / "samples.npz")["samples"]
    assert samples.shape == (3, 16, 16, 3)
    np.savez(tmp_path / "ref.npz", images=np.random.default_rng(1).integers(
        0, 256, (5, 16, 16, 3), dtype=np.uint8))

    def get_fn(path, batch_size, resize="pytorch", sha256=None):
        return _fake_features

    monkeypatch.setattr(inception_lib, "get_inception_fn", get_fn)
    values = score_cli.main(["--samples", str(tmp_path / "out" / "samples.npz"), "--ref-images",
                             str(tmp_path / "ref.npz"), "--inception", "w.pth"])
    assert np.isfinite(values["fid"]) and values["num_samples"] == 3
    with open(tmp_path / "out" / "metrics.json") as f:
        assert json.load(f)["fid"] == values["fid"]


def test_learned_variance_needs_learn_sigma(converted, tmp_path):
    dit, vae = converted
    config = _dit_config(vae)
    config.model.learn_sigma = False
    with pytest.raises(ValueError, match="learn_sigma"):
        sample_lib.draw_samples(jax.random.key(0), config_lib.build(config),
                                None, 2)


# ---------------------------------------------------------------------------------------------
# score_sde CIFAR-10 (NCSN++ VE): convert -> sample -> score, the documented file names
# ---------------------------------------------------------------------------------------------
TINY_NCSNPP = '''import sys
sys.path.insert(0, {root!r})
from configs.ve import cifar10_ncsnpp_continuous as base


def get_config(arg=None):
    """configs/ve/cifar10_ncsnpp_continuous.py scaled down as tests/fixtures/reference_nets/
    ncsnpp_ve_fourier.json (the official-layout fixture), with a 3-step PC sampler."""
    c = base.get_config(arg)
    c.model.update(nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,))
    c.data.image_size = 16
    c.sampling.num_steps = 3
    return c
'''


@pytest.mark.slow  # compiles NCSN++ and a PC sampler (~40 s on 2 cores)
def test_score_sde_cifar10_convert_sample_score(tmp_path, fake_inception):
    """The documented commands: ``python -m score_jax.convert checkpoint_26 cifar10_ncsnpp.msgpack
    --config ...`` then ``sample.py --checkpoint=cifar10_ncsnpp.msgpack --inception ...
    --ref_stats cifar10_stats.npz --fid_resize tf1 --ref_stats_resize tf1`` (score_sde's stats
    file: pool_3 only, no recorded convention) on the official-layout NCSN++ fixture."""
    from flax import serialization

    from score_jax.convert import convert_pytorch

    meta = json.loads((FIX / "reference_nets" / "ncsnpp_ve_fourier.json").read_text())
    with np.load(FIX / "reference_nets" / "ncsnpp_ve_fourier.npz") as z:
        sd = {k[len("param/"):]: z[k] for k in z.files if k.startswith("param/")}
    cfg = meta["config"]
    params = convert_pytorch(sd, cfg["model"], **cfg["data"])["params"]  # score_sde's names
    ckpt = tmp_path / "checkpoint_26"  # a score_sde (JAX) checkpoint file
    ckpt.write_bytes(serialization.msgpack_serialize(
        {"step": np.asarray(26), "optimizer": {"target": params, "state": {"step": 26}},
         "lr": np.asarray(2e-4), "model_state": {}, "ema_rate": np.asarray(0.999),
         "params_ema": params, "rng": np.asarray([0, 1], np.uint32)}))
    (tmp_path / "cfgs").mkdir()
    cfg_file = tmp_path / "cfgs" / "cifar10_ncsnpp_tiny.py"
    cfg_file.write_text(TINY_NCSNPP.format(root=str(ROOT)))
    convert_cli.main([str(ckpt), str(tmp_path / "cifar10_ncsnpp.msgpack"), "--config",
                      str(cfg_file)])
    feats = np.random.default_rng(2).standard_normal((12, 16)).astype(np.float32)
    np.savez(tmp_path / "cifar10_stats.npz", pool_3=feats)  # score_sde's layout
    (tmp_path / "w.pth").write_bytes(b"x")
    config = convert_cli._load_config(str(cfg_file))
    fid = sample_lib.FidSpec(inception=str(tmp_path / "w.pth"),
                             ref_stats=str(tmp_path / "cifar10_stats.npz"), resize="tf1",
                             ref_stats_resize="tf1", inception_sha256=None)
    out = sample_lib.sample_from_checkpoint(config, checkpoint=str(tmp_path / "cifar10_ncsnpp.msgpack"),
                                            num_samples=3, output_dir=str(tmp_path / "out"),
                                            fid=fid)
    assert out["images"].shape == (3, 16, 16, 3) and out["num_nonfinite"] == 0
    with open(out["metrics_path"]) as f:
        m = json.load(f)
    assert np.isfinite(m["fid"]) and m["resize"] == "tf1" and m["quantize"] == "floor"
    assert m["reference"] == str(tmp_path / "cifar10_stats.npz") and m["num_samples"] == 3
    # the score CLI on the written samples.npz (uint8, rounded) agrees in convention
    values = score_cli.main(["--samples", out["npz"], "--ref-stats",
                             str(tmp_path / "cifar10_stats.npz"), "--ref-stats-resize", "tf1",
                             "--inception", "w.pth", "--resize", "tf1",
                             "--out", str(tmp_path / "cli.json")])
    assert np.isfinite(values["fid"]) and fake_inception[-1][1] == "tf1"
    # a pytorch-convention run against the tf1 file is refused before sampling
    with pytest.raises(ValueError, match="tf1"):
        sample_lib.sample_from_checkpoint(
            config, checkpoint=str(tmp_path / "cifar10_ncsnpp.msgpack"), num_samples=3,
            output_dir=str(tmp_path / "o2"), fid=dataclasses_replace(fid, resize="pytorch"))


def _sha256(path):
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


def test_docs_use_one_file_name_for_the_converted_cifar10_checkpoint():
    """Issue 23: the docs converted to cifar10_ncsnpp.msgpack and sampled ncsnpp_cifar10.msgpack."""
    text = "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    text += (ROOT / "sample.py").read_text()
    assert "ncsnpp_cifar10.msgpack" not in text and "cifar10_ncsnpp.msgpack" in text
