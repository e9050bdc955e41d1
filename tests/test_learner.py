"""The GRPO learner: chunked logprobs, exact accumulation, and that GRPO actually learns."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rzero_jax import models, sampling
from rzero_jax.rl import grpo, learner, rollouts
from rzero_jax.rl.logprobs import token_logprobs

CFG = models.tiny_config("qwen3", vocab_size=64, num_layers=2)


def _random_batch(rng, rows=8, prompt_len=6, new=10, vocab=64):
  prompts = [list(rng.integers(1, vocab, rng.integers(2, prompt_len + 1))) for _ in range(rows)]
  completions = [list(rng.integers(1, vocab, rng.integers(0, new + 1))) for _ in range(rows)]
  logps = [list(-rng.random(len(c))) for c in completions]
  rewards = rng.random(rows).astype(np.float32)
  rewards[:4] = 0.5  # one group with all-equal rewards
  adv = np.asarray(grpo.group_advantages(rewards, 4))
  batch = rollouts.pack(prompts, completions, logps, adv, prompt_len=prompt_len, max_new_tokens=new)
  batch["old_logp"] = batch["sampler_logp"] + 0.05 * rng.standard_normal(
    batch["sampler_logp"].shape
  ).astype(np.float32)
  batch["ref_logp"] = batch["sampler_logp"] - 0.1
  return batch


def test_chunked_logprobs_match_full_softmax():
  params = models.init_params(CFG, jax.random.key(0))
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 64, (3, 13)).astype(np.int32)
  mask = np.ones_like(tokens, bool)
  mask[1, :4] = False

  @jax.jit
  def full_softmax(params, tokens, mask):
    logits = models.forward(CFG, params, tokens, kv_mask=mask) / 0.7
    return jnp.take_along_axis(jax.nn.log_softmax(logits[:, :-1], -1), tokens[:, 1:, None], -1)

  ref = full_softmax(params, tokens, mask)[..., 0]
  chunked = jax.jit(token_logprobs, static_argnums=0, static_argnames=("temperature", "chunk_size"))
  for chunk in (1, 5, 12, 64):
    ours = chunked(CFG, params, tokens, mask, temperature=0.7, chunk_size=chunk)
    np.testing.assert_allclose(np.asarray(ours)[:, 3:], np.asarray(ref)[:, 3:], atol=2e-6)
    np.testing.assert_allclose(np.asarray(ours)[0], np.asarray(ref)[0], atol=2e-6)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "micro-token-mean"])
def test_micro_batches_give_the_full_batch_update(aggregation):
  params = models.init_params(CFG, jax.random.key(1))
  batch = _random_batch(np.random.default_rng(1))
  results = []
  for k in (1, 4):
    lc = learner.LearnerConfig(
      learning_rate=1e-3, micro_batches=k, aggregation=aggregation, logprob_chunk=4
    )
    grads, metrics = jax.jit(lambda p, b: learner.accumulate_gradients(CFG, lc, p, b))(  # noqa: B023
      params, batch
    )
    results.append((jax.device_get(grads), {k: float(v) for k, v in metrics.items()}))
  (g1, m1), (g4, m4) = results
  assert m1["loss"] != 0.0 and m1["grad_norm"] > 0.0
  np.testing.assert_allclose(m4["loss"], m1["loss"], rtol=1e-6, atol=1e-7)
  for key in m1:
    np.testing.assert_allclose(m4[key], m1[key], rtol=1e-5, atol=1e-7, err_msg=key)
  # The update direction: gradients agree to 1e-6 of their scale, element by element.
  scale = max(float(np.max(np.abs(a))) for a in jax.tree.leaves(g1))
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g4)):
    np.testing.assert_allclose(a, b, atol=1e-6 * scale, rtol=0)
  assert set(m1) >= {
    "kl",
    "clip_frac/low",
    "clip_frac/high",
    "clip_frac/dual",
    "entropy",
    "logprob_diff/mean",
    "logprob_diff/max",
  }


def test_train_step_is_one_adamw_update_of_the_accumulated_gradient():
  params = models.init_params(CFG, jax.random.key(2))
  batch = _random_batch(np.random.default_rng(2))
  lc = learner.LearnerConfig(learning_rate=1e-3, micro_batches=2, logprob_chunk=4)
  grads, _ = jax.jit(lambda p, b: learner.accumulate_gradients(CFG, lc, p, b))(params, batch)
  opt = learner.make_optimizer(lc)

  @jax.jit  # one program, as the train step is, instead of optax's ops one by one
  def adamw_step(grads, params):
    updates, _ = opt.update(grads, opt.init(params), params)
    return jax.tree.map(lambda p, u: p + u, params, updates)

  expected = adamw_step(grads, params)
  state = learner.init_train_state(jax.tree.map(jnp.copy, params), lc)
  state, _ = learner.make_train_step(CFG, lc, state)(state, batch)
  assert int(state.step) == 1
  # Adam's first step moves a param by lr * g / (|g| + eps): where |g| is near eps, the last bits
  # of g (which the two programs may compute in another order) move it by up to lr. So each
  # element may differ by that sensitivity times the gradients' agreement bound (1e-6 of their
  # scale, as above), on top of 1e-7: elements with a real gradient are held to about 1e-7.
  eps = 1e-8  # optax.adamw's default
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grads))
  for a, b, g in zip(
    jax.tree.leaves(expected), jax.tree.leaves(state.params), jax.tree.leaves(grads)
  ):
    sensitivity = lc.learning_rate * eps / (np.abs(np.asarray(g)) + eps) ** 2
    np.testing.assert_array_less(
      np.abs(np.asarray(a) - np.asarray(b)), 1e-7 + sensitivity * 1e-6 * scale
    )


def test_an_update_with_a_non_finite_gradient_is_skipped():
  params = models.init_params(CFG, jax.random.key(3))
  lc = learner.LearnerConfig(learning_rate=1e-3, logprob_chunk=4)
  state = learner.init_train_state(jax.tree.map(jnp.copy, params), lc)
  step = learner.make_train_step(CFG, lc, state)
  good = _random_batch(np.random.default_rng(3))
  bad = dict(
    good, advantages=np.where(np.arange(8) == 5, np.nan, good["advantages"]).astype(np.float32)
  )
  state, metrics = step(state, good)
  assert float(metrics["skipped_updates"]) == 0.0
  before = jax.device_get(state)
  state, metrics = step(state, bad)
  assert not np.isfinite(float(metrics["grad_norm"]))
  assert float(metrics["skipped_updates"]) == 1.0 and int(state.step) == 2
  # Params and Adam's moments exactly as they were: the NaN reached neither.
  for a, b in zip(
    jax.tree.leaves(before.params) + jax.tree.leaves(before.opt_state),
    jax.tree.leaves(state.params) + jax.tree.leaves(state.opt_state),
  ):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  state, metrics = step(state, good)  # and training goes on
  assert float(metrics["skipped_updates"]) == 0.0
  assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.params))


def test_grpo_learns_a_verifiable_reward():
  """Reward 1 when the target token appears in the first 4 completion tokens."""
  cfg = models.tiny_config(
    "qwen3",
    vocab_size=32,
    num_layers=1,
    hidden_size=32,
    intermediate_size=64,
    num_heads=2,
    num_kv_heads=1,
    head_dim=16,
  )
  target, new, groups, g = 7, 4, 16, 8
  lc = learner.LearnerConfig(learning_rate=3e-3, kl_coef=0.0, weight_decay=0.0, logprob_chunk=16)
  state = learner.init_train_state(models.init_params(cfg, jax.random.key(3)), lc)
  step = learner.make_train_step(cfg, lc, state)
  logprob_fn = learner.make_logprob_fn(cfg, lc)
  prompt = [1, 2, 3]
  history = []
  for it in range(100):
    out = sampling.generate(
      cfg, state.params, [prompt] * groups, max_new_tokens=new, temperature=1.0, n=g, seed=it
    )
    rewards = np.array([float(target in row[:new]) for row in out.tokens], np.float32)
    history.append(rewards.mean())
    if it >= 5 and np.mean(history[-5:]) > 0.8:
      break
    adv = np.asarray(grpo.group_advantages(rewards, g))
    batch = rollouts.pack(
      [prompt] * len(rewards), out.tokens, out.logprobs, adv, prompt_len=4, max_new_tokens=new
    )
    batch["old_logp"] = np.asarray(logprob_fn(state.params, batch["tokens"], batch["kv_mask"]))
    state, _ = step(state, batch)
  assert np.mean(history[:3]) < 0.2, history[:3]
  assert np.mean(history[-5:]) > 0.8, (len(history), history[-5:])


def test_a_batch_without_old_logp_is_on_policy():
  """Leaving pi_old out means 'the params being updated sampled this batch': the same update
  as passing their own logprobs, without the forward pass that computes them."""
  params = models.init_params(CFG, jax.random.key(3))
  lc = learner.LearnerConfig(learning_rate=1e-3, logprob_chunk=4, temperature=0.8)
  batch = _random_batch(np.random.default_rng(3))
  batch["old_logp"] = np.asarray(
    learner.make_logprob_fn(CFG, lc)(params, batch["tokens"], batch["kv_mask"])
  )
  on_policy = {k: v for k, v in batch.items() if k != "old_logp"}
  grads_fn = jax.jit(lambda p, b: learner.accumulate_gradients(CFG, lc, p, b))
  (g_old, m_old), (g_on, m_on) = grads_fn(params, batch), grads_fn(params, on_policy)
  assert float(m_on["loss"]) != 0.0 and float(m_on["ratio/max"]) == 1.0
  for key in ("loss", "kl", "entropy", "grad_norm"):
    np.testing.assert_allclose(float(m_on[key]), float(m_old[key]), rtol=1e-5, err_msg=key)
  for a, b in zip(jax.tree.leaves(g_on), jax.tree.leaves(g_old)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_logprobs_run_in_micro_batches_and_each_function_is_built_once():
  """The pi_old / pi_ref function splits its rows like the train step (so a 640-row Solver
  mini-batch never runs in one call) and gives the rows' logprobs in their order; asking again
  for the same settings returns the same jitted function, which then compiles no more."""
  params = models.init_params(CFG, jax.random.key(4))
  batch = _random_batch(np.random.default_rng(4))
  whole = learner.make_logprob_fn(CFG, learner.LearnerConfig(logprob_chunk=4))
  lc = learner.LearnerConfig(logprob_chunk=4, micro_batches=4)
  split = learner.make_logprob_fn(CFG, lc)
  want = np.asarray(whole(params, batch["tokens"], batch["kv_mask"]))
  got = np.asarray(split(params, batch["tokens"], batch["kv_mask"]))
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=0)
  # One micro-batch's rows at a time: the program scans over a [4, 2, T] split.
  text = split.lower(params, batch["tokens"], batch["kv_mask"]).as_text()
  assert f"tensor<4x2x{batch['tokens'].shape[1]}xi32>" in text
  assert learner.make_logprob_fn(CFG, dataclasses.replace(lc)) is split
  with pytest.raises(ValueError, match="micro_batches"):
    split(params, batch["tokens"][:6], batch["kv_mask"][:6])
  state = learner.init_train_state(jax.tree.map(jnp.copy, params), lc)
  assert learner.make_train_step(CFG, lc, state) is learner.make_train_step(CFG, lc, state)
