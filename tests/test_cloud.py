"""The SkyPilot task `cloud/train.sky.yaml`: SkyPilot's own parser accepts it, it holds no
credential, and its `setup` + `run`, executed by bash on CPU against the loopback S3 server,
do the rented box's round trip (pull the dataset, train the demo, push the model back).

SkyPilot is the optional `cloud` extra. Without it the parser test is skipped, except in CI
(`CI` or `TTS_REQUIRE_CLOUD` set: `.ci/run` installs the extra), where a skip would hide a
broken task file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from dvc_helpers import REPO, dvc, git
from test_remote_s3 import (  # noqa: F401 (s3_endpoint is a fixture)
    BUCKET,
    add_s3_remote,
    aws_env,
    bucket_keys,
    copy_repo,
    ran_stages,
    run_readme,
    s3_endpoint,
    shorten_demo_training,
    tree_digest,
)

TASK = REPO / "cloud" / "train.sky.yaml"
README = REPO / "README.md"


def load_task() -> dict:
    return yaml.safe_load(TASK.read_text(encoding="utf-8"))


def sky_or_skip():
    try:
        import sky
    except ImportError as exc:
        if os.environ.get("CI") or os.environ.get("TTS_REQUIRE_CLOUD"):
            pytest.fail(
                f"skypilot is not installed in CI ({exc}): install the `cloud` extra (pip install -e '.[cloud]')"
            )
        pytest.skip("skypilot not installed (pip install -e '.[cloud]')")
    return sky


def test_skypilot_parses_the_task_and_the_launch_arguments_override_it():
    sky = sky_or_skip()
    task = sky.Task.from_yaml(str(TASK))
    assert task.name == "tts-train" and task.workdir == "."
    resources = list(task.resources)
    assert {next(iter(r.accelerators)) for r in resources} == {"L4", "A10G", "A10", "L40S"}
    assert all(r.use_spot and r.disk_size == 100 for r in resources)
    assert {"TTS_LANG", "TTS_S3_URL", "TTS_S3_ENDPOINT", "TTS_EXP_ARGS", "TTS_SYNC_EVERY"} <= set(task.envs)
    assert "bash scripts/gpu-box.sh" in task.setup
    assert 'tts-pipeline run --config "languages/$TTS_LANG.yaml" --until evaluate --allow-missing' in task.run
    assert "dvc push" in task.run

    # what `sky jobs launch ... --env TTS_LANG=hsn --secret ... --gpus A100:4 --disk-size 200 --no-use-spot` does
    launched = sky.Task.from_yaml_config(
        load_task(),
        env_overrides=[("TTS_LANG", "hsn"), ("TTS_S3_URL", "s3://b/p")],
        secrets_overrides=[("AWS_ACCESS_KEY_ID", "AKIAEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "x")],
    )
    launched.set_resources_override({"accelerators": "A100:4", "disk_size": 200, "use_spot": False})
    assert {(str(r.accelerators), r.disk_size, r.use_spot) for r in launched.resources} == {
        (str({"A100": 4}), 200, False)
    }
    assert launched.envs["TTS_LANG"] == "hsn"
    assert set(launched.secrets) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


def test_no_credential_in_the_task_file():
    text = TASK.read_text(encoding="utf-8")
    task = load_task()
    assert set(task["secrets"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    assert all(value is None for value in task["secrets"].values()), "secrets get their values at launch"
    assert not [k for k in task["envs"] if re.search(r"SECRET|TOKEN|PASSWORD|KEY", k)], task["envs"]
    assert not re.search(r"AKIA[0-9A-Z]{12,}|glpat-|ghp_|hf_[A-Za-z0-9]{20,}", text)
    assert not re.search(
        r"(?i)(aws_secret_access_key|aws_access_key_id)\s*[=:]\s*\S", task["setup"] + task["run"]
    )


def test_readme_cloud_section_matches_the_task_file():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Train in the cloud") :]
    section = section[: section.index("\n## ", 1)]
    command = re.search(r"```bash\n(sky jobs launch .*?)```", section, re.S).group(1)
    assert "cloud/train.sky.yaml" in command
    for name in ("TTS_LANG", "TTS_S3_URL"):
        assert f"--env {name}=" in command
    for name in load_task()["secrets"]:
        assert f"--secret {name}" in command
    for word in ("sky jobs logs", "sky jobs cancel", "sky down", "python cloud/results.py pull"):
        assert word in section
    assert "cloud/results.py pull" in TASK.read_text()


def sky_env(box: Path, endpoint: str, base_env: dict[str, str], **extra: str) -> dict[str, str]:
    """What SkyPilot gives `setup` and `run`: the task's envs (+ overrides) and the secrets."""
    env = {**base_env, **{k: str(v) for k, v in load_task()["envs"].items()}}
    env.update(
        TTS_LANG="demo", TTS_S3_URL=f"s3://{BUCKET}/sky", TTS_S3_ENDPOINT=endpoint, TTS_SKIP_INSTALL="1"
    )
    env.update(extra)
    return env


