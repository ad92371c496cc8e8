"""Every stage replaces only an output folder that is empty or that tts-pipeline wrote (issue 15).

A mistyped `--output_dir` (a folder of notes, the source tree) must never be deleted: each stage
refuses it before doing any work, names the folder and says how to proceed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml
from helpers import DEMO_PROJECT, PARAMS, REPO

from tts_pipeline import cli, fsutil
from tts_pipeline.errors import PipelineError

STAGES = ("collect", "preprocess", "speakers", "dataset", "train", "evaluate", "synthesize")


def _config(tmp_path):
    paths = {name: str(tmp_path / "out" / name) for name in (
        "raw_dataset", "preprocessed", "speaker_analysis", "hf_dataset", "checkpoints", "model",
        "reports", "synthesized", "metrics", "cache")}  # fmt: skip
    body = {"language": {"code": "demo"}, "source": {"type": "local", "path": str(DEMO_PROJECT)}, "paths": paths}
    path = tmp_path / "demo.yaml"
    path.write_text(yaml.safe_dump(body), encoding="utf-8")
    return path


def _users_folder(tmp_path):
    folder = tmp_path / "my notes"
    (folder / "sub").mkdir(parents=True)
    (folder / "notes.txt").write_text("three weeks of work", encoding="utf-8")
    (folder / "sub" / "metadata.csv").write_text("mine", encoding="utf-8")
    return folder


@pytest.mark.parametrize("stage", STAGES)
def test_a_users_folder_as_output_dir_is_refused_and_left_intact(tmp_path, capsys, stage):
    folder = _users_folder(tmp_path)
    before = {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    code = cli.main([stage, "--config", str(_config(tmp_path)), "--params", str(PARAMS), "--output_dir", str(folder)])
    err = capsys.readouterr().err
    assert code == 1
    assert str(folder) in err and "refusing to replace it" in err and "--force" in err
    assert {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folder left


def test_force_replaces_a_folder_we_did_not_write(tmp_path):
    folder = _users_folder(tmp_path)
    code = cli.main(["collect", "--config", str(_config(tmp_path)), "--params", str(PARAMS),
                     "--output_dir", str(folder), "--force"])  # fmt: skip
    assert code == 0
    assert not (folder / "notes.txt").exists()
    assert fsutil.marker_stage(folder) == "collect"
    assert json.loads((folder / fsutil.OUTPUT_MARKER).read_text()) == {"stage": "collect", "tool": "tts-pipeline"}


def test_the_output_of_another_stage_is_refused(tmp_path):
    out = tmp_path / "raw"
    with fsutil.atomic_directory(out, "collect") as tmp:
        (tmp / "metadata.csv").write_text("x", encoding="utf-8")
    with pytest.raises(PipelineError, match="holds the output of `tts-pipeline collect`, not preprocess"):
        fsutil.claim_output_dir(out, "preprocess")
    fsutil.claim_output_dir(out, "collect")  # the same stage may replace its own output
    with fsutil.forcing():
        fsutil.claim_output_dir(out, "preprocess")


def test_marker_is_deterministic_and_an_empty_folder_is_fine(tmp_path):
    (tmp_path / "empty").mkdir()
    for name in ("a", "empty"):
        with fsutil.atomic_directory(tmp_path / name, "dataset") as tmp:
            (tmp / "x").write_text("same", encoding="utf-8")
    assert (tmp_path / "a" / fsutil.OUTPUT_MARKER).read_bytes() == (tmp_path / "empty" / fsutil.OUTPUT_MARKER).read_bytes()


def test_an_earlier_versions_output_is_recognised_by_its_layout(tmp_path):
    old = tmp_path / "preprocessed"
    (old / "audio").mkdir(parents=True)
    (old / "metadata.csv").write_text("old", encoding="utf-8")
    (old / "rejected.csv").write_text("old", encoding="utf-8")
    with fsutil.atomic_directory(old, "preprocess", ("metadata.csv", "rejected.csv", "audio")) as tmp:
        (tmp / "metadata.csv").write_text("new", encoding="utf-8")
    assert (old / "metadata.csv").read_text() == "new" and not (old / "rejected.csv").exists()
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "metadata.csv").write_text("a user's", encoding="utf-8")
    with pytest.raises(PipelineError, match="not written by tts-pipeline preprocess"):
        fsutil.claim_output_dir(tmp_path / "half", "preprocess", ("metadata.csv", "rejected.csv", "audio"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temp_folders_of_a_killed_run_are_cleaned_only_when_ours(tmp_path):
    dead = _dead_pid()
    ours = tmp_path / f".out.tmp-{dead}-abc"
    ours.mkdir()
    fsutil.write_output_marker(ours, "preprocess")
    (ours / "half.wav").write_bytes(b"x")
    alive = tmp_path / f".out.tmp-{os.getpid()}-def"  # a run still going: not stale
    alive.mkdir()
    fsutil.write_output_marker(alive, "preprocess")
    foreign = tmp_path / f".out.tmp-{dead}-ghi"  # the right name but no marker: not ours
    foreign.mkdir()
    with fsutil.atomic_directory(tmp_path / "out", "preprocess"):
        pass
    assert not ours.exists() and alive.exists() and foreign.exists()


def test_the_source_tree_is_refused(tmp_path):  # the command of the issue
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    done = subprocess.run(
        [sys.executable, "-m", "tts_pipeline", "preprocess", "--config", str(_config(tmp_path)),
         "--params", str(PARAMS), "--input_dir", str(tmp_path / "nothing"), "--output_dir", "src"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "refusing" in done.stderr
    assert (REPO / "src" / "tts_pipeline" / "fsutil.py").is_file()
