#!/usr/bin/env bash
# Issue 6's GPU measurements as ONE command, sized for a 10-minute device call. On the GPU
# machine, from the repo root:
#     COMMIT=$(git rev-parse --short HEAD) bash benchmarks/gpu_check.sh [STEP ...]
# with `.whl` carried (benchmarks/gpu_wheels.sh). COMMIT: the device's copy of the working tree may
# carry a stale .git, so say which commit the code is.
# Writes $OUT/gpu_results.md (or benchmarks/out/ without $OUT) as it goes: card, date, commit, then
# one section per step. Each step is its own process with its own time limit, run in the order
# below (most important number first), so a step that fails or runs long (torch.compile warm-ups)
# costs only its own result; whatever finished is in the log even if the device call is cut off.
# Within a step, a sampling path that cannot be built or fails in its warm-up (e.g. fp8 on a GPU
# without fp8) is reported and skipped; the others are still timed.
#   1. ceilings: bf16 / fp32 / fp8 matrix-product rate and copy bandwidth of this card
#   2. batch 1 (STEP2_PATHS: a shorter list of paths): naive reference vs library bf16 eager and whole-loop CUDA graph (cuda_graph=True),
#      bf16 model, bf16 model with the GELU in fc1's epilogue (fuse_gelu_epilogue) and fp8 model
#      (static scales) in a graph, + decode and Griffin-Lim
#   3. batch 64: naive reference vs library bf16 (autocast, bf16 model, GELU epilogue), whole-loop graph, fp8 model
#      (row-wise and static scales) in a graph; no decode (Griffin-Lim runs on the CPU, ~1 s a clip)
#   6. batch 64, compiled inside the whole-loop graph: bf16 model (plain, GELU epilogue), fp8 models (static, row-wise)
#   0. the CUDA-only tests (captured loop = eager tokens for fp32 / bf16 / fp8 / compiled; the
#      pipeline and `generate --cuda-graph` on CUDA)
#   5. batch 1, compiled inside the whole-loop graph: bf16 model, fp8 model
#   4. ControlNet training step at batch 64 (frozen backbone vs all-grad reference, and frozen with activation checkpointing)
#   7. torch.profiler of one batch-64 call, eager: bf16 model (plain, GELU epilogue), fp8 model (static scales)
#   8. batch 64 with attention restricted to the flash, then the memory-efficient SDPA backend
#   9. torch.profiler of one batch-64 call, compiled: bf16 model, fp8 model (static scales)
#  11. `controlfoley bench` (the user-facing command), batch 1 and 64, bf16 and fp8, --compile --cuda-graph
#  12. generate(guidance_every=2, 3): CUDA tests of the captured loop, batch 1 and 64 in a graph
#  13. the pipeline over 16 ten-second videos (paper preset, random weights): batch 1 vs 16 videos/s, and
#      whether batch 16 gives every video its batch-1 tokens on this GPU (the CPU's equality is tested)
#  14. step 4 under bf16 autocast (`controlfoley train`'s precision on CUDA), the three variants
#  15. the command line end to end on the device: extract, train the ControlNet (EMA, activation checkpointing,
#      stop and --resume, one torchrun rank), generate 16 held-out clips and score them (CPU vs device vs bf16 graph)
#  16. the whole test suite with a GPU present (pytest-xdist, WORKERS workers, default 8; SUITE_LIMIT seconds, default 240)
#  17. numba's cache race: the evaluation tests under WORKERS (default 14) xdist workers with one shared cold numba cache
#      (twice), then a cold cache per worker (tests/conftest.py's fix for run J's 9 failures)
#  18. batch 64: the reference and the path that met the target in run G (static fp8, compiled, in the graph), 5 runs
#  10. batch 64, compiled inside the whole-loop graph with inductor's max-autotune (387 s on an H200,
#      run I: no gain over the default compile; autotuning compiles for minutes: `... gpu_check.sh 10`)
# Full run (the default steps 1 2 3 6 0 5 4 7): 452 s on an H100 (2026-11-27, run E in RESULTS.md) before the
# GELU-epilogue and static-fp8 paths were added. Run G (same card, 61855a4): step 3 74 s, step 6 240 s
# (five compiled paths), step 0 ~150 s; so the default list now needs more than one 600-s call: run
# `3 6 0` first and the rest on the still-warm machine. Steps 8-14 are not in the default list;
# step 10 autotunes ~10-20 s per GEMM shape (387 s in all, run I). Smoke test on a CPU machine (no graph or fp8-graph paths there):
#     DEVICE=cpu PRESET=specmaskfoley_tiny BIG_BATCH=4 PY=.venv/bin/python bash benchmarks/gpu_check.sh 1 2 3 4 6 7
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
PY=${PY:-python3} DEVICE=${DEVICE:-cuda} PRESET=${PRESET:-specmaskfoley} BIG_BATCH=${BIG_BATCH:-64}
GRAPH1="" GRAPH64="" COMPILED="library_bf16_compile" FP8_1="" FP8_64="library_fp8" FP8_COMPILED=""  # CPU smoke test
if [ "$DEVICE" != cpu ]; then  # whole-loop CUDA graphs (cuda_graph=True) need a GPU
    GRAPH1="library_bf16_graph library_bf16_native_graph library_bf16_gelu_graph" GRAPH64="library_bf16_graph library_bf16_native_graph library_bf16_gelu_graph"
    COMPILED="library_bf16_native_compile_graph library_bf16_gelu_compile_graph"
    FP8_1="library_fp8_static_graph" FP8_64="library_fp8_graph library_fp8_static_graph"
    FP8_COMPILED="library_fp8_static_compile_graph library_fp8_compile_graph"  # step 5 times the first
