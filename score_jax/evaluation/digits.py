"""A quality metric for the embedded digits: the FID of scikit-learn's 8x8 handwritten digits.

The FID Inception means nothing on 8x8 grey digits, so the digits get their own feature network:
a small MLP classifier (64 -> 128 -> 64 -> 10, ReLU) trained deterministically on the digits
(``train_digits_classifier``; its weights ship as ``digits_classifier.npz`` next to this file,
so nobody pays the training time; 100% train / 95.6% held-out accuracy on the last 180 digits,
99.6% on all 1797). On it:

* ``digits_metrics``: the Frechet distance (``metrics.frechet_distance``, the FID formula of
  Heusel et al. 2017) between the 64-dimensional hidden features of the samples and those of all
  1797 real digits, and two floors for the same sample count N:

  - ``fd_floor`` (the subset floor): the FD of N of the reference digits themselves (a fixed
    random subset, drawn without replacement). It is not what a model of the data distribution
    scores: N digits drawn from the reference share their statistics with it, so the mean and
    covariance differences shrink like 1/N - 1/M instead of 1/N + 1/M (M = 1797). At N = 1000
    it is about a quarter of the FD of N *new* digits, and below what any sampler of independent
    digits scores, even one returning reference digits (2.8x it on average,
    ``bench/bench_digits_floor.py``).
  - ``fd_floor_fresh`` (``fresh_floor``): the expected FD of N new digits from the data
    distribution, estimated on disjoint splits of the real digits (FD's bias is linear in
    1/N + 1/M, Chong & Forsyth 2020). A model that draws new digits as well as the data does
    scores ``fd_ratio_fresh`` about 1.

  Also an inception-style score (Salimans et al. 2016, over the 10 digit classes, at most 10) of
  the samples and of the real subset, the class histogram, and ``copy_fraction``
  (``copy_fraction``): the share of samples that are near-copies of a training digit by the
  nearest-neighbour ratio test of Gu et al. 2023, so that a low FD bought by memorisation shows.
* ``digits_conditional_accuracy``: the fraction of conditional samples the classifier assigns to
  the requested label, and its mean probability for that label.

Input convention (every entry point here): NHWC images, float in [0, 1] (values within
``RANGE_TOLERANCE`` outside are clipped: samplers overshoot slightly) or uint8 in [0, 255]
(divided by 255); anything else raises ``ValueError`` naming the range found
(``metrics.images_to_unit_range``). Sizes larger than 8 must be multiples of 8 (the configs'
bilinearly upsampled 16x16 / 32x32 digits, ``data.load_digits_images``) and are brought back to
8x8 by averaging k x k blocks; three channels are averaged to grey (``num_channels=3`` repeats
the grey channel). The reference statistics for a size are those of the real digits passed
through the same pipeline (upsampled by ``data.load_digits_images``, then block-averaged), so
real digits score the floor at every size.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.evaluation.metrics import (
    StreamingStats,
    fid_from_features,
    frechet_distance,
    images_to_unit_range,
    inception_score,
)

WEIGHTS_PATH = os.path.join(os.path.dirname(__file__), "digits_classifier.npz")
NUM_CLASSES = 10
NUM_DIGITS_FEATURES = 64
LAYER_SIZES = (64, 128, NUM_DIGITS_FEATURES, NUM_CLASSES)
NUM_DIGITS = 1797  # scikit-learn's load_digits
TRAIN_STEPS = 600
LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-4
FLOOR_SEED = 0
FRESH_FLOOR_SPLITS = 16
COPY_RATIO = 1.0 / 3.0  # Gu et al. 2023: copy when d(x, NN1) < d(x, NN2) / 3

Params = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# Classifier
# --------------------------------------------------------------------------------------------


def _hidden(params: Mapping[str, Any], x: jax.Array) -> jax.Array:
    h = jax.nn.relu(x @ params["w0"] + params["b0"])
    return jax.nn.relu(h @ params["w1"] + params["b1"])


def _forward(params: Mapping[str, Any], x: jax.Array) -> tuple[jax.Array, jax.Array]:
    f = _hidden(params, x)
    return f, f @ params["w2"] + params["b2"]


def _init_params(key: jax.Array) -> dict[str, jax.Array]:
    params = {}
    for i, (n_in, n_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:], strict=True)):
        key, sub = jax.random.split(key)
        params[f"w{i}"] = jax.random.normal(sub, (n_in, n_out), jnp.float32) * np.sqrt(2.0 / n_in)
        params[f"b{i}"] = jnp.zeros((n_out,), jnp.float32)
    return params


def train_digits_classifier(*, seed: int = 0, num_steps: int = TRAIN_STEPS,
                            learning_rate: float = LEARNING_RATE,
                            weight_decay: float = WEIGHT_DECAY) -> tuple[Params, dict[str, float]]:
    """Trains the digits classifier deterministically (what ``digits_classifier.npz`` holds).

    Full-batch AdamW (optax) on the 1617 "train" digits of ``data.load_digits_images`` (8x8,
    [0, 1]), softmax cross-entropy, He-normal initialisation from ``jax.random.key(seed)``, float32,
    ``num_steps`` steps in one ``lax.scan``: no data order, no randomness beyond the init, a few
    seconds on a CPU. The 180 "test" digits are held out.

    Returns:
      ``(params, info)``: params as float32 numpy arrays ``w0, b0, w1, b1, w2, b2`` (layers
      64 -> 128 -> 64 -> 10), info ``{"train_accuracy", "test_accuracy", "train_loss"}``.
    """
    import optax

    from score_jax.data import load_digits_images

    x_tr, y_tr = load_digits_images(8, "train")
    x_te, y_te = load_digits_images(8, "test")
    x_tr = jnp.asarray(x_tr.reshape(len(x_tr), -1))
    y_tr = jnp.asarray(y_tr)
    opt = optax.adamw(learning_rate, weight_decay=weight_decay)

    def loss_fn(params):
        _, logits = _forward(params, x_tr)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y_tr).mean()

    @jax.jit
    def train(params):
        def step(carry, _):
            params, state = carry
            loss, grads = jax.value_and_grad(loss_fn)(params)
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params, opt.init(params)), None,
                                           length=num_steps)
        return params, losses[-1]

    params, loss = train(_init_params(jax.random.key(seed)))
    params = {k: np.asarray(v, np.float32) for k, v in params.items()}
    info = {"train_accuracy": classifier_accuracy(params, np.asarray(x_tr), np.asarray(y_tr)),
            "test_accuracy": classifier_accuracy(params, x_te.reshape(len(x_te), -1), y_te),
            "train_loss": float(loss)}
    return params, info


def classifier_accuracy(params: Mapping[str, Any], x: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of ``(N, 64)`` flattened [0, 1] digits whose argmax logit equals ``labels``."""
    _, logits = _forward(params, jnp.asarray(x, jnp.float32))
    return float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels)))


