"""Scale of the digits quality metric: floors, IS of real digits, accuracy, trivial baselines.

    python bench/bench_digits_metric.py

Prints, with the shipped classifier weights (``score_jax/evaluation/digits_classifier.npz``):
its train / held-out accuracy; the floor FD(N real digits, all digits) for N in {250, 500, 1000}
at 8x8 and at the 16x16 of the upsampled configs; the inception-style score of real digits; and
the FD of baselines at N = 1000 so that a model's score can be placed between them: Gaussian and
uniform noise images, the mean digit repeated, blurred digits, digits shifted by one pixel,
digits of one class only. Also times one ``digits_metrics`` call on 1000 samples.
"""

from __future__ import annotations

import time

import numpy as np

from score_jax.data import load_digits_images
from score_jax.evaluation import digits as D


def _box_blur(x: np.ndarray) -> np.ndarray:
    """3x3 box blur (edge-padded) of (N, 8, 8, 1) images."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    return sum(p[:, i:i + 8, j:j + 8] for i in range(3) for j in range(3)) / 9.0


def main() -> None:
    x, y = load_digits_images(8, "all")
    params = D.load_digits_classifier()
    print(f"classifier: train accuracy (first 1617) "
          f"{D.classifier_accuracy(params, x[:1617].reshape(-1, 64), y[:1617]):.4f}, "
          f"held-out accuracy (last 180) "
          f"{D.classifier_accuracy(params, x[1617:].reshape(-1, 64), y[1617:]):.4f}")
    cond = D.digits_conditional_accuracy(x, y)
    print(f"conditional accuracy of all 1797 real digits with their labels: "
          f"{cond['accuracy']:.4f} (confidence {cond['confidence']:.4f}); shuffled labels: "
          f"{D.digits_conditional_accuracy(x, np.random.default_rng(0).permutation(y))['accuracy']:.4f}")

    ref8 = D.digits_reference(8)
    print(f"IS of all 1797 real digits: {D.inception_score(ref8['logits']):.3f}")
    for size in (8, 16):
        xs = x if size == 8 else load_digits_images(size, "all")[0]
        ref = ref8 if size == 8 else D.digits_reference(size)
        for n in (250, 500, 1000):
            out = D.digits_metrics(xs[D.floor_indices(n)], reference=ref)
            print(f"{size}x{size} floor N={n:4d}: fd_floor {out['fd_floor']:.4f}, "
                  f"is_real {out['is_real']:.3f}")

    n = 1000
    rng = np.random.default_rng(0)
    real = x[D.floor_indices(n)]
    baselines = {
        "real digits (the floor)": real,
        "Gaussian noise N(0.5, 0.3^2), clipped": np.clip(
            0.5 + 0.3 * rng.standard_normal((n, 8, 8, 1)), 0, 1).astype(np.float32),
        "uniform noise U[0, 1]": rng.uniform(size=(n, 8, 8, 1)).astype(np.float32),
        "mean digit, repeated": np.broadcast_to(x.mean(0), (n, 8, 8, 1)).astype(np.float32),
        "real digits, 3x3 box blur": _box_blur(real).astype(np.float32),
        "real digits, shifted 1 px right": np.pad(real, ((0, 0), (0, 0), (1, 0), (0, 0)))[
            :, :, :8],
        "real digits + N(0, 0.05^2) noise": np.clip(
            real + 0.05 * rng.standard_normal(real.shape), 0, 1).astype(np.float32),
        "real digits quantised to 8 bits (uint8)": np.round(real * 255).astype(np.uint8),
        "only the digit 1 (180 of them, N=180)": x[y == 1][:180],
    }
    print(f"\nbaselines at N={n} (8x8; floor for the same N in the fd_floor column):")
    print(f"{'samples':42s} {'fd':>9s} {'fd_floor':>9s} {'ratio':>8s} {'is':>6s}")
    for name, s in baselines.items():
        out = D.digits_metrics(s, reference=ref8)
        print(f"{name:42s} {out['fd']:9.4f} {out['fd_floor']:9.4f} {out['fd_ratio']:8.2f} "
              f"{out['is']:6.3f}")

    t0 = time.perf_counter()
    D.digits_metrics(real, reference=ref8)
    t1 = time.perf_counter()
    D.digits_metrics(real)
    t2 = time.perf_counter()
    print(f"\ndigits_metrics(1000 samples): {t1 - t0:.3f} s with a reused reference, "
          f"{t2 - t1:.3f} s computing the reference")


if __name__ == "__main__":
    main()
