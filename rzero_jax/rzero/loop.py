"""R-Zero co-evolution: iterations of Challenger GRPO, dataset build and Solver GRPO.

This is the one place where device code (models, sampling, rl) and host code (grading, rewards,
datasets) meet. State is explicit: each role's train state, its KL reference and the frozen
other role are passed to the phase functions in `phases.py`.

Resuming: the checkpoints' own metadata (iteration, phase, step) says how far a role got; a
dataset or evaluation file exists only once complete (atomic rename). Seeds are derived from
(seed, iteration, phase, step), so a step replayed after a kill gives bit-identical results.

Several processes (a pod slice): every decision that changes which collective runs next (a
phase already done, the step to resume from, SIGTERM) is taken once and shared through
`multihost`; process 0 writes every file other than Orbax's, and reads back the workdir's
datasets and evaluations for the others.
"""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from rzero_jax import checkpoint, fileio, models, multihost, sharding, tokenizer as tokenizer_lib, worlds
from rzero_jax.rl import learner
from rzero_jax.rzero import config as config_lib, dataset, metrics as metrics_lib, phases
from rzero_jax.rzero import workdir as wd

ROLES = ("challenger", "solver")


class Preempted(Exception):
  """Raised after a SIGTERM once the current step's checkpoint is safely on disk."""


class _SigtermFlag:
  """SIGTERM (a TPU preemption notice) asks the loop to stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    logging.warning("SIGTERM received: finishing the current step, saving, then exiting")

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


# ----------------------------------------------------------------------------- model loading


def load_base_model(path: str, model_cfg, mesh, rules):
  """(cfg, params) of the base checkpoint: an HF directory or a GGUF file."""
  if not path:
    raise ValueError("no base model: pass --base_model=PATH (an HF directory with config.json "
                     "and safetensors, or a .gguf file) or set config.base_model")
  runtime = dict(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype,
                 remat=model_cfg.remat)
  dtype = models.transformer.dtype_of(model_cfg.param_dtype)
  path = fileio.local_copy(path)  # a base model on GCS is read from a local copy
  cfg, params = models.load_pretrained(path, dtype=dtype, mesh=mesh, rules=rules)
  return dataclasses.replace(cfg, **runtime), params


# ----------------------------------------------------------------------------- checkpoints


@dataclasses.dataclass
class RoleCheckpoints:
  """Per-step checkpoints (to resume) and per-iteration finals (kept, for refs and eval)."""
  steps: Any
  finals: Any

  @classmethod
  def open(cls, workdir: str, role: str, ccfg) -> "RoleCheckpoints":
    return cls(
        steps=checkpoint.CheckpointManager(wd.checkpoint_dir(workdir, role),
                                           max_to_keep=ccfg.max_to_keep,
                                           async_save=ccfg.async_save),
        finals=checkpoint.CheckpointManager(wd.checkpoint_dir(workdir, role, final=True),
                                            max_to_keep=None, async_save=False))

  def close(self):
    self.steps.close()
    self.finals.close()


def _metadata(cfg, tok_path: str, role: str, iteration: int, phase: str, step: int) -> dict:
  return {"model_config": cfg.to_hf_dict(), "tokenizer": tok_path, "role": role,
          "iteration": iteration, "phase": phase, "step": step}


def _final_params(ckpts: RoleCheckpoints, iteration: int, abstract, base_params):
  """The role's params after `iteration` (0 = the base model)."""
  if iteration == 0:
    return base_params
  return ckpts.finals.restore(iteration, {"params": abstract}).items["params"]


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class Setup:
  """Everything built once per run, before the first phase."""
  config: Any
  workdir: str
  env: phases.Env
  base_params: Any
  abstract_params: Any
  tok_path: str
  ckpts: dict
  writer: metrics_lib.MetricsWriter
  is_writer: bool
  evaluate: Callable | None
  annotate: Callable | None
  exclude: Callable | None = None


def learner_config(section) -> learner.LearnerConfig:
  """A role's learner settings; its logprobs use the temperature the role samples at."""
  return dataclasses.replace(learner.LearnerConfig.from_config(section.learner),
                             temperature=float(section.temperature))


