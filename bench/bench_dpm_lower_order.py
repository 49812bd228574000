"""DPM-Solver++ at <= 10 steps: how ``lower_order_final`` counts the last steps (issue 26 item 8).

    python bench/bench_dpm_lower_order.py

Conventions (``sampling.fast.dpm_solver_sample``, with the final Tweedie jump, ``denoise=True``):
- "with_jump" (diffusers' DPMSolverMultistepScheduler with final_sigmas_type="zero"): the jump to
  t = 0 is the lowered (first-order) last step, so the order of step i is min(order, K + 1 - i);
- "solver_steps" (LuChengTHU/dpm-solver with denoise_to_zero, and this package before): the last
  of the K solver steps to eps is lowered, min(order, K - i), then the jump;
- off: ``lower_order_final=False``.
Problems (exact scores, only the solver is measured; VP SDE, eps = 1e-3, logSNR grid):
- gauss64: N(0, sd^2 I) in 64-D for sd in (0.05, 0.3), 4000 samples: std ratio sample std /
  exact (the exact PF-ODE solution followed by the Tweedie jump has std sd / sqrt(sd^2 +
  sigma_eps^2)), and the RMS distance to the exact PF-ODE solution from the same x_T (followed by
  the jump) relative to its std.
- ring: bench_few_step's 2-D ring (8 modes, radius 2, std 0.1), 4000 samples: SW2 / floor and
  mode-weight error from ``bench_samplers.mixture_metrics``.
"""
from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_samplers import mixture_metrics  # noqa: E402

from score_jax import sampling  # noqa: E402
from score_jax.sde import VPSDE  # noqa: E402
from score_jax.toy import gaussian, ring_mixture  # noqa: E402

EPS = 1e-3
VARIANTS = [("with_jump", dict(lower_order_count="with_jump")),
            ("solver_steps", dict(lower_order_count="solver_steps")),
            ("off", dict(lower_order_final=False))]


def main():
    sde = VPSDE()
    print("| problem | order | NFE | " + " | ".join(v for v, _ in VARIANTS) + " |")
    print("|---|---|---|" + "---|" * len(VARIANTS))
    for sd in (0.05, 0.3):
        g = gaussian(jnp.zeros((64,)), sd)
        a, s = sde.marginal_coeffs(jnp.asarray(EPS))
        exact = sd * sd / float(jnp.sqrt(sd**2 + (s / a) ** 2))  # std of x0_hat(exact x_eps)
        # The exact PF-ODE map of Gaussian data is affine: x_eps = (std_eps / std_T) x_T, then the
        # Tweedie jump x0_hat = a sd^2 / std_eps^2 x_eps.
        x_T = sde.prior_sampling(jax.random.key(2), (4000, 64))
        a_T, s_T = sde.marginal_coeffs(jnp.asarray(sde.T))
        std_T, std_eps = jnp.sqrt(a_T**2 * sd**2 + s_T**2), jnp.sqrt(a**2 * sd**2 + s**2)
        x_exact = a * sd**2 / std_eps**2 * (std_eps / std_T) * x_T
        for order in (2, 3):
            for nfe in (5, 8, 10):
                cells = []
                for _, o in VARIANTS:
                    x, _ = sampling.sample(jax.random.key(0), sde, g.score_fn(sde), (4000, 64),
                                           "dpm_solver", x_init=x_T, num_steps=nfe, order=order,
                                           eps=EPS, **o)
                    ratio = float(jnp.std(x)) / exact
                    rel = float(jnp.sqrt(jnp.mean((x - x_exact) ** 2)) / jnp.std(x_exact))
                    cells.append(f"{ratio:.4f} (rms err {rel:.4f})")
                print(f"| gauss64 sd={sd}: std / exact (rms err) | {order} | {nfe} | " + " | ".join(cells) + " |")
    mix = ring_mixture(8, radius=2.0, std=0.1)
    for order in (2, 3):
        for nfe in (5, 8, 10):
            cells = []
            for _, o in VARIANTS:
                x, _ = sampling.sample(jax.random.key(0), sde, mix.score_fn(sde), (4000, 2),
                                       "dpm_solver", num_steps=nfe, order=order, eps=EPS, **o)
                m = mixture_metrics(jax.random.key(1), mix, x)
                cells.append(f"SW2/floor {m['sw2_ratio']:.2f}, std {m['std_ratio']:.3f}")
            print(f"| ring (8 modes) | {order} | {nfe} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
