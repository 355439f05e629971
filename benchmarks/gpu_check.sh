#!/usr/bin/env bash
# The GPU checks, as one prepared call on a lent GPU machine (python3 with torch, no Flower, no
# internet). Make the wheels here first (../shared/tools/gpu-wheels.sh .whl) and send .whl with
# the checkout. Steps, each under its own time limit so that a slow one cannot eat the others:
#   1. the CUDA-only tests (batched trainer on the GPU vs the CPU sequential reference, node sums, ...);
#   2. NIID-Bench's setting end to end with `fedwsa run` (10 clients, Dirichlet 0.5, 10 local
#      epochs, batch 64, NIID_ROUNDS rounds), per-round wall time from metrics.jsonl;
#   3. benchmarks/speed.py --device cuda at CLIENTS clients per round, all five layouts (the
#      last, (c'), is (c) with node-aggregate=false: every client's weights sent back);
#   4. benchmarks/grid.py --device cuda: a grid stacked (one federation) vs one by one;
#   5. benchmarks/round_cost.py --device cuda: fedwsa's own cost of a round outside training;
#   6. NIID-Bench's whole grid (fedavg, fedprox, scaffold, fednova, fedwsa, cart x seeds 0-2,
#      10 clients, 10 local epochs) stacked for NIIDGRID_ROUNDS rounds, projected to 50 rounds
#      (issue 15's goal: at most 10 minutes on one GPU).
# CIFAR-10 does not fit in the transfer beside the wheels, so the data are a CIFAR-10-shaped
# .npz of random pixels (50,000 + 10,000 images): the same work per round, meaningless accuracy.
# Figures go to $OUT (default /tmp/gpu-check); on a CPU, DEVICE=cpu with small sizes tries it.
# STEPS picks steps (default "tests niid speed grid cost niidgrid"); SPEED_ARGS adds speed.py arguments,
# STRATEGIES runs speed.py once per strategy preset (default fedavg), and GRID_ARGS replaces
# grid.py's grid (default: fedavg, scaffold x 2 seeds, 100 clients, 3 rounds of 1 epoch: issue 15's
# 100-client goal, rounds per second stacked vs one by one).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check}
DEVICE=${DEVICE:-cuda}
CLIENTS=${CLIENTS:-100}
ROUNDS=${ROUNDS:-4}
NIID_ROUNDS=${NIID_ROUNDS:-50}
NIID_LIMIT_S=${NIID_LIMIT_S:-180}
SPEED_LIMIT_S=${SPEED_LIMIT_S:-240}
TRAIN_IMAGES=${TRAIN_IMAGES:-50000}
GRID_LIMIT_S=${GRID_LIMIT_S:-240}
STEPS=${STEPS:-tests niid speed grid cost niidgrid}
NIIDGRID_ROUNDS=${NIIDGRID_ROUNDS:-3}
NIIDGRID_LIMIT_S=${NIIDGRID_LIMIT_S:-200}
COST_LIMIT_S=${COST_LIMIT_S:-90}
GRID_ARGS=${GRID_ARGS:---strategies fedavg,scaffold --seeds 2 --clients 100 --rounds 3}
SPEED_ARGS=${SPEED_ARGS:-}
STRATEGIES=${STRATEGIES:-fedavg}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if [[ -d .whl ]] && ! python3 -c "import flwr" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl &&
    tar -xJf .whl/ray-slim.tar.xz -C /tmp/site || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1
  python3 -c "import torch, flwr; print('torch', torch.__version__, 'flwr', flwr.__version__)"
} | tee "$OUT/machine.txt"

