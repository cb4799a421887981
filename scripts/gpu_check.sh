#!/usr/bin/env bash
# The GPU checks, for a machine lent for minutes: build and self-check the CUDA kernels,
# `pytest -m gpu`, the GPU bench, then trainer=gpu runs of the experiment configs. Every
# step is time-boxed against one deadline (DEADLINE seconds, default 540), so one call
# returns what fit; logs and run summaries are re-packed into $OUT/all.tgz after each step
# and a summary of each run is printed at the end.
#
#   bash scripts/gpu_carry.sh            # here: .devcarry/ (packages the image may lack, data)
#   bash scripts/gpu_check.sh            # there, from the checkout's root; OUT defaults to gpu_out/
#   STEPS="build pytest_gpu bench_mlp" bash scripts/gpu_check.sh    # a subset, in this order
#   STEPS="build sweep:table1:mlp_1024x64:0.5" bash scripts/gpu_check.sh   # any seed-0 sweep
#
# Collect the runs afterwards with
#   python -m ardrop.report <unpacked sw/...> --out /tmp/x --collect docs/results/runs
# (GPU runs form their own protocols, `table1 (gpu)` / `table2 (gpu)`).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
T0=$(date +%s)
DEADLINE=${DEADLINE:-540}
# Sessions 25-26 ran the MLP bench (also at batch 1024), groups=1, the loader tests and
# seed-0 sweeps; the defaults now go for the GPU rows not yet run. `sweep:EXPERIMENT:MODEL:RATE`
# is any seed-0 sweep of an experiment config (Bernoulli, row and tile); the named sweeps
# below add overrides that form cannot carry.
STEPS=${STEPS:-"build pytest_gpu bench_lstm sweep:table2:lstm3:0.3 sweep:table2:lstm2:0.5 sweep:table1:mlp_1024x1024:0.7 sweep:table1:mlp_2048x2048:0.5"}
PY=${PY:-python3}
W=${W:-/tmp/ardrop_gpu}; mkdir -p "$W/logs" "$W/sw"
[ -d .devcarry/pylib ] && export PYTHONPATH="$PWD/.devcarry/pylib:$PWD"
[ -f .devcarry/git_commit ] && export ARDROP_GIT_COMMIT=$(cat .devcarry/git_commit)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
export ARDROP_CUDA_CACHE=${ARDROP_CUDA_CACHE:-/tmp/ardrop_cuda_cache}
TR="trainer=gpu trainer.enable_progress_bar=false"

el() { echo $(( $(date +%s) - T0 )); }
pack() {
  (cd "$W" && find logs sw -type f \( -name '*.log' -o -name '*.json' -o -path '*/.hydra/*.yaml' \) -print0 \
     | tar czf "$OUT/all.tgz.tmp" --null -T -) && mv "$OUT/all.tgz.tmp" "$OUT/all.tgz"
}
step() {  # step NAME MAX_SECONDS CMD...
  local name=$1 max=$2; shift 2
  local left=$(( DEADLINE - $(el) ))
  if (( left < 20 )); then echo "[$(el)s] skip $name (deadline)" | tee -a "$OUT/steps.log"; return; fi
  (( max > left )) && max=$left
  echo "[$(el)s] start $name (limit ${max}s)" | tee -a "$OUT/steps.log"
  timeout -k 5 "$max" "$@" > "$W/logs/$name.log" 2>&1
  local rc=$?
  echo "[$(el)s] end $name rc=$rc" | tee -a "$OUT/steps.log"
  pack
}
sweep() {  # sweep NAME MAX_SECONDS OVERRIDES...
  local name=$1 max=$2; shift 2
  step "$name" "$max" $PY -m ardrop.train -m "$@" $TR hydra.sweep.dir="$W/sw/$name"
}

{
  nvidia-smi; nproc
  $PY -c "import sys, torch; print(sys.version); print(torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
  nvcc --version | tail -2
  $PY -c "import pytorch_lightning, torchmetrics, hydra, omegaconf, matplotlib, tensorboard; print('pl', pytorch_lightning.__version__, 'tm', torchmetrics.__version__, 'hydra', hydra.__version__, 'omegaconf', omegaconf.__version__)"
} > "$W/logs/env.log" 2>&1
tail -n 4 "$W/logs/env.log"
[ -f .devcarry/data.tgz ] && [ ! -d data/mnist ] && tar xzf .devcarry/data.tgz
pack

for s in $STEPS; do
  case $s in
    build) step build 240 $PY -m ardrop.functional.kernel_check ;;
    pytest_gpu) step pytest_gpu 120 $PY -m pytest -m gpu -q -rfE -p no:cacheprovider ;;
    pytest_loader) step pytest_loader 120 $PY -m pytest -q -rfE -p no:cacheprovider tests/test_cuda_ext_loader.py ;;
    bench_mlp) step bench_mlp 90 $PY -m ardrop.bench --device cuda --json "$W/logs/bench_mlp.json" ;;
    bench_mlp_b1024) step bench_mlp_b1024 90 $PY -m ardrop.bench --device cuda --batch-size 1024 --json "$W/logs/bench_mlp_b1024.json" ;;
    bench_lstm) step bench_lstm 90 $PY -m ardrop.bench --device cuda --models lstm3 --rates 0.5,0.7 --json "$W/logs/bench_lstm.json" ;;
    t2_lstm3_05_tile) sweep t2_lstm3_05_tile 90 experiment=table2 model=lstm3 rate=0.5 seed=0 dropout=tile ;;
    t2_lstm3_07_groups1) sweep t2_lstm3_07_groups1 120 experiment=table2 model=lstm3 rate=0.7 seed=0 dropout=row,tile dropout.groups=1 ;;
    sweep:*:*:*) IFS=: read -r _ exp model rate <<< "$s"
      sweep "${exp}_${model}_${rate}" 170 experiment="$exp" model="$model" rate="$rate" seed=0 ;;
    *) echo "unknown step $s" | tee -a "$OUT/steps.log" ;;
  esac
done

echo "==== tails"
for f in build pytest_gpu pytest_loader; do [ -f "$W/logs/$f.log" ] && { echo "--- $f"; tail -n 4 "$W/logs/$f.log"; }; done
for f in "$W"/logs/bench_*.log; do [ -f "$f" ] && { echo "--- $f"; grep -A 12 "^model " "$f"; }; done
for f in "$W"/sw/*/*/summary.json; do
  [ -f "$f" ] && $PY -c "
import json, sys
d = json.load(open(sys.argv[1])); t = d.get('timing') or {}
print(sys.argv[1].split('/sw/')[1], d['choices'].get('dropout'), d.get('status'), (d.get('error') or '')[:80],
      'train_s', t.get('train_time_s'), 'step_s', t.get('step_median_s'),
      {k: round(v, 4) for k, v in (d.get('final') or {}).items() if k.startswith('test')})" "$f"
done
cat "$OUT/steps.log"
