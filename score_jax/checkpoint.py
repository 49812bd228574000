"""Checkpoints: the orbax ``TrainCheckpointer`` of training workdirs (periodic and preemption
checkpoints, exact resume, a clear ``CheckpointError`` for a missing / corrupt / mismatched one),
and a re-export of the converters of released Score SDE checkpoints (``score_jax.convert``:
``load_variables``, ``save_variables``, ``check_tree``, ...).
"""
import contextlib
import logging
import os
from typing import Any

import jax
import orbax.checkpoint as ocp

# ----------------------------------------------------------------------------------------------
# Converters for released checkpoints (implemented in score_jax.convert)
# ----------------------------------------------------------------------------------------------
from score_jax.convert import (  # noqa: F401 - re-exported API
    check_tree,
    convert_flax_score_sde,
    convert_pytorch,
    load_pytorch_checkpoint,
    load_variables,
    pytorch_ema_state_dict,
    save_variables,
)

# ----------------------------------------------------------------------------------------------
# Training checkpoints: orbax CheckpointManager (periodic, preemption, exact resume)
# ----------------------------------------------------------------------------------------------

class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model / optimiser being restored."""


def _path_name(path) -> str:
    """``params/Conv_0/kernel`` for a key path of ``jax.tree_util.tree_flatten_with_path``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


MAX_NAMED_MISMATCHES = 5


def tree_mismatches(saved: Any, abstract: Any) -> list[str]:
    """The leaves where a saved tree (of arrays or orbax ``ArrayMetadata``: anything with
    ``.shape``) and an abstract tree disagree, by path: ``"params/Conv_0/kernel: checkpoint
    shape (3, 3, 1, 8), model (3, 3, 1, 4)"``, then ``"<path>: in the model, not in the
    checkpoint"`` and the reverse. Parameters (``params``, ``ema_params``) first; empty if the
    shapes and paths agree. Optimiser-state paths missing on one side are not listed (orbax and
    optax name their tuples differently)."""
    def shapes(tree):
        return {_path_name(p): tuple(leaf.shape) for p, leaf in
                jax.tree_util.tree_flatten_with_path(tree)[0] if hasattr(leaf, "shape")}

    have, want = shapes(saved), shapes(abstract)
    out = [f"{k}: checkpoint shape {have[k]}, model {want[k]}" for k in want
           if k in have and have[k] != want[k]]
    params = ("params/", "ema_params/")
    out += [f"{k}: in the model, not in the checkpoint" for k in want
            if k not in have and k.startswith(params)]
    out += [f"{k}: in the checkpoint, not in the model" for k in have
            if k not in want and k.startswith(params)]
    return sorted(out, key=lambda m: not m.startswith(params))


def checkpoint_dir(workdir: str) -> str:
    """Where `CheckpointManager` keeps the training checkpoints of ``workdir``."""
    return os.path.join(os.path.abspath(workdir), "checkpoints")


class _DropReadOnlyNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Given directory is read only")


@contextlib.contextmanager
def _quiet_read_only_notice():
    """orbax logs a warning on every read-only manager (sample.py, evaluate.py); drop that one
    message while the manager is made, leave every other orbax warning alone."""
    logger, notice = logging.getLogger("absl"), _DropReadOnlyNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


