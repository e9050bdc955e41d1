# Sourced by the device scripts (device_checks.sh), run from the repo root:
# the log folder, the import path, carried wheels, and the persistent compilation cache that
# lets parallel processes compile what a timed process then loads.
# If .whl/ holds wheels (flax, optax: the versions CI tests with), they go first on the path.
OUT=${OUT:-device_logs}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH="/tmp/site:$PWD"
fi
export JAX_COMPILATION_CACHE_DIR=/tmp/rzero_jax_compile_cache
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
