"""Evaluators: built once, then ``run(step, state) -> {metric: value}`` per checkpoint or
snapshot, the one signature of every evaluator (big_vision ``evaluators/common.py``).

The pure metrics live below (``metrics``: FD / KID / IS; ``likelihood``: bits/dim; ``digits``);
an evaluator holds what it needs to apply them to a train state (dataset, compiled function,
keys, where to write) and is built from what a config gives by ``evaluation.build`` for the
training loop (``training_evaluators``) and for evaluate.py (``workdir_evaluators``) alike.

* ``LossEvaluator``, ``BpdEvaluator``, ``SampleEvaluator``: one checkpoint of a workdir, with
  ``eval_dir``: their numbers are merged into ``report_{step}.json`` (``run.update_report``), in
  resumable rounds; ``should_stop`` is polled at round boundaries (one process only: several
  processes stop at checkpoint boundaries, see ``workdir.evaluate_workdir``).
* ``BatchLossEvaluator``, ``SnapshotEvaluator``, ``ReconstructionEvaluator``: the training
  loop's (one evaluation batch; a sample grid and its metrics; stage-1 reconstructions).

``state`` is a ``train_step.TrainState`` (the EMA parameters are used unless ``use_ema=False``)
or, for tests, the parameters themselves. Metrics of samples are ``SampleMetric`` records chosen
by the dataset (``sample_metrics(dataset)``: the digits quality metric for DIGITS), so no
evaluator or loop branches on a dataset name.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np

from score_jax.evaluation import run as run_lib
from score_jax.evaluation.metrics import inception_score
from score_jax.files import atomic_savez as _atomic_savez

log = logging.getLogger("score_jax.evaluate")

LOSS_KEY, BPD_KEY = "eval_loss", "bpd"
DRAWN_KEY = "num_samples_drawn"  # samples drawn and saved, no Inception weights given


DIGITS_KEYS = ("fd", "fd_floor", "fd_ratio", "fd_floor_fresh", "fd_ratio_fresh", "is",
               "copy_fraction")  # reported as digits_<key>


def is_digits(dataset: str | None) -> bool:
    """Whether a config's ``data.dataset`` is the embedded 8 x 8 digits (scored by the digits
    quality metric, ``score_jax.evaluation.digits``)."""
    return str(dataset).upper() == "DIGITS"


def digits_report(images: Any, reference: Any = None) -> dict[str, float]:
    """The digits quality metric of ``images`` as flat, prefixed scalars.

    Args:
      images: ``(N, S, S, 1)`` samples in [0, 1] (float; NaN / inf count as 0) or uint8, N >= 2.
      reference: ``digits.digits_reference(S)`` to reuse; default computed.

    Returns:
      ``{"digits_fd", "digits_fd_floor", "digits_fd_ratio", "digits_fd_floor_fresh",
      "digits_fd_ratio_fresh", "digits_is", "digits_copy_fraction", "digits_is_real",
      "digits_num_samples"}`` (``digits.digits_metrics``: FD in the classifier's hidden features
      against all 1797 real digits; the floor of N of those digits (what copying the training
      set scores) and the fresh floor (what N new digits of the data distribution score), each
      with its ratio; inception-style score; the share of near-copies of training digits; the
      floors are for the same N as the samples).

    Raises:
      ValueError: fewer than 2 samples or images of the wrong shape / range.
    """
    from score_jax.evaluation import digits

    x = np.asarray(images)
    if x.dtype != np.uint8:
        x = np.clip(np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    m = digits.digits_metrics(x, reference=reference)
    out = {f"digits_{k}": float(m[k]) for k in DIGITS_KEYS}
    out["digits_is_real"] = float(m["is_real"])
    out["digits_num_samples"] = int(m["num_samples"])
    return out


def format_digits_report(report: dict) -> str:
    """One line, e.g. ``digits FD 1.15 (N=1000; floor 0.274: 4.19x; fresh floor 1.01: 1.14x)
    IS 9.31 (real 9.92)  copies 0.0%``."""
    return (f"digits FD {report['digits_fd']:.4g} (N={report['digits_num_samples']}; floor "
            f"{report['digits_fd_floor']:.4g}: {report['digits_fd_ratio']:.2f}x; fresh floor "
            f"{report['digits_fd_floor_fresh']:.4g}: {report['digits_fd_ratio_fresh']:.2f}x)  IS "
            f"{report['digits_is']:.3f} (real {report['digits_is_real']:.3f})  copies "
            f"{100 * report['digits_copy_fraction']:.1f}%")


@dataclasses.dataclass(frozen=True)
class SampleMetric:
    """A metric of a batch of samples: ``fn(images (N, H, W, C) in [0, 1] or uint8) -> {key:
    value}``, applied when N >= ``min_samples``; ``scalars`` the keys logged as scalars
    (TensorBoard), ``format(report)`` one console line."""

    fn: Callable[[Any], dict]
    format: Callable[[dict], str]
    scalars: tuple[str, ...] = ()
    min_samples: int = 2

    def __call__(self, images: Any) -> dict:
        return self.fn(images)


class _DigitsReport:
    """``digits_report`` with its reference statistics computed once per image size."""

    def __init__(self):
        self.refs: dict[int, Any] = {}

    def __call__(self, images: Any) -> dict:
        from score_jax.evaluation import digits

        size = int(np.shape(images)[1])
        if size not in self.refs:
            self.refs[size] = digits.digits_reference(size)
        return digits_report(images, self.refs[size])


def sample_metrics(dataset: str | None) -> tuple[SampleMetric, ...]:
    """The metrics of samples a dataset defines: DIGITS -> the digits quality metric
    (``digits_report``, logged as ``digits_<DIGITS_KEYS>``); other datasets -> none (their FID /
    IS / KID need Inception weights: ``SampleEvaluator``)."""
    if is_digits(dataset):
        return (SampleMetric(_DigitsReport(), format_digits_report,
                             tuple(f"digits_{k}" for k in DIGITS_KEYS)),)
    return ()


def params_of(state: Any, use_ema: bool = True) -> Any:
    """The parameters an evaluator uses: ``state.ema_params`` (or ``state.params`` with
    ``use_ema=False``) of a ``TrainState``; anything else is taken as the parameters."""
    if hasattr(state, "ema_params"):
        return state.ema_params if use_ema else state.params
    return state


class Preempted(Exception):
    """Raised at a round boundary once ``should_stop()`` is true."""


def round_check(should_stop: Callable[[], bool]) -> None:
    # Round-level checks are local: on several processes they would let one process stop while
    # the others wait in a collective, so there only checkpoint boundaries (synchronised) count.
    if jax.process_count() == 1 and should_stop():
        raise Preempted


def local_rows(x: jax.Array) -> np.ndarray:
    """This process's rows of a batch-sharded global array."""
    if x.is_fully_addressable:
        return np.asarray(x)
    shards = {s.index[0].start or 0: s.data for s in x.addressable_shards}
    return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)], axis=0)


