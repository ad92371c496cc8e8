"""DVC experiments on a toy project shaped like the real one: `-S`, the queue, show, apply.

What the train stage relies on: `dvc exp run -S training.learning_rate=5e-5` edits params.yaml
and re-runs only train; DVC hands the stage `DVC_EXP_NAME`, `DVC_EXP_BASELINE_REV`, `DVC_ROOT`
and `DVC_STAGE` in the environment (tracking.py tags MLflow runs with them).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from dvc_helpers import dvc, git, git_env, make_toy_project, stage_runs

pytestmark = pytest.mark.slow


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """The toy project with the baseline built and committed (dvc.lock in git)."""
    path = make_toy_project(tmp_path / "proj")
    dvc("repro", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "baseline", cwd=path)
    stage_runs(path)
    return path


def experiments(path: Path) -> dict[str, dict[str, Any]]:
    """name -> {"state", "lr" (params.yaml), "metrics" (train.json)} from `dvc exp show --json`."""
    rows = json.loads(dvc("exp", "show", "--json", cwd=path).stdout)
    found: dict[str, dict[str, Any]] = {}

    def visit(entry: dict[str, Any], state: str | None) -> None:
        data = entry.get("data") or {}
        params = (data.get("params") or {}).get("params.yaml", {}).get("data", {})
        metrics = (data.get("metrics") or {}).get("metrics/demo/train.json", {}).get("data", {})
        if entry.get("name"):
            found[entry["name"]] = {
                "state": state,
                "lr": float(params.get("training", {}).get("learning_rate", "nan")),
                "metrics": metrics,
            }
        for group in entry.get("experiments") or []:
            executor = group.get("executor") or {}
            for rev in group.get("revs", []):
                visit(rev, executor.get("state"))

    for row in rows:
        visit(row, None)
    return found


def test_exp_run_set_param_reaches_train_only(project: Path) -> None:
    head = git("rev-parse", "HEAD", cwd=project).stdout.strip()
    proc = dvc("exp", "run", "-n", "lr-5e-5", "-S", "training.learning_rate=5e-5", cwd=project)
    assert re.findall(r"Running stage '([^']+)'", proc.stdout) == ["train@demo"]
    assert stage_runs(project) == ["train@demo"]
    # The new value reached the stage (params.yaml edited in the workspace, metric recorded)...
    assert float(yaml.safe_load((project / "params.yaml").read_text())["training"]["learning_rate"]) == 5e-5
    assert json.loads((project / "metrics/demo/train.json").read_text())["learning_rate"] == 5e-5
    # ... and DVC told the stage which experiment it runs in.
    env = json.loads((project / "models/demo/model/dvc_env.json").read_text())
    assert env["DVC_EXP_NAME"] == "lr-5e-5"
    assert env["DVC_EXP_BASELINE_REV"] == head
    assert env["DVC_STAGE"] == "train@demo"
    assert Path(env["DVC_ROOT"]).resolve() == project.resolve()
    assert Path(env["cwd"]).resolve() == project.resolve()  # a workspace run runs in place

    exps = experiments(project)
    assert exps["lr-5e-5"]["lr"] == 5e-5
    assert exps["lr-5e-5"]["metrics"]["learning_rate"] == 5e-5
    assert exps["main"]["lr"] == 1e-4

    # A plain `dvc repro` is not an experiment: no DVC_EXP_NAME for tracking to tag.
    git("checkout", "-q", "--", "params.yaml", cwd=project)
    dvc("repro", cwd=project)
    env = json.loads((project / "models/demo/model/dvc_env.json").read_text())
    assert "DVC_EXP_NAME" not in env and env["DVC_STAGE"] == "train@demo"


def wait_for_queue(path: Path, timeout: float = 240) -> str:
    """Poll `dvc queue status` until nothing is queued or running."""
    deadline = time.monotonic() + timeout
    status = ""
    while time.monotonic() < deadline:
        status = dvc("queue", "status", cwd=path).stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            return status
        time.sleep(1)
    raise AssertionError(f"queue still busy after {timeout}s:\n{status}")


@pytest.fixture
def queue_project(project: Path) -> Iterator[Path]:
    yield project
    dvc("queue", "stop", "--kill", cwd=project, check=False)  # no worker outlives the test


def test_queue_then_start_then_show_and_apply(queue_project: Path) -> None:
    project = queue_project
    dvc("exp", "run", "--queue", "-n", "lr-3e-5", "-S", "training.learning_rate=3e-5", cwd=project)
    assert stage_runs(project) == []  # queued, nothing ran yet
    queued = dvc("queue", "status", cwd=project).stdout
    assert queued.count("Queued") == 1, queued
    assert float(yaml.safe_load((project / "params.yaml").read_text())["training"]["learning_rate"]) == 1e-4

    dvc("queue", "start", "--jobs", "1", cwd=project, env=git_env())
    status = wait_for_queue(project)
    assert status.count("Success") == 1, status

    exps = experiments(project)
    assert exps["lr-3e-5"]["state"] == "success", exps["lr-3e-5"]
    assert exps["lr-3e-5"]["lr"] == 3e-5
    assert exps["lr-3e-5"]["metrics"]["learning_rate"] == 3e-5
    assert exps["main"]["metrics"]["learning_rate"] == 1e-4

    # Apply it to the workspace: params, metrics and outputs come with it.
    dvc("exp", "apply", "lr-3e-5", cwd=project)
    assert float(yaml.safe_load((project / "params.yaml").read_text())["training"]["learning_rate"]) == 3e-5
    assert json.loads((project / "metrics/demo/train.json").read_text())["learning_rate"] == 3e-5
    weights = (project / "models/demo/model/weights.txt").read_text().split()
    assert float(weights[1]) == 3e-5
    env = json.loads((project / "models/demo/model/dvc_env.json").read_text())
    assert env["DVC_EXP_NAME"] == "lr-3e-5"
    # A queued experiment runs in a temporary copy (.dvc/tmp/exps/...), but DVC_ROOT names the
    # project: anything relative to the working directory (e.g. sqlite:///mlflow.db) is lost.
    assert Path(env["DVC_ROOT"]).resolve() == project.resolve()
    assert Path(env["cwd"]).resolve() != project.resolve()
    assert ".dvc/tmp/exps" in Path(env["cwd"]).as_posix()
    assert "up to date" in dvc("status", cwd=project).stdout


def test_exp_run_set_language_value_keeps_the_config_loadable(project: Path) -> None:
    from tts_pipeline.config import load_config

    dvc("exp", "run", "-n", "steps", "-S", "languages/demo.yaml:training.max_steps=7", cwd=project)
    cfg = load_config(project / "languages/demo.yaml", project / "params.yaml")
    assert cfg.training.max_steps == 7
    assert cfg.training.mixed_precision == "no"


def test_experiments_table_shows_what_changed_and_the_best_first(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`dvc exp show` prints every setting; `tts-pipeline experiments` only the changed ones."""
    from tts_pipeline import cli

    dvc("exp", "run", "-n", "lr-big", "-S", "training.learning_rate=0.5", cwd=project)
    dvc("exp", "run", "-n", "lr-small", "-S", "training.learning_rate=0.001", cwd=project)
    monkeypatch.chdir(project)
    assert (
        cli.main(["experiments", "--config", "languages/demo.yaml", "--sort-by", "val_loss", "--compare"])
        == 0
    )
    out = capsys.readouterr().out
    table = out.split("\n\n")[0].splitlines()
    assert table[0].split() == ["experiment", "learning_rate", "MCD", "spk_sim", "val_loss", "steps"]
    names = [line.split()[0] for line in table[2:-1]]
    assert names[0] == "lr-big"  # val_loss 1/(1+lr): the larger rate is "best"
    assert len(names) == 4 and set(names) >= {"workspace", "lr-big", "lr-small"}
    assert names.index("lr-small") < 3  # the baseline (lr 1e-4) is last
    assert table[-1] == "changed settings: training.learning_rate"
    assert max(len(line) for line in table) < 100
    assert "lr-big (best) vs lr-small" in out and "learning_rate" in out.split("(best) vs")[1]
