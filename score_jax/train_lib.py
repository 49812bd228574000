"""The training loop: ``train_and_evaluate(config, workdir)``.

The config is turned into objects by ``config.build`` (validated before any compilation); the
steps are ``train_step``'s; evaluation (the evaluation loss, snapshot samples and their metrics)
is the evaluators' of ``evaluation.build.training_evaluators``, each ``run(step, state)``. Per-step randomness is
``fold_in(key, step)`` and the data of step ``s`` is a pure function of ``(seed, s)`` (the grain
pipeline's iterator state is saved in each checkpoint), so a run resumed from a checkpoint
continues bit for bit as if it had never stopped. Preemption: the
caller passes ``should_stop`` (train.py passes the event of ``preemption.sigterm()``); the loop
saves at the next step boundary and returns.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import numpy as np

from score_jax import checkpoint as ckpt_lib
from score_jax import config as config_lib
from score_jax import latent as latent_lib
from score_jax import parallel, preemption
from score_jax.evaluation.build import SNAPSHOT_DIGITS_SAMPLES, training_evaluators
from score_jax.evaluation.evaluators import EMA_INIT_WARN, EMA_RAW_WARN_MIN, EMA_RAW_WARN_RATIO, ema_snapshot_warnings
from score_jax.train_step import TrainState

log = logging.getLogger("score_jax.train")


class NonFiniteLossError(FloatingPointError):
    """Training produced a non-finite loss or gradient."""


def check_labels(batch, num_classes: int | None) -> None:
    """A class-conditional model trains on labels in [0, num_classes) only (label num_classes is
    the null label of classifier-free guidance); raise ValueError naming the bad labels."""
    if num_classes is None or not isinstance(batch, dict) or "label" not in batch:
        return
    labels = np.asarray(batch["label"])
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if bad.size:
        raise ValueError(f"the data has labels {sorted(set(bad.tolist()))} outside [0, "
                         f"{num_classes}) for config.model.num_classes={num_classes}; set "
                         f"model.num_classes to the dataset's number of classes")


class _Progress:
    """tqdm bar whose rates are measured between synchronised points (the host waited for the
    step's loss), so steps/s, images/s and the ETA are true, not dispatch rates."""

    def __init__(self, total: int, start: int, batch_size: int, enabled: bool):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=start, disable=not enabled, unit="step",
                        dynamic_ncols=True, desc="train")
        self.batch_size, self.total = batch_size, total
        self.t_last, self.n_last = time.perf_counter(), start

    def synced(self, done: int, loss: float) -> float:
        """Record that step ``done`` finished (its results are on the host); returns steps/s."""
        now = time.perf_counter()
        rate = (done - self.n_last) / max(now - self.t_last, 1e-9)
        self.t_last, self.n_last = now, done
        self.bar.n = done
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        self.bar.set_postfix(loss=f"{loss:.4f}", steps_s=f"{rate:.2f}",
                             img_s=f"{rate * self.batch_size:.0f}",
                             eta=time.strftime("%H:%M:%S", time.gmtime(min(eta, 359999))),
                             refresh=False)
        self.bar.refresh()
        return rate

    def restart_clock(self) -> None:
        """Exclude host work (evaluation, checkpoints, sampling) from the next interval."""
        self.t_last = time.perf_counter()

    def write(self, msg: str) -> None:
        self.bar.write(msg)

    def close(self) -> None:
        self.bar.close()