class Images:
    """Re-iterable images of one in-order pass of a pipeline, at most ``max_batches`` batches."""

    def __init__(self, ds, max_batches: int | None = None):
        self.ds, self.max_batches = ds, max_batches

    def __iter__(self) -> Iterator[np.ndarray]:
        for i, batch in enumerate(self.ds.epoch()):
            if self.max_batches is not None and i >= self.max_batches:
                return
            yield batch["image"]


def _key_bytes(key: jax.Array) -> bytes:
    return np.asarray(jax.random.key_data(key)).tobytes()


def count_rounds(directory: str, prefix: str, n: int) -> int:
    """How many of ``{prefix}_{r}.npz``, r < n, exist in ``directory``."""
    return sum(os.path.exists(os.path.join(directory, f"{prefix}_{r}.npz")) for r in range(n))


def tqdm_bar(progress: bool, **kwargs):
    """A tqdm bar on process 0 when ``progress``."""
    from tqdm.auto import tqdm

    return tqdm(disable=not (progress and jax.process_index() == 0), dynamic_ncols=True,
                **kwargs)


class LossEvaluator:
    """The test loss: the mean of the jitted ``eval_step`` over one in-order pass of ``ds``
    (reference ``eval_step`` loop), batch i with key ``fold_in(key, i)``."""

    key_name = LOSS_KEY

    def __init__(self, eval_step: Callable, ds, mesh, key: jax.Array, *, progress: bool,
                 should_stop: Callable[[], bool], eval_dir: str):
        self.eval_step, self.ds, self.mesh, self.key = eval_step, ds, mesh, key
        self.progress, self.should_stop, self.eval_dir = progress, should_stop, eval_dir

    def run(self, step: int, state: Any) -> dict:
        from score_jax import parallel

        eval_dir = self.eval_dir
        losses = []
        bar = tqdm_bar(self.progress, desc=f"step {step}: test loss", unit="batch", leave=False)
        for i, batch in enumerate(self.ds.epoch()):
            round_check(self.should_stop)
            batch = parallel.to_global(batch, self.mesh)
            losses.append(self.eval_step(state, batch, jax.random.fold_in(self.key, i)))
            bar.update(1)
        bar.close()
        if not losses:
            raise ValueError("the evaluation split has no full batch of eval.batch_size")
        loss = float(np.mean(jax.device_get(losses)))
        run_lib.update_report(eval_dir, step, {LOSS_KEY: loss,
                                               "eval_loss_num_batches": len(losses)})
        log.info("step %d: test loss %.5f (%d batches)", step, loss, len(losses))
        return {LOSS_KEY: loss}


