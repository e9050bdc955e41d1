"""Learner state across process restarts and phases.

* Exact resume: a train state saved with `checkpoint.CheckpointManager` and restored in a new
  process takes the same next step, bit for bit, as the process that never stopped.
* The frozen KL reference kept in host memory between phases comes back bit-exact, even after
  the train step has donated (and overwritten) the device buffers it was copied from.

This file is also the child process of the resume test: `python test_learner_resume.py
CKPT_DIR OUT.npz` restores the checkpoint, takes one step and writes the resulting state.
"""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax import checkpoint, models, multihost
from rzero_jax.rl import grpo, learner, rollouts

CFG = models.tiny_config("qwen3", vocab_size=64, num_layers=2)
LC = learner.LearnerConfig(learning_rate=1e-3, micro_batches=2, logprob_chunk=4)
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _batch(seed, rows=8, prompt_len=5, new=8, vocab=64):
  rng = np.random.default_rng(seed)
  prompts = [list(rng.integers(1, vocab, rng.integers(2, prompt_len + 1))) for _ in range(rows)]
  completions = [list(rng.integers(1, vocab, rng.integers(1, new + 1))) for _ in range(rows)]
  logps = [list(-rng.random(len(c))) for c in completions]
  adv = np.asarray(grpo.group_advantages(rng.random(rows).astype(np.float32), 4))
  batch = rollouts.pack(prompts, completions, logps, adv, prompt_len=prompt_len, max_new_tokens=new)
  batch["old_logp"] = batch["sampler_logp"] + 0.05 * rng.standard_normal(
    batch["sampler_logp"].shape
  ).astype(np.float32)
  batch["ref_logp"] = batch["sampler_logp"] - 0.1
  return batch


def _flat(state: learner.TrainState) -> dict[str, np.ndarray]:
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state))[0]
  return {jax.tree_util.keystr(path): np.asarray(x) for path, x in flat}


def _resume_and_step(ckpt_dir: str, out_path: str) -> None:
  """The child: restore into a freshly built state's structure and shardings, step once."""
  # A different init key: every value that matters must come from the checkpoint.
  like = learner.init_train_state(models.init_params(CFG, jax.random.key(99)), LC)
  target = {
    "params": checkpoint.abstract_like(like.params),
    "opt_state": checkpoint.abstract_like(like.opt_state),
  }
  with checkpoint.CheckpointManager(ckpt_dir) as ckpt:
    restored = ckpt.restore(target=target)
  state = learner.TrainState(
    jnp.asarray(restored.metadata["step"], jnp.int32),
    restored.items["params"],
    restored.items["opt_state"],
  )
  state, _ = learner.make_train_step(CFG, LC, state)(state, _batch(seed=1))
  np.savez(out_path, **_flat(state))


def test_restored_state_takes_the_same_step_bit_for_bit(tmp_path):
  state = learner.init_train_state(models.init_params(CFG, jax.random.key(0)), LC)
  step = learner.make_train_step(CFG, LC, state)
  state, _ = step(state, _batch(seed=0))
  with checkpoint.CheckpointManager(tmp_path / "ckpt") as ckpt:
    ckpt.save(1, {"params": state.params, "opt_state": state.opt_state}, {"step": int(state.step)})
    # save() returns once the arrays are off the devices, so the state may be donated now.
    before = _flat(state)
    state, _ = step(state, _batch(seed=1))
  expected = _flat(state)

  out = tmp_path / "resumed.npz"
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=os.pathsep.join(filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])),
  )
  proc = subprocess.run(
    [sys.executable, os.path.abspath(__file__), str(tmp_path / "ckpt"), str(out)],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-4000:]
  with np.load(out) as resumed:
    assert set(resumed.files) == set(expected)
    for key, want in expected.items():
      assert resumed[key].dtype == want.dtype, key
      assert np.array_equal(resumed[key], want), key
  # The step did change every part of the state, so equality above is not vacuous.
  assert int(expected[".step"]) == 2
  assert not np.array_equal(
    before[".params['embed']['embedding']"], expected[".params['embed']['embedding']"]
  )
  assert any(not np.array_equal(before[k], expected[k]) for k in expected if "opt_state" in k)


def test_reference_params_survive_in_host_memory_while_the_state_is_donated():
  params = models.init_params(CFG, jax.random.key(2))
  originals = [np.array(x) for x in jax.tree.leaves(params)]  # independent copies
  logprob_fn = learner.make_logprob_fn(CFG, LC)
  batch = _batch(seed=2)
  want_logp = np.asarray(logprob_fn(params, batch["tokens"], batch["kv_mask"]))

  reference = multihost.offload(params)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(reference))
  # Train from the very buffers the reference was copied from: the donating step reuses them
  # for the updated params, which must not leak into the host copy.
  state = learner.init_train_state(params, LC)
  step = learner.make_train_step(CFG, LC, state)
  for seed in (3, 4):
    state, _ = step(state, _batch(seed))
  assert not np.array_equal(np.asarray(jax.tree.leaves(state.params)[0]), originals[0])

  back = multihost.onload(reference)
  assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(back))
  for got, want in zip(jax.tree.leaves(back), originals):
    assert got.dtype == want.dtype and np.array_equal(np.asarray(got), want)
  got_logp = np.asarray(logprob_fn(back, batch["tokens"], batch["kv_mask"]))
  assert np.array_equal(got_logp, want_logp)


if __name__ == "__main__":
  if len(sys.argv) != 3:
    sys.exit(f"usage: {sys.argv[0]} CHECKPOINT_DIR OUT.npz")
  _resume_and_step(sys.argv[1], sys.argv[2])
