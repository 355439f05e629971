#!/usr/bin/env bash
# The GPU checks, as one prepared call on a lent GPU machine (python3 with torch, no Flower, no
# internet). Make the wheels here first (../shared/tools/gpu-wheels.sh .whl) and send .whl with
# the checkout. Steps, in this order (the goals first), each under its own time limit and all
# under TOTAL_LIMIT_S (default 480 s: issue 15's 8 minutes), so a slow one cannot eat the rest:
#   tests     the CUDA-only tests (batched trainer on the GPU vs the CPU sequential reference, ...);
#   speed     benchmarks/speed.py --device cuda at CLIENTS clients per round, all five layouts
#             (the last, (c'), is (c) with node-aggregate=false: every client's weights sent
#             back): the flower-overhead and batched/classic goals;
#   convs     the batched trainer alone (speed.py --layouts trainer) with conv-impl grouped and
#             unfold: which way of running the convolutions under vmap is faster on this GPU
#             (auto times both on its first step; the speed step's JSON says what it chose);
#   niidgrid  NIID-Bench's whole grid (fedavg, fedprox, scaffold, fednova, fedwsa, cart x seeds
#             0-2, 10 clients, 10 local epochs, its augmentation) stacked for NIIDGRID_ROUNDS
#             rounds, projected to 50 rounds (goal: at most 10 minutes on one GPU);
#   grid      benchmarks/grid.py --device cuda: a grid stacked (one federation) vs one by one
#             (goal: 100-client runs at 5x the rounds per second);
#   niidgrid-unfold  the niidgrid step with conv-impl='unfold';
#   cost      benchmarks/round_cost.py --device cuda: fedwsa's own cost of a round outside training;
#   niid      NIID-Bench's setting end to end with `fedwsa run` (10 clients, Dirichlet 0.5, 10
#             local epochs, batch 64, NIID_ROUNDS rounds), per-round wall time from metrics.jsonl;
#   niidgrid-bf16  the niidgrid step with precision='bf16' (the lever the fp32 figure may need).
# CIFAR-10 does not fit in the transfer beside the wheels, so the data are a CIFAR-10-shaped
# .npz of random pixels (50,000 + 10,000 images): the same work per round, meaningless accuracy.
# Figures go to $OUT (default /tmp/gpu-check): each step's text and JSON, steps.tsv (each step's
# exit status and seconds; 124: its limit stopped it; "skipped": no time was left), and
# summary.json, every figure and each goal with its target (benchmarks/gpu_summary.py).
# On a CPU, DEVICE=cpu with small sizes tries it.
# STEPS picks steps (default all of the above); SPEED_ARGS adds speed.py arguments,
# STRATEGIES runs speed.py once per strategy preset (default fedavg), and GRID_ARGS replaces
# grid.py's grid (default: fedavg, scaffold x 3 seeds, 100 clients, 3 rounds of 1 epoch: issue 15's
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
GRID_LIMIT_S=${GRID_LIMIT_S:-300}
STEPS=${STEPS:-tests speed convs niidgrid grid niidgrid-unfold cost niid niidgrid-bf16}
TOTAL_LIMIT_S=${TOTAL_LIMIT_S:-480}
NIIDGRID_ROUNDS=${NIIDGRID_ROUNDS:-3}
NIIDGRID_LIMIT_S=${NIIDGRID_LIMIT_S:-200}
COST_LIMIT_S=${COST_LIMIT_S:-90}
# 6 cells: a stacked round costs at least one cell's round, so the ratio stays near or below
# the cell count (4 cells could never show the goal's 5x).
GRID_ARGS=${GRID_ARGS:---strategies fedavg,scaffold --seeds 3 --clients 100 --rounds 3}
SPEED_ARGS=${SPEED_ARGS:-}
STRATEGIES=${STRATEGIES:-fedavg}
declare -A LIMITS=([tests]=150 [speed]=$SPEED_LIMIT_S [convs]=90 [niidgrid]=$NIIDGRID_LIMIT_S
                   [grid]=$GRID_LIMIT_S [niidgrid-unfold]=$NIIDGRID_LIMIT_S
                   [cost]=$COST_LIMIT_S [niid]=$NIID_LIMIT_S [niidgrid-bf16]=$NIIDGRID_LIMIT_S)
