"""Per-chip memory of every phase of a paper config on a TPU slice, from the TPU compiler.

  python -m benchmarks.memory_plan --config=configs/qwen3_4b_base.py --topology=v5p:2x2x1

On a machine without a TPU this needs libtpu (`make memory-plan` builds a venv with
`jax[tpu]`): JAX then compiles for the named topology without one ("deviceless AOT"), and each
program's `memory_analysis()` is the TPU compiler's own figure. Nothing is allocated.

Compiled, at the config's shapes and mesh (the exact jitted functions the run calls):
  prefill, decode   the largest generate call phases.generate_rows makes (call_shape), at the
                    prompt bucket + the full token budget
  answers_decode    the Challenger phase's Solver answers (m per question), at their own bucket
  logprobs          pi_old / pi_ref of one Solver mini-batch (prompts_per_update x G rows)
  train_step        one optimizer update of that mini-batch, in learner.micro_batches parts
`--programs=train_step` (a comma list) compiles only those; the others' rows read "not run".

Prompt buckets are the largest the run can reach: a Solver prompt is kept up to
dataset.max_solver_prompt_tokens (2,048 -> bucket 2,048), and the Challenger's own prompt is
shorter, so one bucket bounds rollouts, dataset answers, logprobs and updates from above. The
Challenger phase sends every parsed question to the Solver, however long: up to its 4,096-token
budget plus the template, bucket 8,192.
Added by hand, per phase: what stays resident but is not an argument of the program running
(the optimizer state while the role samples, the KL reference, the frozen other role).

Device counts: a v5p topology lists one device per chip (a megacore of two TensorCores); a v4
topology lists one device per TensorCore, two per chip (v4:2x2x2 is 8 chips, a v4-16, and 16
devices). The compiler's per-device figures are then per TensorCore, set beside half the
chip's HBM.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import sys
import time

# libtpu asks a metadata server for the TPU it runs on unless told; nothing else reads these.
for _k, _v in (
  ("TPU_SKIP_MDS_QUERY", "1"),
  ("TPU_ACCELERATOR_TYPE", "v5p-8"),
  ("TPU_WORKER_HOSTNAMES", "localhost"),
):
  os.environ.setdefault(_k, _v)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec  # noqa: E402

from rzero_jax import models, sampling, sharding  # noqa: E402
from rzero_jax.rl import learner  # noqa: E402
from rzero_jax.rzero import loop  # noqa: E402

GB = 1e9
HEADROOM = 0.10  # a phase FITS when it uses at most 90% of the device's HBM
PROGRAMS = ("prefill", "decode", "answers_decode", "logprobs", "train_step")

# HBM per device of the topology (see the module docstring for v4's two devices per chip).
CHIPS = {
  "v5p": dict(hbm=95 * GB, peak_flops=459e12, hbm_bw=2.76e12, devices_per_chip=1),
  "v4": dict(hbm=32 * 2**30, peak_flops=275e12, hbm_bw=1.2e12, devices_per_chip=2),
  "v5e": dict(hbm=16 * GB, peak_flops=197e12, hbm_bw=0.82e12, devices_per_chip=1),
}

# The architectures of the paper's base models (their config.json, the fields we read).
ARCHITECTURES = {
  "qwen3_4b_base": dict(
    model_type="qwen3",
    vocab_size=151936,
    hidden_size=2560,
    intermediate_size=9728,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
  ),
  "qwen3_8b_base": dict(
    model_type="qwen3",
    vocab_size=151936,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=36,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=1000000.0,
    max_position_embeddings=32768,
    tie_word_embeddings=False,
    rms_norm_eps=1e-6,
  ),
  "octothinker_3b": dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=3072,
    intermediate_size=8192,
    num_hidden_layers=28,
    num_attention_heads=24,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    tie_word_embeddings=True,
    rms_norm_eps=1e-5,
    rope_scaling=dict(
      rope_type="llama3",
      factor=32.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=8192,
    ),
  ),
  "octothinker_8b": dict(
    model_type="llama",
    vocab_size=128256,
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=128,
    rope_theta=500000.0,
    max_position_embeddings=131072,
    tie_word_embeddings=False,
    rms_norm_eps=1e-5,
    rope_scaling=dict(
      rope_type="llama3",
      factor=8.0,
      low_freq_factor=1.0,
      high_freq_factor=4.0,
      original_max_position_embeddings=8192,
    ),
  ),
}


# The slices each paper config is planned for: (topology, devices it lists).
TARGETS = {
  "qwen3_4b_base": (("v5p:2x2x1", 4), ("v4:2x2x2", 16)),
  "octothinker_3b": (("v5p:2x2x1", 4), ("v4:2x2x2", 16)),
  "qwen3_8b_base": (("v5p:2x2x1", 4), ("v4:2x2x4", 32)),
  "octothinker_8b": (("v5p:2x2x1", 4), ("v4:2x2x4", 32)),
}


# ----------------------------------------------------------------------------- pure arithmetic


def split_problems(config, devices: int) -> list[str]:
  """Where a config's batches do not split evenly over the devices' batch shards (a split
  that does not divide leaves the rows replicated: every device holds all of them)."""
  shards = devices // (config.mesh.tensor * config.mesh.data) * config.mesh.data
  out = []
  for name, role in (("challenger", config.challenger), ("solver", config.solver)):
    rows = role.prompts_per_update * role.group_size
    k = role.learner.micro_batches
    if rows % k or (rows // k) % shards:
      out.append(f"{name}: {rows} rows in {k} micro-batches over {shards} batch shards")
  if config.sampling.max_rows_per_call % shards:
    out.append(f"max_rows_per_call {config.sampling.max_rows_per_call} over {shards} shards")
  return out


def call_shape(n: int, limit: int, shards: int, per_call: int) -> tuple[int, int]:
  """(padded prompts, samples per prompt) of the largest `generate` call phases.generate_rows
  makes for n samples per prompt, max_rows_per_call `limit`, on `shards` batch shards;
  per_call is sampling.prompts_per_call(limit, n, mesh, rules)."""
  copies = sampling.batch_bucket(1, shards)
  if copies * n <= limit:
    return sampling.batch_bucket(per_call, shards), n
  most = max(copies, limit // copies * copies)
  piece = -(-n // -(-n // most))  # the largest part of phases._even_split(n, most)
  return copies, -(-piece // copies)


def chip_of(topology: str) -> str:
  """'v5p:2x2x1' -> 'v5p'."""
  kind = topology.split(":")[0]
  if kind not in CHIPS:
    raise ValueError(
      f"--topology={topology!r}: unknown chip {kind!r}; expected one of "
      f"{sorted(CHIPS)} as in v5p:2x2x1"
    )
  return kind


def slice_name(topology: str, num_devices: int) -> str:
  """The marketing name: v5p-8 for 4 v5p chips (8 TensorCores), v4-16 for 16 v4 devices."""
  kind = chip_of(topology)
  cores = num_devices * (2 // CHIPS[kind]["devices_per_chip"]) if kind != "v5e" else num_devices
  return f"{kind}-{cores}"


def verdict(used: float, hbm: float, headroom: float = HEADROOM) -> str:
  return "FITS" if used <= (1.0 - headroom) * hbm else "DOES NOT FIT"


@dataclasses.dataclass(frozen=True)
class Program:
  """One compiled program's per-device bytes (memory_analysis)."""

  arguments: float
  outputs: float
  aliased: float
  temps: float

  @property
  def peak(self) -> float:
    # Donated arguments come back as outputs in place: counted once.
    return self.arguments + self.outputs - self.aliased + self.temps


