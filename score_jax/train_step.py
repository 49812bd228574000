"""Train state, optimiser and the train / eval steps: pure and config-free.

Everything here takes explicit arguments (a loss function, an optax transformation, a mesh); the
config is read in ``score_jax.config``. One code path for 1 device, N devices and N hosts: the
step is ``jax.jit`` over a ``Mesh`` with the batch split over every device and the state either
replicated ``P()`` (XLA inserts the gradient all-reduce) or FSDP-sharded (``parallel.fsdp_spec``:
XLA all-gathers each weight and reduce-scatters its gradient). Per-step randomness is
``fold_in(key, step)`` (big_vision ``update_fn``), and each example of the global batch draws
its noise from ``fold_in(step_key, index in the batch)``, so the update does not depend on how
the batch is cut into micro-batches (gradient accumulation) or devices.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from score_jax import parallel, pytree

Array = jax.Array


@pytree.dataclass
class TrainState:
    """Arrays only, so orbax saves it and it shards: step, parameters, EMA parameters and the
    optimiser state (an optax NamedTuple tree)."""

    step: Array
    params: Any
    ema_params: Any
    opt_state: Any


OPTIMIZERS = ("Adam", "AdamW")
LR_DECAYS = ("constant", "cosine", "linear")


def make_optimizer(*, lr: float, beta1: float = 0.9, eps: float = 1e-8, warmup: int = 0,
                   grad_clip: float = -1.0, weight_decay: float = 0.0,
                   optimizer: str = "Adam", lr_decay: str = "constant",
                   decay_steps: int | None = None) -> tuple[optax.GradientTransformation, Callable]:
    """The reference optimiser (score_sde ``losses.optimization_manager``) as an optax chain.

    lr(step) = lr * min(step / warmup, 1) (linear warmup from 0; constant if warmup = 0), the
    reference's schedule (``lr_decay="constant"``). ``lr_decay="cosine"``: after the warmup,
    lr * (1 + cos(pi u)) / 2 with u = (step - warmup) / (decay_steps - warmup) (Loshchilov & Hutter
    2017, SGDR without restarts; optax ``warmup_cosine_decay_schedule``), reaching 0 at
    ``decay_steps`` (the run's ``n_iters``) and staying there; ``"linear"``: lr * (1 - u). A
    decaying rate suits runs whose length is known in advance (the CPU digits default);
    gradients clipped to global norm ``grad_clip`` (no clipping if < 0); Adam(beta1, 0.999, eps);
    ``weight_decay`` > 0 is decoupled and scaled by the learning rate (flax.optim.Adam / AdamW).

    Returns:
      ``(tx, schedule)``: the optax transformation and the learning-rate schedule.

    Raises:
      ValueError: ``optimizer`` not in ``OPTIMIZERS``, ``lr_decay`` not in ``LR_DECAYS``, or a
        decay without ``decay_steps > warmup``.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optim.optimizer={optimizer!r} unknown; valid choices: "
                         f"{list(OPTIMIZERS)}")
    if lr_decay not in LR_DECAYS:
        raise ValueError(f"optim.lr_decay={lr_decay!r} unknown; valid choices: {list(LR_DECAYS)}")
    if lr_decay != "constant" and not (decay_steps is not None and decay_steps > warmup):
        raise ValueError(f"optim.lr_decay={lr_decay!r} needs decay_steps (training.n_iters) > "
                         f"warmup; got decay_steps={decay_steps}, warmup={warmup}")
    if lr_decay == "cosine":
        schedule = optax.warmup_cosine_decay_schedule(0.0, lr, int(warmup), int(decay_steps),
                                                      end_value=0.0)
    elif lr_decay == "linear":
        schedule = optax.join_schedules(
            [optax.linear_schedule(0.0, lr, int(warmup)),
             optax.linear_schedule(lr, 0.0, int(decay_steps) - int(warmup))], [int(warmup)])
    elif warmup > 0:
        schedule = optax.linear_schedule(0.0, lr, int(warmup))
    else:
        schedule = optax.constant_schedule(lr)
    parts = []
    clip = grad_clip is not None and grad_clip >= 0
    if clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    decoupled = bool(weight_decay or optimizer == "AdamW")
    if decoupled:
        parts.append(optax.adamw(schedule, b1=beta1, b2=0.999, eps=eps, weight_decay=weight_decay))
    else:
        parts.append(optax.adam(schedule, b1=beta1, b2=0.999, eps=eps))
    tx = FusedAdam(chain=optax.chain(*parts), schedule=schedule, b1=float(beta1), b2=0.999,
                   eps=float(eps), grad_clip=float(grad_clip) if clip else None,
                   weight_decay=float(weight_decay) if decoupled else None)
    return tx, schedule


