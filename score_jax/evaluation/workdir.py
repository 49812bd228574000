"""Evaluate the checkpoints of a training workdir, preemption-safe (score_sde `run_lib.evaluate`).

`evaluate_workdir` builds the enabled evaluators (``evaluation.evaluators``: loss, bits/dim,
samples) once, then walks the checkpoints. For each saved checkpoint of ``<workdir>/checkpoints``
in step order, with the EMA parameters:

1. ``eval.enable_loss``: the test loss, the mean of the evaluation loss (the jitted
   ``train_step.eval_step`` of ``config.build``) over one in-order pass of the evaluation split
   (``test``; ``validation`` for CelebA), as the reference ``eval_step`` loop;
2. ``eval.enable_bpd``: bits/dim of ``eval.bpd_dataset`` through the probability-flow ODE
   from t = ``config.LIKELIHOOD_EPS`` (score models) or the flow's ODE (flow-matching models),
   ``sample_lib.make_logp_fn`` with a Hutchinson trace, with ``eval.bpd_num_repeats`` uniform
   dequantisation draws (reference: 5), in resumable rounds (``run.evaluate_bpd``);
3. ``eval.enable_sampling``: ``eval.num_samples`` samples with ``config.sampling`` in rounds of
   ``eval.batch_size``, and FID / IS / KID of their Inception-v3 features against reference
   statistics (``run.evaluate_samples``). Without Inception weights (they cannot be downloaded
   here) the samples are drawn and saved and the metrics are skipped with a log line; a later run
   with weights reads the saved samples instead of sampling again (same keys, same numbers).

Files, under ``eval_dir = <workdir>/<eval_folder>`` (the reference layout, with the checkpoint
named by its training step, the only identifier that a rolling checkpoint also has)::

    ckpt_{step}_host_{h}/statistics_{r}.npz, samples_{r}.npz, bpd_{r}.npz   (see ``run.py``)
    report_{step}.json     eval_loss, bpd, fid, is, kid, ... of one checkpoint
    summary.json           every report, and the best step per metric
    tensorboard/           eval/loss, eval/bpd, eval/fid, eval/is, eval/kid at the step
                           (created with the first scalar)

A run that fails before writing anything (no checkpoint in the range, a missing Inception file,
a checkpoint that cannot be restored, ...) removes the folders it created (``eval_dir`` and
the parents it made, while they are empty); existing content is never deleted.

Preemption: every part is written as soon as it is finished (a round file, or a report key), so
a rerun skips finished checkpoints, finished parts and finished rounds and produces the numbers of
an uninterrupted run: the keys depend only on ``seed`` (the same for every checkpoint, so that
checkpoints are compared on common random numbers), never on what was evaluated before. When
``should_stop()`` becomes true (evaluate.py passes ``preemption.sigterm()``'s event, so SIGTERM)
the current round finishes, then `evaluate_workdir` returns with ``preempted=True``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from score_jax.evaluation import evaluators as ev
from score_jax.evaluation import run as run_lib
from score_jax.evaluation.metrics import DEFAULT_RESIZE, check_resize, check_stats_resize, load_stats
from score_jax.files import atomic_write_json

log = logging.getLogger("score_jax.evaluate")

# report keys that mark a finished part
LOSS_KEY, BPD_KEY, DRAWN_KEY = ev.LOSS_KEY, ev.BPD_KEY, ev.DRAWN_KEY
Preempted = ev.Preempted
SCALARS = {"eval_loss": "eval/loss", "bpd": "eval/bpd", "fid": "eval/fid", "is": "eval/is",
           "kid": "eval/kid"}
_EVAL_STREAM = 0x5E7A1  # folded into the seed: evaluation keys differ from training keys


# ----------------------------------------------------------------------------------------------
# Which checkpoints
# ----------------------------------------------------------------------------------------------
def step_range(config, begin_step: int | None = None,
               end_step: int | None = None) -> tuple[int, float]:
    """The inclusive step range to evaluate.

    Explicit steps win; otherwise the reference's checkpoint numbers ``eval.begin_ckpt`` /
    ``eval.end_ckpt`` (score_sde names snapshot ``k`` ``checkpoint_k``, saved at step
    ``k * training.snapshot_freq``) are converted to steps. None means an open end.
    """
    freq = int(config.training.snapshot_freq)
    e = config.eval
    lo = begin_step if begin_step is not None else (
        0 if e.get("begin_ckpt") is None else int(e.begin_ckpt) * freq)
    hi = end_step if end_step is not None else (
        math.inf if e.get("end_ckpt") is None else int(e.end_ckpt) * freq)
    if lo > hi:
        raise ValueError(f"empty checkpoint range: begin step {lo} > end step {hi}")
    return int(lo), hi


def saved_steps(workdir: str, checkpointer=None) -> list[int]:
    """The steps of the complete checkpoints in ``<workdir>/checkpoints`` (sorted); pass an open
    read-only ``TrainCheckpointer`` to re-read its directory instead of opening one."""
    from score_jax.checkpoint import TrainCheckpointer, checkpoint_dir

    if checkpointer is not None:
        checkpointer.manager.reload()  # pick up checkpoints written since it was opened
        return sorted(int(s) for s in checkpointer.all_steps())
    if not os.path.isdir(checkpoint_dir(workdir)):
        return []
    ckpt = TrainCheckpointer(workdir, read_only=True)
    try:
        return sorted(int(s) for s in ckpt.all_steps())
    finally:
        ckpt.close()


def _is_kept(step: int, config) -> bool:
    """Snapshots (multiples of ``snapshot_freq``) and the final step stay; the rolling preemption
    checkpoint is deleted by the next save."""
    t = config.training
    return step % int(t.snapshot_freq) == 0 or step == int(t.n_iters)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
def _tqdm(progress: bool, **kwargs):
    return ev.tqdm_bar(progress, **kwargs)


# ----------------------------------------------------------------------------------------------
# evaluate_workdir
# ----------------------------------------------------------------------------------------------
def _no_empty_folders_on_failure(fn):
    """``fn(config, workdir, *, eval_folder, ...)`` that, when it raises (any exception, then
    re-raised), removes the folders of ``<workdir>/<eval_folder>`` that did not exist before
    the call, innermost first, while they are empty (``os.rmdir`` refuses a folder with anything
    in it, so nothing written, and nothing that existed before, is deleted)."""

    @functools.wraps(fn)
    def wrapper(config, workdir, *args, eval_folder: str = "eval", **kwargs):
        new, p = [], os.path.abspath(os.path.join(workdir, eval_folder))
        while not os.path.isdir(p) and os.path.dirname(p) != p:
            new.append(p)
            p = os.path.dirname(p)
        try:
            return fn(config, workdir, *args, eval_folder=eval_folder, **kwargs)
        except BaseException:
            for folder in new:  # innermost first
                try:
                    os.rmdir(folder)
                except OSError:  # not empty (something was written) or not there (never made)
                    if os.path.exists(folder):
                        break
            raise

    return wrapper


@_no_empty_folders_on_failure
def evaluate_workdir(config, workdir: str, *, eval_folder: str = "eval",
                     inception_path: str | None = None,
                     inception_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
                     | None = None,
                     reference_stats: str | Mapping[str, Any] | None = None,
                     inception_sha256: str | None = "pinned",
                     ref_stats_resize: str | None = None,
                     begin_step: int | None = None, end_step: int | None = None,
                     wait: bool = False, poll_seconds: float = 60.0,
                     num_samples: int | None = None, bpd_repeats: int | None = None,
                     seed: int | None = None, save_samples: bool = True,
                     model=None, eval_ds=None, bpd_ds=None, mesh=None,
                     progress: bool = True,
                     should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Evaluate the checkpoints of ``workdir`` in step order, resuming where a run stopped.

    What is computed follows ``config.eval`` (``enable_loss``, ``enable_bpd``,
    ``enable_sampling``, ``num_samples``, ``batch_size``, ``bpd_dataset``,
    ``bpd_num_repeats``, ``bpd_max_batches``) as score_sde's ``run_lib.evaluate``; see the
    module docstring for the parts, the files and the preemption behaviour.

    Args:
      config: the training config of the workdir (``--config`` of train.py).
      workdir: the training workdir (``<workdir>/checkpoints``).
      eval_folder: results go to ``<workdir>/<eval_folder>`` (reference ``eval_folder``).
      inception_path: local FID Inception weights (``pt_inception-2015-12-05-6726825d.pth`` or
        its ``.npz``, see ``python -m score_jax.evaluation.inception``). None and no
        ``inception_fn``: samples are drawn and saved, FID / IS / KID skipped.
      inception_fn: instead of ``inception_path``, any ``uint8 images -> (pool_3, logits)``
        (e.g. an ``InceptionFeatures``).
      reference_stats: ``save_stats`` file (or its ``load_stats`` dict) of the data; without it
        only IS is computed. KID needs its ``pool_3`` rows. Its resize convention (the
        ``"resize"`` key) must equal ``config.eval.fid_resize`` (``ValueError`` otherwise).
      inception_sha256: expected sha256 of ``inception_path`` (``"pinned"``: pytorch-fid's
        ``PT_INCEPTION_SHA256``; None: no check), see ``inception.check_inception_sha256``.
      ref_stats_resize: the convention of a statistics file that does not record one
        (``load_stats(resize_if_missing=...)``).
      begin_step / end_step: inclusive step range; default ``eval.begin_ckpt`` /
        ``eval.end_ckpt`` times ``training.snapshot_freq`` (the reference's numbering).
      wait: keep polling (every ``poll_seconds``) for new snapshots until the last one in range
        (at most ``training.n_iters``) is evaluated, for an evaluator running beside training.
        Only the kept snapshots (multiples of ``snapshot_freq`` and the final step) are
        evaluated then; without ``wait`` every saved checkpoint in range is.
      num_samples: overrides ``eval.num_samples``.
      bpd_repeats: overrides ``eval.bpd_num_repeats`` (reference: 5 dequantisation draws).
      seed: the evaluation seed (default ``config.seed``).
      save_samples: keep the uint8 samples of every round (``samples_{r}.npz``).
      model / eval_ds / bpd_ds / mesh: override the config-built ones (tests, notebooks).
      progress: tqdm progress bars (process 0).
      should_stop: polled at round and checkpoint boundaries (e.g. the event of
        ``preemption.sigterm()``); true -> stop after the current round, ``preempted=True``.

    Returns:
      ``{"eval_dir", "reports": {step: report}, "evaluated": [steps worked on],
      "skipped": [steps already finished], "preempted": bool, "summary": path}``.

    Raises:
      ValueError: invalid config or options (before anything is computed).
      CheckpointError: a kept checkpoint cannot be restored.
      (On any error the folders this call created and left empty are removed.)
    """
    from score_jax import config as config_lib
    from score_jax import preemption
    from score_jax.checkpoint import TrainCheckpointer
    from score_jax.evaluation.build import workdir_evaluators

    should_stop = preemption.never if should_stop is None else should_stop
    b = config_lib.build(config, mesh=mesh, model=model)  # validates the config
    opts = _options(config, workdir, eval_folder, begin_step, end_step, num_samples, bpd_repeats,
                    wait)
    per_process = int(config.eval.batch_size) // jax.process_count()
    inception_fn, reference = _inception_and_reference(
        opts, inception_path, inception_fn, reference_stats, per_process, inception_sha256,
        ref_stats_resize)
    seed = int(config.seed if seed is None else seed)
    keys = tuple(jax.random.split(jax.random.fold_in(jax.random.key(seed), _EVAL_STREAM), 3))
    evaluators = workdir_evaluators(
        config, b, opts.eval_dir, keys=keys, num_samples=opts.num_samples,
        bpd_repeats=opts.bpd_repeats, per_process=per_process, inception_fn=inception_fn,
        reference=reference, save_samples=save_samples, progress=progress,
        should_stop=should_stop, eval_ds=eval_ds, bpd_ds=bpd_ds)
    if not evaluators:
        log.warning("nothing to evaluate: eval.enable_loss, eval.enable_bpd and "
                    "eval.enable_sampling are all False")
    writer = None
    if jax.process_index() == 0:  # the folder is made with the first scalar
        writer = _LazyWriter(os.path.join(opts.eval_dir, "tensorboard"))
    checkpointer = TrainCheckpointer(workdir, read_only=True)
    walk = _Walk(config, workdir, opts, evaluators, b.abstract_state, checkpointer, writer,
                 should_stop, progress, poll_seconds)
    try:
        walk.run()
    except Preempted:
        walk.preempted = True
        log.warning("preemption requested: stopped after the current round; rerun the same "
                    "command to resume (finished rounds and checkpoints are kept in %s)",
                    opts.eval_dir)
    finally:
        walk.close()
        checkpointer.close()
        if writer is not None:
            writer.close()
    summary_path = write_summary(opts.eval_dir) if jax.process_index() == 0 else None
    return {"eval_dir": opts.eval_dir, "reports": walk.reports, "evaluated": walk.evaluated,
            "skipped": walk.skipped, "preempted": walk.preempted, "summary": summary_path}


