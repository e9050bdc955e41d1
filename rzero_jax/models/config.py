"""ModelConfig: the static description of a decoder, read from a Hugging Face config.json.

The config is a frozen, hashable dataclass so it can be a static argument of `jax.jit`.
Runtime choices (compute dtype, remat policy) live on it too, set with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
SUPPORTED_ROPE_TYPES = ("default", "llama3")
SUPPORTED_DTYPES = ("float32", "bfloat16")
SUPPORTED_REMAT = ("none", "full", "dots")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency-dependent RoPE scaling."""

  factor: float
  low_freq_factor: float
  high_freq_factor: float
  original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  model_type: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  max_position_embeddings: int = 4096
  tie_word_embeddings: bool = False
  qkv_bias: bool = False  # Qwen2/2.5
  qk_norm: bool = False  # Qwen3
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  # Runtime choices, not part of the checkpoint.
  dtype: str = "float32"  # activation / matmul dtype
  param_dtype: str = "float32"  # storage dtype of the parameters
  remat: str = "none"  # "none" | "full" | "dots" (save matmul outputs only)

  def __post_init__(self):
    if self.model_type not in SUPPORTED_MODEL_TYPES:
      raise ValueError(
        f"model_type {self.model_type!r} is not supported; supported: "
        f"{', '.join(SUPPORTED_MODEL_TYPES)}"
      )
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
        f"num_attention_heads={self.num_heads} must be a multiple of "
        f"num_key_value_heads={self.num_kv_heads}"
      )
    for field, allowed in (
      ("dtype", SUPPORTED_DTYPES),
      ("param_dtype", SUPPORTED_DTYPES),
      ("remat", SUPPORTED_REMAT),
    ):
      if getattr(self, field) not in allowed:
        raise ValueError(f"ModelConfig.{field}={getattr(self, field)!r}; expected one of {allowed}")

  @property
  def num_params(self) -> int:
    d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
    attn = d * self.head_dim * (2 * self.num_heads + 2 * self.num_kv_heads)
    per_layer = attn + 3 * d * f + 2 * d
    return self.num_layers * per_layer + v * d * (1 if self.tie_word_embeddings else 2) + d

  def to_hf_dict(self) -> dict[str, Any]:
    """The config.json that transformers reads back into the same architecture."""
    arch = {"qwen3": "Qwen3ForCausalLM", "qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}
    out: dict[str, Any] = {
      "architectures": [arch[self.model_type]],
      "model_type": self.model_type,
      "vocab_size": self.vocab_size,
      "hidden_size": self.hidden_size,
      "intermediate_size": self.intermediate_size,
      "num_hidden_layers": self.num_layers,
      "num_attention_heads": self.num_heads,
      "num_key_value_heads": self.num_kv_heads,
      "head_dim": self.head_dim,
      "rms_norm_eps": self.rms_norm_eps,
      "rope_theta": self.rope_theta,
      "max_position_embeddings": self.max_position_embeddings,
      "tie_word_embeddings": self.tie_word_embeddings,
      "hidden_act": "silu",
      "torch_dtype": self.param_dtype,
      "attention_bias": self.qkv_bias,
      "attention_dropout": 0.0,
      "use_cache": True,
    }
    if self.rope_scaling is not None:
      out["rope_scaling"] = {"rope_type": "llama3", **dataclasses.asdict(self.rope_scaling)}
    if self.model_type in ("qwen2", "qwen3"):
      out["use_sliding_window"] = False
      out["sliding_window"] = None
    if self.model_type == "llama":
      out["mlp_bias"] = False
    if self.bos_token_id is not None:
      out["bos_token_id"] = self.bos_token_id
    if self.eos_token_ids:
      out["eos_token_id"] = (
        self.eos_token_ids[0] if len(self.eos_token_ids) == 1 else list(self.eos_token_ids)
      )
    if self.pad_token_id is not None:
      out["pad_token_id"] = self.pad_token_id
    return out


def _rope_from_hf(hf: Mapping[str, Any], where: str) -> tuple[float, RopeScaling | None]:
  # transformers 4 spells it rope_theta + rope_scaling; transformers 5 folds both into
  # rope_parameters. Read either.
  params = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or None
  theta = hf.get("rope_theta", params.get("rope_theta", 10000.0))
  if scaling is None and params.get("rope_type", "default") != "default":
    scaling = params
  if scaling is None:
    return float(theta), None
  rope_type = scaling.get("rope_type", scaling.get("type", "default"))
  if rope_type == "default":
    return float(theta), None
  if rope_type != "llama3":
    raise ValueError(
      f"{where}: rope scaling type {rope_type!r} is not supported; supported: "
      f"{', '.join(SUPPORTED_ROPE_TYPES)}"
    )
  try:
    return float(theta), RopeScaling(
      factor=float(scaling["factor"]),
      low_freq_factor=float(scaling["low_freq_factor"]),
      high_freq_factor=float(scaling["high_freq_factor"]),
      original_max_position_embeddings=int(scaling["original_max_position_embeddings"]),
    )
  except KeyError as e:
    raise ValueError(f"{where}: llama3 rope scaling lacks field {e.args[0]!r}") from None


def from_hf_dict(hf: Mapping[str, Any], where: str = "config.json", **runtime) -> ModelConfig:
  """Builds a ModelConfig from a parsed HF config.json. `runtime` sets dtype/param_dtype/remat."""
  model_type = hf.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise ValueError(
      f"{where}: model_type {model_type!r} is not supported; supported: "
      f"{', '.join(SUPPORTED_MODEL_TYPES)}"
    )
  if hf.get("use_sliding_window") or (model_type == "llama" and hf.get("sliding_window")):
    raise ValueError(
      f"{where}: sliding-window attention is not supported; set "
      "use_sliding_window=false or use a model without it"
    )
  if hf.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{where}: hidden_act {hf['hidden_act']!r} is not supported; supported: silu")
  if hf.get("mlp_bias"):
    raise ValueError(f"{where}: mlp_bias=true is not supported")
  missing = [
    k
    for k in (
      "vocab_size",
      "hidden_size",
      "intermediate_size",
      "num_hidden_layers",
      "num_attention_heads",
    )
    if k not in hf
  ]
  if missing:
    raise ValueError(f"{where}: missing required field(s) {', '.join(missing)}")
  theta, scaling = _rope_from_hf(hf, where)
  num_heads = int(hf["num_attention_heads"])
  head_dim = hf.get("head_dim") or hf["hidden_size"] // num_heads
  eos = hf.get("eos_token_id")
  eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
  # Qwen2 always has q/k/v bias (and no o_proj bias). In Llama and Qwen3, attention_bias=true
  # also puts a bias on o_proj, which the decoder does not have.
  qkv_bias = model_type == "qwen2"
  if model_type != "qwen2" and hf.get("attention_bias"):
    raise ValueError(
      f"{where}: attention_bias=true is not supported for {model_type} (it adds "
      "q/k/v/o biases); supported: attention_bias=false, or model_type qwen2 "
      "for q/k/v bias"
    )
  return ModelConfig(
    model_type=model_type,
    vocab_size=int(hf["vocab_size"]),
    hidden_size=int(hf["hidden_size"]),
    intermediate_size=int(hf["intermediate_size"]),
    num_layers=int(hf["num_hidden_layers"]),
    num_heads=num_heads,
    num_kv_heads=int(hf.get("num_key_value_heads") or num_heads),
    head_dim=int(head_dim),
    rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
    rope_theta=theta,
    rope_scaling=scaling,
    max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
    tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
    qkv_bias=qkv_bias,
    qk_norm=model_type == "qwen3",
    bos_token_id=hf.get("bos_token_id"),
    eos_token_ids=eos_ids,
    pad_token_id=hf.get("pad_token_id"),
    **runtime,
  )


def load_config(path: str, **runtime) -> ModelConfig:
  """Reads `path/config.json` (or a config.json path) into a ModelConfig."""
  cfg_path = os.path.join(path, "config.json") if os.path.isdir(path) else path
  if not os.path.exists(cfg_path):
    raise FileNotFoundError(
      f"{cfg_path}: no such file; expected an HF model directory with config.json"
    )
  try:
    with open(cfg_path) as f:
      hf = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{cfg_path}: not valid JSON ({e})") from None
  return from_hf_dict(hf, where=cfg_path, **runtime)


def tiny_config(model_type: str = "qwen3", **overrides) -> ModelConfig:
  """A small random-init architecture for tests and the embedded default world."""
  base = dict(
    model_type=model_type,
    vocab_size=256,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    rope_theta=10000.0,
    max_position_embeddings=512,
    tie_word_embeddings=model_type == "qwen3",
    qkv_bias=model_type == "qwen2",
    qk_norm=model_type == "qwen3",
  )
  base.update(overrides)
  return ModelConfig(**base)