@dataclasses.dataclass(frozen=True)
class FusedAdam:
    """The optimiser of `make_optimizer`: the optax chain ``clip_by_global_norm`` (optional) +
    ``adam`` / ``adamw`` (``init`` / ``update`` are the chain's, so it is an optax
    ``GradientTransformation`` and its state is the chain's: checkpoints do not change), plus
    `fused_update`, the same arithmetic as the chain + ``optax.apply_updates`` + the EMA written
    as one elementwise function per leaf, which `train_step` uses.

    Why: jitted on CPU, the chain materialises the clipped gradient, computes the global norm a
    second time (the step already has it for the non-finite guard) and runs one loop per
    intermediate (bench/RESULTS.md, "Train step's own cost against PyTorch").
    """

    chain: optax.GradientTransformation
    schedule: Callable
    b1: float
    b2: float
    eps: float
    grad_clip: float | None  # None: no clipping
    weight_decay: float | None  # None: adam; a float: adamw's decoupled decay

    def init(self, params):
        return self.chain.init(params)

    def update(self, updates, state, params=None, **extra_args):
        return self.chain.update(updates, state, params, **extra_args)

    def fused_update(self, grads: Any, grad_norm: Array, opt_state: Any, params: Any,
                     ema_params: Any, ema_decay_value: Array) -> tuple[Any, Any, Any]:
        """``(params, ema_params, opt_state)`` after one step, bit-identical to
        ``u, s = chain.update(grads, opt_state, params); p = optax.apply_updates(params, u)``
        and ``ema * d + p * (1 - d)`` (tested), with ``grad_norm = optax.global_norm(grads)``
        given. Per leaf (optax's formulas; t = Adam's count after the increment,
        lr = schedule(count before it), c = grad_clip, n = grad_norm)::

            g  <- g if n < c else g / n * c
            mu <- (1 - b1) g + b1 mu ;  nu <- (1 - b2) g^2 + b2 nu
            u  <- (mu / (1 - b1^t)) / (sqrt(nu / (1 - b2^t)) + eps)  [+ weight_decay * p]
            p  <- p + (-lr) u ;  ema <- ema d + p (1 - d)
        """
        base = 0 if self.grad_clip is None else 1
        adam_state = opt_state[base][0]
        sched_state = opt_state[base][-1]
        count = optax.safe_increment(adam_state.count)
        step_size = -1 * self.schedule(sched_state.count)
        b1, b2, eps, wd, d = self.b1, self.b2, self.eps, self.weight_decay, ema_decay_value
        bc1, bc2 = 1 - b1 ** count, 1 - b2 ** count
        if self.grad_clip is not None:
            trigger = jnp.squeeze(grad_norm < self.grad_clip)

        def leaf(g, p, mu, nu, e):
            if self.grad_clip is not None:
                g = jnp.where(trigger, g, (g / grad_norm.astype(g.dtype)) * self.grad_clip)
            mu = (1 - b1) * g + b1 * mu
            nu = (1 - b2) * (g ** 2) + b2 * nu
            u = (mu / bc1.astype(mu.dtype)) / (jnp.sqrt(nu / bc2.astype(nu.dtype) + 0.0) + eps)
            if wd is not None:
                u = u + wd * p
            u = jnp.array(step_size, dtype=u.dtype) * u
            p = jnp.asarray(p + u).astype(jnp.asarray(p).dtype)
            return p, mu, nu, (e * d + p * (1.0 - d)).astype(e.dtype)

        treedef = jax.tree_util.tree_structure(params)
        out = treedef.flatten_up_to(jax.tree_util.tree_map(
            leaf, grads, params, adam_state.mu, adam_state.nu, ema_params))
        new_p, mu, nu, ema = (treedef.unflatten([o[i] for o in out]) for i in range(4))
        inner = list(opt_state[base])
        inner[0] = adam_state._replace(count=count, mu=mu, nu=nu)
        inner[-1] = sched_state._replace(count=optax.safe_increment(sched_state.count))
        new_state = list(opt_state)
        new_state[base] = type(opt_state[base])(inner)
        return new_p, ema, type(opt_state)(new_state)


