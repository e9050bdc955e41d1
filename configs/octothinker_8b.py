"""R-Zero on OctoThinker-8B-Hybrid-Base (Llama-3.1-8B family), the paper's settings.

The paper's hyper-parameters (docs/ALGORITHM.md, "Settings"): Challenger G=4, 5 steps; Solver G=5, 15 steps;
AdamW lr 1e-6, wd 0.01, clip 1.0; bf16 compute, float32 master weights and optimizer state,
rematerialised layers, fully sharded (FSDP) parameters.

Hardware: TPU v4-32 (16 chips, 32 GB HBM each).

Memory budget (8.0B parameters, per role):
  params f32 32 GB + Adam moments f32 64 GB + gradients f32 32 GB
  = 128 GB sharded over 16 chips = 8.0 GB/chip while a role trains.
  The frozen other role and the KL reference add 16 GB each in bf16 (or move them to
  host memory with offload_idle=True). KV cache per generate call:
  32 layers x rows x 8 kv heads x (prompt + 4096) x 128 x 2 x 2 bytes
  = 51.5 GB at 64 rows and 6k tokens (3.2 GB/chip over 16 chips, batch-sharded);
  max_rows_per_call bounds it.

Run:
  python -m launch.train --config=configs/octothinker_8b.py --workdir=gs://BUCKET/octothinker_8b \
      --base_model=/path/to/OctoThinker-8B-Hybrid-Base --multihost
"""
from rzero_jax.rzero.config import paper_config


def get_config():
  return paper_config(tensor=2, max_rows_per_call=64, micro_batches=16)