def phase_rows(programs: dict, resident: dict, hbm: float, skipped=()) -> list[dict]:
  """Per phase and step: the program that runs, what else stays resident, the total and the
  verdict. `programs` maps program names to Program (or None where it failed to compile, with
  `resident['_errors'][name]` holding the compiler's figure if any); `resident` holds per-device
  bytes of the state trees: 'params' (float32 master), 'opt' (Adam moments), 'frozen' (a
  compute-dtype copy on device), 'host' (0: trees kept in host memory). Programs in `skipped`
  were left out on purpose (--programs): their rows say "not run", never FITS."""
  p, opt, frozen = resident["params"], resident["opt"], resident["frozen"]
  ref = resident["ref"]
  # (phase, step, program, bytes resident beside the program's own arguments)
  steps = [
    ("challenger", "rollouts", "decode", opt + ref + frozen),
    ("challenger", "rollouts", "prefill", opt + ref + frozen),
    ("challenger", "solver answers", "answers_decode", p + opt + ref),
    ("challenger", "pi_old / pi_ref", "logprobs", opt + ref + frozen),
    ("challenger", "update", "train_step", ref + frozen),
    ("dataset", "questions", "decode", frozen),
    ("dataset", "answers", "decode", p),
    ("solver", "rollouts", "decode", opt + ref),
    ("solver", "rollouts", "prefill", opt + ref),
    ("solver", "pi_old / pi_ref", "logprobs", opt + ref),
    ("solver", "update", "train_step", ref),
  ]
  rows = []
  for phase, step, name, extra in steps:
    prog = programs.get(name)
    if name in skipped:
      total = None
    elif prog is None:
      used = resident.get("_errors", {}).get(name)
      total = None if used is None else used + extra
    else:
      total = prog.peak + extra
    rows.append(
      dict(
        phase=phase,
        step=step,
        program=name,
        program_bytes=None if prog is None else prog.peak,
        resident=extra,
        total=total,
        verdict=(
          "not run" if name in skipped else "DOES NOT FIT" if total is None else verdict(total, hbm)
        ),
      )
    )
  return rows


