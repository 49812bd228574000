"""FID, KID, Inception Score, feature statistics and bits/dim, computed in float64.

Sources: Heusel et al. 2017 (FID, arXiv 1706.08500), Binkowski et al. 2018 (KID, arXiv
1801.01401), Salimans et al. 2016 (IS, arXiv 1606.03498); the reference implementations are
TF-GAN ``tfgan.eval`` (which score_sde's ``run_lib.evaluate`` calls) and pytorch-fid.

Precision: the reductions run on the host in numpy float64 (a 2048x2048 covariance from 50k
samples and the matrix square root of FID lose digits in float32); the library never changes the
jax configuration (no ``enable_x64``). Means and covariances are accumulated in float64
(``StreamingStats``), exactly mergeable across batches and hosts.

Image inputs (``images_to_unit_range``, used by every entry point that takes images): float in
[0, 1] or uint8 in [0, 255]; anything else is refused with the range found.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np

from score_jax.likelihood import (  # noqa: F401 (re-exported: bits/dim lives in likelihood)
    bits_per_dim_from_logp,
    dataset_bits_per_dim,
    uniform_dequantize,
)
from score_jax.likelihood import bpd_rounds as _bpd_rounds  # noqa: F401

# --------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------


def _features_2d(name: str, x: Any, min_rows: int = 1) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (num_samples, dim) array, got shape {x.shape}")
    if x.shape[0] < min_rows:
        raise ValueError(f"{name} has {x.shape[0]} samples; at least {min_rows} are needed")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains non-finite values")
    return x


def _check_same_dim(x1: np.ndarray, x2: np.ndarray, names: str = "f1, f2") -> None:
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"feature dims differ: {names} have shapes {x1.shape} and {x2.shape}")


RANGE_TOLERANCE = 1e-3


def image_value_range(images: Any) -> tuple[float, float]:
    """``(min, max)`` of an image array as Python floats (both NaN if any value is NaN: numpy's
    min / max propagate it, and every comparison with NaN fails the range checks)."""
    x = np.asarray(images)
    if x.size == 0:
        return 0.0, 0.0
    return float(x.min()), float(x.max())


def check_uint8_range(images: Any, *, name: str = "images") -> np.ndarray:
    """Integer images must hold 8-bit levels: returns them as uint8, else raises ``ValueError``
    naming the range found."""
    x = np.asarray(images)
    lo, hi = image_value_range(x)
    if lo < 0 or hi > 255:
        raise ValueError(f"{name}: integer images must hold 8-bit levels in [0, 255], found "
                         f"values in [{lo:g}, {hi:g}]")
    return x.astype(np.uint8)


def check_image_range(images: Any, *, name: str = "images",
                      tolerance: float = RANGE_TOLERANCE) -> None:
    """Raises ``ValueError`` unless ``images`` follow the convention of ``images_to_unit_range``
    (integers in [0, 255], or floats in ``[-tolerance, 1 + tolerance]``); converts nothing."""
    x = np.asarray(images)
    if np.issubdtype(x.dtype, np.integer):
        check_uint8_range(x, name=name)
        return
    if not jnp.issubdtype(x.dtype, jnp.floating):  # jnp: bfloat16 counts as a float
        raise ValueError(f"{name}: images must be float in [0, 1] or uint8 in [0, 255], got dtype "
                         f"{x.dtype}")
    lo, hi = image_value_range(x)
    if not (lo >= -tolerance and hi <= 1.0 + tolerance):
        hint = ""
        if 1.0 + tolerance < hi <= 255.0 and lo >= -tolerance:
            hint = " (values in [0, 255]? divide by 255 or pass uint8)"
        elif lo < -tolerance:
            hint = " (centred [-1, 1] images? map them with (x + 1) / 2)"
        raise ValueError(f"{name}: float images must lie in [0, 1] (tolerance {tolerance:g}), "
                         f"found values in [{lo:g}, {hi:g}]{hint}")


def images_to_unit_range(images: Any, *, name: str = "images",
                         tolerance: float = RANGE_TOLERANCE) -> np.ndarray:
    """The image convention of the evaluation entry points: float in [0, 1] or uint8 in [0, 255].

    * integer arrays (uint8, or any integer dtype holding 0..255) -> ``x / 255`` as float32;
    * float arrays with every value in ``[-tolerance, 1 + tolerance]`` -> clipped to [0, 1]
      (samplers overshoot the data range slightly; the default tolerance is 1e-3, a quarter of
      an 8-bit level);
    * anything else -- floats in [0, 255], centred [-1, 1] images, NaNs -- raises ``ValueError``
      naming the range found, instead of being saturated or clipped into other images.

    Args:
      images: an array of any shape.
      name: how the error message calls the input.
      tolerance: the accepted overshoot of floats beyond [0, 1].

    Returns:
      A float32 numpy array in [0, 1] of the same shape.
    """
    x = np.asarray(images)
    check_image_range(x, name=name, tolerance=tolerance)
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / 255.0
    return np.clip(x.astype(np.float32), 0.0, 1.0)


# --------------------------------------------------------------------------------------------
# Frechet distance
# --------------------------------------------------------------------------------------------


def _psd_sqrt_eigenvalues(lam: np.ndarray) -> np.ndarray:
    # Eigenvalues below the round-off level d * eps * max|lam| are zeros of a singular
    # matrix; their sqrt would add ~sqrt(eps) each, so they are set to 0 first.
    tol = lam.shape[0] * np.finfo(lam.dtype).eps * np.max(np.abs(lam))
    return np.sqrt(np.where(lam > tol, lam, 0.0))


def _frechet_distance_f64(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray,
                          sigma2: np.ndarray) -> float:
    sigma1 = 0.5 * (sigma1 + sigma1.T)
    sigma2 = 0.5 * (sigma2 + sigma2.T)
    lam1, u1 = np.linalg.eigh(sigma1)
    sqrt_sigma1 = (u1 * _psd_sqrt_eigenvalues(lam1)) @ u1.T
    m = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    tr_covmean = np.sum(_psd_sqrt_eigenvalues(np.linalg.eigvalsh(0.5 * (m + m.T))))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2).

        d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1^{1/2} S2 S1^{1/2})^{1/2})

    (Dowson & Landau 1982; FID of Heusel et al. 2017). The last trace equals the
    ``tr(sqrtm(S1 S2))`` of pytorch-fid / TF-GAN because S1 S2 is similar to
    S1^{1/2} S2 S1^{1/2}, but the symmetric form is computed with two float64 ``eigh`` calls (numpy, on the host)
    whose round-off eigenvalues (below d * eps * max|lambda|, including negative ones) are set
    to 0 before the square root, so it stays real and stable for the
    singular covariances of fewer samples than dimensions (where ``scipy.linalg.sqrtm`` needs
    pytorch-fid's ``eps * I`` offset and may return complex parts).

    Args:
      mu1, mu2: ``(d,)`` means.
      sigma1, sigma2: ``(d, d)`` covariances (symmetrised before use).

    Returns:
      The squared Frechet distance (what FID reports), as a Python float.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2,
                                                                                    np.float64))
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.ndim != 1 or mu1.shape != mu2.shape:
        raise ValueError(f"mu1 and mu2 must be 1-D of equal length, got {mu1.shape}, {mu2.shape}")
    d = mu1.shape[0]
    for name, s in (("sigma1", sigma1), ("sigma2", sigma2)):
        if s.shape != (d, d):
            raise ValueError(f"{name} must have shape {(d, d)} to match the means, got {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"{name} contains non-finite values")
    return _frechet_distance_f64(mu1, sigma1, mu2, sigma2)


def fid_from_features(f1: Any, f2: Any) -> float:
    """FID between two feature sets: ``frechet_distance`` of their means and covariances.

    Covariances are unbiased (``np.cov``, divisor N - 1), as in pytorch-fid and TF-GAN.

    Args:
      f1, f2: ``(N1, d)`` and ``(N2, d)`` features (Inception pool_3: d = 2048), N >= 2.
    """
    f1 = _features_2d("f1", f1, min_rows=2)
    f2 = _features_2d("f2", f2, min_rows=2)
    _check_same_dim(f1, f2)
    s1 = StreamingStats(f1.shape[1]).update(f1)
    s2 = StreamingStats(f2.shape[1]).update(f2)
    return frechet_distance(s1.mean, s1.covariance, s2.mean, s2.covariance)


# --------------------------------------------------------------------------------------------
# Streaming mean / covariance
# --------------------------------------------------------------------------------------------


class StreamingStats:
    """Running mean and covariance of feature vectors, accumulated batch by batch in float64.

    Keeps ``n``, the mean and the centred scatter matrix ``M2 = sum_i (x_i - mean)(x_i - mean)^T``
    and combines a new batch (or another ``StreamingStats``) with the pairwise update of Chan,
    Golub & LeVeque (1979):

        n = n_a + n_b,  delta = mean_b - mean_a,  mean = mean_a + delta n_b / n,
        M2 = M2_a + M2_b + delta delta^T n_a n_b / n,

    which avoids the cancellation of the naive ``E[x x^T] - mean mean^T``. The covariance is
    ``M2 / (n - 1)``, equal to ``np.cov(x, rowvar=False)`` of all rows seen. Merging is exact and
    order-independent up to round-off, so per-host statistics can be combined.
    """

    def __init__(self, dim: int):
        if dim <= 0:
            raise ValueError(f"dim must be positive, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self._mean = np.zeros(dim, np.float64)
        self._m2 = np.zeros((dim, dim), np.float64)

    def _combine(self, n_b: int, mean_b: np.ndarray, m2_b: np.ndarray) -> None:
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def update(self, features: Any) -> StreamingStats:
        """Adds a ``(batch, dim)`` batch of features; returns ``self``."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"features must have shape (batch, {self.dim}), got {x.shape}")
        if x.shape[0] == 0:
            return self
        if not np.all(np.isfinite(x)):
            raise ValueError("features contain non-finite values")
        mean_b = x.mean(axis=0)
        xc = x - mean_b
        self._combine(x.shape[0], mean_b, xc.T @ xc)
        return self

    def merge(self, other: StreamingStats) -> StreamingStats:
        """Returns new statistics of the union of both sets (``self`` is unchanged)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dims {self.dim} and {other.dim}")
        out = StreamingStats(self.dim)
        out.count, out._mean, out._m2 = self.count, self._mean.copy(), self._m2.copy()
        if other.count:
            out._combine(other.count, other._mean, other._m2)
        return out

    @property
    def mean(self) -> np.ndarray:
        if self.count < 1:
            raise ValueError("no features accumulated yet")
        return self._mean.copy()

    @property
    def covariance(self) -> np.ndarray:
        """Unbiased covariance ``M2 / (n - 1)``."""
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 samples, got {self.count}")
        return self._m2 / (self.count - 1)

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mu, sigma)`` for ``frechet_distance`` / ``save_stats``."""
        return self.mean, self.covariance


