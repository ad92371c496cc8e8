"""Same inputs, same bytes: the demo in a fresh clone reproduces exactly what is committed.

A fresh `git clone` of this repository (its committed state: uncommitted edits are not in the
clone) runs the demo pipeline, as `bash scripts/demo.sh` does after installing, and `git status`
must stay empty: every DVC output recorded in dvc.lock, the metrics and the plots come out
byte-identical, and nothing the pipeline writes (MLflow store, DVC cache) is left untracked.
After a change that alters results, regenerate what is committed with the demo and commit it:
`tts-pipeline run --config languages/demo.yaml && git add dvc.lock metrics params`.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from dvc_helpers import REPO, git, git_env, sh

pytestmark = pytest.mark.slow


def test_demo_in_a_fresh_clone_leaves_git_status_clean(tmp_path: Path) -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    clone = tmp_path / "clone"
    git("clone", "-q", "--no-hardlinks", str(REPO), str(clone), cwd=tmp_path)
    env = git_env(
        {
            "PYTHONPATH": str(clone / "src"),  # the clone's code, as an install from it would run
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
        }
    )
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "DVC_ROOT", "DVC_STAGE", "DVC_EXP_NAME"):
        env.pop(key, None)  # the demo's own defaults: mlflow.db in the clone (gitignored)
    run = [sys.executable, "-m", "tts_pipeline", "run", "--config", "languages/demo.yaml"]
    proc = sh(run, cwd=clone, env=env, timeout=1800)
    assert "ran" in proc.stdout and (clone / "models/demo/model").is_dir()

    status = git("status", "--porcelain", "--untracked-files=all", cwd=clone).stdout
    if status:
        diff = git("diff", "HEAD", "--stat", cwd=clone).stdout
        lock = git("diff", "HEAD", "--", "dvc.lock", cwd=clone).stdout
        pytest.fail(
            "the demo changed the clone (not byte-reproducible, or dvc.lock/metrics not regenerated "
            f"and committed):\n{status}\n{diff}\n{lock[:4000]}"
        )
    # and with everything in place, the same command has nothing to do
    again = sh(run, cwd=clone, env=env, timeout=600)
    assert "0 ran" in again.stdout, again.stdout