def format_table(rows: list[dict], hbm: float) -> str:
  lines = [
    "| phase | step | program | program GB | resident GB | total GB | HBM GB | |",
    "|---|---|---|---:|---:|---:|---:|---|",
  ]
  for r in rows:
    prog = "–" if r["program_bytes"] is None else f"{r['program_bytes'] / GB:.1f}"
    if r["total"] is not None:
      total = f"{r['total'] / GB:.1f}"
    else:
      total = "–" if r["verdict"] == "not run" else "compile failed"
    lines.append(
      f"| {r['phase']} | {r['step']} | {r['program']} | {prog} | "
      f"{r['resident'] / GB:.1f} | {total} | {hbm / GB:.1f} | {r['verdict']} |"
    )
  return "\n".join(lines)


def oom_bytes(message: str) -> float | None:
  """The bytes a program needs, from the TPU compiler's out-of-memory message, if it says."""
  m = re.search(r"Used ([\d.]+)([KMGT])? of ([\d.]+)([KMGT])? hbm", message)
  # libtpu 0.0.42 words it by the temporaries alone: a lower bound of the program's need.
  m = m or re.search(r"required for HLO temporaries \(([\d.]+)([KMGT])?\)", message)
  if not m:
    return None
  scale = {None: 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
  return float(m.group(1)) * scale[m.group(2)]


# ----------------------------------------------------------------------------- compiling

FLAGS = flags.FLAGS


def define_flags() -> None:
  """Flags of the command line only: importing this module (the tests do) defines none."""
  flags.DEFINE_string("config", "configs/qwen3_4b_base.py", "A paper config file.")
  flags.DEFINE_string("topology", "v5p:2x2x1", "TPU topology name, e.g. v5p:2x2x1, v4:2x2x2.")
  flags.DEFINE_string("architecture", "", "One of ARCHITECTURES; default: the config file's name.")
  flags.DEFINE_integer(
    "prompt_bucket",
    0,
    "Padded prompt length planned for; 0: the largest bucket a Solver prompt can take, "
    "sampling.prompt_bucket(dataset.max_solver_prompt_tokens) (2,048 in the paper configs; "
    "the Challenger's prompt is shorter, so its phases are bounded from above).",
  )
  flags.DEFINE_integer(
    "answers_prompt_bucket",
    0,
    "Padded prompt length of the Challenger phase's Solver answers; 0: "
    "sampling.prompt_bucket(challenger.max_new_tokens + 1), a question as long as the "
    "Challenger's budget plus the Solver's template (8,192 in the paper configs).",
  )
  flags.DEFINE_list(
    "programs", list(PROGRAMS), f"Which programs to compile, a subset of {list(PROGRAMS)}."
  )
  flags.DEFINE_string("mesh", "", "Override the config's mesh: data,fsdp,tensor.")
  flags.DEFINE_integer("micro_batches", 0, "Override both roles' learner.micro_batches.")
  flags.DEFINE_integer("max_rows_per_call", 0, "Override sampling.max_rows_per_call.")


def load_config(path: str):
  spec = importlib.util.spec_from_file_location("plan_config", path)
  if spec is None or not os.path.exists(path):
    raise SystemExit(f"--config={path}: no such config file")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


class _Skip(Exception):
  """A program left out by --programs."""


def _compile(fn, *args):
  return fn.lower(*args).compile()


def _program(compiled) -> Program:
  m = compiled.memory_analysis()
  return Program(
    m.argument_size_in_bytes, m.output_size_in_bytes, m.alias_size_in_bytes, m.temp_size_in_bytes
  )


def _parts(p: Program) -> str:
  return (
    f"{p.peak / GB:.1f} GB (arguments {p.arguments / GB:.1f}, outputs {p.outputs / GB:.1f}, "
    f"donated {p.aliased / GB:.1f}, temporaries {p.temps / GB:.1f})"
  )


def _tree_bytes_per_device(abstract, shardings) -> float:
  total = 0
  for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)):
    shard = s.shard_shape(a.shape)
    total += math.prod(shard) * a.dtype.itemsize
  return total


