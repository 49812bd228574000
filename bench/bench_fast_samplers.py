"""Fast samplers vs PC / ODE: sample quality against NFE on Gaussian mixtures with exact scores.

    python bench/bench_fast_samplers.py              # 2-D (VP, sub-VP, VE) and 3072-D (VP, VE)
    python bench/bench_fast_samplers.py --quick      # fewer settings, smaller 3072-D batch
    python bench/bench_fast_samplers.py --plot-only  # redraw bench/quality_vs_nfe.png from the CSV
    python bench/bench_fast_samplers.py --smoke --out_dir /tmp/x  # tiny sizes, CSV + PNG in /tmp/x

Every sampler gets the same exact score of the diffused mixture (``toy.GaussianMixture``), so the
numbers measure the solvers alone. Metrics (``bench/bench_samplers.py::mixture_metrics``):
dlogp/dim (mean log p_0 of samples minus that of true samples, per dimension; 0 ideal), std ratio
(within-component RMS deviation / true std; 1 ideal), mode err (max |fraction - weight|; 0 ideal),
SW2/floor (sliced Wasserstein-2 to fresh true samples over the two-sample noise floor; ~1 ideal).
Reference: the PC sampler (reverse diffusion + Langevin, snr 0.16) at 1000 steps (2000 NFE).
Flow matching rows integrate the exact CondOT velocity of the same mixture (``flow.MixtureVelocity``).

Writes a markdown table to stdout, the rows to bench/fast_samplers.csv and the plot
bench/quality_vs_nfe.png (SW2/floor and |dlogp|/dim against NFE).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import jax

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from bench_samplers import mixture_metrics, read_rows, write_rows  # noqa: E402  (shared helpers)

from score_jax import flow, sampling  # noqa: E402
from score_jax.sde import VESDE, VPSDE, subVPSDE  # noqa: E402
from score_jax.toy import image_mixture, ring_mixture  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CSV = os.path.join(HERE, "fast_samplers.csv")
PNG = os.path.join(HERE, "quality_vs_nfe.png")


def settings(quick: bool, smoke: bool = False):
    if smoke:
        return [("ddim", "ddim N=2", "ddim", dict(num_steps=2)),
                ("dpm_solver2", "dpm_solver2 N=2", "dpm_solver", dict(num_steps=2, order=2)),
                ("heun", "heun N=2", "heun", dict(num_steps=2))]
    """(family, label, method, options) for the SDE samplers."""
    out = [("pc", "pc rd+langevin N=1000", "pc", dict(num_steps=1000)),
           ("pc", "pc rd+langevin N=100", "pc", dict(num_steps=100)),
           ("ode", "ode tsit5 tol=1e-5", "ode", dict(rtol=1e-5, atol=1e-5))]
    if not quick:
        out.append(("ode", "ode tsit5 tol=1e-3", "ode", dict(rtol=1e-3, atol=1e-3)))
    for n in ([10, 20, 50] if not quick else [10, 20]):
        out.append(("ddim", f"ddim N={n}", "ddim", dict(num_steps=n)))
    for n in ([5, 10, 15, 20, 35] if not quick else [10, 20]):
        out.append(("dpm_solver2", f"dpm_solver2 N={n}", "dpm_solver", dict(num_steps=n, order=2)))
        out.append(("dpm_solver3", f"dpm_solver3 N={n}", "dpm_solver", dict(num_steps=n, order=3)))
    for n in ([5, 10, 18] if not quick else [10]):
        out.append(("heun", f"heun N={n}", "heun", dict(num_steps=n)))
    return out


def flow_settings(quick: bool, smoke: bool = False):
    if smoke:
        return [("flow heun", "flow heun N=2", dict(solver="heun", num_steps=2))]
    out = [("flow euler", f"flow euler N={n}", dict(solver="euler", num_steps=n))
           for n in ([10, 20, 50] if not quick else [20])]
    out += [("flow heun", f"flow heun N={n}", dict(solver="heun", num_steps=n))
            for n in ([5, 10, 18] if not quick else [10])]
    return out


def run(quick: bool, smoke: bool = False):
    problems = [("2-D ring (8 modes)", ring_mixture(8, radius=2.0, std=0.1), 64 if smoke else 10000,
                 [VPSDE()] if smoke else [VPSDE(), subVPSDE(), VESDE()]),
                ("3072-D image mixture (4 modes)",
                 image_mixture(jax.random.key(0), 4, (32, 32, 3), std=0.1),
                 8 if smoke else 256 if quick else 512, [VPSDE()] if smoke else [VPSDE(), VESDE()])]
    rows = []
    for pname, m, n, sdes in problems:
        shape = (n,) + m.event_shape
        for sde in sdes:
            for family, label, method, opts in settings(quick, smoke):
                t0 = time.perf_counter()
                x, nfe = sampling.sample(jax.random.key(1), sde, m.score_fn(sde), shape, method,
                                         **opts)
                x = jax.block_until_ready(x)
                dt = time.perf_counter() - t0
                met = mixture_metrics(jax.random.key(2), m, x)
                rows.append(dict(data=pname, sde=sde.name, family=family, sampler=label,
                                 nfe=int(nfe), wall_s=dt, **met))
                print(_fmt(rows[-1]), flush=True)
        path = flow.CondOTPath()
        for family, label, opts in flow_settings(quick, smoke):
            t0 = time.perf_counter()
            x, nfe = flow.flow_sample(jax.random.key(1), flow.MixtureVelocity(m, path), shape,
                                      path=path, **opts)
            x = jax.block_until_ready(x)
            dt = time.perf_counter() - t0
            met = mixture_metrics(jax.random.key(2), m, x)
            rows.append(dict(data=pname, sde="condot", family=family, sampler=label, nfe=int(nfe),
                             wall_s=dt, **met))
            print(_fmt(rows[-1]), flush=True)
    return rows


def _fmt(r):
    return (f"| {r['data']} | {r['sde']} | {r['sampler']} | {r['nfe']} | {r['dlogp']:+.4f} | "
            f"{r['std_ratio']:.3f} | {r['mode_err']:.3f} | {r['sw2_ratio']:.2f} | "
            f"{r['wall_s']:.1f} |")


def write_csv(rows):
    write_rows(CSV, ["data", "sde", "family", "sampler", "nfe", "dlogp", "std_ratio", "mode_err",
                     "sw2_ratio", "wall_s"], rows)


def read_csv():
    return read_rows(CSV, ("nfe",), ("dlogp", "std_ratio", "mode_err", "sw2_ratio", "wall_s"))


def plot(rows):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datas = list(dict.fromkeys(r["data"] for r in rows))
    fig, axes = plt.subplots(2, len(datas), figsize=(6.5 * len(datas), 8), squeeze=False)
    colors = {"ddim": "tab:blue", "dpm_solver2": "tab:orange", "dpm_solver3": "tab:red",
              "heun": "tab:green", "ode": "tab:purple", "pc": "black",
              "flow euler": "tab:gray", "flow heun": "tab:olive"}
    for j, d in enumerate(datas):
        for i, (metric, ylabel) in enumerate([("sw2_ratio", "SW2 / two-sample floor"),
                                              ("dlogp", "|dlogp| per dim")]):
            ax = axes[i, j]
            for sde, ls in (("vpsde", "-"), ("condot", ":")):
                for fam, c in colors.items():
                    pts = sorted((r["nfe"], abs(r[metric])) for r in rows
                                 if r["data"] == d and r["sde"] == sde and r["family"] == fam)
                    if not pts:
                        continue
                    xs, ys = zip(*pts, strict=True)
                    lbl = fam if sde == "vpsde" else f"{fam} (CondOT)"
                    ax.plot(xs, ys, ls, marker="o", color=c, label=lbl)
            ref = [abs(r[metric]) for r in rows if r["data"] == d and r["sde"] == "vpsde"
                   and r["sampler"] == "pc rd+langevin N=1000"]
            if ref:
                ax.axhline(ref[0], color="black", lw=0.8, ls="--", label="PC N=1000 level")
            ax.axvline(20, color="gray", lw=0.6, ls=":")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("NFE")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{d}, VP (exact scores)")
            if i == 0 and j == 0:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(PNG, dpi=110)
    print(f"wrote {PNG}")


def main():
    global CSV, PNG
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (checks the script runs); needs --out_dir")
    ap.add_argument("--out_dir", default=None,
                    help="write fast_samplers.csv and quality_vs_nfe.png here (default bench/)")
    ap.add_argument("--plot-only", action="store_true")
    args = ap.parse_args()
    if args.smoke and args.out_dir is None:
        ap.error("--smoke needs --out_dir (the repository's CSV and plot are not overwritten)")
    if args.out_dir is not None:
        os.makedirs(args.out_dir, exist_ok=True)
        CSV = os.path.join(args.out_dir, os.path.basename(CSV))
        PNG = os.path.join(args.out_dir, os.path.basename(PNG))
    if args.plot_only:
        plot(read_csv())
        return
    print(f"# bench_fast_samplers on {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{time.strftime('%Y-%m-%d')}")
    print("| data | SDE | sampler | NFE | dlogp/dim | std ratio | mode err | SW2/floor | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = run(args.quick, args.smoke)
    write_csv(rows)
    plot(rows)


if __name__ == "__main__":
    main()
