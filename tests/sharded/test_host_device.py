"""The host/device boundary (rzero_jax.multihost) on 8 virtual CPU devices, and a scan of the
library for fetches that bypass it.

With one process every array is addressable, so these tests check values and shardings; the
multi-process behaviour (all-gathers, broadcasts) is exercised by tests/multihost.
"""

import ast
import os

import jax
import numpy as np
import pytest

from rzero_jax import models, multihost, sharding
from rzero_jax.rl import learner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MESH = {"data": 2, "fsdp": 2, "tensor": 2}


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh(MESH)


def _host_batch(rows=8, length=12, seed=0):
  rng = np.random.default_rng(seed)
  return {
    "tokens": rng.integers(0, 100, (rows, length)).astype(np.int32),
    "kv_mask": rng.random((rows, length)) > 0.2,
    "advantages": rng.standard_normal(rows).astype(np.float32),
  }


def test_to_global_splits_rows_and_to_host_gathers_them_back(mesh):
  batch = _host_batch()
  shard = learner.batch_sharding(mesh)
  placed = multihost.to_global(batch, shard)
  for key, x in placed.items():
    assert isinstance(x, jax.Array) and x.sharding == shard, key
    # rows over data x fsdp = 4 ways, the rest whole (tensor replicates)
    assert x.addressable_shards[0].data.shape == (2,) + batch[key].shape[1:], key
  back = multihost.to_host(placed)
  for key in batch:
    assert isinstance(back[key], np.ndarray)
    assert back[key].dtype == batch[key].dtype and np.array_equal(back[key], batch[key]), key


def test_to_host_of_sharded_params_matches_the_values(mesh):
  cfg = models.tiny_config("qwen3", num_kv_heads=2)
  params = models.init_params(cfg, jax.random.key(0), mesh=mesh)
  single = models.init_params(cfg, jax.random.key(0))
  got = multihost.to_host(params)
  for g, w, p in zip(jax.tree.leaves(got), jax.tree.leaves(single), jax.tree.leaves(params)):
    assert isinstance(g, np.ndarray) and g.shape == p.shape
    np.testing.assert_array_equal(g, np.asarray(w))


def test_to_host_of_a_replicated_scalar(mesh):
  x = jax.device_put(np.float32(2.5), sharding.replicated(mesh))
  assert multihost.to_host({"loss": x})["loss"] == np.float32(2.5)


def test_offload_keeps_sharding_and_survives_donation(mesh):
  cfg = models.tiny_config("qwen3", num_kv_heads=2)
  params = models.init_params(cfg, jax.random.key(1), mesh=mesh)
  want = multihost.to_host(params)
  off = multihost.offload(params)
  for o, p in zip(jax.tree.leaves(off), jax.tree.leaves(params)):
    assert o.sharding.spec == p.sharding.spec
    if multihost.has_pinned_host():
      assert o.sharding.memory_kind == "pinned_host"
  # Donating the originals (as a train step does) must not touch the offloaded copy.
  jax.jit(lambda t: jax.tree.map(lambda x: x * 0, t), donate_argnums=0)(params)
  back = multihost.onload(off)
  for b, p, w in zip(jax.tree.leaves(back), jax.tree.leaves(off), jax.tree.leaves(want)):
    assert b.sharding.spec == p.sharding.spec and b.sharding.memory_kind == "device"
    np.testing.assert_array_equal(multihost.to_host(b), w)


def test_agreement_helpers_are_identities_in_one_process():
  obj = {"records": [{"question": "1+1", "label": "2"}], "stats": (1, 2.5, None)}
  assert multihost.agree(obj) == obj
  assert multihost.any_process(True) and not multihost.any_process(False)
  multihost.barrier("one process: returns at once")


# ----------------------------------------------------------------------------- the scan

# Host-side functions whose results are plain numpy (or unsharded), fine to wrap in np.asarray.
_HOST_CALLEES = {"dequantize", "grpo.group_advantages", "multihost.agree", "multihost.to_host"}
_FETCHES = ("device_get", "process_allgather", "addressable_data", "global_array_to_host_local")


def _library_files():
  for top in ("rzero_jax", "launch"):
    for root, _, files in os.walk(os.path.join(REPO, top)):
      for name in files:
        if name.endswith(".py"):
          yield os.path.join(root, name)


def test_nothing_outside_the_helper_fetches_device_arrays():
  offenders = []
  for path in _library_files():
    if path.endswith(os.path.join("rzero_jax", "multihost.py")):
      continue
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
      where = f"{os.path.relpath(path, REPO)}:{getattr(node, 'lineno', '?')}"
      if isinstance(node, ast.Attribute) and node.attr in _FETCHES:
        offenders.append(f"{where}: {ast.unparse(node)}")
      if isinstance(node, ast.Call) and ast.unparse(node.func) in ("np.asarray", "np.array"):
        arg = node.args[0] if node.args else None
        # np.asarray(some_call(...)) is how a jitted result gets fetched by hand.
        if isinstance(arg, ast.Call) and ast.unparse(arg.func) not in _HOST_CALLEES:
          offenders.append(f"{where}: {ast.unparse(node)[:80]}")
  assert not offenders, (
    "fetch device arrays through rzero_jax.multihost.to_host, not by hand:\n" + "\n".join(offenders)
  )


def test_the_scan_catches_the_old_fetches(tmp_path):
  # The patterns this scan exists for, as they stood before the helper.
  bad = (
    "out = jax.device_get((state['tokens'], state['lengths']))\n"
    "mb['old_logp'] = np.asarray(role.logprobs(params, tokens, mask))\n"
  )
  tree = ast.parse(bad)
  hits = [
    n
    for n in ast.walk(tree)
    if (isinstance(n, ast.Attribute) and n.attr in _FETCHES)
    or (
      isinstance(n, ast.Call)
      and ast.unparse(n.func) == "np.asarray"
      and isinstance(n.args[0], ast.Call)
      and ast.unparse(n.args[0].func) not in _HOST_CALLEES
    )
  ]
  assert len(hits) == 2