def save_digits_classifier(path: str | os.PathLike, params: Mapping[str, Any]) -> None:
    """Writes classifier parameters to an ``.npz`` (float32)."""
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in params.items()})


def load_digits_classifier(path: str | os.PathLike = WEIGHTS_PATH) -> Params:
    """Reads classifier parameters (default: the shipped ``digits_classifier.npz``)."""
    with np.load(path, allow_pickle=False) as f:
        params = {k: f[k] for k in f.files}
    for i, (n_in, n_out) in enumerate(zip(LAYER_SIZES[:-1], LAYER_SIZES[1:], strict=True)):
        for name, shape in ((f"w{i}", (n_in, n_out)), (f"b{i}", (n_out,))):
            if name not in params or params[name].shape != shape:
                raise ValueError(f"{os.fspath(path)!r}: expected {name} of shape {shape}, got "
                                 f"{None if name not in params else params[name].shape}")
    return params


@functools.lru_cache(maxsize=1)
def _shipped_params() -> Params:
    return load_digits_classifier(WEIGHTS_PATH)


def digits_classifier(params: Mapping[str, Any] | None = None
                      ) -> tuple[Callable[[Any], np.ndarray], Callable[[Any], np.ndarray]]:
    """``(features_fn, logits_fn)`` of the digits classifier.

    Both take images under this module's input convention (see the module docstring) and return
    float32 numpy arrays: ``features_fn(images) -> (N, 64)`` hidden features (second ReLU layer),
    ``logits_fn(images) -> (N, 10)``.

    Args:
      params: classifier parameters; default the shipped weights.
    """
    p = _shipped_params() if params is None else params

    def features_fn(images: Any) -> np.ndarray:
        return _features_and_logits(p, images)[0]

    def logits_fn(images: Any) -> np.ndarray:
        return _features_and_logits(p, images)[1]

    return features_fn, logits_fn


