#!/usr/bin/env bash
# Decode step time under XLA:GPU flag variants, and a kernel profile of the default: what
# bounds a decode step on a GPU. Compiles every (variant, batch) in parallel into a persistent
# cache, then times them one after another on the idle card.
set -u
source benchmarks/device_env.sh
BATCHES=${BATCHES:-16,64}
declare -A FLAGS=(
  [default]=""
  [cmdbuf_while]="--xla_gpu_enable_command_buffer=+WHILE,+CONDITIONAL"
  [no_cmdbuf]="--xla_gpu_enable_command_buffer="
  [cublas]="--xla_gpu_enable_triton_gemm=false"
)
NAMES=${NAMES:-default cmdbuf_while no_cmdbuf}
PROFILE_FLAGS="--xla_dump_to=/tmp/dump --xla_dump_hlo_as_text --xla_dump_hlo_module_re=.*decode.*"
for v in $NAMES; do
  for b in ${BATCHES//,/ }; do
    XLA_FLAGS="${FLAGS[$v]}" XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 \
      benchmarks/sampling.py --device-report --compile-only --device-batches "$b" \
      >"/tmp/c_${v}_$b.txt" 2>&1 &
  done
done
PROFILE=${PROFILE:-1}
if [ "$PROFILE" = 1 ]; then
  XLA_FLAGS="$PROFILE_FLAGS" XLA_PYTHON_CLIENT_PREALLOCATE=false timeout 200 python3 \
    benchmarks/decode_profile.py --batch 16 --new 32 --compile_only >/tmp/c_profile.txt 2>&1 &
fi
# Optionally, tests on the GPU beside the compiles (their figures are not timings).
if [ -n "${TESTS:-}" ]; then
  env -u JAX_COMPILATION_CACHE_DIR XLA_PYTHON_CLIENT_PREALLOCATE=false \
    JAX_DEFAULT_MATMUL_PRECISION=highest timeout 200 python3 -m pytest -q -p no:cacheprovider \
    $TESTS >"$OUT/tests.txt" 2>&1 &
fi
wait
for f in /tmp/c_*.txt; do echo "-- $f"; tail -3 "$f"; done | tee "$OUT/compile.txt"
for v in $NAMES; do
  echo "== $v: ${FLAGS[$v]}"
  XLA_FLAGS="${FLAGS[$v]}" timeout 90 python3 benchmarks/sampling.py --device-report \
    --repeats 3 --device-batches "$BATCHES" 2>&1 | grep -v "^roofline"
done 2>&1 | tee "$OUT/variants.txt"
if [ "$PROFILE" = 1 ]; then
  echo "== profile"
  XLA_FLAGS="$PROFILE_FLAGS" timeout 90 python3 benchmarks/decode_profile.py --batch 16 \
    --new 32 --trace_dir /tmp/trace 2>&1 | tee "$OUT/profile.txt"
  cp /tmp/trace/plugins/profile/*/*.trace.json.gz "$OUT/" 2>/dev/null
  (cd /tmp/dump 2>/dev/null && tar czf "$OUT/decode_hlo.tgz" \
    $(ls | grep "after_optimizations.txt$" | head -20))
fi
[ -f "$OUT/tests.txt" ] && tail -3 "$OUT/tests.txt"
ls -la "$OUT"
