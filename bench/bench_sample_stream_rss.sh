#!/usr/bin/env bash
# Peak host memory (max RSS, /usr/bin/time -v) of sample.py drawing N samples, in memory
# (--keep_images: the code before streaming keeps every float sample) against streamed
# (--nokeep_images: samples.npz written batch by batch), and that both write the same samples.
# A cheap stand-in network (the digits DDPM++ config at 32 x 32 x 3, nf 8, two Heun steps, random
# weights) so the run measures the host arrays, not the network.
#   bash bench/bench_sample_stream_rss.sh [N] [OUT_DIR] [REPO_FOR_BEFORE]
# REPO_FOR_BEFORE (optional): a checkout of the code before streaming, run with the same flags
# minus --keep_images.
set -euo pipefail
N=${1:-20000}
OUT=${2:-/tmp/sample_stream_rss}
BEFORE=${3:-}
HERE=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
FLAGS=(--config="$HERE/configs/default_digits.py" --config.data.dataset=NONE
       --config.data.image_size=32 --config.data.num_channels=3 --config.model.nf=8
       --config.sampling.num_steps=2 --config.sampling.batch_size=500 --num_samples="$N")
PYTHONPATH="$HERE" "${PYTHON:-python}" - "$OUT/init.msgpack" "${FLAGS[@]}" <<'PY'
import sys

import jax
import optax
from absl import flags

sys.argv = [sys.argv[0]] + sys.argv[2:] + ["--out=" + sys.argv[1]]
from score_jax.config.flags import define_config_flag  # noqa: E402

define_config_flag("config", None, "config")
flags.DEFINE_integer("num_samples", None, "unused")
flags.DEFINE_string("out", None, "checkpoint file")
flags.FLAGS(sys.argv)
from score_jax import config as config_lib  # noqa: E402
from score_jax import train_step as ts  # noqa: E402
from score_jax.checkpoint import save_variables  # noqa: E402

built = config_lib.build(flags.FLAGS.config)
params = ts.init_state(jax.random.key(0), built.model, optax.identity(), built.image_shape,
                       num_classes=built.num_classes).params
save_variables({"params": jax.device_get(params)}, flags.FLAGS.out)
print("checkpoint", flags.FLAGS.out)
PY
run() {  # name, repo, extra flags
  local name=$1 repo=$2
  shift 2
  /usr/bin/time -v env PYTHONPATH="$repo" "${PYTHON:-python}" "$repo/sample.py" "${FLAGS[@]}" \
      --checkpoint="$OUT/init.msgpack" --output_dir="$OUT/$name" "$@" \
      2> "$OUT/$name.time" > "$OUT/$name.log"
  echo "$name: max RSS $(grep 'Maximum resident' "$OUT/$name.time" | awk '{print $NF}') KB," \
       "wall $(grep 'Elapsed (wall' "$OUT/$name.time" | awk '{print $NF}')"
}
[ -n "$BEFORE" ] && run before "$BEFORE"
run kept "$HERE" --keep_images
run streamed "$HERE" --nokeep_images
"${PYTHON:-python}" - "$OUT" <<'PY'
import hashlib, os, sys

import numpy as np

out = sys.argv[1]
for name in ("before", "kept", "streamed"):
    p = os.path.join(out, name, "samples.npz")
    if os.path.exists(p):
        x = np.load(p)["samples"]
        print(name, x.shape, x.dtype, hashlib.sha256(x.tobytes()).hexdigest()[:16])
PY
