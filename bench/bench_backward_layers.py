"""The backward pass layer by layer: ours (XLA CPU) against PyTorch at the DDPM++ shapes.

    python bench/bench_backward_layers.py [--xla_flags project|xla_default] [--repeats 15]
    python bench/bench_backward_layers.py --smoke        # tiny shapes, 2 repeats: seconds

Each layer type of the CIFAR-10 DDPM++ network (batch 8) alone, ours and PyTorch's interleaved in
one process (one call of each per round, so the machine's load hits both alike):

* ``conv3x3``: ``lax.conv_general_dilated`` (NHWC / HWIO, SAME) against
  ``torch.nn.functional.conv2d`` (NCHW) at the four resolutions (32 x 32 x 128, 16 x 16 x 256,
  8 x 8 x 256, 4 x 4 x 256 -> same channels): the forward, the input gradient alone ``dx``, the
  weight gradient alone ``dw`` (``jax.vjp`` with respect to one argument; torch
  ``aten.convolution_backward`` with that output mask) and both ``dxdw``;
* ``gn_silu``: SiLU(GroupNorm(x)) (32 groups, eps 1e-6; flax ``nn.GroupNorm`` / torch
  ``nn.GroupNorm``), forward and forward + backward;
* ``attention``: one-head spatial self-attention at 16 x 16 x 256
  (``score_jax.models.utils.dot_product_attention``, i.e. ``jax.nn.dot_product_attention``'s
  XLA path, against softmax(q k^T / sqrt(C)) v in torch), forward and forward + backward.

``--xla_flags project`` (default) applies `score_jax.xla_flags.apply_default_cpu_flags` first
(what the CLIs run: XLA's Eigen convolutions instead of YNNPACK's); ``xla_default`` leaves XLA's
defaults (YNNPACK convolutions). XLA reads the flags once per process: compare the two with two
runs, each against the PyTorch timings of its own run. torch: ``set_num_threads(2)``,
``OMP_WAIT_POLICY=PASSIVE`` (see bench_vs_torch.py).

Prints one JSON line per row and a table: median ms ours / PyTorch and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# (batch, height, width, channels) of the DDPM++ 3x3 convolutions (ch_mult (1, 2, 2, 2), nf 128)
CONV_SHAPES = ((8, 32, 32, 128), (8, 16, 16, 256), (8, 8, 8, 256), (8, 4, 4, 256))
GN_SHAPES = ((8, 32, 32, 128), (8, 32, 32, 256), (8, 16, 16, 256), (8, 16, 16, 512))
ATTN_SHAPE = (8, 16, 16, 256)
SMOKE_SHAPE = (2, 8, 8, 32)


def _compiled(f, *args):
    import jax

    c = jax.jit(f).lower(*args).compile()
    jax.block_until_ready(c(*args))
    return lambda: jax.block_until_ready(c(*args))


def conv_pairs(shape, rng, torch):
    """{what: (ours(), torch() or None)} for one 3x3 conv, C -> C channels."""
    import jax
    import jax.numpy as jnp
    b, h, w, c = shape
    x = rng.standard_normal((b, h, w, c)).astype("float32")
    k = (rng.standard_normal((3, 3, c, c)) / (9 * c) ** 0.5).astype("float32")
    g = rng.standard_normal((b, h, w, c)).astype("float32")
    xj, kj, gj = map(jnp.asarray, (x, k, g))

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    ours = {
        "fwd": _compiled(conv, xj, kj),
        "dx": _compiled(lambda x, k, g: jax.vjp(lambda x: conv(x, k), x)[1](g)[0], xj, kj, gj),
        "dw": _compiled(lambda x, k, g: jax.vjp(lambda k: conv(x, k), k)[1](g)[0], xj, kj, gj),
        "dxdw": _compiled(lambda x, k, g: jax.vjp(conv, x, k)[1](g), xj, kj, gj),
    }
    if torch is None:
        return {f"conv3x3 {'x'.join(map(str, shape))} {k}": (ours[k], None) for k in ours}
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    kt = torch.from_numpy(k.transpose(3, 2, 0, 1).copy())
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def back(mask):
        return lambda: torch.ops.aten.convolution_backward(
            gt, xt, kt, [c], [1, 1], [1, 1], [1, 1], False, [0, 0], 1, mask)

    def fwd():
        with torch.no_grad():
            torch.nn.functional.conv2d(xt, kt, padding=1)

    theirs = {"fwd": fwd, "dx": back([True, False, False]), "dw": back([False, True, False]),
              "dxdw": back([True, True, False])}
    return {f"conv3x3 {'x'.join(map(str, shape))} {k}": (ours[k], theirs[k]) for k in ours}


def gn_pairs(shape, rng, torch):
    """SiLU(GroupNorm(x)), forward and forward + backward."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    b, h, w, c = shape
    groups = min(c // 4, 32)
    x = rng.standard_normal((b, h, w, c)).astype("float32")
    g = rng.standard_normal((b, h, w, c)).astype("float32")
    gn = nn.GroupNorm(num_groups=groups, epsilon=1e-6)
    v = gn.init(jax.random.key(0), jnp.asarray(x[:1]))
    xj, gj = jnp.asarray(x), jnp.asarray(g)

    def f(v, x):
        return jax.nn.silu(gn.apply(v, x))

    name = f"gn_silu {'x'.join(map(str, shape))}"
    ours = {name + " fwd": _compiled(f, v, xj),
            name + " fwd+bwd": _compiled(lambda v, x, g: jax.vjp(f, v, x)[1](g), v, xj, gj)}
    if torch is None:
        return {k: (o, None) for k, o in ours.items()}
    tgn = torch.nn.GroupNorm(groups, c, eps=1e-6)
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    gt = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())

    def tf():
        with torch.no_grad():
            torch.nn.functional.silu(tgn(xt))

    def tfb():
        torch.nn.functional.silu(tgn(xt)).backward(gt)
        xt.grad = None
        tgn.zero_grad(set_to_none=True)

    return {name + " fwd": (ours[name + " fwd"], tf), name + " fwd+bwd": (ours[name + " fwd+bwd"], tfb)}


