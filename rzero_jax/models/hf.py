"""Hugging Face safetensors checkpoints <-> our params pytree.

One table (`tensor_table`) says, for every HF tensor, which param it becomes and how: the HF
tensor's dimensions are split into sub-dimensions (e.g. q_proj's [H*Dh] rows into [H, Dh]) and the
split view is transposed into our layout (see `transformer.py`'s docstring). Per-layer HF tensors
are stacked along our leading `layers` axis.

Loading never makes a host copy of the whole model: each param is created directly in its target
sharding with `jax.make_array_from_callback`, and the callback reads from the (memory-mapped)
safetensors files only the slice of each layer's tensor that the requested shard needs.

Only safetensors are read. Pickled `pytorch_model*.bin` checkpoints are refused, because unpickling
runs arbitrary code.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rzero_jax import fileio, multihost, sharding
from rzero_jax.models import transformer
from rzero_jax.models.config import ModelConfig, load_config

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CONFIG_FILE = "config.json"
# Non-weight buffers some older checkpoints carry; transformers recomputes them, and so do we.
IGNORED_SUFFIXES = (".rotary_emb.inv_freq",)
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

Params = Any


# ----------------------------------------------------------------------------- the table


@dataclasses.dataclass(frozen=True)
class TensorMap:
  """How one HF tensor becomes one of our params.

  hf_name: the HF name; `{i}` marks a per-layer tensor, stacked along our leading L axis.
  path: the param's path in our pytree.
  split: each HF dimension as its sub-dimensions, outermost first.
  perm: our per-layer axes, as indices into the flattened split view.
  """

  hf_name: str
  path: tuple[str, ...]
  split: tuple[tuple[int, ...], ...]
  perm: tuple[int, ...]

  @property
  def layered(self) -> bool:
    return "{i}" in self.hf_name

  @property
  def hf_shape(self) -> tuple[int, ...]:
    return tuple(math.prod(s) for s in self.split)

  @property
  def view_shape(self) -> tuple[int, ...]:
    return tuple(d for s in self.split for d in s)

  @property
  def layer_shape(self) -> tuple[int, ...]:
    """Our shape for one layer (or the whole param when not layered)."""
    view = self.view_shape
    return tuple(view[p] for p in self.perm)

  def hf_names(self, num_layers: int) -> list[str]:
    if not self.layered:
      return [self.hf_name]
    return [self.hf_name.format(i=i) for i in range(num_layers)]

  def to_ours(self, hf_array: np.ndarray) -> np.ndarray:
    return hf_array.reshape(self.view_shape).transpose(self.perm)

  def to_hf(self, our_layer: np.ndarray) -> np.ndarray:
    # Contiguous: safetensors writes the raw buffer, and a transposed view's buffer is not
    # in row-major order.
    return np.ascontiguousarray(our_layer.transpose(np.argsort(self.perm)).reshape(self.hf_shape))


def tensor_table(cfg: ModelConfig) -> list[TensorMap]:
  """Every tensor of an HF checkpoint for `cfg`, in the order HF writes them."""
  d, f, v = cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size
  h, kv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  layer = "model.layers.{i}."
  attn = ("layers", "attn")
  mlp = ("layers", "mlp")
  table = [TensorMap("model.embed_tokens.weight", ("embed", "embedding"), ((v,), (d,)), (0, 1))]
  table.append(
    TensorMap(layer + "input_layernorm.weight", ("layers", "input_norm", "scale"), ((d,),), (0,))
  )
  for name, heads in (("q_proj", h), ("k_proj", kv), ("v_proj", kv)):
    # HF [N*Dh, D] (out, in) -> view [N, Dh, D] -> ours [D, N, Dh]
    table.append(
      TensorMap(
        layer + f"self_attn.{name}.weight", attn + (name, "kernel"), ((heads, hd), (d,)), (2, 0, 1)
      )
    )
    if cfg.qkv_bias:
      table.append(
        TensorMap(layer + f"self_attn.{name}.bias", attn + (name, "bias"), ((heads, hd),), (0, 1))
      )
  # HF [D, H*Dh] -> view [D, H, Dh] -> ours [H, Dh, D]
  table.append(
    TensorMap(
      layer + "self_attn.o_proj.weight", attn + ("o_proj", "kernel"), ((d,), (h, hd)), (1, 2, 0)
    )
  )
  if cfg.qk_norm:
    for name in ("q_norm", "k_norm"):
      table.append(
        TensorMap(layer + f"self_attn.{name}.weight", attn + (name, "scale"), ((hd,),), (0,))
      )
  table.append(
    TensorMap(
      layer + "post_attention_layernorm.weight",
      ("layers", "post_attn_norm", "scale"),
      ((d,),),
      (0,),
    )
  )
  for name, (n_out, n_in) in (("gate_proj", (f, d)), ("up_proj", (f, d)), ("down_proj", (d, f))):
    table.append(
      TensorMap(layer + f"mlp.{name}.weight", mlp + (name, "kernel"), ((n_out,), (n_in,)), (1, 0))
    )
  table.append(TensorMap("model.norm.weight", ("final_norm", "scale"), ((d,),), (0,)))
  if not cfg.tie_word_embeddings:
    table.append(TensorMap("lm_head.weight", ("lm_head", "kernel"), ((v,), (d,)), (1, 0)))
  return table


def _full_shape(cfg: ModelConfig, entry: TensorMap) -> tuple[int, ...]:
  return ((cfg.num_layers,) if entry.layered else ()) + entry.layer_shape


def check_table_matches_model(cfg: ModelConfig) -> None:
  """The table and the Flax module must describe the same params; drift is a bug, caught here."""
  abstract = transformer.abstract_params(cfg)
  flat = {
    tuple(k.key for k in path): leaf.shape
    for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]
  }
  from_table = {e.path: _full_shape(cfg, e) for e in tensor_table(cfg)}
  if flat != from_table:
    raise AssertionError(
      f"hf.tensor_table disagrees with the model's params: table={from_table} model={flat}"
    )


# ----------------------------------------------------------------------------- slicing


def _normalize(index: Sequence[slice] | None, shape: Sequence[int]) -> list[slice]:
  index = tuple(index or ())
  index = index + (slice(None),) * (len(shape) - len(index))
  out = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"strided shard index {s} is not supported")
    out.append(slice(start, stop))
  return out


def _read_layer_block(
  entry: TensorMap, read: Callable[[tuple[slice, ...]], np.ndarray], our_index: Sequence[slice]
) -> np.ndarray:
  """Our `[our_index]` block of one layer, reading only the HF rows/columns it covers.

  Our axes are a permutation of the split view's axes; each HF dimension is the row-major
  flattening of its sub-dimensions, so a range on its outermost sub-dimension is a contiguous
  range of the HF dimension. Inner sub-dimension ranges are cut after reading.
  """
  view_index: list[slice] = [slice(None)] * len(entry.view_shape)
  for our_axis, view_axis in enumerate(entry.perm):
    view_index[view_axis] = our_index[our_axis]
  hf_index, local_index, block_view_shape = [], [], []
  axis = 0
  for sub in entry.split:
    outer = view_index[axis]
    inner = math.prod(sub[1:])
    hf_index.append(slice(outer.start * inner, outer.stop * inner))
    local_index.append(slice(None))
    block_view_shape.append(outer.stop - outer.start)
    for k, size in enumerate(sub[1:], start=1):
      local_index.append(view_index[axis + k])
      block_view_shape.append(size)
    axis += len(sub)
  block = read(tuple(hf_index)).reshape(block_view_shape)[tuple(local_index)]
  return block.transpose(entry.perm)


# ----------------------------------------------------------------------------- tensor sources


class TensorSource(Protocol):
  """Where HF-named tensors come from (safetensors files, or a dequantized GGUF)."""

  where: str

  def names(self) -> set[str]: ...

  def shape(self, name: str) -> tuple[int, ...]: ...

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray: ...


class SafetensorsSource:
  """The tensors of one HF model directory, read lazily through safetensors' memory map."""

  def __init__(self, model_dir: str, stack: contextlib.ExitStack):
    import safetensors

    self.where = model_dir
    self._files: dict[str, str] = {}  # tensor name -> file path
    self._handles: dict[str, Any] = {}  # file path -> open safe_open handle
    for name, file in _weight_map(model_dir).items():
      self._files[name] = file
    for file in sorted(set(self._files.values())):
      try:
        self._handles[file] = stack.enter_context(safetensors.safe_open(file, framework="numpy"))
      except Exception as e:  # safetensors raises its own SafetensorError for a bad header
        raise ValueError(
          f"{file}: not a readable safetensors file (corrupt or truncated header?): {e}"
        ) from None
    for name, file in self._files.items():
      if name not in self._handles[file].keys():
        raise ValueError(
          f"{os.path.join(model_dir, INDEX_FILE)}: says tensor {name!r} is in "
          f"{os.path.basename(file)}, but that file has no such tensor"
        )

  def names(self) -> set[str]:
    return set(self._files)

  def _slice(self, name: str):
    return self._handles[self._files[name]].get_slice(name)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._slice(name).get_shape())

  def read(self, name: str, index: tuple[slice, ...]) -> np.ndarray:
    return np.asarray(self._slice(name)[index])


