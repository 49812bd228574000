"""copy_fraction with exact duplicates in the training set, and fresh_floor's num_splits check
(issue 26 item 9, metric parts)."""
import numpy as np
import pytest

from score_jax.evaluation import digits as D


def test_copy_fraction_counts_copies_of_duplicated_training_images():
    """Training set: a, a (exact duplicate), b, c far apart. A sample equal to a is a copy
    (d_1 = 0 < ratio d_2 with d_2 = |a - b| to the nearest DISTINCT image); it scored 0 when the
    duplicate counted as the second neighbour (d_1 = d_2 = 0)."""
    a, b, c = np.zeros(4), np.full(4, 10.0), np.full(4, -10.0)
    train = np.stack([a, a, b, c])
    assert D.copy_fraction(a[None], train) == 1.0
    assert D.copy_fraction(np.stack([a, a + 0.1, b, (a + b) / 2]), train) == 0.75
    # the training set copied back: every row a copy, duplicated or not
    assert D.copy_fraction(train, train) == 1.0
    # without duplicates nothing changes: a sample halfway between two images is no copy
    assert D.copy_fraction(((b + c) / 2)[None], np.stack([a + 5, b, c])) == 0.0
    with pytest.raises(ValueError, match="2 distinct"):
        D.copy_fraction(a[None], np.stack([a, a, a]))


@pytest.mark.parametrize("bad", [2.5, 0, -1, True, "3", None])
def test_fresh_floor_num_splits_must_be_an_integer(bad):
    ref = np.random.default_rng(0).normal(size=(40, 3))
    with pytest.raises(ValueError, match=r"num_splits must be an integer >= 1, got"):
        D.fresh_floor(ref, 10, num_splits=bad)
    assert D.fresh_floor(ref, 10, num_splits=np.int64(2)) > 0