for name in $STEPS; do
  if [[ -z ${LIMITS[$name]+x} ]]; then
    echo "STEPS: unknown step '$name' (accepted: ${!LIMITS[*]})" >&2
    exit 2
  fi
done
mkdir -p "$OUT"
# Nothing from an earlier check may pass for this one's figures (gpu_summary.py reads them all).
(cd "$OUT" && rm -f machine.txt tests.{txt,log,xml} speed{,-*}.{txt,json,log} \
  convs{,-*}.{txt,json,log} niid-grid*.{txt,json,log} grid.{txt,json,log} round-cost.{txt,log} \
  round.pstats niid.{txt,log} niid-metrics.jsonl skipped.txt steps.tsv summary.{json,txt})
STARTED=$(date +%s)
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

NIID_KEYS="augment=true crop-padding='reflect' normalize=false weight-decay=1e-5"

# limit END: the seconds left until END (a step's own deadline) or the end of TOTAL_LIMIT_S,
# whichever comes first; at least 0 (callers skip a pass with too little left).
limit() {
  local now left
  now=$(date +%s)
  left=$((TOTAL_LIMIT_S - (now - STARTED)))
  (( $1 - now < left )) && left=$(( $1 - now ))
  echo $(( left > 0 ? left : 0 ))
}

# logged END LOG FILTER CMD...: run CMD until END (limit) into LOG (kept in $OUT), then show
# the lines that match FILTER. A file, not a pipe: Ray's processes that outlive a stopped step
# would hold a pipe open and stall the check.
logged() {
  local seconds log=$2 filter=$3
  seconds=$(limit "$1")
  shift 3
  timeout -k 10 "$seconds" "$@" > "$log" 2>&1
  local rc=$?
  grep -E "$filter" "$log"
  (( rc == 124 || rc == 137 )) && echo "(stopped by its ${seconds} s limit)"
  return "$rc"
}

step_tests() {
  echo "== CUDA tests" | tee "$OUT/tests.txt"
  logged "$1" "$OUT/tests.log" "." python3 -m pytest -q -p no:cacheprovider -rs -k "cuda" \
    --junitxml="$OUT/tests.xml" tests/test_batched.py tests/test_data.py tests/test_devices.py \
    | tee -a "$OUT/tests.txt"
  return "${PIPESTATUS[0]}"
}

step_speed() {  # $1, as for every step: its deadline (epoch seconds)
  local strategy seconds rc=0
  for strategy in $STRATEGIES; do
    seconds=$(limit "$1")
    (( seconds >= 10 )) || { echo "== speed.py $strategy skipped: no time left"; rc=124; break; }
    echo "== speed.py, $CLIENTS clients, $strategy" | tee -a "$OUT/speed.txt"
    # shellcheck disable=SC2086  # SPEED_ARGS is a list of arguments
    logged "$1" "$OUT/speed-$strategy.log" "^\(|^speedup|^config|^done|rror|must be" \
      python3 benchmarks/speed.py --device "$DEVICE" --data-root "$data" --clients "$CLIENTS" \
      --rounds "$ROUNDS" --strategy "$strategy" --out "$OUT/speed-$strategy.json" $SPEED_ARGS \
      | tee -a "$OUT/speed.txt"
    local status=${PIPESTATUS[0]}
    (( status )) && rc=$status
  done
  return "$rc"
}

step_convs() {  # the batched trainer alone with each way of running the convolutions
  local impl seconds rc=0
  for impl in grouped unfold; do
    seconds=$(limit "$1")
    (( seconds >= 10 )) || { echo "== conv-impl $impl skipped: no time left"; rc=124; break; }
    echo "== speed.py trainer alone, $CLIENTS clients, conv-impl $impl" | tee -a "$OUT/convs.txt"
    logged "$1" "$OUT/convs-$impl.log" "^\(|^done|rror|must be" \
      python3 benchmarks/speed.py --device "$DEVICE" --data-root "$data" --clients "$CLIENTS" \
      --rounds "$ROUNDS" --layouts trainer --conv-impl "$impl" --out "$OUT/convs-$impl.json" \
      | tee -a "$OUT/convs.txt"
    local status=${PIPESTATUS[0]}
    (( status )) && rc=$status
  done
  return "$rc"
}

