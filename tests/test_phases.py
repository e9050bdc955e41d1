"""Host-side pieces of the loop: row splitting, batch packing, seeds."""

import dataclasses
import functools

import numpy as np
import pytest

from rzero_jax import models
from rzero_jax.rl import rollouts
from rzero_jax.rzero import phases


def _env(limit):
  cfg = models.tiny_config("qwen3", vocab_size=32, num_layers=1)
  return phases.Env(
    cfg=cfg,
    tokenizer=None,
    mesh=None,
    rules=None,
    prompt_set=None,
    stop_token_ids=(),
    max_rows_per_call=limit,
  )


def test_generate_rows_splits_calls_but_keeps_row_order(monkeypatch):
  calls = []

  class Out:
    def __init__(self, prompts, n):
      self.tokens = [[p[0], j] for p in prompts for j in range(n)]
      self.logprobs = [[0.0, 0.0] for _ in self.tokens]
      self.finish_reasons = ["length"] * len(self.tokens)

  def fake_generate(cfg, params, prompts, *, n, seed, **kw):
    calls.append((len(prompts), n, seed))
    return Out(prompts, n)

  monkeypatch.setattr(phases.sampling, "generate", fake_generate)
  prompts = [[i] for i in range(5)]
  rows, _, _ = phases.generate_rows(
    _env(4), None, prompts, n=2, seed=0, max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0
  )
  assert [r[0] for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
  assert all(len_p * n <= 4 for len_p, n, _ in calls)
  calls.clear()
  rows, _, _ = phases.generate_rows(
    _env(4), None, [[9]], n=10, seed=0, max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0
  )
  assert len(rows) == 10 and [n for _, n, _ in calls] == [4, 3, 3]
  assert len({seed for _, _, seed in calls}) == 3  # each piece samples independently


def test_generate_rows_makes_equal_calls_within_the_padded_limit(monkeypatch):
  calls = []

  class Out:
    def __init__(self, prompts, n):
      self.tokens = [[p[0]] for p in prompts for _ in range(n)]
      self.logprobs = [[0.0] for _ in self.tokens]
      self.finish_reasons = ["length"] * len(self.tokens)

  def fake_generate(cfg, params, prompts, *, n, seed, **kw):
    calls.append(len(prompts))
    return Out(prompts, n)

  monkeypatch.setattr(phases.sampling, "generate", fake_generate)
  prompts = [[i] for i in range(1000)]
  rows, _, _ = phases.generate_rows(
    _env(2048), None, prompts, n=10, seed=0, max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0
  )
  assert [r[0] for r in rows[::10]] == list(range(1000))
  # At most 192 prompts a call (padded: 192 x 10 rows), split evenly: one padded shape.
  assert calls == [167] * 4 + [166] * 2
  assert {phases.sampling.batch_bucket(c) * 10 for c in calls} == {1920}


def _fake_sharded_generate(monkeypatch) -> list:
  """`generate` replaced by a fake that records (prompts, n) per call, on a mesh whose rows
  split 4 ways; returns the list of calls."""
  calls = []

  class Out:
    def __init__(self, prompts, n):
      self.tokens = [[p[0], j] for p in prompts for j in range(n)]
      self.logprobs = [[0.0, 0.0] for _ in self.tokens]
      self.finish_reasons = ["length"] * len(self.tokens)

  def fake_generate(cfg, params, prompts, *, n, seed, **kw):
    calls.append((len(prompts), n))
    return Out(prompts, n)

  monkeypatch.setattr(phases.sampling, "generate", fake_generate)
  monkeypatch.setattr(phases, "_batch_shards", lambda env: 4)
  return calls


def test_one_prompts_samples_stay_within_the_limit_on_a_sharded_batch(monkeypatch):
  """On a mesh that splits rows 4 ways, `generate` pads one prompt to 4: a piece of one
  prompt's samples goes as 4 copies of it, so no call decodes more than the limit (a single
  prompt with n = limit used to decode 4 x limit rows, 3 in 4 of them padding)."""
  calls = _fake_sharded_generate(monkeypatch)
  rows, logps, finish = phases.generate_rows(
    _env(8), None, [[9]], n=20, seed=0, max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0
  )
  assert len(rows) == len(logps) == len(finish) == 20 and {r[0] for r in rows} == {9}
  assert all(phases.sampling.batch_bucket(p, 4) * n <= 8 for p, n in calls), calls


def test_few_samples_per_prompt_stay_within_the_limit_on_a_sharded_batch(monkeypatch):
  """n below the limit but one prompt padded to the shards' count above it: m=10 answers on 16
  shards with 64 rows per call would decode 160 rows (one real prompt); they go in pieces."""
  calls = _fake_sharded_generate(monkeypatch)
  rows, _, _ = phases.generate_rows(
    _env(8), None, [[7], [9]], n=5, seed=0, max_new_tokens=2, temperature=1.0, top_p=1.0, top_k=0
  )
  assert [r[0] for r in rows] == [7] * 5 + [9] * 5
  assert all(phases.sampling.batch_bucket(p, 4) * n <= 8 for p, n in calls), calls


def test_pack_aligns_targets_with_completions():
  batch = rollouts.pack(
    [[5, 6], [7]],
    [[1, 2, 3], []],
    [[-0.1, -0.2, -0.3], []],
    np.array([1.0, -1.0]),
    prompt_len=4,
    max_new_tokens=3,
  )
  assert batch["tokens"].tolist() == [[0, 0, 5, 6, 1, 2, 3], [0, 0, 0, 7, 0, 0, 0]]
  assert batch["kv_mask"].tolist()[1] == [False, False, False, True, False, False, False]
  # Position t predicts token t+1: completion tokens 1, 2, 3 are targets of positions 3, 4, 5.
  assert batch["loss_mask"].tolist() == [[0, 0, 0, 1, 1, 1], [0] * 6]
  np.testing.assert_allclose(batch["sampler_logp"][0, 3:], [-0.1, -0.2, -0.3], rtol=1e-6)


def test_seeds_differ_by_phase_and_step_and_are_stable():
  a = phases.derive_seed(0, 1, "challenger", 0)
  assert a == phases.derive_seed(0, 1, "challenger", 0)
  others = {
    phases.derive_seed(0, 1, "challenger", 1),
    phases.derive_seed(0, 2, "challenger", 0),
    phases.derive_seed(0, 1, "solver", 0),
    phases.derive_seed(1, 1, "challenger", 0),
  }
  assert a not in others and len(others) == 4


def test_solver_batches_reshuffle_each_epoch_and_drop_the_last_partial_batch():
  records = [{"question": i} for i in range(10)]
  batch = lambda step: [r["question"] for r in phases.solver_batch(records, step, 3, seed=1)]  # noqa: E731
  # 10 questions in batches of 3: 3 batches an epoch, the 10th question left out of that epoch.
  epoch0 = [batch(k) for k in range(3)]
  epoch1 = [batch(k) for k in range(3, 6)]
  for epoch in (epoch0, epoch1):
    seen = sum(epoch, [])
    assert len(seen) == 9 and len(set(seen)) == 9  # no repeats within an epoch
  assert epoch0 != epoch1  # a new shuffle each epoch (the old code cycled one order)
  assert batch(4) == batch(4)  # a resumed step replays
  assert batch(0) != [r["question"] for r in phases.solver_batch(records, 0, 3, seed=2)]


def test_solver_batches_refuse_a_dataset_below_the_minimum_in_one_line():
  records = [{"question": i} for i in range(10)]
  with pytest.raises(ValueError, match=r"kept 10 questions; solver.min_questions=512"):
    phases.solver_batch(records, 0, 3, seed=1, min_questions=512)
  with pytest.raises(ValueError, match="solver.prompts_per_step=16"):
    phases.solver_batch(records, 0, 16, seed=1)  # not one full batch
  assert len(phases.solver_batch(records, 0, 3, seed=1, min_questions=10)) == 3


def _dataset_env(texts, monkeypatch, seen_budget):
  class Tok:
    def decode(self, ids):
      return texts[ids[0]]

    def encode_chat(self, messages):
      words = len(messages[-1]["content"].split()) if messages else 0
      return [0] * (5 + words)  # 5 tokens of template

  class Prompts:
    def challenger_messages(self):
      return []

    def solver_messages(self, question):
      return [{"role": "user", "content": question}]

  env = phases.Env(
    cfg=None,
    tokenizer=Tok(),
    mesh=None,
    rules=None,
    prompt_set=Prompts(),
    stop_token_ids=(),
    max_rows_per_call=8,
  )

  def fake_rows(env, params, prompts, **k):
    seen_budget.append(k["max_new_tokens"])
    return [[i] for i in sorted(texts)], None, None

  monkeypatch.setattr(phases, "generate_rows", fake_rows)
  monkeypatch.setattr(
    phases, "answer_questions", lambda env, params, qs, **k: [["3", "3"] for _ in qs]
  )
  return env


def test_dataset_phase_keeps_a_long_question(monkeypatch):
  """The Challenger writes with dataset.max_new_tokens, and a question is dropped only when its
  whole Solver prompt exceeds dataset.max_solver_prompt_tokens (the official filter). A 1,500-word
  question was dropped before, by the old 1,024-token question cap."""
  from configs import qwen3_4b_base
  from rzero_jax.rzero import config as config_lib

  long_q = " ".join(["word"] * 1500)
  texts = {
    1: f"<question>{long_q}</question> \\boxed{{3}}",
    2: f"<question>{long_q} {long_q}</question> \\boxed{{3}}",
  }  # 3,005-token prompt
  budgets = []
  env = _dataset_env(texts, monkeypatch, budgets)
  paper = qwen3_4b_base.get_config()
  assert paper.dataset.max_new_tokens == 4096 and paper.dataset.max_solver_prompt_tokens == 2048
  dcfg = config_lib.base_config().dataset
  dcfg.update(band_delta=0.5, solver_samples=2, num_questions=2)
  records, stats = phases.build_dataset(env, None, None, dcfg, None, seed=0)
  assert budgets == [4096]
  assert [r["question"] for r in records] == [long_q]
  assert stats["overlong_prompts"] == 1 and stats["well_formed"] == 2


def test_dataset_never_keeps_an_excluded_question(monkeypatch):
  texts = {
    1: "<question>\n1 + 2\n</question>\n\n\\boxed{3}",
    2: "<question>\n4 + 5\n</question>\n\n\\boxed{9}",
  }

  class Tok:
    def decode(self, ids):
      return texts[ids[0]]

    def encode(self, text):
      return list(range(len(text.split())))

    def encode_chat(self, messages):
      return [0]

  class Prompts:
    def challenger_messages(self):
      return []

    def solver_messages(self, question):
      return [{"role": "user", "content": question}]

  env = phases.Env(
    cfg=None,
    tokenizer=Tok(),
    mesh=None,
    rules=None,
    prompt_set=Prompts(),
    stop_token_ids=(),
    max_rows_per_call=8,
  )
  monkeypatch.setattr(phases, "generate_rows", lambda *a, **k: ([[1], [2]], None, None))
  seen = []
  monkeypatch.setattr(
    phases,
    "answer_questions",
    lambda env, params, qs, **k: seen.extend(qs) or [["3", "3"] for _ in qs],
  )

  class D(dict):
    __getattr__ = dict.get

  dcfg = D(
    num_questions=2,
    temperature=1.0,
    top_p=1.0,
    top_k=0,
    solver_samples=2,
    band_delta=0.5,
    band_low=-1.0,
    band_high=-1.0,
    max_new_tokens=64,
    max_solver_prompt_tokens=64,
  )
  records, _ = phases.build_dataset(
    env, None, None, dcfg, None, seed=0, exclude=lambda q: q == "4 + 5"
  )
  assert seen == ["1 + 2"] and [r["question"] for r in records] == ["1 + 2"]


def test_completion_bucket_is_a_power_of_two_capped_at_the_budget():
  assert phases.completion_bucket([[1] * 3, [1] * 17], 96) == 32
  assert phases.completion_bucket([[1] * 90], 96) == 96
  assert phases.completion_bucket([[], []], 96) == 16
  assert phases.completion_bucket([[1] * 5], 8) == 8


@functools.cache  # one set of compiled functions for every test below
def _grpo_update_case():
  """A tiny model, 8 rollouts of 4 GRPO groups with completions of mixed lengths, and a way to
  run `phases.grpo_update` on it while recording what each train step receives."""
  import jax
  import jax.numpy as jnp

  from rzero_jax.rl import learner

  cfg = models.tiny_config("qwen3", vocab_size=32, num_layers=2)
  env = dataclasses.replace(_env(64), cfg=cfg)
  lc = learner.LearnerConfig(learning_rate=1e-2, kl_coef=0.05)
  rng = np.random.default_rng(0)
  prompts = [list(rng.integers(1, 32, size=n)) for n in (3, 5, 4, 6) for _ in range(2)]
  completions = [list(rng.integers(1, 32, size=n)) for n in (7, 2, 9, 0, 5, 11, 3, 6)]
  logps = [list(-rng.random(len(c))) for c in completions]
  rewards = np.array([1, 0, 0, 1, 1, 1, 0, 1], np.float32)
  params = models.init_params(cfg, jax.random.key(1))
  ref = jax.tree.map(lambda x: x * 0.9, params)
  logprob_fn = learner.make_logprob_fn(cfg, lc)
  grads_fn = jax.jit(functools.partial(learner.accumulate_gradients, cfg, lc))

  step = learner.make_train_step(cfg, lc, learner.init_train_state(params, lc))

  def update(rows_per_update=4):
    state = learner.init_train_state(jax.tree.map(jnp.copy, params), lc)
    seen = []

    def recording_step(s, mb):
      grads = grads_fn(s.params, mb)[0]
      seen.append(dict(mb, grads=grads, params=jax.tree.map(jnp.copy, s.params)))
      return step(s, mb)

    role = phases.Role(learner=lc, train_step=recording_step, logprobs=logprob_fn)
    _, metrics = phases.grpo_update(
      env,
      role,
      state,
      ref,
      prompts,
      completions,
      logps,
      rewards,
      group_size=2,
      max_new_tokens=64,
      rows_per_update=rows_per_update,
    )
    return seen, metrics

  return update, params, logprob_fn, grads_fn


def test_grpo_update_on_a_completion_bucket_equals_the_full_budget_update(monkeypatch):
  """Trailing completion padding must not change the update, only its cost."""
  import jax

  update, _, _, _ = _grpo_update_case()
  bucketed, bucketed_metrics = update()
  monkeypatch.setattr(phases, "completion_bucket", lambda completions, budget: budget)
  full, full_metrics = update()
  assert [mb["tokens"].shape for mb in bucketed] == [(4, 16 + 16)] * 2
  assert [mb["tokens"].shape for mb in full] == [(4, 16 + 64)] * 2
  assert full_metrics["loss"] != 0.0
  # The gradient of each mini-batch, not the Adam-updated weights: Adam divides by the root
  # mean square of each gradient, which blows float rounding up where a gradient is near zero.
  # Rounding from the two lengths' reductions stays below 2e-5 of a leaf's largest entry; a
  # misaligned completion would change entries by about their own size.
  for mb_bucketed, mb_full in zip(bucketed, full):
    for a, b in zip(jax.tree.leaves(mb_bucketed["grads"]), jax.tree.leaves(mb_full["grads"])):
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))
  for key in ("loss", "kl", "entropy"):
    np.testing.assert_allclose(bucketed_metrics[key], full_metrics[key], rtol=1e-4, atol=1e-7)


