"""R-Zero on OctoThinker-3B-Hybrid-Base (Llama-3.2-3B family), the paper's settings.

The paper's hyper-parameters (reference §6): Challenger G=4, 5 steps; Solver G=5, 15 steps;
AdamW lr 1e-6, wd 0.01, clip 1.0; bf16 compute, float32 master weights and optimizer state,
rematerialised layers, fully sharded (FSDP) parameters.

Hardware: TPU v4-32 (16 chips) or v5p-8 (4 chips).

Memory budget (3.2B parameters, per role):
  params f32 13 GB + Adam moments f32 26 GB + gradients f32 13 GB
  = 51 GB sharded over 16 chips = 3.2 GB/chip while a role trains.
  The frozen other role and the KL reference add 6 GB each in bf16 (or move them to
  host memory with offload_idle=True). KV cache per generate call:
  28 layers x rows x 8 kv heads x (prompt + 4096) x 128 x 2 x 2 bytes
  = 90.2 GB at 128 rows and 6k tokens (5.6 GB/chip over 16 chips, batch-sharded);
  max_rows_per_call bounds it.

Run:
  python -m launch.train --config=configs/octothinker_3b.py --workdir=gs://BUCKET/octothinker_3b \
      --base_model=/path/to/OctoThinker-3B-Hybrid-Base (Llama-3.2-3B family) --multihost
"""
from rzero_jax.rzero.config import base_config


def get_config():
  c = base_config()
  c.iterations = 3
  c.prompts = "paper"
  c.model.dtype = "bfloat16"
  c.model.param_dtype = "float32"
  c.model.remat = "full"
  c.offload_idle = True
  c.mesh.data = 1
  c.mesh.fsdp = -1
  c.mesh.tensor = 1
  c.challenger.max_new_tokens = 4096
  c.solver.max_new_tokens = 4096
  c.sampling.answer_max_new_tokens = 4096
  c.sampling.max_rows_per_call = 128
  for role in (c.challenger, c.solver):
    role.learner.micro_batches = 8
    role.learner.logprob_chunk = 512
  c.eval.benchmarks = "math500,gsm8k,amc23,minerva,olympiadbench,aime24,aime25"
  c.eval.max_new_tokens = 4096
  return c
