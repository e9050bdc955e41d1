"""The embedded default: R-Zero in a small arithmetic world, on a laptop CPU.

The base model is a small Qwen3-architecture model that the project pretrains itself on the
world's documents (built once, then cached under ~/.cache/rzero-jax); then 3 R-Zero iterations.
The whole run, base-model build included, took 260 s on a 2-core CPU (benchmarks/RESULTS.md).

  python -m launch.train --workdir=runs/default
"""

from rzero_jax.rzero.config import base_config


def get_config():
  c = base_config()
  c.seed = 0
  c.iterations = 3
  c.prompts = "arith"
  c.world.name = "arith"
  c.world.cache_dir = ""  # "" = ~/.cache/rzero-jax
  # How the base model is built (rzero_jax.worlds.base_model.BaseModelSpec); its hash is the
  # cache key, so changing any of these builds a new base model. Some authors of the corpus give
  # up on harder problems (guess_fractions, per level): the base model then gives up greedily
  # at the frontier, while its sampled attempts still work many of those problems out and
  # agree with each other, which is what R-Zero's majority votes reward. What was chosen on what
  # (benchmarks/RESULTS.md): this corpus (the give-up shares) and the base model were chosen on
  # training-distribution problems (arith_design sets); the held-out sets were run once after.
  c.world.base = dict(
    seed=0,
    hidden_size=64,
    intermediate_size=256,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=16,
    vocab_size=256,
    num_docs=144_000,
    steps=18_000,
    batch_size=8,
    learning_rate=3e-3,
    challenger_fraction=0.2,
    careless_fraction=0.0,
    results_first_fraction=0.0,
    guess_fractions=(0.0, 0.0, 0.0, 0.2, 0.55, 0.6, 0.6, 0.6),
    guess_style="give_up",
  )

  c.challenger.steps = 10
  c.challenger.prompts_per_step = 32
  c.challenger.group_size = 4
  c.challenger.prompts_per_update = 32
  c.challenger.max_new_tokens = 48
  c.challenger.solver_samples = 10
  c.challenger.learner.learning_rate = 1e-4
  c.challenger.learner.kl_coef = 0.01

  c.dataset.num_questions = 1024
  c.dataset.solver_samples = 10
  # The Challenger's budget in the dataset phase: its questions here are at most ~40 tokens (the
  # paper configs keep the official 4,096). The whole-Solver-prompt cap stays the official 2,048.
  c.dataset.max_new_tokens = 48
  # The band was chosen on pseudo-label accuracy measured on this world's TRAINING questions
  # (majority labels right 18-54% of the time at p_hat 0.3-0.6, 78% at 0.7; at the paper's band
  # [0.25, 0.75] kept labels were 47%, 44%, 30% right over three iterations, here 87%, 78%, 69%).
  # But it was adopted from a table (RESULTS.md, variants v0-v4) whose frontier column is
  # HELD-OUT accuracy, so the held-out figures were in view when it was chosen: the band is not
  # held-out-blind, unlike the corpus above.
  c.dataset.band_low = 0.5
  c.dataset.band_high = 0.9

  c.solver.steps = 60
  c.solver.prompts_per_step = 16
  c.solver.group_size = 5
  c.solver.prompts_per_update = 16
  c.solver.max_new_tokens = 96
  c.solver.learner.learning_rate = 1e-4
  c.solver.learner.kl_coef = 0.01
  # The official run refuses a dataset below one full Solver batch (512); here a batch is 16
  # questions and an iteration keeps about 150.
  c.solver.min_questions = 16
  # Paper-vs-official switches (docs/ALGORITHM.md) keep base_config's defaults, chosen by the
  # rule, not on this world: grader "mathruler", solver.reward_form "paper" (binary; this model
  # writes no <think> tags), aggregation "seq-mean-token-mean".

  c.sampling.answer_max_new_tokens = 96
  # 64 questions x 10 answers a call. On the 2-core CPU the tiny model's decode runs at about
  # 100k tokens/s from 256 to 2,048 rows a call (benchmarks/RESULTS.md); 640 rows was the
  # fastest size measured when this was set.
  c.sampling.max_rows_per_call = 640

  c.checkpoint.max_to_keep = 2
  c.eval.benchmarks = "arith"
  c.eval.max_new_tokens = 96
  c.eval.batch_size = 256
  return c
