"""benchmarks/memory_plan.py's arithmetic and table (the TPU compile itself runs outside CI:
`make memory-plan`)."""

import pytest

from benchmarks import memory_plan as mp
from rzero_jax import models

GB = mp.GB


def test_slice_names_count_tensorcores_and_v4_lists_one_device_per_core():
  assert mp.slice_name("v5p:2x2x1", 4) == "v5p-8"  # 4 megacore chips
  assert mp.slice_name("v4:2x2x2", 16) == "v4-16"  # 8 chips, listed as 16 devices
  assert mp.slice_name("v4:2x2x4", 32) == "v4-32"
  assert mp.slice_name("v5e:2x4", 8) == "v5e-8"
  # A v4 device is one TensorCore: half the chip's 32 GiB.
  assert mp.CHIPS["v4"]["hbm"] / mp.CHIPS["v4"]["devices_per_chip"] == 16 * 2**30
  with pytest.raises(ValueError, match="--topology"):
    mp.chip_of("v9:2x2")


def test_verdict_needs_ten_percent_headroom():
  assert mp.verdict(85.5 * GB, 95 * GB) == "FITS"
  assert mp.verdict(85.6 * GB, 95 * GB) == "DOES NOT FIT"


def test_phase_rows_add_what_stays_resident_beside_each_program():
  programs = {
    name: mp.Program(arguments=10 * GB, outputs=2 * GB, aliased=1 * GB, temps=5 * GB)
    for name in ("prefill", "decode", "answers_decode", "logprobs")
  }
  resident = dict(
    params=4 * GB, opt=8 * GB, frozen=2 * GB, ref=2 * GB, _errors={"train_step": 200 * GB}
  )
  rows = mp.phase_rows(programs, resident, hbm=30 * GB)
  by = {(r["phase"], r["step"], r["program"]): r for r in rows}
  # While the Challenger samples: its Adam moments, the KL reference and the frozen Solver.
  r = by[("challenger", "rollouts", "decode")]
  assert r["program_bytes"] == 16 * GB and r["resident"] == 12 * GB
  assert r["total"] == 28 * GB and r["verdict"] == "DOES NOT FIT"  # 28 > 0.9 x 30
  # The Challenger phase's Solver answers: its own program (a longer prompt bucket), beside the
  # Challenger's float32 params and Adam moments and the KL reference.
  r = by[("challenger", "solver answers", "answers_decode")]
  assert r["resident"] == 4 * GB + 8 * GB + 2 * GB
  # The Solver's rollouts: no frozen other role.
  assert by[("solver", "rollouts", "decode")]["total"] == 16 * GB + 10 * GB
  # A program the compiler refused is counted at the compiler's figure, never as fitting.
  r = by[("solver", "update", "train_step")]
  assert r["program_bytes"] is None and r["total"] == 202 * GB
  assert r["verdict"] == "DOES NOT FIT"
  table = mp.format_table(rows, 30 * GB)
  assert table.count("\n") == len(rows) + 1 and "| solver | update | train_step | – |" in table


def test_oom_message_is_read():
  msg = (
    "RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory "
    "space hbm. Used 120.50G of 95.74G hbm. Exceeded hbm capacity by 24.76G."
  )
  assert mp.oom_bytes(msg) == pytest.approx(120.5 * 2**30)
  msg = (
    "RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO "
    "temporaries (37.97G) exceeds available HBM (15.25G)."
  )
  assert mp.oom_bytes(msg) == pytest.approx(37.97 * 2**30)
  assert mp.oom_bytes("something else") is None


@pytest.mark.parametrize("name", sorted(mp.ARCHITECTURES))
def test_architectures_are_the_papers_model_sizes(name):
  cfg = models.from_hf_dict(mp.ARCHITECTURES[name], where=name)
  want = {
    "qwen3_4b_base": 4.02e9,
    "qwen3_8b_base": 8.19e9,
    "octothinker_3b": 3.21e9,
    "octothinker_8b": 8.03e9,
  }[name]
  assert cfg.num_params == pytest.approx(want, rel=0.01)


@pytest.mark.parametrize("name", sorted(mp.TARGETS))
def test_paper_configs_split_their_batches_evenly_on_their_slices(name):
  config = mp.load_config(f"configs/{name}.py")
  for topology, devices in mp.TARGETS[name]:
    assert not mp.split_problems(config, devices), (name, topology)
  # The check can fail: 640 rows in 8 micro-batches do not split over 32 devices.
  config.solver.learner.micro_batches = 8
  assert mp.split_problems(config, 32)


