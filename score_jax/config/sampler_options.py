"""Sampler options of a config: ``config.sampling`` -> ``(method, options)``, generically.

The options of ``config.sampling.method`` M are the keyword-only parameters of
``sampling.METHODS[M]`` (``flow.flow_sample`` for "flow"); the reference's names are aliases
(``n_steps_each`` -> ``n_steps``, ``noise_removal`` -> ``denoise``) and None values are left to
the sampler's defaults. Adding a sampler to ``sampling.METHODS`` is all the config side needs.
"""
from __future__ import annotations

import inspect
from typing import Callable

from score_jax import flow, sampling
from score_jax.config.schema import OPTION_ALIASES, base_config

FLOW_METHOD = "flow"
# config.sampling keys that are not sampler options
_SAMPLING_NON_OPTIONS = {"method", "num_samples", "batch_size", "class_label", "guidance_scale"}
_PC_SCHEMA_KEYS = {"predictor", "corrector", "snr", "n_steps_each", "noise_removal",
                   "probability_flow"}
# keyword-only parameters of a sampler that the config never sets (traced inputs, layout)
_NOT_CONFIG_OPTIONS = {"project", "inputs", "path", "x_init", "dtype", "sharding"}


def _sampler_fn(method: str) -> Callable:
    return flow.flow_sample if method == FLOW_METHOD else sampling.METHODS[method]


def method_options(method: str) -> dict[str, inspect.Parameter]:
    """The options a config may set for ``method``: the keyword-only parameters of its sampler
    (``sampling.method_options(method)``, or those of ``flow.flow_sample`` for "flow")."""
    if method != FLOW_METHOD:
        return sampling.method_options(method)
    params = inspect.signature(_sampler_fn(method)).parameters
    return {k: p for k, p in params.items()
            if p.kind == inspect.Parameter.KEYWORD_ONLY and k not in _NOT_CONFIG_OPTIONS}


def config_methods() -> list[str]:
    """The valid ``config.sampling.method`` names: every ``sampling.METHODS`` entry that needs no
    traced ``inputs`` (so not inpaint / colorize, which need data and masks), and "flow"."""
    out = []
    for name, fn in sampling.METHODS.items():
        p = inspect.signature(fn).parameters.get("inputs")
        if p is None or p.default is not inspect.Parameter.empty:
            out.append(name)
    return out + [FLOW_METHOD]


def sampling_methods() -> list[str]:
    """Alias of `config_methods` (the valid ``config.sampling.method`` names)."""
    return config_methods()


_GENERIC_SAMPLING_OPTIONS = ("num_steps", "eps", "denoise")


def _set_method_option(key: str, value, schema) -> bool:
    """Whether ``config.sampling.key = value`` is a method option someone set: a schema
    placeholder (default None) with a value, or one of pc's keys, which every config carries,
    away from its schema default. Such a key is reset by `set_sampler` and refused by
    `sampling_options_from_config` when the method does not take it (rtol / atol also set the
    likelihood's tolerances, so they are never either)."""
    return key in schema and value is not None and (
        schema[key] is None or (key in _PC_SCHEMA_KEYS and value != schema[key]))


def set_sampler(config, method: str, *, keep=(), reset_tuning: bool = False,
                **options) -> list[str]:
    """Switch ``config.sampling`` to ``method`` in place and return the keys that were reset.

    1. Every option key set for the previous method that ``method`` does not take (a schema
       placeholder with a value, or one of pc's keys away from its default:
       `_set_method_option`) goes back to its schema default.
    2. With ``reset_tuning``, the set placeholder options that ``method`` does take go back to
       None as well (a grid, an order, ... chosen for the previous method), so that ``method``
       runs with its own defaults; ``num_steps``, ``eps`` and ``denoise`` are kept.
    3. Keys in ``keep`` are never reset (e.g. given on the command line: validation then reports
       them if ``method`` does not take them).
    4. ``options`` are set last (e.g. a flow variant of a config whose Heun sampler set ``rho``).

    Raises:
      ValueError: unknown method (valid choices listed), or an option ``method`` does not take.
    """
    method = method.lower()
    valid = config_methods()
    if method not in valid:
        raise ValueError(f"config.sampling.method={method!r} unknown; valid choices: {valid}")
    accepted = method_options(method)
    bad = sorted(k for k in options if OPTION_ALIASES.get(k, k) not in accepted)
    if bad:
        raise ValueError(f"{bad} are not options of method {method!r}; its options: "
                         f"{sorted(accepted)}")
    schema = base_config().sampling
    s = config.sampling
    cleared = []
    for key in list(s.keys()):
        if key in keep or key in _SAMPLING_NON_OPTIONS or not _set_method_option(key, s[key],
                                                                                  schema):
            continue
        name = OPTION_ALIASES.get(key, key)
        if name not in accepted or (reset_tuning and schema[key] is None
                                    and name not in _GENERIC_SAMPLING_OPTIONS):
            s[key] = schema[key]
            cleared.append(key)
    s.method = method
    for key, value in options.items():
        s[key] = value
    return cleared


def sampling_options_from_config(sampling_config) -> tuple[str, dict]:
    """Map ``config.sampling`` to ``(method, options)`` for ``sampling.sample(method=...,
    **options)`` (or ``flow.flow_sample(**options)`` for "flow"): the ONE place.

    The options are the keys of ``config.sampling`` (through ``OPTION_ALIASES``) that are
    keyword-only parameters of the method's sampler; None values are left to the sampler's
    defaults. String options of pc (predictor, corrector) are lower-cased.

    Raises:
      ValueError: unknown method (valid choices listed), or a set (non-None) key that is an
        option of no sampler, or an option the chosen method does not take set to anything but
        its schema default (e.g. ``sampling.eta`` with method "pc", ``sampling.snr=0.2`` with
        method "heun"); every such key is named in one message.
    """
    s = sampling_config
    method = s.method.lower()
    valid = config_methods()
    if method not in valid:
        raise ValueError(f"config.sampling.method={s.method!r} unknown; valid choices: {valid}")
    accepted = method_options(method)
    schema = base_config().sampling
    opts, refused = {}, []
    for key, value in s.items():
        if key in _SAMPLING_NON_OPTIONS or value is None:
            continue
        name = OPTION_ALIASES.get(key, key)
        if name not in accepted:
            if _set_method_option(key, value, schema):  # it would be ignored silently
                refused.append(f"config.sampling.{key}={value!r} is not an option of method "
                               f"{method!r}")
            continue
        if isinstance(value, str) and name in ("predictor", "corrector"):
            value = value.lower()
        opts[name] = value
    if refused:  # every refused key at once, not only the first
        raise ValueError("; ".join(refused) + f"; its options: {sorted(accepted)}")
    return method, opts


