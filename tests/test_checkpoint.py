"""Checkpoints: bit-exact round trips, keep-last-N, sharded targets, and crash tolerance."""

import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath

from rzero_jax import checkpoint as ckpt_lib
from rzero_jax.checkpoint import CheckpointManager
from tests import conftest

# A deliberately failed Orbax read leaves an asyncio callback behind that fires, at some later
# garbage collection, after its event loop has closed; that noise is not a test result.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_state(seed: int = 0):
  """Params, an AdamW state that has taken a step (non-zero moments), and rng keys."""
  return _make_state(jnp.int32(seed))


@jax.jit  # one compilation instead of dozens of eager op compilations
def _make_state(seed):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  params = {
    "embed": jax.random.normal(k1, (16, 8)),
    "layers": {"w": jax.random.normal(k2, (3, 8, 8)), "b": jnp.zeros((3, 8))},
    "scale": jnp.ones((8,), jnp.bfloat16),
  }
  opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3, weight_decay=0.01))
  opt_state = opt.init(params)
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  _, opt_state = opt.update(grads, opt_state, params)
  return {
    "params": params,
    "opt_state": opt_state,
    "rng": k3,
    "legacy_rng": jax.random.key_data(jax.random.key(seed)),
  }


def assert_bit_identical(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      assert y.dtype == x.dtype
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert np.asarray(x).tobytes() == np.asarray(y).tobytes()


def save_steps(directory, steps, max_to_keep=5):
  with CheckpointManager(directory, max_to_keep=max_to_keep) as ckpt:
    for step in steps:
      ckpt.save(step, make_state(step), {"step": step, "note": "test"})


# ---------------------------------------------------------------------------------------------
def test_round_trip_bit_exact_with_structure(tmp_path):
  state = make_state(7)
  with CheckpointManager(tmp_path) as ckpt:
    ckpt.save(3, state, {"iteration": 1, "phase": "solver"})
    ckpt.wait()
    assert ckpt.latest_step() == 3
    step, items, metadata = ckpt.restore(target=ckpt_lib.abstract_like(state))
  assert step == 3 and metadata == {"iteration": 1, "phase": "solver"}
  assert_bit_identical(items, state)
  # optax's namedtuples come back as namedtuples, so the optimizer accepts them.
  adam_state = items["opt_state"][1][0]
  assert type(adam_state).__name__ == "ScaleByAdamState" and int(adam_state.count) == 1


def test_relative_directory(tmp_path, monkeypatch):
  # The README's workdir is relative; Orbax's own writer only takes absolute paths.
  monkeypatch.chdir(tmp_path)
  state = make_state(2)
  with CheckpointManager(os.path.join("runs", "ckpt")) as ckpt:
    ckpt.save(1, state)
    ckpt.wait()
    assert ckpt.directory == epath.Path(tmp_path / "runs" / "ckpt")
  monkeypatch.chdir("/")
  with CheckpointManager(tmp_path / "runs" / "ckpt") as ckpt:
    assert_bit_identical(ckpt.restore(target=ckpt_lib.abstract_like(state)).items, state)


def test_restore_subset_and_without_target(tmp_path):
  state = make_state(1)
  with CheckpointManager(tmp_path) as ckpt:
    ckpt.save(0, state)
    only_params = ckpt.restore(target={"params": ckpt_lib.abstract_like(state["params"])})
    assert set(only_params.items) == {"params"} and only_params.metadata == {}
    assert_bit_identical(only_params.items["params"], state["params"])
    as_saved = ckpt.restore(target={"params": None}).items["params"]
    assert_bit_identical(as_saved, state["params"])  # plain dicts already
    assert ckpt.restore().items == {}


def test_keep_last_n(tmp_path):
  save_steps(tmp_path, range(5), max_to_keep=2)
  with CheckpointManager(tmp_path, max_to_keep=2) as ckpt:
    assert ckpt.all_steps() == [3, 4]
  assert sorted(p for p in os.listdir(tmp_path) if p.isdigit()) == ["3", "4"]


def test_restore_into_named_sharding(tmp_path):
  state = make_state(2)["params"]
  mesh = jax.make_mesh((1, 1), ("fsdp", "tensor"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
  specs = {
    "embed": jax.P("tensor", "fsdp"),
    "layers": {"w": jax.P(None, "fsdp", "tensor"), "b": jax.P()},
    "scale": jax.P("tensor"),
  }
  target = jax.tree.map(
    lambda x, spec: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.NamedSharding(mesh, spec)),
    state,
    specs,
  )
  with CheckpointManager(tmp_path) as ckpt:
    ckpt.save(0, {"params": state})
    restored = ckpt.restore(target={"params": target}).items["params"]
  assert_bit_identical(restored, state)
  for leaf, want in zip(jax.tree.leaves(restored), jax.tree.leaves(target)):
    assert leaf.sharding == want.sharding


def test_bad_arguments_are_clear_errors(tmp_path):
  state = make_state(0)
  with CheckpointManager(tmp_path) as ckpt:
    with pytest.raises(ValueError, match="JSON"):
      ckpt.save(0, state, {"bad": object()})
    with pytest.raises(ValueError, match="reserved"):
      ckpt.save(0, {"metadata": state["params"]})
    with pytest.raises(FileNotFoundError, match="no committed checkpoint"):
      ckpt.restore(target={"params": ckpt_lib.abstract_like(state["params"])})
    ckpt.save(1, state)
    with pytest.raises(ValueError, match="not after"):
      ckpt.save(1, state)
    wrong = dict(
      ckpt_lib.abstract_like(state["params"]), embed=jax.ShapeDtypeStruct((17, 8), jnp.float32)
    )
    with pytest.raises(ValueError, match="does not match"):
      ckpt.restore(target={"params": wrong})
    with pytest.raises(ValueError, match="no item"):
      ckpt.restore(target={"value_head": wrong})
    with pytest.raises(FileNotFoundError, match="no committed step 5"):
      ckpt.restore(step=5)
  assert os.listdir(tmp_path) == ["1"] or sorted(os.listdir(tmp_path)) == ["1"]
  with pytest.raises(ValueError, match="max_to_keep"):
    CheckpointManager(tmp_path, max_to_keep=0)


# ---------------------------------------------------------------------------------------------
# Crash tolerance
# ---------------------------------------------------------------------------------------------
def uncommit(step_dir):
  """Turns a committed step dir back into what Orbax has on disk just before it commits."""
  for root, _, files in os.walk(step_dir):
    if "commit_success.txt" in files:
      os.remove(os.path.join(root, "commit_success.txt"))
  meta_file = os.path.join(step_dir, "_CHECKPOINT_METADATA")
  meta = json.load(open(meta_file))
  meta["commit_timestamp_nsecs"] = None
  json.dump(meta, open(meta_file, "w"))


def restore_latest(directory, seed_of_step=lambda s: s):
  with CheckpointManager(directory) as ckpt:
    restored = ckpt.restore(target=ckpt_lib.abstract_like(make_state(0)))
    assert_bit_identical(restored.items, make_state(seed_of_step(restored.step)))
    return restored.step, ckpt.all_steps()


def test_interrupted_tmp_dir_is_ignored(tmp_path, caplog):
  save_steps(tmp_path, [0, 1, 2])
  uncommit(tmp_path / "2")
  os.rename(tmp_path / "2", tmp_path / "2.orbax-checkpoint-tmp")
  with caplog.at_level(logging.WARNING, logger="rzero_jax.checkpoint"):
    step, steps = restore_latest(tmp_path)
  assert step == 1 and steps == [0, 1]
  assert "interrupted" in caplog.text
  assert not any("orbax-checkpoint-tmp" in p for p in os.listdir(tmp_path))  # cleaned up
  save_steps(tmp_path, [2])  # and the step can be written again
  assert restore_latest(tmp_path)[0] == 2


def test_step_dir_without_commit_marker_is_ignored(tmp_path, caplog):
  save_steps(tmp_path, [0, 1, 2])
  uncommit(tmp_path / "2")
  with caplog.at_level(logging.WARNING, logger="rzero_jax.checkpoint"):
    step, steps = restore_latest(tmp_path)
  assert step == 1 and steps == [0, 1]
  assert "no commit marker" in caplog.text
  assert any(p.startswith("2.corrupt-") for p in os.listdir(tmp_path))


def _array_data_file(item_dir):
  """The file that restore reads array bytes from: the largest in the merged OCDBT `d/`.

  (Orbax also leaves per-process copies under `ocdbt.process_*/d/`, which restore does not
  read, so truncating those is harmless and not what this test is about.)
  """
  data_dir = os.path.join(item_dir, "d")
  files = [os.path.join(data_dir, f) for f in os.listdir(data_dir)]
  assert files, f"no OCDBT data files in {data_dir}; has Orbax's layout changed?"
  return max(files, key=os.path.getsize)


@pytest.mark.parametrize("victim", ["array_data", "_METADATA", "metadata_json"])
def test_truncated_latest_step_falls_back(tmp_path, caplog, victim):
  save_steps(tmp_path, [0, 1, 2])
  step_dir = str(tmp_path / "2")
  if victim == "array_data":
    path = _array_data_file(step_dir + "/params")
  elif victim == "_METADATA":
    path = step_dir + "/opt_state/_METADATA"
  else:
    path = step_dir + "/metadata/metadata"
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)
  with caplog.at_level(logging.WARNING, logger="rzero_jax.checkpoint"):
    step, steps = restore_latest(tmp_path)
  assert step == 1 and steps == [0, 1]
  assert "unreadable" in caplog.text
  save_steps(tmp_path, [2])  # the broken step was set aside, so it can be written again
  assert restore_latest(tmp_path)[0] == 2


def test_explicit_broken_step_raises_and_bad_target_costs_nothing(tmp_path):
  save_steps(tmp_path, [0, 1])
  path = _array_data_file(str(tmp_path / "1") + "/params")
  with open(path, "r+b") as f:
    f.truncate(10)
  with CheckpointManager(tmp_path) as ckpt:
    target = ckpt_lib.abstract_like(make_state(0))
    with pytest.raises(ckpt_lib.CorruptCheckpointError):
      ckpt.restore(step=1, target=target)
    assert ckpt.all_steps() == [0, 1]  # an explicit request never sets a step aside
    # A target no step can satisfy must not make good steps look corrupt.
    with pytest.raises(ValueError, match="does not match"):
      ckpt.restore(target={"params": {"embed": jax.ShapeDtypeStruct((2,), jnp.float32)}})
    assert ckpt.all_steps() == [0, 1]


# ---------------------------------------------------------------------------------------------
# New processes
# ---------------------------------------------------------------------------------------------
def run_python(code: str, timeout=120, n_devices=1):
  env = dict(
    os.environ,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
    XLA_FLAGS=conftest.xla_flags(n_devices),
  )
  return subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    env=env,
    cwd=REPO,
    capture_output=True,
    text=True,
    timeout=timeout,
  )


