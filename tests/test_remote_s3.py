"""The rented-GPU-box round trip through an S3 remote, on a loopback S3 server (moto).

Laptop copy A: build up to the dataset, `dvc push`. GPU box B (a `git clone` of A): configure
the same remote, `dvc pull` only the dataset, train (nothing upstream recomputed), `dvc push`.
Back in A: `git pull` + `dvc pull` brings the trained model. The remote and its endpoint go to
`.dvc/config.local` (never committed); credentials only through the AWS environment variables.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml
from dvc_helpers import REPO, dvc, git, git_env, make_toy_project, sh, stage_runs

pytestmark = pytest.mark.slow

BUCKET = "tts-pipeline-test"


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on 127.0.0.1 (a free port) with one empty bucket."""
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one log line per S3 request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3_client(endpoint).create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()


def aws_env(endpoint: str) -> dict[str, str]:
    """Fake credentials the AWS way (environment), for the DVC subprocesses only."""
    env = git_env(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1",
            "MLFLOW_TRACKING_URI": "",
        }
    )
    for key in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        env.pop(key, None)
    if not env["MLFLOW_TRACKING_URI"]:
        env.pop("MLFLOW_TRACKING_URI")
    return env


def add_s3_remote(project: Path, endpoint: str, prefix: str, env: dict[str, str]) -> None:
    """`dvc remote add --local -d` + endpointurl: nothing about the remote lands in git."""
    dvc(
        "remote",
        "add",
        "--local",
        "--default",
        "--force",
        "s3remote",
        f"s3://{BUCKET}/{prefix}",
        cwd=project,
        env=env,
    )
    dvc("remote", "modify", "--local", "s3remote", "endpointurl", endpoint, cwd=project, env=env)
    local = (project / ".dvc" / "config.local").read_text()
    assert endpoint in local and "testing" not in local
    assert endpoint not in (project / ".dvc" / "config").read_text()


def ran_stages(output: str) -> list[str]:
    """Stage names DVC actually ran ("Running stage 'x':") in a repro/exp-run output."""
    return re.findall(r"Running stage '([^']+)'", output)


def s3_client(endpoint: str):
    """A boto3 client for the loopback server, with the fake credentials."""
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )


def laptop_and_box(tmp_path: Path, endpoint: str, remote: str, env: dict[str, str]) -> tuple[Path, Path]:
    """A toy laptop project (with gpu-box.sh) that built and pushed its dataset, and its clone."""
    laptop = make_toy_project(tmp_path / "laptop")
    (laptop / "scripts").mkdir()
    shutil.copy(GPU_BOX, laptop / "scripts" / "gpu-box.sh")
    add_s3_remote(laptop, endpoint, remote, env)
    dvc("repro", "dataset@demo", cwd=laptop, env=env)
    dvc("push", cwd=laptop, env=env)
    git("add", "-A", cwd=laptop, env=env)
    git("commit", "-q", "-m", "dataset", cwd=laptop, env=env)
    box = tmp_path / "box"
    git("clone", "-q", str(laptop), str(box), cwd=tmp_path, env=env)
    return laptop, box