fi
dir=${OUT:-benchmarks/out}
mkdir -p "$dir"
log=$dir/gpu_results.md
{
    echo "# GPU check: $(date -u '+%Y-%m-%d %H:%M UTC'), commit ${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
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
ONLY="${*:-1 2 3 6 0 5 4 7}"  # the steps to run, in this order
for n in $ONLY; do
    case $n in
    0) # with the suite's runtime type checks (jaxtyping + beartype, carried as a wheel), as CI runs them
       step 200 "0. CUDA tests" $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py tests/test_pipeline.py tests/test_quantize.py tests/test_model.py \
           tests/test_fast_paths.py::test_gelu_epilogue_logits_stay_within_bf16_noise_on_cuda -k "cuda or graph" ;;
    1) step 40 "1. ceilings" $PY benchmarks/ceilings.py --device "$DEVICE" --markdown ;;
    2) step 100 "2. batch 1, eager and whole-loop graph" $PY $S --device "$DEVICE" --preset "$PRESET" --batch 1 --runs 10 --decode-runs 2 --markdown \
           --paths ${STEP2_PATHS:-reference library library_bf16 $GRAPH1 $FP8_1} ;;
    3) step 130 "3. batch $BIG_BATCH, eager and whole-loop graph" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 --no-decode --markdown \
           --paths reference library_bf16 library_bf16_native $GRAPH64 $FP8_64 ;;
    4) step 110 "4. training step, batch $BIG_BATCH" $PY benchmarks/train_speed.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --steps 5 --markdown ;;
    5) step 120 "5. batch 1, compiled" $PY $S --device "$DEVICE" --preset "$PRESET" --batch 1 --runs 10 --no-decode --markdown \
           --paths library_bf16_native $COMPILED ${FP8_COMPILED%% *} ;;
    6) step 300 "6. batch $BIG_BATCH, compiled" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 --no-decode --markdown \
           --paths library_bf16_native $COMPILED $FP8_COMPILED ;;
    7) for path in library_bf16_native library_bf16_gelu library_fp8_static; do
           step 60 "7. profile, batch $BIG_BATCH, $path" $PY benchmarks/profile_sampling.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --path $path
       done ;;
    9) for path in library_bf16_native_compile library_fp8_static_compile; do  # compiled ("reduce-overhead"), kernels inside the graphs
           step 90 "9. profile, batch $BIG_BATCH, $path" $PY benchmarks/profile_sampling.py --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --path $path
       done ;;
    8) for backend in flash efficient; do
           step 60 "8. batch $BIG_BATCH, attention backend $backend" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 \
               --no-decode --markdown --sdpa $backend --paths library_bf16_native
       done ;;
    10) # inductor's max-autotune GEMMs (bias + GELU as the GEMM's epilogue): the element-wise work is ~30% of batch 64
       step 420 "10. batch $BIG_BATCH, compiled with max-autotune" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 --no-decode --markdown \
           --max-autotune --paths library_bf16_native $COMPILED ;;
    11) # the user-facing command on this card: `controlfoley bench` with the options a user would pick
       for precision in bf16 fp8; do
           step 150 "11. controlfoley bench, $precision, compiled whole-loop graph" $PY -m controlfoley bench "$PRESET" --device "$DEVICE" \
               --batch 1 "$BIG_BATCH" --precision $precision --compile $( [ "$DEVICE" != cpu ] && echo --cuda-graph ) --runs 3 --markdown
       done ;;
    12) # generate(guidance_every=N): its captured-loop tests, then batch 1 and 64 in a whole-loop graph against every=1
       step 100 "12. guidance_every: CUDA tests" $PY -m pytest -q -p no:cacheprovider tests/test_graphs.py -k "guidance_every and cuda"
       step 60 "12. guidance_every, batch 1" $PY $S --device "$DEVICE" --preset "$PRESET" --batch 1 --runs 10 --no-decode --markdown \
           --paths library_bf16_native_graph library_bf16_native_graph_every2 library_bf16_native_graph_every3
       step 60 "12. guidance_every, batch $BIG_BATCH" $PY $S --device "$DEVICE" --preset "$PRESET" --batch "$BIG_BATCH" --runs 3 --no-decode --markdown \
           --paths library_bf16_native_graph library_bf16_native_graph_every2 library_bf16_native_graph_every3 ;;
    13) step 240 "13. pipeline over videos, batch 1 vs 16" $PY benchmarks/pipeline_batch.py --device "$DEVICE" --preset "$PRESET" \
           --videos 16 --seconds 10 --batch 1 16 --runs 2 --markdown ;;
    14) # step 4 under bf16 autocast, as `controlfoley train` runs on CUDA: the memory activation checkpointing saves there
       step 110 "14. training step, batch $BIG_BATCH, bf16 autocast" $PY benchmarks/train_speed.py --device "$DEVICE" --preset "$PRESET" \
           --batch "$BIG_BATCH" --steps 5 --precision bf16 --markdown ;;
    15) # the command line end to end on this device, as a user runs it: extract (tokenizer on the device), train the
       # ControlNet (the device's default precision, EMA, activation checkpointing), stop and --resume, one rank under
       # torchrun (NCCL on CUDA), then generate 16 held-out clips with the trained run, and with the shipped model
       # on the CPU (fp32) and this device (fp32; bf16 weights in a whole-loop graph), each scored by `evaluate`
       w=${WORK:-/tmp/gpu_cli}; rm -rf "$w"; mkdir -p "$w/clips"
       C="$PY -m controlfoley"
       TR="train controlnet --preset specmaskfoley_synthetic --init specmaskfoley_synthetic --data $w/ds --steps 40 --batch-size 16 --ema-decay 0.99 --activation-checkpointing --ckpt-every 10 --log-every 10 --no-progress --device $DEVICE"
       step 120 "15. extract 64 training clips on $DEVICE" $C extract --preset specmaskfoley_synthetic --tokenizer specmaskfoley_synthetic --out "$w/ds" \
           --synthetic 64 --split train --extractors synthetic_sync,synthetic_clip --clap synthetic_clap --device "$DEVICE"
       step 120 "15. train to step 20 of 40, then stop" $C $TR --out "$w/run" --stop-at 20
       step 120 "15. --resume to step 40" $C $TR --out "$w/run" --resume
       step 60 "15. the run's info" $C info "$w/run"
       step 120 "15. torchrun, one rank, 10 steps" $PY -m torch.distributed.run --standalone --nproc_per_node 1 -m controlfoley $TR --steps 10 --out "$w/run_ddp"
       step 60 "15. 16 held-out clips with sound" $PY -c "import sys; from controlfoley.data.synthetic import SyntheticWorld, write_clip_mp4
