"""XLA CPU flags that speed up score_jax's convolutional networks on CPU.

jaxlib 0.10.x hands convolutions, dots and reductions to YNNPACK by default (``__ynn_fusion`` in
the compiled HLO). For the CIFAR-10 DDPM++ network (batch 8, 32x32, 2 cores) XLA's own Eigen
convolutions are faster: with ``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``
(the default YNNPACK set minus stand-alone convolutions) the forward took 0.88-0.96x and the train
step 0.92x the default's time in interleaved comparisons (``python bench/bench_vs_torch.py --flag_sweep``; see
``bench/RESULTS.md``, section "CPU speed against PyTorch"). The flag changes which library does
the float32 arithmetic, not the arithmetic: the output moves by float32 round-off only (about
1e-6 of max |y|, the size of the difference to the PyTorch reference).

Not adopted: ``--xla_cpu_experimental_ynn_fusion_type=dot`` (YNNPACK for dots only) was slightly
faster still (0.84x) but computes wrong results in jaxlib 0.10.2: ``x @ jnp.ones((1024, 4))``
(a dot with a constant operand) returns NaN under it (tests/test_xla_flags.py checks that case).

Flags tried that change nothing for these networks (the compiled HLO is byte-identical):
``--xla_cpu_use_xnnpack``, ``--xla_cpu_use_onednn``, ``--xla_cpu_experimental_onednn_custom_call``,
``--xla_cpu_experimental_{xnn,onednn}_fusion_type=dot``. Fast-math flags change numbers and are
never set here.

XLA reads ``XLA_FLAGS`` once, when the first backend is created, so call
`apply_default_cpu_flags` at the top of an entry point, before anything runs a jax computation
(importing jax is fine; the backend starts on first use).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import MutableMapping

# jaxlib versions (major.minor) on which the flags were measured and checked for equal numbers;
# XLA aborts on a flag it does not know, so other versions get none.
TESTED_JAXLIB = ("0.10",)

# (flag name, value) pairs; the name is what a user's own XLA_FLAGS is checked for.
CPU_FLAGS: tuple[tuple[str, str], ...] = (
    ("--xla_cpu_experimental_ynn_fusion_type", "-individual_convolution"),
)


def default_cpu_flags() -> str:
    """The recommended XLA CPU flags as one ``XLA_FLAGS`` string, e.g.
    ``"--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"``."""
    return " ".join(f"{name}={value}" for name, value in CPU_FLAGS)


def _jaxlib_tested() -> bool:
    try:
        version = importlib.metadata.version("jaxlib")
    except importlib.metadata.PackageNotFoundError:
        return False
    return ".".join(version.split(".")[:2]) in TESTED_JAXLIB


def apply_default_cpu_flags(environ: MutableMapping[str, str] | None = None) -> str:
    """Append `default_cpu_flags` to ``environ["XLA_FLAGS"]`` (default ``os.environ``).

    A flag the user already set in ``XLA_FLAGS`` is left alone (theirs wins), and nothing is
    added when ``SCORE_JAX_NO_XLA_FLAGS`` is set to a non-empty value or the installed jaxlib is
    not one of ``TESTED_JAXLIB`` (XLA aborts on unknown flags). Has an effect only before
    the first jax computation of the process. Only CPU flags are set; GPU/TPU runs ignore them.

    Returns:
      The resulting ``XLA_FLAGS`` value ("" if unset).
    """
    env = os.environ if environ is None else environ
    current = env.get("XLA_FLAGS", "")
    if env.get("SCORE_JAX_NO_XLA_FLAGS") or not _jaxlib_tested():
        return current
    present = {tok.split("=", 1)[0] for tok in current.split()}
    extra = [f"{name}={value}" for name, value in CPU_FLAGS if name not in present]
    if extra:
        env["XLA_FLAGS"] = " ".join([current, *extra]).strip()
    return env.get("XLA_FLAGS", "")
