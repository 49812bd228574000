"""Where the few-step error on the 2-D ring sits: samples split by distance to the nearest mode
centre (in mode stds). Prints, per sampler, the fraction beyond 4 stds (between modes) and the
within-mode std ratio (1 ideal). Exact scores, VP (beta 0.1-20), 8 modes of std 0.1 on a circle
of radius 2 (the ring of bench_few_step.py), 10,000 samples.

    PYTHONPATH=. python bench/bench_ring_modes.py
    PYTHONPATH=. python bench/bench_ring_modes.py --smoke   # 64 samples, few steps: seconds
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from score_jax import sampling  # noqa: E402
from score_jax.sde import VPSDE  # noqa: E402
from score_jax.toy import ring_mixture  # noqa: E402

STD = 0.1
SETTINGS = [
    ("pc N=1000", "pc", dict(num_steps=1000)),
    ("unipc2 logSNR 20", "unipc", dict(num_steps=20, order=2, lower_order_final=False,
                                       schedule="logSNR", eps=1e-3)),
    ("unipc2 logSNR 40", "unipc", dict(num_steps=40, order=2, lower_order_final=False,
                                       schedule="logSNR", eps=1e-3)),
    ("dpm_solver2 edm 20", "dpm_solver", dict(num_steps=20, order=2, schedule="edm", eps=1e-3)),
]


def split(m, x):
    """Fraction of samples beyond 4 mode stds of their nearest mode, and the within-mode std
    ratio of the others (per coordinate, 1 ideal)."""
    comp = jnp.argmax(m.responsibilities(x), -1)
    d = np.asarray(jnp.linalg.norm(x - m.means[comp], axis=-1)) / STD
    inside = d < 4
    return float((~inside).mean()), float(np.sqrt((d[inside] ** 2).mean() / 2))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true",
                    help="64 samples, 24 PC steps, 4 solver steps: checks the script runs")
    args = ap.parse_args()
    n = 64 if args.smoke else 10000
    m = ring_mixture(8, radius=2.0, std=STD)
    sde = VPSDE(0.1, 20.0, 1000)
    print("| sampler | NFE | beyond 4 stds | within-mode std ratio |")
    print("|---|---|---|---|")
    for name, method, opts in SETTINGS:
        if args.smoke:  # the PC chain of the VP SDE needs N > beta_max = 20
            opts = dict(opts, num_steps=24 if method == "pc" else 4)
        x, nfe = sampling.sample(jax.random.key(1), sde, m.score_fn(sde), (n, 2), method,
                                 **opts)
        out, std = split(m, x)
        print(f"| {name} | {int(nfe)} | {100 * out:.2f}% | {std:.3f} |")


if __name__ == "__main__":
    main()
