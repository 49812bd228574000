"""Few-step solvers x time grids at 5-20 NFE on exact-score benchmarks (issue #15).

    python bench/bench_few_step.py                    # all problems, all solvers and grids
    python bench/bench_few_step.py --problems narrow  # one problem (narrow, ring, mix3072)
    python bench/bench_few_step.py --plot-only        # redraw the plot from the CSV

Solvers: ddim (eta 0), dpm_solver (DPM-Solver++ multistep, orders 2 and 3), unipc (bh2, orders 2
and 3), heun (EDM; NFE = 2 n - 1, so the nearest odd NFE <= target), each on every time grid of
``sampling.fast.SCHEDULES`` (logSNR, time_uniform, time_quadratic, edm rho = 7), all with the final
Tweedie denoising step (counted in the NFE), VP SDE (beta 0.1-20), eps = 1e-3. Reference rows:
PC (reverse diffusion + Langevin, snr 0.16) at 1000 steps (2000 NFE) and the adaptive ODE
(tsit5, rtol = atol = 1e-5).

Problems (exact scores of Gaussian mixtures, ``toy``; only the solver is measured):
- narrow: N(0, 0.05^2 I) in 256-d, 2000 samples. The exact PF-ODE sample followed by the final
  Tweedie step has std ratio sd / sqrt(sd^2 + sigma_eps^2) = 0.9806 (sigma_eps = s/a at eps);
  "err" is |std ratio - that|.
- ring: 2-D ring of 8 modes (radius 2, std 0.1, weights 1..8), 10,000 samples.
- mix3072: 3072-D (32x32x3) mixture of 4 modes (std 0.1), 256 samples.
Metrics: ``bench_samplers.mixture_metrics`` (dlogp/dim, std ratio, mode err, SW2/floor).

Writes a markdown table to stdout, bench/few_step.csv and bench/few_step_quality_vs_nfe.png.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_samplers import mixture_metrics, read_rows, write_rows  # noqa: E402

from score_jax import sampling  # noqa: E402
from score_jax.sampling.fast import SCHEDULES  # noqa: E402
from score_jax.sampling.unipc import unipc_sample  # noqa: E402
from score_jax.sde import VPSDE  # noqa: E402
from score_jax.toy import gaussian, image_mixture, ring_mixture  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "few_step.csv")
NFES = (5, 8, 10, 15, 20)
EPS = 1e-3

SOLVERS = [  # (family, method, options)
    ("ddim", "ddim", {}),
    ("dpm_solver2", "dpm_solver", {"order": 2}),
    ("dpm_solver3", "dpm_solver", {"order": 3}),
    ("unipc2", "unipc", {"order": 2}),
    ("unipc3", "unipc", {"order": 3}),
    ("heun", "heun", {}),
]
# Variants measured on the logSNR grid (``--families``): B(h) = h, and no lower-order final steps.
EXTRA_SOLVERS = [
    ("unipc2_bh1", "unipc", {"order": 2, "variant": "bh1"}),
    ("unipc3_bh1", "unipc", {"order": 3, "variant": "bh1"}),
    ("unipc2_nolof", "unipc", {"order": 2, "lower_order_final": False}),
    ("unipc3_nolof", "unipc", {"order": 3, "lower_order_final": False}),
    ("unipc2_bh1_nolof", "unipc", {"order": 2, "variant": "bh1", "lower_order_final": False}),
    ("dpm_solver2_nolof", "dpm_solver", {"order": 2, "lower_order_final": False}),
    ("dpm_solver3_nolof", "dpm_solver", {"order": 3, "lower_order_final": False}),
]


def problems(names):
    out = {
        "narrow": ("narrow Gaussian 256-D (sd 0.05)", gaussian(jnp.zeros((256,)), 0.05), 2000),
        "ring": ("2-D ring (8 modes)", ring_mixture(8, radius=2.0, std=0.1), 10000),
        "mix3072": ("3072-D mixture (4 modes)",
                    image_mixture(jax.random.key(0), 4, (32, 32, 3), std=0.1), 256),
    }
    return [(k,) + out[k] for k in names]


_UNIPC = {}


def draw(sde, score_fn, shape, method, **opts):
    """(samples, nfe) by ``sampling.sample``; UniPC through its own jit until it is registered in
    ``sampling.METHODS``."""
    if method != "unipc":
        return sampling.sample(jax.random.key(1), sde, score_fn, shape, method, **opts)
    key = (shape, tuple(sorted(opts.items())))
    if key not in _UNIPC:
        def run(k, sde, score_fn):
            k0, k1 = jax.random.split(k)
            x = sde.prior_sampling(k0, shape)
            return unipc_sample(k1, sde, score_fn, x, **opts)
        _UNIPC[key] = jax.jit(run)
    return _UNIPC[key](jax.random.key(1), sde, score_fn)


def exact_std_ratio(sde, sd, eps):
    a, s = sde.marginal_coeffs(jnp.asarray(eps))
    sig = float(s / a)
    return sd / math.sqrt(sd**2 + sig**2)


def settings(nfes, grids, families=None):
    out = [("pc", "pc rd+langevin N=1000", "pc", None, dict(num_steps=1000)),
           ("ode", "ode tsit5 tol=1e-5", "ode", None, dict(rtol=1e-5, atol=1e-5))]
    solvers = SOLVERS + EXTRA_SOLVERS
    if families is None:
        solvers = SOLVERS
    else:
        out = [o for o in out if o[0] in families]
        solvers = [sv for sv in solvers if sv[0] in families]
    for fam, method, opts in solvers:
        for grid in grids:
            for nfe in nfes:
                n = (nfe + 1) // 2 if method == "heun" else nfe
                out.append((fam, f"{fam} {grid} NFE~{nfe}", method, grid,
                            dict(opts, num_steps=n, schedule=grid, eps=EPS)))
    return out


def run(names, nfes, grids, families=None):
    sde = VPSDE()
    rows = []
    for pkey, _pname, m, n in problems(names):
        shape = (n,) + m.event_shape
        target = exact_std_ratio(sde, float(m.stds[0]), EPS) if pkey == "narrow" else 1.0
        for family, label, method, grid, opts in settings(nfes, grids, families):
            t0 = time.perf_counter()
            x, nfe = draw(sde, m.score_fn(sde), shape, method, **opts)
            x = jax.block_until_ready(x)
            dt = time.perf_counter() - t0
            met = mixture_metrics(jax.random.key(2), m, x)
            rows.append(dict(problem=pkey, family=family, grid=grid or "-", sampler=label,
                             nfe=int(nfe), err=abs(met["std_ratio"] - target), wall_s=dt, **met))
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r):
    return (f"| {r['problem']} | {r['sampler']} | {r['nfe']} | {r['dlogp']:+.4f} | "
            f"{r['std_ratio']:.3f} | {r['err']:.3f} | {r['mode_err']:.3f} | {r['sw2_ratio']:.2f} | "
            f"{r['wall_s']:.1f} |")


KEYS = ["problem", "family", "grid", "sampler", "nfe", "dlogp", "std_ratio", "err", "mode_err",
        "sw2_ratio", "wall_s"]


def write_csv(rows):
    write_rows(CSV, KEYS, rows)


def read_csv():
    return read_rows(CSV, ("nfe",), ("dlogp", "std_ratio", "err", "mode_err", "sw2_ratio",
                                     "wall_s"))


def png_path():
    """The plot beside the CSV: bench/few_step_quality_vs_nfe.png for the default CSV (so a run
    with ``--csv`` elsewhere never overwrites the repository's plot)."""
    return os.path.splitext(CSV)[0] + "_quality_vs_nfe.png"


def best_grid(rows, problem, family):
    """The grid with the smallest mean |dlogp| + err over the NFEs of ``family`` on ``problem``."""
    score = {}
    for r in rows:
        if r["problem"] == problem and r["family"] == family and math.isfinite(r["err"]):
            score.setdefault(r["grid"], []).append(abs(r["dlogp"]) + r["err"])
    return min(score, key=lambda g: sum(score[g]) / len(score[g])) if score else None


def plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    probs = list(dict.fromkeys(r["problem"] for r in rows))
    colors = {"ddim": "tab:blue", "dpm_solver2": "tab:orange", "dpm_solver3": "tab:red",
              "unipc2": "tab:cyan", "unipc3": "tab:brown", "heun": "tab:green",
              "unipc2_nolof": "tab:purple", "unipc2_bh1": "tab:pink"}
    styles = {"logSNR": "-", "time_uniform": ":", "time_quadratic": "--", "edm": "-."}
    fig, axes = plt.subplots(1, len(probs), figsize=(6.5 * len(probs), 5), squeeze=False)
    for j, p in enumerate(probs):
        ax = axes[0, j]
        metric = "err" if p == "narrow" else "dlogp"
        for fam, c in colors.items():
            grid = best_grid(rows, p, fam)
            for g, ls in styles.items():
                pts = sorted((r["nfe"], max(abs(r[metric]), 1e-4)) for r in rows
                             if r["problem"] == p and r["family"] == fam and r["grid"] == g
                             and math.isfinite(r[metric]))
                if not pts or (g != grid and g != "logSNR"):
                    continue
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, ls, marker="o", ms=3, color=c, label=f"{fam} {g}")
        for fam, ls in (("pc", "--"), ("ode", ":")):
            ref = [abs(r[metric]) for r in rows if r["problem"] == p and r["family"] == fam]
            if ref:
                ax.axhline(max(ref[0], 1e-4), color="black", lw=0.8, ls=ls, label=f"{fam} level")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("NFE")
        ax.set_ylabel("|std ratio - exact|" if p == "narrow" else "|dlogp| per dim")
        ax.set_title(f"{p}, VP, exact scores (logSNR + each solver's best grid)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(png_path(), dpi=110)
    print(f"wrote {png_path()}")


def main():
    global CSV
    ap = argparse.ArgumentParser()
    ap.add_argument("--problems", default="narrow,ring,mix3072")
    ap.add_argument("--nfes", default=",".join(map(str, NFES)))
    ap.add_argument("--grids", default=",".join(SCHEDULES))
    ap.add_argument("--families", default=None,
                    help="comma-separated solver families (default: the main SOLVERS + pc, ode)")
    ap.add_argument("--csv", default=None, help="output CSV (default bench/few_step.csv)")
    ap.add_argument("--plot-only", action="store_true")
    ap.add_argument("--append", action="store_true", help="add the rows to an existing CSV")
    args = ap.parse_args()
    CSV = args.csv or CSV
    if args.plot_only:
        plot(read_csv())
        return
    print(f"# bench_few_step on {platform.processor() or platform.machine()}, {os.cpu_count()} "
          f"cores, jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}")
    print("| problem | sampler | NFE | dlogp/dim | std ratio | err | mode err | SW2/floor | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    families = None if args.families is None else args.families.split(",")
    rows = run(args.problems.split(","), [int(v) for v in args.nfes.split(",")],
               args.grids.split(","), families)
    if args.append and os.path.exists(CSV):
        rows = read_csv() + rows
    write_csv(rows)
    plot(rows)


if __name__ == "__main__":
    main()