RESIZE_CONVENTIONS = ("pytorch", "tf1")
DEFAULT_RESIZE = "pytorch"
RESIZE_KEY = "resize"  # the key of the convention in a statistics .npz


def check_resize(resize: str) -> str:
    """``resize`` if it names a FID resize convention (``RESIZE_CONVENTIONS``), else
    ``ValueError`` naming the valid choices. See ``inception.preprocess_for_inception``."""
    if resize not in RESIZE_CONVENTIONS:
        raise ValueError(f"resize must be one of {RESIZE_CONVENTIONS}, got {resize!r}")
    return resize


def save_stats(path: str | os.PathLike, mu: Any, sigma: Any, *, features: Any = None,
               num_samples: int | None = None, resize: str = DEFAULT_RESIZE) -> None:
    """Writes reference statistics to ``path`` (.npz with ``mu``, ``sigma``, ``resize``).

    ``features`` (optional, the pool_3 rows) is stored as ``pool_3`` (the key score_sde's stats
    files use), which KID needs; ``num_samples`` as ``num_samples``; ``resize`` (the Inception
    resize convention the features were computed in, ``"pytorch"`` or ``"tf1"``) as a string
    under ``resize``, which ``load_stats`` / ``check_stats_resize`` read back.
    """
    check_resize(resize)
    mu = np.asarray(mu, np.float64)
    sigma = np.asarray(sigma, np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"mu must be (d,) and sigma (d, d); got {mu.shape} and {sigma.shape}")
    arrays = {"mu": mu, "sigma": sigma, RESIZE_KEY: np.asarray(resize)}
    if features is not None:
        features = np.asarray(features, np.float32)
        if features.ndim != 2 or features.shape[1] != mu.shape[0]:
            raise ValueError(f"features must be (N, {mu.shape[0]}), got {features.shape}")
        arrays["pool_3"] = features
        num_samples = features.shape[0] if num_samples is None else num_samples
    if num_samples is not None:
        arrays["num_samples"] = np.asarray(num_samples, np.int64)
    os.makedirs(os.path.dirname(os.path.abspath(os.fspath(path))), exist_ok=True)
    np.savez(path, **arrays)


