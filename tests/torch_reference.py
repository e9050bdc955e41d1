"""transformers' own greedy decoding: the reference our sampler's greedy tokens must equal."""

import torch


def greedy(model, prompts, max_new_tokens, pad_id=0):
  width = max(len(p) for p in prompts)
  ids = torch.tensor([[pad_id] * (width - len(p)) + list(p) for p in prompts])
  mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
  # One thread: torch's OpenMP barriers make tiny models ~100x slower when the CPU is shared.
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    with torch.no_grad():
      out = model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        min_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=None,
      )
  finally:
    torch.set_num_threads(threads)
  return out[:, width:].tolist()
