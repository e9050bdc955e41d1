"""A step's updates combine into the record a full batch would give: means weighted by their
counts, maxima as maxima (not a mean of per-update maxima)."""

import numpy as np
import pytest

from rzero_jax.rzero import phases


def test_updates_combine_as_one_batch():
  tokens = [np.array([0.5, 1.5, 1.0]), np.array([4.0])]  # per-token kl of two mini-batches
  ratios = [np.array([1.1, 0.9, 1.3]), np.array([2.5])]
  updates = [
    {
      "kl": t.mean(),
      "kl/count": len(t),
      "ratio/max": r.max(),
      "loss": 2.0,
      "count": 3.0,
      "grad_norm": g,
    }
    for t, r, g in zip(tokens, ratios, (1.0, 3.0))
  ]
  updates[1]["loss"], updates[1]["count"] = 5.0, 1.0
  for u, skipped in zip(updates, (1.0, 1.0)):
    u["skipped_updates"] = skipped
  merged = phases.merge_update_metrics(updates)
  everything = np.concatenate(tokens)
  assert merged["kl"] == pytest.approx(everything.mean())  # 1.75, not (1.0 + 4.0) / 2
  assert merged["kl/count"] == 4 and merged["count"] == 4
  assert merged["ratio/max"] == pytest.approx(2.5)
  assert merged["loss"] == pytest.approx((2.0 * 3 + 5.0 * 1) / 4)
  assert merged["grad_norm"] == pytest.approx(2.0)  # one per update: their mean
  assert merged["skipped_updates"] == 2  # a count of updates, not a mean


def test_a_single_update_is_unchanged():
  update = {"kl": 0.25, "kl/count": 7.0, "ratio/max": 1.5, "loss": 0.1, "count": 7.0}
  assert phases.merge_update_metrics([update]) == pytest.approx(update)