def load_stats(path: str | os.PathLike, *, resize_if_missing: str | None = None
               ) -> dict[str, Any]:
    """Reads reference statistics: ``{"mu", "sigma", "resize"}`` plus ``"pool_3"`` /
    ``"num_samples"`` when stored.

    Files holding only ``pool_3`` (score_sde's ``assets/stats/*_stats.npz``) get ``mu`` / ``sigma``
    computed from the features. Loaded with ``allow_pickle=False``.

    ``"resize"`` is the Inception resize convention (a str, ``RESIZE_CONVENTIONS``): the stored
    one (``save_stats``); for a file without it, ``resize_if_missing`` when given; else, for a
    file in score_sde's layout (``pool_3`` only, no ``mu`` / ``sigma``) ``"tf1"`` (score_sde's
    ``evaluation.py`` computes them in the TF1 FID graph); else ``ValueError``: a ``mu`` /
    ``sigma`` file without the key (TTUR's ``fid.py`` statistics are TF1, files written here
    before the key existed are ``"pytorch"``) has no knowable convention, so the caller must
    state it.
    """
    with np.load(path, allow_pickle=False) as f:
        out: dict[str, Any] = {k: f[k] for k in f.files}
    score_sde_layout = "pool_3" in out and "mu" not in out
    if "mu" not in out or "sigma" not in out:
        if "pool_3" not in out:
            raise ValueError(f"{os.fspath(path)!r} holds neither mu/sigma nor pool_3 features "
                             f"(keys: {sorted(out)})")
        s = StreamingStats(out["pool_3"].shape[1]).update(out["pool_3"])
        out["mu"], out["sigma"] = s.stats()
        out.setdefault("num_samples", np.asarray(s.count, np.int64))
    if RESIZE_KEY in out:
        out[RESIZE_KEY] = check_resize(str(out[RESIZE_KEY]))
    elif resize_if_missing is not None:
        out[RESIZE_KEY] = check_resize(resize_if_missing)
    elif score_sde_layout:
        out[RESIZE_KEY] = "tf1"
    else:
        raise ValueError(
            f"reference statistics {os.fspath(path)!r} do not record their Inception resize "
            f"convention (no {RESIZE_KEY!r} key; keys: {sorted(out)}); FIDs of different "
            f"conventions are not comparable, so state it: resize_if_missing= one of "
            f"{RESIZE_CONVENTIONS} (evaluate.py: --ref_stats_resize). Statistics made by TTUR's "
            "fid.py (its downloadable fid_stats_*.npz) are 'tf1'; files written by this project "
            "before the key existed are 'pytorch'")
    return out