def _weight_map(model_dir: str) -> dict[str, str]:
  """Tensor name -> safetensors file, from the single file or the sharded index."""
  import safetensors

  single = os.path.join(model_dir, SINGLE_FILE)
  index = os.path.join(model_dir, INDEX_FILE)
  if os.path.exists(single):
    try:
      with safetensors.safe_open(single, framework="numpy") as f:
        return {name: single for name in f.keys()}
    except Exception as e:
      raise ValueError(
        f"{single}: not a readable safetensors file (corrupt or truncated header?): {e}"
      ) from None
  if os.path.exists(index):
    try:
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise ValueError(f"{index}: expected JSON with a 'weight_map' object ({e!r})") from None
    out = {}
    for name, file in weight_map.items():
      path = os.path.join(model_dir, file)
      if not os.path.exists(path):
        raise FileNotFoundError(f"{index}: tensor {name!r} is in {file}, which does not exist")
      out[name] = path
    return out
  pickled = sorted(
    f
    for f in os.listdir(model_dir)
    if f.endswith((".bin", ".pt", ".pth")) and not f.startswith("training_args")
  )
  if pickled:
    raise ValueError(
      f"{model_dir}: holds only pickled PyTorch weights ({', '.join(pickled)}). These are "
      "refused because unpickling runs arbitrary code. Convert them once, in an environment "
      "you trust, to safetensors: `transformers.AutoModelForCausalLM.from_pretrained(path)"
      ".save_pretrained(out_dir, safe_serialization=True)`, then load out_dir."
    )
  raise FileNotFoundError(
    f"{model_dir}: no weights found; expected {SINGLE_FILE} or {INDEX_FILE} (with its shards)"
  )


