"""Evaluates a checkpoint on the paper's benchmarks (or CHAMP, or the arithmetic world).

  python -m launch.evaluate --checkpoint=runs/default --benchmarks=arith --output=out/eval
  python -m launch.evaluate --checkpoint=runs/qwen3_4b --iteration=3 \
      --compare_to=runs/qwen3_4b --compare_iteration=0 --data_dir=data --output=out/it3_vs_base
  python -m launch.evaluate --checkpoint=SmolLM2-135M-Instruct.Q4_1.gguf --benchmarks=champ \
      --limit=20 --max_new_tokens=256 --output=out/champ

--checkpoint: a run workdir (its latest Solver; or --role / --iteration), an Orbax checkpoint
directory or step, an HF directory or a GGUF file. Benchmark files are read from --data_dir
(NAME.jsonl / .json / .parquet, or a folder NAME/); NAME=PATH names a file directly.
Writes OUTPUT/results.json, results.md and samples.jsonl (with --compare_to: one folder per
checkpoint and OUTPUT/comparison.md).
"""

import json
import os
import sys

from absl import app, flags, logging

_PAPER_BENCHMARKS = (
  "math500,gsm8k,amc23,minerva,olympiadbench,aime24,aime25,mmlu_pro,supergpqa,bbeh"
)

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate.")
_COMPARE_TO = flags.DEFINE_string(
  "compare_to",
  None,
  "Second checkpoint (or an earlier results.json) to compare with; "
  "differences are --checkpoint minus --compare_to.",
)
_COMPARE_ITERATION = flags.DEFINE_integer(
  "compare_iteration", None, "Iteration within --compare_to (0 = the run's base model)."
)
_ROLE = flags.DEFINE_enum(
  "role", "solver", ["solver", "challenger"], "Which role of a run workdir to evaluate."
)
_ITERATION = flags.DEFINE_integer(
  "iteration",
  None,
  "The role after this iteration (0 = the run's base model); default: the latest checkpoint.",
)
_BENCHMARKS = flags.DEFINE_string(
  "benchmarks",
  _PAPER_BENCHMARKS,
  "Comma-separated: math500, gsm8k, amc23, minerva, "
  "olympiadbench, aime24, aime25, mmlu_pro, supergpqa, bbeh, champ, arith; NAME=PATH; "
  "tfds:NAME[:SPLIT].",
)
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Folder holding the benchmark files.")
_MAX_NEW_TOKENS = flags.DEFINE_integer("max_new_tokens", 4096, "Generation budget per answer.")
_NUM_SAMPLES = flags.DEFINE_integer(
  "num_samples", 1, "Samples per problem: 1 = pass@1, k > 1 = mean@k (needs temperature > 0)."
)
_TEMPERATURE = flags.DEFINE_float("temperature", 0.0, "Sampling temperature; 0 = greedy.")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling threshold.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 32, "Prompts per generation call.")
_LIMIT = flags.DEFINE_integer("limit", None, "Evaluate only the first N problems of each set.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (unused when greedy).")
_BOXED = flags.DEFINE_enum(
  "boxed", "first", ["first", "last"], "Which \\boxed{} of a response is its answer."
)
_OUTPUT = flags.DEFINE_string("output", None, "Output folder.")
_DTYPE = flags.DEFINE_enum(
  "dtype", "float32", ["float32", "bfloat16"], "Parameter and activation dtype."
)
_MESH = flags.DEFINE_string(
  "mesh",
  "",
  "Device mesh: empty = one device; 'auto' = FSDP over all devices; or 'data=2,fsdp=2,tensor=2'.",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
_PROMPTS = flags.DEFINE_string(
  "prompts",
  "",
  "Solver prompt set: 'paper' or a world's ('arith'); default: the run's own "
  "(from WORKDIR/config.json) when --checkpoint is a run workdir, else 'paper'.",
)


def _prompt_set(checkpoint: str) -> str:
  if _PROMPTS.value:
    return _PROMPTS.value
  run_config = os.path.join(checkpoint or "", "config.json")
  if os.path.isdir(checkpoint or "") and os.path.exists(run_config):
    try:
      with open(run_config) as f:
        return json.load(f).get("prompts", "paper") or "paper"
    except (OSError, json.JSONDecodeError):
      pass
  return "paper"


flags.mark_flags_as_required(["checkpoint", "output"])


def _mesh(text: str):
  if not text:
    return None
  from rzero_jax import sharding

  if text == "auto":
    return sharding.make_mesh()
  shape = {}
  for part in text.split(","):
    name, sep, size = part.partition("=")
    if not sep or not size.strip().lstrip("-").isdigit():
      raise ValueError(f"--mesh: {part!r} is not AXIS=SIZE (e.g. data=2,fsdp=2,tensor=2)")
    shape[name.strip()] = int(size)
  return sharding.make_mesh(shape)


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    # Orbax logs every restore at INFO; the table and the progress bar are the output here.
    logging.set_verbosity(logging.WARNING)
  from rzero_jax.evaluation import runner

  if os.path.exists(_OUTPUT.value) and not os.path.isdir(_OUTPUT.value):
    # Checked before any compute: the results could not be written there afterwards.
    sys.exit(
      f"error: --output={_OUTPUT.value} is an existing file; expected a folder "
      "(it is created if missing)"
    )
  try:
    config = runner.EvalConfig(
      benchmarks=_BENCHMARKS.value,
      data_dir=_DATA_DIR.value,
      max_new_tokens=_MAX_NEW_TOKENS.value,
      num_samples=_NUM_SAMPLES.value,
      temperature=_TEMPERATURE.value,
      top_p=_TOP_P.value,
      batch_size=_BATCH_SIZE.value,
      limit=_LIMIT.value,
      seed=_SEED.value,
      boxed=_BOXED.value,
      prompts=_prompt_set(_CHECKPOINT.value),
    )
    runner.run(
      _CHECKPOINT.value,
      config,
      _OUTPUT.value,
      compare_to=_COMPARE_TO.value,
      role=_ROLE.value,
      iteration=_ITERATION.value,
      compare_iteration=_COMPARE_ITERATION.value,
      dtype=_DTYPE.value,
      mesh=_mesh(_MESH.value),
      progress=_PROGRESS.value,
    )
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  app.run(main)
