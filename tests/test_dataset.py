"""Solver dataset: the exact kept set and statistics on a fixture, and a JSONL never left partial."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from rzero_jax.rzero import dataset

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# (question, m = 4 Solver answers). Comments: what happens to it, and p_hat where it is voted.
FIXTURE = [
  ("What is 2+3?", ["5", "5", "4", "6"]),  # 0: kept, p 0.5
  ("Prove that sqrt(2) is irrational.", ["x", "x", "x", "y"]),  # 1: proof
  ("Show that n^2 >= 0 for every real n.", ["1", "1", "2", "3"]),  # 2: proof
  ("证明：1+1=2。", ["2", "2", "2", "1"]),  # 3: proof
  ("Put 5 balls in 3 boxes: how many ways?", ["21", "21", "20", "3"]),  # 4: mentions "box"
  ("  What is 2+3?  ", ["5", "5", "5", "5"]),  # 5: exact duplicate of 0 (after stripping)
  ("Compute 7*8.", [None, None, None, "56"]),  # 6: "no answer" wins (p 0.75)
  ("Name the day after Monday.", ["\\text{Tuesday}"] * 3 + ["Wed"]),  # 7: \text{ label (p 0.75)
  ("What is 10/4?", ["2.5", "\\frac{5}{2}", "5/2", "3"]),  # 8: kept, label 2.5, p 0.75
  ("Find x if 2x = 2.", ["1", "1", "1", "1"]),  # 9: out of band (p 1)
  ("Find the largest prime below 20.", ["19", "17", "13", "11"]),  # 10: p 0.25: paper yes, code no
  ("What is 0/0?", ["no answer", "No Answer", "1", "2"]),  # 11: literal "no answer" label (p 0.5)
  ("Improve on 3+4: what is it?", ["7", "7", "8", "9"]),  # 12: kept ("improve" is no proof), p 0.5
  ("A boxer throws 3 punches per second; how many in a minute?", ["180"] * 4),  # 13: "box"
]
QUESTIONS = [q for q, _ in FIXTURE]
ANSWERS = [a for _, a in FIXTURE]


def test_paper_band_kept_set_and_stats():
  meta = [{"truth": k} for k in range(len(FIXTURE))]
  records, stats = dataset.build_dataset(QUESTIONS, ANSWERS, meta=meta)
  assert [(r["question"], r["label"], r["p_hat"]) for r in records] == [
    ("What is 2+3?", "5", 0.5),
    ("What is 10/4?", "2.5", 0.75),
    ("Find the largest prime below 20.", "19", 0.25),
    ("Improve on 3+4: what is it?", "7", 0.5),
  ]
  assert [r["meta"] for r in records] == [{"truth": 0}, {"truth": 8}, {"truth": 10}, {"truth": 12}]
  assert records[1]["answers"] == ["2.5", "\\frac{5}{2}", "5/2", "3"]
  assert stats == {
    "candidates": 14,
    "dropped": {
      "proof": 3,
      "mentions_box": 2,
      "duplicate": 1,
      "no_label": 2,
      "text_label": 1,
      "out_of_band": 1,
    },
    "after_question_filters": 9,
    "after_dedup": 8,
    "after_label_filters": 5,
    "kept": 4,
    "kept_fraction": 4 / 14,
    "band": [0.25, 0.75],
    "p_hat_histogram": {"0.2500": 1, "0.5000": 3, "0.7500": 3, "1.0000": 1},
  }


def test_code_band():
  records, stats = dataset.build_dataset(QUESTIONS, ANSWERS, band=(0.3, 0.8))
  assert [r["question"] for r in records] == [
    "What is 2+3?",
    "What is 10/4?",
    "Improve on 3+4: what is it?",
  ]
  assert stats["dropped"]["out_of_band"] == 2 and stats["band"] == [0.3, 0.8]
  assert "meta" not in records[0]


def test_band_edges_are_closed_for_m_of_ten():
  qs = [f"Question number {k}?" for k in range(11)]
  answers = [["1"] * k + [str(10 + j) for j in range(10 - k)] for k in range(11)]  # p_hat = k/10
  # Majority of k copies of "1" when k >= 2; with k <= 1 every answer is its own cluster: p 0.1.
  code, _ = dataset.build_dataset(qs, answers, band=(0.3, 0.8))
  assert [r["p_hat"] for r in code] == [0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
  paper, _ = dataset.build_dataset(qs, answers, delta=0.25)
  assert [r["p_hat"] for r in paper] == [0.3, 0.4, 0.5, 0.6, 0.7]
  narrow, _ = dataset.build_dataset(qs, answers, delta=0.2)
  assert [r["p_hat"] for r in narrow] == [0.3, 0.4, 0.5, 0.6, 0.7]


def test_bad_arguments():
  with pytest.raises(ValueError, match="differ"):
    dataset.build_dataset(["q"], [])
  with pytest.raises(ValueError, match="band"):
    dataset.build_dataset(["q"], [["1"]], band=(0.8, 0.3))
  with pytest.raises(ValueError, match="delta"):
    dataset.build_dataset(["q"], [["1"]], delta=0.7)
  with pytest.raises(ValueError, match="meta"):
    dataset.build_dataset(["q"], [["1"]], meta=[])
  with pytest.raises(ValueError, match="empty"):
    dataset.build_dataset(["q"], [[]])


# ------------------------------------------------------------------------------ atomic JSONL


def test_round_trip(tmp_path):
  records, _ = dataset.build_dataset(
    QUESTIONS, ANSWERS, meta=[{"k": k} for k in range(len(FIXTURE))]
  )
  path = tmp_path / "iter_1.jsonl"
  dataset.write_jsonl_atomic(path, records)
  assert dataset.read_jsonl(path) == records
  assert os.listdir(tmp_path) == ["iter_1.jsonl"]


def test_failure_midway_leaves_the_old_file(tmp_path):
  path = tmp_path / "data.jsonl"
  old = [{"question": "old", "label": "1", "p_hat": 0.5, "answers": ["1", "2"]}]
  dataset.write_jsonl_atomic(path, old)
  before = path.read_bytes()

  def records_then_crash():
    for k in range(1000):
      yield {"question": f"q{k}", "label": "1", "p_hat": 0.5, "answers": ["1"]}
    raise RuntimeError("generator died mid-write")

  with pytest.raises(RuntimeError, match="mid-write"):
    dataset.write_jsonl_atomic(path, records_then_crash())
  assert path.read_bytes() == before
  assert os.listdir(tmp_path) == ["data.jsonl"]  # no temporary file left behind

  with pytest.raises(ValueError, match="record 1 .*JSON"):
    dataset.write_jsonl_atomic(path, [old[0], {"question": object()}])
  assert path.read_bytes() == before and os.listdir(tmp_path) == ["data.jsonl"]


def test_a_process_killed_mid_write_never_leaves_a_partial_file(tmp_path):
  path = tmp_path / "data.jsonl"
  script = textwrap.dedent(
    f"""
        import sys, time
        from rzero_jax.rzero import dataset
        path = {str(path)!r}
        dataset.write_jsonl_atomic(path, [{{"question": "old", "label": "1", "p_hat": 0.5, "answers": ["1"]}}])

        def slow_big_dataset():
            for k in range(10_000_000):
                if k == 1000:
                    print("writing", flush=True)
                if k % 1000 == 0:
                    time.sleep(0.001)
                yield {{"question": "q" * 200 + str(k), "label": str(k), "p_hat": 0.5, "answers": [str(k)] * 10}}

        dataset.write_jsonl_atomic(path, slow_big_dataset())
        """
  )
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env)
  try:
    assert proc.stdout.readline() == b"writing\n"
    time.sleep(0.3)
    temporaries = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert temporaries, "the writer should be in the middle of its temporary file"
    assert os.path.getsize(tmp_path / temporaries[0]) > 0
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  # The target is the old, complete file: never the partial new one.
  assert dataset.read_jsonl(path) == [
    {"question": "old", "label": "1", "p_hat": 0.5, "answers": ["1"]}
  ]


def test_read_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="missing.jsonl"):
    dataset.read_jsonl(tmp_path / "missing.jsonl")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"question": "q", "label": "1", "p_hat": 0.5, "answers": []}\n{not json\n')
  with pytest.raises(ValueError, match="bad.jsonl:2"):
    dataset.read_jsonl(bad)
  bad.write_text(json.dumps({"question": "q"}) + "\n")
  with pytest.raises(ValueError, match="lacks fields"):
    dataset.read_jsonl(bad)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    dataset.write_jsonl_atomic(tmp_path / "no_such_dir" / "x.jsonl", [])