def bucket_keys(endpoint: str, prefix: str) -> list[str]:
    client = s3_client(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [obj["Key"] for page in pages for obj in page.get("Contents", [])]


def tree_digest(path: Path) -> dict[str, int]:
    """Relative file -> size, to compare a pulled directory with the original."""
    return {str(p.relative_to(path)): p.stat().st_size for p in sorted(path.rglob("*")) if p.is_file()}


README = REPO / "README.md"


def readme_commands(after: str, code: str = "demo") -> str:
    """The first ```bash block after the README line containing `after`, for language `code`.

    Comments and `. .venv/bin/activate` (the test's environment is already the venv) are left out.
    """
    text = README.read_text(encoding="utf-8")
    start = text.index("```bash\n", text.index(after)) + len("```bash\n")
    block = text[start : text.index("```", start)]
    lines = [line.split("  #")[0].rstrip() for line in block.splitlines()]
    return "\n".join(
        line.replace("hsn", code) for line in lines if line and not line.startswith(("#", ". .venv"))
    )


def run_readme(
    after: str, cwd: Path, env: dict[str, str], timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """Run a README block, as written, with bash (stopping at the first failing command)."""
    return sh(
        ["bash", "-c", "set -euo pipefail\n" + readme_commands(after)], cwd=cwd, env=env, timeout=timeout
    )


def clone_with_remote(origin: Path, dest: Path, endpoint: str, prefix: str, env: dict[str, str]) -> Path:
    git("clone", "-q", str(origin), str(dest), cwd=origin.parent, env=env)
    add_s3_remote(dest, endpoint, prefix, env)
    return dest


def test_toy_round_trip_through_s3(tmp_path: Path, s3_endpoint: str) -> None:
    """The DVC mechanics on a 3-stage toy project (seconds): what the GPU box relies on."""
    env = aws_env(s3_endpoint)
    laptop = make_toy_project(tmp_path / "laptop")
    add_s3_remote(laptop, s3_endpoint, "toy", env)
    dvc("repro", "dataset@demo", cwd=laptop, env=env)
    dvc("push", cwd=laptop, env=env)
    assert bucket_keys(s3_endpoint, "toy/files/md5/")
    git("add", "-A", cwd=laptop, env=env)
    git("commit", "-q", "-m", "dataset", cwd=laptop, env=env)
    assert "config.local" not in git("ls-files", ".dvc", cwd=laptop).stdout
    stage_runs(laptop)

    box = clone_with_remote(laptop, tmp_path / "box", s3_endpoint, "toy", env)
    dvc("pull", "dataset@demo", cwd=box, env=env)
    assert (box / "data/demo/dataset/data.txt").read_text() == "HELLO FROM DEMO\n"
    assert not (box / "data/demo/raw").exists()  # only what training needs came over
    status = json.loads(dvc("status", "--json", "dataset@demo", cwd=box, env=env).stdout)
    assert all("changed outs" not in e for e in status.get("dataset@demo", []) if isinstance(e, dict))

    proc = subprocess.run(
        [sys.executable, "-m", "tts_pipeline", "run", "--config", "languages/demo.yaml", "--allow-missing"],
        cwd=box,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert stage_runs(box) == ["train@demo"]
    assert "1 ran, 1 up to date, 1 skipped (data not here, not needed)" in proc.stdout
    dvc("push", cwd=box, env=env)
    git("add", "-A", cwd=box, env=env)
    git("commit", "-q", "-m", "trained on the box", cwd=box, env=env)

    git("pull", "-q", "--no-rebase", str(box), "main", cwd=laptop, env=env)
    dvc("pull", "train@demo", cwd=laptop, env=env)
    assert tree_digest(laptop / "models/demo/model") == tree_digest(box / "models/demo/model")
    assert dvc("status", "train@demo", cwd=laptop, env=env).stdout.strip().endswith("up to date.")
    assert stage_runs(laptop) == []


# --------------------------------------------------------------------------- the real demo


#: Top-level folders that only pipeline runs fill (DVC outputs, metrics, MLflow).
PIPELINE_OUTPUT_DIRS = {"data", "models", "reports", "metrics", "params", "mlruns", "mlartifacts"}


def copy_repo(dest: Path, edit: Callable[[Path], None] | None = None) -> Path:
    """The repository's working tree (tracked + untracked, not ignored) in a fresh git repo.

    Never commits in the real checkout: the copy gets its own `git init` and commit.
    """
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    for rel in filter(None, listed):
        if rel == "dvc.lock" or rel.split("/", 1)[0] in PIPELINE_OUTPUT_DIRS:
            continue  # a fresh laptop: no outputs or lock entries from runs in the real checkout
        src = REPO / rel
        if not src.is_file():  # deleted in the working tree but still in the index
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    if edit is not None:
        edit(dest)
    env = git_env()
    git("init", "-q", "-b", "main", cwd=dest, env=env)
    git("add", "-A", cwd=dest, env=env)
    git("commit", "-q", "-m", "copy of the working tree", cwd=dest, env=env)
    return dest


def shorten_demo_training(project: Path, steps: int = 2) -> None:
    """Fewer training steps and evaluation sentences in the copy: the round trip, not the voice, is tested."""
    path = project / "languages" / "demo.yaml"
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    data["training"].update(
        max_steps=steps, save_steps=steps, eval_steps=steps, logging_steps=1, warmup_steps=1
    )
    data.setdefault("evaluation", {})["max_samples"] = 1
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")


def test_demo_round_trip_through_s3(tmp_path: Path, s3_endpoint: str) -> None:
    """The README's GPU-box recipe, as written, on the real demo: dataset on the laptop, train +
    evaluate + an experiment on the box, everything back, and the laptop's `dvc status` clean."""
    env = aws_env(s3_endpoint)
    laptop = copy_repo(tmp_path / "laptop", edit=shorten_demo_training)
    add_s3_remote(laptop, s3_endpoint, "demo", env)
    origin = tmp_path / "origin.git"  # the shared git server both machines push to
    git("clone", "-q", "--bare", str(laptop), str(origin), cwd=tmp_path, env=env)
    git("remote", "add", "origin", str(origin), cwd=laptop, env=env)
    git("fetch", "-q", "origin", cwd=laptop, env=env)
    git("branch", "-q", "--set-upstream-to=origin/main", cwd=laptop, env=env)

    prep = run_readme("**On the laptop**", laptop, env)
    assert {"collect@demo", "preprocess@demo", "speakers@demo", "dataset@demo"} <= set(
        ran_stages(prep.stdout)
    )
    assert "config.local" not in git("ls-files", ".dvc", cwd=laptop).stdout
    assert git("status", "--porcelain", "--untracked-files=no", cwd=laptop).stdout == ""

    box = clone_with_remote(origin, tmp_path / "box", s3_endpoint, "demo", env)
    dvc("pull", "dataset@demo", cwd=box, env=env)  # what gpu-box.sh does (tested on its own below)
    assert tree_digest(box / "data/demo/dataset") == tree_digest(laptop / "data/demo/dataset")
    assert not (box / "data/demo/preprocessed").exists()

    proc = run_readme("Then train:", box, env)
    ran = set(ran_stages(proc.stdout))
    assert {"train@demo", "evaluate@demo"} <= ran
    assert not ran & {"collect@demo", "preprocess@demo", "speakers@demo", "dataset@demo"}, proc.stdout
    assert (box / "models/demo/model/config.json").is_file()

    # An experiment on the box: `-S` reaches the real train stage (and nothing upstream of it
    # runs); the MLflow run is named after the experiment and what it changed, and tagged.
    exp = dvc(
        "exp", "run", "-n", "box-lr5e-5", "--allow-missing", "-S", "training.learning_rate=5e-5", "evaluate@demo",
        cwd=box, env=env, timeout=900,
    )  # fmt: skip
    assert set(ran_stages(exp.stdout)) == {"config@demo", "train@demo", "evaluate@demo"}, exp.stdout
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{box / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    tagged = [r for r in runs if r.data.tags.get("dvc.exp_name") == "box-lr5e-5"]
    assert len(tagged) == 1, [r.data.tags for r in runs]
    assert tagged[0].info.run_name == "box-lr5e-5 (learning_rate=5e-05)"
    run = tagged[0].data
    assert float(run.params["training.learning_rate"]) == 5e-5
    head = git("rev-parse", "HEAD", cwd=box).stdout.strip()
    assert run.tags["dvc.baseline_rev"] == head
    assert run.tags["git.revision"].startswith(head)

    # Back to the laptop with the README's commands: everything the experiment changed comes along.
    run_readme("**Pushing the model back**", box, env)
    assert git("status", "--porcelain", "--untracked-files=no", cwd=box).stdout == ""
    back = run_readme("and on the laptop:", laptop, env)
    assert "Data and pipelines are up to date." in back.stdout, back.stdout
    assert tree_digest(laptop / "models/demo/model") == tree_digest(box / "models/demo/model")
    assert "learning_rate: 5e-05" in (laptop / "params.yaml").read_text()


def test_nothing_secret_in_tracked_dvc_config() -> None:
    """The committed DVC config keeps the local-directory default remote and no credentials."""
    config = (REPO / ".dvc" / "config").read_text()
    assert re.search(r"remote\s*=\s*local", config)
    assert not re.search(r"(access_key|secret|session_token|password)", config, re.I)
    ignored = (REPO / ".dvc" / ".gitignore").read_text().split()
    assert "/config.local" in ignored
    # the default local remote's directory stays out of git
    url = re.search(r'\[\s*[\'"]remote "local"[\'"]\s*\]\s*url\s*=\s*(\S+)', config)
    assert url, config
    storage = (REPO / ".dvc" / url.group(1)).resolve()
    probe = subprocess.run(
        ["git", "check-ignore", "-q", str(storage / "files")], cwd=REPO, capture_output=True
    )
    assert probe.returncode == 0, f"{storage} is not gitignored"


# --------------------------------------------------------------------------- scripts/gpu-box.sh

GPU_BOX = REPO / "scripts" / "gpu-box.sh"


def test_gpu_box_script_parses_and_dry_run_shows_the_plan() -> None:
    assert subprocess.run(["bash", "-n", str(GPU_BOX)], capture_output=True).returncode == 0
    env = git_env(
        {"TTS_S3_URL": "s3://bucket/tts", "TTS_S3_ENDPOINT": "http://127.0.0.1:9", "TTS_TORCH_CUDA": "cu128"}
    )
    proc = subprocess.run(
        ["bash", str(GPU_BOX), "--lang", "demo", "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    torch_pin = re.search(r'"torch==([0-9.]+)', (REPO / "pyproject.toml").read_text()).group(1)
    assert f"torch=={torch_pin} torchaudio --index-url https://download.pytorch.org/whl/cu128" in out
    assert "-m pip install -q -e .\\[gpu\\]" in out
    assert "+ dvc remote add --local --default --force s3remote s3://bucket/tts" in out
    assert "+ dvc remote modify --local s3remote endpointurl http://127.0.0.1:9" in out
    assert "+ dvc pull dataset@demo" in out
    assert "tts-pipeline run --config languages/demo.yaml --until evaluate --allow-missing" in out
    assert "AWS_SECRET" not in out

    bad = subprocess.run(
        ["bash", str(GPU_BOX), "--lang", "nope", "--dry-run"], env=env, capture_output=True, text=True
    )
    assert bad.returncode == 1 and "languages/nope.yaml not found" in bad.stderr


def test_gpu_box_sets_up_a_clone_and_backs_up_checkpoints(tmp_path: Path, s3_endpoint: str) -> None:
    """The script for real (minus pip) on a fresh clone: remote from env vars, dataset pulled."""
    env = aws_env(s3_endpoint)
    laptop, box = laptop_and_box(tmp_path, s3_endpoint, "box", env)

    # A fresh box: no git identity anywhere (the script sets a repository-local one).
    home = tmp_path / "home"
    home.mkdir()
    env_box = {**env, "TTS_S3_URL": f"s3://{BUCKET}/box", "TTS_S3_ENDPOINT": s3_endpoint}
    env_box.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1")
    for key in ("GIT_AUTHOR_NAME", "GIT_AUTHOR_EMAIL", "GIT_COMMITTER_NAME", "GIT_COMMITTER_EMAIL"):
        env_box.pop(key)
    script = ["bash", "scripts/gpu-box.sh", "--lang", "demo", "--skip-install"]
    proc = subprocess.run(script, cwd=box, env=env_box, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    assert (box / "data/demo/dataset/data.txt").read_text() == "HELLO FROM DEMO\n"
    assert not (box / "data/demo/raw").exists()
    local = (box / ".dvc/config.local").read_text()
    assert f"s3://{BUCKET}/box" in local and s3_endpoint in local and "testing" not in local
    assert git("status", "--porcelain", cwd=box).stdout.strip() == ""  # nothing for git to commit
    assert git("config", "--local", "user.email", cwd=box).stdout.startswith("gpu-box@")
    assert "tts-pipeline run --config languages/demo.yaml --until evaluate --allow-missing" in proc.stdout
    assert re.search(r"train@demo\s+would run", proc.stdout), proc.stdout  # the plan, before paying

    # Preemption insurance: back up checkpoints (only what changed), lose them, set up again.
    ckpts = box / "models/demo/checkpoints"
    old = ckpts / "checkpoint-10"
    old.mkdir(parents=True)
    (old / "state.bin").write_bytes(b"\x00\x01" * 1000)
    (old / "trainer.json").write_text('{"step": 10}')
    sync = subprocess.run([*script, "--sync-once"], cwd=box, env=env_box, capture_output=True, text=True)
    assert sync.returncode == 0 and "2 file(s) uploaded, 0 removed" in sync.stdout, sync.stdout + sync.stderr
    # Training goes on: a new checkpoint, the old one rotated away, one still being written.
    ckpt = ckpts / "checkpoint-20"
    ckpt.mkdir()
    (ckpt / "state.bin").write_bytes(b"\x02" * 500)
    (ckpt / "trainer.json").write_text('{"step": 20}')
    (ckpts / "index.json").write_text('{"checkpoints": ["checkpoint-20"]}')
    shutil.rmtree(old)
    (ckpts / ".checkpoint-30.tmp-x1").mkdir()
    (ckpts / ".checkpoint-30.tmp-x1" / "half.bin").write_bytes(b"\x03")
    again = subprocess.run([*script, "--sync-once"], cwd=box, env=env_box, capture_output=True, text=True)
    assert "3 file(s) uploaded, 2 removed" in again.stdout, again.stdout + again.stderr
    same = subprocess.run([*script, "--sync-once"], cwd=box, env=env_box, capture_output=True, text=True)
    assert "0 file(s) uploaded, 0 removed" in same.stdout, same.stdout + same.stderr
    keys = bucket_keys(s3_endpoint, "box/checkpoints-backup/demo/")
    assert sorted(k.rsplit("demo/", 1)[1] for k in keys) == [
        "checkpoint-20/state.bin",
        "checkpoint-20/trainer.json",
        "index.json",
    ]

    shutil.rmtree(ckpts)
    shutil.rmtree(box / "data/demo/dataset")
    # Idempotent: the same set-up again (what a replacement box runs) restores everything.
    proc = subprocess.run(script, cwd=box, env=env_box, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 file(s) restored" in proc.stdout
    assert (ckpt / "state.bin").read_bytes() == b"\x02" * 500
    assert (ckpt / "trainer.json").read_text() == '{"step": 20}'
    assert not old.exists()
    assert (box / "data/demo/dataset/data.txt").read_text() == "HELLO FROM DEMO\n"
    assert (box / ".dvc/config.local").read_text() == local


def test_gpu_box_refuses_a_missing_bucket_or_creates_it_when_asked(tmp_path: Path, s3_endpoint: str) -> None:
    env = aws_env(s3_endpoint)
    _, box = laptop_and_box(tmp_path, s3_endpoint, "bucket", env)
    env_box = {**env, "TTS_S3_URL": "s3://fresh-bucket/tts", "TTS_S3_ENDPOINT": s3_endpoint}
    script = ["bash", "scripts/gpu-box.sh", "--lang", "demo", "--skip-install"]
    missing = subprocess.run(script, cwd=box, env=env_box, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 1
    assert "bucket 'fresh-bucket' does not exist" in missing.stderr and "--create-bucket" in missing.stderr
    assert "fresh-bucket" not in [b["Name"] for b in s3_client(s3_endpoint).list_buckets()["Buckets"]]

    created = subprocess.run(
        [*script, "--create-bucket"], cwd=box, env=env_box, capture_output=True, text=True
    )
    assert "created bucket fresh-bucket" in created.stdout, created.stdout + created.stderr
    assert "fresh-bucket" in [b["Name"] for b in s3_client(s3_endpoint).list_buckets()["Buckets"]]
    # an empty bucket has no dataset: the set-up stops and says what the laptop must do first
    assert created.returncode == 1 and "could not pull dataset@demo" in created.stderr