# --------------------------------------------------------------------------------------------
# Input convention
# --------------------------------------------------------------------------------------------


def digits_to_8x8(images: Any) -> np.ndarray:
    """Images under the input convention -> ``(N, 64)`` float32 grey 8x8 digits in [0, 1].

    Args:
      images: ``(N, S, S, C)``, C in {1, 3}, S a positive multiple of 8; float in [0, 1] or
        uint8 in [0, 255].

    Raises:
      ValueError: wrong shape, or values outside the accepted range (the message gives the range
        found).
    """
    x = images_to_unit_range(images, name="digits samples")
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or x.shape[1] != x.shape[2]:
        raise ValueError(f"digits samples must be (N, S, S, C) with C in (1, 3), got shape "
                         f"{x.shape}")
    s = x.shape[1]
    if s == 0 or s % 8:
        raise ValueError(f"digits samples must be 8x8 or a multiple of it (16, 24, 32, ...); "
                         f"got {s}x{s}")
    x = x.mean(axis=-1)
    k = s // 8
    x = x.reshape(x.shape[0], 8, k, 8, k).mean(axis=(2, 4))  # area average of k x k blocks
    return x.reshape(x.shape[0], 64).astype(np.float32)


@jax.jit
def _forward_jit(params, x):
    return _forward(params, x)


def _features_and_logits(params: Mapping[str, Any], images: Any) -> tuple[np.ndarray, np.ndarray]:
    x = digits_to_8x8(images)
    f, logits = _forward_jit(params, x)
    return np.asarray(f), np.asarray(logits)


