"""Preemption-safe evaluation of one checkpoint: sample metrics (FID / IS / KID) and bits/dim.

The pieces of score_sde's ``run_lib.evaluate`` that do not depend on how checkpoints are stored:
given a sampler and a log-likelihood function for a restored checkpoint, they work in rounds and
write every finished round to ``eval_dir`` at once (atomically: write a temporary file, then
``os.replace``), so a killed job that is restarted skips the finished rounds and produces exactly
the numbers an uninterrupted run would (round r always uses the key ``fold_in(key, r)``).

Layout under ``eval_dir`` (per checkpoint ``ckpt`` and process ``h``)::

    ckpt_{ckpt}_host_{h}/statistics_{r}.npz   pool_3 and logits of sampling round r
    ckpt_{ckpt}_host_{h}/samples_{r}.npz      the uint8 samples of round r (save_samples=True)
    ckpt_{ckpt}_host_{h}/bpd_{r}.npz          bits/dim of likelihood round r
    report_{ckpt}.json                        fid, is, kid, kid_std, bpd, ... (process 0)
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import numpy as np

from score_jax.evaluation.metrics import metrics_report
from score_jax.files import atomic_savez as _atomic_savez
from score_jax.files import atomic_write_json as _atomic_write_json
from score_jax.likelihood import bpd_rounds as _bpd_rounds


def quantize_samples(samples: Any) -> np.ndarray:
    """score_sde's sample quantisation: ``np.clip(x * 255, 0, 255).astype(np.uint8)``."""
    x = np.asarray(samples)
    if x.dtype == np.uint8:
        return x
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def host_dir(eval_dir: str, ckpt: int, host: int | None = None) -> str:
    """``eval_dir/ckpt_{ckpt}_host_{host}`` (this process by default), created if absent."""
    host = jax.process_index() if host is None else host
    path = os.path.join(eval_dir, f"ckpt_{ckpt}_host_{host}")
    os.makedirs(path, exist_ok=True)
    return path


def report_path(eval_dir: str, ckpt: int) -> str:
    return os.path.join(eval_dir, f"report_{ckpt}.json")


def read_report(eval_dir: str, ckpt: int) -> dict[str, Any] | None:
    """The report of checkpoint ``ckpt`` if it was finished, else None."""
    path = report_path(eval_dir, ckpt)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def update_report(eval_dir: str, ckpt: int, values: Mapping[str, Any]) -> dict[str, Any]:
    """Merges ``values`` into ``report_{ckpt}.json`` (process 0 writes; returns the report)."""
    report = read_report(eval_dir, ckpt) or {"ckpt": ckpt}
    for k, v in values.items():
        if isinstance(v, np.floating | float):
            v = None if math.isnan(v) else float(v)  # strict JSON has no NaN (e.g. kid_std)
        report[k] = v
    if jax.process_index() == 0:
        _atomic_write_json(report_path(eval_dir, ckpt), report)
    return report


def sample_statistics(sample_fn: Callable[[jax.Array], Any],
                      inception_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], *,
                      eval_dir: str, ckpt: int, num_samples: int, batch_size: int,
                      key: jax.Array, save_samples: bool = True,
                      log: Callable[[str], None] | None = print,
                      timeout_s: float = 3600.0,
                      poll_s: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    """Draws samples round by round and stores their Inception features, resuming after a kill.

    Each process runs ``ceil(num_samples / (batch_size * process_count))`` rounds; round r calls
    ``sample_fn(fold_in(fold_in(key, process_index), r))``, which must return ``batch_size``
    images (float in [0, 1] or uint8), quantises them like score_sde and writes
    ``statistics_{r}.npz`` (and ``samples_{r}.npz``). Rounds whose statistics file exists are
    skipped. Process 0 then waits for every process's files, at most ``timeout_s`` seconds
    (polling every ``poll_s``).

    Returns:
      ``(pool_3 (num_samples, 2048), logits (num_samples, 1008))`` of all processes, in
      (process, round) order, cut to ``num_samples``.

    Raises:
      TimeoutError: another process's statistics file did not appear within ``timeout_s``.
    """
    if num_samples < 2 or batch_size < 1:
        raise ValueError(f"need num_samples >= 2 and batch_size >= 1, got {num_samples}, "
                         f"{batch_size}")
    num_rounds = math.ceil(num_samples / (batch_size * jax.process_count()))
    out_dir = host_dir(eval_dir, ckpt)
    key = jax.random.fold_in(key, jax.process_index())
    for r in range(num_rounds):
        stats_file = os.path.join(out_dir, f"statistics_{r}.npz")
        if os.path.exists(stats_file):
            continue
        samples = quantize_samples(sample_fn(jax.random.fold_in(key, r)))
        if samples.shape[0] != batch_size:
            raise ValueError(f"sample_fn returned {samples.shape[0]} samples, expected "
                             f"batch_size={batch_size}")
        if save_samples:
            _atomic_savez(os.path.join(out_dir, f"samples_{r}.npz"), samples=samples)
        pool, logits = inception_fn(samples)
        _atomic_savez(stats_file, pool_3=np.asarray(pool), logits=np.asarray(logits))
        if log:
            log(f"ckpt {ckpt}: sampling round {r + 1}/{num_rounds} done")
    pools, logits = [], []
    deadline = time.monotonic() + timeout_s
    for host in range(jax.process_count()):
        d = host_dir(eval_dir, ckpt, host)
        for r in range(num_rounds):
            path = os.path.join(d, f"statistics_{r}.npz")
            while not os.path.exists(path):  # another process is still sampling
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"{path} did not appear within {timeout_s:.0f} s: process {host} has not "
                        f"finished sampling round {r} (is it running with the same eval_dir?)")
                time.sleep(poll_s)
            with np.load(path, allow_pickle=False) as f:
                pools.append(f["pool_3"])
                logits.append(f["logits"])
    return np.concatenate(pools)[:num_samples], np.concatenate(logits)[:num_samples]