def test_paper_cost_counts_the_papers_workload():
  from benchmarks import paper_cost as pc

  m = pc.model_of(mp.ARCHITECTURES["qwen3_4b_base"])
  assert m.kv_bytes_per_token == 36 * 8 * 128 * 2 * 2
  config = mp.load_config("configs/qwen3_4b_base.py")
  costs = pc.workload(config, m, 1.0, 512, as_today=False)
  # The Challenger's Solver answers: 5 steps x 2,048 questions x m=10, 4,096 tokens each.
  answers = costs["challenger"]["solver answers"]
  per_token = 2 * m.matmul_params + m.attention_flops(512 + 4096 / 2)
  assert answers.flops == pytest.approx(5 * 2048 * 10 * 4096 * per_token)
  # Half the budget: fewer tokens and a shorter mean context, so less than half the bytes.
  half = pc.workload(config, m, 0.5, 512, as_today=False)["challenger"]["solver answers"]
  assert half.bytes < answers.bytes / 2
  # As the sampler runs today, a call decodes to its budget over the whole cache.
  today = pc.workload(config, m, 0.5, 512)["challenger"]["solver answers"]
  assert today.bytes > answers.bytes
  # Calls that end with their rows (at half the budget) take half the steps of calls that run
  # to the budget, each still reading the whole cache: more bytes than written-slot reads.
  short = pc.workload(config, m, 0.5, 512, calls_to_budget=False)["challenger"]["solver answers"]
  assert short.flops == pytest.approx(today.flops / 2)
  assert half.bytes < short.bytes < today.bytes
  roof, real = pc.seconds(pc.Cost(flops=0.0, bytes=4 * 2.76e12), 4, 459e12, 2.76e12)
  assert roof == pytest.approx(1.0) and real == pytest.approx(1.0 / pc.DECODE_EFFICIENCY)
  roof, real = pc.seconds(pc.Cost(flops=4 * 459e12, kind="train"), 4, 459e12, 2.76e12)
  assert roof == pytest.approx(1.0) and real == pytest.approx(1.0 / pc.TRAIN_MFU)


def test_programs_left_out_say_not_run_and_never_fit():
  programs = {"train_step": mp.Program(arguments=1 * GB, outputs=0, aliased=0, temps=1 * GB)}
  resident = dict(params=1 * GB, opt=2 * GB, frozen=0.5 * GB, ref=0.5 * GB, _errors={})
  skipped = {"prefill", "decode", "answers_decode", "logprobs"}
  rows = mp.phase_rows(programs, resident, hbm=30 * GB, skipped=skipped)
  for r in rows:
    if r["program"] in skipped:
      assert r["total"] is None and r["verdict"] == "not run"
    else:
      assert r["verdict"] == "FITS" and r["total"] is not None
  table = mp.format_table(rows, 30 * GB)
  assert "| solver | rollouts | decode | – | 2.5 | – | 30.0 | not run |" in table
  # A program that was run but did not compile still reads as a failure, not as "not run".
  rows = mp.phase_rows({}, resident, hbm=30 * GB, skipped=skipped)
  assert {r["verdict"] for r in rows if r["program"] == "train_step"} == {"DOES NOT FIT"}


def test_default_prompt_bucket_is_the_longest_solver_prompts_bucket():
  config = mp.load_config("configs/qwen3_4b_base.py")
  assert config.dataset.max_solver_prompt_tokens == 2048
  assert mp.default_prompt_bucket(config) == 2048
  config.dataset.max_solver_prompt_tokens = 2049
  assert mp.default_prompt_bucket(config) == 4096
  # A Challenger question may fill its 4,096-token budget; the Solver's template adds to it.
  assert config.challenger.max_new_tokens == 4096
  assert mp.default_answers_bucket(config) == 8192
  with pytest.raises(ValueError, match="--programs"):
    mp.plan(config, "v5p:2x2x1", "qwen3_4b_base", 2048, programs_to_run=("decoder",))


@pytest.mark.parametrize(
  "n, limit, shards", [(10, 64, 1), (4, 64, 1), (2048, 64, 1), (5, 8, 4), (10, 64, 16), (20, 8, 4)]
)
def test_call_shape_is_the_largest_call_generate_rows_makes(monkeypatch, n, limit, shards):
  from rzero_jax import sampling
  from rzero_jax.rzero import phases

  calls = []

  class Out:
    def __init__(self, prompts, n):
      self.tokens = [[0] for _ in range(len(prompts) * n)]
      self.logprobs = [[0.0] for _ in self.tokens]
      self.finish_reasons = ["length"] * len(self.tokens)

  def fake_generate(cfg, params, prompts, *, n, seed, **kw):
    calls.append((sampling.batch_bucket(len(prompts), shards), n))
    return Out(prompts, n)

  monkeypatch.setattr(phases.sampling, "generate", fake_generate)
  monkeypatch.setattr(phases, "_batch_shards", lambda env: shards)
  monkeypatch.setattr(sampling, "_batch_shards", lambda mesh, rules: shards)
  env = phases.Env(
    cfg=None,
    tokenizer=None,
    mesh=None,
    rules=None,
    prompt_set=None,
    stop_token_ids=(),
    max_rows_per_call=limit,
  )
  phases.generate_rows(
    env, None, [[1]] * 300, n=n, seed=0, max_new_tokens=1, temperature=1.0, top_p=1.0, top_k=0
  )
  per_call = sampling.prompts_per_call(limit, n)
  largest = max(calls, key=lambda c: (c[0] * c[1], c[0]))
  assert mp.call_shape(n, limit, shards, per_call) == largest


@pytest.mark.parametrize("name", ["qwen3_8b_base", "octothinker_8b"])
def test_the_8b_configs_v5p_override_splits_evenly_there_and_is_documented(name):
  config = mp.load_config(f"configs/{name}.py")
  override = "--config.challenger.learner.micro_batches=4 --config.solver.learner.micro_batches=40"
  assert override in open(f"configs/{name}.py").read()
  config.challenger.learner.micro_batches = 4
  config.solver.learner.micro_batches = 40
  assert not mp.split_problems(config, 4)  # v5p-8: 16-row micro-batches, 4 rows per chip
  assert mp.split_problems(config, 32)  # why it is not the file's own value (v4-32)
