"""R-Zero on Qwen3-4B-Base, the paper's settings.

The paper's hyper-parameters (docs/ALGORITHM.md, "Settings"): Challenger G=4, 5 steps;
Solver G=5, 15 steps; AdamW lr 1e-6, wd 0.01, clip 1.0; bf16 compute, float32 master weights
and optimizer state, rematerialised layers, fully sharded (FSDP) parameters over every chip.

Hardware: TPU v5p-8 (4 chips) or v4-16 (8 chips). Memory: the TPU compiler's per-chip figures
for every phase (sampling, logprobs, train step, plus what stays resident: the KL reference
and the frozen other role as bf16 copies on the devices) are in benchmarks/RESULTS.md,
"memory_plan.py"; they set this file's rows per generate call and micro-batches (64 Challenger /
640 Solver rows per update, split so that a micro-batch divides over 32 devices); both slices
run this file as it is. Recompute them after a change:
  make memory-plan CONFIG=configs/qwen3_4b_base.py TOPOLOGY=v5p:2x2x1   (and TOPOLOGY=v4:2x2x2)

Run:
  python -m launch.train --config=configs/qwen3_4b_base.py --workdir=gs://BUCKET/qwen3_4b_base \
      --base_model=/path/to/Qwen3-4B-Base --multihost
"""

from rzero_jax.rzero.config import paper_config


def get_config():
  return paper_config(tensor=1, max_rows_per_call=64, micro_batches=2, solver_micro_batches=20)
