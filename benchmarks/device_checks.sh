#!/usr/bin/env bash
# Every GPU check of the project in one script, for a lent accelerator whose time is counted:
#   bash benchmarks/device_checks.sh          (logs in $OUT, else ./device_logs)
# Parts run in priority order, each under its own time limit, so that a slow part cannot eat
# the time of the ones after it and a part that fails still leaves the others' figures.
#   1. sampling: decode tokens/s and HBM-roofline fraction, Qwen3-0.6B shapes, bf16
#   2. the sampling tests on the GPU (greedy parity with transformers, sampling rules), with
#      float32 matmuls at full precision: parity is a float32 claim, TF32 would break ties
#   3. the GRPO train step's MFU, Qwen3-0.6B shapes
# Logs: env.txt, compile.txt, tests.txt, sampling.txt/.json, train_step.txt (7 files
# at most: what the device tool brings back).
set -u
source benchmarks/device_env.sh
# Limits sized so that the whole script ends within about 8 minutes, leaving a 15-minute lease
# time for a second call.
T_COMPILE=${T_COMPILE:-200}
T_SAMPLING=${T_SAMPLING:-200}
T_TRAIN=${T_TRAIN:-150}
# PARTS picks a subset (a rerun that needs only part 1: PARTS=sampling).
PARTS=${PARTS:-sampling tests train}
has() { [[ " $PARTS " == *" $1 "* ]]; }
# Extra flags, for a smoke run of this script on a CPU (e.g. --device-batches 1 --new 16).
SAMPLING_ARGS=${SAMPLING_ARGS:-}
TEST_ARGS=${TEST_ARGS:-}
TRAIN_ARGS=${TRAIN_ARGS:-}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import jax, flax, optax, transformers, torch; print('jax', jax.__version__, \
'flax', flax.__version__, 'optax', optax.__version__, 'transformers', transformers.__version__, \
'torch', torch.__version__, jax.devices())"
} 2>&1 | tee "$OUT/env.txt"

# Compiling the Qwen3-0.6B-shaped decode plans is most of part 1's time, and one process
# compiles one program at a time. So first every batch's plans are compiled in parallel
# processes (on-demand GPU memory, so that they fit side by side) into a persistent
# compilation cache, beside part 2, whose figures are not timings. The timed run then loads
# them; where a plan misses the cache it compiles it itself, slower but the same figures.
BATCHES=${BATCHES:-1,16,64,256}
# Sampling rules timed on each plan (runtime knobs: one compiled program serves them all).
# "nucleus" (T = 1, top-p 0.99) is how R-Zero's rollouts sample.
DEVICE_RULES=${DEVICE_RULES:-greedy,nucleus}
echo "== compiling the sampling plans, and the sampling tests on the GPU (limit ${T_COMPILE} s)"
pids=()
has sampling && for b in ${BATCHES//,/ }; do
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$T_COMPILE" python3 benchmarks/sampling.py \
    --device-report --compile-only --device-batches "$b" \
    $SAMPLING_ARGS \
    >"/tmp/compile_$b.txt" 2>&1 &
  pids+=($!)
done
if has train; then
  XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$T_COMPILE" python3 benchmarks/train_step.py \
    --device --compile_only $TRAIN_ARGS >/tmp/compile_train.txt 2>&1 &
  pids+=($!)
fi
# The tests count compilations: they run without the persistent cache.
has tests && env -u JAX_COMPILATION_CACHE_DIR XLA_PYTHON_CLIENT_PREALLOCATE=false \
  JAX_DEFAULT_MATMUL_PRECISION=highest timeout "$T_COMPILE" \
  python3 -m pytest -q -p no:cacheprovider tests/test_sampling.py tests/test_models.py \
  $TEST_ARGS 2>&1 \
  | tee "$OUT/tests.txt" | tail -25
wait "${pids[@]}"
for f in /tmp/compile_*.txt; do echo "-- $f"; cat "$f"; done >"$OUT/compile.txt"
grep -h "^-- \|compile\|rror" "$OUT/compile.txt"

echo "== sampling (limit ${T_SAMPLING} s)"
has sampling && timeout "$T_SAMPLING" python3 benchmarks/sampling.py --device-report \
  --repeats 3 --device-batches "$BATCHES" \
  --device-rules "$DEVICE_RULES" --json "$OUT/sampling.json" $SAMPLING_ARGS 2>&1 \
  | tee "$OUT/sampling.txt"

echo "== train step (limit ${T_TRAIN} s)"
has train && timeout "$T_TRAIN" python3 benchmarks/train_step.py --device $TRAIN_ARGS 2>&1 \
  | tee "$OUT/train_step.txt"

echo "== summary"
grep -sh "^device:\|^batch\|^measured\|^roofline" "$OUT/sampling.txt"
grep -sh "passed\|failed" "$OUT/tests.txt" | tail -1
grep -sh "^device:\|^train step\|^ratio" "$OUT/train_step.txt"
exit 0
