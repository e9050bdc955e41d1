"""R-Zero co-evolution: iterations of Challenger GRPO, dataset build and Solver GRPO.

This is the one place where device code (models, sampling, rl) and host code (grading, rewards,
datasets) meet. State is explicit: each role's train state, its KL reference and the frozen
other role are passed to the phase functions in `phases.py`.

Resuming: the checkpoints' own metadata (iteration, phase, step) says how far a role got; a
dataset or evaluation file exists only once complete (atomic rename), and both phases save
their work in chunks on the way. Seeds are derived from (seed, iteration, phase, step), so a
step or chunk replayed after a kill gives bit-identical results.

Faults end in a recovery or in one line: a corrupt step checkpoint falls back to the newest
intact one (or the phase reruns), a corrupt final falls back to the last step of its phase,
and a dataset file that no longer matches its integrity line is rebuilt.

Several processes (a pod slice): every decision that changes which collective runs next (a
phase already done, the step to resume from, SIGTERM) is taken once and shared through
`multihost`; process 0 writes every file other than Orbax's, and reads back the workdir's
datasets and evaluations for the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import signal
import socket
import threading
import time
from typing import Any, Callable

import jax
import numpy as np
from absl import logging

from rzero_jax import (
  checkpoint,
  compiles,
  fileio,
  models,
  multihost,
  sharding,
  tokenizer as tokenizer_lib,
  worlds,
)
from rzero_jax.rl import learner
from rzero_jax.rzero import (
  config as config_lib,
  dataset,
  metrics as metrics_lib,
  phases,
  workdir as wd,
)

ROLES = ("challenger", "solver")
# The jitted functions a phase runs, by the names the compile counter sees (`compiles`).
STEP_FUNCTIONS = ("learner_train_step", "learner_logprobs", "_prefill", "_decode")


class Preempted(Exception):
  """Raised after a SIGTERM; everything finished before it is on disk."""


class CheckpointsLost(ValueError):
  """No intact checkpoint is left to rebuild a role's state: one line says what to delete."""


# After a SIGTERM, the main thread may be inside native code (an XLA compile or a long device
# call) where no Python exception can reach it; past this grace the process exits outright,
# which is as safe as the kill -9 that every phase already survives (atomic files, replays).
SIGTERM_GRACE_S = 3.0


