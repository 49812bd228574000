"""The jitted train step (score_jax.train_step): one Adam + EMA update against its closed form, the
non-finite guard, and the cost of the guard (no copy of the state per step)."""
import re

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import parallel
from score_jax import train_step as ts

SHAPE = (37, 41)  # a shape no other array of the step has: its copies are findable in the HLO


def _loss(variables, batch, key):
    """sum(w * c) (gradient c), NaN when the batch says so."""
    w = variables["params"]["w"]
    loss = jnp.sum(w * batch["c"][0]) + jnp.where(batch["nan"][0] > 0, jnp.nan, 0.0)
    return loss, {}


def _state(tx):
    w = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
    params = {"w": w}
    return ts.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                         ema_params=jax.tree_util.tree_map(jnp.copy, params),
                         opt_state=tx.init(params))


def _batch(nan: bool):
    c = np.random.default_rng(1).standard_normal((1,) + SHAPE).astype(np.float32)
    return {"c": c, "nan": np.full((1,), float(nan), np.float32)}


def test_one_step_is_adam_and_ema_in_closed_form():
    """First Adam step (Kingma & Ba 2015, Alg. 1): m = (1 - b1) g, v = (1 - b2) g^2, bias-corrected
    m_hat = g, v_hat = g^2, so p1 = p0 - lr g / (|g| + eps); EMA = d p0 + (1 - d) p1 with the
    first update's decay d = min(rate, 2 / 11) (the EMA warmup, ``train_step.ema_decay``)."""
    lr, eps, rate = 1e-2, 1e-8, 0.9
    tx, schedule = ts.make_optimizer(lr=lr, eps=eps, grad_clip=-1.0)
    mesh = parallel.make_mesh(1)
    step = ts.jit_train_step(_loss, tx, schedule, rate, mesh)
    d = min(rate, 2.0 / 11.0)
    state = _state(tx)
    p0 = np.asarray(state.params["w"], np.float64)
    batch = _batch(False)
    g = batch["c"][0].astype(np.float64)
    new, m = step(state, parallel.to_global(batch, mesh), jax.random.key(0))
    p1 = p0 - lr * g / (np.abs(g) + eps)
    np.testing.assert_allclose(np.asarray(new.params["w"]), p1, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(new.ema_params["w"]), d * p0 + (1 - d) * p1,
                               rtol=1e-6, atol=1e-7)
    assert int(new.step) == 1 and bool(m["finite"])
    np.testing.assert_allclose(float(m["grad_norm"]), np.linalg.norm(g), rtol=1e-5)


def test_nonfinite_step_leaves_the_state_unchanged():
    tx, schedule = ts.make_optimizer(lr=1e-2, grad_clip=1.0)
    mesh = parallel.make_mesh(1)
    step = ts.jit_train_step(_loss, tx, schedule, 0.9, mesh)
    state = _state(tx)
    before = [np.asarray(x) for x in jax.tree_util.tree_leaves(state)]  # the step donates state
    new, m = step(state, parallel.to_global(_batch(True), mesh), jax.random.key(0))
    assert not bool(m["finite"])
    after = [np.asarray(x) for x in jax.tree_util.tree_leaves(new)]
    assert len(after) == len(before)
    for a, b in zip(after, before, strict=True):
        np.testing.assert_array_equal(a, b)


def test_guard_copies_no_state():
    """The non-finite guard must not make XLA copy the (donated) parameters, EMA and Adam moments
    every step: with ``jnp.where(finite, new, old)`` over the state the compiled CPU step held a
    full copy of each (2.5x the update's time for DDPM++; bench/RESULTS.md)."""
    tx, schedule = ts.make_optimizer(lr=1e-2, grad_clip=1.0)
    mesh = parallel.make_mesh(1)
    step = ts.jit_train_step(_loss, tx, schedule, 0.9, mesh)
    state = _state(tx)
    hlo = step.lower(state, parallel.to_global(_batch(False), mesh),
                     jax.random.key(0)).compile().as_text()
    copies = re.findall(r"= f32\[37,41\]\{[0-9,]*\} copy\(", hlo)
    assert not copies, f"{len(copies)} full-state copies in the compiled step"