def train_and_evaluate(config, workdir: str, *, model: nn.Module | None = None,
                       train_ds=None, eval_ds=None, mesh=None,
                       callbacks: Iterable[Callable[[int, dict], None]] = (),
                       should_stop: Callable[[], bool] = preemption.never) -> TrainState:
    """Train ``config`` in ``workdir``, resuming from its latest checkpoint.

    Writes ``<workdir>/checkpoints`` (orbax: the latest, plus every multiple of
    ``training.snapshot_freq``), ``<workdir>/samples/iter_<step>/samples.{png,npz}`` at
    snapshots (with the dataset's sample metrics, e.g. the quality metric of the 8x8 set:
    ``evaluation.build.training_evaluators``, which builds every evaluator the loop runs), and
    TensorBoard events in ``<workdir>/tensorboard``. When ``should_stop()``
    becomes true (all processes agree at log steps), it saves at the next step boundary and
    returns.

    Args:
      model / train_ds / eval_ds / mesh: override the config-built ones (tests, notebooks).
      callbacks: ``fn(step, host_metrics)`` called on process 0 after each logged step.
      should_stop: polled after every step (e.g. ``preemption.sigterm()``'s ``event.is_set``).

    Raises:
      ValueError: invalid config (before any compilation), or data labels outside
        [0, model.num_classes) (before the first step with such a batch).
      CheckpointError: the workdir's checkpoint cannot be restored.
      NonFiniteLossError: the loss became NaN / inf; the last checkpoint is left untouched.
    """
    t_enter = time.perf_counter()
    if config_lib.is_latent(config):  # stage 2: scale factor from latent.json or 1st batch
        config = _resolve_latent(config, workdir, train_ds)
    teacher = load_teacher(config, mesh=mesh, model=model)  # objective "distill", else None
    # the teacher's weights are an argument of the jitted step (sharded like the parameters),
    # not constants compiled into it
    b = config_lib.build(config, mesh=mesh, model=model,
                         teacher=None if teacher is None else teacher["frozen_teacher"],
                         frozen=None if teacher is None else {"teacher": teacher["params"]})
    mesh = b.mesh
    t = config.training
    is_main = jax.process_index() == 0
    os.makedirs(workdir, exist_ok=True)
    if train_ds is None:
        train_ds = config_lib.dataset_from_config(config, "train", training=True,
                                                  batch_size=t.batch_size)
    if eval_ds is None:
        eval_ds = config_lib.dataset_from_config(config, config_lib.eval_split(config),
                                                 training=False,
                                                 batch_size=config.eval.batch_size)

    checkpointer = ckpt_lib.TrainCheckpointer(workdir, keep_period=int(t.snapshot_freq),
                                              asynchronous=bool(t.get("async_checkpoints", True)))
    key = jax.random.key(int(config.seed))
    k_init, k_train, k_eval, k_sample = jax.random.split(key, 4)
    latest = checkpointer.latest_step()
    if latest is not None:
        state, meta = checkpointer.restore(b.abstract_state, latest)
        if meta.get("batch_size") not in (None, t.batch_size):
            log.warning("resuming with batch_size %d, the checkpoint was written with %s: the "
                        "data order differs from an uninterrupted run", t.batch_size,
                        meta.get("batch_size"))
        log.info("resumed from %s at step %d", checkpointer.directory, int(state.step))
        saved_data = meta.get("data_iterator")
        if hasattr(train_ds, "resume_step"):  # the grain pipeline's iterator state
            _, diffs = train_ds.resume_step(saved_data, int(state.step))
            if diffs:
                log.warning("resuming with another data stream than the checkpoint's (the data "
                            "order differs from an uninterrupted run): %s", "; ".join(diffs))
    else:
        state = b.init(k_init)
        if teacher is not None and config.distill.init_from_teacher:  # CM, ECT, PD: start there
            # laid out as the student's state (replicated or FSDP-sharded)
            params = jax.device_put(teacher["params"], jax.tree_util.tree_map(
                lambda a: a.sharding, state.params))
            state = state.replace(params=params,
                                  ema_params=jax.tree_util.tree_map(lambda p: p.copy(), params))
    if is_main:
        with open(os.path.join(workdir, "config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    writer = None
    if is_main:
        from tensorboardX import SummaryWriter
        writer = SummaryWriter(os.path.join(workdir, "tensorboard"))

    start, n_iters = int(state.step), int(t.n_iters)
    log_freq, eval_freq = int(t.log_freq), int(t.eval_freq)
    meta = {"batch_size": int(t.batch_size), "seed": int(config.seed),
            "dataset": config.data.dataset}
    multi = jax.process_count() > 1

    def save(step, wait=False):
        """Checkpoint ``step``; asynchronous unless ``wait`` (preemption: complete before exit).
        The data iterator's state (the grain pipeline's) goes into the JSON record. The time the
        loop was blocked goes to TensorBoard as ``checkpoint_block_sec``."""
        t0 = time.perf_counter()
        record = dict(meta, step=int(step))
        if hasattr(train_ds, "state"):
            record["data_iterator"] = train_ds.state(int(step))
        checkpointer.save(step, state, record, wait=wait)
        blocked = time.perf_counter() - t0
        log.info("checkpoint step %d: the loop was blocked %.3f s", step, blocked)
        if is_main:
            writer.add_scalar("checkpoint_block_sec", blocked, step)
        if b.objective_spec.sampler is None:  # stage 1 (the autoencoder): what stage 2 loads
            ema = parallel.to_host(state.ema_params)  # all processes: FSDP shards are gathered
            if is_main:
                latent_lib.export_autoencoder(workdir, ema)

    profile = _ProfileWindow(t.get("profile_steps"), workdir)
    # host batches (grain workers) laid out on the mesh by a thread, data.prefetch steps ahead
    data_iter = parallel.prefetch_to_device(train_ds.iterate(start), mesh,
                                            size=int(config.data.get("prefetch", 2)))
    pending: list[tuple[int, dict]] = []
    bar = _Progress(n_iters, start, int(t.batch_size), is_main)
    evaluators = training_evaluators(config, b, workdir, eval_ds=eval_ds, start=start,
                                     k_eval=k_eval, k_sample=k_sample, write=bar.write, log=log,
                                     image_hook=_tensorboard_image(writer))

    def run_evaluators(group, step):
        for evaluator in group:
            for k, v in evaluator.run(step, state).items():
                if is_main:
                    writer.add_scalar(k, v, step)
        bar.restart_clock()
    try:
        for step in range(start, n_iters):
            profile.before(step)
            host_batch, batch = next(data_iter)
            check_labels(host_batch, b.num_classes)
            state, metrics = b.train_step(state, batch, k_train)
            done = step + 1
            profile.after(done, state)
            pending.append((done, metrics))
            last = done == n_iters
            if done % log_freq == 0 or last:
                host = jax.device_get([m for _, m in pending])  # blocks: a synchronised point
                for (s_, _), m in zip(pending, host, strict=True):
                    if not bool(m["finite"]):
                        raise NonFiniteLossError(
                            f"non-finite training loss at step {s_}: loss={float(m['loss'])}, "
                            f"grad_norm={float(m['grad_norm'])}, lr={float(m['lr']):.3g}. "
                            f"Training stopped; the state was not updated by that step and no "
                            f"checkpoint was written after it (latest checkpoint: step "
                            f"{checkpointer.latest_step()} in {checkpointer.directory}). Lower "
                            f"optim.lr, keep optim.grad_clip >= 0, or check the data.")
                m = host[-1]
                if pending[0][0] == start + 1:
                    log.info("first step done %.1f s after train_and_evaluate started "
                             "(build, restore and compilation included)",
                             time.perf_counter() - t_enter)
                rate = bar.synced(done, float(m["loss"]))
                if is_main:
                    writer.add_scalar("training_loss", float(m["loss"]), done)
                    writer.add_scalar("grad_norm", float(m["grad_norm"]), done)
                    writer.add_scalar("lr", float(m["lr"]), done)
                    writer.add_scalar("steps_per_sec", rate, done)
                    writer.add_scalar("images_per_sec", rate * t.batch_size, done)
                    for cb in callbacks:
                        cb(done, {k: np.asarray(v) for k, v in m.items()})
                pending.clear()
            if done % eval_freq == 0 or last:
                run_evaluators(evaluators.every_eval, done)
            # one process alone must not save: several processes agree at log steps
            if (not multi or done % log_freq == 0) and preemption.agree(should_stop, sync=multi):
                save(done, wait=True)
                log.warning("preemption requested: saved step %d to %s", done,
                            checkpointer.directory)
                bar.write(f"preempted: checkpoint saved at step {done}; run the same command "
                          f"again to resume")
                return state
            if (done % int(t.snapshot_freq_for_preemption) == 0
                    or done % int(t.snapshot_freq) == 0 or last):
                save(done)
                bar.restart_clock()
            if evaluators.every_snapshot and (done % int(t.snapshot_freq) == 0 or last):
                run_evaluators(evaluators.every_snapshot, done)
    finally:
        data_iter.close()  # stops the prefetch thread and grain's workers
        profile.stop()
        bar.close()
        if writer is not None:
            writer.flush()
            writer.close()
        checkpointer.close()
    return state


def load_teacher(config, *, mesh=None, model: nn.Module | None = None) -> dict | None:
    """The teacher of objective "distill": ``{"params", "denoiser", "frozen_teacher", "source",
    "step"}`` (``frozen_teacher``: ``distill.FrozenTeacher`` building the denoiser from weights
    passed to the step as ``frozen["teacher"]``; ``denoiser``: it with ``params`` bound) from
    ``distill.teacher_workdir`` (its EMA weights, step ``distill.teacher_step`` or the latest) or
    ``distill.teacher_checkpoint`` (a converted file), read with this config's network and SDE and
    objective ``distill.teacher_objective``; the denoiser is ``distill.teacher_denoiser`` of its
    score. None for other objectives, and for "ct" without a teacher (training from scratch).

    Raises ValueError when "cd" / "pd" has no teacher; CheckpointError / FileNotFoundError as
    ``sample_lib.load_params``."""
    from score_jax import distill as distill_lib

    if config_lib.objective_from_config(config) != "distill":
        return None
    d = config.distill
    workdir, ckpt = d.get("teacher_workdir"), d.get("teacher_checkpoint")
    if workdir is None and ckpt is None:
        if d.method == "ct":
            return None
        raise ValueError(f"distill.method={d.method!r} needs a teacher: set "
                         f"distill.teacher_workdir or distill.teacher_checkpoint")
    from score_jax import sample_lib

    if workdir is not None and not os.path.isdir(workdir):
        raise FileNotFoundError(f"the distillation teacher --config.distill.teacher_workdir="
                                f"{workdir!r} does not exist; train the teacher first (python "
                                f"train.py --workdir={workdir}) or point it at a trained workdir")
    tconfig = config.copy_and_resolve_references()
    tconfig.training.objective = d.teacher_objective
    try:
        params, info = sample_lib.load_params(tconfig, workdir=workdir, checkpoint=ckpt,
                                              step=d.get("teacher_step"), mesh=mesh, model=model)
    except (ckpt_lib.CheckpointError, FileNotFoundError) as e:
        what = (f"--config.distill.teacher_workdir={workdir!r}" if workdir is not None
                else f"--config.distill.teacher_checkpoint={ckpt!r}")
        raise type(e)(f"the distillation teacher {what} cannot be loaded: {e}") from e
    built = info["built"]

    def denoiser_of(p):
        return distill_lib.teacher_denoiser(built.make_score_fn(p), built.sde)

    log.info("distillation teacher: %s (step %s)", info["source"], info["step"])
    return {"params": params, "denoiser": denoiser_of(params),
            "frozen_teacher": distill_lib.FrozenTeacher(denoiser_of), "source": info["source"],
            "step": info["step"]}


def _tensorboard_image(writer):
    """``image_hook`` of the snapshot evaluator: the sample grid as TensorBoard image ``samples``
    (process 0, which holds the writer)."""
    if writer is None:
        return None
    return lambda step, grid: writer.add_image("samples", grid, step, dataformats="HWC")


class _ProfileWindow:
    """``training.profile_steps = (start, stop)``: a ``jax.profiler`` trace of the train steps
    ``start .. stop - 1`` (the steps that take ``state.step`` from ``start`` to ``stop``), written
    by every process (jax's recommendation for multi-host profiles) to
    ``<workdir>/tensorboard/plugins/profile/<run>/<host>.xplane.pb`` (process 0; process ``i > 0``
    under ``tensorboard/process_<i>``), which TensorBoard's profile plugin reads. None: off.
    The trace stops after the last step's results are ready (``block_until_ready``)."""

    def __init__(self, steps, workdir: str):
        self.window = None if steps is None else (int(steps[0]), int(steps[1]))
        sub = "" if jax.process_index() == 0 else f"process_{jax.process_index()}"
        self.log_dir = os.path.join(workdir, "tensorboard", sub)
        self.active = False

    def before(self, step: int) -> None:
        if self.window is None or self.active:
            return
        first, stop = self.window
        if first <= step < stop:  # a run resumed inside the window traces its remaining steps
            jax.profiler.start_trace(self.log_dir)
            self.active = True
            log.info("profiling steps %d..%d into %s", step, stop - 1, self.log_dir)

    def after(self, done: int, state) -> None:
        if self.active and done >= self.window[1]:
            jax.block_until_ready(state)
            self.stop()
            self.window = None  # once per run

    def stop(self) -> None:
        if self.active:
            self.active = False
            jax.profiler.stop_trace()


def _resolve_latent(config, workdir, train_ds):
    """Stage 2: ``latent.scale_factor`` from ``<workdir>/latent.json``, the config, or 1 / std
    of the first training batch's latents (``config.resolve_latent_scale_factor``)."""
    config_lib.validate_latent(config)

    def first_batch():
        ds = train_ds or config_lib.dataset_from_config(config, "train", training=True,
                                                        batch_size=config.training.batch_size)
        # step 0's batch, read directly (no grain worker processes started for one batch)
        return ds.batch(0) if hasattr(ds, "batch") else next(ds.iterate(0))

    return config_lib.resolve_latent_scale_factor(config, workdir, first_batch)


__all__ = ["SNAPSHOT_DIGITS_SAMPLES", "EMA_INIT_WARN", "EMA_RAW_WARN_RATIO", "EMA_RAW_WARN_MIN",
           "ema_snapshot_warnings", "NonFiniteLossError", "check_labels", "load_teacher",
           "train_and_evaluate"]
