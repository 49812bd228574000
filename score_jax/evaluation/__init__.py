"""Evaluation: the FID Inception-v3, FID / KID / IS, reference statistics, bits/dim and the
digits quality metric (``digits.py``: FD / IS / conditional accuracy in a small classifier's
features).

See ``metrics.py`` for the formulas and ``inception.py`` for the network and its weights;
``python -m score_jax.evaluation.stats`` writes reference statistics for a dataset; ``run.py``
evaluates one checkpoint (samples -> FID / IS / KID, bits/dim) resumably; ``workdir.py``
walks the checkpoints of a training workdir (test loss, bits/dim, samples, FID / IS / KID,
reports; ``python evaluate.py``). ``workdir`` sits above ``sample_lib`` and is imported as
``score_jax.evaluation.workdir`` (not re-exported here: the package's other modules sit below
``sample_lib``, which uses the digits metric).
"""

from score_jax.evaluation.digits import (
    copy_fraction,
    digits_classifier,
    digits_conditional_accuracy,
    digits_metrics,
    digits_reference,
    fresh_floor,
    train_digits_classifier,
)
from score_jax.evaluation.inception import (
    INCEPTION_IMAGE_SIZE,
    NUM_FEATURES,
    NUM_LOGITS,
    InceptionFeatures,
    InceptionV3,
    convert_inception_pytorch,
    get_inception_fn,
    load_inception,
    preprocess_for_inception,
    pt_inception_state_dict_shapes,
)
from score_jax.evaluation.metrics import (
    RESIZE_CONVENTIONS,
    StreamingStats,
    bits_per_dim_from_logp,
    check_image_range,
    check_stats_resize,
    dataset_bits_per_dim,
    fid_from_features,
    frechet_distance,
    images_to_unit_range,
    inception_score,
    inception_score_splits,
    kid_and_std_from_features,
    kid_from_features,
    load_stats,
    metrics_report,
    save_stats,
    uniform_dequantize,
)
from score_jax.evaluation.run import (
    evaluate_bpd,
    evaluate_samples,
    quantize_samples,
    read_report,
    sample_statistics,
)

__all__ = [
    "RESIZE_CONVENTIONS",
    "check_stats_resize",
    "INCEPTION_IMAGE_SIZE",
    "NUM_FEATURES",
    "NUM_LOGITS",
    "InceptionFeatures",
    "InceptionV3",
    "StreamingStats",
    "bits_per_dim_from_logp",
    "check_image_range",
    "convert_inception_pytorch",
    "dataset_bits_per_dim",
    "copy_fraction",
    "digits_classifier",
    "digits_conditional_accuracy",
    "digits_metrics",
    "digits_reference",
    "fresh_floor",
    "evaluate_bpd",
    "evaluate_samples",
    "fid_from_features",
    "frechet_distance",
    "get_inception_fn",
    "images_to_unit_range",
    "inception_score",
    "inception_score_splits",
    "kid_and_std_from_features",
    "kid_from_features",
    "load_inception",
    "load_stats",
    "metrics_report",
    "preprocess_for_inception",
    "pt_inception_state_dict_shapes",
    "quantize_samples",
    "read_report",
    "sample_statistics",
    "save_stats",
    "train_digits_classifier",
    "uniform_dequantize",
]