def check_stats_resize(reference: Mapping[str, Any], resize: str, *,
                       source: str = "reference statistics") -> None:
    """Refuses to compare samples in convention ``resize`` with statistics of another one.

    ``reference``: a ``load_stats`` dict (its ``"resize"``); an in-memory dict without the key is
    accepted as is. Raises ``ValueError`` naming both conventions and the two ways out.
    """
    check_resize(resize)
    stored = reference.get(RESIZE_KEY)
    if stored is not None and str(stored) != resize:
        raise ValueError(
            f"{source} were computed with the {str(stored)!r} Inception resize but the samples "
            f"are scored with {resize!r}; FIDs / KIDs across conventions are not comparable. "
            f"Score with resize={str(stored)!r} (config.eval.fid_resize / --fid_resize) or "
            f"recompute the statistics with --resize {resize}")


# --------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------


def _poly_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a.shape[1]
    return (a @ b.T / d + 1.0) ** 3


def _mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    return float((np.sum(k_xx) - np.trace(k_xx)) / (m * (m - 1))
                 + (np.sum(k_yy) - np.trace(k_yy)) / (n * (n - 1))
                 - 2.0 * np.mean(k_xy))


def _block_bounds(n: int, n_blocks: int) -> np.ndarray:
    # TF-GAN: n_blocks - (n mod n_blocks) blocks of n // n_blocks, then the rest one larger.
    v = n // n_blocks
    plus_one = n - v * n_blocks
    sizes = [v] * (n_blocks - plus_one) + [v + 1] * plus_one
    return np.concatenate([[0], np.cumsum(sizes)])


