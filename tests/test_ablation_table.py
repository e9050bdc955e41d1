"""benchmarks/ablation.py's aggregation: the frontier is the mean of levels 5-8, gains are the
last iteration minus the base per seed, the mode difference is paired by seed, and the spread
is the sample standard deviation over seeds."""

import importlib.util
import os

import pytest

_PATH = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "ablation.py")
_spec = importlib.util.spec_from_file_location("ablation_benchmark", _PATH)
ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ablation)


def _evals(front_by_iter, l1=1.0):
  """Design-set evaluations whose levels 5-8 hold the given accuracies (level 8 carries the
  offset, so the frontier mean is not any single level's value)."""
  out = {}
  for t, f in front_by_iter.items():
    e = {"accuracy": 0.5, "arith_design/1/accuracy": l1}
    for lvl in (5, 6, 7):
      e[f"arith_design/{lvl}/accuracy"] = f
    e["arith_design/8/accuracy"] = f + 0.04
    out[t] = e
  return out


def _run(front_by_iter):
  return {"evals": {"arith_design": _evals(front_by_iter), "arith": {}}}


def test_frontier_is_mean_of_levels_5_to_8_and_none_when_one_is_missing():
  e = _evals({0: 0.1})[0]
  assert ablation.frontier_of(e, "arith_design") == pytest.approx(0.11)
  del e["arith_design/7/accuracy"]
  assert ablation.frontier_of(e, "arith_design") is None


def test_gains_use_the_last_iteration_and_the_difference_is_paired_by_seed():
  by_mode = {
    "rzero": {
      0: _run({0: 0.0, 1: 0.5, 3: 0.10}),
      1: _run({0: 0.0, 3: 0.20}),
      2: _run({0: 0.0, 3: 0.30}),
    },
    "base_challenger": {0: _run({0: 0.0, 3: 0.05}), 2: _run({0: 0.0, 3: 0.10})},
  }
  rz = ablation.frontier_gains(by_mode["rzero"], "arith_design")
  assert rz == pytest.approx({0: 0.10, 1: 0.20, 2: 0.30})
  _, rows = ablation.gain_table(by_mode, "arith_design")
  diff = rows["R-Zero − Base Challenger (paired by seed)"]
  assert diff == pytest.approx({0: 0.05, 2: 0.20})  # seed 1 has no baseline: left out
  m, sd = ablation.mean_sd(diff.values())
  assert m == pytest.approx(0.125) and sd == pytest.approx(0.10606601717798213)


def test_accuracy_table_prints_mean_and_sample_sd_over_seeds():
  by_mode = {"rzero": {0: _run({0: 0.0, 1: 0.10}), 1: _run({0: 0.0, 1: 0.30})}}
  table = ablation.accuracy_table(by_mode, "arith_design").splitlines()
  assert len(table) == 4  # header, rule, base, iter 1
  cells = [c.strip() for c in table[3].split("|")[1:-1]]
  assert cells[:2] == ["R-Zero", "iter 1"]
  assert cells[-1] == "21.0 ±14.1"  # frontier: (0.11, 0.31) -> 21.0 ± 14.1
  assert cells[3] == "100.0 ±0.0"  # level 1
  assert ablation.fmt([]) == "–" and ablation.fmt([None]) == "–"


def test_band_table_divides_kept_by_written_per_level():
  run = {
    "mix": {
      "written": {1: {5: 40, 1: 10}, 2: {5: 60}},
      "kept": {1: {5: 10}, 2: {5: 15}},
      "kept_right": {1: {5: 5}, 2: {5: 10}},
    }
  }
  lines = ablation.band_table({"rzero": {0: run}}).splitlines()
  by_name = {
    line.split("|")[2].strip(): [c.strip() for c in line.split("|")[3:-1]] for line in lines[2:]
  }
  assert by_name["written"][4] == "100" and by_name["written"][0] == "10"
  assert by_name["kept by the band (%)"][4] == "25.0"
  assert by_name["kept by the band (%)"][0] == "0.0"
  assert by_name["kept labels right (%)"][4] == "60"
  assert by_name["kept labels right (%)"][0] == "–"
