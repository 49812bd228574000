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