class TrainCheckpointer:
    """Save and restore the train state (and a small JSON record) of a workdir with orbax.

    Checkpoints are step folders under ``<workdir>/checkpoints``; orbax writes each into a
    temporary folder and renames it when complete, so a checkpoint is either whole or absent.
    The latest checkpoint is always kept (preemption checkpoints), and every multiple of
    ``keep_period`` (the periodic snapshots, reference ``snapshot_freq``) is kept for good.
    Every process must call `save` / `restore` (orbax coordinates multi-host writes).

    ``asynchronous=True`` (orbax ``enable_async_checkpointing``): `save` returns once the arrays
    are copied to host memory (the caller may then donate / overwrite them) and a background
    thread writes them; the next `save`, `wait_until_finished` and `close` wait for it. A save
    that never finished (process killed) leaves only ``<step>.orbax-checkpoint-tmp``, which orbax
    ignores: `latest_step` / `restore` see the newest *finished* step, and an older checkpoint
    is deleted only after the newer one is complete. ``asynchronous=False`` blocks in `save`.
    """

    def __init__(self, workdir: str, *, keep_period: int | None = None, max_to_keep: int = 1,
                 read_only: bool = False, asynchronous: bool = False):
        self.directory = checkpoint_dir(workdir)
        self.asynchronous = bool(asynchronous) and not read_only
        self._in_flight: int | None = None  # the step of an asynchronous save not yet waited for
        if read_only:  # the values orbax would force (and warn about once per option)
            options = ocp.CheckpointManagerOptions(
                max_to_keep=None, keep_period=None, save_interval_steps=0, create=False,
                read_only=True, enable_async_checkpointing=False)
        else:
            options = ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, keep_period=keep_period, create=True,
                enable_async_checkpointing=self.asynchronous)
        with _quiet_read_only_notice():
            self.manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        """The step of the newest finished checkpoint (an asynchronous save still being written
        is not counted), None if there is none."""
        steps = self.all_steps()
        return max(steps) if steps else None

    def all_steps(self) -> list[int]:
        """The steps of the finished checkpoints. While an asynchronous save is in flight orbax
        already lists its step and no longer lists the one it will delete when that save is
        complete; the finished step folders on disk are the truth then."""
        if self._in_flight is not None and self.manager.is_saving_in_progress():
            return sorted(int(n) for n in os.listdir(self.directory) if n.isdigit())
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict | None = None, *, wait: bool = True) -> None:
        """Write ``state`` (a pytree of arrays) and ``meta`` (JSON) as checkpoint ``step``.

        Synchronous checkpointer, or ``wait=True``: returns when the checkpoint is complete on
        disk. Asynchronous with ``wait=False``: waits for the previous save, copies ``state`` to
        host memory and returns; the write finishes in the background (`wait_until_finished`)."""
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(dict(meta or {})))
        self.manager.save(int(step), args=args, force=True)
        self._in_flight = int(step)
        if wait or not self.asynchronous:
            self.wait_until_finished()

    def wait_until_finished(self) -> None:
        """Block until every save is complete on disk (re-raises a background write's error)."""
        self.manager.wait_until_finished()
        self._in_flight = None

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore checkpoint ``step`` (default: the latest) into the structure, shapes, dtypes and
        shardings of ``abstract_state`` (e.g. from ``jax.eval_shape`` with shardings set).

        Raises:
          CheckpointError: no checkpoint, or one that is corrupt or incompatible (the message
            names the directory, the step and the cause); nothing is overwritten.
        """
        if self._in_flight is not None:  # this process's own save of that step: finish it
            self.wait_until_finished()
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
        if step is None or step not in steps:
            raise CheckpointError(f"no checkpoint {'' if step is None else step} in "
                                  f"{self.directory}; available steps: {steps}")
        saved = os.path.join(os.path.dirname(os.path.abspath(self.directory)), "config.json")
        hint = (f" Pass the --config the run was trained with (it is saved in {saved})."
                if os.path.exists(saved) else "")
        head = (f"checkpoint step {step} in {self.directory} cannot be restored into the current "
                f"train state (written for a different model / optimiser config, or corrupt).")
        # Compare shapes by parameter path before orbax reads any array: the error names the
        # parameters, and no restore is left half-done (its pending reads printed asyncio
        # "Event loop is closed" tracebacks at exit).
        mismatches = self._mismatches(abstract_state, int(step))
        if mismatches:
            shown = "; ".join(mismatches[:MAX_NAMED_MISMATCHES])
            more = len(mismatches) - MAX_NAMED_MISMATCHES
            raise CheckpointError(f"{head}{hint} Mismatched parameters ({len(mismatches)}): "
                                  f"{shown}" + (f"; ... and {more} more" if more > 0 else ""))
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state),
                                  meta=ocp.args.JsonRestore())
        try:
            out = self.manager.restore(int(step), args=args)
        except Exception as e:  # orbax raises a variety of types for corrupt / mismatched trees
            text = " ".join(str(e).split())  # orbax prints whole trees: keep the start
            cause = text[:300] + (f" ... ({len(text) - 300} more characters)"
                                  if len(text) > 300 else "")
            raise CheckpointError(f"{head}{hint} Cause: {type(e).__name__}: {cause}") from e
        state = out["state"]
        want = jax.tree_util.tree_structure(abstract_state)
        got = jax.tree_util.tree_structure(state)
        if want != got:
            raise CheckpointError(f"checkpoint step {step} in {self.directory} has tree {got}, "
                                  f"expected {want}")
        return state, dict(out["meta"] or {})

    def _mismatches(self, abstract_state: Any, step: int) -> list[str]:
        """`tree_mismatches` of the saved state's metadata (shapes only, no array read) and
        ``abstract_state``; empty where the metadata cannot be read (orbax then reports)."""
        from etils import epath

        handler = ocp.StandardCheckpointHandler()
        try:
            meta = handler.metadata(epath.Path(self.directory) / str(step) / "state")
            tree = getattr(meta, "item_metadata", meta)
            return tree_mismatches(tree, abstract_state) if tree is not None else []
        except Exception:  # noqa: BLE001 - a corrupt checkpoint: the restore below reports it
            return []
        finally:
            handler.close()

    def close(self) -> None:
        """Wait for an asynchronous save in flight, then release orbax's resources."""
        self.manager.close()
        self._in_flight = None