def attn_pairs(shape, rng, torch):
    """One-head self-attention over H*W positions, forward and forward + backward."""
    import jax
    import jax.numpy as jnp

    from score_jax.models.utils import dot_product_attention

    b, h, w, c = shape
    n, scale = h * w, c ** -0.5
    q, k, v, g = (rng.standard_normal((b, n, 1, c)).astype("float32") for _ in range(4))
    qj, kj, vj, gj = map(jnp.asarray, (q, k, v, g))

    def f(q, k, v):
        return dot_product_attention(q, k, v, scale)

    name = f"attention {'x'.join(map(str, shape))}"
    ours = {name + " fwd": _compiled(f, qj, kj, vj),
            name + " fwd+bwd": _compiled(lambda q, k, v, g: jax.vjp(f, q, k, v)[1](g), qj, kj, vj, gj)}
    if torch is None:
        return {k: (o, None) for k, o in ours.items()}
    qt, kt, vt = (torch.from_numpy(a[:, :, 0].copy()).requires_grad_(True) for a in (q, k, v))
    gt = torch.from_numpy(g[:, :, 0].copy())

    def tattn():
        return torch.softmax(qt @ kt.transpose(1, 2) * scale, dim=-1) @ vt

    def tf():
        with torch.no_grad():
            tattn()

    def tfb():
        tattn().backward(gt)
        for t in (qt, kt, vt):
            t.grad = None

    return {name + " fwd": (ours[name + " fwd"], tf), name + " fwd+bwd": (ours[name + " fwd+bwd"], tfb)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--xla_flags", choices=["project", "xla_default"], default="project",
                    help="project: score_jax.xla_flags.apply_default_cpu_flags (what the CLIs "
                         "run); xla_default: XLA's own defaults (YNNPACK convolutions)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, 2 repeats")
    args = ap.parse_args()
    if args.xla_flags == "project":
        from score_jax.xla_flags import apply_default_cpu_flags

        apply_default_cpu_flags()  # before the first jax computation
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts libgomp
    import numpy as np

    try:
        import torch
    except ImportError:  # ours only (the smoke test's venv has no torch)
        torch = None
        print("torch is not installed: timing ours only")
    else:
        torch.set_num_threads(2)
    conv_shapes, gn_shapes, attn_shape = CONV_SHAPES, GN_SHAPES, ATTN_SHAPE
    if args.smoke:
        conv_shapes, gn_shapes, attn_shape = (SMOKE_SHAPE,), (SMOKE_SHAPE,), SMOKE_SHAPE
        args.repeats = 2
    rng = np.random.default_rng(args.seed)
    pairs = {}
    for s in conv_shapes:
        pairs.update(conv_pairs(s, rng, torch))
    for s in gn_shapes:
        pairs.update(gn_pairs(s, rng, torch))
    pairs.update(attn_pairs(attn_shape, rng, torch))
    for fns in pairs.values():  # warm-up (torch's allocator and autograd graph)
        for fn in fns:
            if fn is not None:
                fn()
    times = {k: ([], []) for k in pairs}
    for _ in range(args.repeats):
        for k, fns in pairs.items():
            for i, fn in enumerate(f for f in fns if f is not None):
                t0 = time.perf_counter()
                fn()
                times[k][i].append(time.perf_counter() - t0)
    flags = os.environ.get("XLA_FLAGS", "")
    med = {k: (float(np.median(o)), float(np.median(t)) if t else float("nan"))
           for k, (o, t) in times.items()}
    for k, (mo, mt) in med.items():
        print(json.dumps({"layer": k, "ours_ms": round(1e3 * mo, 3), "torch_ms": round(1e3 * mt, 3),
                          "ratio": round(mo / mt, 3), "xla_flags": flags}))
    print(f"\nXLA_FLAGS={flags!r}, {args.repeats} interleaved rounds, load "
          f"{os.getloadavg()[0]:.1f}")
    print("| layer | ours ms | PyTorch ms | ours / PyTorch |")
    print("|---|---|---|---|")
    for k, (mo, mt) in med.items():
        print(f"| {k} | {1e3 * mo:.2f} | {1e3 * mt:.2f} | {mo / mt:.2f} |", flush=True)


if __name__ == "__main__":
    main()
