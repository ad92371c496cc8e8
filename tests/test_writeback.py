"""Write-back: synthesized takes become new attachments; recordings and choices stay untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fake_gitlab import tree_from_directory
from fake_gitlab_writes import FakeGitLabWrites
from helpers import DEMO_PROJECT, PARAMS, tree_bytes
from synth_helpers import copy_demo_project, shared_tiny_model, write_config

from tts_pipeline import cli, codex, synthesize, writeback, writeback_plan
from tts_pipeline.config import SynthesisSection, load_config
from tts_pipeline.errors import PipelineError
from tts_pipeline.metadata import read_synthesized
from tts_pipeline.verses import local_documents, missing_verses, source_documents
from tts_pipeline.writeback import SyntheticTake

NEW_IDS = {"LUK 1:7", "MRK 1:9", "MRK 1:10"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def synthesized(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo project's missing verses, voiced once for the whole module."""
    out = tmp_path_factory.mktemp("synth") / "synthesized"
    verses, _ = missing_verses(local_documents(DEMO_PROJECT))
    fast = SynthesisSection(speaking_rate=4.0)  # an untrained model drawls: keep the clips short
    synthesize.synthesize_verses(verses, model_dir, out, fast, None, progress=False)
    return out


def _cells(project: Path) -> dict[str, dict]:
    cells = {}
    for path in sorted((project / "files" / "target").glob("*.codex")):
        for cell in json.loads(path.read_text())["cells"]:
            cells[cell["metadata"]["id"]] = cell
    return cells


def _takes(synthesized: Path) -> list[SyntheticTake]:
    rows = read_synthesized(synthesized)
    return [SyntheticTake.from_row(r, synthesized) for r in rows]


def test_write_back_adds_exactly_the_synthetic_takes(synthesized: Path, tmp_path: Path) -> None:
    project = copy_demo_project(tmp_path / "project")
    before_files = tree_bytes(project)
    before_cells = _cells(project)

    report = writeback.write_back_local(project, _takes(synthesized))
    assert sorted(c.take.verse_id for c in report.changes) == sorted(NEW_IDS) and report.skipped == []

    after_files = tree_bytes(project)
    after_cells = _cells(project)
    # every pre-existing file except the two edited documents is byte-identical (all human takes)
    changed = {k for k in before_files if before_files[k] != after_files.get(k)}
    assert changed == {"files/target/LUK.codex", "files/target/MRK.codex"}
    added = set(after_files) - set(before_files)
    assert added == {c.files_path for c in report.changes}  # no pointers/ folder in the demo: none made
    # cells not voiced are unchanged, to the last key
    for cell_id, cell in before_cells.items():
        if cell_id not in NEW_IDS:
            assert after_cells[cell_id] == cell, cell_id
    for change in report.changes:
        cell = after_cells[change.take.cell_id]
        attachment = cell["metadata"]["attachments"][change.audio_id]
        assert attachment["url"] == change.files_path
        assert attachment["url"].startswith(f".project/attachments/files/{change.take.document}/")
        assert attachment["metadata"]["synthetic"] is True
        assert attachment["metadata"]["modelRevision"] == change.take.model_revision
        assert attachment["transcription"]["content"] == change.take.text
        assert after_files[change.files_path] == change.take.audio_path.read_bytes()
        # the cells had no selectedAudioId, so the new take is selected
        assert change.select and cell["metadata"]["selectedAudioId"] == change.audio_id
        # earlier attachments (MRK 1:10's deleted take) are still there, unchanged
        old = before_cells[change.take.cell_id]["metadata"].get("attachments", {})
        assert {k: v for k, v in cell["metadata"]["attachments"].items() if k in old} == old
    # collect's rules still see no human recording there; synthesize still lists them
    verses, _ = missing_verses(local_documents(project))
    assert {v.verse_id for v in verses} == NEW_IDS

    # second run: nothing added, nothing changed
    again = writeback.write_back_local(project, _takes(synthesized))
    assert again.changes == [] and len(again.skipped) == 3
    assert all("already has this synthetic take" in reason for _, reason in again.skipped)
    assert tree_bytes(project) == after_files


def test_dry_run_lists_changes_and_writes_nothing(synthesized: Path, tmp_path: Path) -> None:
    project = copy_demo_project(tmp_path / "project")
    before = tree_bytes(project)
    report = writeback.write_back_local(project, _takes(synthesized), dry_run=True)
    assert len(report.changes) == 3
    assert "would add 3 synthetic take(s)" in report.summary(dry_run=True)
    assert tree_bytes(project) == before


def _project_with(tmp_path: Path, cells: list[dict]) -> Path:
    project = tmp_path / "p"
    (project / "files" / "target").mkdir(parents=True)
    (project / ".project" / "attachments" / "pointers").mkdir(parents=True)
    doc = {"cells": cells, "metadata": {"id": "GEN"}}
    (project / "files" / "target" / "GEN.codex").write_text(json.dumps(doc, indent=4) + "\n")
    return project


