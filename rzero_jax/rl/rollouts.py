"""Host-side packing of sampled completions into fixed-shape training batches.

A batch has the shape [rows, prompt_len + max_new_tokens]: prompts are left-padded to
`prompt_len`, completions right-padded to `max_new_tokens`. The phases pass power-of-two buckets
of both (`sampling.prompt_bucket`, `phases.completion_bucket`), so the train step compiles once
per bucket pair.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def pack(
  prompts: Sequence[Sequence[int]],
  completions: Sequence[Sequence[int]],
  sampler_logprobs: Sequence[Sequence[float]],
  advantages: np.ndarray,
  *,
  prompt_len: int,
  max_new_tokens: int,
  pad_id: int = 0,
) -> dict[str, np.ndarray]:
  """Rows of prompt + completion -> the learner's batch dict (old/ref logp left at zero).

  prompts[i] is the prompt of row i (already repeated per sample).
  """
  rows = len(completions)
  if not (len(prompts) == rows == len(sampler_logprobs) == len(advantages)):
    raise ValueError(
      f"pack: {len(prompts)} prompts, {rows} completions, "
      f"{len(sampler_logprobs)} logprob rows and {len(advantages)} advantages "
      "must all be equal"
    )
  total = prompt_len + max_new_tokens
  tokens = np.full((rows, total), pad_id, np.int32)
  kv_mask = np.zeros((rows, total), bool)
  loss_mask = np.zeros((rows, total - 1), np.float32)
  sampler_logp = np.zeros((rows, total - 1), np.float32)
  for i, (prompt, completion, logp) in enumerate(zip(prompts, completions, sampler_logprobs)):
    if len(prompt) > prompt_len:
      raise ValueError(
        f"pack: prompt of row {i} has {len(prompt)} tokens > prompt_len {prompt_len}"
      )
    completion = list(completion)[:max_new_tokens]
    start = prompt_len - len(prompt)
    tokens[i, start:prompt_len] = prompt
    kv_mask[i, start:prompt_len] = True
    n = len(completion)
    tokens[i, prompt_len : prompt_len + n] = completion
    kv_mask[i, prompt_len : prompt_len + n] = True
    # Target t+1 is predicted at position t: completion token j sits at prompt_len + j.
    loss_mask[i, prompt_len - 1 : prompt_len - 1 + n] = 1.0
    sampler_logp[i, prompt_len - 1 : prompt_len - 1 + n] = np.asarray(logp[:n], np.float32)
  return {
    "tokens": tokens,
    "kv_mask": kv_mask,
    "loss_mask": loss_mask,
    "old_logp": np.zeros_like(sampler_logp),
    "ref_logp": np.zeros_like(sampler_logp),
    "sampler_logp": sampler_logp,
    "advantages": np.asarray(advantages, np.float32),
  }


def minibatches(batch: dict[str, np.ndarray], rows_per_update: int):
  """Splits a rollout batch into consecutive optimizer mini-batches (whole GRPO groups)."""
  rows = batch["tokens"].shape[0]
  if rows % rows_per_update:
    raise ValueError(
      f"rollout batch of {rows} rows does not split into mini-batches of {rows_per_update}"
    )
  for start in range(0, rows, rows_per_update):
    yield {k: v[start : start + rows_per_update] for k, v in batch.items()}