def kid_and_std_from_features(f1: Any, f2: Any, *, max_block_size: int = 1024,
                              num_subsets: int | None = None, subset_size: int = 1000,
                              seed: int = 0, dtype: Any = np.float64) -> tuple[float, float]:
    """Kernel Inception Distance and the standard error of its estimate.

    KID is the squared MMD with the cubic polynomial kernel k(x, y) = (x.y / d + 1)^3
    (Binkowski et al. 2018), estimated without bias on sets X (m rows), Y (n rows):

        MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
                - 2 sum_{i, j} k(x_i, y_j) / (m n).

    Default (``num_subsets=None``): TF-GAN's block estimator, which score_sde reports
    (``kernel_classifier_distance_and_std_from_activations``): both sets are cut, in order, into
    ``ceil(max(m, n) / max_block_size)`` blocks of near-equal size; the result is the mean of the
    per-block estimates and the standard error ``std(ddof=1) / sqrt(num_blocks)`` (NaN for one
    block). The blocking assumes both sets are in random order.
    With ``num_subsets``: the estimator of Binkowski et al. / torch-fidelity, the mean over
    ``num_subsets`` random subsets of ``subset_size`` rows drawn without replacement from each
    set (``seed``), and the standard deviation of the subset estimates over sqrt(num_subsets).

    Args:
      f1, f2: ``(m, d)`` and ``(n, d)`` features, at least 2 rows per block / subset.
      dtype: compute dtype of the kernel matrices (numpy, on the host; float64 by default,
        float32 is faster and loses ~1e-6 relative).

    Returns:
      ``(kid, standard_error)`` as Python floats.
    """
    f1 = _features_2d("f1", f1, min_rows=2)
    f2 = _features_2d("f2", f2, min_rows=2)
    _check_same_dim(f1, f2)
    np_dtype = np.dtype(dtype)
    if num_subsets is None:
        if max_block_size < 2:
            raise ValueError(f"max_block_size must be at least 2, got {max_block_size}")
        n_blocks = math.ceil(max(len(f1), len(f2)) / max_block_size)
        b1, b2 = _block_bounds(len(f1), n_blocks), _block_bounds(len(f2), n_blocks)
        if min(np.diff(b1).min(), np.diff(b2).min()) < 2:
            raise ValueError(f"with {n_blocks} blocks, sets of {len(f1)} and {len(f2)} rows give "
                             "blocks of fewer than 2 rows; use a larger max_block_size")
        pairs = [(f1[b1[i]:b1[i + 1]], f2[b2[i]:b2[i + 1]]) for i in range(n_blocks)]
    else:
        if num_subsets < 1:
            raise ValueError(f"num_subsets must be positive, got {num_subsets}")
        if not 2 <= subset_size <= min(len(f1), len(f2)):
            raise ValueError(f"subset_size={subset_size} must be in [2, min(N1, N2)="
                             f"{min(len(f1), len(f2))}]")
        rng = np.random.default_rng(seed)
        pairs = [(f1[rng.choice(len(f1), subset_size, replace=False)],
                  f2[rng.choice(len(f2), subset_size, replace=False)])
                 for _ in range(num_subsets)]
    ests = np.array([_mmd2_unbiased(np.asarray(x, np_dtype), np.asarray(y, np_dtype))
                     for x, y in pairs])
    mean = float(ests.mean())
    if len(ests) < 2:
        return mean, float("nan")
    if num_subsets is None:
        return mean, float(ests.std(ddof=1) / math.sqrt(len(ests)))
    return mean, float(ests.std() / math.sqrt(len(ests)))


