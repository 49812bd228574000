"""The ``--config`` flag of the CLIs (issue 26 items 3 and 9): an absent value is spelled None,
the null label samples with guidance off, an unknown key fails in one line, and
``sampling_options_from_config`` names every refused key. Parsed by absl flags +
``score_jax.config.flags.define_config_flag``, as train.py / sample.py / evaluate.py do."""
import os
import subprocess
import sys

import pytest
from test_train_helpers import ROOT

from score_jax import config as config_lib

# What train.py does at import time, then validation (as build does first).
_PROBE = """
import sys
from absl import flags
from score_jax.config.flags import define_config_flag
define_config_flag("config", "configs/default_digits.py")
flags.FLAGS(sys.argv)
c = flags.FLAGS.config
from score_jax import config
config.validate_config(c)
print("PARSED", c.sampling.guidance_scale, c.sampling.class_label)
"""


def _cli(*args):
    return subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300,
                          env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT))


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 6.1 s)
def test_guidance_none_and_the_null_label_from_the_command_line():
    """digits_cond.py sets guidance_scale=2.0: None parses (plain conditional sampling), and
    with guidance off the null label (class_label=10: unconditional) is allowed."""
    r = _cli("--config=configs/digits_cond.py", "--config.sampling.guidance_scale=None")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "PARSED None None" in r.stdout
    r = _cli("--config=configs/digits_cond.py", "--config.sampling.guidance_scale=None",
             "--config.sampling.class_label=10")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "PARSED None 10" in r.stdout
    r = _cli("--config=configs/digits_cond.py", "--config.sampling.class_label=None",
             "--config.sampling.guidance_scale=1.5")
    assert r.returncode == 0 and "PARSED 1.5 None" in r.stdout, r.stderr[-2000:]


def test_null_label_with_guidance_names_the_flag_to_turn_it_off():
    r = _cli("--config=configs/digits_cond.py", "--config.sampling.class_label=10")
    assert r.returncode != 0
    assert "--config.sampling.guidance_scale=None" in r.stderr


@pytest.mark.parametrize("arg, section, key", [("--config.sampling.bogus=1", "config.sampling",
                                                "bogus"),
                                               ("--config.bogus.x=1", "config", "bogus")])
def test_unknown_key_fails_in_one_line(arg, section, key):
    r = _cli(arg)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr[-3000:]
    assert f"{section} has no key {key!r}" in lines[0] and "valid keys of" in lines[0]
    if section == "config.sampling":
        assert "'guidance_scale'" in lines[0] and "'num_steps'" in lines[0]


def test_sampling_options_names_every_refused_key():
    from configs.default_digits import get_config

    c = get_config("dsm_smoke")  # dpm_solver
    c.sampling.method = "pc"
    c.sampling.eta = 0.5
    c.sampling.rho = 7.0
    with pytest.raises(ValueError) as e:
        config_lib.sampling_options_from_config(c.sampling)
    msg = str(e.value)
    assert "sampling.eta=0.5 is not an option of method 'pc'" in msg
    assert "sampling.rho=7.0 is not an option of method 'pc'" in msg


@pytest.mark.slow  # moved out of the default run for the CI budget (measured: 5.8 s)
def test_own_images_from_the_command_line(tmp_path):
    """--config.data.dataset=folder|npz --config.data.path=... parse and validate (the training
    itself: tests/test_recipes.py::test_train_on_an_image_folder_and_an_npz)."""
    for dataset in ("folder", "npz"):
        r = _cli(f"--config.data.dataset={dataset}", f"--config.data.path={tmp_path}")
        assert r.returncode == 0 and "PARSED" in r.stdout, r.stderr[-2000:]
    r = _cli("--config.data.dataset=folder")
    assert r.returncode != 0 and "needs config.data.path" in r.stderr