data=/tmp/cifar10-shaped.npz
python3 - "$data" "$TRAIN_IMAGES" <<'EOF'
import sys
import numpy as np
rng = np.random.default_rng(0)
n = int(sys.argv[2])
np.savez(sys.argv[1], x_train=rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
         y_train=rng.integers(0, 10, n), x_test=rng.integers(0, 256, (n // 5, 32, 32, 3),
         dtype=np.uint8), y_test=rng.integers(0, 10, n // 5))
EOF

if [[ " $STEPS " == *" tests "* ]]; then
echo "== 1. CUDA tests" | tee "$OUT/tests.txt"
timeout 120 python3 -m pytest -q -p no:cacheprovider -rs -k "cuda" \
  tests/test_batched.py tests/test_data.py tests/test_devices.py 2>&1 | tee -a "$OUT/tests.txt"

fi

if [[ " $STEPS " == *" niid "* ]]; then
echo "== 2. NIID-Bench setting, $NIID_ROUNDS rounds" | tee "$OUT/niid.txt"
rm -rf /tmp/niid-run
start=$(date +%s.%N)
timeout "$NIID_LIMIT_S" python3 -c "import sys; from fedwsa.cli import main; sys.exit(main())" \
  run -c "dataset='cifar10' data-root='$data' num-clients=10 fraction-train=1.0 \
  partition='dirichlet' alpha=0.5 local-epochs=10 batch-size=64 lr=0.01 momentum=0.9 \
  num-server-rounds=$NIID_ROUNDS device='$DEVICE' checkpoint-every=0 run-dir='/tmp/niid-run'" \
  $([[ $DEVICE == cuda ]] && echo --num-gpus 1) 2>&1 | tail -n 20 | tee -a "$OUT/niid.txt"
echo "wall_s $(python3 -c "print(round($(date +%s.%N) - $start, 1))")" | tee -a "$OUT/niid.txt"
cp /tmp/niid-run/metrics.jsonl "$OUT/niid-metrics.jsonl" 2>/dev/null
python3 - "$OUT/niid-metrics.jsonl" <<'EOF' 2>&1 | tee -a "$OUT/niid.txt"
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
times = [b["elapsed-s"] - a["elapsed-s"] for a, b in zip(rows, rows[1:])]
print(f"rounds done {rows[-1]['round']}, elapsed-s at the last {rows[-1]['elapsed-s']:.1f}, "
      f"s/round after round 1: {sum(times[1:]) / max(1, len(times) - 1):.2f}")
EOF

fi

if [[ " $STEPS " == *" speed "* ]]; then
for strategy in $STRATEGIES; do
  echo "== 3. speed.py, $CLIENTS clients, $strategy" | tee -a "$OUT/speed.txt"
  # shellcheck disable=SC2086  # SPEED_ARGS is a list of arguments
  timeout "$SPEED_LIMIT_S" python3 benchmarks/speed.py --device "$DEVICE" --data-root "$data" \
    --clients "$CLIENTS" --rounds "$ROUNDS" --strategy "$strategy" \
    --out "$OUT/speed-$strategy.json" $SPEED_ARGS 2>&1 \
    | grep -E "^\(|^speedup|^config|^done|rror|must be" | tee -a "$OUT/speed.txt"
done
fi

if [[ " $STEPS " == *" grid "* ]]; then
echo "== 4. grid.py" | tee "$OUT/grid.txt"
# shellcheck disable=SC2086  # GRID_ARGS is a list of arguments
timeout "$GRID_LIMIT_S" python3 benchmarks/grid.py --device "$DEVICE" --data-root "$data" \
  --out "$OUT/grid.json" $GRID_ARGS 2>&1 | grep -E "^config|^one by one|^rounds/s|^done|rror|must be" \
  | tee -a "$OUT/grid.txt"
fi

if [[ " $STEPS " == *" cost "* ]]; then
echo "== 5. round_cost.py, $CLIENTS clients" | tee "$OUT/round-cost.txt"
timeout "$COST_LIMIT_S" python3 benchmarks/round_cost.py --device "$DEVICE" --data-root "$data" \
  --clients "$CLIENTS" --out "$OUT/round.pstats" 2>&1 | grep -vE "INFO|WARNING" \
  | tee -a "$OUT/round-cost.txt"
fi

if [[ " $STEPS " == *" niidgrid "* ]]; then
echo "== 6. NIID-Bench's grid stacked, $NIIDGRID_ROUNDS rounds, projected to 50" \
  | tee "$OUT/niid-grid.txt"
timeout "$NIIDGRID_LIMIT_S" python3 benchmarks/grid.py --device "$DEVICE" --data-root "$data" \
  --layouts stacked --strategies fedavg,fedprox,scaffold,fednova,fedwsa,cart --seeds 3 \
  --clients 10 --local-epochs 10 --rounds "$NIIDGRID_ROUNDS" --project-rounds 50 \
  --out "$OUT/niid-grid.json" 2>&1 | grep -E "^config|^stacked|^done|rror|must be" \
  | tee -a "$OUT/niid-grid.txt"
fi