def run_section(name: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    proc = subprocess.run(
        ["bash", "-c", load_task()[name]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, f"{name} failed:\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    print(f"{name}: {time.monotonic() - started:.0f} s")  # the README's figures (pytest -s)
    return proc


@pytest.mark.slow
def test_task_setup_and_run_do_the_box_round_trip(tmp_path: Path, s3_endpoint: str) -> None:  # noqa: F811
    """Laptop builds and pushes the dataset; the task's setup + run on a copy of the repository
    (what SkyPilot syncs) train and push; `cloud/results.py pull` brings it all home; a box that
    replaces a preempted one gets the checkpoint backup back in setup."""
    env = aws_env(s3_endpoint)
    laptop = copy_repo(tmp_path / "laptop", edit=shorten_demo_training)
    add_s3_remote(laptop, s3_endpoint, "sky", env)
    origin = tmp_path / "origin.git"
    git("clone", "-q", "--bare", str(laptop), str(origin), cwd=tmp_path, env=env)
    git("remote", "add", "origin", str(origin), cwd=laptop, env=env)
    git("fetch", "-q", "origin", cwd=laptop, env=env)
    git("branch", "-q", "--set-upstream-to=origin/main", cwd=laptop, env=env)
    run_readme("**On the laptop**", laptop, env)

    def sky_box(name: str) -> Path:  # the workdir SkyPilot syncs: the repository without ignored files
        box = tmp_path / name
        git("clone", "-q", str(laptop), str(box), cwd=tmp_path, env=env)
        return box

    box = sky_box("box")
    box_env = sky_env(box, s3_endpoint, env, TTS_SYNC_EVERY="3600")
    setup = run_section("setup", box, box_env)
    assert re.search(r"train@demo\s+would run", setup.stdout), setup.stdout
    assert (box / "data/demo/dataset").is_dir() and not (box / "data/demo/preprocessed").exists()
    run = run_section("run", box, box_env)
    assert {"train@demo", "evaluate@demo"} <= set(ran_stages(run.stdout)), run.stdout
    assert "uploaded to s3://" in run.stdout
    assert "testing" not in (box / ".dvc/config.local").read_text()  # the secret stayed in the environment
    backup = bucket_keys(s3_endpoint, "sky/checkpoints-backup/demo/")
    assert any(k.endswith("checkpoint-2/state/trainer_state.json") for k in backup), backup

    pull = subprocess.run(["python", "cloud/results.py", "pull", "--lang", "demo"], cwd=laptop, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert pull.returncode == 0, pull.stdout + pull.stderr
    assert tree_digest(laptop / "models/demo/model") == tree_digest(box / "models/demo/model")
    assert (laptop / "reports/demo").is_dir()
    status = dvc("status", "--with-deps", "evaluate@demo", cwd=laptop, env=env)
    assert "Data and pipelines are up to date." in status.stdout, status.stdout

    # Spot preemption: SkyPilot runs setup again on a new box; it restores the backed-up checkpoints.
    shutil.rmtree(box)
    again = sky_box("box-after-preemption")
    git("reset", "-q", "--hard", "HEAD~1", cwd=again, env=env)  # what was launched, before the results
    setup = run_section("setup", again, sky_env(again, s3_endpoint, env))
    assert "file(s) restored" in setup.stdout, setup.stdout
    assert (again / "models/demo/checkpoints/checkpoint-2/state/trainer_state.json").is_file()
