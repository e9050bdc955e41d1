"""experiment.run tells the user's bad input (one line from the launcher) from a bug in the
run (a traceback): only errors raised while the input is checked and loaded are UserErrors."""

import pytest

from configs import arith_tiny
from rzero_jax.rzero import experiment, loop


def _config(tmp_path):
  config = arith_tiny.get_config()
  with config.unlocked():
    config.base_model = str(tmp_path / "model")  # given: no world base model is built
  return config


def test_a_bug_during_the_run_keeps_its_traceback(tmp_path, monkeypatch):
  monkeypatch.setattr(loop, "setup", lambda *a, **k: "prepared")

  def run(*a, **k):  # what jax raised at the first train step before the multihost fixes
    raise ValueError("Passing non-trivial shardings for numpy inputs is not allowed")

  monkeypatch.setattr(loop, "run", run)
  with pytest.raises(ValueError, match="non-trivial shardings") as info:
    experiment.run(_config(tmp_path), str(tmp_path / "run"))
  assert not isinstance(info.value, experiment.UserError)


def test_a_bad_base_model_is_a_user_error(tmp_path, monkeypatch):
  def setup(*a, **k):
    raise FileNotFoundError(f"{tmp_path / 'model'}: no such directory")

  monkeypatch.setattr(loop, "setup", setup)
  with pytest.raises(experiment.UserError, match="model: no such directory"):
    experiment.run(_config(tmp_path), str(tmp_path / "run"))


def test_a_changed_config_is_a_user_error(tmp_path):
  config = _config(tmp_path)
  loop.check_config(str(tmp_path / "run"), config, False)
  with config.unlocked():
    config.solver.steps += 1
  with pytest.raises(experiment.UserError, match="solver.steps"):
    experiment.run(config, str(tmp_path / "run"))
