"""GRPO maths against an independent float64 torch reference written here, token by token.

The reference loops over sequences and their valid tokens in plain Python, so it shares no
vectorised masking tricks with `rzero_jax.rl.grpo`; its gradients come from torch autograd.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from rzero_jax.rl import grpo

GROUP = 4
N_GROUPS = 5
BATCH = GROUP * N_GROUPS
TIME = 12
HPARAMS = dict(clip_low=0.2, clip_high=0.3, dual_clip=3.0, kl_coef=0.01, kl_clamp=10.0)


# ---------------------------------------------------------------------------------------------
# Independent reference (float64 torch, explicit loops, definitions of docs/ALGORITHM.md)
# ---------------------------------------------------------------------------------------------
def reference_advantages(rewards, group_size, eps=1e-6, estimator="grpo"):
  out = []
  for g in range(len(rewards) // group_size):
    r = [float(x) for x in rewards[g * group_size : (g + 1) * group_size]]
    if len(set(r)) == 1:
      out += [0.0] * group_size
      continue
    mean = sum(r) / group_size
    if estimator == "grpo":
      std = (sum((x - mean) ** 2 for x in r) / (group_size - 1)) ** 0.5
      out += [(x - mean) / (std + eps) for x in r]
    elif estimator == "dr_grpo":
      out += [x - mean for x in r]
    elif estimator == "rloo":
      out += [x - (sum(r) - x) / (group_size - 1) for x in r]
  return np.array(out)


def reference_token_terms(lp, old, ref, adv, p):
  """Per-token (policy loss, k3 kl, ratio) for one sequence; lp is a float64 torch vector."""
  log_ratio = torch.clamp(lp - old, -20.0, 20.0)
  ratio = torch.exp(log_ratio)
  surrogate = torch.maximum(
    -adv * ratio, -adv * torch.clamp(ratio, 1 - p["clip_low"], 1 + p["clip_high"])
  )
  if adv < 0:
    surrogate = torch.minimum(surrogate, torch.full_like(surrogate, -adv * p["dual_clip"]))
  d = torch.clamp(ref - lp, -20.0, 20.0)
  kl = torch.clamp(torch.exp(d) - d - 1, -p["kl_clamp"], p["kl_clamp"])
  return surrogate, kl, ratio


def reference_loss_and_grad(logp, old_logp, ref_logp, adv, mask, aggregation, p=HPARAMS):
  """Returns (loss = sum/count, d loss / d logp as [B, T], metrics dict of plain floats)."""
  batch, time = logp.shape
  lp_all = torch.tensor(np.where(mask > 0, logp, 0.0), dtype=torch.float64, requires_grad=True)
  seq_losses, tok_losses, kls, ratios, rows_with_tokens = [], [], [], [], []
  n_low = n_high = n_dual = 0
  for b in range(batch):
    idx = [t for t in range(time) if mask[b, t] > 0]
    if not idx:
      continue
    rows_with_tokens.append(b)
    a = float(adv[b])
    lp = lp_all[b, idx]
    old = torch.tensor(old_logp[b, idx], dtype=torch.float64)
    ref = torch.tensor(ref_logp[b, idx], dtype=torch.float64)
    surrogate, kl, ratio = reference_token_terms(lp, old, ref, a, p)
    tok = surrogate + p["kl_coef"] * kl
    tok_losses.append(tok)
    seq_losses.append(tok.mean())
    kls.append(kl.detach())
    ratios.append(ratio.detach())
    for r in ratio.detach().tolist():
      n_low += int(a < 0 and r < 1 - p["clip_low"])
      n_high += int(a > 0 and r > 1 + p["clip_high"])
      n_dual += int(a < 0 and r > p["dual_clip"])
  if aggregation == "token-mean":
    loss = torch.cat(tok_losses).mean()
  elif aggregation == "micro-token-mean":
    # The official trainer: the token mean of each micro-batch of 2 consecutive rows (EasyR1's
    # masked_mean per micro-batch), then the mean over micro-batches that have tokens.
    by_row = dict(zip(rows_with_tokens, tok_losses))
    means = []
    for start in range(0, batch, 2):
      toks = [by_row[r] for r in (start, start + 1) if r in by_row]
      if toks:
        means.append(torch.cat(toks).mean())
    loss = torch.stack(means).mean()
  else:
    loss = torch.stack(seq_losses).mean()
  loss.backward()
  n_tok = sum(len(k) for k in kls)
  metrics = {
    "clip_frac/low": n_low / n_tok,
    "clip_frac/high": n_high / n_tok,
    "clip_frac/dual": n_dual / n_tok,
    "kl": float(torch.cat(kls).mean()),
    "ratio/mean": float(torch.cat(ratios).mean()),
    "ratio/max": float(torch.cat(ratios).max()),
    "response_length": n_tok / batch,
  }
  return float(loss.detach()), lp_all.grad.numpy(), metrics


# ---------------------------------------------------------------------------------------------
# Inputs: every clip regime, all-equal groups, padding with garbage, a row with no tokens
# ---------------------------------------------------------------------------------------------
def make_batch(seed=0):
  rng = np.random.default_rng(seed)
  rewards = rng.integers(0, 2, BATCH).astype(np.float32)
  rewards[0:GROUP] = 1.0  # all-equal group
  rewards[GROUP : 2 * GROUP] = 0.3  # all-equal, and 0.3 has no exact float mean
  rewards[2 * GROUP : 3 * GROUP] = [1, 0, 0, 0]
  rewards[3 * GROUP : 4 * GROUP] = rng.uniform(-1, 1, GROUP)
  # Completion lengths 0..TIME; completion tokens sit right after a variable prompt stretch.
  lengths = rng.integers(1, TIME + 1, BATCH)
  lengths[5] = 0
  lengths[6] = TIME
  starts = np.array([rng.integers(0, TIME - n + 1) for n in lengths])
  mask = np.zeros((BATCH, TIME), np.float32)
  for b in range(BATCH):
    mask[b, starts[b] : starts[b] + lengths[b]] = 1.0
  logp = -rng.exponential(1.5, (BATCH, TIME)).astype(np.float32)
  # log-ratios in [-1.1, 1.4]: ratios 0.33..4.1 hit the low, high and dual clips.
  old_logp = (logp - rng.uniform(-1.1, 1.4, (BATCH, TIME))).astype(np.float32)
  # ref - logp in [-3.5, 3.5]: k3 exceeds the clamp of 10 near the top.
  ref_logp = (logp + rng.uniform(-3.5, 3.5, (BATCH, TIME))).astype(np.float32)
  entropy = rng.uniform(0, 3, (BATCH, TIME)).astype(np.float32)
  for arr in (logp, old_logp, ref_logp, entropy):  # garbage where the mask is 0
    arr[mask == 0] = rng.choice([np.nan, -np.inf, np.inf, 1e30], int((mask == 0).sum()))
  return dict(
    rewards=rewards, mask=mask, logp=logp, old_logp=old_logp, ref_logp=ref_logp, entropy=entropy
  )


def loss_fn(aggregation, **hparams):
  def fn(logp, old_logp, ref_logp, adv, mask):
    s, c, m = grpo.policy_loss(
      logp, old_logp, ref_logp, adv, mask, aggregation=aggregation, **hparams
    )
    return s / c, (s, c, m)

  return jax.value_and_grad(fn, has_aux=True)


# ---------------------------------------------------------------------------------------------
# Advantages
# ---------------------------------------------------------------------------------------------
def test_grpo_advantages_hand_computed():
  rewards = np.array([1, 0, 0, 0, 0.3, 0.3, 0.3, 0.3, 2, 4, 2, 4], np.float32)
  adv = np.asarray(grpo.group_advantages(rewards, 4))
  # mean .25, unbiased std sqrt(.75/3) = .5
  np.testing.assert_allclose(
    adv[:4], np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-6), rtol=1e-6
  )
  assert np.all(adv[4:8] == 0.0)  # exactly, although mean(0.3 x 4) != 0.3 in float32
  # mean 3, unbiased std sqrt(4/3)
  np.testing.assert_allclose(adv[8:], np.array([-1, 1, -1, 1]) / (np.sqrt(4 / 3) + 1e-6), rtol=1e-6)


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_all_equal_groups_are_exactly_zero(estimator):
  # float32 means of these equal values are off by an ulp; a naive (r - mean) / (std + eps)
  # would give about -0.06 for the G=5 group of 0.9s instead of 0.
  rewards = np.array([0.9] * 5 + [0.2] * 5 + [0.1] * 5, np.float32)
  assert np.any(np.asarray(jnp.asarray(rewards[:5]) - jnp.asarray(rewards[:5]).mean()) != 0)
  adv = np.asarray(grpo.group_advantages(rewards, 5, estimator=estimator))
  assert np.all(adv == 0.0)


def test_dr_grpo_and_rloo_hand_computed():
  rewards = np.array([1, 0, 0, 0, 5, 5, 5, 5], np.float32)
  np.testing.assert_allclose(
    grpo.group_advantages(rewards, 4, estimator="dr_grpo"),
    [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0],
    rtol=1e-6,
    atol=0,
  )
  np.testing.assert_allclose(
    grpo.group_advantages(rewards, 4, estimator="rloo"),
    [1, -1 / 3, -1 / 3, -1 / 3, 0, 0, 0, 0],
    rtol=1e-6,
    atol=0,
  )


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo"])
def test_advantages_match_reference_and_jit(estimator):
  rewards = make_batch(1)["rewards"]
  ours = jax.jit(grpo.group_advantages, static_argnames=("group_size", "estimator"))(
    rewards, group_size=GROUP, estimator=estimator
  )
  ref = reference_advantages(rewards, GROUP, estimator=estimator)
  np.testing.assert_allclose(np.asarray(ours), ref, rtol=1e-6, atol=1e-7)
  assert ours.dtype == jnp.float32


def test_advantages_reject_bad_input():
  with pytest.raises(ValueError, match="divisible"):
    grpo.group_advantages(np.zeros(6), 4)
  with pytest.raises(ValueError, match="group_size"):
    grpo.group_advantages(np.zeros(4), 1)
  with pytest.raises(ValueError, match="estimator"):
    grpo.group_advantages(np.zeros(4), 2, estimator="ppo")


# ---------------------------------------------------------------------------------------------
# Policy loss
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean", "micro-token-mean"])
def test_policy_loss_and_grad_match_reference(aggregation):
  d = make_batch(0)
  adv = np.asarray(grpo.group_advantages(d["rewards"], GROUP))
  (loss, (_, count, metrics)), grad = jax.jit(loss_fn(aggregation, **HPARAMS))(
    d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"]
  )
  ref_loss, ref_grad, ref_metrics = reference_loss_and_grad(
    d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"], aggregation
  )

  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[d["mask"] == 0] == 0.0)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-6, atol=0)
  per_pair = d["mask"].reshape(BATCH // 2, -1).sum(1)
  expected_count = {
    "token-mean": d["mask"].sum(),
    "micro-token-mean": (per_pair > 0).sum(),
    "seq-mean-token-mean": (d["mask"].sum(1) > 0).sum(),
  }[aggregation]
  assert float(count) == expected_count
  values = grpo.metric_values(metrics)
  for name, ref_value in ref_metrics.items():
    np.testing.assert_allclose(float(values[name]), ref_value, rtol=1e-6, err_msg=name)
  # The batch really exercises every branch (otherwise this test proves less than it says).
  for name in ("clip_frac/low", "clip_frac/high", "clip_frac/dual"):
    assert ref_metrics[name] > 0, name
  assert np.any(np.abs(ref_grad[d["mask"] > 0]) > 0)


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_policy_loss_without_kl_or_dual_clip(aggregation):
  d = make_batch(2)
  adv = np.asarray(grpo.group_advantages(d["rewards"], GROUP))
  p = dict(HPARAMS, kl_coef=0.0)
  (loss, _), grad = loss_fn(aggregation, **p)(d["logp"], d["old_logp"], None, adv, d["mask"])
  ref_loss, ref_grad, _ = reference_loss_and_grad(
    d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"], aggregation, p
  )
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), ref_grad, rtol=1e-6, atol=0)

  p = dict(HPARAMS, dual_clip=None)
  (loss, _), _ = loss_fn(aggregation, **p)(d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"])
  ref_loss, _, _ = reference_loss_and_grad(
    d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"], aggregation, dict(p, dual_clip=1e30)
  )
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-6)


def test_micro_token_mean_differs_from_the_paper_form_and_checks_its_rows():
  d = make_batch(0)
  adv = np.asarray(grpo.group_advantages(d["rewards"], GROUP))
  (paper, _), _ = loss_fn("seq-mean-token-mean", **HPARAMS)(
    d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"]
  )
  (official, _), _ = loss_fn("micro-token-mean", **HPARAMS)(
    d["logp"], d["old_logp"], d["ref_logp"], adv, d["mask"]
  )
  assert abs(float(paper) - float(official)) > 1e-4  # mixed lengths: the two forms differ
  with pytest.raises(ValueError, match="aggregation_rows=3"):
    grpo.policy_loss(
      d["logp"][:4],
      d["old_logp"][:4],
      d["ref_logp"][:4],
      adv[:4],
      d["mask"][:4],
      aggregation="micro-token-mean",
      aggregation_rows=3,
    )


@pytest.mark.parametrize("aggregation", ["seq-mean-token-mean", "token-mean"])
def test_micro_batches_sum_to_full_batch(aggregation):
  d = make_batch(3)
  adv = np.asarray(grpo.group_advantages(d["rewards"], GROUP))
  fn = jax.jit(functools.partial(grpo.policy_loss, aggregation=aggregation, **HPARAMS))
  names = ("logp", "old_logp", "ref_logp")
  full_sum, full_count, full_metrics = fn(
    *(d[k] for k in names), adv, d["mask"], entropy=d["entropy"]
  )
  total, count, metrics = 0.0, 0.0, None
  for rows in np.split(np.arange(BATCH), 4):
    s, c, m = fn(
      *(d[k][rows] for k in names), adv[rows], d["mask"][rows], entropy=d["entropy"][rows]
    )
    total, count = total + s, count + c
    metrics = m if metrics is None else grpo.merge_metrics(metrics, m)
  assert float(count) == float(full_count)
  np.testing.assert_allclose(float(total / count), float(full_sum / full_count), rtol=1e-6)
  full_values, values = grpo.metric_values(full_metrics), grpo.metric_values(metrics)
  assert set(values) == set(full_values) and "entropy" in values
  for name in values:
    np.testing.assert_allclose(
      float(values[name]), float(full_values[name]), rtol=1e-6, err_msg=name
    )
  ent = d["entropy"][d["mask"] > 0]
  np.testing.assert_allclose(float(values["entropy"]), ent.astype(np.float64).mean(), rtol=1e-6)


def test_empty_batch_gives_zero_count_and_finite_values():
  d = make_batch(4)
  mask = np.zeros_like(d["mask"])
  s, c, m = grpo.policy_loss(d["logp"], d["old_logp"], d["ref_logp"], np.ones(BATCH), mask)
  assert float(s) == 0.0 and float(c) == 0.0
  assert all(np.isfinite(float(v)) for v in grpo.metric_values(m).values())


def test_policy_loss_rejects_bad_arguments():
  d = make_batch(0)
  args = (d["logp"], d["old_logp"], d["ref_logp"], np.zeros(BATCH), d["mask"])
  with pytest.raises(ValueError, match="aggregation"):
    grpo.policy_loss(*args, aggregation="seq-sum")
  with pytest.raises(ValueError, match="ref_logp"):
    grpo.policy_loss(*args[:2], None, *args[3:])
  with pytest.raises(ValueError, match="advantages"):
    grpo.policy_loss(*args[:3], np.zeros((BATCH, 1)), args[4])
  with pytest.raises(ValueError, match="old_logp"):
    grpo.policy_loss(args[0], args[1][:, :-1], *args[2:])
  with pytest.raises(ValueError, match="dual_clip"):
    grpo.policy_loss(*args, dual_clip=0.5)


def test_logprob_mismatch():
  d = make_batch(5)
  trainer = np.where(d["mask"] > 0, d["logp"], 0.0).astype(np.float32)
  sampler = trainer + np.random.default_rng(0).normal(0, 0.01, trainer.shape).astype(np.float32)
  sampler[d["mask"] == 0] = np.nan
  values = grpo.metric_values(grpo.logprob_mismatch(sampler, trainer, d["mask"]))
  diff = np.abs(sampler.astype(np.float64) - trainer)[d["mask"] > 0]
  np.testing.assert_allclose(float(values["logprob_diff/mean"]), diff.mean(), rtol=1e-6)
  np.testing.assert_allclose(float(values["logprob_diff/max"]), diff.max(), rtol=1e-6)
