"""Process-wide setup shared by the entry points train.py, sample.py and evaluate.py (library
code never flips jax.config or installs handlers; the CLIs do, here)."""
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


def respell_argv(argv=None, flag_values=None):
    """``argv`` (default ``sys.argv``) with the other spelling of a defined flag rewritten to
    the defined one (``--ref-stats`` -> ``--ref_stats``, ``--no-ema`` -> ``--noema``;
    `score_jax.cli_args.respell`): every CLI accepts both spellings; the documented one has
    underscores. Pass the result to ``app.run(main, argv=...)``."""
    from absl import flags

    from score_jax.cli_args import respell

    flag_values = flags.FLAGS if flag_values is None else flag_values
    argv = sys.argv if argv is None else argv
    names = list(flag_values)
    booleans = [n for n in names if isinstance(flag_values[n], flags.BooleanFlag)]
    return respell(argv, names, negatable=booleans)


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
