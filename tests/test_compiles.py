"""The compile counter the metrics carry (rzero_jax.compiles)."""

import functools

import jax
import jax.numpy as jnp
import pytest

from rzero_jax import compiles


@pytest.fixture(autouse=True)
def counting():
  """Counts for one test only: an installed counter fingerprints every later compile."""
  compiles.install()
  yield
  compiles.uninstall()


def test_counts_programs_per_signature_and_a_rebuilt_function_as_a_recompile():

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


def test_same_named_functions_with_different_settings_are_not_recompiles():
  """Two roles' train steps: one python name and one signature, but each closes over its own
  micro-batch count, so they are two programs. Keyed by (name, signature) alone, the second
  looked like a recompile of the first."""

  def build(micro_batches):
    def role_step(x):
      return jnp.sum(x.reshape(micro_batches, -1) ** 2, axis=1).sum()

    return jax.jit(role_step)

  build(2)(jnp.ones(8))
  build(4)(jnp.ones(8))
  assert compiles.counts(["role_step"])["role_step"] == 2
  assert compiles.counts(["role_step"])["role_step/signatures"] == 2
  assert compiles.recompiled(["role_step"]) == {"role_step": 0}
  build(4)(jnp.ones(8))  # the second role's program again, rebuilt: a recompile
  assert compiles.recompiled(["role_step"]) == {"role_step": 1}
