"""Decoder models: config, the Flax decoder, and weight import/export."""

from rzero_jax.models.config import ModelConfig, RopeScaling, from_hf_dict, load_config, tiny_config
from rzero_jax.models.gguf import load_gguf
from rzero_jax.models.hf import load_hf, save_hf
from rzero_jax.models.pretrained import is_gguf, load_pretrained
from rzero_jax.models.transformer import (
  ATTENTION_KERNELS,
  KVCache,
  abstract_params,
  attend,
  cache_logical_axes,
  default_positions,
  forward,
  forward_with_cache,
  hidden_states,
  init_cache,
  init_params,
  param_logical_axes,
  param_shardings,
  unembed,
)