class _SigtermFlag:
  """SIGTERM (a TPU preemption notice, about 30 s before the VM goes) stops the run within
  seconds in any phase: outside a `critical()` section the handler raises Preempted at once
  (the step or chunk in progress is replayed bit-identically on the rerun); inside one, at its
  end. Python runs signal handlers only between bytecodes, so a watchdog thread also learns of
  the signal through a wakeup fd (written by the C-level handler, even while the main thread is
  in native code) and ends the process after SIGTERM_GRACE_S outside a critical section. With
  several processes only the flag is set, for a decision all processes share."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._critical = 0
    self._single = jax.process_count() == 1
    self._wakeup = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: leave signals alone
      self._previous = None
      return self
    if self._single:
      reader, writer = socket.socketpair()
      writer.setblocking(False)
      old = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
      self._wakeup = (reader, writer, old)
      threading.Thread(target=self._watchdog, args=(reader,), daemon=True).start()
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True
    if not self._single:
      logging.warning("SIGTERM received: finishing the current step, saving, then exiting")
      return
    if self._critical == 0:
      raise Preempted("stopped by SIGTERM; rerun the same command to resume")
    logging.warning("SIGTERM received: finishing the write in progress, then exiting")

  def _watchdog(self, reader):
    while True:
      try:
        data = reader.recv(64)
      except OSError:
        return
      if not data:
        return  # closed: the run ended
      if signal.SIGTERM in data:
        break
    deadline = time.monotonic() + SIGTERM_GRACE_S
    while time.monotonic() < deadline or self._critical:
      time.sleep(0.05)
    logging.warning(
      "SIGTERM: the main thread is still busy (native code, or closing); "
      "exiting now. Rerun the same command to resume."
    )
    logging.flush()
    os._exit(0)

  @contextlib.contextmanager
  def critical(self):
    """A section a SIGTERM does not cut (a checkpoint save with its metrics line)."""
    self._critical += 1
    try:
      yield
    finally:
      self._critical -= 1
    if self._critical == 0 and self.requested and self._single:
      raise Preempted("stopped by SIGTERM; rerun the same command to resume")

  def check(self) -> None:
    """Raises Preempted at a boundary (a saved chunk) once a SIGTERM was received, by any
    process: all processes call it at the same boundaries and stop together."""
    if multihost.any_process(self.requested):
      raise Preempted("stopped by SIGTERM at a chunk boundary; rerun the same command to resume")

  def __exit__(self, exc_type, exc, tb):
    if self._wakeup is not None:
      reader, writer, old = self._wakeup
      signal.set_wakeup_fd(old)
      writer.close()
      reader.close()
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    # The handler's Preempted can land inside code that handles it by raising something else
    # (jax's tree_map once raised UnboundLocalError): the run was still only preempted.
    context = exc.__context__ if exc is not None and not isinstance(exc, Preempted) else None
    while context is not None and not isinstance(context, Preempted):
      context = context.__cause__ or context.__context__
    if context is not None:
      logging.debug("the SIGTERM interrupted code that raised instead", exc_info=exc)
      raise Preempted(str(context)) from exc


# ----------------------------------------------------------------------------- model loading


def load_base_model(path: str, model_cfg, mesh, rules):
  """(cfg, params) of the base checkpoint: an HF directory or a GGUF file."""
  if not path:
    raise ValueError(
      "no base model: pass --base_model=PATH (an HF directory with config.json "
      "and safetensors, or a .gguf file) or set config.base_model"
    )
  runtime = dict(dtype=model_cfg.dtype, param_dtype=model_cfg.param_dtype, remat=model_cfg.remat)
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
      steps=checkpoint.CheckpointManager(
        wd.checkpoint_dir(workdir, role), max_to_keep=ccfg.max_to_keep, async_save=ccfg.async_save
      ),
      finals=checkpoint.CheckpointManager(
        wd.checkpoint_dir(workdir, role, final=True), max_to_keep=None, async_save=False
      ),
    )

  def close(self):
    self.steps.close()
    self.finals.close()


def _metadata(
  cfg, tok_path: str, role: str, iteration: int, phase: str, step: int, config_hash: str
) -> dict:
  return {
    "model_config": cfg.to_hf_dict(),
    "tokenizer": tok_path,
    "role": role,
    "iteration": iteration,
    "phase": phase,
    "step": step,
    "config_hash": config_hash,
  }


class _Lazy:
  """Params restored on first use: a finished phase's final is read only if a later phase
  still needs it (so an old, unneeded final that went bad costs nothing)."""

  def __init__(self, fn):
    self._fn, self._value, self._done = fn, None, False

  @classmethod
  def of(cls, value):
    lazy = cls(None)
    lazy._value, lazy._done = value, True
    return lazy

  def get(self):
    if not self._done:
      self._value, self._done = self._fn(), True
    return self._value


def _restore_final(s: "Setup", role: str, iteration: int, steps: int, *, may_rerun: bool):
  """The role's params after `iteration`; a corrupt final falls back to the last step of its
  phase. Returns None when the final was set aside and the phase should rerun (may_rerun)."""
  ckpts: RoleCheckpoints = s.ckpts[role]
  target = {"params": s.abstract_params}
  try:
    return ckpts.finals.restore(iteration, target).items["params"]
  except (checkpoint.CorruptCheckpointError, FileNotFoundError) as e:  # unreadable, or set aside
    bad = e
  final_dir = ckpts.finals.directory
  logging.warning(
    "%s/%d is unreadable (%s); falling back to the last step of that phase",
    final_dir,
    iteration,
    bad,
  )
  last = iteration * steps
  params = None
  if steps and last in ckpts.steps.all_steps():
    try:
      restored = ckpts.steps.restore(last, target)
      if (restored.metadata.get("iteration"), restored.metadata.get("step")) == (iteration, steps):
        params = restored.items["params"]
    except checkpoint.CorruptCheckpointError as e:
      logging.warning("its last step is unreadable too (%s)", e)
  if may_rerun:
    if iteration in ckpts.finals.all_steps():
      ckpts.finals.set_aside(iteration, f"unreadable: {bad}")
    if params is not None:  # the same weights: write the final again
      ckpts.finals.save(
        iteration,
        {"params": params},
        metadata=_metadata(s.env.cfg, s.tok_path, role, iteration, "final", steps, s.config_hash),
      )
      ckpts.finals.wait()
      return params
    logging.warning(
      "no intact step of that phase is left: the %s phase of iteration %d reruns", role, iteration
    )
    return None
  if params is not None:
    return params
  raise CheckpointsLost(
    f"{final_dir}/{iteration} is corrupt and no intact step checkpoint of that phase is left "
    f"to rebuild it; delete {final_dir}/{iteration}, every later step in {final_dir}, and "
    f"{ckpts.steps.directory}, then rerun: the {role}'s phases from iteration {iteration} "
    "are redone (bit-identically)"
  )


def _on_device(params, abstract):
  """Offloaded params back in device memory, with the sharding they had there."""
  del abstract  # multihost.offload keeps each array's sharding
  return multihost.onload(params)


def frozen_copy(cfg, params, offload: bool = False):
  """A model no phase trains (the KL reference, the frozen other role): in the compute dtype
  (bf16 in the paper configs: half of float32 master weights, and the same matmuls, which
  cast to it anyway), sharded like the params, on the devices; with `offload`, in host memory
  between uses (benchmarks/memory_plan.py counts either)."""
  params = learner.cast_params(params, models.transformer.dtype_of(cfg.dtype))
  return multihost.offload(params) if offload else params


def compile_fields() -> dict:
  """The compile counter for a metrics record: programs compiled so far in this process, per
  step function and in all, and how many of them repeated a program already compiled (a
  function rebuilt instead of reused; zero when every phase reuses the run's functions)."""
  counts = compiles.counts(STEP_FUNCTIONS)
  out = {f"compiles/{k.lstrip('_')}": v for k, v in counts.items()}
  out["recompiles"] = sum(compiles.recompiled(STEP_FUNCTIONS).values())
  return out


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
  config_hash: str = ""


def learner_config(section) -> learner.LearnerConfig:
  """A role's learner settings; its logprobs use the temperature the role samples at."""
  return dataclasses.replace(
    learner.LearnerConfig.from_config(section.learner), temperature=float(section.temperature)
  )


def make_role(section, env: phases.Env, state) -> phases.Role:
  """The jitted train step and logprob function of a role, bound to its shapes and mesh."""
  lcfg = learner_config(section)
  return phases.Role(
    learner=lcfg,
    train_step=learner.make_train_step(env.cfg, lcfg, state, mesh=env.mesh, rules=env.rules),
    logprobs=learner.make_logprob_fn(env.cfg, lcfg, mesh=env.mesh, rules=env.rules),
    advantage_estimator=section.learner.advantage_estimator,
  )


def _train_phase(
  s: Setup,
  role_name: str,
  iteration: int,
  steps: int,
  step_fn: Callable,
  sigterm: _SigtermFlag,
  start: _Lazy,
  other: _Lazy | None = None,
) -> _Lazy:
  """Runs (or resumes) one GRPO phase of a role; returns its final params (lazily when the
  phase finished in an earlier run). start/other: the role's params before the phase, and
  the frozen other role's."""
  c = s.config
  ckpts: RoleCheckpoints = s.ckpts[role_name]
  latest_final = multihost.agree(ckpts.finals.latest_step())
  if latest_final is not None and latest_final >= iteration:
    if latest_final > iteration:
      return _Lazy(lambda: _restore_final(s, role_name, iteration, steps, may_rerun=False))
    newest_step = multihost.agree(ckpts.steps.latest_step())
    params = _restore_final(
      s,
      role_name,
      iteration,
      steps,
      may_rerun=newest_step is None or newest_step <= iteration * steps,
    )
    if params is not None:
      return _Lazy.of(params)
  env = s.env
  section = c.challenger if role_name == "challenger" else c.solver
  start_params = start.get()
  state = learner.init_train_state(start_params, learner_config(section))
  first = 0
  if multihost.agree(ckpts.steps.latest_step()) is not None:
    # The newest intact step checkpoint; one from an earlier iteration means a fresh phase.
    target = {
      "params": checkpoint.abstract_like(state.params),
      "opt_state": checkpoint.abstract_like(state.opt_state),
    }
    try:
      restored = ckpts.steps.restore(target=target)
    except checkpoint.CorruptCheckpointError as e:
      # Every step is unreadable: set them aside and run the phase again from its start.
      logging.warning(
        "no step checkpoint in %s is readable (%s); the %s phase of iteration %d "
        "reruns from its start",
        ckpts.steps.directory,
        e,
        role_name,
        iteration,
      )
      for bad in ckpts.steps.all_steps():
        ckpts.steps.set_aside(bad, f"unreadable: {e}")
      restored = None
    # With several processes all must resume from the same step: process 0's choice.
    restored_at = multihost.agree(
      None
      if restored is None
      else (restored.metadata.get("iteration", 0), int(restored.metadata.get("step", 0)))
    )
    if restored is not None and restored_at != (
      restored.metadata.get("iteration", 0),
      int(restored.metadata.get("step", 0)),
    ):
      raise multihost.PeerLost(
        f"{ckpts.steps.directory}: process {jax.process_index()} restored "
        f"another step than process 0 ({restored_at}); the hosts see "
        "different checkpoints"
      )
    if restored_at is not None and restored_at[0] > iteration:
      raise CheckpointsLost(
        f"{ckpts.steps.directory} holds iteration {restored_at[0]} while "
        f"iteration {iteration} of the {role_name} must be redone; delete it and every step "
        f"after {iteration - 1} in {ckpts.finals.directory}, then rerun"
      )
    if restored is not None and restored_at[0] == iteration:
      first = restored_at[1]
      # The step counter keeps the fresh state's (replicated) sharding: the jitted step is
      # bound to the fresh state's shardings, on every process.
      step_count = multihost.to_global(np.int32(first), state.step.sharding)
      state = learner.TrainState(step_count, restored.items["params"], restored.items["opt_state"])
      logging.info(
        "resuming the %s phase of iteration %d after step %d", role_name, iteration, first
      )
  # The KL reference is read once per step; offloaded, it waits in pinned host memory, sharded
  # as on the devices, and phases.grpo_update brings it back for the step's logprobs.
  ref_params = frozen_copy(env.cfg, start_params, offload=c.offload_idle)
  role = make_role(section, env, state)
  global_base = (iteration - 1) * steps
  other_params = other.get() if other is not None else None
  for step in range(first, steps):
    seed = phases.derive_seed(c.seed, iteration, role_name, step)
    t0 = time.perf_counter()
    state, record = step_fn(role, state, ref_params, other_params, step, seed)
    meta = _metadata(env.cfg, s.tok_path, role_name, iteration, role_name, step + 1, s.config_hash)
    with sigterm.critical():
      ckpts.steps.save(
        global_base + step + 1,
        {"params": state.params, "opt_state": state.opt_state},
        metadata=meta,
      )
      record = {
        "iteration": iteration,
        "phase": role_name,
        "step": step + 1,
        "global_step": global_base + step + 1,
        "time_step": time.perf_counter() - t0,
        **record,
        **compile_fields(),
      }
      questions = record.pop("questions", None)
      s.writer.write(record)
      if questions is not None and s.annotate is not None and s.is_writer:
        _log_questions(s.workdir, iteration, step + 1, questions)
    # SIGTERM may reach one host and not another: all stop if any got it.
    if multihost.any_process(sigterm.requested):
      ckpts.steps.wait()
      raise Preempted(
        f"stopped by SIGTERM after {role_name} step {step + 1} of iteration "
        f"{iteration}; rerun the same command to resume"
      )
  ckpts.steps.wait()
  with sigterm.critical():
    ckpts.finals.save(
      iteration,
      {"params": state.params},
      metadata=_metadata(env.cfg, s.tok_path, role_name, iteration, "final", steps, s.config_hash),
    )
    ckpts.finals.wait()
  return _Lazy.of(state.params)


def _log_questions(workdir: str, iteration: int, step: int, questions) -> None:
  """The Challenger's valid questions per step, for the report's difficulty analysis; a
  replayed step replaces its line."""
  metrics_lib.upsert_jsonl(
    fileio.join(workdir, "questions.jsonl"),
    {"iteration": iteration, "phase": "challenger", "step": step, "questions": questions},
  )


class _ChunkStore:
  """Finished chunks of a dataset or evaluation phase, one atomic JSON file each, so that a
  rerun after a kill or SIGTERM continues from the last chunk; removed once the phase's file
  is written."""

  def __init__(self, directory: str, is_writer: bool, sigterm: _SigtermFlag):
    self.directory, self._is_writer, self._sigterm = directory, is_writer, sigterm

  def _path(self, key) -> str:
    return fileio.join(self.directory, f"chunk_{key}.json")

  def load(self, key):
    """The chunk as process 0 reads it (the others may not see its file), or None."""
    value = None
    if self._is_writer:
      try:
        value = wd.read_json(self._path(key))
      except ValueError as e:  # a chunk file damaged since: compute it again
        logging.warning("%s; recomputing that chunk", e)
    return multihost.agree(value)

  def save(self, key, value) -> None:
    if self._is_writer:
      with self._sigterm.critical():
        wd.atomic_write_json(self._path(key), value)
    self._sigterm.check()  # a chunk boundary: where several processes stop together

  def remove(self) -> None:
    if self._is_writer:
      fileio.remove(self.directory)


def _read_dataset(path: str):
  """The iteration's dataset, or None when it must be (re)built: a file that no longer matches
  its integrity line (emptied, cut, edited) is set aside and rebuilt from the same seeds."""
  if not fileio.exists(path):
    return None
  try:
    return dataset.read_jsonl(path, require_header=True)
  except dataset.CorruptDatasetError as e:
    aside = f"{path}.corrupt-{time.time_ns()}"
    logging.warning("%s; moving it to %s and building the dataset again", e, aside)
    fileio.path(path).rename(aside)
    return None


def _dataset_phase(
  s: Setup, iteration: int, challenger: _Lazy, solver: _Lazy, base_params, sigterm: _SigtermFlag
):
  path = wd.dataset_path(s.workdir, iteration)
  # Read (and checked) on process 0 and shared: another host may not see the file (or not yet).
  records = multihost.agree(_read_dataset(path) if s.is_writer else None)
  chunks = _ChunkStore(path.replace(".jsonl", ".chunks"), s.is_writer, sigterm)
  if records is not None:
    chunks.remove()  # left behind by a SIGKILL between writing the file and removing them
    if not records:
      logging.warning(
        "iteration %d: the dataset %s is empty (no question kept); the Solver "
        "phase of this iteration is skipped",
        iteration,
        path,
      )
    return records
  c = s.config
  # The baseline writes its questions with the untrained base Challenger.
  writer = (
    _Lazy(lambda: _on_device(base_params, s.abstract_params))
    if c.mode == "base_challenger"
    else challenger
  )
  records, stats = phases.build_dataset(
    s.env,
    writer.get,
    solver.get,
    c.dataset,
    c.sampling,
    seed=phases.derive_seed(c.seed, iteration, "dataset"),
    annotate=s.annotate,
    exclude=s.exclude,
    chunks=chunks,
  )
  if s.is_writer:
    with sigterm.critical():
      fileio.makedirs(fileio.join(s.workdir, "datasets"))
      wd.atomic_write_json(path.replace(".jsonl", ".stats.json"), stats)
      dataset.write_jsonl_atomic(path, records)
      chunks.remove()
  s.writer.write(
    {
      "iteration": iteration,
      "phase": "dataset",
      "step": 0,
      "global_step": iteration,
      "kept": len(records),
      **{k: v for k, v in stats.items() if k != "kept"},
      **compile_fields(),
    }
  )
  if not records:
    logging.warning(
      "iteration %d: the dataset kept no question of %d candidates; the Solver "
      "phase of this iteration is skipped. Widen the band or raise "
      "dataset.num_questions.",
      iteration,
      stats.get("candidates", 0),
    )
  return records


def _evaluate(s: Setup, iteration: int, params: _Lazy, sigterm: _SigtermFlag):
  path = wd.eval_path(s.workdir, iteration)
  chunks = _ChunkStore(path.replace(".json", ".chunks"), s.is_writer, sigterm)
  if s.evaluate is None or multihost.agree(s.is_writer and fileio.exists(path)):
    chunks.remove()  # left behind by a SIGKILL between writing the file and removing them
    return multihost.agree(wd.read_json(path) if s.is_writer else None)
  start = time.perf_counter()
  # Grading runs under wall-clock timeouts: process 0's scores are the run's.
  result = multihost.agree(s.evaluate(s.env, params.get(), chunks))
  result["time_eval"] = time.perf_counter() - start
  if s.is_writer:
    with sigterm.critical():
      wd.atomic_write_json(path, result)
      chunks.remove()
  s.writer.write(
    {
      "iteration": iteration,
      "phase": "eval",
      "step": 0,
      "global_step": iteration,
      **{k: v for k, v in result.items() if isinstance(v, (int, float))},
    }
  )
  return result


def _write_progress(s: Setup, iteration: int, phase: str) -> None:
  if s.is_writer:
    wd.atomic_write_json(
      fileio.join(s.workdir, "progress.json"),
      {
        "iteration": iteration,
        "phase_done": phase,
        "iterations": s.config.iterations,
        "time": time.time(),
      },
    )


def _stored_config_hash(workdir: str) -> tuple[str, str] | None:
  """(folder, config hash) from the newest checkpoint metadata of the workdir, if any."""
  for role in ROLES:
    for final in (False, True):
      directory = wd.checkpoint_dir(workdir, role, final=final)
      if not fileio.isdir(directory):
        continue
      with checkpoint.CheckpointManager(directory, read_only=True) as mgr:
        for step in reversed(mgr.all_steps()):
          try:
            stored = mgr.restore(step).metadata.get("config_hash")
          except checkpoint.CorruptCheckpointError:
            continue
          if stored:
            return directory, stored
  return None


def check_config(workdir: str, config, allow_config_change: bool, store: bool = True) -> None:
  """Process 0 checks (and with `store`, stores) the workdir's config; every process gets its
  verdict.

  A deleted config.json does not disable the guard: the checkpoints' metadata still says which
  config wrote them."""
  error = None
  if multihost.is_primary():
    try:
      config_dict = config.to_dict()
      if not fileio.exists(fileio.join(workdir, "config.json")) and not allow_config_change:
        stored = _stored_config_hash(workdir)
        now = wd.config_hash(config_dict)
        if stored is not None and stored[1] != now:
          raise wd.ConfigChangedError(
            f"{workdir}/config.json is missing and the checkpoints in {stored[0]} were "
            f"written with another config (hash {stored[1]}, now {now}); use another "
            "--workdir, or pass --allow_config_change"
          )
      if store:
        fileio.makedirs(workdir)
      wd.check_or_store_config(workdir, config_dict, allow_config_change, store)
    except ValueError as e:
      error = e
  error = multihost.agree(error)
  if error is not None:
    raise error


# The base model's files that describe its tokenizer and shape (its weights are not copied).
_MODEL_FILES = (
  "config.json",
  "generation_config.json",
  "tokenizer.json",
  "tokenizer_config.json",
  "special_tokens_map.json",
  "tokenizer.model",
  "chat_template.jinja",
  "vocab.json",
  "merges.txt",
  "added_tokens.json",
)


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


def setup(
  config,
  workdir: str,
  *,
  base_model: str,
  allow_config_change: bool = False,
  evaluate: Callable | None = None,
  annotate: Callable | None = None,
  exclude: Callable | None = None,
) -> Setup:
  is_writer = multihost.is_primary()
  compiles.install()
  config_lib.validate(config)
  mesh_cfg = {a: config.mesh[a] for a in sharding.MESH_AXES}
  mesh = sharding.make_mesh(mesh_cfg) if jax.device_count() > 1 else None
  rules = sharding.rules_from_config(config.mesh.rules.to_dict())
  # The base model and its tokenizer load before config.json is frozen: a failed start (a
  # wrong --base_model) must not leave a config that refuses the corrected rerun.
  cfg, base_params = load_base_model(base_model, config.model, mesh, rules)
  tok = tokenizer_lib.load_tokenizer(store_model_files(workdir, base_model, cfg))
  config_hash = wd.config_hash(config.to_dict())
  check_config(workdir, config, allow_config_change)
  env = phases.Env(
    cfg=cfg,
    tokenizer=tok,
    mesh=mesh,
    rules=rules,
    prompt_set=worlds.prompt_set(config.prompts),
    stop_token_ids=tuple(tok.eos_token_ids),
    max_rows_per_call=config.sampling.max_rows_per_call,
    progress=is_writer,
    grader=config.grader,
  )
  ckpts = {r: RoleCheckpoints.open(workdir, r, config.checkpoint) for r in ROLES}
  abstract = checkpoint.abstract_like(base_params)
  writer = metrics_lib.MetricsWriter(workdir, enabled=is_writer)
  return Setup(
    config=config,
    workdir=workdir,
    env=env,
    base_params=base_params,
    abstract_params=abstract,
    tok_path=wd.MODEL_DIR,
    ckpts=ckpts,
    writer=writer,
    is_writer=is_writer,
    evaluate=evaluate,
    annotate=annotate,
    exclude=exclude,
    config_hash=config_hash,
  )


def run(
  config,
  workdir: str,
  *,
  base_model: str | None = None,
  allow_config_change: bool = False,
  evaluate: Callable | None = None,
  annotate: Callable | None = None,
  exclude: Callable | None = None,
  prepared: Setup | None = None,
) -> dict:
  """Runs (or resumes) all iterations. Returns {iteration: evaluation result}.

  base_model defaults to config.base_model; a world passes the path of its cached model.
  `prepared` is a `setup` already made (the other arguments but config are then unused).
  """
  s = prepared or setup(
    config,
    workdir,
    base_model=base_model or config.base_model,
    allow_config_change=allow_config_change,
    evaluate=evaluate,
    annotate=annotate,
    exclude=exclude,
  )
  c = config
  results = {}
  try:
    with _SigtermFlag() as sigterm:
      results[0] = _evaluate(s, 0, _Lazy.of(s.base_params), sigterm)
      # From here the base model only seeds iteration 1's train states (and the baseline's
      # question writer): it waits in host memory, not on the devices.
      s.base_params = multihost.offload(s.base_params)
      base = _Lazy(lambda: _on_device(s.base_params, s.abstract_params))
      solver_prev = base
      challenger_prev = base
      for t in range(1, c.iterations + 1):
        # The frozen Solver answers questions in every Challenger step and in the dataset
        # phase: on the devices, in the compute dtype, made once per iteration.
        solver_frozen = _Lazy(lambda prev=solver_prev: frozen_copy(s.env.cfg, prev.get()))

        def challenger_step(role, state, ref, solver, step, seed):
          del step
          return phases.challenger_step(
            s.env, role, state, ref, solver, c.challenger, c.sampling, seed=seed
          )

        challenger_params = _train_phase(
          s,
          "challenger",
          t,
          c.challenger.steps,
          challenger_step,
          sigterm,
          start=challenger_prev,
          other=solver_frozen,
        )
        _write_progress(s, t, "challenger")
        records = _dataset_phase(s, t, challenger_params, solver_frozen, s.base_params, sigterm)
        _write_progress(s, t, "dataset")
        data_seed = phases.derive_seed(c.seed, t, "solver", 10**6)

        def solver_step(role, state, ref, _, step, seed, records=records, data_seed=data_seed):
          return phases.solver_step(
            s.env, role, state, ref, records, c.solver, step=step, seed=seed, data_seed=data_seed
          )

        solver_steps = c.solver.steps if records else 0
        solver_params = _train_phase(
          s, "solver", t, solver_steps, solver_step, sigterm, start=solver_prev
        )
        _write_progress(s, t, "solver")
        results[t] = _evaluate(s, t, solver_params, sigterm)
        _write_progress(s, t, "eval")
        solver_prev, challenger_prev = solver_params, challenger_params
  finally:
    for ck in s.ckpts.values():
      ck.close()
    s.writer.close()
  return results