def test_a_single_update_trains_as_with_pi_old_recomputed():
  """A rollout batch that makes one update is on-policy: it must move the policy exactly as it
  would with pi_old recomputed from the params it updates (however phases gets there)."""
  import jax

  update, params, logprob_fn, grads_fn = _grpo_update_case()
  seen, _ = update(rows_per_update=8)
  assert len(seen) == 1
  batch = {k: v for k, v in seen[0].items() if k not in ("grads", "params")}
  batch["old_logp"] = logprob_fn(params, batch["tokens"], batch["kv_mask"])
  expected = grads_fn(params, batch)[0]
  for a, b in zip(jax.tree.leaves(seen[0]["grads"]), jax.tree.leaves(expected)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.abs(b).max()))


def test_every_minibatch_sees_pi_old_of_the_policy_that_sampled():
  update, params, logprob_fn, _ = _grpo_update_case()
  seen, _ = update()
  assert len(seen) == 2
  for mb in seen:
    sampling_policy = np.asarray(logprob_fn(params, mb["tokens"], mb["kv_mask"]))
    np.testing.assert_allclose(mb["old_logp"], sampling_policy, rtol=1e-5, atol=1e-6)
  # The first update moved the policy, so pi_old of the second mini-batch is not the policy
  # it is applied to.
  updated = np.asarray(logprob_fn(seen[1]["params"], seen[1]["tokens"], seen[1]["kv_mask"]))
  mask = seen[1]["loss_mask"] > 0
  assert np.abs(updated - seen[1]["old_logp"])[mask].max() > 1e-3