class BpdEvaluator:
    """Bits/dim of a dataset with ``num_repeats`` uniform dequantisations, in resumable rounds
    (``run.evaluate_bpd``); ``logp_fn(key, params, y)`` is ``sample_lib.make_logp_fn``'s."""

    key_name = BPD_KEY

    def __init__(self, logp_fn: Callable, ds, mesh, key: jax.Array, *, num_repeats: int,
                 centered: bool, max_batches: int | None, dataset_name: str, progress: bool,
                 should_stop: Callable[[], bool], eval_dir: str, use_ema: bool = True):
        self.logp_fn, self.ds, self.mesh, self.key = logp_fn, ds, mesh, key
        self.eval_dir, self.use_ema = eval_dir, use_ema
        self.num_repeats, self.centered, self.max_batches = num_repeats, centered, max_batches
        self.dataset_name, self.progress, self.should_stop = dataset_name, progress, should_stop

    def run(self, step: int, state: Any) -> dict:
        from score_jax import parallel

        params, eval_dir = params_of(state, self.use_ema), self.eval_dir
        out_dir = run_lib.host_dir(eval_dir, step)
        n_batches = getattr(self.ds, "steps_per_epoch", None)
        if n_batches is not None and self.max_batches is not None:
            n_batches = min(n_batches, int(self.max_batches))
        n_rounds = None if n_batches is None else self.num_repeats * n_batches
        bar = tqdm_bar(self.progress, desc=f"step {step}: bits/dim", unit="round", leave=False,
                       total=n_rounds,
                       initial=0 if n_rounds is None else count_rounds(out_dir, "bpd", n_rounds))

        def round_logp(key, y):
            round_check(self.should_stop)
            y = parallel.to_global(np.asarray(y), self.mesh)
            logp, _ = self.logp_fn(key, params, y)
            bar.update(1)
            return local_rows(logp)

        report = run_lib.evaluate_bpd(round_logp, Images(self.ds, self.max_batches),
                                      eval_dir=eval_dir, ckpt=step, key=self.key,
                                      num_repeats=self.num_repeats, centered=self.centered,
                                      log=log.debug)
        bar.close()
        run_lib.update_report(eval_dir, step, {"bpd_num_repeats": self.num_repeats,
                                               "bpd_dataset": self.dataset_name})
        log.info("step %d: bits/dim %.5f (%d x %d examples)", step, report[BPD_KEY],
                 self.num_repeats, report["bpd_num"] // self.num_repeats)
        return {BPD_KEY: report[BPD_KEY]}


class SampleEvaluator:
    """``num_samples`` samples in rounds of ``batch_size`` per process and, with an Inception
    network, FID / IS / KID (``run.evaluate_samples`` / ``run.sample_statistics``); without one
    the samples are saved and a later run with weights scores them instead of sampling again.

    ``sample_fn(key, params, n)`` draws ``n`` images in [0, 1] (``sample_lib.sample_built``).
    Every ``SampleMetric`` of ``metrics`` (``sample_metrics(dataset)``; DIGITS: the digits quality
    metric, ``digits_report``) is applied to the samples this process drew or saved and merged
    into the report.
    """

    def __init__(self, sample_fn: Callable, key: jax.Array, *, num_samples: int, batch_size: int,
                 inception_fn: Callable | None, reference: Any, save_samples: bool,
                 progress: bool, should_stop: Callable[[], bool], eval_dir: str,
                 metrics: Sequence[SampleMetric] = (), use_ema: bool = True):
        self.sample_fn, self.key = sample_fn, key
        self.eval_dir, self.use_ema = eval_dir, use_ema
        self.metrics = tuple(metrics)
        self.num_samples, self.batch_size = num_samples, batch_size
        self.inception_fn, self.reference, self.save_samples = inception_fn, reference, save_samples
        self.progress, self.should_stop = progress, should_stop
        self.num_rounds = math.ceil(num_samples / (batch_size * jax.process_count()))
        key_p = jax.random.fold_in(key, jax.process_index())
        self.round_of = {_key_bytes(jax.random.fold_in(key_p, r)): r
                         for r in range(self.num_rounds)}
        if inception_fn is None:
            self.key_name = DRAWN_KEY
        else:
            self.key_name = "fid" if reference is not None else "is"

    def run(self, step: int, state: Any) -> dict:
        params, eval_dir = params_of(state, self.use_ema), self.eval_dir
        out_dir = run_lib.host_dir(eval_dir, step)
        done = count_rounds(out_dir, "samples" if self.inception_fn is None else "statistics",
                            self.num_rounds)
        bar = tqdm_bar(self.progress, desc=f"step {step}: samples", unit="round", leave=False,
                       total=self.num_rounds, initial=done)

        drawn_images = []

        def draw(key):
            round_check(self.should_stop)
            r = self.round_of.get(_key_bytes(key))
            saved = None if r is None else os.path.join(out_dir, f"samples_{r}.npz")
            if saved is not None and os.path.exists(saved):  # drawn by an earlier run
                with np.load(saved, allow_pickle=False) as f:
                    images = f["samples"]
            else:
                images = self.sample_fn(key, params, self.batch_size)
            bar.update(1)
            if self.metrics:
                drawn_images.append(run_lib.quantize_samples(images))
            return images

        kw = dict(eval_dir=eval_dir, ckpt=step, num_samples=self.num_samples,
                  batch_size=self.batch_size, key=self.key, save_samples=self.save_samples,
                  log=log.debug)
        if self.key_name == "fid":
            report = run_lib.evaluate_samples(draw, self.inception_fn, reference=self.reference,
                                              **kw)
            log.info("step %d: FID %.4f  IS %.4f%s", step, report["fid"], report["is"],
                     f"  KID {report['kid']:.6f}" if "kid" in report else "")
        elif self.key_name == "is":
            _, logits = run_lib.sample_statistics(draw, self.inception_fn, **kw)
            value = inception_score(logits)
            run_lib.update_report(eval_dir, step, {"is": value,
                                                   "num_samples": float(len(logits))})
            log.info("step %d: IS %.4f (FID / KID skipped: no reference statistics)", step,
                     value)
        else:
            key_p = jax.random.fold_in(self.key, jax.process_index())
            for r in range(self.num_rounds):
                path = os.path.join(out_dir, f"samples_{r}.npz")
                if os.path.exists(path):
                    continue
                images = run_lib.quantize_samples(draw(jax.random.fold_in(key_p, r)))
                _atomic_savez(path, samples=images)
            drawn = self.num_rounds * self.batch_size * jax.process_count()
            run_lib.update_report(eval_dir, step, {DRAWN_KEY: drawn})
            log.info("step %d: %d samples saved in %s (FID / IS / KID skipped: no Inception "
                     "weights)", step, self.num_rounds * self.batch_size, out_dir)
            if self.metrics:  # every round is saved: score them all, resumed ones included
                drawn_images = []
                for r in range(self.num_rounds):
                    with np.load(os.path.join(out_dir, f"samples_{r}.npz")) as f:
                        drawn_images.append(f["samples"])
        bar.close()
        if self.metrics and drawn_images:
            images = np.concatenate(drawn_images)[:self.num_samples]
            for metric in self.metrics:
                if len(images) >= metric.min_samples:
                    report = metric(images)
                    run_lib.update_report(eval_dir, step, report)
                    log.info("step %d: %s", step, metric.format(report))
        return run_lib.read_report(eval_dir, step) or {}


# ----------------------------------------------------------------------------------------------
# The training loop's evaluators
# ----------------------------------------------------------------------------------------------
class BatchLossEvaluator:
    """The evaluation loss of the next batch of ``batches`` (an iterator of host batches):
    ``eval_step(state, batch, fold_in(key, step))`` (the training loop's ``eval_loss``)."""

    def __init__(self, eval_step: Callable, batches: Iterator, mesh, key: jax.Array):
        self.eval_step, self.batches, self.mesh, self.key = eval_step, batches, mesh, key

    def run(self, step: int, state: Any) -> dict:
        from score_jax import parallel

        batch = parallel.to_global(next(self.batches), self.mesh)
        return {LOSS_KEY: float(self.eval_step(state, batch, jax.random.fold_in(self.key, step)))}


# Snapshot warnings: the EMA still holds more than this fraction of the random initialisation
# (train_step.ema_init_weight), or its samples' FD ratio to the fresh floor is more than
# EMA_RAW_WARN_RATIO times that of the raw weights' samples and above EMA_RAW_WARN_MIN.
EMA_INIT_WARN = 0.01
EMA_RAW_WARN_RATIO = 2.0
EMA_RAW_WARN_MIN = 3.0


def ema_snapshot_warnings(step: int, ema_rate: float, ema_warmup: bool,
                          ema_fd_ratio: float | None = None,
                          raw_fd_ratio: float | None = None) -> list[str]:
    """The snapshot's warnings about the EMA (empty if none): its remaining weight of the random
    initialisation ``train_step.ema_init_weight(step, ema_rate, ema_warmup)`` above
    ``EMA_INIT_WARN``; the EMA samples' digits FD ratio (to the fresh floor) above both
    ``EMA_RAW_WARN_MIN`` and ``EMA_RAW_WARN_RATIO`` times the raw weights' (issue 26: rate
    0.999 without warmup after 1500 steps kept 22 % of the initialisation and its samples scored
    20.6x the fresh floor; the raw weights' scored near the floor)."""
    from score_jax import train_step as ts

    out = []
    w = ts.ema_init_weight(step, ema_rate, ema_warmup)
    if w > EMA_INIT_WARN:
        out.append(f"WARNING step {step}: the EMA (model.ema_rate={ema_rate}, "
                   f"model.ema_warmup={ema_warmup}) still holds {100 * w:.3g}% of the random "
                   f"initialisation; its samples are not yet those of the trained network "
                   f"(sample.py --noema uses the raw weights)")
    if ema_fd_ratio is not None and raw_fd_ratio is not None and \
            ema_fd_ratio > max(EMA_RAW_WARN_MIN, EMA_RAW_WARN_RATIO * raw_fd_ratio):
        out.append(f"WARNING step {step}: the EMA samples score {ema_fd_ratio:.3g}x the fresh "
                   f"floor, the raw weights' {raw_fd_ratio:.3g}x: the EMA lags the training "
                   f"(model.ema_rate={ema_rate} too close to 1 for this run's length?)")
    return out


class SnapshotEvaluator:
    """Samples at a training snapshot: ``num_samples`` draws with key ``fold_in(key, step)``
    (``sample_fn(key, params, n, labels) -> (images, nfe)``), the first ``num_grid`` saved as
    ``<workdir>/samples/iter_<step>/samples.{png,npz}`` (process 0) with ``nrow`` images per
    row, and every ``SampleMetric`` of ``metrics`` applied to all of them; returns the metrics'
    scalars. ``write`` prints a console line (the progress bar's), ``log`` gets the metric lines.
    ``image_hook(step, grid)``, if given, receives the saved grid on process 0 (uint8 (H, W, C),
    ``sample_io.image_grid``; the training loop logs it to TensorBoard).
    """

    def __init__(self, sample_fn: Callable, key: jax.Array, workdir: str, *, num_samples: int,
                 num_grid: int, labels: Any = None, nrow: int = 0, scale: int = 1,
                 metrics: Sequence[SampleMetric] = (), write: Callable[[str], None] = print,
                 log: logging.Logger = log, use_ema: bool = True,
                 ema_rate: float | None = None, ema_warmup: bool = True,
                 image_hook: Callable[[int, np.ndarray], None] | None = None):
        self.sample_fn, self.key, self.workdir = sample_fn, key, workdir
        self.num_samples, self.num_grid, self.labels, self.nrow = num_samples, num_grid, labels, nrow
        self.scale, self.metrics, self.write, self.log = scale, tuple(metrics), write, log
        self.use_ema, self.ema_rate, self.ema_warmup = use_ema, ema_rate, ema_warmup
        self.image_hook = image_hook

    def run(self, step: int, state: Any) -> dict:
        from score_jax import sample_io

        key = jax.random.fold_in(self.key, step)
        images, nfe = self.sample_fn(key, params_of(state, self.use_ema), self.num_samples,
                                     self.labels)
        # the EMA check: with a metric and an EMA, the raw weights' samples (same key and labels,
        # the compiled sampler reused) are scored too; every process samples (multi-host)
        ema_check = self.use_ema and bool(self.ema_rate) and bool(self.metrics)
        raw_images = None
        if ema_check:
            raw_images, _ = self.sample_fn(key, state.params, self.num_samples, self.labels)
        bad = sample_io.count_nonfinite(images)
        if bad:
            self.log.warning("step %d: %d of %d snapshot samples are not finite", step, bad,
                             len(images))
        if jax.process_index() != 0:
            return {}
        d = os.path.join(self.workdir, "samples", f"iter_{step}")
        path = sample_io.save_samples(images[:self.num_grid], d, scale=self.scale, nrow=self.nrow)
        if self.image_hook is not None:
            self.image_hook(step, sample_io.image_grid(images[:self.num_grid], nrow=self.nrow or None))
        self.write(f"step {step}: samples (nfe {nfe}) -> {path}"
                   + (f" ({bad} not finite)" if bad else ""))
        out = {}
        ema_ratio = raw_ratio = None
        for metric in self.metrics:
            if len(images) < metric.min_samples:
                continue
            report = metric(images)
            out.update({k: report[k] for k in metric.scalars})
            self.write(f"step {step}: {metric.format(report)}")
            self.log.info("step %d: %s", step, metric.format(report))
            if raw_images is not None and "digits_fd_ratio_fresh" in report:
                raw = metric(raw_images)
                ema_ratio, raw_ratio = report["digits_fd_ratio_fresh"], raw["digits_fd_ratio_fresh"]
                out["digits_raw_fd_ratio_fresh"] = raw_ratio
                self.write(f"step {step}: raw weights (not EMA): {metric.format(raw)}")
        if self.use_ema and self.ema_rate is not None:
            from score_jax import train_step as ts

            w_init = ts.ema_init_weight(step, self.ema_rate, self.ema_warmup)
            out["ema_init_weight"] = w_init
            self.log.info("step %d: the EMA holds %.3g of the initialisation", step, w_init)
            for w in ema_snapshot_warnings(step, self.ema_rate, self.ema_warmup, ema_ratio,
                                           raw_ratio):
                self.write(w)
                self.log.warning("%s", w)
        return out


class ReconstructionEvaluator:
    """Stage 1 (autoencoder) snapshot: input / reconstruction pairs of ``images`` in
    ``<workdir>/samples/iter_<step>`` (``save_fn(params, images, directory) -> {"png", "mse"}``,
    ``sample_lib.save_reconstructions``), process 0 only; the MSE is printed, nothing returned
    (no scalar is logged, as before)."""

    def __init__(self, save_fn: Callable, images: Callable[[], np.ndarray], workdir: str, *,
                 write: Callable[[str], None] = print, use_ema: bool = True):
        self.save_fn, self.images, self.workdir = save_fn, images, workdir
        self.write, self.use_ema = write, use_ema

    def run(self, step: int, state: Any) -> dict:
        from score_jax import parallel

        params = parallel.to_host(params_of(state, self.use_ema))  # all processes (FSDP shards)
        if jax.process_index() != 0:
            return {}
        d = os.path.join(self.workdir, "samples", f"iter_{step}")
        out = self.save_fn(params, self.images(), d)
        self.write(f"step {step}: reconstructions (per-pixel MSE {out['mse']:.5f}) -> "
                   f"{out['png']}")
        return {}


__all__ = ["EMA_INIT_WARN", "EMA_RAW_WARN_RATIO", "EMA_RAW_WARN_MIN", "ema_snapshot_warnings",
           "SampleMetric", "sample_metrics", "params_of", "BatchLossEvaluator",
           "SnapshotEvaluator", "ReconstructionEvaluator", "Images", "local_rows",
           "DIGITS_KEYS", "is_digits", "digits_report", "format_digits_report",
           "Preempted", "round_check", "LossEvaluator", "BpdEvaluator", "SampleEvaluator",
           "LOSS_KEY", "BPD_KEY", "DRAWN_KEY", "count_rounds", "tqdm_bar"]