def _text_cell(cell_id: str, text: str, **meta) -> dict:
    return {"kind": 2, "value": f"<span>{text}</span>", "metadata": {"id": cell_id, "type": "text", **meta}}


def test_selection_rules_and_stale_takes(synthesized: Path, tmp_path: Path) -> None:
    audio = sorted((synthesized / "audio").iterdir())[0]
    deleted_take = {"audio-1-x": {"url": ".project/attachments/files/GEN/audio-1-x.webm", "isDeleted": True}}
    project = _project_with(
        tmp_path,
        [
            _text_cell("GEN 1:1", "kept selection", attachments=deleted_take, selectedAudioId="audio-1-x"),
            _text_cell("GEN 1:2", "no selection"),
            _text_cell(
                "GEN 1:3", "now recorded", attachments={"audio-2-h": {"url": "a.webm", "type": "audio"}}
            ),
            _text_cell("GEN 1:4", "edited text"),
        ],
    )

    def take(cell_id: str, text: str, revision: str = "rev1") -> SyntheticTake:
        return SyntheticTake("GEN", cell_id, cell_id, text, revision, "Sheila", "webm", 1.0, audio)

    takes = [
        take("GEN 1:1", "kept selection"),
        take("GEN 1:2", "no selection"),
        take("GEN 1:3", "now recorded"),
    ]
    takes.append(take("GEN 1:4", "the old text"))
    takes.append(take("GEN 1:99", "gone"))
    report = writeback.write_back_local(project, takes, now_ms=1_700_000_000_000)
    assert [(c.take.cell_id, c.select) for c in report.changes] == [("GEN 1:1", False), ("GEN 1:2", True)]
    reasons = {t.cell_id: r for t, r in report.skipped}
    assert "recorded since synthesis" in reasons["GEN 1:3"]
    assert "text changed" in reasons["GEN 1:4"]
    assert "not found" in reasons["GEN 1:99"]
    cells = _cells(project)
    assert cells["GEN 1:1"]["metadata"]["selectedAudioId"] == "audio-1-x"  # a selection is never changed
    new_id = report.changes[0].audio_id
    assert new_id.startswith("audio-1700000000000-tts")
    assert codex.parse_cell(cells["GEN 1:2"], "GEN", 0).takes[0].created_at == 1_700_000_000_000
    # the project has a pointers/ folder (git-synced): the audio is written there too
    assert (
        project / ".project/attachments/pointers/GEN" / f"{new_id}.webm"
    ).read_bytes() == audio.read_bytes()
    assert json.loads((project / "files/target/GEN.codex").read_text())["metadata"] == {"id": "GEN"}
    assert (project / "files/target/GEN.codex").read_text().startswith('{\n    "cells"')  # indent kept

    # a new model revision adds a second synthetic take but keeps the first one selected
    second = writeback.write_back_local(
        project, [take("GEN 1:2", "no selection", "rev2")], now_ms=1_700_000_000_500
    )
    assert len(second.changes) == 1 and not second.changes[0].select
    meta = _cells(project)["GEN 1:2"]["metadata"]
    assert len(meta["attachments"]) == 2 and meta["selectedAudioId"] == report.changes[1].audio_id
    # another speaker is another take; the same speaker again is a duplicate
    other = take("GEN 1:2", "no selection", "rev2")
    other.speaker = "Diane"
    assert len(writeback.write_back_local(project, [other]).changes) == 1
    assert writeback.write_back_local(project, [other]).changes == []


def test_missing_audio_fails_before_touching_the_project(tmp_path: Path) -> None:
    project = _project_with(tmp_path, [_text_cell("GEN 1:1", "hello")])
    before = tree_bytes(project)
    take = SyntheticTake(
        "GEN", "GEN 1:1", "GEN 1:1", "hello", "rev", "s", "webm", 1.0, tmp_path / "nope.webm"
    )
    with pytest.raises(Exception, match="synthesized audio not found"):
        writeback.write_back_local(project, [take])
    assert tree_bytes(project) == before


def test_cli_write_back_on_a_copy_of_the_demo(model_dir: Path, tmp_path: Path, capsys) -> None:
    project = copy_demo_project(tmp_path / "project")
    config = write_config(tmp_path, project, model_dir, synthesis={"speaking_rate": 4.0})
    args = ["synthesize", "--config", str(config), "--params", str(PARAMS), "--write-back"]
    assert cli.main(args) == 0
    assert "added 3 synthetic take(s)" in capsys.readouterr().out
    snapshot = tree_bytes(project)
    assert cli.main(args) == 0
    out = capsys.readouterr().out
    assert "added 0 synthetic take(s), skipped 3" in out and "3 from cache" in out
    assert tree_bytes(project) == snapshot