class _LazyWriter:
    """A tensorboardX ``SummaryWriter`` on ``logdir`` opened at the first scalar, so that a run
    that writes no scalar creates no ``tensorboard/`` folder."""

    def __init__(self, logdir: str):
        self.logdir, self.writer = logdir, None

    def add_scalar(self, tag: str, value: float, step: int) -> None:
        if self.writer is None:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(self.logdir)
        self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclasses.dataclass(frozen=True)
class _Options:
    """What evaluate_workdir was asked for, checked: the step range, the sample and repeat
    counts, what is enabled, the results folder and the last snapshot to wait for."""

    eval_dir: str
    lo: int
    hi: float
    num_samples: int
    bpd_repeats: int
    enable_bpd: bool
    enable_sampling: bool
    wait: bool
    last: int | None
    fid_resize: str


def _options(config, workdir, eval_folder, begin_step, end_step, num_samples, bpd_repeats,
             wait) -> _Options:
    """Check the options (ValueError / FileNotFoundError before anything is computed) and create
    ``<workdir>/<eval_folder>``."""
    from score_jax.checkpoint import checkpoint_dir

    e, t = config.eval, config.training
    lo, hi = step_range(config, begin_step, end_step)
    num_samples = int(e.num_samples if num_samples is None else num_samples)
    bpd_repeats = int(e.bpd_num_repeats if bpd_repeats is None else bpd_repeats)
    enable_bpd, enable_sampling = bool(e.enable_bpd), bool(e.enable_sampling)
    fid_resize = check_resize(e.get("fid_resize", DEFAULT_RESIZE))
    if enable_sampling and num_samples < 2:
        raise ValueError(f"eval.num_samples={num_samples} must be >= 2")
    if bpd_repeats < 1:
        raise ValueError(f"eval.bpd_num_repeats={bpd_repeats} must be >= 1")
    if not os.path.isdir(checkpoint_dir(workdir)):
        raise FileNotFoundError(f"workdir {workdir!r} has no checkpoints/ folder; train first "
                                f"with python train.py --workdir={workdir}")
    last = None
    if wait:  # the last kept snapshot in range: training writes nothing after it
        n_iters, freq = int(t.n_iters), int(t.snapshot_freq)
        last = n_iters if hi >= n_iters else int(hi) // freq * freq
        if last < lo:
            raise ValueError(f"--wait: no snapshot can appear in steps [{lo}, {hi}] "
                             f"(training.snapshot_freq={freq}, training.n_iters={n_iters})")
    eval_dir = os.path.join(workdir, eval_folder)
    os.makedirs(eval_dir, exist_ok=True)
    return _Options(eval_dir, lo, hi, num_samples, bpd_repeats, enable_bpd, enable_sampling,
                    bool(wait), last, fid_resize)


