"""How long the training loop blocks per checkpoint: synchronous vs asynchronous orbax saves
(``checkpoint.TrainCheckpointer(asynchronous=...)``, what ``train_lib`` uses with
``training.async_checkpoints``).

Two states, each saved ``--saves`` times with training work between the saves, as the loop does:

* ``synthetic``: a pytree of ``--mb`` MiB of float32 (8 leaves); the work between saves is
  ``--work-steps`` jitted updates of the state with the state donated (as the train step donates
  it) plus a matmul burn of about ``--work-s`` seconds.
* ``digits``: the default digits config's train state (``configs/default_digits.py``, EDM, params +
  EMA + Adam) and ``--digits-steps`` real train steps between saves.

Per mode it prints the median / max seconds ``save`` blocked the loop, the wait at the end
(``close``: the last save's write), the wall time of the whole loop, and checks that the last
checkpoint restores to the state that was saved (donation after an asynchronous save is safe).

Run: ``JAX_PLATFORMS=cpu python bench/bench_async_save.py`` (add ``--json out.json``).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from score_jax import checkpoint as ckpt_lib  # noqa: E402


def _loop(name, state, work, saves, asynchronous):
    """``saves`` rounds of (work, save); returns the timings and the last saved state's leaves."""
    d = tempfile.mkdtemp(prefix=f"bench_async_{name}_")
    try:
        ck = ckpt_lib.TrainCheckpointer(d, keep_period=None, asynchronous=asynchronous)
        blocked, t_start = [], time.perf_counter()
        for i in range(1, saves + 1):
            state = work(state)
            jax.block_until_ready(state)
            t0 = time.perf_counter()
            ck.save(i, state, {"step": i}, wait=False)
            blocked.append(time.perf_counter() - t0)
        expect = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]
        state = work(state)  # donates the last saved buffers while their write may be in flight
        jax.block_until_ready(state)
        t0 = time.perf_counter()
        ck.close()
        final_wait = time.perf_counter() - t0
        wall = time.perf_counter() - t_start
        ck = ckpt_lib.TrainCheckpointer(d, read_only=True)
        abstract = jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                                          state)
        restored, _ = ck.restore(abstract)
        ok = all(np.array_equal(a, np.asarray(b)) for a, b in
                 zip(expect, jax.tree_util.tree_leaves(restored), strict=True))
        ck.close()
        return {"state": name, "mode": "async" if asynchronous else "sync", "saves": saves,
                "blocked_median_s": float(np.median(blocked)), "blocked_max_s": float(max(blocked)),
                "blocked_first_s": blocked[0], "final_wait_s": final_wait, "loop_wall_s": wall,
                "restored_exact": ok}
    finally:
        shutil.rmtree(d, ignore_errors=True)


def synthetic(mb, work_steps, work_s):
    n = int(mb * 2**20 / 4 / 8)
    state = {f"leaf{i}": jnp.full((n,), float(i), jnp.float32) for i in range(8)}
    update = jax.jit(lambda s: jax.tree_util.tree_map(lambda x: x * 0.5 + 1.0, s), donate_argnums=0)
    a = jnp.ones((512, 512), jnp.float32)
    burn = jax.jit(lambda a: (a @ a) * 1e-3)
    jax.block_until_ready(burn(a))
    t0 = time.perf_counter()
    jax.block_until_ready(burn(a))
    reps = max(1, int(work_s / max(time.perf_counter() - t0, 1e-6)))

    def work(s):
        for _ in range(work_steps):
            s = update(s)
        x = a
        for _ in range(reps):
            x = burn(x)
        jax.block_until_ready(x)
        return s

    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
    return state, work, nbytes


def digits(steps):
    from configs.default_digits import get_config
    from score_jax import config as config_lib
    from score_jax import parallel

    config = get_config()
    b = config_lib.build(config)
    state = b.init(jax.random.key(0))
    ds = config_lib.dataset_from_config(config, "train", training=True,
                                        batch_size=config.training.batch_size)
    batch = parallel.to_global(next(ds.iterate(0)), b.mesh)
    key = jax.random.key(1)

    def work(s):
        for _ in range(steps):
            s, _ = b.train_step(s, batch, key)
        return s

    state = work(state)  # compile
    jax.block_until_ready(state)
    nbytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(state))
    return state, work, nbytes


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mb", type=float, default=400.0, help="synthetic state size, MiB")
    p.add_argument("--saves", type=int, default=4)
    p.add_argument("--work-steps", type=int, default=2)
    p.add_argument("--work-s", type=float, default=3.0, help="compute between synthetic saves")
    p.add_argument("--digits-steps", type=int, default=20)
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    rows = []
    cases = [("synthetic", lambda: synthetic(args.mb, args.work_steps, args.work_s))]
    if not args.skip_digits:
        cases.append(("digits", lambda: digits(args.digits_steps)))
    for name, make in cases:
        for asynchronous in (False, True):
            state, work, nbytes = make()
            row = _loop(name, state, work, args.saves, asynchronous)
            row["state_mib"] = nbytes / 2**20
            rows.append(row)
            print("BENCH " + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                      for k, v in row.items()), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
