"""Sampler quality vs NFE on Gaussian mixtures with exact scores; SDE-solver overhead; likelihood error.

    python bench/bench_samplers.py            # full run (2-D and 3072-D, every sampler)
    python bench/bench_samplers.py --quick    # fewer settings
    python bench/bench_samplers.py --smoke    # tiny sizes, one setting per family: runs in seconds

Three parts, each printing a markdown table:
1. Quality vs NFE: for each SDE and sampler, metrics of samples from a mixture with known density:
   - dlogp: mean log p_0(samples) - mean log p_0(true samples), per dimension (0 is ideal; negative
     means samples fall in low-density places, e.g. noisy);
   - std ratio: within-component RMS deviation of samples / true component std (1 is ideal);
   - mode err: max |assigned fraction - weight| over components (0 is ideal);
   - SW2 / floor: sliced Wasserstein-2 to fresh true samples divided by that between two true sample
     sets of the same size (about 1 is as good as the sample size can tell).
2. Wall time of method="sde" (diffrax, UnsafeBrownianPath) vs a minimal hand-written lax.scan
   Euler-Maruyama loop with the same steps, same score, same shapes (ratio; target <= 1.3).
3. Likelihood: error in bits/dim of the probability-flow log-likelihood on a 3072-D Gaussian vs the
   exact log-density, NFE and wall time.
Metric helpers (``mixture_metrics``, ``sliced_w2``) are importable by other benchmarks.
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

from score_jax import likelihood, sampling  # noqa: E402
from score_jax.sde import VESDE, VPSDE, batch_mul, subVPSDE  # noqa: E402
from score_jax.toy import gaussian, image_mixture, ring_mixture  # noqa: E402


def sliced_w2(key, x, y, n_proj=256):
    """Sliced Wasserstein-2 between equal-size sample sets: sqrt(mean over random directions of the
    1-D W2^2 between sorted projections)."""
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    d = jax.random.normal(key, (x.shape[1], n_proj), x.dtype)
    d = d / jnp.linalg.norm(d, axis=0, keepdims=True)
    px, py = jnp.sort(x @ d, axis=0), jnp.sort(y @ d, axis=0)
    return float(jnp.sqrt(jnp.mean((px - py) ** 2)))


def mixture_metrics(key, m, x):
    """Quality of samples x from mixture m (see module docstring)."""
    n = x.shape[0]
    k1, k2, k3, k4 = jax.random.split(key, 4)
    ref, _ = m.sample(k1, n, x.dtype)
    ref2, _ = m.sample(k2, n, x.dtype)
    D = m.dim
    finite = bool(jnp.all(jnp.isfinite(x)))
    if not finite:
        return dict(dlogp=float("nan"), std_ratio=float("nan"), mode_err=float("nan"), sw2_ratio=float("nan"))
    dlogp = float(jnp.mean(m.log_prob(x)) - jnp.mean(m.log_prob(ref))) / D
    comp = jnp.argmax(m.responsibilities(x), -1)
    dev = (x - m.means[comp]).reshape(n, -1)
    std_ratio = float(jnp.sqrt(jnp.mean(dev**2 / (m.stds[comp][:, None] ** 2))))
    frac = jnp.bincount(comp, length=m.weights.shape[0]) / n
    mode_err = float(jnp.max(jnp.abs(frac - m.weights)))
    sw = sliced_w2(k3, x, ref)
    floor = sliced_w2(k4, ref2, ref)
    return dict(dlogp=dlogp, std_ratio=std_ratio, mode_err=mode_err, sw2_ratio=sw / floor)


def write_rows(path, keys, rows):
    """Write ``rows`` (dicts) to the CSV ``path`` with the columns ``keys``."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: r[k] for k in keys})


def read_rows(path, int_keys=(), float_keys=()):
    """The rows of the CSV ``path`` as dicts, with ``int_keys`` / ``float_keys`` converted."""
    import csv

    with open(path) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in int_keys:
            r[k] = int(r[k])
        for k in float_keys:
            r[k] = float(r[k])
    return rows


