"""The sampler under a mesh of 8 virtual CPU devices gives the unsharded tokens."""

import jax
import numpy as np
import pytest

from rzero_jax import models, sampling, sharding

PROMPTS = [[5, 17, 42, 9, 77], [3] * 3 + list(range(20, 31)), list(range(100, 120))]


@pytest.fixture(scope="module")
def tiny():
  cfg = models.tiny_config("qwen3")
  params = models.init_params(cfg, jax.random.key(1))
  # Spread the logits so greedy choices are not decided by rounding noise.
  params["final_norm"]["scale"] = params["final_norm"]["scale"] * 5.0
  return cfg, params


@pytest.fixture(scope="module")
def big_vocab():
  """A vocabulary large enough for the sampler's rejection route to top-k and top-p."""
  cfg = models.tiny_config("qwen3", vocab_size=sampling.REJECTION_MIN_VOCAB)
  params = models.init_params(cfg, jax.random.key(1))
  params["final_norm"]["scale"] = params["final_norm"]["scale"] * 5.0
  return cfg, params


@pytest.mark.parametrize(
  "shape",
  [
    {"data": 2, "fsdp": 2, "tensor": 2},
    {"data": 1, "fsdp": 2, "tensor": 4},  # 2 kv heads on tensor=4: kv stays replicated
  ],
)
def test_sharded_greedy_equals_unsharded(tiny, shape):
  cfg, params = tiny
  mesh = sharding.make_mesh(shape)
  # 40 new tokens: two decode phases, so the cache also grows under the mesh.
  kw = dict(max_new_tokens=40, temperature=0.0, n=2)
  expected = sampling.generate(cfg, params, PROMPTS, **kw)
  out = sampling.generate(cfg, params, PROMPTS, mesh=mesh, **kw)
  assert out.tokens == expected.tokens
  assert out.finish_reasons == expected.finish_reasons
  np.testing.assert_allclose(
    np.concatenate(out.logprobs), np.concatenate(expected.logprobs), atol=1e-4
  )


@pytest.mark.parametrize(
  "model,rule",
  [("tiny", dict(top_p=0.9)), ("big_vocab", dict(top_p=0.9)), ("big_vocab", dict(top_k=40))],
)
def test_sharded_sampling_equals_unsharded(request, model, rule):
  """Random bits do not depend on the sharding (threefry is partitionable), so sampled
  tokens agree too, top-p and stop tokens included; big_vocab draws by rejection."""
  cfg, params = request.getfixturevalue(model)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  kw = dict(max_new_tokens=12, temperature=1.0, n=2, seed=4, stop_token_ids=(7,), **rule)
  expected = sampling.generate(cfg, params, PROMPTS, **kw)
  out = sampling.generate(cfg, params, PROMPTS, mesh=mesh, **kw)
  assert out.tokens == expected.tokens
  assert out.finish_reasons == expected.finish_reasons


def test_already_placed_params(tiny):
  cfg, params = tiny
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  placed = jax.device_put(params, models.param_shardings(cfg, mesh))
  out = sampling.generate(cfg, placed, PROMPTS, max_new_tokens=12, temperature=0.0, n=2, mesh=mesh)
  ref = sampling.generate(cfg, params, PROMPTS, max_new_tokens=12, temperature=0.0, n=2)
  assert out.tokens == ref.tokens


def test_peak_memory_is_per_device_under_a_mesh(tiny):
  """Rows split over data x fsdp = 4 devices: each holds about a quarter of the caches, which
  dominate at this size (640 rows x 96 new tokens, 40 MiB of final cache unsharded)."""
  cfg, params = tiny
  prompts = [[1 + (i % 200)] * 24 for i in range(64)]
  kw = dict(max_new_tokens=96, n=10)
  whole = sampling.peak_memory_bytes(cfg, params, prompts, **kw)
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  per_device = sampling.peak_memory_bytes(cfg, params, prompts, mesh=mesh, **kw)
  assert sampling.kv_cache_bytes(cfg, 640, 32 + 96) <= whole
  assert per_device < whole / 3