def _inception_and_reference(opts: _Options, inception_path, inception_fn, reference_stats,
                             per_process: int, inception_sha256, ref_stats_resize):
    """The Inception feature function (from ``inception_path`` unless given) and the reference
    statistics; FID / KID need both, IS only the network (what is skipped is logged)."""
    if inception_fn is None and inception_path is not None and opts.enable_sampling:
        from score_jax.evaluation.inception import get_inception_fn
        if not os.path.exists(inception_path):
            raise FileNotFoundError(f"--inception={inception_path!r} does not exist")
        n_local = jax.local_device_count()
        # one compiled batch: a sampling round, or chunks of about 200 (padding is wasted work)
        chunk = max(n_local, min(per_process, 200) // n_local * n_local)
        from score_jax.evaluation.inception import PT_INCEPTION_SHA256
        sha = PT_INCEPTION_SHA256 if inception_sha256 == "pinned" else inception_sha256
        inception_fn = get_inception_fn(inception_path, batch_size=chunk, resize=opts.fid_resize,
                                        sha256=sha)
    fn_resize = getattr(inception_fn, "resize", None)
    if fn_resize is not None and fn_resize != opts.fid_resize:
        raise ValueError(f"inception_fn uses the {fn_resize!r} resize but "
                         f"config.eval.fid_resize={opts.fid_resize!r}")
    reference = (load_stats(reference_stats, resize_if_missing=ref_stats_resize)
                 if isinstance(reference_stats, str | os.PathLike) else reference_stats)
    if reference is not None and opts.enable_sampling:
        check_stats_resize(reference, opts.fid_resize, source=f"reference statistics "
                           f"{reference_stats if isinstance(reference_stats, str) else ''}".rstrip())
    if opts.enable_sampling:
        if inception_fn is None:
            log.warning("FID / IS / KID skipped: no Inception weights given (--inception=PATH to "
                        "pt_inception-2015-12-05-6726825d.pth or its .npz; they cannot be "
                        "downloaded here). The %d samples per checkpoint are drawn and saved in "
                        "%s/ckpt_<step>_host_<h>/; a rerun with --inception computes the "
                        "metrics from them.", opts.num_samples, opts.eval_dir)
        elif reference is None:
            log.warning("FID and KID skipped: no reference statistics (--ref_stats=PATH, written "
                        "by python -m score_jax.evaluation.stats); computing IS only.")
    return inception_fn, reference


_STRONGER = {DRAWN_KEY: ("is", "fid"), "is": ("fid",)}  # FID implies IS implies drawn


class _Walk:
    """The walk over the checkpoints: which parts of a step are missing, evaluating one
    checkpoint (every evaluator's ``run(step, state)``), and polling for new ones (``wait``)."""

    def __init__(self, config, workdir, opts: _Options, evaluators, abstract_state, checkpointer,
                 writer, should_stop, progress, poll_seconds):
        self.config, self.workdir, self.opts = config, workdir, opts
        self.poll_seconds = float(poll_seconds)
        self.evaluators, self.abstract_state = evaluators, abstract_state
        self.checkpointer, self.writer, self.should_stop = checkpointer, writer, should_stop
        self.needed = [x.key_name for x in evaluators]
        self.reports: dict[int, dict] = {}
        self.evaluated: list[int] = []
        self.skipped: list[int] = []
        self.seen: set[int] = set()
        self.preempted = False
        self.outer = _tqdm(progress, desc="checkpoints", unit="ckpt")

    def close(self) -> None:
        self.outer.close()

    def missing(self, step: int) -> list[str]:
        """The parts (evaluator keys) of ``step`` not in its report yet; a report made with
        other sample / repeat counts is kept, with a warning."""
        opts, eval_dir = self.opts, self.opts.eval_dir
        report = run_lib.read_report(eval_dir, step) or {}
        for key, want, on in (("num_samples", opts.num_samples, opts.enable_sampling),
                              ("bpd_num_repeats", opts.bpd_repeats, opts.enable_bpd)):
            if on and report.get(key) not in (None, want):
                log.warning("step %d: the saved report has %s=%s, this run asks for %s; it is "
                            "kept (delete %s or use another --eval_folder to recompute)", step,
                            key, report[key], want, run_lib.report_path(eval_dir, step))
        return [k for k in self.needed
                if k not in report and not any(h in report for h in _STRONGER.get(k, ()))]

    def evaluate_one(self, step: int, todo: list[str]) -> dict[str, Any]:
        """Restore ``step`` and run the evaluators of ``todo``; TensorBoard gets the scalars."""
        eval_dir = self.opts.eval_dir
        state, _ = self.checkpointer.restore(self.abstract_state, step)
        run_lib.update_report(eval_dir, step, {"step": step})
        for x in self.evaluators:
            if x.key_name in todo:
                x.run(step, state)
        report = run_lib.read_report(eval_dir, step) or {}
        if self.writer is not None:
            for k, tag in SCALARS.items():
                if isinstance(report.get(k), int | float):
                    self.writer.add_scalar(tag, report[k], step)
            self.writer.flush()
        return report

    def new_steps(self) -> list[int]:
        """Saved steps in range not seen yet (with ``wait``: the kept snapshots only)."""
        o = self.opts
        return [st for st in saved_steps(self.workdir, self.checkpointer)
                if o.lo <= st <= o.hi and st not in self.seen
                and (not o.wait or _is_kept(st, self.config))]

    def visit(self, step: int) -> None:
        """Evaluate what ``step`` misses (or skip it when nothing is)."""
        from score_jax import preemption
        from score_jax.checkpoint import CheckpointError

        if preemption.agree(self.should_stop, sync=True):
            raise Preempted
        self.seen.add(step)
        eval_dir = self.opts.eval_dir
        todo = self.missing(step)
        if not todo:
            self.skipped.append(step)
            log.info("step %d: already evaluated (%s), skipped", step,
                     run_lib.report_path(eval_dir, step))
        else:
            self.outer.set_postfix(step=step)
            try:
                self.evaluate_one(step, todo)
            except CheckpointError:
                if (_is_kept(step, self.config)
                        or step in saved_steps(self.workdir, self.checkpointer)):
                    raise
                log.warning("step %d: the rolling checkpoint was replaced by training "
                            "before it was restored; skipped", step)
                return
            self.evaluated.append(step)
        self.reports[step] = run_lib.read_report(eval_dir, step) or {}
        self.outer.update(1)

    def run(self) -> None:
        """Visit the checkpoints in step order; with ``wait``, poll until the last snapshot."""
        o, e, t = self.opts, self.config.eval, self.config.training
        waiting_logged = False
        while True:
            steps = self.new_steps()
            if not steps and not self.seen and not o.wait:
                raise ValueError(
                    f"no checkpoint of {self.workdir} lies in steps [{o.lo}, {o.hi}] (config "
                    f"eval.begin_ckpt={e.get('begin_ckpt')}, eval.end_ckpt={e.get('end_ckpt')} "
                    f"x training.snapshot_freq={t.snapshot_freq}); saved steps: "
                    f"{saved_steps(self.workdir, self.checkpointer)}. Choose with --begin_step / "
                    f"--end_step or --config.eval.begin_ckpt / --config.eval.end_ckpt")
            self.outer.total = (self.outer.total or 0) + len(steps)
            self.outer.refresh()
            for step in steps:
                self.visit(step)
            if not o.wait or (self.seen and max(self.seen) >= o.last):
                return
            if not waiting_logged:
                log.info("waiting for checkpoints up to step %s in %s (polling every %.0f s)",
                         o.last, self.workdir, self.poll_seconds)
                waiting_logged = True
            deadline = time.monotonic() + self.poll_seconds
            while time.monotonic() < deadline:
                if self.should_stop():
                    raise Preempted
                time.sleep(min(1.0, self.poll_seconds))


def write_summary(eval_dir: str) -> str:
    """``summary.json``: every ``report_{step}.json`` of ``eval_dir`` in step order and the best
    step per metric (lowest loss / bits/dim / FID / KID / digits FD and its ratio to the fresh
    floor, highest IS / digits IS)."""
    steps = sorted(int(f[len("report_"):-len(".json")]) for f in os.listdir(eval_dir)
                   if f.startswith("report_") and f.endswith(".json")
                   and f[len("report_"):-len(".json")].isdigit())
    reports = [run_lib.read_report(eval_dir, st) for st in steps]
    best = {}
    for k, sign in (("eval_loss", 1), ("bpd", 1), ("fid", 1), ("kid", 1), ("is", -1),
                    ("digits_fd", 1), ("digits_fd_ratio_fresh", 1), ("digits_is", -1)):
        have = [(sign * r[k], st) for st, r in zip(steps, reports, strict=True)
                if isinstance(r.get(k), int | float)]
        if have:
            best[k] = min(have)[1]
    path = os.path.join(eval_dir, "summary.json")
    return atomic_write_json(path, {"reports": reports, "best_step": best})
