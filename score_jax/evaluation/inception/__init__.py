"""The FID Inception-v3 network in Flax, its weight converter and a sharded feature function.

FID, KID and IS are defined by one particular network: the Inception-v3 graph
``inception-2015-12-05`` that TF-GAN (``tfgan.eval``, used by score_sde's ``evaluation.py``) and
the original TTUR FID code run. pytorch-fid ported that graph's weights to PyTorch as
``pt_inception-2015-12-05-6726825d.pth``; this module reads that file (or an ``.npz`` with the same
key names) and reproduces the graph in ``flax.linen``:

* torchvision's Inception-v3 layout (``Conv2d_1a_3x3`` ... ``Mixed_7c``, ``fc``), every convolution
  a ``BasicConv2d`` = conv (no bias) -> BatchNorm (eps 1e-3, running statistics) -> ReLU;
* the 2015-12-05 graph's pooling quirks (pytorch-fid ``FIDInceptionA/C/E_1/E_2``): the 3x3
  stride-1 average pools inside Mixed_5b-d, 6b-e and 7b exclude the zero padding from the average
  (TensorFlow's ``avg_pool`` with SAME padding), and Mixed_7c pools its last branch with a *max*
  pool instead of an average pool;
* ``pool_3`` = spatial mean of Mixed_7c (2048 features, used by FID / KID) and ``logits`` =
  ``fc(pool_3)`` over 1008 classes (the graph's ``softmax/logits``, used by IS: TF-GAN's
  ``classifier_score_from_logits`` takes the softmax over all 1008 outputs).

Inputs follow the standard protocol (``preprocess_for_inception``): images quantised to 8 bits,
bilinearly resized to 299x299 (half-pixel centres, no antialiasing: pytorch-fid's
``F.interpolate(..., mode="bilinear", align_corners=False)`` and TF2's ``tf.image.resize``) and
mapped to [-1, 1] by ``u / 127.5 - 1`` for ``u`` in [0, 255] (score_sde's
``(x - 127.5) / 127.5``; pytorch-fid's ``2 * (u / 255) - 1``).

Modules: ``network`` (the flax network), ``preprocess`` (the input pipeline), ``features``
(loading and the sharded feature function); the weight layout and converter live in
``score_jax.convert.inception``. Everything is re-exported here. Command line::

    python -m score_jax.evaluation.inception --to_npz pt_inception-2015-12-05-6726825d.pth w.npz
"""
from score_jax.convert.inception import (
    NUM_FEATURES,
    NUM_LOGITS,
    convert_inception_pytorch,
    pt_inception_state_dict_shapes,
)
from score_jax.convert.inception import main as _main
from score_jax.convert.inception import read_inception_state_dict as _read_state_dict
from score_jax.evaluation.inception.features import (
    PT_INCEPTION_SHA256,
    InceptionFeatures,
    check_inception_sha256,
    file_sha256,
    get_inception_fn,
    iter_chunks,
    load_inception,
)
from score_jax.evaluation.inception.network import (
    BN_EPSILON,
    BasicConv2d,
    InceptionA,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
    InceptionV3,
)
from score_jax.evaluation.inception.preprocess import (
    INCEPTION_IMAGE_SIZE,
    QUANTIZE_MODES,
    RESIZE_CONVENTIONS,
    preprocess_for_inception,
)

__all__ = ["NUM_FEATURES", "NUM_LOGITS", "BN_EPSILON", "INCEPTION_IMAGE_SIZE", "QUANTIZE_MODES",
           "BasicConv2d", "InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE",
           "InceptionV3", "preprocess_for_inception", "pt_inception_state_dict_shapes",
           "convert_inception_pytorch", "load_inception", "InceptionFeatures", "iter_chunks",
           "get_inception_fn", "_main", "_read_state_dict", "PT_INCEPTION_SHA256",
           "check_inception_sha256", "file_sha256", "RESIZE_CONVENTIONS"]