w = SyntheticWorld(); [write_clip_mp4(w.clip(i), f'{sys.argv[1]}/clip{i:03d}.mp4') for i in w.split('test', 16)]" "$w/clips"
       G="generate $w/clips --seed 0 --batch-size 16"
       step 150 "15. generate, trained run, $DEVICE" $C $G --model "$w/run" --device "$DEVICE" --out "$w/gen_run"
       step 60 "15. evaluate, trained run, $DEVICE" $C evaluate "$w/gen_run"
       step 150 "15. generate, shipped model, cpu fp32" $C $G --model specmaskfoley_synthetic --device cpu --precision fp32 --out "$w/gen_cpu"
       step 60 "15. evaluate, shipped model, cpu fp32" $C evaluate "$w/gen_cpu"
       step 150 "15. generate, shipped model, $DEVICE fp32" $C $G --model specmaskfoley_synthetic --device "$DEVICE" --precision fp32 --out "$w/gen_dev32"
       step 60 "15. evaluate, shipped model, $DEVICE fp32" $C evaluate "$w/gen_dev32"
       if [ "$DEVICE" != cpu ]; then
           step 150 "15. generate, shipped model, $DEVICE bf16 weights, whole-loop graph" $C $G --model specmaskfoley_synthetic --device "$DEVICE" \
               --precision bf16-weights --cuda-graph --out "$w/gen_dev16"
           step 60 "15. evaluate, shipped model, $DEVICE bf16 weights, graph" $C evaluate "$w/gen_dev16"
       fi ;;
    16) # the whole suite on a machine with CUDA (the CUDA tests run, and every other test sees a GPU present),
       # WORKERS pytest-xdist workers (default 8; the image has pytest-xdist; CI runs the suite serially on 2 cores);
       # -v so that a run the limit cuts off still names every test that finished, and how
       step ${SUITE_LIMIT:-240} "16. the whole test suite, ${WORKERS:-8} workers" $PY -m pytest -v --tb=short -rf -p no:cacheprovider -n "${WORKERS:-8}" tests ;;
    17) # numba's cache race (run J: 9 evaluation tests failed under 14 workers, unexplained): librosa's onset
        # kernels are numba-compiled with cache=True into pairs of files written separately (numba#10128).
        # The evaluation tests under 14 workers, twice with ONE shared cold cache (run J's condition), then
        # with each worker's own cold cache (what tests/conftest.py now does): a fresh TMPDIR each time.
        sel="tests/test_evaluation.py tests/test_evaluate_cli.py tests/test_pipeline.py -k evaluat"
        for try in 1 2; do
            step 150 "17a. evaluation tests, ${WORKERS:-14} workers, one shared cold numba cache (try $try)" \
                env NUMBA_CACHE_DIR="$(mktemp -d)" $PY -m pytest -q -p no:cacheprovider -n ${WORKERS:-14} -rf --tb=short $sel
        done
        step 150 "17b. evaluation tests, ${WORKERS:-14} workers, a cold numba cache per worker (the conftest fix)" \
            env -u NUMBA_CACHE_DIR TMPDIR="$(mktemp -d)" $PY -m pytest -q -p no:cacheprovider -n ${WORKERS:-14} -rf --tb=short $sel ;;
    18) # the batch-64 target's path on this card beside the reference, 5 timed runs (run G2's command, H100: 107 clips/s)
        step 240 "18. batch $BIG_BATCH, the reference and static fp8 compiled in the graph" $PY $S --device "$DEVICE" --preset "$PRESET" \
            --batch "$BIG_BATCH" --runs 5 --no-decode --markdown --paths reference ${FP8_COMPILED%% *} ;;
    *) echo "unknown step $n (steps: 0-18)" >&2 ;;
    esac
done
cat "$log"
