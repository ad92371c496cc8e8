"""collect from GitLab: real python-gitlab + requests against the loopback server in fake_gitlab.py."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from codex_fixtures import build_project
from fake_gitlab import FakeGitLab, tree_from_directory
from helpers import DEMO_PROJECT as DEMO
from helpers import PARAMS, REPO, read_rows, tree_bytes

from tts_pipeline import cli
from tts_pipeline.collect import collect
from tts_pipeline.config import load_config
from tts_pipeline.errors import PipelineError
from tts_pipeline.gitlab_source import GitLabSource
from tts_pipeline.lfs import make_lfs_pointer, parse_lfs_pointer

TOKEN = "glpat-loopback-secret"
LFS_GET = r"/gitlab-lfs/objects/"
RAW_GET = r"/repository/files/.*/raw$"


@pytest.fixture
def server():
    with FakeGitLab(token=TOKEN) as fake:
        yield fake


@pytest.fixture
def built():
    return build_project(n_takes=200, real_clips=60)


def write_config(tmp_path: Path, url: str, project: str = "translators/fixture", **collect_settings) -> Path:
    language = {
        "language": {"code": "xx"},
        "source": {"type": "gitlab", "url": url, "project": project, "token_env": "TTS_TEST_GITLAB_TOKEN"},
        "paths": {"raw_dataset": str(tmp_path / "raw"), "cache": str(tmp_path / "cache")},
        "collect": {"retry_backoff_s": 0.01, **collect_settings},
    }
    path = tmp_path / "xx.yaml"
    path.write_text(yaml.safe_dump(language))
    return path


def gitlab_config(tmp_path: Path, url: str, **kw):
    return load_config(write_config(tmp_path, url, **kw), PARAMS)


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("TTS_TEST_GITLAB_TOKEN", TOKEN)


def serve(server: FakeGitLab, built) -> None:
    server.lfs_objects.update(built.lfs_objects)
    server.add_project("translators/fixture", built.git_files)


def test_200_takes_exact_rows_skip_summary_and_second_run_downloads_nothing(tmp_path, server, built, caplog):
    serve(server, built)
    server.max_per_page = 50  # the tree comes in several pages
    cfg = gitlab_config(tmp_path, server.url)
    result = collect(cfg, tmp_path / "raw")

    assert built.takes >= 200
    rows = read_rows(tmp_path / "raw")
    expected = [{k: str(v) for k, v in r.items() if k != "bytes"} for r in built.rows]
    assert [{k: r[k] for k in expected[0]} for r in rows] == expected
    for row, want in zip(rows, built.rows, strict=True):
        assert (tmp_path / "raw" / row["file_name"]).read_bytes() == want["bytes"]
    assert any(r["file_name"].endswith(".wav") for r in rows)
    report = result.report
    assert report["cells"]["skipped_by_reason"] == dict(sorted(built.skipped.items()))
    assert report["cells"]["exported"] == len(built.rows)
    assert report["documents"]["failed"][0]["document"] == "files/target/BAD.codex"
    assert {p["reason"] for p in report["problems"]} >= {"lfs_object_missing", "unsafe_url", "file_missing"}
    assert report["source"]["commit"] == server.projects[1].branches["main"]
    assert server.count("GET", r"/repository/tree$") >= 3  # paged
    first_lfs = server.count("POST", "/info/lfs/objects/batch")
    assert first_lfs >= 1 and result.stats.downloaded_files > 0
    assert TOKEN not in caplog.text

    before = (server.count("GET", LFS_GET), server.count("GET", RAW_GET))
    second = collect(cfg, tmp_path / "raw2")
    assert (server.count("GET", LFS_GET), server.count("GET", RAW_GET)) == before  # nothing downloaded
    assert (
        server.count("POST", "/info/lfs/objects/batch") == first_lfs + 1
    )  # only the gone object is asked for
    assert second.stats.downloaded_files == 0 and second.stats.reused_files > 0
    assert tree_bytes(tmp_path / "raw") == tree_bytes(tmp_path / "raw2")


def test_kill_midway_then_rerun_is_byte_identical(tmp_path, server, built):
    serve(server, built)
    (tmp_path / "ref").mkdir()
    collect(gitlab_config(tmp_path / "ref", server.url), tmp_path / "ref" / "raw")
    total_lfs = server.count("GET", LFS_GET)

    # the run is caught in the middle of the LFS downloads: after 10, the server holds the rest
    hold = server.hold("GET", LFS_GET, after=10)
    work = tmp_path / "work"
    work.mkdir()
    config = write_config(work, server.url, download_workers=2)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "tts_pipeline", "collect", "--config", str(config), "--params", str(PARAMS)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not hold.held.wait(timeout=0.5) and proc.poll() is None and time.monotonic() < deadline:
        pass  # an event, not a guessed sleep: woken as soon as the 11th download is held
    assert hold.held.is_set() and proc.poll() is None, proc.stderr.read().decode()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (work / "raw").exists()  # no half output that looks complete
    server.holds.clear()
    hold.release.set()

    done_before = server.count("GET", LFS_GET)
    result = collect(load_config(config, PARAMS), work / "raw")
    fetched_again = server.count("GET", LFS_GET) - done_before
    assert 0 < fetched_again < total_lfs  # finished files were kept, only the rest was downloaded
    assert result.stats.reused_files > 0
    assert tree_bytes(work / "raw") == tree_bytes(tmp_path / "ref" / "raw")
    assert not list((work / "cache").rglob("*.part"))
    assert not list(work.glob(".raw.tmp-*"))  # the killed run's temp output was cleaned up


def test_transient_failures_are_retried(tmp_path, server):
    server.max_per_page = 5
    files = tree_from_directory(
        DEMO,
        lfs=lambda p: p.startswith(".project/attachments/files/"),
        lfs_objects=server.lfs_objects,
        rename=lambda p: p.replace("/attachments/files/", "/attachments/pointers/"),
    )
    server.add_project("translators/fixture", files)
    server.fail("GET", r"/repository/tree$", 429, times=1)
    server.fail("GET", r"/repository/tree$", 500, times=1)
    server.fail("GET", r"MRK\.codex/raw$", 502, times=1)
    server.fail("GET", r"MRK\.codex/raw$", "drop", times=1)  # connection dropped mid-file
    server.fail("POST", r"/info/lfs/objects/batch$", 503, times=1)
    server.fail("POST", r"/info/lfs/objects/batch$", 429, times=1)
    server.fail("GET", LFS_GET, "drop", times=2)
    server.fail("GET", LFS_GET, 500, times=2)
    cfg = gitlab_config(tmp_path, server.url)
    result = collect(cfg, tmp_path / "raw")
    assert result.exported == 13
    assert all(f.times == 0 for f in server.faults)
    local = read_rows(tmp_path / "raw")
    for row in local:
        assert (tmp_path / "raw" / row["file_name"]).read_bytes() == (
            DEMO / row["source_path"].replace("pointers", "files")
        ).read_bytes()


def test_persistent_failure_is_fatal_and_keeps_finished_downloads(tmp_path, server, built):
    serve(server, built)
    server.fail("GET", LFS_GET + "0", 500, times=1000)  # objects whose oid starts with 0 never come
    cfg = gitlab_config(tmp_path, server.url, max_retries=1, download_workers=2)
    with pytest.raises(PipelineError, match=r"downloads failed .* re-run .* still failing after 1 retries"):
        collect(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    kept = [p.name for p in (tmp_path / "cache" / "collect" / "lfs").rglob("*") if p.is_file()]
    assert kept and not any(name.startswith("0") for name in kept)  # the others are all there
    needed = {hashlib.sha256(r["bytes"]).hexdigest() for r in built.rows} & set(built.lfs_objects)
    assert sorted(kept) == sorted(o for o in needed if o[0] != "0")
    server.faults.clear()
    assert collect(cfg, tmp_path / "raw").stats.downloaded_files == len([o for o in needed if o[0] == "0"])


@pytest.mark.parametrize(
    ("token", "project", "message"),
    [
        ("wrong-token", "translators/fixture", "authentication failed (401)"),
        (TOKEN, "translators/nope", "not found (404)"),
    ],
)
def test_refusals_are_clear_and_never_show_the_token(
    tmp_path, server, monkeypatch, capsys, token, project, message
):
    server.add_project("translators/fixture", {"files/target/A.codex": b'{"cells": []}'})
    monkeypatch.setenv("TTS_TEST_GITLAB_TOKEN", token)
    config = write_config(tmp_path, server.url, project=project)
    assert cli.main(["collect", "--config", str(config), "--params", str(PARAMS)]) == 1
    err = capsys.readouterr().err
    assert message in err and project in err and "TTS_TEST_GITLAB_TOKEN" in err
    assert token not in err


def test_lfs_helpers_and_repr_hide_token():
    pointer, text = make_lfs_pointer(b"abc")
    assert parse_lfs_pointer(text) == pointer
    assert parse_lfs_pointer(b"abc") is None
    assert parse_lfs_pointer(text + b"x" * 2000) is None
    assert TOKEN not in repr(GitLabSource("http://x", "g/p", token=TOKEN))


def test_list_tree_subpath_paging_and_missing_path(server):
    files = {f"files/target/B{i:03d}.codex": b'{"cells": []}' for i in range(120)}
    files["metadata.json"] = b"{}"
    server.add_project("translators/fixture", files)
    source = GitLabSource(server.url, "translators/fixture", token=TOKEN, backoff_s=0.01).connect()
    assert len(source.list_tree("files/target")) == 120  # two pages of 100
    assert len(source.list_tree()) == 121
    assert source.list_tree(".project/attachments") == {}  # GitLab answers 404 for a missing path
    entry = source.list_tree()["metadata.json"]
    assert (
        source.read_file("metadata.json") == b"{}"
        and entry.blob_id == hashlib.sha1(b"blob 2\0{}").hexdigest()
    )
