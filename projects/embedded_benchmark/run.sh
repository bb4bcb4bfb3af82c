#!/usr/bin/env bash
# The embedded benchmark (issue 6): the paper's Table-6 rows on Faster R-CNN and baseline vs UGS
# on RetinaNet, FCOS, Cascade R-CNN and GFL V1, 3 seeds each (48 runs), on the embedded 128-px
# synthetic dataset: about 2 hours on 2 CPU cores. Resumable: rerun the same command and
# finished runs are skipped, a killed run continues from its last checkpoint.
#
#   projects/embedded_benchmark/run.sh                   # 2 lanes (one per core), 1 thread each
#   LANES=1 projects/embedded_benchmark/run.sh           # one lane, all threads
#   projects/embedded_benchmark/run.sh wandb.enabled=true  # extra overrides go to every sweep
#
# Every lane runs the same three sweeps in the same order; a lane skips a run that another lane
# is training (ugs-train's run-directory lock), so the lanes share the work like a queue.
# Outputs: multirun/embedded_{table6,detectors,cascade,gfl}/ (the runs), logs/embedded_lane*.log,
# results/embedded/embedded_{table6,detectors,cascade,gfl}.{md,csv} + plots, results/embedded/gradvar.md,
# results/embedded/summary.{md,png} (baseline vs UGS per detector, the targets).
set -euo pipefail
cd "$(dirname "$0")/../.."

LANES="${LANES:-2}"
SWEEPS=(cascade table6 detectors gfl)   # longest runs first: the lanes end closer together
BIN="${UGS_BIN:-}"
if [[ -z "$BIN" ]]; then
    if [[ -x .venv/bin/ugs-train ]]; then BIN=.venv/bin
    elif command -v ugs-train >/dev/null; then BIN="$(dirname "$(command -v ugs-train)")"
    else echo "run.sh: ugs-train not found (make install, or set UGS_BIN)" >&2; exit 1; fi
fi
mkdir -p logs results/embedded

# Generate the dataset once, before the lanes could race to create it.
[[ -f datasets/synth128/annotations/val.json ]] || \
    "$BIN/ugs-data" synth --out datasets/synth128 --image-size 128 --train 800 --val 200 --seed 0

lane() {  # LANE [overrides...]: every sweep in turn
    local n=$1 rc=0; shift
    for part in "${SWEEPS[@]}"; do
        "$BIN/ugs-train" -m "+experiment=embedded_$part" wandb.enabled=false "$@" || rc=$?
    done
    return $rc
}

status=0
if (( LANES > 1 )); then
    # The tiny models are dispatch-bound: two single-threaded runs side by side do ~1.5x the
    # work of one two-threaded run on 2 cores (measured: 0.54 vs 0.81 s per iteration).
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"
fi
pids=()
for ((i = 1; i <= LANES; i++)); do
    lane "$i" "$@" > "logs/embedded_lane$i.log" 2>&1 &
    pids+=($!)
    sleep 20  # let lane i take its first run before lane i+1 looks for one
done
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
[[ $status == 0 ]] || echo "run.sh: a run failed (see logs/embedded_lane*.log); rerun to retry the missing runs" >&2

# Tables + plots of each sweep (the sweeps' callbacks write them too, but only for what had
# finished when that lane's sweep ended), then the gradient-variance ratios per size bucket.
for part in "${SWEEPS[@]}"; do
    "$BIN/ugs-results" "multirun/embedded_$part" --out "results/embedded/embedded_$part" > /dev/null || status=$?
done
"$BIN/ugs-gradvar" --sweep multirun/embedded_table6 --baseline ugs=off --against ugs=full \
    --out results/embedded/gradvar.md > /dev/null || status=$?
"$BIN/python" projects/embedded_benchmark/summarize.py --out results/embedded/summary || status=$?
echo "run.sh: results in results/embedded/ (status $status)"
exit $status