def make_role(section, env: phases.Env, state) -> phases.Role:
  """The jitted train step and logprob function of a role, bound to its shapes and mesh."""
  lcfg = learner_config(section)
  return phases.Role(
      learner=lcfg,
      train_step=learner.make_train_step(env.cfg, lcfg, state, mesh=env.mesh, rules=env.rules),
      logprobs=learner.make_logprob_fn(env.cfg, lcfg, mesh=env.mesh, rules=env.rules),
      advantage_estimator=section.learner.advantage_estimator)


def _train_phase(s: Setup, role_name: str, iteration: int, steps: int,
                 step_fn: Callable, sigterm: _SigtermFlag, other_params=None):
  """Runs (or resumes) one GRPO phase of a role; returns its final params."""
  c = s.config
  ckpts: RoleCheckpoints = s.ckpts[role_name]
  done = multihost.agree(ckpts.finals.latest_step())
  if done is not None and done >= iteration:
    return _final_params(ckpts, iteration, s.abstract_params, s.base_params)
  env = s.env
  section = c.challenger if role_name == "challenger" else c.solver
  start_params = _final_params(ckpts, iteration - 1, s.abstract_params, s.base_params)
  state = learner.init_train_state(start_params, learner_config(section))
  start = 0
  latest = multihost.agree(ckpts.steps.latest_step())
  if latest is not None:
    # The newest intact step checkpoint; one from an earlier iteration means a fresh phase.
    # With several processes all restore process 0's choice (the same step, or nothing lines
    # up); alone, a corrupt newest step falls back to the one before.
    restored = ckpts.steps.restore(
        step=latest if multihost.process_count() > 1 else None,
        target={"params": checkpoint.abstract_like(state.params),
                "opt_state": checkpoint.abstract_like(state.opt_state)})
    if restored.metadata.get("iteration") == iteration:
      start = int(restored.metadata["step"])
      # The step counter keeps the fresh state's (replicated) sharding: the jitted step is
      # bound to the fresh state's shardings, on every process.
      step_count = multihost.to_global(np.int32(start), state.step.sharding)
      state = learner.TrainState(step_count, restored.items["params"],
                                 restored.items["opt_state"])
      logging.info("resuming the %s phase of iteration %d after step %d", role_name,
                   iteration, start)
  # Offloaded, the reference waits in pinned host memory, sharded as on the devices.
  ref_params = multihost.offload(start_params) if c.offload_idle else start_params
  role = make_role(section, env, state)
  global_base = (iteration - 1) * steps
  for step in range(start, steps):
    seed = phases.derive_seed(c.seed, iteration, role_name, step)
    t0 = time.perf_counter()
    state, record = step_fn(role, state, ref_params, other_params, step, seed)
    meta = _metadata(env.cfg, s.tok_path, role_name, iteration, role_name, step + 1)
    ckpts.steps.save(global_base + step + 1,
                     {"params": state.params, "opt_state": state.opt_state}, metadata=meta)
    record = {"iteration": iteration, "phase": role_name, "step": step + 1,
              "global_step": global_base + step + 1, "time_step": time.perf_counter() - t0,
              **record}
    questions = record.pop("questions", None)
    s.writer.write(record)
    if questions is not None and s.annotate is not None and s.is_writer:
      _log_questions(s.workdir, iteration, step + 1, questions)
    # SIGTERM may reach one host and not another: all stop if any got it.
    if multihost.any_process(sigterm.requested):
      ckpts.steps.wait()
      raise Preempted(f"stopped by SIGTERM after {role_name} step {step + 1} of iteration "
                      f"{iteration}; rerun the same command to resume")
  ckpts.steps.wait()
  ckpts.finals.save(iteration, {"params": state.params},
                    metadata=_metadata(env.cfg, s.tok_path, role_name, iteration, "final",
                                       steps))
  ckpts.finals.wait()
  return state.params


def _log_questions(workdir: str, iteration: int, step: int, questions) -> None:
  """The Challenger's valid questions per step, for the report's difficulty analysis."""
  fileio.append_text(fileio.join(workdir, "questions.jsonl"),
                     json.dumps({"iteration": iteration, "step": step,
                                 "questions": questions}) + "\n")


