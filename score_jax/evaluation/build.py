"""Evaluators built once from what a config gives: the training loop's (``training_evaluators``)
and evaluate.py's (``workdir_evaluators``). Every evaluator has ``run(step, state) -> {metric:
value}`` (``evaluation.evaluators``); the loop and ``workdir.evaluate_workdir`` only call them.

This is the one place where ``config.eval`` / ``config.training`` decide which evaluators run
(the test loss, bits/dim, samples with FID / IS / KID, snapshot grids, and the metrics of
samples a dataset defines: ``evaluators.sample_metrics``, the digits metric for DIGITS).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from score_jax.evaluation import evaluators as ev

SNAPSHOT_DIGITS_SAMPLES = 256  # at least this many snapshot samples score a DIGITS run


@dataclasses.dataclass
class TrainingEvaluators:
    """The training loop's evaluators: ``every_eval`` run at multiples of ``training.eval_freq``
    (and the last step), before the checkpoint; ``every_snapshot`` at multiples of
    ``training.snapshot_freq`` (and the last step), after it."""

    every_eval: list
    every_snapshot: list


def training_evaluators(config, built, workdir: str, *, eval_ds, start: int, k_eval: jax.Array,
                        k_sample: jax.Array, write: Callable[[str], None],
                        log, image_hook: Callable | None = None) -> TrainingEvaluators:
    """The evaluation loss of one batch per ``eval_freq`` (batch ``start // eval_freq`` first, so a
    resumed run continues the sequence), and, with ``training.snapshot_sampling``, a snapshot:
    stage-1 reconstructions for the latent autoencoder objective, else
    ``sampling.num_samples`` EMA samples (one row per class for class-conditional models) with
    the dataset's sample metrics on ``max(sampling.num_samples,
    training.snapshot_metric_samples or SNAPSHOT_DIGITS_SAMPLES)`` samples (the grid's first)."""
    from score_jax import sample_lib

    t = config.training
    every_eval = [ev.BatchLossEvaluator(built.eval_step, eval_ds.iterate(start // int(t.eval_freq)),
                                        built.mesh, k_eval)]
    every_snapshot = []
    scale = max(1, 64 // int(config.data.image_size))
    if t.snapshot_sampling and built.objective_spec.sampler is None:  # an autoencoder
        def save_fn(params, images, d):
            return sample_lib.save_reconstructions(built.model, params, images, d, scale=scale)

        every_snapshot.append(ev.ReconstructionEvaluator(
            save_fn, lambda: np.asarray(next(eval_ds.iterate(0))["image"]), workdir, write=write))
    elif t.snapshot_sampling:
        n_grid = int(config.sampling.num_samples)
        metrics = ev.sample_metrics(config.data.dataset)
        # class-conditional models: one row per class (the metric is then that of the grid's
        # samples: the floor is for the same N)
        labels, nrow = sample_lib.snapshot_labels(built.num_classes, n_grid)
        if labels is not None:
            n_grid = len(labels)
        n_metric = t.get("snapshot_metric_samples") or SNAPSHOT_DIGITS_SAMPLES
        n = max(n_grid, int(n_metric)) if metrics and labels is None else n_grid
        batch_size = config.sampling.get("batch_size")

        def sample_fn(key, params, num, labels):
            return sample_lib.sample_built(key, built, params, num, batch_size=batch_size,
                                           labels=labels)

        every_snapshot.append(ev.SnapshotEvaluator(
            sample_fn, k_sample, workdir, num_samples=n, num_grid=n_grid, labels=labels,
            nrow=nrow, scale=scale, metrics=metrics, write=write, log=log,
            ema_rate=built.ema_rate, ema_warmup=built.ema_warmup, image_hook=image_hook))
    return TrainingEvaluators(every_eval, every_snapshot)


def workdir_evaluators(config, built, eval_dir: str, *, keys: tuple, num_samples: int,
                       bpd_repeats: int, per_process: int, inception_fn: Callable | None,
                       reference: Any, save_samples: bool, progress: bool,
                       should_stop: Callable[[], bool], eval_ds=None, bpd_ds=None) -> list:
    """evaluate.py's evaluators of ``config.eval``: ``enable_loss`` (``LossEvaluator`` over the
    evaluation split), ``enable_bpd`` (``BpdEvaluator`` of ``eval.bpd_dataset``,
    ``sample_lib.make_logp_fn``), ``enable_sampling`` (``SampleEvaluator`` with the dataset's
    sample metrics), each writing into ``eval_dir``; ``keys`` = (loss, bpd, sample) keys."""
    from score_jax import config as config_lib
    from score_jax import parallel, sample_lib

    e, mesh = config.eval, built.mesh
    k_loss, k_bpd, k_sample = keys
    common = dict(progress=progress, should_stop=should_stop, eval_dir=eval_dir)
    out = []
    if e.enable_loss:
        if eval_ds is None:
            eval_ds = config_lib.dataset_from_config(config, config_lib.eval_split(config),
                                                     batch_size=e.batch_size, training=False)
        out.append(ev.LossEvaluator(built.eval_step, eval_ds, mesh, k_loss, **common))
    if e.enable_bpd:
        if bpd_ds is None:
            bpd_ds = config_lib.dataset_from_config(config, e.bpd_dataset,
                                                    batch_size=e.batch_size, training=False,
                                                    uniform_dequantization=False)
        logp_fn = sample_lib.make_logp_fn(built, rtol=float(config.sampling.rtol),
                                          atol=float(config.sampling.atol))
        out.append(ev.BpdEvaluator(
            logp_fn, bpd_ds, mesh, k_bpd, num_repeats=bpd_repeats, centered=built.centered,
            max_batches=e.get("bpd_max_batches"), dataset_name=e.bpd_dataset, **common))
    if e.enable_sampling:
        if jax.process_count() == 1:
            sample_mesh = mesh
        else:  # every process samples its own rounds (own keys) on its own devices
            sample_mesh = jax.sharding.Mesh(np.asarray(jax.local_devices()),
                                            (parallel.DATA_AXIS,))

        def sample_fn(key, params, n):
            if jax.process_count() > 1:
                if all(a.sharding.is_fully_replicated for a in jax.tree_util.tree_leaves(params)):
                    params = jax.tree_util.tree_map(lambda a: np.asarray(a.addressable_data(0)),
                                                    params)
                else:  # FSDP-sharded (parallel.fsdp > 1): gathered by every process
                    params = parallel.to_host(params)
                params = parallel.replicate(params, sample_mesh)
            images, _ = sample_lib.sample_built(key, built, params, n, batch_size=n,
                                                mesh=sample_mesh)
            return images

        out.append(ev.SampleEvaluator(
            sample_fn, k_sample, num_samples=num_samples, batch_size=per_process,
            inception_fn=inception_fn, reference=reference, save_samples=save_samples,
            metrics=ev.sample_metrics(config.data.dataset), **common))
    return out


__all__ = ["SNAPSHOT_DIGITS_SAMPLES", "TrainingEvaluators", "training_evaluators",
           "workdir_evaluators"]