# --------------------------------------------------------------------------- GitLab


def _gitlab_config(tmp_path: Path, server: FakeGitLabWrites, model_dir: Path, monkeypatch) -> Path:
    monkeypatch.setenv("TTS_TEST_GITLAB_TOKEN", server.token)
    source = {
        "type": "gitlab",
        "url": server.url,
        "project": "team/demo",
        "token_env": "TTS_TEST_GITLAB_TOKEN",
    }
    config = write_config(tmp_path, tmp_path, model_dir, source=source)
    return config


def test_gitlab_write_back_opens_a_merge_request(
    model_dir: Path, synthesized: Path, tmp_path: Path, monkeypatch
) -> None:
    with FakeGitLabWrites() as server:
        files = tree_from_directory(
            DEMO_PROJECT,
            lfs=lambda p: p.endswith(".webm"),
            lfs_objects=server.lfs_objects,
            rename=lambda p: p.replace(codex.ATTACHMENT_FILES_DIR, codex.ATTACHMENT_POINTERS_DIR),
        )
        project = server.add_project("team/demo", files)
        main_sha = project.branches["main"]
        cfg = load_config(_gitlab_config(tmp_path, server, model_dir, monkeypatch), PARAMS)
        assert cfg.source.type == "gitlab"

        verses, problems = missing_verses(source_documents(cfg))
        assert problems == [] and {v.verse_id for v in verses} == NEW_IDS
        out = synthesized  # the same verses as the local demo project

        dry = writeback.write_back(cfg, out, dry_run=True)
        assert len(dry.changes) == 3 and server.count("POST", r"/repository/commits") == 0

        server.fail("POST", r"/info/lfs/objects/batch$", 503)  # flaky server: retried
        server.fail("PUT", r"/gitlab-lfs/objects/", 429)
        report = writeback.write_back(cfg, out)
        assert len(report.changes) == 3 and report.branch and report.merge_request
        assert server.count("PUT", r"/gitlab-lfs/objects/", status=429) == 1
        assert project.branches["main"] == main_sha  # default branch untouched
        assert report.branch in project.branches and report.branch != "main"
        [mr] = server.merge_requests
        assert (mr["source_branch"], mr["target_branch"]) == (report.branch, "main")
        branch = project.files(report.branch)
        main = project.files("main")
        assert {k for k in branch if branch.get(k) != main.get(k)} == (
            {c.pointer_path for c in report.changes} | {"files/target/LUK.codex", "files/target/MRK.codex"}
        )
        for change in report.changes:
            pointer = branch[change.pointer_path].decode()
            data = change.take.audio_path.read_bytes()
            oid = hashlib.sha256(data).hexdigest()
            assert (
                pointer == f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n"
            )
            assert server.lfs_objects[oid] == data  # uploaded through the LFS batch API
            assert not any(k.startswith(codex.ATTACHMENT_FILES_DIR) for k in branch)  # files/ is gitignored
        mrk = json.loads(branch["files/target/MRK.codex"])
        cell = next(c for c in mrk["cells"] if c["metadata"]["id"] == "MRK 1:9")
        assert (
            cell["metadata"]["attachments"][cell["metadata"]["selectedAudioId"]]["metadata"]["synthetic"]
            is True
        )

        # pushing the same takes again creates nothing new
        again = writeback.write_back(cfg, out)
        assert again.changes == [] and again.merge_request == mr["web_url"]
        assert len(server.merge_requests) == 1 and server.count("POST", r"/repository/commits", 201) == 1
        assert project.branches["main"] == main_sha


