#!/usr/bin/env bash
# Train and test every method on the shared Omniglot, 5-way 1-shot and 5-way 5-shot, with the
# same training budget in CPU minutes per run, then build the comparison table.
#
#   bash scripts/omniglot_table.sh [CPU minutes] [threads per run] [parallel runs]
#
# Each run is the preset conf/experiment/omniglot/<method>_5w<K>s.yaml, stopped when its
# process has used the budget of CPU time (callbacks.cpu_budget; fair even when runs share
# the cores; Lightning validates once more at the stop, so the best-on-validation checkpoint
# always exists) and tested on the same 600 test episodes. Output: logs/table/omniglot/.
set -euo pipefail
budget="${1:-5}"
threads="${2:-1}"
parallel="${3:-2}"
methods="${METHODS:-protonet meta_lstm maml fomaml reptile matchingnet matchingnet_fce siamese baseline_nn baseline_finetune}"
shots="${SHOTS:-1 5}"
out="${OUT:-logs/table/omniglot}"
python="${PYTHON:-python}"

run_one() {
  local method="$1" shot="$2"
  local epochs=(trainer.max_epochs=-1)
  # Reptile anneals its outer step size over the planned run, so it keeps its preset's epochs
  # (the budget may still stop it earlier)
  [[ "$method" == reptile ]] && epochs=()
  local dir="$out/${method}_5w${shot}s"
  if [[ -f "$dir/results.json" ]]; then
    echo "skip $dir (done)"
    return 0
  fi
  echo "$(date +%T) start $method 5w${shot}s"
  OMP_NUM_THREADS="$threads" MKL_NUM_THREADS="$threads" "$python" train.py \
    "experiment=omniglot/${method}_5w${shot}s" \
    "callbacks.cpu_budget.minutes=$budget" "${epochs[@]}" \
    trainer.enable_progress_bar=false logger=csv \
    "hydra.run.dir=$dir" >"$dir.log" 2>&1 || echo "FAILED $method 5w${shot}s (see $dir.log)"
  echo "$(date +%T) end $method 5w${shot}s"
}
export -f run_one
export out budget threads python

mkdir -p "$out"
jobs=()
for method in $methods; do for shot in $shots; do jobs+=("$method $shot"); done; done
printf '%s\n' "${jobs[@]}" | xargs -P "$parallel" -L 1 bash -c 'run_one $0 $1'
"$python" -m fewshot.reporting "$out" || true
