"""The GRPO train step on 8 virtual CPU devices gives the single-device update.

Two meshes: (data=1, fsdp=4, tensor=2) and (data=2, fsdp=2, tensor=2); two tiny Qwen3 shapes:
kv heads that divide `tensor`, and a single kv head, whose k/v projections
`fit_spec_to_shape` leaves unsplit over `tensor`.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from rzero_jax import models, multihost, sharding
from rzero_jax.rl import grpo, learner, rollouts

MESHES = {
  "fsdp4_tensor2": {"data": 1, "fsdp": 4, "tensor": 2},
  "data2_fsdp2_tensor2": {"data": 2, "fsdp": 2, "tensor": 2},
}
# hidden 64, 4 heads, mlp 128 and vocab 256 divide every mesh axis they are split over.
CONFIGS = {
  "kv_heads_divide_tensor": models.tiny_config("qwen3", num_kv_heads=2),
  "kv_heads_replicated": models.tiny_config("qwen3", num_kv_heads=1),
}
# A learning rate large enough that one AdamW step moves every weight by ~lr, far above 1e-5.
LC = learner.LearnerConfig(learning_rate=1e-3, micro_batches=2, logprob_chunk=8)


def _batch(seed=0, rows=8, prompt_len=6, new=10, vocab=256):
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(1, vocab, rng.integers(2, prompt_len + 1))) for _ in range(rows)]
  completions = [list(rng.integers(1, vocab, rng.integers(1, new + 1))) for _ in range(rows)]
  logps = [list(-rng.random(len(c))) for c in completions]
  rewards = rng.random(rows).astype(np.float32)
  batch = rollouts.pack(
    prompts,
    completions,
    logps,
    np.asarray(grpo.group_advantages(rewards, 4)),
    prompt_len=prompt_len,
    max_new_tokens=new,
  )
  batch["old_logp"] = batch["sampler_logp"] + 0.05 * rng.standard_normal(
    batch["sampler_logp"].shape
  ).astype(np.float32)
  batch["ref_logp"] = batch["sampler_logp"] - 0.1
  return batch


@functools.lru_cache(maxsize=None)
def _single_device_run(cfg_name):
  """Initial params and (state, metrics) after each of two steps, on one device."""
  cfg = CONFIGS[cfg_name]
  params = models.init_params(cfg, jax.random.key(0))
  state = learner.init_train_state(jax.tree.map(jnp.copy, params), LC)
  step = learner.make_train_step(cfg, LC, state)
  results = []
  for seed in (0, 1):
    state, metrics = step(state, _batch(seed))
    results.append(jax.device_get((state, metrics)))
  return jax.device_get(params), results


def _adam_states(opt_state):
  return [
    s
    for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
    if isinstance(s, optax.ScaleByAdamState)
  ]


def _assert_shardings(tree, expected, what):
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  assert len(flat) == len(jax.tree.leaves(expected)), what
  for (path, leaf), want in zip(flat, jax.tree.leaves(expected)):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), (
      f"{what}{jax.tree_util.keystr(path)}: {leaf.sharding.spec} != {want.spec}"
    )


def _assert_params_close(got, want, start):
  """Within 1e-5 everywhere, and moved far more than that (else the check proves nothing)."""
  moved = 0.0
  flat_want = jax.tree_util.tree_flatten_with_path(want)[0]
  for (path, w), g, s in zip(flat_want, jax.tree.leaves(got), jax.tree.leaves(start)):
    np.testing.assert_allclose(
      np.asarray(g), w, rtol=0, atol=1e-5, err_msg=jax.tree_util.keystr(path)
    )
    moved = max(moved, float(np.max(np.abs(w - s))))
  assert moved > 5e-4, f"the params moved at most {moved}"


def _assert_metrics_close(got, want):
  # grad_norm is compared because Adam's first step and the global-norm clip are blind to a
  # gradient scaled by a constant; the second step is sensitive to the two gradients' ratio.
  assert {"loss", "grad_norm", "kl", "entropy"} <= set(want)
  for key, value in want.items():
    np.testing.assert_allclose(float(got[key]), float(value), rtol=1e-5, atol=1e-6, err_msg=key)


# Each mesh with one of the kv layouts: the other two pairings add no code path, only compiles.
CASES = [
  ("fsdp4_tensor2", "kv_heads_divide_tensor"),
  ("data2_fsdp2_tensor2", "kv_heads_replicated"),
]


@pytest.mark.parametrize("mesh_name,cfg_name", CASES)
def test_sharded_train_steps_equal_single_device(mesh_name, cfg_name):
  cfg = CONFIGS[cfg_name]
  mesh = sharding.make_mesh(MESHES[mesh_name])
  params, expected = _single_device_run(cfg_name)

  param_shardings = models.param_shardings(cfg, mesh)
  kv_spec = param_shardings["layers"]["attn"]["k_proj"]["kernel"].spec
  assert ("tensor" in kv_spec) == (cfg.num_kv_heads % mesh.shape["tensor"] == 0), kv_spec
  state = learner.init_train_state(jax.device_put(params, param_shardings), LC)
  # ZeRO-3: the optimizer moments are split exactly like their params.
  _assert_shardings(state.params, param_shardings, "params")
  adam_states = _adam_states(state.opt_state)
  assert adam_states
  for adam in adam_states:
    _assert_shardings(adam.mu, param_shardings, "opt_state.mu")
    _assert_shardings(adam.nu, param_shardings, "opt_state.nu")
  in_shardings = learner.state_shardings(state)

  step = learner.make_train_step(cfg, LC, state, mesh=mesh)
  for seed, (want_state, want_metrics) in enumerate(expected):
    old_params = state.params
    state, metrics = step(state, jax.device_put(_batch(seed), learner.batch_sharding(mesh)))
    # Donated: the old buffers are gone, and the new state keeps exactly the old shardings, so
    # it feeds straight back into the same executable.
    assert all(leaf.is_deleted() for leaf in jax.tree.leaves(old_params))
    _assert_shardings(state, in_shardings, "state")
    assert int(state.step) == seed + 1
    _assert_metrics_close(metrics, want_metrics)
    _assert_params_close(state.params, want_state.params, params)
  assert step._cache_size() == 1, "the second step recompiled"


def test_an_on_policy_batch_steps_on_the_mesh_as_on_one_device():
  """A batch without old_logp (rl.learner: on-policy) has a different pytree; the sharded step
  must take it too, and give the single-device update."""
  cfg = CONFIGS["kv_heads_divide_tensor"]
  mesh = sharding.make_mesh(MESHES["data2_fsdp2_tensor2"])
  batch = {k: v for k, v in _batch(seed=4).items() if k != "old_logp"}
  params = models.init_params(cfg, jax.random.key(0))
  state = learner.init_train_state(jax.tree.map(jnp.copy, params), LC)
  _, want_metrics = jax.device_get(learner.make_train_step(cfg, LC, state)(state, batch))
  sharded_params = jax.device_put(params, models.param_shardings(cfg, mesh))
  state = learner.init_train_state(sharded_params, LC)
  _, got_metrics = learner.make_train_step(cfg, LC, state, mesh=mesh)(state, batch)
  assert float(got_metrics["ratio/max"]) == 1.0
  _assert_metrics_close(got_metrics, want_metrics)
  # The gradient itself rather than the Adam-updated weights: Adam's first step is
  # lr * g / (|g| + eps), so where a gradient is near zero float rounding moves a weight by a
  # sizeable fraction of lr.
  grads = functools.partial(learner.accumulate_gradients, cfg, LC)
  want = jax.device_get(jax.jit(grads)(params, batch)[0])
  got = jax.device_get(jax.jit(functools.partial(grads, mesh=mesh))(sharded_params, batch)[0])
  for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(np.abs(w).max()))


def test_reference_params_round_trip_through_host_memory_onto_the_mesh():
  cfg = CONFIGS["kv_heads_divide_tensor"]
  mesh = sharding.make_mesh(MESHES["fsdp4_tensor2"])
  param_shardings = models.param_shardings(cfg, mesh)
  params = models.init_params(cfg, jax.random.key(2), mesh=mesh)
  # Offloaded, each shard stays the size it is on its device: nothing comes back replicated.
  host = multihost.offload(params)
  for leaf, orig in zip(jax.tree.leaves(host), jax.tree.leaves(params)):
    assert leaf.sharding.memory_kind == "pinned_host"
    assert leaf.sharding.spec == orig.sharding.spec
    assert leaf.addressable_shards[0].data.shape == orig.addressable_shards[0].data.shape
  back = multihost.onload(host)
  _assert_shardings(back, param_shardings, "params")
  assert all(x.sharding.memory_kind == "device" for x in jax.tree.leaves(back))
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(back)):
    assert np.array_equal(multihost.to_host(a), multihost.to_host(b))
  batch = multihost.to_global(_batch(seed=3), learner.batch_sharding(mesh))
  logprob_fn = learner.make_logprob_fn(cfg, LC, mesh=mesh)
  want = multihost.to_host(logprob_fn(params, batch["tokens"], batch["kv_mask"]))
  got = multihost.to_host(logprob_fn(back, batch["tokens"], batch["kv_mask"]))
  assert np.array_equal(want, got) and np.all(np.isfinite(got))
