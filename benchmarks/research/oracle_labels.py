"""Question: how much of the Solver phase's shortfall is label noise? The default R-Zero run with
every kept question relabelled by its true answer.

Everything else is the real run (same Challenger, same band filter on the majority vote, same
seeds); only the label the Solver is rewarded against is replaced by the arithmetic world's
exact answer. Perfect labels are the best case of the Solver phase, so comparing this run's
held-out accuracy with the real run's separates label noise from everything else.

Never a way to train: R-Zero's phases must not see true answers, and `launch.train` has no
switch for this.

  .venv/bin/python benchmarks/research/oracle_labels.py --workdir=runs/oracle [--config.X=...]
"""

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, REPO)

from rzero_jax.rzero import dataset  # noqa: E402
from rzero_jax.worlds import arith  # noqa: E402

_majority_dataset = dataset.build_dataset


def _relabelled_dataset(questions, answers, **kwargs):
  records, stats = _majority_dataset(questions, answers, **kwargs)
  relabelled = []
  for record in records:
    truth = arith.true_answer(record["question"])
    if truth is not None:
      relabelled.append({**record, "label": str(truth)})
  stats = {**stats, "kept": len(relabelled)}
  return relabelled, stats


if __name__ == "__main__":
  from absl import app

  # phases.build_dataset calls dataset.build_dataset through the module, so this is the one
  # place the labels change.
  dataset.build_dataset = _relabelled_dataset
  import launch.train  # noqa: E402  (reads the --config flags at import)

  app.run(launch.train.main)
