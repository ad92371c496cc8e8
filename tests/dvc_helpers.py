"""Helpers for tests that drive real git + DVC in a temporary directory.

`make_toy_project` builds a small DVC project shaped like the real one (stages `foreach` over
params.yaml `languages`, named `<stage>@demo`, a `training.learning_rate` param) whose stage
commands are trivial Python, so the DVC machinery (run, remotes, experiments) can be tested in
seconds. Each stage appends its name to `stage-runs.log`, so a test can see what really ran.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

TOY_STAGE = '''\
"""Toy stage: copy input to output with a marker; train records its lr and DVC's env vars."""
import json, os, sys
from pathlib import Path

import yaml

stage, code = sys.argv[1], sys.argv[2]
with open("stage-runs.log", "a") as log:
    log.write(f"{stage}@{code}\\n")
if os.environ.get("TOY_FAIL") == stage:
    sys.exit(f"toy stage {stage} failing on purpose")
if stage == "collect":
    src = yaml.safe_load(open("params.yaml"))["languages"][code]["source"]
    out = Path(f"data/{code}/raw"); out.mkdir(parents=True, exist_ok=True)
    (out / "items.txt").write_text(Path(src).read_text())
elif stage == "dataset":
    out = Path(f"data/{code}/dataset"); out.mkdir(parents=True, exist_ok=True)
    text = Path(f"data/{code}/raw/items.txt").read_text()
    (out / "data.txt").write_text(text.upper())
elif stage == "train":
    lr = float(yaml.safe_load(open("params.yaml"))["training"]["learning_rate"])
    out = Path(f"models/{code}/model"); out.mkdir(parents=True, exist_ok=True)
    data = Path(f"data/{code}/dataset/data.txt").read_text()
    (out / "weights.txt").write_text(f"{len(data)} {lr}\\n")
    env = {k: v for k, v in os.environ.items() if k.startswith("DVC")}
    env["cwd"] = os.getcwd()
    (out / "dvc_env.json").write_text(json.dumps(env, indent=1, sort_keys=True))
    Path(f"metrics/{code}").mkdir(parents=True, exist_ok=True)
    Path(f"metrics/{code}/train.json").write_text(json.dumps({"learning_rate": lr, "loss": 1.0 / (1 + lr), "best_val_loss": 1.0 / (1 + lr)}))
'''

TOY_DVC_YAML = """\
stages:
  collect:
    foreach: ${languages}
    do:
      cmd: {python} toy_stage.py collect ${key}
      deps:
        - toy_stage.py
        - ${item.source}
      outs:
        - data/${key}/raw
  dataset:
    foreach: ${languages}
    do:
      cmd: {python} toy_stage.py dataset ${key}
      deps:
        - toy_stage.py
        - data/${key}/raw
      outs:
        - data/${key}/dataset
  train:
    foreach: ${languages}
    do:
      cmd: {python} toy_stage.py train ${key}
      deps:
        - toy_stage.py
        - data/${key}/dataset
      params:
        - training.learning_rate
      outs:
        - models/${key}/model
      metrics:
        - metrics/${key}/train.json:
            cache: false
"""


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for git/DVC subprocesses: an identity (CI has none), no analytics, no pager."""
    env = dict(os.environ)
    env.update(
        {
            "GIT_AUTHOR_NAME": "tts-pipeline tests",
            "GIT_AUTHOR_EMAIL": "tests@example.invalid",
            "GIT_COMMITTER_NAME": "tts-pipeline tests",
            "GIT_COMMITTER_EMAIL": "tests@example.invalid",
            "DVC_NO_ANALYTICS": "1",
            "DVC_NO_UPDATER": "1",
            "GIT_TERMINAL_PROMPT": "0",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        }
    )
    if extra:
        env.update(extra)
    return env


def sh(
    args: list[str], cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a command, capture its output; on failure show it in the assertion message."""
    proc = subprocess.run(
        args, cwd=cwd, env=env or git_env(), capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {proc.returncode} in {cwd}\n"
            f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
        )
    return proc


def dvc(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True, timeout: float = 300):
    """`dvc ...` from this venv."""
    return sh([sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, check=check, timeout=timeout)


def git(*args: str, cwd: Path, env: dict[str, str] | None = None, check: bool = True):
    return sh(["git", *args], cwd=cwd, env=env, check=check)


def make_toy_project(path: Path, languages: tuple[str, ...] = ("demo",)) -> Path:
    """A committed git + DVC project with collect -> dataset -> train stages per language."""
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "params.yaml", path / "params.yaml")
    (path / "languages").mkdir(exist_ok=True)
    shutil.copy(REPO / "languages" / "demo.yaml", path / "languages" / "demo.yaml")
    (path / "source").mkdir(exist_ok=True)
    langs = {}
    for code in languages:
        (path / "source" / f"{code}.txt").write_text(f"hello from {code}\n")
        langs[code] = {"source": f"source/{code}.txt"}
    _set_languages(path / "params.yaml", langs)
    (path / "toy_stage.py").write_text(TOY_STAGE)
    (path / "dvc.yaml").write_text(TOY_DVC_YAML.replace("{python}", sys.executable))
    (path / ".gitignore").write_text("stage-runs.log\n")
    git("init", "-q", "-b", "main", cwd=path)
    dvc("init", "-q", cwd=path)
    dvc("config", "core.analytics", "false", cwd=path)
    git("add", "-A", cwd=path)
    git("commit", "-q", "-m", "toy project", cwd=path)
    return path


def _set_languages(params: Path, langs: dict[str, dict[str, str]]) -> None:
    """Replace the `languages:` block of a copied params.yaml, keeping its comments elsewhere."""
    lines = params.read_text(encoding="utf-8").splitlines()
    out: list[str] = []
    skipping = False
    for line in lines:
        if line.startswith("languages:"):
            skipping = True
            out.append("languages:")
            for code, item in langs.items():
                out.append(f"  {code}:")
                out.extend(f"    {k}: {v}" for k, v in item.items())
            continue
        if skipping and (line.startswith(" ") or not line.strip()):
            if not line.strip():
                out.append(line)
                skipping = False
            continue
        skipping = False
        out.append(line)
    params.write_text("\n".join(out) + "\n", encoding="utf-8")


def stage_runs(path: Path) -> list[str]:
    """Stage names the toy stages recorded (in order), then clear the log."""
    log = path / "stage-runs.log"
    if not log.is_file():
        return []
    runs = log.read_text().split()
    log.unlink()
    return runs


def dedent(text: str) -> str:
    return textwrap.dedent(text).lstrip()