# ----------------------------------------------------------------------------- loading


def dtype_name(dtype) -> str:
  name = np.dtype(dtype).name if not isinstance(dtype, str) else dtype
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype={dtype!r}: expected float32 or bfloat16")
  return name


def _check_names_and_shapes(cfg: ModelConfig, source: TensorSource) -> bool:
  """Raises one error listing every missing, unexpected or wrongly shaped tensor.

  Returns whether a tied checkpoint also holds an lm_head.weight (to compare with the
  embedding)."""
  table = tensor_table(cfg)
  expected = {name: entry.hf_shape for entry in table for name in entry.hf_names(cfg.num_layers)}
  present = {n for n in source.names() if not n.endswith(IGNORED_SUFFIXES)}
  redundant_head = cfg.tie_word_embeddings and "lm_head.weight" in present
  if redundant_head:
    # Some writers still save the tied head; it must equal the embedding (checked later).
    expected["lm_head.weight"] = (cfg.vocab_size, cfg.hidden_size)
  problems = []
  missing = sorted(set(expected) - present)
  if missing:
    problems.append(f"missing tensor(s): {', '.join(missing)}")
  unexpected = sorted(present - set(expected))
  if unexpected:
    problems.append(
      f"unexpected tensor(s) for model_type={cfg.model_type!r} "
      f"(tie_word_embeddings={cfg.tie_word_embeddings}, "
      f"qkv_bias={cfg.qkv_bias}, qk_norm={cfg.qk_norm}): {', '.join(unexpected)}"
    )
  for name in sorted(set(expected) & present):
    got = source.shape(name)
    if got != expected[name]:
      problems.append(
        f"tensor {name!r} has shape {list(got)}, expected {list(expected[name])} from config.json"
      )
  if problems:
    raise ValueError(
      f"{source.where}: checkpoint does not match its config: " + "; ".join(problems)
    )
  return redundant_head