def default_prompt_bucket(config) -> int:
  """The longest padded prompt the run can give a program: a Solver prompt is kept up to
  dataset.max_solver_prompt_tokens and padded to its power-of-two bucket."""
  return sampling.prompt_bucket(config.dataset.max_solver_prompt_tokens)


def default_answers_bucket(config) -> int:
  """The longest padded prompt of the Challenger phase's Solver answers: the phase keeps every
  parsed question, which may fill the Challenger's whole budget, and the Solver's template
  adds tokens to it (4,096 -> the 8,192 bucket)."""
  return sampling.prompt_bucket(config.challenger.max_new_tokens + 1)


def plan(
  config,
  topology: str,
  architecture: str,
  prompt_bucket: int,
  programs_to_run=PROGRAMS,
  answers_bucket: int = 0,
  log=print,
) -> dict:
  """Compiles the programs for the topology (those in `programs_to_run`); returns {'rows',
  'hbm', 'slice', ...}."""
  unknown = set(programs_to_run) - set(PROGRAMS)
  if unknown:
    raise ValueError(f"--programs: unknown {sorted(unknown)}; expected some of {list(PROGRAMS)}")
  kind = chip_of(topology)
  topo = topologies.get_topology_desc(platform="tpu", topology_name=topology)
  devices = list(topo.devices)
  hbm = CHIPS[kind]["hbm"] / CHIPS[kind]["devices_per_chip"]
  mesh_cfg = {a: config.mesh[a] for a in sharding.MESH_AXES}
  # jax.make_mesh refuses a v4 topology's per-TensorCore devices (it wants one per chip), so
  # the mesh is laid out here in the devices' order, with make_mesh's axis sizes.
  sizes = [mesh_cfg[a] for a in sharding.MESH_AXES]
  if -1 in sizes:
    sizes[sizes.index(-1)] = len(devices) // -math.prod(sizes)
  mesh = Mesh(
    np.array(devices).reshape(sizes), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * len(sizes)
  )
  rules = sharding.rules_from_config(config.mesh.rules.to_dict())
  cfg = models.from_hf_dict(
    ARCHITECTURES[architecture],
    where=architecture,
    dtype=config.model.dtype,
    param_dtype=config.model.param_dtype,
    remat=config.model.remat,
  )
  log(
    f"{architecture}: {cfg.num_params / 1e9:.2f}B params; {topology} = "
    f"{slice_name(topology, len(devices))}, {len(devices)} devices, mesh "
    f"{dict(mesh.shape)}, {hbm / GB:.1f} GB HBM per device"
  )

  param_sh = models.param_shardings(cfg, mesh, rules)
  params = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
    models.abstract_params(cfg),
    param_sh,
  )
  lc = loop.learner_config(config.solver)
  state = learner.abstract_train_state(params, lc)
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  p_bytes = _tree_bytes_per_device(params, param_sh)
  opt_bytes = _tree_bytes_per_device(state.opt_state, state_sh.opt_state)
  compute = models.transformer.dtype_of(cfg.dtype)
  frozen = p_bytes * jnp.dtype(compute).itemsize / jnp.dtype(cfg.param_dtype).itemsize
  # offload_idle keeps the KL reference in host memory between steps (loop.frozen_copy).
  ref = 0.0 if config.offload_idle else frozen
  resident = dict(params=p_bytes, opt=opt_bytes, frozen=frozen, ref=ref, _errors={})

  programs = {}
  rows_per_call = config.sampling.max_rows_per_call
  new_tokens = max(
    config.challenger.max_new_tokens,
    config.solver.max_new_tokens,
    config.sampling.answer_max_new_tokens,
  )
  shards = sampling.batch_bucket(1, sampling._batch_shards(mesh, tuple(rules)))
  rows_sh = NamedSharding(mesh, PartitionSpec(*sharding.logical_to_spec(("batch",), rules, mesh)))
  rep = sharding.replicated(mesh)

  def sds(shape, dtype, s):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=s)

  knobs = {
    "temperature": sds((), jnp.float32, rep),
    "top_p": sds((), jnp.float32, rep),
    "top_k": sds((), jnp.int32, rep),
    "seed": sds((), jnp.uint32, rep),
  }
  stop_mask = sds((cfg.vocab_size,), jnp.bool_, rep)
  want = set(programs_to_run)
  answers_bucket = answers_bucket or default_answers_bucket(config)

  def sample(prefill_name, decode_name, bucket, counts):
    """Compiles `generate`'s prefill and decode at `bucket` prompt slots for the largest calls
    phases.generate_rows makes for any of the sample counts: prefill at the most prompts,
    decode at the most rows."""
    if not want & {prefill_name, decode_name}:
      return
    per_call = lambda k: sampling.prompts_per_call(rows_per_call, k, mesh, rules)  # noqa: E731
    shapes = [call_shape(k, rows_per_call, shards, per_call(k)) for k in counts]

    def lower(num_prompts, n):
      plan_ = sampling._Plan(
        cfg=cfg,
        prompt_bucket=bucket,
        max_new_tokens=new_tokens,
        n=n,
        pad_id=0,
        mesh=mesh,
        rules=tuple(rules),
      )
      prefill = sampling._prefill.lower(
        plan_,
        params,
        sds((num_prompts, bucket), jnp.int32, rows_sh),
        sds((num_prompts,), jnp.int32, rows_sh),
        sds((num_prompts,), jnp.bool_, rows_sh),
        stop_mask,
        knobs,
      )
      return plan_, prefill

    t0 = time.time()
    try:
      if prefill_name in want:
        num_prompts, n = max(shapes, key=lambda c: (c[0], c[0] * c[1]))
        programs[prefill_name] = _program(lower(num_prompts, n)[1].compile())
        log(
          f"  {prefill_name} {num_prompts} prompts x {bucket}: "
          f"{_parts(programs[prefill_name])} ({time.time() - t0:.0f} s)"
        )
      if decode_name in want:
        num_prompts, n = max(shapes, key=lambda c: (c[0] * c[1], c[0]))
        plan_, prefill = lower(num_prompts, n)
        state_out, cache_out = prefill.out_info
        t0 = time.time()
        decode = _compile(sampling._decode, plan_, params, state_out, cache_out, stop_mask, knobs)
        programs[decode_name] = _program(decode)
        log(
          f"  {decode_name} {num_prompts} prompts x {n} = {num_prompts * n} rows x "
          f"{bucket + new_tokens} slots: {_parts(programs[decode_name])} "
          f"({time.time() - t0:.0f} s)"
        )
    except Exception as e:  # the compiler refuses a program that cannot fit: report its figure
      log(f"  {decode_name}: {str(e).splitlines()[0][:300]}")
      resident["_errors"][decode_name] = oom_bytes(str(e))
      resident["_errors"][prefill_name] = oom_bytes(str(e))

  # Rollouts and the dataset's questions and answers at the Solver-prompt bucket: the largest
  # call of them (the Challenger's prompt sampled prompts_per_step x G times, the Solver's G,
  # the m answers per question), an upper bound for all.
  counts = (
    config.challenger.prompts_per_step * config.challenger.group_size,
    config.solver.group_size,
    config.dataset.solver_samples,
  )
  sample("prefill", "decode", prompt_bucket, counts)
  # The Challenger phase's Solver answers: its questions are not length-filtered, so a Solver
  # prompt may hold a question as long as the Challenger's whole budget.
  sample("answers_prefill", "answers_decode", answers_bucket, (config.challenger.solver_samples,))

  rows = config.solver.prompts_per_update * config.solver.group_size
  length = prompt_bucket + config.solver.max_new_tokens
  bsh = learner.batch_sharding(mesh, rules)
  tokens = sds((rows, length), jnp.int32, bsh)
  mask = sds((rows, length), jnp.bool_, bsh)
  t0 = time.time()
  try:
    if "logprobs" not in want:
      raise _Skip
    logprobs = _compile(
      learner.make_logprob_fn(cfg, lc, mesh=mesh, rules=rules), params, tokens, mask
    )
    programs["logprobs"] = _program(logprobs)
    log(
      f"  logprobs {rows} rows x {length} in {lc.micro_batches} micro-batches: "
      f"{_parts(programs['logprobs'])} ({time.time() - t0:.0f} s)"
    )
  except _Skip:
    pass
  except Exception as e:
    log(f"  logprobs: {str(e).splitlines()[0][:300]}")
    resident["_errors"]["logprobs"] = oom_bytes(str(e))
  f32 = lambda shape: sds(shape, jnp.float32, bsh)  # noqa: E731
  batch = {
    "tokens": tokens,
    "kv_mask": mask,
    "loss_mask": f32((rows, length - 1)),
    "old_logp": f32((rows, length - 1)),
    "ref_logp": f32((rows, length - 1)),
    "sampler_logp": f32((rows, length - 1)),
    "advantages": f32((rows,)),
  }
  t0 = time.time()
  try:
    if "train_step" not in want:
      raise _Skip
    step = learner.make_train_step(cfg, lc, state, mesh=mesh, rules=rules)
    programs["train_step"] = _program(_compile(step, state, batch))
    log(
      f"  train_step {rows} rows x {length} in {lc.micro_batches} micro-batches: "
      f"{_parts(programs['train_step'])} ({time.time() - t0:.0f} s)"
    )
  except _Skip:
    pass
  except Exception as e:
    log(f"  train_step: {str(e).splitlines()[0][:300]}")
    resident["_errors"]["train_step"] = oom_bytes(str(e))
  return dict(
    rows=phase_rows(programs, resident, hbm, skipped=set(PROGRAMS) - want),
    hbm=hbm,
    resident=resident,
    slice=slice_name(topology, len(devices)),
    mesh=dict(mesh.shape),
    programs=programs,
  )


