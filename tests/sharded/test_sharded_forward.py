"""Sharded forward and sharded checkpoint loading on 8 virtual CPU devices (2 data, 2 fsdp,
2 tensor)."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rzero_jax import models, sharding
from rzero_jax.models import hf

FAMILIES = ("qwen3", "qwen2", "llama")


@pytest.fixture(scope="module")
def mesh():
  mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  return mesh


def _config(family):
  # Every sharded dimension (batch 4, embed 64, heads 4, kv heads 2, mlp 128, vocab 256) divides
  # its mesh axes, so nothing silently falls back to replication.
  return models.tiny_config(
    family, hidden_size=64, num_heads=4, num_kv_heads=2, intermediate_size=128, vocab_size=256
  )


def _host_params(cfg, seed):
  """Random params made on the host: checkpoint tests need values, not a compiled init."""
  rng = np.random.RandomState(seed)
  return jax.tree.map(
    lambda a: (rng.standard_normal(a.shape) * 0.05).astype(a.dtype), models.abstract_params(cfg)
  )


def _inputs():
  rng = np.random.RandomState(0)
  tokens = rng.randint(0, 256, (4, 16)).astype(np.int32)
  mask = np.ones((4, 16), bool)
  mask[1, :5] = False  # left-padded rows
  mask[3, :11] = False
  return tokens, mask


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_forward_equals_single_device(mesh, family):
  cfg = _config(family)
  params = models.init_params(cfg, jax.random.key(1))
  tokens, mask = _inputs()
  single = np.asarray(jax.jit(functools.partial(models.forward, cfg))(params, tokens, kv_mask=mask))

  sharded_params = jax.device_put(params, models.param_shardings(cfg, mesh))
  batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
  sharded_forward = jax.jit(functools.partial(models.forward, cfg, mesh=mesh))
  out = sharded_forward(
    sharded_params, jax.device_put(tokens, batch), kv_mask=jax.device_put(mask, batch)
  )
  assert len(out.sharding.device_set) == 8
  np.testing.assert_allclose(np.asarray(out), single, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernel", ["splash_interpret", "cudnn_xla"])
@pytest.mark.parametrize("kv_heads", [2, 1])
def test_sharded_kernel_attention_equals_single_device(mesh, kv_heads, kernel):
  """The TPU kernel (interpreted) and the GPU's cuDNN call (through XLA) run per shard under
  the mesh: rows over data x fsdp, heads over tensor. With one kv head, which tensor cannot
  split, each query head gets its keys."""
  cfg = models.tiny_config("qwen3", num_layers=1, num_kv_heads=kv_heads)
  params = models.init_params(cfg, jax.random.key(2))
  rng = np.random.RandomState(1)
  tokens = rng.randint(0, 256, (4, 128)).astype(np.int32)
  mask = np.arange(128)[None] >= np.array([0, 5, 40, 0])[:, None]
  single = np.asarray(
    jax.jit(functools.partial(models.forward, cfg, kernel="xla"))(params, tokens, kv_mask=mask)
  )
  sharded_params = jax.device_put(params, models.param_shardings(cfg, mesh))
  batch = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(("batch", "length")))
  out = jax.jit(functools.partial(models.forward, cfg, mesh=mesh, kernel=kernel))(
    sharded_params, jax.device_put(tokens, batch), kv_mask=jax.device_put(mask, batch)
  )
  for row, pad in enumerate((0, 5, 40, 0)):  # padding queries' outputs are never read
    np.testing.assert_allclose(np.asarray(out)[row, pad:], single[row, pad:], rtol=0, atol=1e-4)


def test_sharded_chunked_attention_equals_single_device(mesh):
  rng = np.random.default_rng(0)
  q = rng.normal(size=(4, 200, 4, 16)).astype(np.float32)
  k, v = (rng.normal(size=(4, 2, 200, 16)).astype(np.float32) for _ in range(2))
  mask = np.arange(200)[None] >= np.array([0, 5, 40, 0])[:, None]
  want = models.attend(q, k, v, mask, kernel="xla")
  spec = lambda *axes: jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(axes))
  args = [
    jax.device_put(q, spec("batch", None, "heads")),
    *(jax.device_put(x, spec("batch", "kv_heads")) for x in (k, v)),
    jax.device_put(mask, spec("batch")),
  ]
  got = jax.jit(functools.partial(models.attend, kernel="chunked", chunk=64, mesh=mesh))(*args)
  for row, pad in enumerate((0, 5, 40, 0)):
    np.testing.assert_allclose(
      np.asarray(got)[row, pad:], np.asarray(want)[row, pad:], rtol=0, atol=1e-5
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_load_hf_places_each_tensor_in_its_target_sharding(mesh, family, tmp_path):
  cfg = _config(family)
  models.save_hf(cfg, _host_params(cfg, 2), str(tmp_path))
  _, reference = models.load_hf(str(tmp_path))
  cfg2, params = models.load_hf(str(tmp_path), mesh=mesh)
  assert cfg2 == cfg
  expected = models.param_shardings(cfg, mesh)
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  flat_expected = jax.tree.leaves(expected)
  flat_reference = jax.tree.leaves(reference)
  assert len(flat_params) == len(flat_expected) == len(flat_reference)
  for (path, leaf), want, ref in zip(flat_params, flat_expected, flat_reference):
    assert leaf.sharding.is_equivalent_to(want, leaf.ndim), jax.tree_util.keystr(path)
    assert np.array_equal(np.asarray(leaf), np.asarray(ref)), jax.tree_util.keystr(path)
  # The big weights really are split (not replicated everywhere).
  q = params["layers"]["attn"]["q_proj"]["kernel"]
  assert q.sharding.spec[1:3] == ("fsdp", "tensor")
  assert q.addressable_shards[0].data.shape == (cfg.num_layers, 32, 2, cfg.head_dim)
  # Exporting sharded params writes the same checkpoint as the single-device ones.
  models.save_hf(cfg, params, str(tmp_path / "again"))
  assert (tmp_path / "again" / "model.safetensors").read_bytes() == (
    tmp_path / "model.safetensors"
  ).read_bytes()


def test_load_hf_reads_only_the_slice_each_shard_needs(mesh, tmp_path):
  cfg = _config("qwen2")
  models.save_hf(cfg, _host_params(cfg, 3), str(tmp_path))
  reads = []

  class Recording(hf.SafetensorsSource):
    def read(self, name, index):
      out = super().read(name, index)
      reads.append((name, out.shape))
      return out

  with contextlib.ExitStack() as stack:
    params = hf.params_from_source(cfg, Recording(str(tmp_path), stack), mesh)
  # q_proj.weight is HF [H*Dh, D] = [64, 64]; its shards split heads over `tensor` and D over
  # `fsdp`, so every read is a quarter of the tensor.
  q_reads = [shape for name, shape in reads if name == "model.layers.0.self_attn.q_proj.weight"]
  assert q_reads and all(shape == (32, 32) for shape in q_reads), q_reads
  assert params["layers"]["attn"]["q_proj"]["bias"].sharding.spec[:2] == (None, "tensor")


def test_load_hf_bfloat16_on_mesh(mesh, tmp_path):
  cfg = _config("llama")
  models.save_hf(cfg, _host_params(cfg, 4), str(tmp_path))
  cfg16, params = models.load_hf(str(tmp_path), dtype=jnp.bfloat16, mesh=mesh)
  assert cfg16.param_dtype == "bfloat16"
  assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
