"""One R-Zero experiment from a config: base model, the co-evolution loop, evaluation, report.

`launch/train.py` calls `run` and nothing else. A synthetic world (config.world.name, a
registered `worlds.World`) supplies its own base model (built once and cached), its held-out
evaluation, the questions training must skip, and report-only annotations (true answers,
difficulty levels) that never reach training.
"""

from __future__ import annotations

import os

from absl import logging

from rzero_jax import multihost, worlds
from rzero_jax.evaluation import runner
from rzero_jax.rzero import config as config_lib, dataset, loop, report

Preempted = loop.Preempted
# What bad input raises while it is being checked (config, workdir, base model).
_INPUT_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError)
# What damaged workdir files raise once the run is under way, when no recovery is left: the
# message names the folder and what to delete, so it is printed as one line too.
DAMAGED_WORKDIR_ERRORS = (loop.CheckpointsLost, dataset.CorruptDatasetError)


class UserError(Exception):
  """The user's input is wrong; the launcher prints it as one line.

  Only errors raised while the input is checked and loaded (config, workdir, base model) are
  turned into this. Anything that fails once the run is under way is a bug until shown
  otherwise, and keeps its traceback.
  """


def _world(config) -> worlds.World | None:
  return worlds.get(config.world.name) if config.world.name else None


def resolve_base_model(config) -> str:
  """The base checkpoint: config.base_model, or the world's own model, built once and cached."""
  if config.base_model:
    return config.base_model
  world = _world(config)
  if world is None:
    raise ValueError(
      "no base model: pass --base_model=PATH (an HF directory with config.json "
      "and safetensors, or a .gguf file) or set config.base_model"
    )
  cache = os.path.expanduser(config.world.cache_dir or "~/.cache/rzero-jax")
  return world.base_model(cache, config.world.base.to_dict())


def make_evaluate(config):
  """The held-out evaluation run after each iteration, or None when nothing is configured."""
  if not config.eval.benchmarks:
    return None

  def evaluate(env, params, chunks=None):
    ecfg = runner.EvalConfig(
      benchmarks=config.eval.benchmarks,
      data_dir=config.eval.data_dir or None,
      max_new_tokens=config.eval.max_new_tokens,
      batch_size=config.eval.batch_size,
      limit=config.eval.limit or None,
      seed=config.seed,
      prompts=config.prompts,
    )
    results = runner.evaluate(
      runner.model_generate_fn(env.cfg, params, env.mesh),
      env.tokenizer,
      ecfg,
      progress=False,
      chunks=chunks,
    )
    flat = {"accuracy": _overall_accuracy(results)}
    for name, entry in results["benchmarks"].items():
      flat[f"{name}/accuracy"] = entry["score"]["accuracy"]
      for subset, sub in entry.get("subsets", {}).items():
        flat[f"{name}/{subset}/accuracy"] = sub["accuracy"]
    return {**flat, "results": results}

  return evaluate


def _overall_accuracy(results) -> float:
  accs = [b["score"]["accuracy"] for b in results["benchmarks"].values()]
  return sum(accs) / len(accs) if accs else 0.0


def make_annotate(config):
  """Report-only facts about a generated question (never used to filter or to train)."""
  world = _world(config)
  if world is None:
    return None
  return world.annotate


def run(config, workdir: str, *, allow_config_change: bool = False) -> str:
  """Runs or resumes the experiment; returns the one-screen summary printed at the end (on
  process 0; the others return an empty string)."""
  try:
    # Refuse a bad or changed config before writing or spending minutes on a base model.
    config_lib.validate(config)
    world = _world(config)
    if not config.base_model and world is not None:
      world.check_base_model(config.world.base.to_dict())
    # Only checked here: config.json is frozen by loop.setup once the base model has loaded, so
    # a failed start (a wrong --base_model) leaves nothing that refuses the corrected rerun.
    loop.check_config(workdir, config, allow_config_change, store=False)
    if not config.base_model and world is None:
      resolve_base_model(config)  # raises its "no base model" message
  except _INPUT_ERRORS as e:
    raise UserError(str(e)) from e
  base = resolve_base_model(config)
  logging.info("base model: %s", base)
  try:
    prepared = loop.setup(
      config,
      workdir,
      base_model=base,
      allow_config_change=allow_config_change,
      evaluate=make_evaluate(config),
      annotate=make_annotate(config),
      exclude=world.exclude if world is not None else None,
    )
  except _INPUT_ERRORS as e:
    raise UserError(str(e)) from e
  try:
    loop.run(config, workdir, prepared=prepared)
  except DAMAGED_WORKDIR_ERRORS as e:
    raise UserError(str(e)) from e
  if not multihost.is_primary():
    return ""
  return report.write_report(workdir)
