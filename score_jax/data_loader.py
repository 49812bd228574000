"""The training input on grain: worker processes, a per-host shard, an iterator state that goes
into the checkpoint, and prefetch to device.

The batch of training step ``s`` is a pure function of ``(seed, s)``: `data.RandomAccessPipeline`
draws a seeded permutation per epoch over this host's shard of the records and per-step flip /
dequantisation noise. On grain it is a ``MapDataset`` over the step numbers,

    grain.MapDataset.range(start, LAST).map(StepBatch(pipeline))      # element s = batch of s
        .to_iter_dataset().mp_prefetch(MultiprocessingOptions(num_workers))

so ``num_workers`` processes build batches in parallel (worker w builds steps w, w + W, ...) and
grain hands them out in step order: the stream is the same for 0, 1 or 8 workers and the same as
the in-process pipeline, and a resume at step s starts the range at s (O(1), nothing re-read).
(grain's ``DataLoader`` batches inside each worker, so its stream changes with the worker count
and its checkpoint refuses another count: a resume on a machine with other CPUs would see other
data.)

The host shard follows the grain ``ShardOptions`` of `shard_options` (``ShardByJaxProcess``:
shard ``jax.process_index()`` of ``jax.process_count()``), applied as contiguous record ranges
(``data.process_slice``, as ``tfds.even_splits``). The iterator state (`GrainPipeline.state`) is
saved in every checkpoint's JSON record; `GrainPipeline.resume_step` reads it back.

`parallel.prefetch_to_device` lays each host batch out over the mesh on a background thread,
``size`` batches ahead of the train step.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import numpy as np

from score_jax import data as data_lib

# grain's MapDataset.range needs an end: far beyond any run (1e15 steps)
LAST_STEP = 10 ** 15
STATE_VERSION = 1


def shard_options(process_index: int | None = None, process_count: int | None = None):
    """grain ``ShardOptions`` of this host: ``ShardByJaxProcess(drop_remainder=True)`` (shard
    ``jax.process_index()`` of ``jax.process_count()``) or the explicit index / count given."""
    import grain

    if process_index is None and process_count is None:
        return grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if process_index is None or process_count is None or not 0 <= process_index < process_count:
        raise ValueError(f"shard index {process_index} of count {process_count} is invalid; "
                         f"valid: 0 <= index < count")
    return grain.sharding.ShardOptions(shard_index=int(process_index),
                                       shard_count=int(process_count), drop_remainder=True)


class StepBatch:
    """Step number -> the pipeline's batch of that step: the map of the grain dataset (a plain
    callable object, so it pickles into the worker processes)."""

    def __init__(self, pipeline: data_lib.RandomAccessPipeline):
        self.pipeline = pipeline

    def __call__(self, step) -> data_lib.Batch:
        return self.pipeline.batch(int(step))


def _mark_flags_parsed() -> None:
    """grain's worker processes read absl flags; a library caller (a test, a notebook) may not
    have parsed any: mark them parsed with their defaults (as absl.app.run would)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


@dataclasses.dataclass
class GrainPipeline:
    """Training batches of ``pipeline`` on grain, ``num_workers`` processes (0: in-process).

    Args:
      pipeline: the random-access pipeline of this host's shard (`data.get_dataset`).
      num_workers: grain worker processes building batches (``config.data.num_workers``).
      worker_buffer: batches each worker builds ahead.
    Batches are ``{"image": (b, H, W, C) float32, "label": (b,) int32}`` numpy arrays, identical
    to ``pipeline.batch(step)`` for every ``num_workers``.
    """

    pipeline: Any
    num_workers: int = 0
    worker_buffer: int = 2

    def __post_init__(self):
        if isinstance(self.num_workers, bool) or not isinstance(self.num_workers, (int, np.integer)) \
                or self.num_workers < 0:
            raise ValueError(f"config.data.num_workers={self.num_workers!r} must be an integer "
                             f">= 0 (0: batches built in the training process)")

    @property
    def steps_per_epoch(self) -> int:
        return self.pipeline.steps_per_epoch

    def dataset(self, start_step: int = 0):
        """The grain ``IterDataset`` of the batches of steps ``start_step, start_step + 1, ...``."""
        import grain

        ds = grain.MapDataset.range(int(start_step), LAST_STEP).map(StepBatch(self.pipeline))
        ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
        if self.num_workers > 0:
            _mark_flags_parsed()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(
                num_workers=int(self.num_workers), per_worker_buffer_size=int(self.worker_buffer)))
        return ds

    def iterate(self, start_step: int = 0) -> Iterator[data_lib.Batch]:
        """Batches of steps ``start_step, start_step + 1, ...`` (endless); the worker processes
        stop when the generator is closed or collected."""
        it = iter(self.dataset(start_step))
        try:
            yield from it
        finally:
            close = getattr(it, "close", None)
            if close is not None:
                close()

    def epoch(self) -> Iterator[data_lib.Batch]:
        """One in-order pass (evaluation): the pipeline's own."""
        return self.pipeline.epoch()

    def batch(self, step: int) -> data_lib.Batch:
        return self.pipeline.batch(step)

    def state(self, next_step: int) -> dict:
        """The iterator state after ``next_step`` batches were consumed (JSON): grain's
        ``next_index`` of the step range plus what fixes the stream (seed, per-host batch size,
        shard size, host shard)."""
        p = self.pipeline
        return {"version": STATE_VERSION, "next_index": int(next_step), "seed": int(p.seed),
                "batch_size": int(p.batch_size), "num_records": len(p.source),
                "shuffle": bool(p.shuffle), "process_index": int(p.process_index)}

    def resume_step(self, saved: dict | None, step: int) -> tuple[int, list[str]]:
        """The step to resume the stream at from a checkpoint's saved `state` (None: a checkpoint
        without one, resumed at the train state's ``step``), and the ways the saved stream
        differs from this one (warnings: the data order then differs from an uninterrupted run).

        Raises ValueError when the saved ``next_index`` is not the train state's ``step`` (the
        record and the state do not belong together)."""
        if not saved:
            return int(step), []
        if int(saved["next_index"]) != int(step):
            raise ValueError(f"the checkpoint's data iterator is at step {saved['next_index']}, "
                             f"its train state at step {step}")
        now = self.state(step)
        diffs = [f"{k}: checkpoint {saved.get(k)!r}, now {now[k]!r}" for k in
                 ("seed", "batch_size", "num_records", "shuffle", "process_index")
                 if k in saved and saved[k] != now[k]]
        return int(step), diffs
