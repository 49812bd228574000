"""What a perfect digits model scores: the subset floor, the fresh floor, copies.

    python bench/bench_digits_floor.py [--samples PATH.npz ...]

The digits metric (``score_jax.evaluation.digits``) compares samples with all 1797 real digits.
Its subset floor ``fd_floor`` is the FD of N of those same digits; this script measures how far
that is below the FD of N *new* digits from the same distribution, which is what a model that
generalises can at best score. It prints:

1. both floors at N = 64, 256, 1000 (``fd_floor`` and ``fresh_floor``);
2. the linear bias model behind ``fresh_floor``: FD(h held-out digits, the other 1797 - h) over
   40 random disjoint splits per h, and c = FD / (1/h + 1/(1797 - h)), which is constant if
   E FD = c (1/n + 1/m) holds (Chong & Forsyth 2020);
3. an independent parametric check: Gaussian features with the digits' mean and covariance,
   FD(1000 draws, 1797 draws), averaged over 20 repetitions, against the fresh floor;
4. memorisers: 1000 training digits drawn with replacement, scored by ``digits_metrics``
   (copies 100%), and 1000 of all 1797 reference digits drawn with replacement (20 draws): even
   they score above twice the subset floor, whose digits are drawn without replacement;
5. how the classifier sees digits of the test split (other writers): FD of the 180 test digits
   against the 1617 training digits, against 180 training digits disjoint from the rest;
6. for each ``--samples`` file (``samples.npz`` as ``sample.py`` writes it): both ratios and
   the copy fraction.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from score_jax.data import load_digits_images
from score_jax.evaluation import digits as D
from score_jax.evaluation.metrics import StreamingStats
from score_jax.evaluation.metrics import fid_from_features as _fd


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", nargs="*", default=[], help="samples.npz files to score")
    args = parser.parse_args(argv)
    t0 = time.time()
    ref = D.digits_reference(8)
    feats = np.asarray(ref["features"], np.float64)
    m = len(feats)
    rng = np.random.default_rng(0)

    print("1. floors (8x8, reference = all 1797 digits)")
    print(f"{'N':>6} {'subset floor':>13} {'fresh floor':>12} {'fresh / subset':>15}")
    for n in (64, 256, 1000):
        sub = D.digits_metrics(np.zeros((2, 8, 8, 1), np.float32), reference=ref,
                               num_floor=n)["fd_floor"]
        fresh = D.fresh_floor(feats, n)
        print(f"{n:>6} {sub:>13.4f} {fresh:>12.4f} {fresh / sub:>15.2f}")

    print("\n2. disjoint real splits: FD(h held-out, 1797 - h rest), 40 splits each")
    print(f"{'h':>6} {'mean FD':>9} {'sem':>7} {'c = FD / (1/h + 1/(M-h))':>26}")
    for h in (100, 200, 400, 600, 898):
        v = []
        for _ in range(40):
            p = rng.permutation(m)
            v.append(_fd(feats[p[:h]], feats[p[h:]]))
        c = np.mean(v) / (1 / h + 1 / (m - h))
        print(f"{h:>6} {np.mean(v):>9.4f} {np.std(v) / np.sqrt(len(v)):>7.4f} {c:>26.0f}")

    mu, sigma = StreamingStats(feats.shape[1]).update(feats).stats()
    chol = np.linalg.cholesky(sigma + 1e-9 * np.eye(len(mu)))
    g = [_fd(mu + rng.standard_normal((1000, len(mu))) @ chol.T,
             mu + rng.standard_normal((m, len(mu))) @ chol.T) for _ in range(20)]
    print(f"\n3. Gaussian features (digits' mean and covariance), FD(1000 draws, {m} draws): "
          f"{np.mean(g):.4f} +- {np.std(g) / np.sqrt(len(g)):.4f} (20 repetitions); fresh floor "
          f"{D.fresh_floor(feats, 1000):.4f}; subset floor "
          f"{D.digits_metrics(np.zeros((2, 8, 8, 1), np.float32), reference=ref, num_floor=1000)['fd_floor']:.4f}")

    x_train, _ = load_digits_images(8, "train")
    copies = x_train[rng.integers(0, len(x_train), 1000)]
    r = D.digits_metrics(copies, reference=ref)
    print(f"\n4. memoriser (1000 training digits drawn with replacement): FD {r['fd']:.4f}, "
          f"{r['fd_ratio']:.2f}x the subset floor, {r['fd_ratio_fresh']:.2f}x the fresh floor, "
          f"copies {100 * r['copy_fraction']:.0f}%")
    x_all, _ = load_digits_images(8, "all")
    ratios = [D.digits_metrics(x_all[rng.integers(0, m, 1000)], reference=ref)["fd_ratio"]
              for _ in range(20)]
    print(f"   memoriser of all {m} reference digits (1000 drawn with replacement, 20 draws): "
          f"{np.mean(ratios):.2f}x the subset floor (min {np.min(ratios):.2f}, max "
          f"{np.max(ratios):.2f}); 1/n over 1/n - 1/M predicts "
          f"{(1 / 1000) / (1 / 1000 - 1 / m):.2f}x")

    x_test, _ = load_digits_images(8, "test")
    feat_fn = D.digits_classifier()[0]
    f_tr, f_te = feat_fn(x_train), feat_fn(x_test)
    held = []
    for _ in range(40):
        p = rng.permutation(len(f_tr))
        held.append(_fd(f_tr[p[:180]], f_tr[p[180:]]))
    print(f"\n5. 180 test-split digits vs the 1617 training digits: FD {_fd(f_te, f_tr):.3f}; "
          f"180 training digits vs the other 1437: {np.mean(held):.3f} +- "
          f"{np.std(held) / np.sqrt(len(held)):.3f} (40 splits). Copies among test digits: "
          f"{100 * D.copy_fraction(D.digits_to_8x8(x_test), ref['train_digits']):.0f}%")

    if args.samples:
        print("\n6. samples")
        print(f"{'samples folder':<60} {'N':>5} {'FD':>7} {'/subset':>8} {'/fresh':>7} {'IS':>6} "
              f"{'copies':>7}")
    for path in args.samples:
        with np.load(path) as f:
            s = f["samples"]
        r = D.digits_metrics(s, reference=ref)
        name = os.path.basename(os.path.dirname(os.path.abspath(path)))
        print(f"{name[:60]:<60} {r['num_samples']:>5} {r['fd']:>7.4f} {r['fd_ratio']:>8.2f} "
              f"{r['fd_ratio_fresh']:>7.2f} {r['is']:>6.2f} {100 * r['copy_fraction']:>6.1f}%")
    print(f"\n({time.time() - t0:.1f} s)")


if __name__ == "__main__":
    main()