def init_state(key: Array, model: nn.Module, tx: optax.GradientTransformation,
               image_shape: tuple[int, int, int], *, num_classes: int | None = None) -> TrainState:
    """Initialise parameters (on a batch of one image of ``image_shape`` (H, W, C)), EMA =
    parameters, and the optimiser state; ``num_classes`` set: the network takes labels ``y``."""
    x = jnp.zeros((1,) + tuple(image_shape), jnp.float32)
    labels = jnp.zeros((1,), jnp.float32)
    kwargs = {} if num_classes is None else {"y": jnp.zeros((1,), jnp.int32)}
    k_params, k_drop = jax.random.split(key)
    variables = model.init({"params": k_params, "dropout": k_drop}, x, labels, train=False,
                           **kwargs)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree_util.tree_map(jnp.copy, params),
                      opt_state=tx.init(params))


EMA_WARMUP_OFFSET = 10.0  # score_sde_pytorch models/ema.py: (1 + n) / (10 + n)


def ema_decay(num_updates, rate: float, warmup: bool = True):
    """The EMA decay of the ``num_updates``-th update (1-based): ``min(rate, (1 + n) / (10 + n))``
    with warmup, ``rate`` without.

    Source: score_sde_pytorch ``models/ema.py`` (``ExponentialMovingAverage(use_num_updates=True)``,
    the default its ``run_lib`` uses; the counter is incremented before the decay is computed,
    so the first update has n = 1 and decay 2/11), after TensorFlow's
    ``ExponentialMovingAverage(num_updates=...)``. The 2021 JAX score_sde has no warmup, so after
    N steps the EMA still holds ``rate**N`` of the random initialisation (0.999**1500 = 22 %).
    With the warmup the initialisation's weight falls like ``N**-9`` until the ramp reaches
    ``rate`` (``n = (10 rate - 1) / (1 - rate)``, 8990 updates for rate 0.999, 89990 for 0.9999), then like
    ``rate**N``: see `ema_init_weight`. Chosen over EDM's half-life ramp
    (NVlabs/edm ``training_loop.py``: half-life ``min(ema_halflife, 0.05 * images seen)``)
    because it keeps the configs' ``model.ema_rate`` as the asymptotic decay per step.

    Args:
      num_updates: integer scalar (a traced array is fine: ``state.step + 1``).
      rate: the asymptotic decay ``model.ema_rate`` in [0, 1).
      warmup: False gives the constant ``rate`` (the 2021 JAX score_sde).

    Returns:
      A float32 scalar in [0, rate].
    """
    rate = jnp.float32(rate)
    if not warmup:
        return rate
    n = jnp.asarray(num_updates, jnp.float32)
    return jnp.minimum(rate, (1.0 + n) / (EMA_WARMUP_OFFSET + n))


def ema_init_weight(num_updates: int, rate: float, warmup: bool = True) -> float:
    """The weight the EMA still gives to the initial parameters after ``num_updates`` updates:
    ``prod_{n=1..N} ema_decay(n)`` (the EMA is ``w * init + sum_n c_n params_n`` with
    ``w + sum c_n = 1``). Closed form: the warmup factors ``(1 + n) / (10 + n)`` for
    ``n <= K = floor((10 rate - 1) / (1 - rate))`` multiply to ``Gamma(K + 2) Gamma(11) /
    Gamma(K + 11)``, then ``rate ** (N - K)``; without warmup ``rate ** N``. Host-side (Python
    floats, log-space) for logs and audits; 0 < result <= 1 except 0 for rate 0 and N > 0.

    Raises:
      ValueError: ``num_updates`` < 0 or ``rate`` outside [0, 1).
    """
    n = int(num_updates)
    rate = float(rate)
    if n < 0 or not 0.0 <= rate < 1.0:
        raise ValueError(f"ema_init_weight needs num_updates >= 0 and rate in [0, 1); got "
                         f"num_updates={num_updates!r}, rate={rate!r}")
    if n == 0:
        return 1.0
    if rate == 0.0:
        return 0.0
    k = 0
    if warmup:
        # largest n with (1 + n) / (10 + n) <= rate (at equality both factors are equal)
        k = max(0, min(n, math.floor((EMA_WARMUP_OFFSET * rate - 1.0) / (1.0 - rate))))
    log_w = (math.lgamma(k + 2) + math.lgamma(EMA_WARMUP_OFFSET + 1)
             - math.lgamma(k + EMA_WARMUP_OFFSET + 1) + (n - k) * math.log(rate))
    return math.exp(log_w)