niid_grid() {  # $1: limit, $2: extra keys, $3: file stem
  echo "== NIID-Bench's grid stacked, $NIIDGRID_ROUNDS rounds, $2, projected to 50" \
    | tee "$OUT/$3.txt"
  logged "$1" "$OUT/$3.log" "^config|^stacked|^done|rror|must be" \
    python3 benchmarks/grid.py --device "$DEVICE" --data-root "$data" \
    --layouts stacked --strategies fedavg,fedprox,scaffold,fednova,fedwsa,cart --seeds 3 \
    --clients 10 --local-epochs 10 --rounds "$NIIDGRID_ROUNDS" --project-rounds 50 \
    -c "$NIID_KEYS $2" --out "$OUT/$3.json" | tee -a "$OUT/$3.txt"
  return "${PIPESTATUS[0]}"
}
step_niidgrid() { niid_grid "$1" "precision='fp32'" niid-grid; }
step_niidgrid-unfold() { niid_grid "$1" "conv-impl='unfold'" niid-grid-unfold; }
step_niidgrid-bf16() { niid_grid "$1" "precision='bf16'" niid-grid-bf16; }

step_grid() {
  echo "== grid.py" | tee "$OUT/grid.txt"
  # shellcheck disable=SC2086  # GRID_ARGS is a list of arguments
  logged "$1" "$OUT/grid.log" "^config|^one by one|^rounds/s|^done|rror|must be" \
    python3 benchmarks/grid.py --device "$DEVICE" --data-root "$data" --out "$OUT/grid.json" \
    $GRID_ARGS | tee -a "$OUT/grid.txt"
  return "${PIPESTATUS[0]}"
}

step_cost() {
  echo "== round_cost.py, $CLIENTS clients" | tee "$OUT/round-cost.txt"
  logged "$1" "$OUT/round-cost.log" "." python3 benchmarks/round_cost.py \
    --device "$DEVICE" --data-root "$data" --clients "$CLIENTS" --out "$OUT/round.pstats" \
    | grep -vE "INFO|WARNING" | tee -a "$OUT/round-cost.txt"
  return "${PIPESTATUS[0]}"
}

step_niid() {
  echo "== NIID-Bench setting, $NIID_ROUNDS rounds" | tee "$OUT/niid.txt"
  rm -rf /tmp/niid-run
  local start rc
  start=$(date +%s.%N)
  logged "$1" "$OUT/niid.log" "fedwsa\]|rror|must be" \
    python3 -c "import sys; from fedwsa.cli import main; sys.exit(main())" \
    run -c "dataset='cifar10' data-root='$data' num-clients=10 fraction-train=1.0 \
    partition='dirichlet' alpha=0.5 local-epochs=10 batch-size=64 lr=0.01 momentum=0.9 \
    $NIID_KEYS num-server-rounds=$NIID_ROUNDS device='$DEVICE' checkpoint-every=0 \
    run-dir='/tmp/niid-run'" $([[ $DEVICE == cuda ]] && echo --num-gpus 1) \
    | tail -n 20 | tee -a "$OUT/niid.txt"
  rc=${PIPESTATUS[0]}
  echo "wall_s $(python3 -c "print(round($(date +%s.%N) - $start, 1))")" | tee -a "$OUT/niid.txt"
  cp /tmp/niid-run/metrics.jsonl "$OUT/niid-metrics.jsonl" 2>/dev/null
  return "$rc"
}

printf "step\tstatus\tseconds\n" > "$OUT/steps.tsv"
for name in $STEPS; do
  deadline=$(($(date +%s) + ${LIMITS[$name]}))
  seconds=$(limit "$deadline")
  if (( seconds < 30 )); then
    echo "== $name skipped: ${seconds} s left of TOTAL_LIMIT_S=$TOTAL_LIMIT_S" | tee -a "$OUT/skipped.txt"
    printf "%s\tskipped\t0\n" "$name" >> "$OUT/steps.tsv"
    continue
  fi
  t0=$(date +%s)
  "step_$name" "$deadline"  # every step runs until its deadline (passes of one step share it)
  rc=$?
  printf "%s\t%s\t%s\n" "$name" "$rc" "$(($(date +%s) - t0))" >> "$OUT/steps.tsv"
done
python3 benchmarks/gpu_summary.py "$OUT" | tee "$OUT/summary.txt"