def _timed(fn, *args):
    out = fn(*args)
    jax.block_until_ready(out)
    t0 = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t0


def sampler_settings(quick, smoke=False):
    if smoke:  # VP's discrete chain needs N > beta_max = 20
        return [("pc rd+langevin N=24", "pc", dict(predictor="reverse_diffusion",
                                                   corrector="langevin", num_steps=24)),
                ("ode tsit5 tol=1e-2", "ode", dict(rtol=1e-2, atol=1e-2)),
                ("sde euler N=4", "sde", dict(num_steps=4))]
    steps = [100, 1000] if quick else [100, 250, 1000]
    out = []
    for n in steps:
        out.append((f"pc rd+langevin N={n}", "pc", dict(predictor="reverse_diffusion", corrector="langevin", num_steps=n)))
    for n in steps:
        out.append((f"pc reverse_diffusion N={n}", "pc", dict(predictor="reverse_diffusion", corrector="none", num_steps=n)))
    if not quick:
        out.append(("pc ancestral N=1000", "pc", dict(predictor="ancestral_sampling", corrector="none", num_steps=1000)))
        out.append(("pc euler_maruyama N=1000", "pc", dict(predictor="euler_maruyama", corrector="none", num_steps=1000)))
    for tol in ([1e-3, 1e-5] if not quick else [1e-5]):
        out.append((f"ode tsit5 tol={tol:g}", "ode", dict(rtol=tol, atol=tol)))
    for n in ([100, 1000] if not quick else [100]):
        out.append((f"sde euler N={n}", "sde", dict(num_steps=n)))
    if not quick:
        out.append(("sde shark N=100", "sde", dict(solver="shark", num_steps=100)))
    return out


def quality_table(quick, smoke=False):
    rows = []
    problems = [("2-D ring (8 modes)", ring_mixture(8, radius=2.0, std=0.1), 64 if smoke else 10000)]
    problems.append(("3072-D image mixture (4 modes)", image_mixture(jax.random.key(0), 4, (32, 32, 3), std=0.1),
                     8 if smoke else 256 if quick else 512))
    sdes = [VPSDE()] if smoke else [VPSDE(), VESDE()] if quick else [VPSDE(), subVPSDE(), VESDE()]
    for pname, m, n in problems:
        for sde in sdes:
            for label, method, opts in sampler_settings(quick, smoke):
                key = jax.random.key(1)
                f = lambda k: sampling.sample(k, sde, m.score_fn(sde), (n,) + m.event_shape, method, **opts)
                (x, nfe), dt = _timed(f, key)
                met = mixture_metrics(jax.random.key(2), m, x)
                rows.append((pname, sde.name, label, int(nfe), met, dt))
                print(f"{pname} | {sde.name} | {label} | nfe={int(nfe)} | " +
                      " ".join(f"{k}={v:.4g}" for k, v in met.items()) + f" | {dt:.2f}s", flush=True)
    return rows


def sde_overhead(quick, smoke=False):
    """diffrax reverse-SDE sampler vs a minimal lax.scan Euler-Maruyama loop, same steps."""
    sde = VPSDE()
    m = image_mixture(jax.random.key(0), 4, (32, 32, 3), std=0.1)
    sf = m.score_fn(sde)
    B, N, eps = (2, 4, 1e-3) if smoke else (64, 100, 1e-3) if quick else (256, 1000, 1e-3)
    shape = (B, 32, 32, 3)

    def scan_em(key):
        kp, kr = jax.random.split(key)
        x = sde.prior_sampling(kp, shape)
        dt = (sde.T - eps) / N

        def body(x, i):
            t = jnp.full((B,), sde.T - i * dt)
            f, g = sde.sde(x, t)
            drift = f - batch_mul(g**2, sf(x, t))
            z = jax.random.normal(jax.random.fold_in(kr, i), shape)
            return x - drift * dt + batch_mul(g * math.sqrt(dt), z), None

        x, _ = jax.lax.scan(body, x, jnp.arange(N))
        return x

    scan_fn = jax.jit(scan_em)
    dfx_fn = lambda k: sampling.sample(k, sde, sf, shape, "sde", num_steps=N, eps=eps, denoise=False)[0]
    fns = {"lax.scan EM": scan_fn, "sampling.sample(method='sde')": dfx_fn}
    for fn in fns.values():
        fn(jax.random.key(0)).block_until_ready()
    res = {k: float("inf") for k in fns}
    for r in range(1 if smoke else 5):  # interleaved, min of 5: robust to load from other processes
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn(jax.random.key(r + 1)).block_until_ready()
            res[name] = min(res[name], time.perf_counter() - t0)
    print(f"SDE overhead: B={B}, D=3072, N={N}: " + ", ".join(f"{k} {v:.3f}s" for k, v in res.items()) +
          f", ratio {res['sampling.sample(method=' + chr(39) + 'sde' + chr(39) + ')'] / res['lax.scan EM']:.3f}", flush=True)
    return B, N, res


