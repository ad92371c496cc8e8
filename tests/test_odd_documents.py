"""Odd but valid (and plainly broken) Codex documents: each is named and skipped, the rest go on.

Issue 15: one `.codex` with `"createdAt": 1e400` or JSON nested 100,000 deep used to abort the
whole collect with a traceback. Collect, synthesize and write-back now each name the document,
skip it and handle every other document.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import DEMO_PROJECT, PARAMS, read_rows

from tts_pipeline import cli, codex, verses, writeback
from tts_pipeline.writeback import SyntheticTake

_CELL = {"kind": 2, "languageId": "html", "value": "<span>text</span>",
         "metadata": {"id": "GEN 1:1", "type": "text", "attachments": {}}}  # fmt: skip


def _with_take(created: str) -> str:
    return (
        '{"cells": [{"kind": 2, "value": "<span>hello</span>", "metadata": {"id": "GEN 1:1", "type": "text", '
        '"selectedAudioId": "audio-1", "attachments": {"audio-1": {"url": ".project/attachments/files/GEN/a.webm", '
        f'"type": "audio", "createdAt": {created}}}}}}}}}], "metadata": {{}}}}'
    )


#: file name -> bytes: each is unusable as a whole, for a different reason.
ODD = {
    "HUGE.codex": _with_take("1e400").encode(),
    "NANS.codex": _with_take("NaN").encode(),
    "DIGITS.codex": _with_take("1" * 5000).encode(),
    "DEEP.codex": b'{"cells": [], "metadata": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "BROKEN.codex": b'{"cells": [',
    "SHAPE.codex": b'[{"cells": []}]',
    "LATIN1.codex": json.dumps({"cells": [_CELL], "metadata": {}}).replace("text<", "caf\u00e9<").encode("latin-1"),
    "CELLS.codex": json.dumps({"cells": {"0": _CELL}, "metadata": {}}).encode(),
}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    shutil.copytree(DEMO_PROJECT, root)
    for name, data in ODD.items():
        (root / "files" / "target" / name).write_bytes(data)
    return root


def test_each_odd_document_is_parsed_into_one_clear_error() -> None:
    for name, data in ODD.items():
        with pytest.raises(codex.CodexError, match=name):
            codex.parse_codex_bytes(data, f"files/target/{name}")


def test_collect_names_each_odd_document_and_collects_the_others(project: Path, tmp_path: Path, caplog) -> None:
    config = tmp_path / "xx.yaml"
    config.write_text(yaml.safe_dump({
        "language": {"code": "xx"}, "source": {"type": "local", "path": str(project)},
        "paths": {"raw_dataset": str(tmp_path / "raw"), "cache": str(tmp_path / "cache")},
    }))  # fmt: skip
    assert cli.main(["collect", "--config", str(config), "--params", str(PARAMS)]) == 0
    assert len(read_rows(tmp_path / "raw")) == 13  # the demo's verses, all of them
    report = json.loads((tmp_path / "raw" / "collect_report.json").read_text())
    failed = {Path(f["document"]).name for f in report["documents"]["failed"]}
    assert failed == set(ODD)
    logged = caplog.text
    for name in ODD:
        assert name in logged  # named in the summary


def test_synthesize_names_and_skips_odd_documents(project: Path) -> None:
    to_voice, problems = verses.missing_verses(verses.local_documents(project))
    assert {v.document for v in to_voice} == {"LUK", "MRK"}
    assert sorted(Path(p.split(":")[0]).name for p in problems) == sorted(ODD)


def test_write_back_names_and_skips_odd_documents() -> None:
    documents = {f"{codex.TARGET_DIR}/{name}": data for name, data in ODD.items()}
    takes = [SyntheticTake(Path(name).stem, "GEN 1:1", "GEN 1:1", "hello", "rev", "Sheila")
             for name in ODD]  # fmt: skip
    report, texts = writeback.plan_takes(documents, takes, now_ms=1)
    assert texts == {} and report.changes == []
    assert sorted(Path(why.split(":")[0]).name for _, why in report.skipped) == sorted(ODD)


def test_a_document_that_cannot_be_read_is_named_and_skipped(project: Path, tmp_path: Path, monkeypatch) -> None:
    # a file the user may not read (root reads anything, so the refusal is simulated)
    luk = project / "files" / "target" / "LUK.codex"
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == luk:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    to_voice, problems = verses.missing_verses(verses.local_documents(project))
    assert {v.document for v in to_voice} == {"MRK"} and f"{luk}: cannot read the file" in problems
    take = SyntheticTake("LUK", "LUK 1:7", "LUK 1:7", "hello", "rev", "Sheila")
    report = writeback.write_back_local(project, [take], dry_run=True)
    assert report.changes == [] and "LUK.codex: cannot read (Permission denied)" in report.skipped[0][1]
