#!/usr/bin/env bash
# What one short session on a lent GPU machine runs, prepared here so that the
# machine's minutes go to measuring (the team's GPU time comes in 15-minute
# leases of a machine with JAX, flax, optax, orbax and PyTorch preinstalled and
# no network). Every step has its own time limit and writes its log under $OUT.
#
#   benchmarks/gpu_session.sh smoke   # versions, a 1+1-iteration Fashion-MNIST VGG-13
#                                     # run through launch/one_gpu.sh, the benchmark
#   benchmarks/gpu_session.sh search NAME ITER1 ITER2 TEACHER_EPOCHS SECONDS [--config.x=v ...]
#                                     # a longer Fashion-MNIST VGG-13 run in /tmp/NAME;
#                                     # run it twice (two NAMEs) to see re-run speed and
#                                     # whether the results repeat
#   benchmarks/gpu_session.sh threads # the benchmark with 1 compile thread, then the default
#   benchmarks/gpu_session.sh throughput
#                                     # issue 17, < 8 min: whole-search figures
#                                     # (throughput.py --search, VGG-13 at 28x28) with
#                                     # every student on its own program (the baseline,
#                                     # 3 + 2 iterations, with PyTorch; rerun last),
#                                     # shared programs one student per call, stacked
#                                     # x5 by vmap and by map, vmap x1, and vmap x5 with
#                                     # XLA's autotuning off; settles runtime.train_together
#                                     # and the sharing rule's GPU figures
#
# 2026-11-28 (H200, docs/records/h200-2026-11-28): `smoke`, then `search fm_search 10 6 20
# 460 --config.teacher.decay_epochs='(15,)' --config.distill.epochs=1
# --config.final.epochs=20` and the same again as fm_search2: 4.8 min of device time
# (the machine's start included), 4.9 and 2.4 min.
#
# Next lease (issue 4), one call each: `threads`; `search fm_shared 10 6 20 460
# --config.runtime.share_stage2_program=on [same overrides as above]` (stage 2 in one
# program, the default on GPUs since: its seconds and compile waits against
# fm_search's); `search fm_det1 10 6 20 460 --config.runtime.deterministic=True [same
# overrides]` then fm_det2 (do the two runs repeat, and what does it cost against the
# 232 s search above); and
# `XLA_FLAGS=--xla_gpu_autotune_level=0 benchmarks/gpu_session.sh threads` (compile time
# against step time without autotuning); and `search fm_shared1 10 6 20 460
# --config.runtime.share_stage1_programs=on [same overrides]` (stage 1 in one program
# per set of pools kept, off by default: its stage-1 seconds against fm_shared's).
#
# Needs: python3 with jax[cuda] and the preinstalled packages above; wheels in
# .whl/ (ml_collections, tensorboardX: missing from that image) are installed
# into /tmp/site; Fashion-MNIST's four IDX files in $FMNIST (default
# .devdata/fashion-mnist). Prepared on the developer machine (both folders listed
# in .git/info/exclude and carried with the call):
#   cp -r /usr/share/datasets/fashion-mnist .devdata/
#   pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
#     ml_collections==1.1.0 tensorboardX==2.6.5
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/gpu_session}"
FMNIST="${FMNIST:-.devdata/fashion-mnist}"
usage() {
  echo "usage: benchmarks/gpu_session.sh smoke | threads |" \
    "throughput | search NAME ITER1 ITER2 TEACHER_EPOCHS SECONDS [overrides]" >&2
  exit 2
}
case "${1:-smoke}" in
  smoke | threads | throughput) ;;
  search) (($# >= 6)) || usage ;;
  *) usage ;;
esac
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHON="${PYTHON:-python3}"
# PyTorch (benchmark --torch) shares the GPU with JAX's preallocated pool.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.5}"
if compgen -G '.whl/*.whl' >/dev/null; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi

copy_run() {  # WORKDIR PREFIX: the run's summary and per-iteration records
  cp "$1/summary.json" "$OUT/$2_summary.json" 2>/dev/null
  cp "$1/metrics.jsonl" "$OUT/$2_metrics.jsonl" 2>/dev/null
}

case "${1:-smoke}" in
  smoke)
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
      --format=csv 2>&1 | tee "$OUT/versions.txt"
    "$PYTHON" -c 'import jax, flax, optax, chex, orbax.checkpoint as o, numpy, sklearn
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "orbax", o.__version__ if hasattr(o, "__version__") else "?", "numpy", numpy.__version__)
print(jax.devices(), jax.devices()[0].device_kind)' 2>&1 | tee -a "$OUT/versions.txt"
    nproc | tee -a "$OUT/versions.txt"
    start=$SECONDS
    timeout 170 launch/one_gpu.sh configs/fashion_mnist_vgg13.py /tmp/fm_smoke \
      "--config.data.path=$FMNIST" --config.teacher.epochs=1 --config.teacher.decay_epochs='()' \
      --config.search.stage1_iterations=1 --config.search.stage2_iterations=1 \
      --config.distill.epochs=1 --config.final.epochs=1 >"$OUT/smoke.log" 2>&1
    echo "smoke: rc=$? in $((SECONDS - start)) s" | tee -a "$OUT/versions.txt"
    tail -25 "$OUT/smoke.log"
    copy_run /tmp/fm_smoke smoke
    start=$SECONDS
    timeout 280 "$PYTHON" benchmarks/throughput.py --torch 2>&1 | tee "$OUT/benchmark.log"
    echo "benchmark: rc=$? in $((SECONDS - start)) s"
    ;;
  search)
    shift
    name="$1" iter1="$2" iter2="$3" teacher_epochs="$4" seconds="$5"
    shift 5
    start=$SECONDS
    timeout "$seconds" launch/one_gpu.sh configs/fashion_mnist_vgg13.py "/tmp/$name" \
      "--config.data.path=$FMNIST" "--config.teacher.epochs=$teacher_epochs" \
      "--config.search.stage1_iterations=$iter1" "--config.search.stage2_iterations=$iter2" \
      "$@" >"$OUT/$name.log" 2>&1
    echo "search: rc=$? in $((SECONDS - start)) s"
    tail -40 "$OUT/$name.log"
    copy_run "/tmp/$name" "$name"
    ;;
  throughput)
    search() {  # LABEL SECONDS [throughput.py flags]: one JSON line per setting
      local label="$1" seconds="$2"
      shift 2
      local start=$SECONDS
      timeout "$seconds" "$PYTHON" benchmarks/throughput.py --search "$@" \
        >"$OUT/search_$label.log" 2>&1
      echo "search_$label: rc=$? in $((SECONDS - start)) s: $(tail -1 "$OUT/search_$label.log")"
    }
    shared=(--share-stage1=on --share-stage2=on)
    # Timeouts add up to 455 s (under 8 minutes with the machine's start).
    search own 75 --share-stage1=off --share-stage2=off --together=off \
      --search-iterations=3,2 --torch
    search shared 70 "${shared[@]}" --together=off
    search vmap5 70 "${shared[@]}" --together=vmap --students-per-call=5
    search map5 70 "${shared[@]}" --together=map --students-per-call=5
    search vmap1 50 "${shared[@]}" --together=vmap --students-per-call=1 --search-iterations=3,2
    XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_autotune_level=0" \
      search vmap5_autotune0 60 "${shared[@]}" --together=vmap --students-per-call=5
    search own_again 60 --share-stage1=off --share-stage2=off --together=off \
      --search-iterations=3,2
    ;;
  threads)
    for threads in 1 0; do
      timeout 280 "$PYTHON" benchmarks/throughput.py "--compile-threads=$threads" \
        2>&1 | tee "$OUT/benchmark_threads$threads.log"
    done
    ;;
esac