def test_restore_in_new_process_is_bit_identical(tmp_path):
  state = make_state(11)
  with CheckpointManager(tmp_path / "ckpt") as ckpt:
    ckpt.save(4, state, {"iteration": 2})
  out = tmp_path / "restored.npz"
  result = run_python(f"""
        import jax, numpy as np, sys
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from test_checkpoint import make_state
        from rzero_jax import checkpoint as c
        with c.CheckpointManager({str(tmp_path / 'ckpt')!r}) as ckpt:
            r = ckpt.restore(target=c.abstract_like(make_state(0)))
        assert r.step == 4 and r.metadata == {{"iteration": 2}}, r
        leaves = [jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                  else x for x in jax.tree.leaves(r.items)]
        np.savez({str(out)!r}, *[np.asarray(x).reshape(-1).view(np.uint8) for x in leaves])
    """)
  assert result.returncode == 0, result.stderr[-3000:]
  stored = np.load(out)
  expected = [
    jax.random.key_data(x) if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x
    for x in jax.tree.leaves(state)
  ]
  assert len(stored.files) == len(expected)
  for i, x in enumerate(expected):
    assert stored[f"arr_{i}"].tobytes() == np.asarray(x).tobytes()


def test_reshard_across_processes_with_8_devices(tmp_path):
  # Saved on 1 device here; restored into an fsdp x tensor mesh of 8 devices in a new process,
  # which saves the sharded arrays again; read back here on 1 device, bit for bit.
  state = make_state(5)
  with CheckpointManager(tmp_path) as ckpt:
    ckpt.save(0, state)
  result = run_python(
    f"""
        import jax, sys
        sys.path.insert(0, {os.path.join(REPO, 'tests')!r})
        from test_checkpoint import make_state, assert_bit_identical
        from rzero_jax import checkpoint as c
        assert jax.device_count() == 8
        mesh = jax.make_mesh((2, 4), ("fsdp", "tensor"),
                             axis_types=(jax.sharding.AxisType.Auto,) * 2)
        def sharding(x):
            spec = [None] * x.ndim
            if x.ndim >= 2 and x.shape[-2] % 2 == 0 and x.shape[-1] % 4 == 0:
                spec[-2:] = ["fsdp", "tensor"]
            return jax.NamedSharding(mesh, jax.P(*spec))
        target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                                             sharding=sharding(x)), make_state(0))
        with c.CheckpointManager({str(tmp_path)!r}) as ckpt:
            r = ckpt.restore(target=target)
            assert_bit_identical(r.items, make_state(5))
            n_sharded = 0
            for leaf, want in zip(jax.tree.leaves(r.items), jax.tree.leaves(target)):
                assert leaf.sharding == want.sharding, (leaf.sharding, want.sharding)
                n_sharded += len(leaf.sharding.device_set) == 8 and not leaf.is_fully_replicated
            assert n_sharded >= 3, n_sharded
            ckpt.save(1, r.items, {{"devices": jax.device_count()}})
    """,
    n_devices=8,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  with CheckpointManager(tmp_path) as ckpt:
    restored = ckpt.restore(target=ckpt_lib.abstract_like(state))
  assert restored.step == 1 and restored.metadata == {"devices": 8}
  assert_bit_identical(restored.items, state)


def test_process_killed_mid_save_resumes_from_previous_step(tmp_path, caplog):
  # A real crash: the child starts an async save of 64 MB and dies before it completes.
  result = run_python(f"""
        import os, jax.numpy as jnp
        from rzero_jax.checkpoint import CheckpointManager
        ckpt = CheckpointManager({str(tmp_path)!r})
        ckpt.save(0, {{"params": {{"w": jnp.full((64,), 1.0)}}}})
        ckpt.wait()
        ckpt.save(1, {{"params": {{"w": jnp.full((64,), 2.0)}},
                      "big": {{"x": jnp.ones((16, 1024, 1024), jnp.float32)}}}})
        os._exit(0)
    """)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "1.orbax-checkpoint-tmp" in os.listdir(tmp_path), "the save was not interrupted"
  with (
    caplog.at_level(logging.WARNING, logger="rzero_jax.checkpoint"),
    CheckpointManager(tmp_path) as ckpt,
  ):
    assert "interrupted" in caplog.text
    assert ckpt.latest_step() == 0
    restored = ckpt.restore(target={"params": {"w": jax.ShapeDtypeStruct((64,), jnp.float32)}})
  assert restored.step == 0 and float(restored.items["params"]["w"][0]) == 1.0


# ------------------------------------------------------------------ integrity (issue 29: 4, 5, 8)


def test_an_item_whose_contents_changed_falls_back_to_the_previous_step(tmp_path, caplog):
  # Contents that still decode but are not what was saved (here: another step's params
  # copied in, as a botched copy or sync leaves; flipped bytes in raw chunks read the same
  # way) loaded silently before, as NaN and 1e38 weights in the audit. The checksum in the
  # metadata catches them.
  save_steps(tmp_path, [0, 1, 2])
  shutil.rmtree(tmp_path / "2" / "params")
  shutil.copytree(tmp_path / "1" / "params", tmp_path / "2" / "params")
  with caplog.at_level(logging.WARNING, logger="rzero_jax.checkpoint"):
    step, steps = restore_latest(tmp_path)
  assert step == 1 and steps == [0, 1]
  assert "checksum mismatch" in caplog.text
  with CheckpointManager(tmp_path) as ckpt:  # the checksum is not handed to the caller
    assert ckpt.restore(1).metadata == {"step": 1, "note": "test"}


def test_a_step_missing_a_saved_item_falls_back(tmp_path):
  save_steps(tmp_path, [0, 1, 2])
  epath.Path(tmp_path / "2" / "opt_state").rmtree()
  step, steps = restore_latest(tmp_path)
  assert step == 1 and steps == [0, 1]


def test_set_aside_folders_are_removed_once_a_newer_step_is_saved(tmp_path):
  save_steps(tmp_path, [0, 1, 2])
  uncommit(tmp_path / "2")
  with CheckpointManager(tmp_path, max_to_keep=5) as ckpt:  # sets step 2 aside
    assert any(p.startswith("2.corrupt-") for p in os.listdir(tmp_path))
    ckpt.save(2, make_state(2))
    ckpt.wait()
  assert not any(".corrupt-" in p for p in os.listdir(tmp_path))
  assert restore_latest(tmp_path)[0] == 2


def test_checksum_ignores_container_types_but_not_contents():
  state = make_state(3)
  as_dicts = jax.tree.map(lambda x: x, {"params": dict(state["params"])})
  assert ckpt_lib.checksum(state["params"]) == ckpt_lib.checksum(as_dicts["params"])
  other = dict(state["params"], scale=state["params"]["scale"].at[3].set(2))
  assert ckpt_lib.checksum(other) != ckpt_lib.checksum(state["params"])