def _check_tied_head(cfg: ModelConfig, source: TensorSource, rows_per_chunk: int = 4096):
  # Row chunks keep the comparison from copying both [V, D] tables to the host at once.
  for start in range(0, cfg.vocab_size, rows_per_chunk):
    rows = (slice(start, min(start + rows_per_chunk, cfg.vocab_size)), slice(None))
    if not np.array_equal(
      source.read("lm_head.weight", rows), source.read("model.embed_tokens.weight", rows)
    ):
      raise ValueError(
        f"{source.where}: config says tie_word_embeddings=true, but "
        "lm_head.weight differs from model.embed_tokens.weight; set "
        "tie_word_embeddings=false in config.json to load the separate head"
      )


def _set_path(tree: dict, path: Sequence[str], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _get_path(tree, path: Sequence[str], where: str):
  for depth, key in enumerate(path):
    if not isinstance(tree, dict) or key not in tree:
      raise ValueError(f"{where}: params lack {'/'.join(path[: depth + 1])}")
    tree = tree[key]
  return tree


def params_from_source(
  cfg: ModelConfig, source: TensorSource, mesh=None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> Params:
  """Builds the params pytree for `cfg` from HF-named tensors, each straight into its sharding.

  The stored dtype is `cfg.param_dtype`."""
  if _check_names_and_shapes(cfg, source):
    _check_tied_head(cfg, source)
  check_table_matches_model(cfg)
  np_dtype = np.dtype(transformer.dtype_of(cfg.param_dtype))
  if mesh is not None:
    shardings = transformer.param_shardings(cfg, mesh, rules)
  params: dict = {}
  for entry in tensor_table(cfg):
    shape = _full_shape(cfg, entry)
    if mesh is None:
      target = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    else:
      target = _get_path(shardings, entry.path, "param_shardings")
    _set_path(
      params,
      entry.path,
      jax.make_array_from_callback(
        shape, target, _make_callback(source, entry, shape, np_dtype), dtype=np_dtype
      ),
    )
  return params


def _make_callback(
  source: TensorSource, entry: TensorMap, shape: tuple[int, ...], np_dtype: np.dtype
):
  """The make_array_from_callback callback: one shard's block, read layer by layer."""

  def callback(index):
    index = _normalize(index, shape)
    if not entry.layered:
      read = lambda hf_index: source.read(entry.hf_name, hf_index)
      return _read_layer_block(entry, read, index).astype(np_dtype)
    layers = range(index[0].start, index[0].stop)
    blocks = []
    for i in layers:
      name = entry.hf_name.format(i=i)
      read = lambda hf_index, name=name: source.read(name, hf_index)
      blocks.append(_read_layer_block(entry, read, index[1:]).astype(np_dtype))
    return np.stack(blocks) if blocks else np.zeros((0,) + entry.layer_shape, np_dtype)

  return callback


def load_hf(
  path: str, dtype=jnp.float32, mesh=None, rules: sharding.Rules = sharding.DEFAULT_RULES
) -> tuple[ModelConfig, Params]:
  """Reads an HF model directory (config.json + safetensors) into (cfg, params).

  `dtype` (float32 | bfloat16) is the stored dtype of the params and sets cfg.param_dtype; the
  compute dtype (cfg.dtype) stays as the config says (float32 unless replaced). With a mesh,
  each param is created directly in its sharding from `rules`; otherwise on the default device.
  """
  path = fileio.local_copy(path)  # a gs:// model is read from a local copy
  if not os.path.isdir(path):
    raise FileNotFoundError(
      f"{path}: no such directory; expected an HF model directory with "
      f"{CONFIG_FILE} and {SINGLE_FILE}"
    )
  if not os.path.exists(os.path.join(path, CONFIG_FILE)):
    raise FileNotFoundError(
      f"{os.path.join(path, CONFIG_FILE)}: no such file; an HF model "
      "directory needs its config.json"
    )
  cfg = load_config(path, param_dtype=dtype_name(dtype))
  with contextlib.ExitStack() as stack:
    source = SafetensorsSource(path, stack)
    params = params_from_source(cfg, source, mesh, rules)
  return cfg, params


# ----------------------------------------------------------------------------- saving


def _hf_tensors(
  cfg: ModelConfig, params: Params
) -> Iterator[tuple[str, Callable[[], np.ndarray], tuple[int, ...]]]:
  """(HF name, a thunk that fetches it to the host, HF shape) for every tensor, in HF order.

  Per-layer tensors are fetched one layer at a time, so the host never holds a whole param."""
  np_dtype = np.dtype(transformer.dtype_of(cfg.param_dtype))
  for entry in tensor_table(cfg):
    value = _get_path(params, entry.path, "save_hf")
    want = _full_shape(cfg, entry)
    if tuple(value.shape) != want:
      raise ValueError(
        f"save_hf: param {'/'.join(entry.path)} has shape {list(value.shape)}, "
        f"expected {list(want)} for this config"
      )
    if not entry.layered:
      fetch = lambda v=value, e=entry: e.to_hf(multihost.to_host(v)).astype(np_dtype)  # noqa: E731
      yield entry.hf_name, fetch, entry.hf_shape
      continue
    for i in range(cfg.num_layers):
      yield (
        entry.hf_name.format(i=i),
        lambda v=value, e=entry, i=i: e.to_hf(multihost.to_host(v[i])).astype(np_dtype),
        entry.hf_shape,
      )


def save_hf(
  cfg: ModelConfig, params: Params, out_dir: str, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES
) -> None:
  """Writes config.json + safetensors (one file, or shards + index) that transformers loads.

  Tensors are stored in cfg.param_dtype. Files are written in a staging folder and then
  moved in, config.json last, so a crash never leaves a half-written checkpoint. Other files
  in an existing `out_dir` (e.g. a tokenizer) are kept; stale weight files are removed.
  """
  from safetensors.numpy import save_file

  out_dir = os.path.abspath(os.fspath(out_dir))
  itemsize = np.dtype(transformer.dtype_of(cfg.param_dtype)).itemsize
  tensors = list(_hf_tensors(cfg, params))
  shards: list[list[tuple[str, Callable[[], np.ndarray]]]] = [[]]
  size = 0
  for name, fetch, shape in tensors:
    nbytes = math.prod(shape) * itemsize
    if shards[-1] and size + nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append((name, fetch))
    size += nbytes

  names = (
    [SINGLE_FILE]
    if len(shards) == 1
    else [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
  )
  if os.path.exists(out_dir) and not os.path.isdir(out_dir):
    raise NotADirectoryError(f"save_hf: {out_dir} exists and is not a directory")
  # Weights before config.json: a reader that sees the new config sees the new weights.
  with fileio.staging_files(out_dir, last=CONFIG_FILE) as staging:
    weight_map = {}
    for file, shard in zip(names, shards):
      save_file(
        {name: fetch() for name, fetch in shard},
        os.path.join(staging, file),
        metadata={"format": "pt"},
      )
      weight_map.update({name: file for name, _ in shard})
    if len(shards) > 1:
      total = sum(math.prod(shape) * itemsize for _, _, shape in tensors)
      with open(os.path.join(staging, INDEX_FILE), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(staging, CONFIG_FILE), "w") as f:
      json.dump(cfg.to_hf_dict(), f, indent=2)
    new = set(os.listdir(staging))
  for name in os.listdir(out_dir):
    if _is_weight_file(name) and name not in new:
      os.remove(os.path.join(out_dir, name))


def _is_weight_file(name: str) -> bool:
  return name == INDEX_FILE or (name.startswith("model") and name.endswith(".safetensors"))