def main(argv):
  del argv
  config = load_config(FLAGS.config)
  arch = FLAGS.architecture or os.path.splitext(os.path.basename(FLAGS.config))[0]
  if arch not in ARCHITECTURES:
    raise SystemExit(f"--architecture={arch!r}: expected one of {sorted(ARCHITECTURES)}")
  if FLAGS.mesh:
    data, fsdp, tensor = (int(x) for x in FLAGS.mesh.split(","))
    config.mesh.update(data=data, fsdp=fsdp, tensor=tensor)
  if FLAGS.micro_batches:
    for role in (config.challenger, config.solver):
      role.learner.micro_batches = FLAGS.micro_batches
  if FLAGS.max_rows_per_call:
    config.sampling.max_rows_per_call = FLAGS.max_rows_per_call
  unknown = sorted(set(FLAGS.programs) - set(PROGRAMS))
  if unknown:
    raise SystemExit(f"--programs: unknown {unknown}; expected some of {list(PROGRAMS)}")
  bucket = FLAGS.prompt_bucket or default_prompt_bucket(config)
  out = plan(config, FLAGS.topology, arch, bucket, FLAGS.programs, FLAGS.answers_prompt_bucket)
  r = out["resident"]
  print(
    f"\n{arch} on {out['slice']} ({FLAGS.topology}), mesh {out['mesh']}, "
    f"max_rows_per_call {config.sampling.max_rows_per_call}, micro_batches "
    f"{config.solver.learner.micro_batches}, prompt bucket {bucket} (Challenger's Solver "
    f"answers: {FLAGS.answers_prompt_bucket or default_answers_bucket(config)}); per "
    f"device: params f32 {r['params'] / GB:.1f} GB, Adam {r['opt'] / GB:.1f} GB, "
    f"frozen copy {r['frozen'] / GB:.1f} GB, KL reference on device {r['ref'] / GB:.1f} GB"
  )
  print(format_table(out["rows"], out["hbm"]))
  run = [x for x in out["rows"] if x["verdict"] != "not run"]
  worst = max((x["total"] or math.inf) for x in run)
  print(
    f"\nworst phase: {worst / GB:.1f} GB of {out['hbm'] / GB:.1f} GB: {verdict(worst, out['hbm'])}"
  )
  sys.stdout.flush()


if __name__ == "__main__":
  define_flags()
  app.run(main)
