"""The shrunken default run: the embedded default config (configs/arith_tiny.py, the README's
main job) at tiny sizes, launched through `python -m launch.train` in subprocesses.

tests/test_rzero_run.py and tests/multihost share it: one tiny base model, one reference run
and one compile cache per session (tests/conftest.py). Every run sees 2 virtual CPU devices and
so the same (data=1, fsdp=2, tensor=1) mesh as a run of 2 processes of 1 device each: the
multihost runs must match the reference bit for bit.
"""

import os
import sys

from tests import conftest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE_ITERATIONS = 2
DEVICES = 2

TINY = [
  "--config.iterations=1",
  "--config.challenger.steps=2",
  "--config.challenger.prompts_per_step=4",
  "--config.challenger.prompts_per_update=2",
  "--config.challenger.max_new_tokens=40",
  "--config.challenger.solver_samples=4",
  "--config.dataset.num_questions=64",
  "--config.dataset.solver_samples=4",
  "--config.dataset.band_low=0.0",
  "--config.dataset.band_high=1.0",
  "--config.dataset.max_new_tokens=40",
  "--config.solver.steps=2",
  "--config.solver.prompts_per_step=4",
  "--config.solver.prompts_per_update=4",
  "--config.solver.group_size=2",
  "--config.solver.min_questions=4",
  "--config.solver.max_new_tokens=40",
  "--config.sampling.answer_max_new_tokens=40",
  "--config.eval.limit=32",
  "--config.eval.max_new_tokens=40",
  "--config.eval.batch_size=8",
  # Small generate calls, so that the dataset and each evaluation (4 chunks each) are saved in
  # several pieces, as at paper scale. Phases share row counts and token budgets where they can,
  # and with them compiled programs: each start of a run traces and loads every one it needs.
  "--config.sampling.max_rows_per_call=64",
  "--config.challenger.learner.learning_rate=1e-4",
  "--config.solver.learner.learning_rate=1e-3",
]


# The tiny base model's shapes, also tests/test_worlds.py's.
TINY_MODEL = dict(
  hidden_size=32,
  intermediate_size=64,
  num_layers=1,
  num_heads=2,
  num_kv_heads=1,
  head_dim=16,
  vocab_size=128,
)


def build_tiny_base(folder: str) -> str:
  """The shrunken runs' base model: tests/conftest.py's `tiny_base`, built once per session."""
  from configs import arith_tiny
  from rzero_jax.worlds import base_model

  # The default's corpus (its authors' shares included) at a tiny size and budget.
  corpus = {
    k: v
    for k, v in arith_tiny.get_config().world.base.items()
    if k.endswith(("_fraction", "_fractions", "_style"))
  }
  return base_model.build_base_model(
    folder, num_docs=4000, steps=300, batch_size=16, **TINY_MODEL, **corpus
  )


def command(workdir, base, cache, *extra, iterations: int = 1) -> list[str]:
  """The launcher's command line for a shrunken run of `iterations` iterations."""
  return [
    sys.executable,
    "-m",
    "launch.train",
    f"--workdir={workdir}",
    f"--base_model={base}",
    f"--compilation_cache_dir={cache}",
    *[a for a in TINY if not a.startswith("--config.iterations=")],
    f"--config.iterations={iterations}",
    *extra,
  ]


def env(devices: int = DEVICES, **extra) -> dict:
  """A launcher's environment: CPU, unbuffered output, `devices` virtual CPU devices."""
  out = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  out["XLA_FLAGS"] = conftest.xla_flags(devices)
  out.update(extra)
  return out


def committed_step(workdir, role: str, step: int):
  """A check that `role`'s checkpoint of `step` is committed (a kill point)."""

  def check():
    d = os.path.join(workdir, "checkpoints", role, str(step))
    return os.path.exists(os.path.join(d, "commit_success.txt"))

  return check


def final_params(workdir, iteration: int, roles=("challenger", "solver")) -> dict:
  """{"role/path/to/leaf": array} of the roles' final params after `iteration`, read onto this
  process's one device (whatever mesh wrote them)."""
  import jax
  import numpy as np
  import orbax.checkpoint as ocp

  from rzero_jax import checkpoint, fileio

  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  out = {}
  for role in roles:
    folder = fileio.join(workdir, "checkpoints", f"{role}_final")
    saved = ocp.StandardCheckpointHandler().metadata(
      fileio.path(folder) / str(iteration) / "params"
    )
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved.tree
    )
    with checkpoint.CheckpointManager(folder, async_save=False, read_only=True) as mgr:
      params = mgr.restore(iteration, {"params": target}).items["params"]
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    out.update({f"{role}/{jax.tree_util.keystr(k)}": np.asarray(v) for k, v in flat})
  return out


def assert_same_params(ours: dict, reference: dict) -> None:
  """final_params of two runs, bit for bit."""
  import numpy as np

  assert ours.keys() == reference.keys()
  for key, want in reference.items():
    got = ours[key]
    assert got.dtype == want.dtype and np.array_equal(got, want), key
