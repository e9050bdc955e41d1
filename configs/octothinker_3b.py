"""R-Zero on OctoThinker-3B-Hybrid-Base (Llama-3.2-3B family), the paper's settings.

The paper's hyper-parameters (docs/ALGORITHM.md, "Settings"): Challenger G=4, 5 steps; Solver G=5, 15 steps;
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
      --base_model=/path/to/OctoThinker-3B-Hybrid-Base --multihost
"""
from rzero_jax.rzero.config import paper_config


def get_config():
  return paper_config(tensor=1, max_rows_per_call=128, micro_batches=8)