def _dataset_phase(s: Setup, iteration: int, challenger_params, solver_params, base_params):
  path = wd.dataset_path(s.workdir, iteration)
  if multihost.agree(s.is_writer and fileio.exists(path)):
    # Read on process 0 and shared: another host may not see the file (or not yet).
    return multihost.agree(dataset.read_jsonl(path) if s.is_writer else None)
  c = s.config
  # The baseline writes its questions with the untrained base Challenger.
  writer_params = base_params if c.mode == "base_challenger" else challenger_params
  records, stats = phases.build_dataset(
      s.env, writer_params, solver_params, c.dataset, c.sampling,
      seed=phases.derive_seed(c.seed, iteration, "dataset"), annotate=s.annotate,
      exclude=s.exclude)
  if s.is_writer:
    fileio.makedirs(fileio.join(s.workdir, "datasets"))
    dataset.write_jsonl_atomic(path, records)
    wd.atomic_write_json(path.replace(".jsonl", ".stats.json"), stats)
  s.writer.write({"iteration": iteration, "phase": "dataset", "step": 0,
                  "global_step": iteration, "kept": len(records),
                  **{k: v for k, v in stats.items() if k != "kept"}})
  if not records:
    logging.warning("iteration %d: the dataset kept no question (%s); the Solver phase of this "
                    "iteration is skipped. Widen the band or raise dataset.num_questions.",
                    iteration, stats)
  return records


def _evaluate(s: Setup, iteration: int, params):
  path = wd.eval_path(s.workdir, iteration)
  if s.evaluate is None or multihost.agree(s.is_writer and fileio.exists(path)):
    return multihost.agree(wd.read_json(path) if s.is_writer else None)
  start = time.perf_counter()
  # Grading runs under wall-clock timeouts: process 0's scores are the run's.
  result = multihost.agree(s.evaluate(s.env, params))
  result["time_eval"] = time.perf_counter() - start
  if s.is_writer:
    wd.atomic_write_json(path, result)
  s.writer.write({"iteration": iteration, "phase": "eval", "step": 0, "global_step": iteration,
                  **{k: v for k, v in result.items() if isinstance(v, (int, float))}})
  return result


def _write_progress(s: Setup, iteration: int, phase: str) -> None:
  if s.is_writer:
    wd.atomic_write_json(fileio.join(s.workdir, "progress.json"),
                         {"iteration": iteration, "phase_done": phase,
                          "iterations": s.config.iterations, "time": time.time()})


def check_config(workdir: str, config, allow_config_change: bool) -> None:
  """Process 0 checks (or stores) the workdir's config; every process gets its verdict."""
  error = None
  if multihost.is_primary():
    try:
      wd.check_or_store_config(workdir, config.to_dict(), allow_config_change, True)
    except ValueError as e:
      error = e
  error = multihost.agree(error)
  if error is not None:
    raise error


# The base model's files that describe its tokenizer and shape (its weights are not copied).
_MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json",
                "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                "chat_template.jinja", "vocab.json", "merges.txt", "added_tokens.json")


def store_model_files(workdir: str, base_model: str, cfg) -> str:
  """Copies the base model's tokenizer and config into WORKDIR/model once (process 0), so the
  workdir is self-contained; returns a local path of that copy, which every process reads."""
  target = wd.model_dir(workdir)
  if multihost.is_primary() and not fileio.exists(fileio.join(target, "config.json")):
    with fileio.staging_dir(target, commit_file="config.json") as staging:
      source = fileio.local_copy(base_model)
      if os.path.isdir(source):
        for name in _MODEL_FILES:
          if os.path.isfile(os.path.join(source, name)):
            with open(os.path.join(source, name), "rb") as f:
              data = f.read()
            with open(os.path.join(staging, name), "wb") as f:
              f.write(data)
      else:  # a GGUF file: its tokenizer is exported, its config written from the model's
        tokenizer_lib.load_tokenizer(source).save(staging)
        with open(os.path.join(staging, "config.json"), "w") as f:
          json.dump(cfg.to_hf_dict(), f, indent=2, sort_keys=True)
  multihost.barrier("rzero_model_files")
  return fileio.local_copy(target)


