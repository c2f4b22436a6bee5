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
#   benchmarks/gpu_session.sh paper search | baselines [tiny]
#                                     # issue 21, one call each, in this order, on the
#                                     # same warm machine (both < 9 min): `search` trains
#                                     # the VGG-13 teacher on all 54,000 Fashion-MNIST
#                                     # training images, then searches towards the
#                                     # paper's 100 + 100 iterations (1-epoch
#                                     # distillations, a 4-minute time budget) and trains
#                                     # the answer and 5 Pareto students; `baselines`
#                                     # runs Taylor pruning stopped at the smallest Pareto
#                                     # student within 1 point of the teacher, then
#                                     # FitNet-4, VGG-small and SqueezeNet 1.1. `tiny`:
#                                     # the same steps shrunk for a CPU (600 images, 1
#                                     # epoch, a 1-minute budget), run here 2026-12-07:
#                                     # search 3.5 min, baselines 3.6 min on 2 cores, all
#                                     # steps rc=0 (with OUT, PYTHON=.venv/bin/python,
#                                     # FMNIST=/usr/share/datasets/fashion-mnist)
#
# Issue 21's GPU window (not yet had): with .devdata/ and .whl/ prepared as below,
#   run(command="benchmarks/gpu_session.sh paper search", timeout_s=600,
#       carry=[".devdata", ".whl"])
# then, on the same warm machine or the next window after that call again,
#   run(command="benchmarks/gpu_session.sh paper baselines", timeout_s=600, carry=[...]);
# commit $OUT under docs/records/.
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
  echo "usage: benchmarks/gpu_session.sh smoke | threads | throughput |" \
    "search NAME ITER1 ITER2 TEACHER_EPOCHS SECONDS [overrides] |" \
    "paper search|baselines [tiny]" >&2
  exit 2
}
case "${1:-smoke}" in
  smoke | threads | throughput) ;;
  search) (($# >= 6)) || usage ;;
  paper) [[ "${2:-}" == search || "${2:-}" == baselines ]] && [[ -z "${3:-}" || "$3" == tiny ]] \
    || usage ;;
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

paper() {  # search | baselines, [tiny]: issue 21's run (see the top)
  local step="$1" tiny="${2:-}" dir=/tmp/fm_paper
  local run=(launch/one_gpu.sh configs/fashion_mnist_vgg13.py "$dir")
  local size=(--config.teacher.epochs=20 "--config.teacher.decay_epochs=(15,)"
    --config.distill.epochs=1 --config.final.epochs=10)
  local limits=(120 400 280 60)  # teacher, compress, pruning, each hand-designed student
  local budget="${BUDGET_MINUTES:-4}"  # of search time: leaves ~2 min for the 6 final trainings
  if [[ "$tiny" == tiny ]]; then  # a CPU: the same commands on 600 images, tiny budgets
    dir="$OUT/fm_paper_tiny"
    run=("$PYTHON" -m n2n_jax.main --config=configs/fashion_mnist_vgg13.py "--workdir=$dir")
    size=(--config.data.max_train_examples=600 --config.teacher.epochs=1
      "--config.teacher.decay_epochs=()" --config.distill.epochs=1 --config.final.epochs=1
      --config.search.rollouts=2 --config.pruning.repeats=1 --config.pruning.max_steps=2
      --config.pruning.finetune_steps=2 --config.pruning.score_batches=1
      --config.runtime.progress=False)
    limits=(300 600 300 300)
    budget="${BUDGET_MINUTES:-1}"
  fi
  local common=("--config.data.path=$FMNIST" "${size[@]}")
  step_log() {  # LABEL RC START
    echo "paper $1: rc=$2 in $((SECONDS - $3)) s" | tee -a "$OUT/paper_steps.txt"
  }
  local start rc
  if [[ "$step" == search ]]; then
    start=$SECONDS
    timeout "${limits[0]}" "${run[@]}" "${common[@]}" --config.mode=teacher \
      >"$OUT/paper_teacher.log" 2>&1
    rc=$?
    step_log teacher "$rc" "$start"
    ((rc == 0)) || return "$rc"
    start=$SECONDS
    timeout "${limits[1]}" "${run[@]}" "${common[@]}" --config.search.stage1_iterations=100 \
      --config.search.stage2_iterations=100 --config.final.pareto_max=5 \
      "--config.runtime.time_budget_minutes=$budget" >"$OUT/paper_search.log" 2>&1
    rc=$?
    step_log search "$rc" "$start"
    for name in summary.json metrics.jsonl report.md pareto.json search_stage1.png \
        search_stage2.png accuracy_vs_params.png teacher.json; do
      cp "$dir/$name" "$OUT/paper_$name" 2>/dev/null
    done
    return "$rc"
  fi
  [[ -f "$dir/pareto.json" ]] || {
    echo "paper baselines: no $dir/pareto.json: run 'paper search' first on this machine" >&2
    return 1
  }
  # Pruning stops at the smallest Pareto student (or the answer) whose test accuracy is
  # within 1 point of the teacher's (the largest if none is): below its size, or below
  # its validation accuracy less pruning.max_accuracy_drop (0.01), as the paper stops.
  local target
  target=$("$PYTHON" - "$dir" <<'PY'
import json, sys
d = sys.argv[1]
summary = json.load(open(f'{d}/summary.json'))
teacher = summary['teacher']['test_accuracy']
students = json.load(open(f'{d}/pareto.json'))['students'] + [summary['student']]
good = [s for s in students if s['test_accuracy'] >= teacher - 0.01]
s = min(good, key=lambda s: s['params']) if good else max(students, key=lambda s: s['params'])
print(s['params'], round(s['val_accuracy'] - 0.01, 6))
PY
  ) || return 1
  read -r target_params target_accuracy <<<"$target"
  start=$SECONDS
  timeout "${limits[2]}" "${run[@]}" "${common[@]}" --config.mode=prune \
    "--config.pruning.min_params=$target_params" \
    "--config.pruning.min_accuracy=$target_accuracy" >"$OUT/paper_prune.log" 2>&1
  step_log "prune (to $target_params params, val. acc. $target_accuracy)" $? "$start"
  for name in fitnet4 vgg_small squeezenet1_1; do
    start=$SECONDS
    timeout "${limits[3]}" "${run[@]}" "${common[@]}" --config.mode=handdesigned \
      "--config.handdesigned.name=$name" >"$OUT/paper_$name.log" 2>&1
    step_log "$name" $? "$start"
  done
  mkdir -p "$OUT/paper_baselines"
  cp -r "$dir/baselines/." "$OUT/paper_baselines/" 2>/dev/null
  find "$OUT/paper_baselines" -type d -name student -prune -exec rm -rf {} +
  return 0
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
  paper)
    paper "$2" "${3:-}"
    ;;
  threads)
    for threads in 1 0; do
      timeout 280 "$PYTHON" benchmarks/throughput.py "--compile-threads=$threads" \
        2>&1 | tee "$OUT/benchmark_threads$threads.log"
    done
    ;;
esac
