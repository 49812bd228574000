"""Notebook-style repeated sampling calls: the per-call time of calls 2..N of ``sampling.sample``
with new weights of the same shapes each call (e.g. a new checkpoint, an EMA update).

A cache hit should cost the sampler's own compute only; before the one-runner redesign every call
re-traced the network (``jax.eval_shape`` in the shape check ran even on a cache hit).

    PYTHONPATH=. python bench/bench_repeat_calls.py            # this tree
    PYTHONPATH=/path/to/old/tree python bench/bench_repeat_calls.py   # e.g. main, for "before"

The sampler work is kept small (DDIM, 2 steps, batch 2) so that the figure is the per-call
overhead. Prints one line per call and the median of calls 2..N.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp

import score_jax
from score_jax import sampling
from score_jax.models.ncsnpp import NCSNpp
from score_jax.score import get_score_fn
from score_jax.sde import VPSDE


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--nf", type=int, default=32)
    ap.add_argument("--calls", type=int, default=5)
    args = ap.parse_args()
    print("score_jax from", score_jax.__file__, "| jax", jax.__version__, jax.devices()[0].platform)
    # DDPM++ (score_sde vp/cifar10_ddpmpp_continuous) at reduced width and size.
    model = NCSNpp(image_size=args.image_size, num_channels=3, centered=True, nf=args.nf,
                   ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(args.image_size // 2,),
                   fir=False, resblock_type="biggan", progressive="none",
                   progressive_input="none", embedding_type="positional", scale_by_sigma=False,
                   dropout=0.0)
    shape = (2, args.image_size, args.image_size, 3)
    sde = VPSDE()
    variables = model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((2,)), train=False)
    times = []
    for i in range(args.calls):
        # New weights of the same shapes on every call.
        v = jax.tree_util.tree_map(lambda p, i=i: p * (1.0 + 1e-3 * i), variables)
        score_fn = get_score_fn(sde, model, v, continuous=True)
        t0 = time.perf_counter()
        x, nfe = sampling.sample(jax.random.key(i), sde, score_fn, shape, "ddim", num_steps=2)
        jax.block_until_ready(x)
        nfe = int(nfe)
        dt = time.perf_counter() - t0
        times.append(dt)
        print(f"call {i + 1}: {dt:.3f} s (nfe {nfe})", flush=True)
    print(f"median of calls 2..{args.calls}: {statistics.median(times[1:]):.3f} s")


if __name__ == "__main__":
    main()
