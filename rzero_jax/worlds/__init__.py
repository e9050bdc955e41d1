"""Synthetic worlds R-Zero can run in, behind the `World` protocol (see `world.py`)."""

from rzero_jax.worlds import arith_world  # registers "arith"  # noqa: F401,E402
from rzero_jax.worlds.world import (
  World,
  WorldBenchmark,
  benchmarks,
  find_benchmark,
  get,
  names,
  prompt_set,
  register,
)
