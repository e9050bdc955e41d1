"""The compile counter the metrics carry (rzero_jax.compiles)."""

import functools

import jax
import jax.numpy as jnp

from rzero_jax import compiles


def test_counts_programs_per_signature_and_a_rebuilt_function_as_a_recompile():
  compiles.install()

  @functools.partial(jax.jit, static_argnums=1)
  def padded(x, width):
    return jnp.pad(x, (0, width))

  before = compiles.counts(["padded", "doubled"])
  padded(jnp.ones(3), 1)
  padded(jnp.ones(3), 1)  # cached: no program
  padded(jnp.ones(3), 2)  # a static argument changes the program, not the inputs
  padded(jnp.ones(4), 1)
  after = compiles.counts(["padded"])
  assert after["padded"] - before["padded"] == 3
  assert after["padded/signatures"] - before["padded/signatures"] == 3
  assert compiles.recompiled(["padded"]) == {"padded": 0}

  def build():
    def doubled(x):
      return 2 * x

    return jax.jit(doubled)

  build()(jnp.ones(5))
  build()(jnp.ones(5))  # a new jit around a new closure: the same program again
  assert compiles.counts(["doubled"])["doubled"] == 2
  assert compiles.recompiled(["doubled"]) == {"doubled": 1}