def setup(config, workdir: str, *, base_model: str, allow_config_change: bool = False,
          evaluate: Callable | None = None, annotate: Callable | None = None,
          exclude: Callable | None = None) -> Setup:
  is_writer = multihost.is_primary()
  config_lib.validate(config)
  if is_writer:
    fileio.makedirs(workdir)
  check_config(workdir, config, allow_config_change)
  mesh_cfg = {a: config.mesh[a] for a in sharding.MESH_AXES}
  mesh = sharding.make_mesh(mesh_cfg) if jax.device_count() > 1 else None
  rules = sharding.rules_from_config(config.mesh.rules.to_dict())
  cfg, base_params = load_base_model(base_model, config.model, mesh, rules)
  tok = tokenizer_lib.load_tokenizer(store_model_files(workdir, base_model, cfg))
  env = phases.Env(cfg=cfg, tokenizer=tok, mesh=mesh, rules=rules,
                   prompt_set=worlds.prompt_set(config.prompts),
                   stop_token_ids=tuple(tok.eos_token_ids),
                   max_rows_per_call=config.sampling.max_rows_per_call,
                   progress=is_writer, grader=config.grader)
  ckpts = {r: RoleCheckpoints.open(workdir, r, config.checkpoint) for r in ROLES}
  abstract = checkpoint.abstract_like(base_params)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_writer)
  return Setup(config=config, workdir=workdir, env=env, base_params=base_params,
               abstract_params=abstract, tok_path=wd.MODEL_DIR,
               ckpts=ckpts, writer=writer, is_writer=is_writer, evaluate=evaluate,
               annotate=annotate, exclude=exclude)


def run(config, workdir: str, *, base_model: str | None = None,
        allow_config_change: bool = False, evaluate: Callable | None = None,
        annotate: Callable | None = None, exclude: Callable | None = None,
        prepared: Setup | None = None) -> dict:
  """Runs (or resumes) all iterations. Returns {iteration: evaluation result}.

  base_model defaults to config.base_model; a world passes the path of its cached model.
  `prepared` is a `setup` already made (the other arguments but config are then unused).
  """
  s = prepared or setup(config, workdir, base_model=base_model or config.base_model,
                        allow_config_change=allow_config_change, evaluate=evaluate,
                        annotate=annotate, exclude=exclude)
  c = config
  results = {}
  try:
    with _SigtermFlag() as sigterm:
      results[0] = _evaluate(s, 0, s.base_params)
      for t in range(1, c.iterations + 1):
        solver_prev = _final_params(s.ckpts["solver"], t - 1, s.abstract_params,
                                    s.base_params)

        def challenger_step(role, state, ref, solver, step, seed):
          del step
          return phases.challenger_step(s.env, role, state, ref, solver, c.challenger,
                                        c.sampling, seed=seed)

        challenger_params = _train_phase(s, "challenger", t, c.challenger.steps,
                                         challenger_step, sigterm, other_params=solver_prev)
        _write_progress(s, t, "challenger")
        records = _dataset_phase(s, t, challenger_params, solver_prev, s.base_params)
        _write_progress(s, t, "dataset")
        data_seed = phases.derive_seed(c.seed, t, "solver", 10**6)

        def solver_step(role, state, ref, _, step, seed):
          # Called within this iteration only, so the loop variables are the current ones.
          return phases.solver_step(s.env, role, state, ref, records, c.solver, step=step,  # noqa: B023
                                    seed=seed, data_seed=data_seed)  # noqa: B023

        solver_steps = c.solver.steps if records else 0
        solver_params = _train_phase(s, "solver", t, solver_steps, solver_step, sigterm)
        _write_progress(s, t, "solver")
        results[t] = _evaluate(s, t, solver_params)
        _write_progress(s, t, "eval")
  finally:
    for ck in s.ckpts.values():
      ck.close()
    s.writer.close()
  return results
