"""The range rules of the samplers' options: one home, used by ``sampling.validate_options`` (before
anything is traced) and by each sampler's own check (a sampler called directly fails the same way).

Rules are keyed by option name, so a new sampler that reuses a name (``eta``, ``rho``, ``order``,
``num_steps`` ...) gets its check for free. Name-valued options (predictor, solver, schedule ...)
are checked against the family dict of the module that defines them (``check_choice``).

The minimum step count is one rule for every sampler (``min_num_steps``): the time grid from T to
eps needs at least one step, and with ``denoise`` the final Tweedie jump from eps to 0 is one of
the ``num_steps`` steps, so

    num_steps >= 2 with denoise,   num_steps >= 1 without.

A sampler without a ``denoise`` option counts as ``denoise=False``: the consistency sampler, each of
whose evaluations already returns the denoised x0 (``num_steps >= 1``).

(``pc`` accepted 1 with denoise before: its grid ``linspace(T, eps, 1)`` is [T], and the jump
"from eps" was applied to the untouched prior sample.)

Layer: imports ``sampling.common`` only (the family dicts are passed in by their modules).
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

from score_jax.sampling.common import check_eps


def _real(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v) -> bool:
    return _real(v) and math.isfinite(v)


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# name -> (predicate, the valid range in words). ``num_steps`` and ``eps`` have their own rules.
RANGES: dict[str, tuple[Callable[[object], bool], str]] = {
    "rtol": (lambda v: _finite(v) and v > 0, "> 0 and finite"),
    "sigma_mid": (lambda v: _finite(v) and v > 0, "> 0 and finite"),
    "atol": (lambda v: _finite(v) and v > 0, "> 0 and finite"),
    "n_steps": (lambda v: _int(v) and v >= 1, "an int >= 1"),
    "order": (lambda v: _int(v) and v in (1, 2, 3), "1, 2 or 3"),
    "snr": (lambda v: _finite(v) and v >= 0, ">= 0 and finite"),
    "eta": (lambda v: _finite(v) and v >= 0, ">= 0 and finite"),
    "s_churn": (lambda v: _finite(v) and v >= 0, ">= 0 and finite"),
    "s_noise": (lambda v: _finite(v) and v >= 0, ">= 0 and finite"),
    "s_tmin": (lambda v: _finite(v) and v >= 0, ">= 0 and finite"),
    "s_tmax": (lambda v: _real(v) and not math.isnan(v) and v >= 0, ">= 0 (inf allowed)"),
    "rho": (lambda v: _finite(v) and v > 0, "> 0 and finite"),
}


def _where(method: str | None) -> str:
    return f" (option of sampling method {method!r})" if method else ""


def min_num_steps(denoise: bool) -> int:
    """The fewest ``num_steps`` of every sampler: 1 grid step, + 1 for the final jump (``denoise``)."""
    return 2 if denoise else 1


def check_num_steps(num_steps, denoise: bool, method: str | None = None) -> None:
    """ValueError unless ``num_steps`` is an int >= ``min_num_steps(denoise)``."""
    lo = min_num_steps(denoise)
    if not (_int(num_steps) and num_steps >= lo):
        raise ValueError(f"num_steps must be an int >= {lo} (denoise={denoise}: with denoise the "
                         f"last step is the jump from eps to t = 0); got {num_steps!r}{_where(method)}")


def check_range(name: str, v, method: str | None = None) -> None:
    """ValueError naming ``name``, its valid range and ``v`` unless ``v`` satisfies ``RANGES[name]``
    (names without a rule pass)."""
    rule = RANGES.get(name)
    if rule is not None and not rule[0](v):
        raise ValueError(f"{name} must be {rule[1]}; got {v!r}{_where(method)}")


def check_choice(label: str, v, valid: Iterable[str]) -> None:
    """ValueError naming ``v`` and the valid choices unless ``v`` is one of ``valid``."""
    valid = list(valid)
    if v not in valid:
        raise ValueError(f"Unknown {label} {v!r}; valid choices: {valid}")


def check_options(method: str | None, sde=None, *, denoise: bool | None = None, **options) -> None:
    """Check every option by its name's rule: ``num_steps`` (with ``denoise``), ``eps`` (against
    ``sde.T``), and ``RANGES``. None values mean "the default" and pass."""
    for name, v in options.items():
        if v is None:
            continue
        if name == "num_steps":
            check_num_steps(v, bool(denoise), method)
        elif name == "eps":
            if sde is not None:
                check_eps(sde, v)
        else:
            check_range(name, v, method)


__all__ = ["RANGES", "min_num_steps", "check_num_steps", "check_range", "check_choice", "check_options"]
