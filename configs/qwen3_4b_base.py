"""R-Zero on Qwen3-4B-Base, the paper's settings.

The paper's hyper-parameters (docs/ALGORITHM.md, "Settings"): Challenger G=4, 5 steps; Solver G=5, 15 steps;
AdamW lr 1e-6, wd 0.01, clip 1.0; bf16 compute, float32 master weights and optimizer state,
rematerialised layers, fully sharded (FSDP) parameters.

Hardware: TPU v4-32 (16 chips, 32 GB HBM each) or v5p-8 (4 chips, 95 GB HBM each).

Memory budget (4.0B parameters, per role):
  params f32 16 GB + Adam moments f32 32 GB + gradients f32 16 GB
  = 64 GB sharded over 16 chips = 4.0 GB/chip while a role trains.
  The frozen other role and the KL reference add 8 GB each in bf16 (or move them to
  host memory with offload_idle=True). KV cache per generate call:
  36 layers x rows x 8 kv heads x (prompt + 4096) x 128 x 2 x 2 bytes
  = 116.0 GB at 128 rows and 6k tokens (7.2 GB/chip over 16 chips, batch-sharded);
  max_rows_per_call bounds it.

Run:
  python -m launch.train --config=configs/qwen3_4b_base.py --workdir=gs://BUCKET/qwen3_4b_base \
      --base_model=/path/to/Qwen3-4B-Base --multihost
"""
from rzero_jax.rzero.config import paper_config


def get_config():
  return paper_config(tensor=1, max_rows_per_call=128, micro_batches=8)
