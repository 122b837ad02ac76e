#!/usr/bin/env bash
# The GPU figures docs/benchmarks.md still lacks, in one command for a lent GPU machine:
#   MAML's loop against vmap (and the floor) and the Meta-LSTM episode against its learner floor.
#   bash scripts/gpu_benchmarks.sh                 # on the GPU machine: writes into $OUT (or bench_results/)
#   DEVICE=cpu REPEATS=1 SHAPES=omniglot-5w1s-T5 EVAL=10 bash scripts/gpu_benchmarks.sh   # a dry run here
set -euo pipefail
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-bench_results}
REPEATS=${REPEATS:-5}
EVAL=${EVAL:-100}
read -r -a SHAPES <<< "${SHAPES:-omniglot-5w1s-T5 omniglot-5w5s-T8 miniimagenet-5w1s-T5 miniimagenet-5w5s-T8}"
mkdir -p "$OUT"
python -c "
import torch
print('torch', torch.__version__, 'cuda', torch.version.cuda)
print('device:', torch.cuda.get_device_name(0) if '$DEVICE' == 'cuda' else 'cpu')
" | tee "$OUT/device.txt"
python -m benchmarks.maml --device "$DEVICE" --repeats "$REPEATS" --out "$OUT/maml_$DEVICE.json" 2>&1 | tee "$OUT/maml_$DEVICE.txt"
python -m benchmarks.meta_lstm --device "$DEVICE" --repeats "$REPEATS" --shapes "${SHAPES[@]}" \
  --variants fused torch --eval-episodes "$EVAL" --out "$OUT/meta_lstm_$DEVICE.json" 2>&1 | tee "$OUT/meta_lstm_$DEVICE.txt"
