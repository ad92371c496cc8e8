"""A rejected `dvc exp run -S ...` leaves the frozen settings alone and says how to restore params.yaml.

Issue 15: `dvc exp run -S training.learning_rate=1e3` used to delete the git-tracked
params/<code>/*.json (DVC removes a stage's outputs before running it) and leave the rejected
value in params.yaml without a word. Driven with real git + DVC on the real `config@<code>`
stage of dvc.yaml.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from dvc_helpers import REPO, dvc, git, git_env

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """params.yaml, the demo language file and the real dvc.yaml's config stage, committed after one run."""
    path = tmp_path / "proj"
    (path / "languages").mkdir(parents=True)
    (path / "src" / "tts_pipeline").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    shutil.copy(REPO / "languages" / "demo.yaml", path / "languages" / "demo.yaml")
    shutil.copy(REPO / "src" / "tts_pipeline" / "config.py", path / "src" / "tts_pipeline" / "config.py")
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    config_stage = stages["config"]
    config_stage["do"]["cmd"] = config_stage["do"]["cmd"].replace("tts-pipeline", f"{sys.executable} -m tts_pipeline")
    (path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"config": config_stage}}, sort_keys=False))
    git("init", "-q", "-b", "main", cwd=path)
    dvc("init", "-q", cwd=path)
    dvc("repro", cwd=path, env=_env())
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "baseline", cwd=path)
    return path


def _env() -> dict[str, str]:
    return git_env({"PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")})


def test_a_rejected_experiment_keeps_the_frozen_settings_and_says_how_to_restore(project: Path) -> None:
    frozen = {p.name: p.read_bytes() for p in (project / "params" / "demo").glob("*.json")}
    assert "train.json" in frozen
    run = dvc("exp", "run", "-S", "training.learning_rate=1e3", cwd=project, env=_env(), check=False)
    output = run.stdout + run.stderr
    assert "training.learning_rate" in output and "outside the allowed range" in output
    assert "git checkout -- params.yaml" in output  # exactly how to restore what DVC changed
    assert {p.name: p.read_bytes() for p in (project / "params" / "demo").glob("*.json")} == frozen
    status = git("status", "--porcelain", cwd=project).stdout.splitlines()
    assert status == [" M params.yaml"]  # DVC's -S edit, nothing else
    git("checkout", "--", "params.yaml", cwd=project)
    assert git("status", "--porcelain", cwd=project).stdout == ""