def likelihood_error(quick, smoke=False):
    """bits/dim error of the ODE likelihood on a 3072-D Gaussian vs the exact log-density."""
    rows = []
    D = 3072
    g = gaussian(jnp.linspace(-0.3, 0.3, D).reshape(32, 32, 3), 0.3)
    B = 2 if smoke else 8 if quick else 32
    x, _ = g.sample(jax.random.key(3), B)
    for sde in [VPSDE()] if smoke else [VPSDE(), subVPSDE(), VESDE()]:
        for tol in [1e-2] if smoke else [1e-5] if quick else [1e-3, 1e-5]:
            fn = jax.jit(lambda k, x: likelihood.log_likelihood(k, sde, g.score_fn(sde), x, rtol=tol, atol=tol))
            (logp, _, nfe), dt = _timed(fn, jax.random.key(0), x)
            a, s = sde.marginal_coeffs(jnp.full((B,), 1e-5))
            exact = g.log_prob_t(x, a, s)
            err = jnp.abs(logp - exact) / (D * math.log(2))
            rows.append((sde.name, tol, float(jnp.mean(err)), float(jnp.max(err)), int(nfe), dt))
            print(f"likelihood {sde.name} tol={tol:g}: mean |err| {float(jnp.mean(err)):.2e} bpd, "
                  f"max {float(jnp.max(err)):.2e}, nfe={int(nfe)}, {dt:.2f}s for {B} x 3072", flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script runs")
    ap.add_argument("--parts", default="quality,overhead,likelihood")
    args = ap.parse_args()
    parts = args.parts.split(",")
    print(f"# bench_samplers on {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"jax {jax.__version__}, backend {jax.default_backend()}, {time.strftime('%Y-%m-%d')}")
    if "quality" in parts:
        rows = quality_table(args.quick, args.smoke)
        print("\n| data | SDE | sampler | NFE | dlogp/dim | std ratio | mode err | SW2/floor | wall s |")
        print("|---|---|---|---|---|---|---|---|---|")
        for pname, sname, label, nfe, met, dt in rows:
            print(f"| {pname} | {sname} | {label} | {nfe} | {met['dlogp']:+.4f} | {met['std_ratio']:.3f} | "
                  f"{met['mode_err']:.3f} | {met['sw2_ratio']:.2f} | {dt:.2f} |")
    if "overhead" in parts:
        B, N, res = sde_overhead(args.quick, args.smoke)
        print(f"\n| SDE sampler, B={B} x 3072, N={N} | wall s | ratio |\n|---|---|---|")
        base = res["lax.scan EM"]
        for k, v in res.items():
            print(f"| {k} | {v:.3f} | {v / base:.3f} |")
    if "likelihood" in parts:
        rows = likelihood_error(args.quick, args.smoke)
        print("\n| SDE | rtol=atol | mean abs err (bpd) | max abs err (bpd) | NFE | wall s |\n|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r[0]} | {r[1]:g} | {r[2]:.2e} | {r[3]:.2e} | {r[4]} | {r[5]:.2f} |")


if __name__ == "__main__":
    main()
