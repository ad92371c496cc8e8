"""Review of the sources area (collect, GitLab client, write-back): defects found, pinned by tests."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from codex_fixtures import REAL_CLIPS, cell
from helpers import PARAMS, read_rows

from tts_pipeline import writeback
from tts_pipeline.collect import collect
from tts_pipeline.config import ConfigError, load_config
from tts_pipeline.errors import PipelineError
from tts_pipeline.verses import local_documents, missing_verses, source_documents

FILES = ".project/attachments/files"


def _local_config(tmp_path: Path, project: Path):
    language = {
        "language": {"code": "xx"},
        "source": {"type": "local", "path": str(project)},
        "paths": {"raw_dataset": str(tmp_path / "raw"), "cache": str(tmp_path / "cache")},
    }
    path = tmp_path / "xx.yaml"
    path.write_text(yaml.safe_dump(language))
    return load_config(path, PARAMS)


def _project(root: Path, cells: list[dict], name: str = "MRK") -> Path:
    (root / "files" / "target").mkdir(parents=True, exist_ok=True)
    doc = {"cells": cells, "metadata": {}}
    (root / "files" / "target" / f"{name}.codex").write_text(json.dumps(doc, indent=2) + "\n")
    return root


def _take(project: Path, audio_id: str, data: bytes, book: str = "MRK") -> dict:
    path = project / FILES / book / f"{audio_id}.webm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    url = f"{FILES}/{book}/{audio_id}.webm"
    return {audio_id: {"url": url, "type": "audio", "createdAt": 1, "isDeleted": False}}


def test_duplicate_cell_ids_in_one_document_get_distinct_files(tmp_path: Path) -> None:
    """Two cells with the same id (a copy-paste in the app) must not share one audio file.

    Before: both rows pointed at one file name, the second copy overwrote the first, so one
    row's transcription was paired with the other verse's audio.
    """
    project = tmp_path / "p"
    clips = [p.read_bytes() for p in REAL_CLIPS[:3]]
    cells = [
        cell("MRK 1:1", "<p>first</p>", attachments=_take(project, "audio-1-a", clips[0])),
        cell("MRK 1:1", "<p>second</p>", attachments=_take(project, "audio-2-b", clips[1])),
        cell("MRK 1:2", "<p>third</p>", attachments=_take(project, "audio-3-c", clips[2])),
    ]
    _project(project, cells)
    collect(_local_config(tmp_path, project), tmp_path / "raw")
    collect(_local_config(tmp_path, project), tmp_path / "raw2")
    rows = read_rows(tmp_path / "raw")
    names = [r["file_name"] for r in rows]
    assert len(set(names)) == 3, names
    assert names == [r["file_name"] for r in read_rows(tmp_path / "raw2")]  # deterministic
    assert names[2] == "audio/MRK_001_002.webm"  # unaffected cells keep their plain name
    for row, data in zip(rows, clips, strict=True):
        assert (tmp_path / "raw" / row["file_name"]).read_bytes() == data


def test_write_back_with_duplicate_cell_ids_reaches_each_cell(tmp_path: Path) -> None:
    """Each synthesized take goes to the cell it was made for, even when two cells share an id.

    Before: both takes were matched to the first cell; the second was skipped as "text
    changed, re-run synthesize", which a re-run could never fix.
    """
    project = _project(tmp_path / "p", [cell("MRK 1:1", "<p>first</p>"), cell("MRK 1:1", "<p>second</p>")])
    documents = local_documents(project)
    verses, _ = missing_verses(documents)
    assert len({v.stem for v in verses}) == 2
    takes = _synthetic_takes(tmp_path, documents)
    report = writeback.write_back_local(project, takes, now_ms=1000)
    assert len(report.changes) == 2 and not report.skipped
    doc = json.loads((project / "files" / "target" / "MRK.codex").read_text())
    for raw, text in zip(doc["cells"], ["first", "second"], strict=True):
        [(audio_id, att)] = raw["metadata"]["attachments"].items()
        assert att["transcription"]["content"] == text
        assert (project / att["url"]).read_bytes().endswith(text.encode())
    again = writeback.write_back_local(project, takes, now_ms=2000)
    assert again.changes == [] and len(again.skipped) == 2


# --------------------------------------------------------------------------- GitLab write-back

TOKEN = "glpat-review-secret"


def _gitlab_cfg(tmp_path: Path, url: str, monkeypatch, project: str = "team/demo"):
    monkeypatch.setenv("TTS_REVIEW_TOKEN", TOKEN)
    language = {
        "language": {"code": "xx"},
        "source": {"type": "gitlab", "url": url, "project": project, "token_env": "TTS_REVIEW_TOKEN"},
        "paths": {"raw_dataset": str(tmp_path / "raw"), "cache": str(tmp_path / "cache")},
        "collect": {"retry_backoff_s": 0.01, "max_retries": 2},
    }
    path = tmp_path / "xx.yaml"
    path.write_text(yaml.safe_dump(language))
    return load_config(path, PARAMS)


def _synthetic_takes(tmp_path: Path, documents: list[tuple[str, bytes]]) -> list[writeback.SyntheticTake]:
    verses, _ = missing_verses(documents)
    takes = []
    for verse in verses:
        audio = tmp_path / f"{verse.stem}.webm"
        audio.write_bytes(b"\x1aE\xdf\xa3" + verse.text.encode())
        take = writeback.SyntheticTake.planned(verse, "rev1", "spk", "webm")
        take.audio_path = audio
        takes.append(take)
    return takes


def test_gitlab_write_back_rerun_opens_the_merge_request_a_failed_run_did_not(tmp_path, monkeypatch) -> None:
    """The commit landed but opening the merge request failed (refused, Ctrl-C, network):
    a re-run must open it, not report "already pushed" with no merge request at all."""
    from fake_gitlab_writes import FakeGitLabWrites

    doc = json.dumps({"cells": [cell("MRK 1:1", "<p>voice me</p>")], "metadata": {}}, indent=2).encode()
    with FakeGitLabWrites(token=TOKEN) as server:
        project = server.add_project("team/demo", {"files/target/MRK.codex": doc})
        main_sha = project.branches["main"]
        cfg = _gitlab_cfg(tmp_path, server.url, monkeypatch)
        takes = _synthetic_takes(tmp_path, [("files/target/MRK.codex", doc)])
        server.fail("POST", r"/merge_requests$", 409, times=1)
        with pytest.raises(PipelineError, match=r"409.*re-run to open its merge request") as failed:
            writeback.write_back_takes(cfg, takes)
        assert TOKEN not in str(failed.value)
        assert not server.merge_requests and len(project.branches) == 2
        again = writeback.write_back_takes(cfg, takes)
        [mr] = server.merge_requests
        assert again.merge_request == mr["web_url"] and mr["target_branch"] == "main"
        assert mr["source_branch"] == again.branch
        assert server.count("POST", r"/repository/commits", 201) == 1  # no second commit
        assert project.branches["main"] == main_sha
        third = writeback.write_back_takes(cfg, takes)
        assert len(server.merge_requests) == 1 and third.merge_request == mr["web_url"]


# --------------------------------------------------------------------------- GitLab read side


def test_source_url_without_scheme_is_a_clear_error(tmp_path, monkeypatch, capsys) -> None:
    """`url: gitlab.example.com` gave a requests.MissingSchema traceback."""
    from tts_pipeline import cli

    cfg = _gitlab_cfg(tmp_path, "gitlab.example.com", monkeypatch)
    assert cli.main(["collect", "--config", str(cfg.config_path), "--params", str(PARAMS)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "gitlab.example.com" in err and "https://" in err


def test_token_inside_source_url_never_shown(tmp_path, monkeypatch, capsys) -> None:
    """A clone URL pasted with its credentials (https://oauth2:<token>@host) must not spread the
    token into logs, errors, collect_report.json or dvc.lock (the language file is a DVC param):
    the config refuses it before any work, without echoing it. `redact_url` (tested below)
    still masks credentials wherever a URL is logged."""
    from tts_pipeline import cli

    url = f"http://oauth2:{TOKEN}@127.0.0.1:9"
    with pytest.raises(ConfigError, match="must not contain a user name or token") as info:
        _gitlab_cfg(tmp_path, url, monkeypatch)
    assert TOKEN not in str(info.value)
    assert cli.main(["collect", "--config", str(tmp_path / "xx.yaml"), "--params", str(PARAMS)]) == 2
    out = capsys.readouterr()
    assert "source.url must not contain" in out.err
    assert TOKEN not in out.err + out.out
    assert not (tmp_path / "raw").exists()


def test_gitlab_token_is_not_sent_to_an_lfs_object_store_on_another_host(tmp_path, monkeypatch) -> None:
    """An LFS batch answer may send downloads to another host (a CDN, an object store); the
    GitLab token must only go to GitLab, as git-lfs does. Before: Basic oauth2:<token> went along."""
    import base64

    from fake_gitlab import LFS_MEDIA_TYPE, FakeGitLab, FakeResponse, lfs_pointer

    data = REAL_CLIPS[0].read_bytes()
    oid, pointer = lfs_pointer(data)
    url = ".project/attachments/pointers/MRK/audio-1-a.webm"
    take = {"audio-1-a": {"url": url, "type": "audio", "createdAt": 1}}
    doc = json.dumps({"cells": [cell("MRK 1:1", "<p>text</p>", attachments=take)], "metadata": {}}).encode()
    seen: list[str] = []
    with FakeGitLab(token=TOKEN) as server, FakeGitLab(token=None) as store:

        def stored(request):
            seen.append(request.headers.get("Authorization") or "")
            return FakeResponse.raw(data)

        def batch(request):
            href = f"{store.url}/objects/{oid}"
            answer = {"objects": [{"oid": oid, "size": len(data), "actions": {"download": {"href": href}}}]}
            return FakeResponse(200, json.dumps(answer).encode(), content_type=LFS_MEDIA_TYPE)

        store.add_route("GET", r"^/objects/[0-9a-f]{64}$", stored)
        server.add_route("POST", r"^/.+\.git/info/lfs/objects/batch$", batch)
        server.add_project("team/demo", {"files/target/MRK.codex": doc, url: pointer})
        result = collect(_gitlab_cfg(tmp_path, server.url, monkeypatch), tmp_path / "raw")
    assert result.exported == 1 and seen
    secret = base64.b64encode(f"oauth2:{TOKEN}".encode()).decode()
    assert not any(TOKEN in h or secret in h for h in seen), seen


def test_write_back_lfs_upload_sends_the_token_only_to_gitlab() -> None:
    """The same rule for uploads: a PUT/verify href on another host gets no GitLab token."""
    from fake_gitlab import LFS_MEDIA_TYPE, FakeGitLab, FakeResponse

    seen: list[str] = []
    with FakeGitLab(token=TOKEN) as server, FakeGitLab(token=None) as store:

        def put(request):
            seen.append(request.headers.get("Authorization") or "")
            return FakeResponse(200, b"", content_type="text/plain")

        def batch(request):
            [obj] = request.json()["objects"]
            href = f"{store.url}/upload/{obj['oid']}"
            actions = {"upload": {"href": href}, "verify": {"href": href + "/verify"}}
            answer = {"objects": [{**obj, "actions": actions}]}
            return FakeResponse(200, json.dumps(answer).encode(), content_type=LFS_MEDIA_TYPE)

        store.add_route("PUT", r"^/upload/[0-9a-f]{64}$", put)
        store.add_route("POST", r"^/upload/[0-9a-f]{64}/verify$", put)
        server.add_route("POST", r"^/.+\.git/info/lfs/objects/batch$", batch)
        assert writeback.lfs_upload(f"{server.url}/team/demo.git", TOKEN, [b"audio"], backoff_s=0.01) == 1
    assert len(seen) == 2 and seen == ["", ""]


def test_redact_url_masks_every_credential_form() -> None:
    from tts_pipeline.lfs import redact_url

    assert redact_url("https://oauth2:glpat-x@host/g/p.git") == "https://oauth2:***@host/g/p.git"
    assert "glpat-x" not in redact_url("https://glpat-x@host")  # a lone name may be the token
    assert redact_url("https://host/a@b") == "https://host/a@b"  # an @ in the path is no credential


def test_cell_text_survives_an_unclosed_tag_inside_a_footnote_marker() -> None:
    """`<sup class="footnote-marker">1<i>a</sup> rest`: the stray <i> kept the parser in
    "skip" mode, so every word after the footnote was dropped from the transcription."""
    from tts_pipeline.codex import clean_text

    html = '<span>In the beginning<sup class="footnote-marker">1<i>a</sup> God created</span>'
    assert clean_text(html) == "In the beginning God created"
    nested = '<p>a<sup class="footnote-marker"><b>1</b></sup> b<script>x<i></script> c</p>'
    assert clean_text(nested) == "a b c"


def test_synthesize_lists_the_same_gitlab_documents_as_collect(tmp_path, monkeypatch) -> None:
    """synthesize (GitLab) read nested files/target/**/X.codex too, which collect and the local
    source ignore; a nested copy then shadowed the real document's name on write-back. And a
    public project needs no token to be read (collect reads it without one)."""
    from fake_gitlab import FakeGitLab

    top = json.dumps({"cells": [cell("MRK 1:1", "<p>top</p>")], "metadata": {}}).encode()
    old = json.dumps({"cells": [cell("MRK 1:1", "<p>old copy</p>")], "metadata": {}}).encode()
    with FakeGitLab(token=None) as server:  # a public project
        server.add_project("team/demo", {"files/target/MRK.codex": top, "files/target/old/MRK.codex": old})
        cfg = _gitlab_cfg(tmp_path, server.url, monkeypatch)
        monkeypatch.delenv("TTS_REVIEW_TOKEN")
        verses, problems = missing_verses(source_documents(cfg))
    assert problems == [] and [v.text for v in verses] == ["top"]


def test_a_tree_entry_id_that_is_not_a_git_id_is_refused(tmp_path, monkeypatch) -> None:
    """Blob ids become cache paths; a server answering `"id": "../../evil/x"` made collect
    create folders outside its cache. A non-hex id is now refused, naming the file."""
    from fake_gitlab import FakeGitLab, FakeResponse

    doc = json.dumps({"cells": [], "metadata": {}}).encode()
    with FakeGitLab(token=TOKEN) as server:
        server.add_project("team/demo", {"files/target/MRK.codex": doc})
        entry = {"id": "../../evil/x", "name": "MRK.codex", "type": "blob", "path": "files/target/MRK.codex"}
        server.add_route(
            "GET", r"^/api/v4/projects/[^/]+/repository/tree$", lambda r: FakeResponse.json([entry])
        )
        with pytest.raises(PipelineError, match=r"files/target/MRK\.codex.*not a git object id"):
            collect(_gitlab_cfg(tmp_path, server.url, monkeypatch), tmp_path / "raw")
    assert not (tmp_path / "evil").exists()


def _two_verse_project(tmp_path: Path) -> tuple[Path, list[writeback.SyntheticTake]]:
    project = _project(tmp_path / "p", [cell("MRK 1:1", "<p>one</p>"), cell("MRK 1:2", "<p>two</p>")])
    (project / ".project" / "attachments" / "pointers").mkdir(parents=True)
    takes = _synthetic_takes(tmp_path, local_documents(project))
    return project, takes


def test_write_back_interrupted_or_raced_leaves_the_document_and_no_orphans(tmp_path, monkeypatch) -> None:
    """Ctrl-C while writing, or the app saving the document meanwhile: the .codex keeps its
    bytes (the app's, in the race) and the audio files already written are removed."""
    from tts_pipeline import fsutil

    project, takes = _two_verse_project(tmp_path)
    doc_path = project / "files" / "target" / "MRK.codex"
    before = doc_path.read_bytes()
    real = fsutil.atomic_write_bytes
    calls = {"n": 0}

    def interrupted(path, data):
        calls["n"] += 1
        if calls["n"] == 3:  # 2nd take, files/ copy (after both copies of the 1st)
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(writeback, "atomic_write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        writeback.write_back_local(project, takes, now_ms=1000)
    assert doc_path.read_bytes() == before
    assert not [p for p in (project / ".project").rglob("*") if p.is_file()]

    saved_by_app = before.replace(b"one", b"one (edited)")

    def racing(path, data):
        real(path, data)
        if Path(path).suffix == ".webm":
            doc_path.write_bytes(saved_by_app)

    monkeypatch.setattr(writeback, "atomic_write_bytes", racing)
    with pytest.raises(PipelineError, match="changed while writing back"):
        writeback.write_back_local(project, takes, now_ms=1000)
    assert doc_path.read_bytes() == saved_by_app
    assert not [p for p in (project / ".project").rglob("*") if p.is_file()]

    monkeypatch.setattr(writeback, "atomic_write_bytes", real)
    doc_path.write_bytes(before)
    report = writeback.write_back_local(project, takes, now_ms=1000)
    assert len(report.changes) == 2
    assert len([p for p in (project / ".project").rglob("*.webm")]) == 4  # files/ + pointers/


def test_a_lone_surrogate_in_a_cell_neither_crashes_collect_nor_write_back(tmp_path) -> None:
    """The app's JSON.stringify writes half an emoji as `"\\ud83d"`. Before: collect died with a
    UnicodeEncodeError (no file named) writing metadata.csv, and write-back on that document too."""
    project = tmp_path / "p"
    clip = REAL_CLIPS[0].read_bytes()
    half = "\ud83d"
    cells = [
        cell("MRK 1:1", f"<p>smile {half} here</p>", attachments=_take(project, "audio-1-a", clip)),
        cell("MRK 1:2", f"<p>voice {half} me</p>"),
    ]
    _project(project, cells)
    collect(_local_config(tmp_path, project), tmp_path / "raw")
    [row] = read_rows(tmp_path / "raw")
    assert row["transcription"] == "smile here"

    takes = _synthetic_takes(tmp_path, local_documents(project))
    assert [t.text for t in takes] == ["voice me"]
    report = writeback.write_back_local(project, takes, now_ms=1000)
    assert len(report.changes) == 1
    doc = json.loads((project / "files" / "target" / "MRK.codex").read_text(encoding="utf-8"))
    assert [c["value"] for c in doc["cells"]] == [c["value"] for c in cells]  # kept exactly


def test_gitlab_write_back_streams_the_audio_instead_of_holding_it_all(tmp_path, monkeypatch) -> None:
    """A whole book voiced is thousands of takes; before, every synthesized file was read into
    memory at once (then uploaded). Peak memory must stay near one file, not grow with the count."""
    import hashlib
    import os
    import tracemalloc

    from fake_gitlab import FakeResponse
    from fake_gitlab_writes import FakeGitLabWrites

    n, size = 8, 2_000_000
    cells = [cell(f"MRK 1:{i}", f"<p>verse {i}</p>") for i in range(1, n + 1)]
    doc = json.dumps({"cells": cells, "metadata": {}}, indent=2).encode()
    takes = _synthetic_takes(tmp_path, [("files/target/MRK.codex", doc)])
    for take in takes:
        take.audio_path.write_bytes(os.urandom(size))  # type: ignore[union-attr]
    uploaded: list[str] = []
    with FakeGitLabWrites(token=TOKEN) as server:

        def put(request):  # check and drop the bytes (the fake would keep them all in memory)
            uploaded.append(hashlib.sha256(request.body).hexdigest())
            return FakeResponse(200, b"", content_type="text/plain")

        server.add_route("PUT", r"^/.+\.git/gitlab-lfs/objects/[0-9a-f]{64}/\d+$", put)
        project = server.add_project("team/demo", {"files/target/MRK.codex": doc})
        cfg = _gitlab_cfg(tmp_path, server.url, monkeypatch)
        tracemalloc.start()
        try:
            report = writeback.write_back_gitlab(cfg, takes, now_ms=1000)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        branch = project.files(report.branch)
    assert len(report.changes) == n and report.merge_request
    wanted = sorted(hashlib.sha256(t.audio_path.read_bytes()).hexdigest() for t in takes)  # type: ignore[union-attr]
    assert sorted(uploaded) == wanted
    for change in report.changes:
        assert f"size {size}\n" in branch[change.pointer_path].decode()
    assert peak < 4 * size, f"peak {peak / 1e6:.1f} MB for {n} files of {size / 1e6:.0f} MB"


def test_local_collect_shows_progress_over_the_takes(tmp_path, monkeypatch) -> None:
    """A local project of thousands of takes is hashed and copied file by file: that loop (the
    long part of a local collect) had no progress bar, unlike the GitLab downloads."""
    import tqdm

    project = tmp_path / "p"
    clips = [p.read_bytes() for p in REAL_CLIPS[:3]]
    cells = [
        cell(f"MRK 1:{i}", f"<p>v{i}</p>", attachments=_take(project, f"audio-{i}-a", clip))
        for i, clip in enumerate(clips, start=1)
    ]
    _project(project, cells)
    bars: list[tuple[str, int | None]] = []
    real = tqdm.tqdm

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append((kwargs.get("desc", ""), self.total))

    monkeypatch.setattr(tqdm, "tqdm", Recording)
    collect(_local_config(tmp_path, project), tmp_path / "raw")
    assert [total for _, total in bars] == [3, 3], bars


def test_collect_never_replaces_a_folder_that_is_not_its_own_output(tmp_path, capsys) -> None:
    """The output folder is rebuilt by replacing it whole. `--output_dir` pointed by mistake at
    the Codex project (or a folder holding it, or any other data) deleted it, human recordings
    included. Now only an earlier collect output (or an empty/new folder) is replaced."""
    from helpers import DEMO_PROJECT, tree_bytes

    from tts_pipeline import cli

    workspace = tmp_path / "work"
    project = workspace / "project"
    shutil.copytree(DEMO_PROJECT, project)
    cfg = _local_config(tmp_path, project)
    before = tree_bytes(workspace)
    for target in (project, workspace):
        args = [
            "collect",
            "--config",
            str(cfg.config_path),
            "--params",
            str(PARAMS),
            "--output_dir",
            str(target),
        ]
        assert cli.main(args) == 1
        assert "refusing to replace" in capsys.readouterr().err
        assert tree_bytes(workspace) == before
    other = tmp_path / "notes"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(PipelineError, match="refusing to replace"):
        collect(cfg, other)
    assert (other / "mine.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert collect(cfg, empty).exported == 13
    assert collect(cfg, empty).exported == 13  # its own output is replaced, as before
