"""The run's base model lands on the mesh as the config's sharding rules say, whether it is a
GGUF file or an HF directory (one loader for both: models.load_pretrained)."""

import jax
import ml_collections
import numpy as np
import pytest

from rzero_jax import models, sharding
from rzero_jax.rzero import loop

gguf_tests = pytest.importorskip("tests.test_gguf")

# Not the defaults: the MLP and vocabulary whole, embeddings over (fsdp, tensor).
RULES = sharding.rules_from_config({"mlp": None, "vocab": None, "embed": ("fsdp", "tensor")})


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
  torch = pytest.importorskip("torch")
  import transformers

  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(
    transformers.LlamaConfig(
      vocab_size=64,
      hidden_size=64,
      intermediate_size=128,
      num_hidden_layers=2,
      num_attention_heads=4,
      num_key_value_heads=2,
      max_position_embeddings=128,
      tie_word_embeddings=False,
    )
  ).eval()
  root = tmp_path_factory.mktemp("base")
  model.save_pretrained(str(root / "hf"))
  gguf_tests._write_tiny_llama_gguf(model, str(root / "tiny.gguf"))
  return {"hf": str(root / "hf"), "gguf": str(root / "tiny.gguf")}


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_base_model_follows_the_configs_rules(checkpoints, kind):
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  model_cfg = ml_collections.ConfigDict(dict(dtype="float32", param_dtype="float32", remat="none"))
  cfg, params = loop.load_base_model(checkpoints[kind], model_cfg, mesh, RULES)
  want = models.param_shardings(cfg, mesh, RULES)
  assert jax.tree.map(lambda x: x.sharding.spec, params) == jax.tree.map(lambda s: s.spec, want)
  reference = models.load_hf(checkpoints["hf"])[1]
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reference)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
