#!/usr/bin/env bash
# Issue 6's GPU measurements as ONE command, sized for a 10-minute device call. On the GPU
# machine, from the repo root:
#     bash benchmarks/gpu_check.sh [STEP ...]   # with `.whl` carried (benchmarks/gpu_wheels.sh); default all steps
# Writes $OUT/gpu_results.md (or benchmarks/out/ without $OUT) as it goes: card, date, commit, then
# one section per step. Each step is its own process with its own time limit, ordered by how much
# its number matters, so a step that fails or runs long (torch.compile warm-ups) costs only its own
# result; whatever finished is in the log even if the device call itself is cut off.
#   0. the CUDA-only tests (tests/test_graphs.py: captured sampling loop = eager tokens; the pipeline and
#      `generate --cuda-graph` on CUDA in tests/test_pipeline.py)
#   1. ceilings: bf16/fp32 matrix-product rate and copy bandwidth of this card
#   2. batch 1: naive reference vs library fp32 / bf16 / bf16 weights, eager and whole-loop CUDA
#      graph (cuda_graph=True), + decode and Griffin-Lim
#   3. batch 64: naive reference vs library bf16 / bf16 weights, eager and whole-loop graph (no
#      decode: Griffin-Lim runs on the CPU, ~1 s a clip, the same code whatever the sampling path)
#   4. ControlNet training step at batch 64 (frozen backbone vs all-grad reference)
#   5. batch 1, compiled: torch.compile "reduce-overhead" (CUDA graphs of the forward) and compile
#      inside the whole-loop graph, vs library bf16 eager
#   6. batch 64, compiled
#   7. torch.profiler of one batch-64 call (library bf16 eager): matrix products / attention / rest
#   8. batch 64 with attention restricted to the flash, then the memory-efficient SDPA backend
# Full run: about 7 min on an H200, estimated from the steps' times in four partial runs (2026-11-26;
# never run whole), machine start not counted.
# Smoke test on a CPU machine (about 1 min on 2 cores; no graph paths there):
#     DEVICE=cpu PRESET=specmaskfoley_tiny BIG_BATCH=4 PY=.venv/bin/python bash benchmarks/gpu_check.sh 1 2 3 4 5 6
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3} DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-specmaskfoley} BIG_BATCH=${BIG_BATCH:-64}
GRAPH1="" GRAPH64="" COMPILE_GRAPH=""
if [ "$DEVICE" != cpu ]; then  # whole-loop CUDA graphs (cuda_graph=True) need a GPU
    GRAPH1="library_bf16_graph library_bf16_weights_graph library_bf16_native_graph" GRAPH64="library_bf16_graph library_bf16_native"
    COMPILE_GRAPH="library_bf16_compile_graph library_bf16_native_compile_graph"
fi
dir=${OUT:-benchmarks/out}
mkdir -p "$dir"
log=$dir/gpu_results.md
{
    echo "# GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || echo "(no nvidia-smi)"
    $PY -c "import sys, torch; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.version.cuda)"
} > "$log" 2>&1
start=$SECONDS
step() {  # step <seconds> <title> <command...>: output to the log, its fate noted if it fails
    local limit=$1 title=$2; shift 2
    local t0=$SECONDS
    printf '\n## %s\n\n```\n%s\n```\n\n' "$title" "$*" >> "$log"
    timeout "$limit" "$@" >> "$log" 2>&1
    local rc=$?
    if [ $rc -ne 0 ]; then echo "(step failed: exit $rc, limit ${limit} s)" >> "$log"; fi
    echo "(step took $((SECONDS - t0)) s; $((SECONDS - start)) s since the first step)" >> "$log"
    echo "[gpu_check] $title: exit $rc after $((SECONDS - t0)) s" >&2
}
S=benchmarks/sample_speed.py
ONLY="${*:-}"  # step numbers to run (default: all)
want() { [ -z "$ONLY" ] || [[ " $ONLY " == *" $1 "* ]]; }
# with the suite's runtime type checks (jaxtyping + beartype, carried as a wheel), as CI runs: on
# 2026-11-26 torch 2.11's dynamo failed on beartype's wrapper; compile now takes the unwrapped function
want 0 && step 150 "0. CUDA tests" $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_pipeline.py -k "cuda or graph"
want 1 && step 30 "1. ceilings" $PY benchmarks/ceilings.py --device "$DEVICE" --markdown
want 2 && step 80 "2. batch 1, eager and whole-loop graph" $PY $S --device "$DEVICE" --preset "$PRESET" --batch 1 --runs 10 --decode-runs 2 --markdown \
    --paths reference library library_bf16 library_bf16_weights $GRAPH1
want 3 && step 80 "3. batch $BIG_BATCH, eager and whole-loop graph" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 --no-decode --markdown \
    --paths reference library_bf16 library_bf16_weights $GRAPH64
want 4 && step 70 "4. training step, batch $BIG_BATCH" $PY benchmarks/train_speed.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --steps 5 --markdown
want 5 && step 120 "5. batch 1, compiled" env TORCH_LOGS=perf_hints $PY $S --device "$DEVICE" --preset "$PRESET" --batch 1 --runs 10 --no-decode --markdown \
    --paths library_bf16 library_bf16_compile $COMPILE_GRAPH
want 6 && step 120 "6. batch $BIG_BATCH, compiled" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 --no-decode --markdown \
    --paths library_bf16 library_bf16_compile $COMPILE_GRAPH
want 7 && step 90 "7. profile, batch $BIG_BATCH, library bf16 eager" $PY benchmarks/profile_sampling.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH"
for backend in flash efficient; do
    want 8 && step 60 "8. batch $BIG_BATCH, attention backend $backend" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 \
        --no-decode --markdown --sdpa $backend --paths library_bf16
done
cat "$log"
