#!/bin/bash
# time to first step of a resumed run, without and with the persistent compilation cache
cd "$(dirname "$0")/.."
W=${TMPDIR:-/tmp}/score_jax_bench_wd; C=${TMPDIR:-/tmp}/score_jax_bench_cache
rm -rf $W $C
CFG="--config=configs/vp/cifar10_ddpmpp_continuous.py:smoke --config.training.snapshot_sampling=False"
export XLA_FLAGS=--xla_force_host_platform_device_count=1
run() { /usr/bin/time -f "wall %e s" ${PYTHON:-python} train.py --workdir=$W $CFG "$@" 2>&1 | grep -E "first step done|wall|Error" ; }
echo "cold (fresh cache, 2 steps):"; run --compilation_cache=$C --config.training.n_iters=2
echo "cache entries: $(ls $C | wc -l)"
echo "resumed, cache off (to step 4):"; run --compilation_cache=none --config.training.n_iters=4
echo "resumed, cache on (to step 6):"; run --compilation_cache=$C --config.training.n_iters=6
echo "cache entries: $(ls $C | wc -l)"
