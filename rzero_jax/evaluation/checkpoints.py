"""Any checkpoint a user may point evaluation at, resolved and loaded as (cfg, params, tokenizer).

Accepted, in the order they are recognised:
  *.gguf file                       llama.cpp weights (dequantised), with their own tokenizer
  HF directory (config.json)        safetensors weights and the directory's tokenizer
  run workdir (checkpoints/, progress.json)
                                    the latest checkpoint of `role`; or `iteration` t: the role
                                    after iteration t (its kept final, else the last step-level
                                    checkpoint of that iteration); t = 0 is the run's base model
  Orbax CheckpointManager directory its latest step (or the last step of `iteration`)
  one step directory of a manager   that step
Orbax checkpoints carry what is needed to rebuild the model in their JSON `metadata` item:
`model_config` (an HF config.json dict) and `tokenizer` (a path).
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp

from rzero_jax import checkpoint, models, tokenizer as tokenizer_lib

ROLES = ("solver", "challenger")


@dataclasses.dataclass(frozen=True)
class ResolvedCheckpoint:
  spec: str  # what the user gave
  kind: str  # "gguf" | "hf" | "orbax"
  path: str  # the GGUF file, HF directory or Orbax manager directory
  tokenizer: str  # what load_tokenizer reads
  step: int | None = None  # Orbax only
  metadata: dict | None = None

  def describe(self) -> dict[str, Any]:
    """What results.json records about the evaluated checkpoint."""
    out = {
      "spec": self.spec,
      "kind": self.kind,
      "path": os.path.abspath(self.path),
      "tokenizer": self.tokenizer,
    }
    if self.kind == "orbax":
      out["step"] = self.step
      out.update(
        {k: self.metadata.get(k) for k in ("role", "iteration", "phase") if k in self.metadata}
      )
    return out


def _is_workdir(path: str) -> bool:
  return os.path.isdir(os.path.join(path, "checkpoints")) or os.path.isfile(
    os.path.join(path, "progress.json")
  )


def _numeric_children(path: str) -> list[int]:
  return sorted(
    int(n) for n in os.listdir(path) if n.isdigit() and os.path.isdir(os.path.join(path, n))
  )


def _is_manager_dir(path: str) -> bool:
  return os.path.isdir(path) and bool(_numeric_children(path))


def _is_step_dir(path: str) -> bool:
  name = os.path.basename(os.path.normpath(path))
  return os.path.isdir(path) and name.isdigit() and os.path.isdir(os.path.join(path, "params"))


class _Manager:
  """Read access to one Orbax CheckpointManager directory through `rzero_jax.checkpoint`."""

  def __init__(self, path: str):
    self.path = path
    self._mgr = checkpoint.CheckpointManager(
      path, max_to_keep=None, async_save=False, read_only=True
    )

  def steps(self) -> list[int]:
    return self._mgr.all_steps()

  def metadata(self, step: int) -> dict:
    meta = self._mgr.restore(step, target=None).metadata
    if not meta:
      raise ValueError(
        f"{self.path}/{step}: checkpoint has no JSON metadata item (expected "
        "model_config and tokenizer)"
      )
    return meta

  def restore_params(self, step: int, abstract):
    return self._mgr.restore(step, {"params": abstract}).items["params"]

  def close(self):
    self._mgr.close()


def _orbax(
  spec: str, manager_dir: str, iteration: int | None, step: int | None = None
) -> ResolvedCheckpoint:
  mgr = _Manager(manager_dir)
  try:
    steps = mgr.steps()
    if not steps:
      raise FileNotFoundError(f"checkpoint {spec}: {manager_dir} holds no complete checkpoint")
    if step is not None:
      if step not in steps:
        raise FileNotFoundError(
          f"checkpoint {spec}: step {step} is not a complete checkpoint "
          f"of {manager_dir} (complete: {steps})"
        )
    elif iteration is None:
      step = steps[-1]
    else:
      matching = [s for s in steps if mgr.metadata(s).get("iteration") == iteration]
      if not matching:
        found = sorted({mgr.metadata(s).get("iteration") for s in steps}, key=str)
        raise FileNotFoundError(
          f"checkpoint {spec}: no checkpoint of iteration {iteration} in "
          f"{manager_dir} (iterations present: {found})"
        )
      step = matching[-1]
    meta = mgr.metadata(step)
  finally:
    mgr.close()
  where = f"{manager_dir}/{step} metadata"
  for field in ("model_config", "tokenizer"):
    if field not in meta:
      raise ValueError(
        f"{where}: missing field {field!r} (expected model_config: an HF "
        "config.json dict, tokenizer: a path)"
      )
  tokenizer = str(meta["tokenizer"])
  if not os.path.isabs(tokenizer) and "://" not in tokenizer:
    # A run records its own copy (WORKDIR/model) relative to the workdir, which sits two
    # levels above WORKDIR/checkpoints/<role>: the workdir can move or be read elsewhere.
    workdir = os.path.dirname(os.path.dirname(os.path.abspath(os.path.normpath(manager_dir))))
    tokenizer = os.path.join(workdir, tokenizer)
  return ResolvedCheckpoint(
    spec=spec, kind="orbax", path=manager_dir, tokenizer=tokenizer, step=step, metadata=meta
  )


def _base_model_of(spec: str, workdir: str) -> ResolvedCheckpoint:
  config_path = os.path.join(workdir, "config.json")
  try:
    with open(config_path) as f:
      base = json.load(f).get("base_model")
  except FileNotFoundError:
    raise FileNotFoundError(
      f"checkpoint {spec} --iteration=0: {config_path} is missing, so the "
      "run's base model is unknown; pass the base model itself"
    ) from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{config_path}: not valid JSON ({e.msg})") from None
  if not base:
    raise ValueError(f"{config_path}: field 'base_model' is empty; pass the base model itself")
  resolved = resolve_checkpoint(base)
  return dataclasses.replace(resolved, spec=spec)


def _workdir(spec: str, workdir: str, role: str, iteration: int | None) -> ResolvedCheckpoint:
  if iteration == 0:
    return _base_model_of(spec, workdir)
  steps_dir = os.path.join(workdir, "checkpoints", role)
  finals_dir = os.path.join(workdir, "checkpoints", f"{role}_final")
  managers = [d for d in (steps_dir, finals_dir) if _is_manager_dir(d)]
  if not managers:
    raise FileNotFoundError(
      f"checkpoint {spec}: run workdir without any {role} checkpoint "
      f"(looked in {steps_dir} and {finals_dir})"
    )
  if iteration is None:
    return _orbax(spec, managers[0], None)
  # The kept final of iteration t is step t of {role}_final; step-level checkpoints of
  # iteration t may have been rotated away, so the final comes first.
  errors = []
  for manager in reversed(managers):
    try:
      return _orbax(spec, manager, iteration)
    except FileNotFoundError as e:
      errors.append(str(e))
  raise FileNotFoundError("; ".join(errors))


def resolve_checkpoint(
  spec: str, role: str = "solver", iteration: int | None = None
) -> ResolvedCheckpoint:
  """Finds what `spec` points at, without loading weights (cheap: metadata only)."""
  if role not in ROLES:
    raise ValueError(f"--role must be one of {ROLES}, got {role!r}")
  if iteration is not None and (
    isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0
  ):
    raise ValueError(f"--iteration must be an integer >= 0, got {iteration!r}")
  path = os.path.expanduser(spec)
  if not os.path.exists(path):
    raise FileNotFoundError(f"checkpoint {spec}: no such file or directory")
  if os.path.isfile(path):
    if models.is_gguf(path):
      _no_iteration(spec, iteration, "a GGUF file")
      return ResolvedCheckpoint(spec=spec, kind="gguf", path=path, tokenizer=path)
    raise ValueError(
      f"checkpoint {spec}: not a GGUF file (no GGUF magic); expected a .gguf "
      "file, an HF directory, a run workdir or an Orbax checkpoint directory"
    )
  if os.path.isfile(os.path.join(path, "config.json")) and not _is_workdir(path):
    _no_iteration(spec, iteration, "an HF directory")
    return ResolvedCheckpoint(spec=spec, kind="hf", path=path, tokenizer=path)
  if _is_workdir(path):
    return _workdir(spec, path, role, iteration)
  if _is_step_dir(path):
    _no_iteration(spec, iteration, "one checkpoint step")
    return _orbax(
      spec,
      os.path.dirname(os.path.normpath(path)),
      None,
      step=int(os.path.basename(os.path.normpath(path))),
    )
  if _is_manager_dir(path):
    return _orbax(spec, path, iteration)
  raise ValueError(
    f"checkpoint {spec}: not a recognised checkpoint; expected a .gguf file, an "
    "HF directory (config.json + safetensors), a run workdir (checkpoints/), or "
    "an Orbax checkpoint directory (numbered step folders)"
  )


def _no_iteration(spec: str, iteration: int | None, what: str) -> None:
  if iteration is not None:
    raise ValueError(
      f"checkpoint {spec} is {what}; --iteration applies only to a run workdir "
      "or an Orbax checkpoint directory"
    )


def _dtype_name(dtype) -> str:
  return "float32" if dtype is None else jnp.dtype(dtype).name


def load_resolved(resolved: ResolvedCheckpoint, dtype=None, mesh=None):
  """(cfg, params, tokenizer) of a resolved checkpoint; params placed on `mesh` if given."""
  if not os.path.exists(resolved.tokenizer):
    raise FileNotFoundError(
      f"checkpoint {resolved.spec}: its tokenizer {resolved.tokenizer} "
      "does not exist (was the run made on another machine?)"
    )
  name = _dtype_name(dtype)
  jdtype = jax.numpy.dtype(name)
  if resolved.kind == "orbax":
    meta = resolved.metadata
    where = f"{resolved.path}/{resolved.step} metadata field 'model_config'"
    if not isinstance(meta["model_config"], dict):
      raise ValueError(f"{where}: expected an HF config.json object")
    cfg = models.from_hf_dict(meta["model_config"], where=where, dtype=name, param_dtype=name)
    # Restore in the dtype it was saved in (the checkpoint layer insists), then cast.
    saved = jax.numpy.dtype(meta["model_config"].get("torch_dtype") or "float32")
    abstract = models.abstract_params(cfg)
    if mesh is not None:
      shardings = models.param_shardings(cfg, mesh)
    else:
      shardings = jax.tree.map(
        lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract
      )
    target = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, saved, sharding=s), abstract, shardings
    )
    mgr = _Manager(resolved.path)
    try:
      params = mgr.restore_params(resolved.step, target)
    finally:
      mgr.close()
    if saved != jdtype:
      params = jax.tree.map(lambda x: x.astype(jdtype), params)
  elif resolved.kind in ("hf", "gguf"):
    cfg, params = models.load_pretrained(resolved.path, dtype=jdtype, mesh=mesh)
    cfg = dataclasses.replace(cfg, dtype=name, param_dtype=name)
  else:
    raise ValueError(f"unknown checkpoint kind {resolved.kind!r}")
  return cfg, params, tokenizer_lib.load_tokenizer(resolved.tokenizer)


def load_policy(
  spec: str, role: str = "solver", iteration: int | None = None, dtype=None, mesh=None
):
  """(cfg, params, tokenizer) of any checkpoint: GGUF file, HF dir, run workdir, Orbax dir."""
  return load_resolved(resolve_checkpoint(spec, role, iteration), dtype=dtype, mesh=mesh)
