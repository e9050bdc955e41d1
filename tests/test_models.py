"""HF checkpoint import/export and logits parity with transformers on tiny random models.

Each family is built with transformers in the test (random weights, biases and norm scales, so
every mapping is exercised) and saved with save_pretrained; torch is only the reference here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from rzero_jax import models  # noqa: E402
from rzero_jax.models import (
  config as config_lib,  # noqa: E402
  hf,  # noqa: E402
)

VOCAB = 96
COMMON = dict(
  vocab_size=VOCAB,
  hidden_size=64,
  intermediate_size=96,
  num_hidden_layers=2,
  num_attention_heads=4,
  num_key_value_heads=2,
  max_position_embeddings=256,
  rms_norm_eps=1e-6,
  bos_token_id=1,
  eos_token_id=2,
)
LLAMA3_ROPE = {
  "rope_type": "llama3",
  "rope_theta": 10000.0,
  "factor": 8.0,
  "low_freq_factor": 1.0,
  "high_freq_factor": 4.0,
  # short, so the scaled / smoothed / untouched frequency bands all occur at Dh=16
  "original_max_position_embeddings": 64,
}

FAMILIES = {
  # Qwen3: q/k norm, head_dim independent of hidden size, tied embeddings.
  "qwen3": lambda: transformers.Qwen3ForCausalLM(
    transformers.Qwen3Config(**COMMON, head_dim=24, tie_word_embeddings=True)
  ),
  # Qwen2: q/k/v bias.
  "qwen2": lambda: transformers.Qwen2ForCausalLM(
    transformers.Qwen2Config(**COMMON, tie_word_embeddings=False)
  ),
  # Llama 3.x: untied, llama3 RoPE scaling.
  "llama": lambda: transformers.LlamaForCausalLM(
    transformers.LlamaConfig(**COMMON, tie_word_embeddings=False, rope_parameters=LLAMA3_ROPE)
  ),
}


def _randomize(model, seed: int):
  # Default init leaves biases at 0 and norms at 1, which would hide a mapping mistake.
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape, generator=gen) * 0.05)
  return model.eval()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  """family -> (model dir, transformers model)."""
  out = {}
  for seed, (family, build) in enumerate(FAMILIES.items()):
    torch.manual_seed(seed)
    model = _randomize(build(), seed)
    path = str(tmp_path_factory.mktemp(family))
    model.save_pretrained(path)
    out[family] = (path, model)
  return out


def _tokens(seed: int, batch: int = 2, length: int = 12) -> np.ndarray:
  return np.random.RandomState(seed).randint(3, VOCAB, (batch, length)).astype(np.int32)


def _hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


# One compile per (config, shape) instead of re-tracing the decoder on every call.
_forward = jax.jit(models.forward, static_argnums=0)


def _flat(params) -> dict:
  return {
    jax.tree_util.keystr(k): np.asarray(v)
    for k, v in jax.tree_util.tree_flatten_with_path(params)[0]
  }


@pytest.mark.parametrize("family", list(FAMILIES))
def test_logits_match_transformers_including_left_padding(checkpoints, family):
  path, model = checkpoints[family]
  cfg, params = models.load_hf(path)
  assert cfg.model_type == family
  tokens = _tokens(0)
  ref = _hf_logits(model, tokens)
  ours = np.asarray(_forward(cfg, params, tokens, kv_mask=np.ones(tokens.shape, bool)))
  assert ours.shape == ref.shape
  assert np.abs(ours - ref).max() <= 1e-4

  # Left-pad the second row's first 8 tokens by 4: its real positions must give the logits of
  # the unpadded sequence.
  short = tokens[1, :8]
  padded = np.stack([tokens[0], np.concatenate([np.zeros(4, np.int32), short])])
  mask = np.stack([np.ones(12, bool), np.arange(12) >= 4])
  ours_padded = np.asarray(_forward(cfg, params, padded, kv_mask=mask))
  assert np.abs(ours_padded[0] - ref[0]).max() <= 1e-4
  assert np.abs(ours_padded[1, 4:] - _hf_logits(model, short[None])[0]).max() <= 1e-4


class _Records(logging.Handler):
  def __init__(self):
    super().__init__(logging.WARNING)
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_export_loads_in_transformers_without_key_warnings(checkpoints, family, tmp_path):
  path, model = checkpoints[family]
  cfg, params = models.load_hf(path)
  out = str(tmp_path / "export")
  models.save_hf(cfg, params, out)

  records = _Records()
  logger = logging.getLogger("transformers")
  logger.addHandler(records)
  try:
    reloaded, info = transformers.AutoModelForCausalLM.from_pretrained(
      out, output_loading_info=True, dtype=torch.float32
    )
  finally:
    logger.removeHandler(records)
  assert type(reloaded) is type(model)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  assert not info["mismatched_keys"], info
  key_warnings = [
    m
    for m in records.messages
    if any(w in m for w in ("MISSING", "UNEXPECTED", "MISMATCH", "newly initialized"))
  ]
  assert not key_warnings, key_warnings
  tokens = _tokens(1)
  np.testing.assert_allclose(
    _hf_logits(reloaded.eval(), tokens), _hf_logits(model, tokens), rtol=0, atol=1e-5
  )


@pytest.mark.parametrize("family", list(FAMILIES))
def test_import_export_import_is_bit_identical(checkpoints, family, tmp_path):
  path, _ = checkpoints[family]
  cfg, params = models.load_hf(path)
  out = str(tmp_path / "export")
  models.save_hf(cfg, params, out)
  # The export holds exactly the tensors transformers wrote, bit for bit.
  original = load_file(os.path.join(path, "model.safetensors"))
  exported = load_file(os.path.join(out, "model.safetensors"))
  assert sorted(exported) == sorted(original)
  for name in original:
    assert exported[name].dtype == original[name].dtype, name
    assert np.array_equal(exported[name], original[name]), name
  cfg2, params2 = models.load_hf(out)
  assert cfg2 == cfg
  first, second = _flat(params), _flat(params2)
  assert first.keys() == second.keys()
  for k in first:
    assert first[k].dtype == second[k].dtype and np.array_equal(first[k], second[k]), k


def test_sharded_checkpoint_round_trip(checkpoints, tmp_path):
  path, model = checkpoints["llama"]
  cfg, params = models.load_hf(path)
  out = str(tmp_path / "sharded")
  models.save_hf(cfg, params, out, max_shard_bytes=40_000)
  files = sorted(os.listdir(out))
  assert "model.safetensors.index.json" in files and "model.safetensors" not in files
  assert sum(f.endswith(".safetensors") for f in files) > 2
  cfg2, params2 = models.load_hf(out)
  assert all(np.array_equal(a, b) for a, b in zip(_flat(params).values(), _flat(params2).values()))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
  tokens = _tokens(2)
  np.testing.assert_allclose(_hf_logits(reloaded, tokens), _hf_logits(model, tokens), atol=1e-5)


def test_save_hf_keeps_other_files_and_drops_stale_shards(checkpoints, tmp_path):
  path, _ = checkpoints["qwen2"]
  cfg, params = models.load_hf(path)
  out = tmp_path / "model"
  models.save_hf(cfg, params, str(out), max_shard_bytes=40_000)
  (out / "tokenizer.model").write_bytes(b"keep me")
  models.save_hf(cfg, params, str(out))  # now a single file: the old shards must go
  assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "tokenizer.model"]
  assert (out / "tokenizer.model").read_bytes() == b"keep me"
  assert not [f for f in os.listdir(tmp_path) if f.startswith(".")]  # no staging dir left


def test_save_hf_rejects_params_that_do_not_fit_the_config(checkpoints, tmp_path):
  path, _ = checkpoints["qwen3"]
  cfg, params = models.load_hf(path)
  bigger = dataclasses.replace(cfg, intermediate_size=cfg.intermediate_size + 8)
  with pytest.raises(
    ValueError,
    match=r"layers/mlp/gate_proj/kernel has shape \[2, 64, 96\], "
    r"expected \[2, 64, 104\]",
  ):
    models.save_hf(bigger, params, str(tmp_path / "out"))
  assert os.listdir(tmp_path) == []  # nothing half-written


def test_bfloat16_load_and_forward_close_to_float32(checkpoints, tmp_path):
  path, model = checkpoints["qwen3"]
  cfg32, params32 = models.load_hf(path)
  cfg16, params16 = models.load_hf(path, dtype=jnp.bfloat16)
  assert cfg16.param_dtype == "bfloat16"
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(params16))
  tokens = _tokens(3)
  ref = np.asarray(_forward(cfg32, params32, tokens))
  out16 = _forward(dataclasses.replace(cfg16, dtype="bfloat16"), params16, tokens)
  assert out16.dtype == jnp.float32
  err = np.abs(np.asarray(out16) - ref).max()
  assert np.isfinite(err) and err <= 0.02 * np.abs(ref).max() + 1e-2, err
  # bf16 export keeps bf16 on disk and in config.json.
  models.save_hf(cfg16, params16, str(tmp_path / "bf16"))
  with open(tmp_path / "bf16" / "config.json") as f:
    assert json.load(f)["torch_dtype"] == "bfloat16"
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(tmp_path / "bf16"))
  assert reloaded.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- config parsing


def test_config_reads_transformers4_and_transformers5_spellings():
  base = dict(
    model_type="llama",
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
  )
  scaling = {k: v for k, v in LLAMA3_ROPE.items() if k not in ("rope_type", "rope_theta")}
  v4 = dict(
    base, rope_theta=500000.0, torch_dtype="bfloat16", rope_scaling={"type": "llama3", **scaling}
  )
  v5 = dict(
    base,
    dtype="bfloat16",
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, **scaling},
  )
  cfg4, cfg5 = models.from_hf_dict(v4), models.from_hf_dict(v5)
  assert cfg4 == cfg5
  assert cfg4.rope_theta == 500000.0
  assert cfg4.rope_scaling == models.RopeScaling(8.0, 1.0, 4.0, 64)
  plain4 = models.from_hf_dict(dict(base, rope_theta=1e6, torch_dtype="float32"))
  plain5 = models.from_hf_dict(
    dict(base, dtype="float32", rope_parameters={"rope_type": "default", "rope_theta": 1e6})
  )
  assert plain4 == plain5 and plain4.rope_scaling is None and plain4.rope_theta == 1e6


def test_config_of_every_family_round_trips_through_to_hf_dict(checkpoints):
  for path, model in checkpoints.values():
    cfg = models.load_config(path)
    assert models.from_hf_dict(cfg.to_hf_dict()) == cfg
    # and transformers reads our config.json into the same architecture
    hf_cfg = transformers.AutoConfig.for_model(**cfg.to_hf_dict())
    assert type(hf_cfg) is type(model.config)


@pytest.mark.parametrize(
  "override, message",
  [
    (
      {"model_type": "mistral"},
      r"model_type 'mistral' is not supported; supported: qwen3, "
      r"qwen2, llama",
    ),
    (
      {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}},
      r"rope scaling type 'yarn' is not supported; supported: default, llama3",
    ),
    (
      {"rope_parameters": {"rope_type": "linear", "rope_theta": 1e4, "factor": 2.0}},
      r"rope scaling type 'linear' is not supported; supported: default, llama3",
    ),
    (
      {"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 128},
      r"sliding-window attention is not supported",
    ),
    (
      {"attention_bias": True},
      r"attention_bias=true is not supported for llama .*supported: attention_bias=false",
    ),
  ],
)
def test_config_rejects_unsupported_options_and_lists_supported(override, message):
  hf_dict = {
    **dict(
      model_type="llama",
      vocab_size=VOCAB,
      hidden_size=64,
      intermediate_size=96,
      num_hidden_layers=2,
      num_attention_heads=4,
    ),
    **override,
  }
  with pytest.raises(ValueError, match=message):
    models.from_hf_dict(hf_dict, where="some/config.json")


# ----------------------------------------------------------------------------- load_hf errors


def _copy(path, tmp_path, name="ckpt"):
  dst = tmp_path / name
  shutil.copytree(path, dst)
  return dst


def _rewrite_tensors(ckpt, edit):
  tensors = load_file(str(ckpt / "model.safetensors"))
  edit(tensors)
  save_file(tensors, str(ckpt / "model.safetensors"), metadata={"format": "pt"})


def test_load_hf_missing_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/nope: no such directory"):
    models.load_hf(str(tmp_path / "nope"))


def test_load_hf_missing_config(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  os.remove(ckpt / "config.json")
  with pytest.raises(FileNotFoundError, match=f"{ckpt}/config.json: no such file"):
    models.load_hf(str(ckpt))


def test_load_hf_no_weights(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  os.remove(ckpt / "model.safetensors")
  with pytest.raises(
    FileNotFoundError,
    match=f"{ckpt}: no weights found; expected model.safetensors or model.safetensors.index.json",
  ):
    models.load_hf(str(ckpt))


def test_load_hf_refuses_pickled_checkpoints_without_unpickling(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  os.remove(ckpt / "model.safetensors")
  # Not a valid pickle: if the loader tried to unpickle it, the error would be different.
  (ckpt / "pytorch_model.bin").write_bytes(b"\x80\x05 not a pickle")
  with pytest.raises(ValueError) as e:
    models.load_hf(str(ckpt))
  msg = str(e.value)
  assert str(ckpt) in msg and "pytorch_model.bin" in msg
  assert "unpickling runs arbitrary code" in msg
  assert "save_pretrained(out_dir, safe_serialization=True)" in msg


def test_load_hf_missing_tensor(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  _rewrite_tensors(ckpt, lambda t: t.pop("model.layers.1.self_attn.k_norm.weight"))
  with pytest.raises(
    ValueError,
    match=rf"{ckpt}: .*missing tensor\(s\): "
    r"model\.layers\.1\.self_attn\.k_norm\.weight",
  ):
    models.load_hf(str(ckpt))


def test_load_hf_unexpected_tensor(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["llama"][0], tmp_path)
  _rewrite_tensors(
    ckpt, lambda t: t.update({"model.layers.0.self_attn.q_proj.bias": np.zeros(64, np.float32)})
  )
  with pytest.raises(
    ValueError,
    match=rf"{ckpt}: .*unexpected tensor\(s\) for "
    r"model_type='llama'.*: "
    r"model\.layers\.0\.self_attn\.q_proj\.bias",
  ):
    models.load_hf(str(ckpt))


def test_load_hf_wrong_shape_names_both_shapes(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen2"][0], tmp_path)
  _rewrite_tensors(
    ckpt,
    lambda t: t.update({"model.layers.0.mlp.down_proj.weight": np.zeros((64, 80), np.float32)}),
  )
  with pytest.raises(
    ValueError,
    match=rf"{ckpt}: .*tensor 'model\.layers\.0\.mlp\.down_proj"
    r"\.weight' has shape \[64, 80\], expected \[64, 96\]",
  ):
    models.load_hf(str(ckpt))


def test_load_hf_corrupt_safetensors_header(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  data = (ckpt / "model.safetensors").read_bytes()
  (ckpt / "model.safetensors").write_bytes(data[:8] + b"{not json" + data[17:])
  with pytest.raises(
    ValueError, match=f"{ckpt}/model.safetensors: not a readable safetensors file"
  ):
    models.load_hf(str(ckpt))


def test_load_hf_index_pointing_to_a_missing_shard(checkpoints, tmp_path):
  path, _ = checkpoints["llama"]
  cfg, params = models.load_hf(path)
  out = tmp_path / "sharded"
  models.save_hf(cfg, params, str(out), max_shard_bytes=40_000)
  shard = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))[1]
  os.remove(out / shard)
  with pytest.raises(
    FileNotFoundError,
    match=rf"model\.safetensors\.index\.json: tensor '.*' is "
    rf"in {shard}, which does not exist",
  ):
    models.load_hf(str(out))


def test_load_hf_tied_checkpoint_with_an_equal_lm_head_loads(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  _rewrite_tensors(ckpt, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"]}))
  cfg, params = models.load_hf(str(ckpt))
  assert cfg.tie_word_embeddings and "lm_head" not in params


def test_load_hf_tied_checkpoint_with_a_different_lm_head_is_an_error(checkpoints, tmp_path):
  ckpt = _copy(checkpoints["qwen3"][0], tmp_path)
  _rewrite_tensors(
    ckpt, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"] + 1.0})
  )
  with pytest.raises(
    ValueError,
    match=rf"{ckpt}: config says tie_word_embeddings=true, but "
    "lm_head.weight differs from model.embed_tokens.weight",
  ):
    models.load_hf(str(ckpt))


def test_load_hf_rejects_unsupported_dtype(checkpoints):
  with pytest.raises(ValueError, match=r"dtype=.*float16.*expected float32 or bfloat16"):
    models.load_hf(checkpoints["qwen3"][0], dtype=jnp.float16)


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("family", list(FAMILIES))
def test_table_matches_model_params(family):
  cfg = config_lib.tiny_config(family)
  hf.check_table_matches_model(cfg)  # raises on drift


def test_partial_slices_read_only_what_the_shard_needs():
  """A shard's block is the same as slicing the full converted tensor, and the read covers
  only whole heads of the requested range."""
  entry = hf.TensorMap("w", ("w",), ((4, 6), (5,)), (2, 0, 1))  # HF [24, 5] -> ours [5, 4, 6]
  full = np.arange(24 * 5, dtype=np.float32).reshape(24, 5)
  reads = []

  def read(index):
    reads.append(index)
    return full[index]

  ours = entry.to_ours(full)
  index = [slice(1, 4), slice(2, 4), slice(3, 6)]
  block = hf._read_layer_block(entry, read, index)
  np.testing.assert_array_equal(block, ours[1:4, 2:4, 3:6])
  assert reads == [(slice(12, 24), slice(1, 4))]
  np.testing.assert_array_equal(entry.to_hf(ours), full)


# ----------------------------------------------------------------------------- attention


def _attention_inputs(t, s=None, seed=0):
  """Random q [2, t, 4, 16], k and v [2, 2, s, 16] and a kv mask with row 1 left-padded."""
  s = s or t
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(2, t, 4, 16)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(2, 2, s, 16)), jnp.float32) for _ in range(2))
  kv_mask = jnp.asarray(np.arange(s)[None] >= np.array([0, 37])[:, None])
  return q, k, v, kv_mask


def _real_rows(x):
  """Row 0 whole, row 1 past its 37 padding queries (whose output is never read)."""
  return np.asarray(x[0]), np.asarray(x[1, 37:])


def test_chunked_attention_equals_the_plain_one():
  """200 queries in blocks of 64: four query blocks, each over up to four key blocks with an
  online softmax (the causal edge, left padding and a ragged last block included), with the
  same gradients."""
  q, k, v, kv_mask = _attention_inputs(200)
  plain = functools.partial(models.attend, kernel="xla")
  chunked = functools.partial(models.attend, kernel="chunked", chunk=64)
  for got, want in zip(
    _real_rows(jax.jit(chunked)(q, k, v, kv_mask)), _real_rows(plain(q, k, v, kv_mask))
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  weight = kv_mask[:, :, None, None]  # padding queries carry no loss, as in training
  grads = [
    jax.jit(jax.grad(lambda q, k, v, f=f: (f(q, k, v, kv_mask) * weight).sum(), argnums=(0, 1, 2)))(
      q, k, v
    )
    for f in (plain, chunked)
  ]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_chunked_attention_of_queries_deep_in_the_cache():
  """Queries at slots [100, 230) of a 260-slot cache, as a prefill continuing a cache would."""
  q, k, v, kv_mask = _attention_inputs(130, 260, seed=1)
  want = models.attend(q, k, v, kv_mask, 100, kernel="xla")
  got = jax.jit(functools.partial(models.attend, kernel="chunked", chunk=64))(q, k, v, kv_mask, 100)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_splash_attention_equals_the_plain_one_in_interpret_mode():
  """The TPU kernel, run by the Pallas interpreter on any backend: causal, GQA, left padding
  as segment ids."""
  q, k, v, kv_mask = _attention_inputs(128)
  want = models.attend(q, k, v, kv_mask, kernel="xla")
  got = jax.jit(functools.partial(models.attend, kernel="splash_interpret"))(q, k, v, kv_mask)
  for got_rows, want_rows in zip(_real_rows(got), _real_rows(want)):
    np.testing.assert_allclose(got_rows, want_rows, rtol=1e-5, atol=1e-5)


def test_cudnn_call_through_xla_equals_the_chunked_path():
  """The GPU branch's exact call (`jax.nn.dot_product_attention`: BTNH layout, GQA, left
  padding as a [B, 1, T, S] segment mask, causal), with XLA's implementation in place of
  cuDNN's: the same outputs and gradients as the chunked path."""
  q, k, v, kv_mask = _attention_inputs(200)
  dot = functools.partial(models.attend, kernel="cudnn_xla")
  chunked = functools.partial(models.attend, kernel="chunked", chunk=64)
  for got, want in zip(
    _real_rows(jax.jit(dot)(q, k, v, kv_mask)), _real_rows(chunked(q, k, v, kv_mask))
  ):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # It is the call itself, not a fallback to the chunked path.
  assert "scan" not in str(jax.make_jaxpr(dot)(q, k, v, kv_mask))
  weight = kv_mask[:, :, None, None]
  grads = [
    jax.jit(jax.grad(lambda q, k, v, f=f: (f(q, k, v, kv_mask) * weight).sum(), argnums=(0, 1, 2)))(
      q, k, v
    )
    for f in (dot, chunked)
  ]
  for got, want in zip(*grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_cudnn_falls_back_where_it_does_not_fit():
  """float32, an odd length, or a decode step (T < S) take the XLA path, which runs on any
  backend; cuDNN itself would fail here on a CPU."""
  for t, s in ((200, 200), (199, 199), (1, 200)):
    q, k, v, kv_mask = _attention_inputs(t, s)
    want = models.attend(q, k, v, kv_mask, s - t, kernel="chunked", chunk=64)
    got = models.attend(q, k, v, kv_mask, s - t, kernel="cudnn", chunk=64)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  q, k, v, kv_mask = _attention_inputs(199)
  dot = functools.partial(models.attend, kernel="cudnn_xla", chunk=64)
  assert "scan" in str(jax.make_jaxpr(dot)(q, k, v, kv_mask))


def test_forward_with_each_kernel_gives_the_same_logits():
  """The whole model through each kernel: the hook is the only difference."""
  cfg = models.tiny_config("qwen3", num_layers=1)
  params = models.init_params(cfg, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(1, cfg.vocab_size, (2, 128))
  kv_mask = np.arange(128)[None] >= np.array([0, 37])[:, None]
  run = jax.jit(models.forward, static_argnums=0, static_argnames="kernel")
  want = run(cfg, params, tokens, kv_mask=kv_mask, kernel="xla")
  for kernel in ("chunked", "splash_interpret", "cudnn_xla"):
    got = run(cfg, params, tokens, kv_mask=kv_mask, kernel=kernel)
    for got_rows, want_rows in zip(_real_rows(got), _real_rows(want)):
      np.testing.assert_allclose(got_rows, want_rows, rtol=1e-4, atol=1e-4, err_msg=kernel)


def test_auto_kernel_follows_the_backend():
  assert models.transformer.resolve_kernel("auto") == (
    {"tpu": "splash", "gpu": "cudnn"}.get(jax.default_backend(), "chunked")
  )
  # A mesh's devices decide, as when a program is compiled ahead of time for another backend.
  for platform, kernel in (("tpu", "splash"), ("gpu", "cudnn"), ("cpu", "chunked")):
    mesh = types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)]))
    assert models.transformer.resolve_kernel("auto", mesh) == kernel
  with pytest.raises(ValueError, match="attention kernel 'flash'"):
    models.forward(models.tiny_config("qwen3"), None, np.ones((1, 2)), kernel="flash")