def test_gitlab_write_back_without_token_is_a_clear_error(
    model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    with FakeGitLabWrites() as server:
        cfg = load_config(_gitlab_config(tmp_path, server, model_dir, monkeypatch), PARAMS)
        monkeypatch.delenv("TTS_TEST_GITLAB_TOKEN")
        with pytest.raises(Exception, match="TTS_TEST_GITLAB_TOKEN"):
            writeback.write_back_takes(cfg, [])


def test_documents_are_rewritten_in_their_own_format() -> None:
    for path in (DEMO_PROJECT / "files" / "target").glob("*.codex"):
        text = path.read_text(encoding="utf-8")
        assert writeback_plan.dump_like(text, json.loads(text)) == text
    compact = '{"cells":[{"value":"caf\u00e9"}],"metadata":{}}'
    assert writeback_plan.dump_like(compact, json.loads(compact)) == compact
    tabs = '{\n\t"cells": []\n}\n'
    assert writeback_plan.dump_like(tabs, json.loads(tabs)) == tabs


# --------------------------------------------------------------------------- GitLab says no (issue 15)


def _gitlab_project(server: FakeGitLabWrites):
    files = tree_from_directory(
        DEMO_PROJECT,
        lfs=lambda p: p.endswith(".webm"),
        lfs_objects=server.lfs_objects,
        rename=lambda p: p.replace(codex.ATTACHMENT_FILES_DIR, codex.ATTACHMENT_POINTERS_DIR),
    )
    return server.add_project("team/demo", files)


@pytest.mark.parametrize(
    ("method", "path", "said"),
    [
        ("POST", r"/repository/commits$", "write-back refused (HTTP 403)"),
        ("POST", r"/info/lfs/objects/batch$", "LFS batch upload failed (HTTP 403)"),
        ("PUT", r"/gitlab-lfs/objects/", "failed (HTTP 403)"),
    ],
)
def test_a_refused_commit_or_upload_leaves_no_branch_and_the_next_run_completes(
    model_dir: Path, synthesized: Path, tmp_path: Path, monkeypatch, method: str, path: str, said: str
) -> None:
    with FakeGitLabWrites() as server:
        project = _gitlab_project(server)
        branches = dict(project.branches)
        config = _gitlab_config(tmp_path, server, model_dir, monkeypatch)
        server.fail(method, path, 403)
        with pytest.raises(PipelineError) as info:
            writeback.write_back(load_config(config, PARAMS), synthesized)
        err = str(info.value)
        assert "\n" not in err  # the CLI prints it as one line
        assert said in err and "team/demo" in err and "no branch was made" in err and "re-run" in err
        assert server.token not in err
        assert project.branches == branches and server.merge_requests == []
        report = writeback.write_back(load_config(config, PARAMS), synthesized)  # the next run
        assert len(report.changes) == 3 and report.branch in project.branches
        assert len(server.merge_requests) == 1


def test_a_branch_of_that_name_with_other_content_is_not_reused(
    model_dir: Path, synthesized: Path, tmp_path: Path, monkeypatch
) -> None:
    with FakeGitLabWrites() as server:
        project = _gitlab_project(server)
        cfg = load_config(_gitlab_config(tmp_path, server, model_dir, monkeypatch), PARAMS)
        branch = writeback.branch_name(_takes(synthesized))
        somebody = project.commit({**project.files("main"), "notes.txt": b"somebody's work"}, branch=branch)
        with pytest.raises(PipelineError, match=rf"team/demo.*branch {branch} already exists but does not hold"):
            writeback.write_back(cfg, synthesized)
        assert project.branches[branch] == somebody and server.merge_requests == []
        del project.branches[branch]  # what the message says to do
        report = writeback.write_back(cfg, synthesized)
        assert len(report.changes) == 3 and len(server.merge_requests) == 1


def test_a_failed_merge_request_is_opened_by_the_next_run(
    model_dir: Path, synthesized: Path, tmp_path: Path, monkeypatch
) -> None:
    with FakeGitLabWrites() as server:
        project = _gitlab_project(server)
        cfg = load_config(_gitlab_config(tmp_path, server, model_dir, monkeypatch), PARAMS)
        server.fail("POST", r"/merge_requests$", 403)
        with pytest.raises(PipelineError, match=r"team/demo.*Could not open the merge request.*re-run"):
            writeback.write_back(cfg, synthesized)
        [branch] = [b for b in project.branches if b != "main"]
        assert writeback.plan_takes(project_documents(project, branch), _takes(synthesized), 0)[0].changes == []
        report = writeback.write_back(cfg, synthesized)
        [mr] = server.merge_requests
        assert report.merge_request == mr["web_url"] and mr["source_branch"] == branch
        assert server.count("POST", r"/repository/commits", 201) == 1  # committed once


def project_documents(project, branch: str) -> dict[str, bytes]:
    return {k: v for k, v in project.files(branch).items() if k.startswith("files/target/")}


def test_lfs_uploads_go_in_batches_of_100_retry_a_busy_server_and_skip_stored_objects() -> None:
    """The one LFS client of collect and write-back: the batch API in chunks, the one retry rule."""
    from tts_pipeline.lfs import LfsClient, make_lfs_pointer

    with FakeGitLabWrites() as server:
        _gitlab_project(server)
        blobs = [f"take {i}".encode() for i in range(150)]
        stored = make_lfs_pointer(blobs[0])[0].oid
        server.lfs_objects[stored] = blobs[0]  # already on the server: not sent again
        server.fail("POST", r"/info/lfs/objects/batch$", 503, times=1)
        client = LfsClient(f"{server.url}/team/demo", server.token, max_retries=2, backoff_s=0.01)
        assert client.upload(blobs) == 149
        batches = [r for r in server.log if r.method == "POST" and r.path.endswith("/info/lfs/objects/batch")]
        assert [r.status for r in batches] == [503, 200, 200]  # retried once, then two chunks (100 + 50)
        assert all(server.lfs_objects[make_lfs_pointer(b)[0].oid] == b for b in blobs)