# --------------------------------------------------------------------------------------------
# Reference statistics and the metric
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _real_digits(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from score_jax.data import load_digits_images

    x, y = load_digits_images(image_size, "all")
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def digits_reference(image_size: int = 8, params: Mapping[str, Any] | None = None
                     ) -> dict[str, np.ndarray]:
    """Classifier features of all 1797 real digits at ``image_size`` and their statistics.

    The digits come from ``data.load_digits_images(image_size, "all")`` (what training at that
    size sees) and go through the same pipeline as samples (``digits_to_8x8``).

    Returns:
      ``{"mu": (64,), "sigma": (64, 64) float64, "features": (1797, 64), "logits": (1797, 10),
      "labels": (1797,) int32, "train_digits": (1617, 64) float32, "image_size": int}``;
      ``train_digits`` are the training split (what the digits configs train on) through
      ``digits_to_8x8``, for ``copy_fraction``.
    """
    from score_jax.data import load_digits_images

    x, y = _real_digits(int(image_size))
    f, logits = _features_and_logits(_shipped_params() if params is None else params, x)
    mu, sigma = StreamingStats(f.shape[1]).update(f).stats()
    train = digits_to_8x8(load_digits_images(int(image_size), "train")[0])
    return {"mu": mu, "sigma": sigma, "features": f, "logits": logits, "labels": np.asarray(y),
            "train_digits": train, "image_size": int(image_size)}


def floor_indices(num: int, total: int = NUM_DIGITS, seed: int = FLOOR_SEED) -> np.ndarray:
    """The fixed real subset of the floor: the first ``num`` of a seeded permutation of
    ``range(total)`` (a bootstrap with replacement, same seed, when ``num > total``)."""
    if num < 2:
        raise ValueError(f"the floor needs at least 2 samples, got {num}")
    rng = np.random.default_rng(seed)
    if num <= total:
        return rng.permutation(total)[:num]
    return rng.integers(0, total, size=num)


def _fd_to(features: np.ndarray, reference: Mapping[str, Any]) -> float:
    mu, sigma = StreamingStats(features.shape[1]).update(features).stats()
    return frechet_distance(mu, sigma, reference["mu"], reference["sigma"])


def fresh_floor(features: Any, num: int, *, num_splits: int = FRESH_FLOOR_SPLITS,
                seed: int = FLOOR_SEED) -> float:
    """Expected FD of ``num`` new samples of the data distribution against ``features``.

    Two independent samples of one distribution, of sizes n and m, have a Frechet distance whose
    expectation is a bias linear in the inverse sizes (Chong & Forsyth 2020, "Effectively
    Unbiased FID and Inception Score and where to find them", Sec. 3):

        E FD(n, m) ~= c (1 / n + 1 / m)

    (for Gaussian features the mean term alone is tr(Sigma) (1/n + 1/m) exactly). ``c`` is
    estimated on the reference itself: ``num_splits`` seeded permutations split its M rows into
    h = min(num, M // 2) held-out and M - h remaining rows, and

        c = mean FD(held-out, remaining) / (1 / h + 1 / (M - h)),   floor = c (1 / num + 1 / M).

    On the 1797 digits c came out 617-691 and 652-733 in two runs of 40 splits per h, h from 100
    to 898 (``bench/bench_digits_floor.py``), so the linear model holds to about 10%.
    For num <= M // 2 the held-out sets have exactly num rows, so only the reference size is
    extrapolated (M - num to M) and the floor is a direct average even where the covariance of
    num < d rows is singular; only num > M // 2 extrapolates in N.

    Args:
      features: ``(M, d)`` reference features, M >= 4.
      num: the sample count N the floor is for, >= 2.
      num_splits: number of random splits averaged.
      seed: seed of the splits (fixed: the floor is deterministic).

    Returns:
      The floor as a Python float (same units as ``metrics.frechet_distance``).

    Raises:
      ValueError: ``num < 2``, fewer than 4 reference rows, or ``num_splits`` not an integer
        >= 1.
    """
    f = np.asarray(features, np.float64)
    m = f.shape[0] if f.ndim else 0
    if isinstance(num, bool) or not isinstance(num, (int, np.integer)) or num < 2:
        raise ValueError(f"the fresh floor needs an integer num >= 2, got {num!r}")
    if m < 4 or f.ndim != 2:
        raise ValueError(f"features must be (M, d) with M >= 4, got shape {f.shape}")
    if isinstance(num_splits, bool) or not isinstance(num_splits, (int, np.integer)) \
            or num_splits < 1:
        raise ValueError(f"num_splits must be an integer >= 1, got {num_splits!r}")
    h = min(int(num), m // 2)
    rng = np.random.default_rng(seed)
    fds = []
    for _ in range(num_splits):
        p = rng.permutation(m)
        fds.append(fid_from_features(f[p[:h]], f[p[h:]]))
    c = float(np.mean(fds)) / (1.0 / h + 1.0 / (m - h))
    return c * (1.0 / num + 1.0 / m)


def copy_fraction(samples: Any, train: Any, *, ratio: float = COPY_RATIO) -> float:
    """Fraction of samples that are near-copies of a training image.

    A sample x is a copy when its nearest training image is much closer than the second nearest
    (Gu et al. 2023, "On Memorization in Diffusion Models", Sec. 3; Yoon et al. 2023):

        d(x, NN_1(x)) < ratio * d(x, NN_2(x)),   d the Euclidean distance in pixel space.

    Held-out real digits score 0 (``bench/bench_digits_floor.py``); the training digits
    themselves score 1. Exact duplicates in ``train`` are one image: the neighbours are those of
    the DISTINCT training images (``np.unique`` over rows), so a sample equal to a duplicated
    digit has d_1 = 0 < ratio d_2 and is a copy (counting the duplicate as the second neighbour
    gave d_1 = d_2 = 0 and missed every copy of a duplicated digit).

    Args:
      samples: ``(N, D)`` flattened samples (e.g. ``digits_to_8x8`` output).
      train: ``(M, D)`` flattened training images, at least 2 distinct, same D and scale.
      ratio: the threshold on ``d_1 / d_2``, in (0, 1].

    Returns:
      The fraction in [0, 1] as a Python float.

    Raises:
      ValueError: shapes that do not match, fewer than 2 distinct training images, or ``ratio``
        outside (0, 1].
    """
    x = np.asarray(samples, np.float64)
    y = np.asarray(train, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or y.shape[0] < 2:
        raise ValueError(f"samples (N, D) and train (M >= 2, D) must be 2-D with equal D; got "
                         f"{x.shape} and {y.shape}")
    if (isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating, np.integer))
            or not 0.0 < ratio <= 1.0):
        raise ValueError(f"ratio must be a number in (0, 1], got {ratio!r}")
    y = np.unique(y, axis=0)  # exact duplicates are one image
    if y.shape[0] < 2:
        raise ValueError(f"train must hold at least 2 distinct images; got {y.shape[0]} distinct "
                         f"of {np.asarray(train).shape[0]}")
    if x.shape[0] == 0:
        return 0.0
    d2 = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * x @ y.T
    nearest = np.sqrt(np.clip(np.partition(d2, 1, axis=1)[:, :2], 0.0, None))
    return float(np.mean(nearest[:, 0] < ratio * nearest[:, 1]))


def digits_metrics(samples: Any, *, reference: Mapping[str, Any] | None = None,
                   num_floor: int | None = None,
                   params: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """FD, its two floors, inception-style score, class histogram and copies of digit samples.

        fd             = FD(features(samples), features(all real digits))
        fd_floor       = FD(features(num_floor of the real digits), features(all real digits))
        fd_floor_fresh = E FD(features(num_floor new digits), features(all real digits))
        is             = exp E_x KL(p(y|x) || p(y)) over the 10 classes
        copy_fraction  = share of samples with d(x, NN_1) < d(x, NN_2) / 3 among training digits

    with FD the Frechet distance of Gaussians fitted to the 64-dimensional hidden features
    (``metrics.frechet_distance``; unbiased covariances). FD has a positive bias that shrinks
    with the sample count, so both floors use the same count as the samples by default.
    ``fd_floor`` takes N distinct real digits from the reference itself, which no sampler of
    independent digits matches in expectation. A model that draws *new* digits from the data
    distribution scores about ``fd_ratio_fresh = fd / fd_floor_fresh = 1`` (``fresh_floor``),
    i.e. ``fd_ratio`` about 3.7 at N = 1000 (``fd_floor_fresh / fd_floor``); one that returns
    training digits scores about 4.4x (both measured in ``bench/bench_digits_floor.py``).
    ``copy_fraction`` (``copy_fraction``, Gu et al. 2023) tells the two apart.

    Args:
      samples: ``(N, S, S, C)`` images, N >= 2, float in [0, 1] or uint8 (module docstring).
      reference: ``digits_reference(S)`` output, to reuse across calls; default computed for the
        samples' size.
      num_floor: number of real digits of the floor (default N); a fixed seeded subset
        (``floor_indices``) of the reference digits.
      params: classifier parameters; default the shipped weights.

    Returns:
      ``{"fd", "fd_floor", "fd_ratio", "fd_floor_fresh", "fd_ratio_fresh", "is", "is_real",
      "copy_fraction", "class_hist", "num_samples"}``: floats, except ``class_hist`` (a list of
      10 fractions of samples by predicted class) and ``num_samples`` (int). ``is_real`` is the
      score of the floor's real digits.

    Raises:
      ValueError: samples of the wrong shape or range (``digits_to_8x8``), fewer than 2 samples,
        ``num_floor < 2``, or a reference computed for another image size.
    """
    p = _shipped_params() if params is None else params
    x8 = digits_to_8x8(samples)  # once: the classifier's input and the copy test's pixels
    f, logits = (np.asarray(v) for v in _forward_jit(p, x8))
    n = f.shape[0]
    if n < 2:
        raise ValueError(f"digits_metrics needs at least 2 samples, got {n}")
    size = np.shape(samples)[1]
    if reference is None:
        reference = digits_reference(size, p)
    elif reference.get("image_size", size) != size:
        raise ValueError(f"reference was computed for {reference['image_size']}x"
                         f"{reference['image_size']} digits, samples are {size}x{size}; use "
                         f"digits_reference({size})")
    if num_floor is not None and (isinstance(num_floor, bool)
                                  or not isinstance(num_floor, (int, np.integer))):
        raise ValueError(f"num_floor must be an integer >= 2, got {num_floor!r}")
    num_floor = n if num_floor is None else int(num_floor)
    idx = floor_indices(num_floor, len(reference["features"]))
    fd = _fd_to(f, reference)
    fd_floor = _fd_to(np.asarray(reference["features"])[idx], reference)
    fd_floor_fresh = fresh_floor(reference["features"], num_floor)
    train = reference.get("train_digits")
    if train is None:
        from score_jax.data import load_digits_images

        train = digits_to_8x8(load_digits_images(size, "train")[0])
    hist = np.bincount(np.argmax(logits, -1), minlength=NUM_CLASSES) / n
    return {"fd": fd, "fd_floor": fd_floor, "fd_ratio": fd / fd_floor,
            "fd_floor_fresh": fd_floor_fresh, "fd_ratio_fresh": fd / fd_floor_fresh,
            "copy_fraction": copy_fraction(x8, train),
            "is": inception_score(logits),
            "is_real": inception_score(np.asarray(reference["logits"])[idx]),
            "class_hist": [float(h) for h in hist], "num_samples": int(n)}


def digits_conditional_accuracy(samples: Any, labels: Any, *,
                                params: Mapping[str, Any] | None = None) -> dict[str, float]:
    """How well class-conditional samples show their requested digit.

        accuracy   = mean_i [argmax_y p(y | x_i) == l_i]
        confidence = mean_i p(l_i | x_i)

    with p(y | x) the classifier's softmax (held-out accuracy of the shipped weights: see
    ``bench/RESULTS.md``; real digits score that accuracy, labels unrelated to the images ~0.1).

    Args:
      samples: ``(N, S, S, C)`` images under the module's input convention.
      labels: ``(N,)`` integer labels in [0, 9].

    Returns:
      ``{"accuracy", "confidence", "num_samples"}`` as Python numbers.
    """
    labels = np.asarray(labels)
    n = np.shape(samples)[0]
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be ({n},) integers, got shape {labels.shape} dtype "
                         f"{labels.dtype}")
    if n and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
        raise ValueError(f"labels must lie in [0, {NUM_CLASSES - 1}], got "
                         f"[{labels.min()}, {labels.max()}]")
    _, logits = _features_and_logits(_shipped_params() if params is None else params, samples)
    logits = logits.astype(np.float64)
    log_p = logits - logits.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    return {"accuracy": float(np.mean(np.argmax(logits, -1) == labels)),
            "confidence": float(np.mean(np.exp(log_p[np.arange(n), labels]))),
            "num_samples": int(n)}


def _main(argv: Sequence[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m score_jax.evaluation.digits",
        description="Retrain the digits classifier deterministically and write its weights.")
    parser.add_argument("--out", default=WEIGHTS_PATH)
    args = parser.parse_args(argv)
    params, info = train_digits_classifier()
    save_digits_classifier(args.out, params)
    print(f"wrote {args.out}: " + ", ".join(f"{k} {v:.4f}" for k, v in info.items()))


if __name__ == "__main__":
    _main()
