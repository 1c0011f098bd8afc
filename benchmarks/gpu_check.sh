#!/usr/bin/env bash
# Issue 6's GPU measurements as ONE command, sized for a 10-minute device call (about 6-8 min on
# an H100, torch.compile warm-ups included). On the GPU machine, from the repo root:
#     bash benchmarks/gpu_check.sh          # with `.whl` carried (benchmarks/gpu_wheels.sh)
# Writes $OUT/gpu_results.md (or benchmarks/out/ without $OUT): card, date, commit, then the
# tables of sample_speed.py (batch 1: naive reference vs library fp32 / bf16 / bf16 + CUDA graphs;
# batch 64: bf16 eager and compiled) and train_speed.py (batch 64). Each step has its own time
# limit, so one slow step cannot take the others' results with it.
# Smoke test on a CPU machine: DEVICE=cpu PRESET=specmaskfoley_tiny BIG_BATCH=4 PY=.venv/bin/python bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3} DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-specmaskfoley} BIG_BATCH=${BIG_BATCH:-64}
dir=${OUT:-benchmarks/out}
mkdir -p "$dir"
log=$dir/gpu_results.md
{
    echo "# GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
    $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
} > "$log" 2>&1
run() {  # run <seconds> <command...>: its output to the log, its fate noted if it fails
    local limit=$1; shift
    echo -e "\n\`\`\`\n$*\n\`\`\`\n" >> "$log"
    timeout "$limit" "$@" >> "$log" 2>&1 || echo "(exit $? after at most ${limit} s)" >> "$log"
}
run 240 $PY benchmarks/sample_speed.py --device "$DEVICE" --preset "$PRESET" --batch 1 --runs 20 --no-decode --markdown \
    --paths reference library library_bf16 library_bf16_compile
run 180 $PY benchmarks/sample_speed.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 5 --markdown \
    --paths library_bf16 library_bf16_compile
run 90 $PY benchmarks/train_speed.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --steps 10 --markdown
cat "$log"