def kid_from_features(f1: Any, f2: Any, **kwargs: Any) -> float:
    """Kernel Inception Distance (see ``kid_and_std_from_features`` for the estimator)."""
    return kid_and_std_from_features(f1, f2, **kwargs)[0]


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------


def _log_inception_score(logits: np.ndarray) -> float:
    log_p = logits - logits.max(axis=-1, keepdims=True)
    log_p = log_p - np.log(np.sum(np.exp(log_p), axis=-1, keepdims=True))
    p = np.exp(log_p)
    log_q = np.log(np.mean(p, axis=0))
    # KL(p(y|x) || p(y)); p log p is taken as 0 where p underflows to 0.
    kl = np.sum(np.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)
    return float(np.mean(kl))


def inception_score_splits(logits: Any, num_splits: int) -> np.ndarray:
    """Inception Score of each of ``num_splits`` consecutive, near-equal parts of ``logits``.

        IS = exp( E_x KL( p(y|x) || p(y) ) ),   p(y) = E_x p(y|x),

    with p(y|x) = softmax(logits) over all classes (1008 for the FID Inception, as TF-GAN's
    ``classifier_score_from_logits``), computed in float64.
    """
    logits = _features_2d("logits", logits, min_rows=1)
    if logits.shape[1] < 2:
        raise ValueError(f"logits need at least 2 classes, got shape {logits.shape}")
    if not 1 <= num_splits <= logits.shape[0]:
        raise ValueError(f"num_splits={num_splits} must be in [1, num_samples="
                         f"{logits.shape[0]}]")
    return np.array([math.exp(_log_inception_score(np.asarray(part, np.float64)))
                     for part in np.array_split(logits, num_splits)])


def inception_score(logits: Any, num_splits: int = 1) -> float:
    """Inception Score (Salimans et al. 2016) from classifier logits.

    ``num_splits=1`` is TF-GAN's ``classifier_score_from_logits`` on all samples, what score_sde
    reports (CIFAR-10 IS 9.89 in the paper); ``num_splits=10`` is the mean over ten splits of the
    original improved-GAN code (``inception_score_splits`` gives the per-split values for the
    standard deviation).

    Args:
      logits: ``(N, num_classes)`` logits (the Inception's 1008 outputs).
      num_splits: number of consecutive parts averaged.

    Returns:
      The (mean) Inception Score, in [1, num_classes].
    """
    return float(np.mean(inception_score_splits(logits, num_splits)))


# --------------------------------------------------------------------------------------------
# Bits per dimension
# --------------------------------------------------------------------------------------------


# bits_per_dim_from_logp, uniform_dequantize, dataset_bits_per_dim and the round loop live in
# score_jax.likelihood (the one home of dequantisation and bits/dim); re-exported above.


def metrics_report(features: Any, logits: Any | None, reference: Mapping[str, Any], *,
                   kid: bool = True) -> dict[str, float]:
    """FID / IS / KID of generated samples against reference statistics (one checkpoint).

    Args:
      features: ``(N, 2048)`` pool_3 features of the samples.
      logits: ``(N, 1008)`` logits of the samples, or None to skip IS.
      reference: ``load_stats`` output; KID is computed when it holds ``pool_3``.
      kid: set False to skip KID even when reference features are present.

    Returns:
      ``{"fid", "is" (if logits), "kid" and "kid_std" (if computed), "num_samples"}``.
    """
    features = _features_2d("features", features, min_rows=2)
    s = StreamingStats(features.shape[1]).update(features)
    out = {"fid": frechet_distance(s.mean, s.covariance, reference["mu"], reference["sigma"]),
           "num_samples": float(features.shape[0])}
    if logits is not None:
        out["is"] = inception_score(logits)
    if kid and "pool_3" in reference:
        out["kid"], out["kid_std"] = kid_and_std_from_features(reference["pool_3"], features)
    return out