def _chain_step(tx, rate):
    """The update as the optax chain + apply_updates + EMA (the step before `FusedAdam`)."""
    import optax

    def step(state, grads):
        u, o = tx.chain.update(grads, state.opt_state, state.params)
        p = optax.apply_updates(state.params, u)
        d = ts.ema_decay(state.step + 1, rate)
        e = jax.tree_util.tree_map(lambda a, q: (a * d + q * (1.0 - d)).astype(a.dtype),
                                   state.ema_params, p)
        return ts.TrainState(step=state.step + 1, params=p, ema_params=e, opt_state=o)

    return jax.jit(step)


def _fused_step(tx, rate):
    import optax

    def step(state, grads):
        p, e, o = tx.fused_update(grads, optax.global_norm(grads), state.opt_state, state.params,
                                  state.ema_params, ts.ema_decay(state.step + 1, rate))
        return ts.TrainState(step=state.step + 1, params=p, ema_params=e, opt_state=o)

    return jax.jit(step)


def test_fused_update_is_bit_identical_to_the_optax_chain():
    """`FusedAdam.fused_update` (clip + Adam / AdamW + apply + EMA in one function per leaf) gives
    exactly the optax chain's numbers over 6 steps (warmup, clipped and unclipped gradients),
    state structure included (checkpoints written before it restore)."""
    rng = np.random.default_rng(0)
    params = {"w": jnp.asarray(rng.standard_normal((5, 7)), jnp.float32),
              "b": jnp.asarray(rng.standard_normal((7,)), jnp.float32)}
    for kw in ({"grad_clip": 1.0}, {"grad_clip": -1.0}, {"grad_clip": 0.5, "weight_decay": 0.01},
               {"grad_clip": -1.0, "optimizer": "AdamW"}):
        tx, _ = ts.make_optimizer(lr=1e-2, warmup=3, **kw)
        assert isinstance(tx, ts.FusedAdam)
        states = [ts.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                ema_params=jax.tree_util.tree_map(jnp.copy, params),
                                opt_state=tx.init(params)) for _ in range(2)]
        chain, fused = _chain_step(tx, 0.99), _fused_step(tx, 0.99)
        for i in range(6):
            scale = 10.0 if i % 2 else 0.01  # global norm above / below the clip
            grads = jax.tree_util.tree_map(
                lambda a, i=i, scale=scale: jnp.asarray(
                    np.random.default_rng(i).standard_normal(a.shape) * scale, jnp.float32),
                params)
            states = [chain(states[0], grads), fused(states[1], grads)]
        a, b = states
        assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
        for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=str(kw))


def test_fused_update_runs_fewer_passes_than_the_chain():
    """The step with `FusedAdam` compiles to fewer loops over a full-size leaf than the same step
    with the optax chain (which materialises the clipped gradient) and one fewer global-norm
    reduction (the chain's clip computes the norm the guard already has). Fails if train_step
    stops using ``fused_update``."""
    tx, schedule = ts.make_optimizer(lr=1e-2, grad_clip=1.0)
    mesh = parallel.make_mesh(1)
    counts = {}
    for name, t in (("fused", tx), ("chain", tx.chain)):
        step = ts.jit_train_step(_loss, t, schedule, 0.9, mesh)
        hlo = step.lower(_state(tx), parallel.to_global(_batch(False), mesh),
                         jax.random.key(0)).compile().as_text()
        counts[name] = (len(re.findall(r"= f32\[37,41\]\{[0-9,]*\} fusion\(", hlo)),
                        len(re.findall(r"= f32\[\] fusion\(", hlo)))
    assert counts["fused"][0] < counts["chain"][0], counts
    assert counts["fused"][1] < counts["chain"][1], counts
