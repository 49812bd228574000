"""Process-wide setup shared by the entry points train.py, sample.py, evaluate.py and txt2img.py
(library code never flips jax.config or installs handlers; the CLIs do, here): `setup_process`,
and `respell_argv`, the argv every CLI parses (both flag spellings, ``--help`` exiting 0, a
repeated flag refused)."""
import logging
import os
import sys


def setup_process(compilation_cache):
    """The measured XLA CPU flags (`score_jax.xla_flags`), logging, and the persistent XLA compilation cache in
    ``parallel.compilation_cache_dir(compilation_cache)`` (None: off). Every compiled function
    is cached (no minimum compile time or size), so a resumed run, sample.py and evaluate.py
    reuse the train step / sampler compiled by an earlier process. Returns the folder."""
    from score_jax.xla_flags import apply_default_cpu_flags

    apply_default_cpu_flags()  # before the first computation (XLA reads XLA_FLAGS once)
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("score_jax").setLevel(logging.INFO)  # resume / first-step / results lines
    import jax

    from score_jax import parallel

    cache = parallel.compilation_cache_dir(compilation_cache)
    if cache is not None:
        os.makedirs(cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return cache


HELP_FLAGS = ("help", "helpshort", "helpfull", "helpxml", "?")


def _exits_zero(cls):
    """absl's help flag class ``cls`` with exit status 0 after printing the help (absl's own
    exit with 1, as if the command had failed)."""

    class ExitZero(cls):
        def parse(self, arg):
            try:
                super().parse(arg)
            except SystemExit as e:
                if e.code == 1:  # absl's _exit_before_main(1) after the help was printed
                    raise SystemExit(0) from None
                raise

    ExitZero.__name__ = ExitZero.__qualname__ = cls.__name__
    ExitZero.exits_zero = True
    return ExitZero


def install_help_flags():
    """Replace absl's ``--help`` (``-?``), ``--helpshort``, ``--helpfull`` and ``--helpxml`` in
    ``absl.flags.FLAGS`` by the same flags exiting with status 0 after printing the help, as
    argparse and every other CLI do (absl's exit 1 reads as a failure in scripts and CI).
    Idempotent; ``app.run`` keeps them (absl defines its help flags once)."""
    from absl import app, flags

    app.define_help_flags()
    for cls in (app.HelpFlag, app.HelpshortFlag, app.HelpfullFlag, app.HelpXMLFlag):
        flag = _exits_zero(cls)()
        if getattr(flags.FLAGS[flag.name], "exits_zero", False):
            continue
        for name in (flag.name, flag.short_name):
            if name is not None and name in flags.FLAGS:
                delattr(flags.FLAGS, name)
        flags.DEFINE_flag(flag, module_name="absl.app")


def _wants_help(argv) -> bool:
    for a in argv[1:]:
        if a == "--":
            return False
        if a.startswith("-") and a.lstrip("-").split("=", 1)[0] in HELP_FLAGS:
            return True
    return False


def respell_argv(argv=None, flag_values=None):
    """``argv`` (default ``sys.argv``) as every CLI parses it; pass the result to
    ``app.run(main, argv=...)``:

    - the other spelling of a defined flag is rewritten to the defined one (``--ref-stats`` ->
      ``--ref_stats``, ``--no-ema`` -> ``--noema``, ``--config.training.n-iters`` ->
      ``--config.training.n_iters``; `score_jax.cli_args.respell`): every CLI accepts both
      spellings; the documented one has underscores;
    - ``-h`` is ``--help``, and ``--help`` / ``-h`` / ``-?`` / ``--helpshort`` / ``--helpfull`` /
      ``--helpxml`` print the help and exit with status 0 (`install_help_flags`; absl exits 1);
    - a flag given twice with different values (``--workdir=a --workdir=b``,
      ``--config.training.n_iters=5 --config.training.n-iters=7``) exits with status 1 and one
      line naming the flag and both values (`score_jax.cli_args.repeated_flag`), instead of
      absl silently keeping the last; multi flags (txt2img.py's ``--prompt``) may repeat.

    Raises:
      SystemExit: a repeated flag (``error: --NAME is given twice with different values (...)``).
    """
    from absl import flags

    from score_jax.cli_args import repeated_flag, respell

    flag_values = flags.FLAGS if flag_values is None else flag_values
    argv = sys.argv if argv is None else argv
    if flag_values is flags.FLAGS:
        install_help_flags()
    names = list(flag_values)
    booleans = [n for n in names if isinstance(flag_values[n], flags.BooleanFlag)]
    out = respell(argv, names, negatable=booleans)
    if "h" not in names and "-h" in out:
        end = out.index("--") if "--" in out else len(out)
        out = [("--help" if a == "-h" and i < end else a) for i, a in enumerate(out)]
    if not _wants_help(out):
        # With an explicit --config=FILE, ml_collections defines the --config.<key> override
        # flags only while absl parses argv: their "--name=value" forms count as known here too.
        end = out.index("--") if "--" in out else len(out)
        overrides = {a.lstrip("-").partition("=")[0] for a in out[1:end]
                     if a.startswith(("--config.", "-config.")) and "=" in a}
        bare = {a.lstrip("-") for a in out[1:end] if a.startswith(("--config.", "-config."))
                and "=" not in a}
        names = names + sorted(overrides - set(names) - bare)
        msg = repeated_flag(out, names, booleans=[n for n in names if n in flag_values
                                                  and flag_values[n].boolean],
                            repeatable=[n for n in names if n in flag_values
                                        and isinstance(flag_values[n], flags.MultiFlag)])
        if msg is not None:
            raise SystemExit(f"error: {msg}")
    return out


COMPILATION_CACHE_HELP = ("Persistent XLA compilation cache folder (default $SCORE_JAX_CACHE or "
                          "~/.cache/score_jax/xla; '' or 'none': off).")


def sampler_override(config, argv=None):
    """``--config.sampling.method=X`` on the command line switches the config's sampler: the
    tuning options the config set for its own method (e.g. the digits default's Heun ``rho`` and
    EDM ``schedule``) are dropped, with a log line, so X runs with its own defaults instead of
    failing validation or inheriting another method's grid; ``num_steps``, ``eps``, ``denoise``
    and every option given on the same command line are kept (and validated). Returns
    ``config``."""
    argv = sys.argv[1:] if argv is None else argv
    prefix = "--config.sampling."
    given = {a[len(prefix):].split("=", 1)[0] for a in argv if a.startswith(prefix)}
    if "method" not in given or config.get("sampling") is None:
        return config
    from score_jax import config as config_lib

    cleared = config_lib.set_sampler(config, config.sampling.method, keep=given,
                                     reset_tuning=True)
    if cleared:
        logging.info("--config.sampling.method=%s: dropped the config's options %s (not options "
                     "of %s)", config.sampling.method, cleared, config.sampling.method)
    return config
