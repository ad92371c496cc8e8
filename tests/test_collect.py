"""collect from a local folder: the demo project, every skip rule, bad input, determinism, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from codex_fixtures import build_project
from helpers import DEMO_PROJECT as DEMO
from helpers import PARAMS, read_rows, tree_bytes

from tts_pipeline import cli
from tts_pipeline.collect import collect
from tts_pipeline.config import load_config


def local_config(tmp_path: Path, project: Path, **collect_settings):
    language = {
        "language": {"code": "xx"},
        "source": {"type": "local", "path": str(project)},
        "paths": {"raw_dataset": str(tmp_path / "raw"), "cache": str(tmp_path / "cache")},
    }
    if collect_settings:
        language["collect"] = collect_settings
    path = tmp_path / "xx.yaml"
    path.write_text(yaml.safe_dump(language))
    return load_config(path, PARAMS)


def test_demo_project_exports_13_verses(tmp_path):
    cfg = local_config(tmp_path, DEMO)
    result = collect(cfg, tmp_path / "raw")
    rows = read_rows(tmp_path / "raw")
    assert result.exported == len(rows) == 13
    assert list(rows[0])[:6] == [
        "file_name",
        "transcription",
        "verse_id",
        "document",
        "audio_id",
        "duration_s",
    ]
    assert rows[0]["file_name"] == "audio/LUK_001_001.webm"
    assert [r["verse_id"] for r in rows][5:8] == ["MRK 1:1", "MRK 1:2", "MRK 1:3"]
    by_verse = {r["verse_id"]: r for r in rows}
    assert by_verse["MRK 1:5"]["audio_id"] == "audio-1730000004000-mrk005"
    assert by_verse["MRK 1:4"]["transcription"] == "I didn't know you were there."
    assert by_verse["MRK 1:1"]["duration_s"] == "0.48"
    for row in rows:  # original bytes, unchanged
        src = DEMO / row["source_path"]
        assert (tmp_path / "raw" / row["file_name"]).read_bytes() == src.read_bytes()
    report = json.loads((tmp_path / "raw" / "collect_report.json").read_text())
    assert report["cells"] == {
        "seen": 21,
        "exported": 13,
        "exported_validated": 11,
        "skipped": 8,
        "skipped_by_reason": {
            "deleted": 1,
            "empty_text": 1,
            "merged": 1,
            "milestone": 1,
            "no_audio": 2,
            "paratext": 1,
            "takes_deleted": 1,
        },
    }
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == [
        ".tts-pipeline-output.json",  # the marker: collect wrote this folder
        "audio",
        "collect_report.json",
        "metadata.csv",
    ]


def test_fixture_project_every_rule_and_bad_input(tmp_path, caplog):
    built = build_project(n_takes=80, real_clips=10)
    project = built.write_local(tmp_path / "project")
    outside = tmp_path / "outside" / "secret.webm"  # what the ../ URL points at: must not be read
    outside.parent.mkdir()
    outside.write_bytes(b"secret")
    cfg = local_config(tmp_path, project)
    result = collect(cfg, tmp_path / "raw")
    rows = read_rows(tmp_path / "raw")
    expected = [{k: str(v) for k, v in r.items() if k != "bytes"} for r in built.rows]
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    for row, want in zip(rows, built.rows, strict=True):
        assert (tmp_path / "raw" / row["file_name"]).read_bytes() == want["bytes"]
    report = result.report
    assert report["cells"]["skipped_by_reason"] == dict(sorted(built.local_skipped.items()))
    assert [d["document"] for d in report["documents"]["failed"]] == ["files/target/BAD.codex"]
    assert "BAD.codex: broken JSON" in report["documents"]["failed"][0]["error"]
    reasons = {p["reason"] for p in report["problems"]}
    assert {"lfs_pointer", "unsafe_url", "file_missing", "takes_missing"} <= reasons
    assert "git lfs pull" in next(p["detail"] for p in report["problems"] if p["reason"] == "lfs_pointer")
    assert b"secret" not in b"".join((tmp_path / "raw" / r["file_name"]).read_bytes()[:6] for r in rows)
    assert "BAD.codex" in caplog.text


def test_local_checkout_reads_fetched_lfs_objects(tmp_path):
    """A git checkout where `git lfs fetch` ran but the files are still pointers."""
    built = build_project(n_takes=12, real_clips=12)
    project = tmp_path / "checkout"
    for path, data in built.git_files.items():  # the repository as git has it: pointers
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_bytes(data)
    for oid, data in built.lfs_objects.items():
        store = project / ".git" / "lfs" / "objects" / oid[:2] / oid[2:4] / oid
        store.parent.mkdir(parents=True, exist_ok=True)
        store.write_bytes(data)
    result = collect(local_config(tmp_path, project), tmp_path / "raw")
    rows = read_rows(tmp_path / "raw")
    assert [r["file_name"] for r in rows] == [r["file_name"] for r in built.rows]
    for row, want in zip(rows, built.rows, strict=True):
        assert (tmp_path / "raw" / row["file_name"]).read_bytes() == want["bytes"]
    assert result.report["cells"]["skipped_by_reason"]["lfs_pointer"] == 1  # only the object nobody pushed


def test_runs_are_byte_identical_and_replace_stale_output(tmp_path):
    cfg = local_config(tmp_path, DEMO)
    collect(cfg, tmp_path / "a")
    # an output of the previous version (no marker yet): recognised by its layout and replaced
    (tmp_path / "b" / "audio").mkdir(parents=True)
    (tmp_path / "b" / "audio" / "STALE.webm").write_bytes(b"old")
    (tmp_path / "b" / "metadata.csv").write_text("file_name\n", encoding="utf-8")
    (tmp_path / "b" / "collect_report.json").write_text("{}", encoding="utf-8")
    collect(cfg, tmp_path / "b")
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    assert not list(tmp_path.glob(".*tmp-*"))


def test_text_source_transcription(tmp_path):
    cfg = local_config(tmp_path, DEMO, text_source="transcription")
    collect(cfg, tmp_path / "raw")
    rows = read_rows(tmp_path / "raw")
    assert len(rows) == 13
    assert rows[0]["transcription"] == "Oh, I'm originally from Chicago also."
    assert (
        json.loads((tmp_path / "raw" / "collect_report.json").read_text())["text_source"] == "transcription"
    )


def test_cli_and_missing_source(tmp_path, capsys):
    cfg_path = tmp_path / "xx.yaml"
    local_config(tmp_path, DEMO)
    assert (
        cli.main(
            [
                "collect",
                "--config",
                str(cfg_path),
                "--params",
                str(PARAMS),
                "--output_dir",
                str(tmp_path / "o"),
            ]
        )
        == 0
    )
    assert len(read_rows(tmp_path / "o")) == 13
    local_config(tmp_path, tmp_path / "no-such-project")
    assert cli.main(["collect", "--config", str(cfg_path), "--params", str(PARAMS)]) == 1
    assert "no-such-project is not a folder" in capsys.readouterr().err


def test_not_a_codex_project(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    local_config(tmp_path, tmp_path / "empty")
    assert cli.main(["collect", "--config", str(tmp_path / "xx.yaml"), "--params", str(PARAMS)]) == 1
    assert "no files/target/ folder" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--preprocess"])
def test_followup_flags_parse(flag, capsys):
    parser = cli.build_parser()
    args = parser.parse_args(["collect", "--config", "x.yaml", flag, "--diarize", "--prepare-training"])
    assert args.preprocess and args.diarize and args.prepare_training
    with pytest.raises(SystemExit):
        parser.parse_args(["collect", "--help"])
    assert "--prepare-training" in capsys.readouterr().out


@pytest.mark.parametrize("documents", [{}, {"EMPTY.codex": '{"cells": [], "metadata": {}}'},
                                       {"GEN.codex": '{"cells": [{"value": "<p>no take</p>", "metadata": {"id": "GEN 1:1"}}]}'}])  # fmt: skip
def test_an_empty_local_project_is_refused_and_the_previous_output_kept(tmp_path, capsys, documents):
    good = local_config(tmp_path, DEMO)
    collect(good, tmp_path / "raw")
    before = tree_bytes(tmp_path / "raw")
    project = tmp_path / "empty-project"
    (project / "files" / "target").mkdir(parents=True)
    for name, text in documents.items():
        (project / "files" / "target" / name).write_text(text, encoding="utf-8")
    local_config(tmp_path, project)  # rewrites xx.yaml to point at the empty project
    code = cli.main(["collect", "--config", str(tmp_path / "xx.yaml"), "--params", str(PARAMS)])
    err = capsys.readouterr().err
    assert code == 1
    assert str(project) in err and ("no files/target/*.codex" in err or "nothing to collect" in err)
    assert "left as it was" in err
    assert tree_bytes(tmp_path / "raw") == before