def evaluate_samples(sample_fn: Callable[[jax.Array], Any],
                     inception_fn: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]], *,
                     reference: Mapping[str, Any], eval_dir: str, ckpt: int, num_samples: int,
                     batch_size: int, key: jax.Array, save_samples: bool = True,
                     log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """FID / IS / KID of ``num_samples`` samples of one checkpoint, preemption-safe.

    Returns the saved report (``report_{ckpt}.json``) when it already holds ``fid``; otherwise
    runs / resumes ``sample_statistics``, computes ``metrics_report`` against ``reference``
    (``load_stats`` output; KID when it holds ``pool_3``) and merges the numbers into the
    report.
    """
    done = read_report(eval_dir, ckpt)
    if done is not None and "fid" in done:
        return done
    pool, logits = sample_statistics(sample_fn, inception_fn, eval_dir=eval_dir, ckpt=ckpt,
                                     num_samples=num_samples, batch_size=batch_size, key=key,
                                     save_samples=save_samples, log=log)
    values = metrics_report(pool, logits, reference)
    report = update_report(eval_dir, ckpt, values)
    if log:
        log(f"ckpt {ckpt}: FID {values['fid']:.4f}  IS {values['is']:.4f}  "
            + (f"KID {values['kid']:.6f}" if "kid" in values else ""))
    return report


def evaluate_bpd(logp_fn: Callable[[jax.Array, jax.Array], Any], batches: Iterable[Any], *,
                 eval_dir: str, ckpt: int, key: jax.Array, num_repeats: int = 5,
                 centered: bool = False,
                 log: Callable[[str], None] | None = print) -> dict[str, Any]:
    """Bits/dim of a dataset for one checkpoint, ``num_repeats`` dequantisations, resumable.

    The rounds are those of ``dataset_bits_per_dim`` (round = repeat * num_batches + batch,
    keys ``fold_in(fold_in(key, repeat), batch)``, so the numbers are identical); each finished
    round is written to ``bpd_{round}.npz`` and skipped on restart (its batch is still read from
    ``batches`` to keep the order, but ``logp_fn`` is not called).

    Returns:
      The report with ``bpd`` (mean over all rounds of this process) and ``bpd_num``.
    """
    done = read_report(eval_dir, ckpt)
    if done is not None and "bpd" in done:
        return done
    out_dir = host_dir(eval_dir, ckpt)
    path = lambda rid: os.path.join(out_dir, f"bpd_{rid}.npz")
    values = []
    for rid, bpd in _bpd_rounds(logp_fn, batches, key, num_repeats=num_repeats,
                                centered=centered, done=lambda rid: os.path.exists(path(rid))):
        if bpd is None:
            with np.load(path(rid), allow_pickle=False) as f:
                bpd = f["bpd"]
        else:
            _atomic_savez(path(rid), bpd=bpd)
            if log:
                log(f"ckpt {ckpt}: bpd round {rid}: mean so far "
                    f"{np.concatenate([*values, bpd]).mean():.5f}")
        values.append(bpd)
    per_example = np.concatenate(values)
    return update_report(eval_dir, ckpt, {"bpd": float(per_example.mean()),
                                          "bpd_num": int(per_example.size)})