@pytest.mark.parametrize("cli", ["train.py", "sample.py", "evaluate.py"])
def test_help_lists_the_config_flag(cli):
    """``--help`` of every CLI lists ``--config`` beside its own flags (absl attributes the flag
    to the CLI, not to score_jax.config.flags)."""
    out = subprocess.run([sys.executable, cli, "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    text = out.stdout + out.stderr
    own = text.split(f"{cli}:", 1)
    assert len(own) == 2, text[-2000:]
    assert "--config:" in own[1].split("Try --helpfull", 1)[0]
    assert out.returncode == 0, (out.returncode, text[-2000:])  # absl's own help exits 1


def test_sample_refuses_zero_samples_before_loading_anything():
    out = subprocess.run([sys.executable, "sample.py", "--num_samples=0"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "--num_samples=0: 0 is not a positive integer" in out.stderr


# ---------------------------------------------------------------------------------------------
# --guidance_scale of sample.py / txt2img.py, and the two spellings of every flag (in-process)
# ---------------------------------------------------------------------------------------------
def _guidance_flag(**kw):
    from absl import flags

    from score_jax.config.flags import define_guidance_scale_flag

    fv = flags.FlagValues()
    define_guidance_scale_flag(None, "w", flag_values=fv, **kw)
    return fv


def test_negative_guidance_scale_is_refused_at_flag_parsing():
    from absl import flags

    for allow_none in (True, False):  # sample.py, txt2img.py
        fv = _guidance_flag(allow_none=allow_none)
        for bad, why in (("-0.5", "-0.5 is negative"), ("nan", "nan is not finite"),
                         ("inf", "inf is not finite")):
            with pytest.raises(flags.IllegalFlagValueError,
                               match=f"guidance_scale={why}; valid: a finite number >= 0"):
                fv(["prog", f"--guidance_scale={bad}"])
        for good in ("0", "1", "7.5"):
            fv.unparse_flags()
            fv(["prog", f"--guidance_scale={good}"])
            assert fv.guidance_scale == float(good)
    fv = _guidance_flag(allow_none=False)
    with pytest.raises(flags.IllegalFlagValueError, match="'None' is not a number"):
        fv(["prog", "--guidance_scale=None"])


def test_the_config_refuses_a_negative_guidance_scale():
    from configs.digits_cond import get_config

    c = get_config()
    c.sampling.guidance_scale = -1.0
    with pytest.raises(ValueError, match=r"guidance_scale=-1.0 must be a finite number >= 0"):
        config_lib.validate_config(c)


def test_sample_guidance_scale_none_and_both_spellings():
    """``sample.py --guidance_scale=None`` parses and sets the config's scale to None (plain
    conditional sampling); not given, the config's own scale stays; ``--ref-stats``,
    ``--num-samples``, ``--no-ema`` are the flags ``--ref_stats``, ``--num_samples``,
    ``--noema``."""
    from absl import flags

    import _cli
    import sample  # the CLI module (flags defined at import, not parsed)
    from configs.digits_cond import get_config
    from score_jax.config.flags import GuidanceScaleParser

    parser = flags.FLAGS["guidance_scale"].parser
    assert isinstance(parser, GuidanceScaleParser) and parser.parse("None") is None
    with pytest.raises(ValueError, match="-2.0 is negative"):
        parser.parse("-2")
    c = get_config()
    assert c.sampling.guidance_scale == 2.0
    assert sample._with_guidance_scale(c, None, True).sampling.guidance_scale is None
    assert sample._with_guidance_scale(c, None, False).sampling.guidance_scale == 2.0
    assert sample._with_guidance_scale(c, 0.5, True).sampling.guidance_scale == 0.5
    argv = ["sample.py", "--ref-stats=s.npz", "--num-samples", "4", "--no-ema", "--noema",
            "--guidance-scale=None", "--config.sampling.num_steps=3", "--seed=1", "x-y"]
    assert _cli.respell_argv(argv) == [
        "sample.py", "--ref_stats=s.npz", "--num_samples", "4", "--noema", "--noema",
        "--guidance_scale=None", "--config.sampling.num_steps=3", "--seed=1", "x-y"]


def test_txt2img_guidance_flag_is_the_checked_one():
    """txt2img.py's --guidance_scale is `define_guidance_scale_flag` without None (its module
    cannot be imported beside sample.py: both define --guidance_scale)."""
    import ast

    tree = ast.parse(open(os.path.join(ROOT, "txt2img.py")).read())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "define_guidance_scale_flag"]
    assert len(calls) == 1 and ast.literal_eval(calls[0].args[0]) == 7.5
    assert not any(k.arg == "allow_none" for k in calls[0].keywords)


def test_respell_and_argparse_accept_both_spellings():
    from score_jax.cli_args import ArgumentParser, respell

    known = ["ref_stats", "to-npz", "save_features"]
    assert respell(["p", "--ref-stats", "a", "--to_npz=b", "--save-features", "--", "--ref-stats"],
                   known) == ["p", "--ref_stats", "a", "--to-npz=b", "--save_features", "--",
                              "--ref-stats"]
    assert respell(["--no-ema", "--no_progress", "--bogus-flag"], [],
                   negatable=["ema", "progress"]) == ["--noema", "--noprogress", "--bogus-flag"]
    ap = ArgumentParser()
    ap.add_argument("--ref_stats")
    ap.add_argument("--max-images", type=int)
    for argv in (["--ref_stats", "s", "--max-images", "3"], ["--ref-stats=s", "--max_images=3"]):
        args = ap.parse_args(argv)
        assert (args.ref_stats, args.max_images) == ("s", 3)


def test_missing_config_file_or_bad_variant_is_one_line():
    """An explicit --config naming a missing file, or a variant its get_config refuses, exits with
    one line naming the value (not ml_collections' traceback at flag parsing)."""
    from absl import flags as absl_flags

    from score_jax.config.flags import check_config_file, define_config_flag

    with pytest.raises(SystemExit, match=r"--config=configs/nosuch\.py: no such config file "
                                         r"'configs/nosuch\.py'.*configs/default_digits\.py"):
        define_config_flag("config", "configs/default_digits.py",
                           flag_values=absl_flags.FlagValues(),
                           argv=["train.py", "--config=configs/nosuch.py"])
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        with pytest.raises(SystemExit, match=r"--config=configs/digits_distill\.py:bogus: .*bogus.*"
                                             r"valid choices"):
            check_config_file("configs/digits_distill.py:bogus")
        check_config_file("configs/digits_distill.py:cd")  # a valid one passes
        check_config_file(None)
    finally:
        os.chdir(here)


# ---------------------------------------------------------------------------------------------
# _cli.respell_argv: --help / -h exit 0, a repeated flag is refused in one line (in-process)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["help", "?", "helpshort", "helpfull", "helpxml"])
def test_help_flags_print_the_help_and_exit_zero(name, capsys):
    """absl's help flags print the help and exit with status 1; the CLIs' (installed by
    ``_cli.respell_argv``) exit with 0, as argparse does. ``-h`` is ``--help``."""
    from absl import flags

    import _cli

    assert _cli.respell_argv(["train.py", "-h", "--", "-h"]) == ["train.py", "--help", "--", "-h"]
    _cli.install_help_flags()  # idempotent
    with pytest.raises(SystemExit) as e:
        flags.FLAGS[name].parse("true")
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert ("<AllFlags>" if name == "helpxml" else "--helpfull") in printed
    flags.FLAGS[name].parse("false")  # not asked: nothing printed, no exit
    assert capsys.readouterr().out == ""


def test_repeated_flag_names_the_flag_and_both_values():
    from score_jax.cli_args import repeated_flag

    known = ["workdir", "seed", "ema", "prompt", "config.training.n_iters"]
    kw = dict(booleans=["ema"], repeatable=["prompt"])
    msg = repeated_flag(["train.py", "--workdir=a", "--seed", "3", "--workdir=b"], known, **kw)
    assert msg == "--workdir is given twice with different values (--workdir=a and --workdir=b); give it once"
    assert repeated_flag(["p", "--seed", "-1", "-seed=2"], known, **kw) == (
        "--seed is given twice with different values (--seed -1 and -seed=2); give it once")
    assert repeated_flag(["p", "--config.training.n_iters=5", "--config.training.n_iters=7"], known,
                         **kw) == ("--config.training.n_iters is given twice with different values "
                                   "(--config.training.n_iters=5 and --config.training.n_iters=7); "
                                   "give it once")
    assert "--ema is given twice with different values (--ema and --noema)" in repeated_flag(
        ["p", "--ema", "--noema"], known, **kw)
    assert "(--noema and --ema=True)" in repeated_flag(["p", "--noema", "--ema=True"], known, **kw)
    for fine in (["p", "--prompt=a", "--prompt", "b"],  # a multi flag
                 ["p", "--noema", "--noema", "--ema=false"],  # the same value
                 ["p", "--workdir=a", "--workdir", "a"],
                 ["p", "--workdir=a", "--", "--workdir=b"],  # after --: not flags
                 ["p", "--bogus=1", "--bogus=2"],  # unknown: absl reports it
                 ["p", "--seed", "--workdir=a", "--workdir=b"]):  # --seed's value is "--workdir=a"
        assert repeated_flag(fine, known, **kw) is None, fine


def test_respell_argv_refuses_a_repeated_flag_in_any_spelling():
    """``_cli.respell_argv`` (what every absl CLI passes to app.run): a config override in both
    spellings (``--config.training.n-iters`` is ``--config.training.n_iters``) or a flag twice
    with different values exits with one line; the hyphen spelling of an override parses."""
    from absl import flags

    import _cli
    from score_jax.config.flags import define_config_flag

    cfg = os.path.join(ROOT, "configs", "default_digits.py")

    def cli(*args):
        argv = ["train.py", *args]
        fv = flags.FlagValues()
        define_config_flag("config", cfg, flag_values=fv, argv=argv)
        flags.DEFINE_string("workdir", None, "w", flag_values=fv)
        flags.DEFINE_multi_string("prompt", None, "p", flag_values=fv)
        out = _cli.respell_argv(argv, fv)
        fv(out)
        return fv

    assert cli("--config.training.n-iters=5").config.training.n_iters == 5
    assert cli("--prompt=a", "--prompt=b", "--workdir=w", "--workdir", "w").prompt == ["a", "b"]
    with pytest.raises(SystemExit, match=r"^error: --config\.training\.n_iters is given twice with "
                                         r"different values \(--config\.training\.n_iters=5 and "
                                         r"--config\.training\.n_iters=7\); give it once$"):
        cli("--config.training.n_iters=5", "--config.training.n-iters=7")
    with pytest.raises(SystemExit, match=r"^error: --workdir is given twice with different values "
                                         r"\(--workdir=a and --workdir b\)"):
        cli("--workdir=a", "--workdir", "b")
    # with an explicit --config=FILE the override flags are defined only while absl parses: the
    # repeat is still refused (a fresh user's report: it trained the last value)
    for repeat in (("--config.training.n_iters=7", "--config.training.n_iters=5"),
                   ("--config.training.n-iters=7", "--config.training.n_iters=5")):
        with pytest.raises(SystemExit, match=r"^error: --config\.training\.n_iters is given twice "
                                             r"with different values \(--config\.training\.n_iters=7 "
                                             r"and --config\.training\.n_iters=5\)"):
            cli(f"--config={cfg}", *repeat)
    assert cli(f"--config={cfg}", "--config.training.n_iters=7").config.training.n_iters == 7


def test_argparse_subcommands_refuse_a_repeated_option(capsys):
    """The package's argparse CLIs (`score_jax.cli_args.ArgumentParser`: convert, stats, score,
    records) refuse a single-valued option given twice with different values, in either
    spelling; the same value twice and ``append`` options pass."""
    from score_jax.cli_args import ArgumentParser

    ap = ArgumentParser(prog="score")
    ap.add_argument("--ref_stats")
    ap.add_argument("--max-images", type=int)
    ap.add_argument("--save_features", action="store_true")
    ap.add_argument("--image", action="append")
    args = ap.parse_args(["--ref_stats=a", "--ref-stats", "a", "--image=x", "--image=y",
                          "--save_features", "--save-features"])
    assert (args.ref_stats, args.image, args.save_features) == ("a", ["x", "y"], True)
    with pytest.raises(SystemExit) as e:
        ap.parse_args(["--max-images=3", "--ref_stats=a", "--max_images", "4"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "score: error: --max-images is given twice with different values (--max-images=3 and "
        "--max-images 4); give it once")
