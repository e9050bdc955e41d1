"""Writes a checkpoint as an HF directory (config.json, safetensors, tokenizer, chat template)
that `transformers.AutoModelForCausalLM` / `AutoTokenizer` and vLLM load.

  python -m launch.export --checkpoint=runs/default --output=out/solver_hf
  python -m launch.export --checkpoint=runs/qwen3_4b --iteration=2 --dtype=bfloat16 \
      --output=out/qwen3_4b_it2

--checkpoint takes what launch/evaluate.py takes: a run workdir (its latest Solver; or --role /
--iteration), an Orbax checkpoint directory or step, an HF directory or a GGUF file.
--output must not exist yet (or be an empty folder).
"""

import sys

from absl import app, flags, logging

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Checkpoint to export.")
_ROLE = flags.DEFINE_enum(
  "role", "solver", ["solver", "challenger"], "Which role of a run workdir to export."
)
_ITERATION = flags.DEFINE_integer(
  "iteration",
  None,
  "The role after this iteration (0 = the run's base model); default: the latest checkpoint.",
)
_OUTPUT = flags.DEFINE_string("output", None, "New folder to write the HF directory into.")
_DTYPE = flags.DEFINE_enum(
  "dtype", "float32", ["float32", "bfloat16"], "dtype of the written weights."
)
flags.mark_flags_as_required(["checkpoint", "output"])


def main(argv):
  if len(argv) > 1:
    sys.exit(f"error: unexpected arguments {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every restore at INFO
  from rzero_jax.evaluation import export

  try:
    export.check_output(_OUTPUT.value)
  except export.OutputError as e:
    sys.exit(f"error: --output: {e}")
  try:
    out = export.export(
      _CHECKPOINT.value,
      _OUTPUT.value,
      role=_ROLE.value,
      iteration=_ITERATION.value,
      dtype=_DTYPE.value,
    )
  except (ValueError, FileNotFoundError) as e:
    message = str(e)
    sys.exit(f"error: {message}" if message.startswith("--") else f"error: --checkpoint: {message}")
  print(out)


if __name__ == "__main__":
  app.run(main)
