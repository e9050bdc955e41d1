"""Per-token log-probabilities of given targets, without materialising [B, T, V] logits.

The vocabulary projection is done chunk by chunk along the sequence inside `lax.map`, and each
chunk is rematerialised in the backward pass, so peak memory holds one [B, chunk, V] block.
That matters at V = 151k and T = 6k.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from rzero_jax import models, sharding


def token_logprobs(
  cfg: models.ModelConfig,
  params,
  tokens: jax.Array,
  kv_mask: jax.Array,
  *,
  temperature: float | jax.Array = 1.0,
  chunk_size: int = 256,
  mesh=None,
  rules=sharding.DEFAULT_RULES,
  with_entropy: bool = False,
):
  """log p(tokens[:, t+1] | tokens[:, :t+1]) for t in [0, T-1), in float32.

  tokens, kv_mask: [B, T]. Returns logp [B, T-1] (and entropy [B, T-1] if asked), computed
  from the temperature-scaled distribution so that they compare with the sampler's.
  """
  hidden = models.hidden_states(cfg, params, tokens, kv_mask=kv_mask, mesh=mesh, rules=rules)
  hidden = hidden[:, :-1]
  targets = tokens[:, 1:]
  b, t, d = hidden.shape
  chunk = max(1, min(chunk_size, t))
  n_chunks = -(-t // chunk)
  pad = n_chunks * chunk - t
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  hidden = hidden.reshape(b, n_chunks, chunk, d).swapaxes(0, 1)
  targets = targets.reshape(b, n_chunks, chunk).swapaxes(0, 1)
  inv_temp = 1.0 / jnp.asarray(temperature, jnp.float32)

  @jax.checkpoint
  def one_chunk(args):
    h, tgt = args
    logits = models.unembed(cfg, params, h) * inv_temp  # [B, C, V] float32
    logits = sharding.constrain(logits, ("batch", "length", "act_vocab"), mesh, rules)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, tgt[..., None], axis=-1)[..., 0]
    logp = picked - lse
    if not with_entropy:
      return logp, jnp.zeros_like(logp)
    probs = jax.nn.softmax(logits, axis=-1)
    entropy = lse - jnp.sum(probs * logits, axis=-1)
    return logp, jax.lax.stop_gradient(entropy)

  logp, entropy = jax.lax.map(one_chunk, (hidden, targets))
  logp = logp.swapaxes(0, 1).reshape(b, n_chunks * chunk)[:, :t]
  entropy = entropy.swapaxes(0, 1).reshape(b, n_chunks * chunk)[:, :t]
  return (logp, entropy) if with_entropy else logp
