"""Discrete DDPM noise tables and diffusers' inference timestep spacings (numpy only).

Tables of alphabar_k = prod_{j <= k} (1 - beta_j), k = 0 .. N-1 (``alphas_cumprod``), as diffusers'
schedulers build them (``scheduling_ddim.py`` ``__init__``, ``betas_for_alpha_bar``):

- ``"linear"``:            beta = linspace(beta_start, beta_end, N)             (DDPM, Ho et al. 2020)
- ``"scaled_linear"``:     beta = linspace(sqrt(beta_start), sqrt(beta_end), N)^2 (Stable Diffusion:
                           0.00085, 0.012)
- ``"squaredcos_cap_v2"``: beta_k = min(1 - f((k+1)/N) / f(k/N), 0.999),
                           f(u) = cos((u + 0.008) / 1.008 pi / 2)^2      (Nichol & Dhariwal 2021 eq. 17)

computed here in float64 (diffusers computes in float32: the tables agree to ~1e-7 relative).

Inference timesteps (``timesteps(family, spacing, n, N, steps_offset)``, decreasing discrete
labels the network sees), per scheduler family as diffusers 0.3x sets them (``set_timesteps``;
Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed", Table 2):

==========  =====================================  =========================================
spacing     "ddim" / "euler" (DDIMScheduler,         "dpm" (DPMSolverMultistepScheduler,
            EulerDiscreteScheduler)                  UniPCMultistepScheduler)
==========  =====================================  =========================================
leading     arange(n) (N // n) + steps_offset       arange(n + 1) (N // (n + 1)), first n of the
                                                    reversed list, + steps_offset
trailing    round(arange(N, 0, -N / n)) - 1         the same
linspace    round(linspace(0, N-1, n)) (ddim);      round(linspace(0, N-1, n + 1)), first n of
            linspace(0, N-1, n) in float32,         the reversed list
            unrounded (euler)
==========  =====================================  =========================================

DDIM's step target is ``t - N // n`` whatever the spacing (``DDIMScheduler.step``:
``prev_timestep = timestep - num_train_timesteps // num_inference_steps``), below 0 the
"final alpha" (1 with ``set_alpha_to_one``, else alphabar_0): `ddim_targets`. With trailing /
linspace spacing that target is not the next evaluated timestep; the package's DDIM reproduces
this convention on these spacings.
"""
from __future__ import annotations

import math

import numpy as np

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
SPACINGS = ("leading", "trailing", "linspace")
FAMILIES = ("ddim", "euler", "dpm")


def _check(label: str, v, valid) -> None:
    if v not in valid:
        raise ValueError(f"Unknown {label} {v!r}; valid choices: {list(valid)}")


def alphas_cumprod(beta_schedule: str = "scaled_linear", num_train_timesteps: int = 1000,
                   beta_start: float = 0.00085, beta_end: float = 0.012) -> np.ndarray:
    """alphabar_k, k = 0 .. N-1, float64 (N,), of a diffusers ``beta_schedule`` (module docstring).

    Raises:
      ValueError: an unknown beta_schedule (naming the valid ones) or N < 2.
    """
    _check("beta_schedule", beta_schedule, BETA_SCHEDULES)
    n = num_train_timesteps
    if not isinstance(n, int) or n < 2:
        raise ValueError(f"num_train_timesteps must be an int >= 2, got {n!r}")
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, n, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(beta_start ** 0.5, beta_end ** 0.5, n, dtype=np.float64) ** 2
    else:
        def f(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        betas = np.array([min(1 - f((i + 1) / n) / f(i / n), 0.999) for i in range(n)])
    return np.cumprod(1.0 - betas)


def timesteps(family: str, spacing: str, num_steps: int, num_train_timesteps: int = 1000,
              steps_offset: int = 0) -> np.ndarray:
    """The ``num_steps`` decreasing discrete timesteps (float64) of a diffusers scheduler family
    (``"ddim"``, ``"euler"``, ``"dpm"`` for DPM-Solver++ and UniPC) and ``spacing`` (table in the
    module docstring).

    Raises:
      ValueError: unknown family / spacing, num_steps outside 1..num_train_timesteps.
    """
    _check("scheduler family", family, FAMILIES)
    _check("timestep spacing", spacing, SPACINGS)
    n, N = num_steps, num_train_timesteps
    if not isinstance(n, int) or not 1 <= n <= N:
        raise ValueError(f"num_steps must be an int in 1..{N} (num_train_timesteps), got {n!r}")
    if spacing == "trailing":
        return np.round(np.arange(N, 0, -N / n)).astype(np.float64) - 1
    if family in ("ddim", "euler"):
        if spacing == "leading":
            return (np.arange(n) * (N // n)).round()[::-1].astype(np.float64) + steps_offset
        if family == "ddim":
            return np.linspace(0, N - 1, n).round()[::-1].astype(np.float64)
        return np.linspace(0, N - 1, n, dtype=np.float32)[::-1].astype(np.float64)
    if spacing == "leading":
        return (np.arange(n + 1) * (N // (n + 1))).round()[::-1][:-1].astype(np.float64) + steps_offset
    return np.linspace(0, N - 1, n + 1).round()[::-1][:-1].astype(np.float64)


def ddim_targets(ts: np.ndarray, num_train_timesteps: int) -> np.ndarray:
    """DDIM's step targets ``t - N // n`` (n = len(ts)); negative values mean "the final alpha"
    (`timesteps` docstring)."""
    return np.asarray(ts, np.float64) - num_train_timesteps // len(ts)


__all__ = ["BETA_SCHEDULES", "SPACINGS", "FAMILIES", "alphas_cumprod", "timesteps", "ddim_targets"]