def example_keys(step_key: Array, batch_size: int) -> Array:
    """The per-example keys of a step: ``fold_in(step_key, i)`` for i in [0, batch_size)."""
    return jax.vmap(lambda i: jax.random.fold_in(step_key, i))(jnp.arange(batch_size))


def _batch_size(batch: Any) -> int:
    return int(jax.tree_util.tree_leaves(batch)[0].shape[0])


def loss_and_grad(loss_fn: Callable, params: Any, batch: Any, keys: Array,
                  extra: dict | None = None) -> tuple[Array, Any]:
    """The mean over the batch of the per-example losses ``loss_fn({"params": params},
    example[None], keys[i])`` (vmapped: the network sees the whole batch), and its gradient.

    The mean of per-example batch-means is the batch mean of every objective here (each
    reduces over the batch with a mean), so this is the full-batch loss with example i's noise
    drawn from ``keys[i]``.
    """
    def per_example(p, example, k):
        loss, _ = loss_fn({"params": p, **(extra or {})},
                          jax.tree_util.tree_map(lambda a: a[None], example), k)
        return loss

    def objective(p):
        return jnp.mean(jax.vmap(per_example, in_axes=(None, 0, 0))(p, batch, keys))

    return jax.value_and_grad(objective)(params)


def accumulated_loss_and_grad(loss_fn: Callable, params: Any, batch: Any, keys: Array,
                              grad_accum_steps: int, extra: dict | None = None) -> tuple[Array, Any]:
    """`loss_and_grad` of the batch computed over ``grad_accum_steps`` micro-batches in a
    ``lax.scan`` (activations of one micro-batch live at a time).

    Micro-batch j holds the examples ``j, j + k, j + 2k, ...`` (k = ``grad_accum_steps``): with
    the batch split over devices along its leading axis, every device keeps its own rows (no
    data movement) when ``batch_size / k`` is a multiple of the device count. Each example keeps
    its key, so the result equals the full-batch `loss_and_grad` up to float round-off: the mean
    of the k micro-batch means, and the mean of their gradients.

    Raises:
      ValueError: the batch size is not a multiple of ``grad_accum_steps``.
    """
    k = int(grad_accum_steps)
    if k == 1:
        return loss_and_grad(loss_fn, params, batch, keys, extra)
    b = _batch_size(batch)
    if b % k:
        raise ValueError(f"training.grad_accum_steps={k} does not divide the batch size {b}; "
                         f"valid choices: {[d for d in range(1, b + 1) if b % d == 0]}")

    def split(a):  # (B, ...) -> (k, B / k, ...): micro-batch j = rows j, j + k, ...
        return jnp.swapaxes(a.reshape((b // k, k) + a.shape[1:]), 0, 1)

    micro = jax.tree_util.tree_map(split, (batch, keys))

    def body(carry, mb):
        loss_sum, grad_sum = carry
        loss, grads = loss_and_grad(loss_fn, params, *mb, extra)
        return (loss_sum + loss, jax.tree_util.tree_map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    (loss, grads), _ = jax.lax.scan(body, (jnp.zeros((), jnp.float32), zeros), micro)
    return loss / k, jax.tree_util.tree_map(lambda g: g / k, grads)


def train_step(state: TrainState, batch: Any, key: Array, frozen: Any = None, *, loss_fn: Callable,
               tx: optax.GradientTransformation, schedule: Callable,
               ema_rate: float, ema_warmup: bool = True,
               grad_accum_steps: int = 1, state_inputs: bool = False,
               per_example_noise: bool = False) -> tuple[TrainState, dict]:
    """One optimisation step on the (global) batch, randomness ``fold_in(key, state.step)``.

    Noise: by default the loss draws the batch's noise from the step key (the draws of every
    earlier version, so a seed trains the same model as before). ``grad_accum_steps`` k > 1 (or
    ``per_example_noise``): example i draws its noise from ``fold_in(fold_in(key, step), i)`` and
    the gradient is accumulated over k micro-batches inside the step
    (`accumulated_loss_and_grad`, a ``lax.scan``), equal to the full-batch update with the same
    per-example noise up to round-off (``per_example_noise=True`` with k = 1), then one optimiser /
    EMA update.

    ema <- ema * d + params * (1 - d) after the update, with ``d = ema_decay(state.step + 1,
    ema_rate, ema_warmup)`` = min(rate, (1 + n) / (10 + n)) for the n-th update
    (score_sde_pytorch ``models/ema.py``; the constant ``rate`` of the JAX score_sde if
    ``ema_warmup`` is False). A step whose loss or
    gradient norm is not finite leaves the state unchanged (``metrics["finite"]`` is False), so
    the state stays at the last good update.

    ``frozen``: a pytree of arrays the loss reads but does not train (a distillation teacher's
    weights, a frozen text encoder), passed to it as ``variables["frozen"]`` when not None: a
    jitted argument, so it is neither baked into the compiled step as constants nor saved in the
    state (its layout is the caller's: `jit_train_step`'s ``frozen_sharding``).

    Returns:
      ``(new_state, metrics)`` with scalar metrics loss, grad_norm, lr, finite.
    """
    step_key = jax.random.fold_in(key, state.step)
    # state_inputs: the loss also reads the EMA parameters (constants: the target network of
    # consistency distillation) and the step (curricula), as score_jax.distill's losses do
    extra = {"ema_params": state.ema_params, "step": state.step} if state_inputs else None
    if frozen is not None:
        extra = {**(extra or {}), "frozen": frozen}
    if int(grad_accum_steps) == 1 and not per_example_noise:
        def objective(params):
            return loss_fn({"params": params, **(extra or {})}, batch, step_key)

        (loss, _), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    else:
        keys = example_keys(step_key, _batch_size(batch))
        loss, grads = accumulated_loss_and_grad(loss_fn, state.params, batch, keys,
                                                grad_accum_steps, extra)
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def update(state):
        decay = ema_decay(state.step + 1, ema_rate, ema_warmup)
        if isinstance(tx, FusedAdam):  # the same numbers in one pass per leaf
            params, ema, opt_state = tx.fused_update(grads, grad_norm, state.opt_state,
                                                     state.params, state.ema_params, decay)
            return TrainState(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = jax.tree_util.tree_map(lambda e, p: (e * decay + p * (1.0 - decay)).astype(e.dtype),
                                     state.ema_params, params)
        return TrainState(step=state.step + 1, params=params, ema_params=ema, opt_state=opt_state)

    # A branch, not jnp.where(finite, new, old) over the state: the select needs the old values
    # after the update has written into the donated buffers, so XLA copied the parameters and
    # Adam's moments every step (2.5x the update's time on CPU; bench/bench_step_breakdown.py).
    new = jax.lax.cond(finite, update, lambda s: s, state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": schedule(state.step),
               "finite": finite}
    return new, metrics


def eval_step(state: TrainState, batch: Any, key: Array, frozen: Any = None, *, loss_fn: Callable,
              state_inputs: bool = False) -> Array:
    """The loss of the EMA parameters on an evaluation batch (reference ``eval_step``);
    ``frozen`` as in `train_step`."""
    extra = {"ema_params": state.ema_params, "step": state.step} if state_inputs else {}
    if frozen is not None:
        extra["frozen"] = frozen
    loss, _ = loss_fn({"params": state.ema_params, **extra}, batch, key)
    return loss


def _state_sharding(state_sharding: Any, mesh) -> Any:
    return parallel.replicated(mesh) if state_sharding is None else state_sharding


def jit_train_step(loss_fn: Callable, tx: optax.GradientTransformation, schedule: Callable,
                   ema_rate: float, mesh, *, ema_warmup: bool = True, state_sharding: Any = None,
                   grad_accum_steps: int = 1, state_inputs: bool = False,
                   per_example_noise: bool = False, frozen_sharding: Any = None) -> Callable:
    """``train_step`` jitted over ``mesh``: state donated and laid out as ``state_sharding`` (a
    sharding or a TrainState-shaped tree of them, e.g. the shardings of `jit_init`'s abstract
    state; default: replicated), batch split over the devices (``parallel.data_sharding``).
    With ``frozen_sharding`` (a sharding or a tree of them, e.g. `frozen_shardings`) the step
    takes a 4th argument ``frozen`` laid out so (`train_step`; `bind_frozen` fixes it).

    The returned function holds its own compilation cache: build it once (``config.build``)
    and pass it around to reuse the compiled step.
    """
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    st = _state_sharding(state_sharding, mesh)
    fn = functools.partial(train_step, loss_fn=loss_fn, tx=tx, schedule=schedule,
                           ema_rate=float(ema_rate), ema_warmup=bool(ema_warmup),
                           grad_accum_steps=int(grad_accum_steps), state_inputs=bool(state_inputs),
                           per_example_noise=bool(per_example_noise))
    ins = (st, dat, rep) if frozen_sharding is None else (st, dat, rep, frozen_sharding)
    return jax.jit(fn, in_shardings=ins, out_shardings=(st, rep), donate_argnums=0)


def jit_eval_step(loss_fn: Callable, mesh, *, state_sharding: Any = None,
                  state_inputs: bool = False, frozen_sharding: Any = None) -> Callable:
    """``eval_step`` jitted over ``mesh`` (state as ``state_sharding``, default replicated;
    batch split over the devices; ``frozen`` as ``frozen_sharding``, as `jit_train_step`)."""
    rep, dat = parallel.replicated(mesh), parallel.data_sharding(mesh)
    st = _state_sharding(state_sharding, mesh)
    ins = (st, dat, rep) if frozen_sharding is None else (st, dat, rep, frozen_sharding)
    return jax.jit(functools.partial(eval_step, loss_fn=loss_fn, state_inputs=bool(state_inputs)),
                   in_shardings=ins, out_shardings=rep)


def frozen_shardings(frozen: Any, mesh, min_size: int = parallel.MIN_SHARD_SIZE) -> Any:
    """The layout of a ``frozen`` tree (arrays or ``ShapeDtypeStruct`` s): the parameters' rule
    (``parallel.state_shardings``: FSDP-sharded on a mesh with an ``"fsdp"`` axis, else
    replicated)."""
    return parallel.state_shardings(frozen, mesh, min_size)


class bind_frozen:  # noqa: N801 (used like functools.partial)
    """``step(state, batch, key)`` = ``jitted(state, batch, key, frozen)``: a step of
    `jit_train_step` / `jit_eval_step` with its ``frozen`` argument fixed, called like a step
    without one; ``lower(state, batch, key)`` lowers the jitted step with ``frozen`` as an
    argument (its arrays are not constants of the compiled step). ``frozen`` is put on its
    devices once, as ``sharding``, into buffers of its own: the train step donates the state, and
    an array shared with it (a student initialised from its teacher's weights) would be read
    after it was overwritten."""

    def __init__(self, jitted: Callable, frozen: Any, sharding: Any = None, copy: bool = True):
        self.jitted = jitted
        if sharding is not None:
            frozen = jax.device_put(frozen, sharding)
        self.frozen = jax.tree_util.tree_map(jnp.copy, frozen) if copy else frozen

    def __call__(self, state, batch, key):
        return self.jitted(state, batch, key, self.frozen)

    def lower(self, state, batch, key):
        return self.jitted.lower(state, batch, key, self.frozen)


def jit_init(model: nn.Module, tx: optax.GradientTransformation,
             image_shape: tuple[int, int, int], mesh, *,
             num_classes: int | None = None,
             min_shard_size: int = parallel.MIN_SHARD_SIZE) -> tuple[Callable, Any]:
    """``init_state`` jitted straight into its shardings (``parallel.state_shardings``:
    replicated, or FSDP-sharded on a mesh with an ``"fsdp"`` axis, leaves of at least
    ``min_shard_size`` elements), and the abstract (shape-only, sharded) state that orbax
    restores into. Returns ``(init_fn(key) -> TrainState, abstract_state)``; the shardings are
    ``jax.tree.map(lambda a: a.sharding, abstract_state)``."""
    init = functools.partial(init_state, model=model, tx=tx, image_shape=tuple(image_shape),
                             num_classes=num_classes)
    abstract = jax.eval_shape(init, jax.random.key(0))
    shardings = parallel.state_shardings(abstract, mesh, min_shard_size)
    return (jax.jit(init, out_shardings=shardings),
            parallel.with_shardings(abstract, shardings))


def state_sharding_of(abstract_state: Any) -> Any:
    """The tree of shardings carried by an abstract state (`jit_init`)."""
    return jax.tree_util.tree_map(lambda a: a.sharding, abstract_state)


__all__ = ["TrainState", "OPTIMIZERS", "make_optimizer", "FusedAdam", "init_state", "ema_decay", "ema_init_weight",
           "train_step", "eval_step",
           "jit_train_step", "jit_eval_step", "jit_init", "example_keys", "loss_and_grad",
           "accumulated_loss_and_grad", "state_sharding_of", "frozen_shardings", "bind_frozen"]
