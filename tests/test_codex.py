"""Codex parsing and the take/cell rules shared by collect and synthesize."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tts_pipeline import codex
from tts_pipeline.codex import CodexError

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo-codex-project"


def make_cell(cell_id: str = "GEN 1:1", html: str = "<span>In the beginning</span>", **meta) -> dict:
    metadata = {"id": cell_id, "type": "text", "data": {}}
    metadata.update(meta)
    return {"kind": 2, "languageId": "html", "value": html, "metadata": metadata}


def take(audio_id: str, created: int, **kw) -> dict:
    return {
        "url": f".project/attachments/files/GEN/{audio_id}.webm",
        "type": "audio",
        "createdAt": created,
        "updatedAt": created,
        "isDeleted": kw.get("deleted", False),
        "isMissing": kw.get("missing", False),
        "metadata": {"mimeType": "audio/webm", "durationSec": kw.get("duration", 1.5)},
        "transcription": {"content": kw.get("text", "spoken words"), "language": "x"},
    }


def parse(cell: dict) -> codex.Cell:
    return codex.parse_cell(cell, "GEN", 0)


def test_demo_project_has_13_recorded_verses_and_3_to_voice():
    cells = [c for p in codex.iter_project_documents(DEMO) for c in codex.read_codex_document(p)]
    exported = [c for c in cells if codex.plan_cell(c).skip_reason is None]
    assert len(exported) == 13
    assert [c.verse_id for c in cells if codex.needs_recording(c)] == ["LUK 1:7", "MRK 1:9", "MRK 1:10"]
    mrk5 = next(c for c in cells if c.verse_id == "MRK 1:5")  # no selectedAudioId: newest usable wins
    assert codex.usable_take(mrk5).audio_id == "audio-1730000004000-mrk005"
    mrk4 = next(c for c in cells if c.verse_id == "MRK 1:4")
    assert mrk4.text == "I didn't know you were there."  # &#39; decoded


@pytest.mark.parametrize(
    ("meta", "html", "reason"),
    [
        ({"data": {"deleted": True}}, "<span>x</span>", "deleted"),
        ({"data": {"merged": True}}, "<span>x</span>", "merged"),
        ({"data": {"hidden": True}}, "<span>x</span>", "hidden"),
        ({"type": "paratext"}, "<h1>Genesis</h1>", "paratext"),
        ({"type": "milestone"}, "1", "milestone"),
        ({"type": "style"}, "x", "style"),
        ({}, "<span> &nbsp; </span>", "empty_text"),
        ({}, "<p><br></p>", "empty_text"),
        ({"id": ""}, "<span>x</span>", "no_id"),
    ],
)
def test_cell_skip_rules(meta, html, reason):
    raw = make_cell(html=html)
    raw["metadata"].update({k: v for k, v in meta.items()})
    cell = parse(raw)
    assert cell.skip_reason == reason
    assert codex.plan_cell(cell).skip_reason == reason
    assert not codex.needs_recording(cell)


def test_take_rules_selected_newest_deleted_missing():
    raw = make_cell(attachments={"a": take("a", 100), "b": take("b", 300), "c": take("c", 200)})
    assert codex.usable_take(parse(raw)).audio_id == "b"  # newest
    raw["metadata"]["selectedAudioId"] = "c"
    assert codex.usable_take(parse(raw)).audio_id == "c"  # the selected one, though older
    raw["metadata"]["attachments"]["c"]["isDeleted"] = True
    assert codex.usable_take(parse(raw)).audio_id == "b"  # selected but deleted: newest usable
    raw["metadata"]["attachments"]["b"]["isMissing"] = True
    assert codex.usable_take(parse(raw)).audio_id == "a"
    raw["metadata"]["attachments"]["a"]["isDeleted"] = True
    cell = parse(raw)
    assert codex.usable_take(cell) is None
    assert codex.plan_cell(cell).skip_reason == "takes_missing"
    assert codex.needs_recording(cell)
    raw["metadata"]["attachments"]["b"]["isDeleted"] = True
    assert codex.plan_cell(parse(raw)).skip_reason == "takes_deleted"
    assert codex.plan_cell(parse(make_cell())).skip_reason == "no_audio"


def test_synthetic_takes_are_never_recordings():
    synthetic = take("tts", 500)
    synthetic["metadata"]["synthetic"] = True
    raw = make_cell(attachments={"human": take("human", 100), "tts": synthetic}, selectedAudioId="tts")
    cell = parse(raw)
    assert codex.usable_take(cell).audio_id == "human"
    del raw["metadata"]["attachments"]["human"]
    cell = parse(raw)
    assert codex.usable_take(cell) is None
    assert codex.plan_cell(cell).skip_reason == "synthetic_only"
    assert codex.needs_recording(cell)


def test_non_audio_attachments_and_odd_values_are_ignored():
    image = {"url": "x.png", "type": "image", "createdAt": 5}
    odd = take("odd", "2024-01-02T03:04:05Z", duration="n/a")
    raw = make_cell(attachments={"img": image, "odd": odd, "bad": "not a dict"})
    cell = parse(raw)
    assert [t.audio_id for t in cell.takes] == ["odd"]
    assert cell.takes[0].created_at == 1704164645000
    assert cell.takes[0].duration_s is None


def test_text_source_transcription():
    raw = make_cell(html="<span></span>", attachments={"a": take("a", 1, text="<i>heard</i> text")})
    cell = parse(raw)
    assert codex.plan_cell(cell, "cell").skip_reason == "empty_text"
    plan = codex.plan_cell(cell, "transcription")
    assert (plan.skip_reason, plan.text) == (None, "heard text")
    raw["metadata"]["attachments"]["a"]["transcription"] = {"content": ""}
    assert codex.plan_cell(parse(raw), "transcription").skip_reason == "empty_text"


def test_clean_text_strips_html_and_footnotes():
    html = '<p>Tom &amp; Jerry&#39;s<sup class="footnote-marker" data-footnote="<p>note</p>">1</sup></p><p>big&nbsp;day</p>'
    assert codex.clean_text(html) == "Tom & Jerry's big day"
    assert codex.clean_text("a<br>b<br/>c") == "a b c"
    assert codex.clean_text("<script>x()</script>ok") == "ok"
    assert codex.clean_text(None) == ""


def test_uuid_ids_use_global_references():
    raw = make_cell("0b6f4a3e-9a9a-4c1e-8f00-123456789abc", data={"globalReferences": ["GEN 2:4"]})
    cell = parse(raw)
    assert (cell.verse_id, cell.cell_id) == ("GEN 2:4", "0b6f4a3e-9a9a-4c1e-8f00-123456789abc")


@pytest.mark.parametrize(
    ("verse_id", "stem"),
    [
        ("MRK 1:1", "MRK_001_001"),
        ("GEN 50:26", "GEN_050_026"),
        ("PSA 119:176", "PSA_119_176"),
        ("1JN 1:9", "1JN_001_009"),
    ],
)
def test_verse_file_stem(verse_id, stem):
    assert codex.verse_file_stem(verse_id) == stem


def test_verse_file_stems_are_safe_and_unique():
    ids = [
        "MRK 1:1",
        "mrk 1:1",
        "MRK 1:01",
        "MRK 1:1-3",
        "MRK 1:1:abc",
        "MRK 1:1/abc",
        "../../etc",
        "",
        "a" * 300,
        "x y",
        "x_y",
    ]
    stems = [codex.verse_file_stem(v) for v in ids]
    assert len(set(stems)) == len(ids)
    for stem in stems:
        assert stem and len(stem) < 100 and all(ch.isalnum() or ch in "_-" for ch in stem)


def test_cell_file_stems_disambiguate_shared_verses():
    a = parse(make_cell("u1", data={"globalReferences": ["GEN 1:1"]}))
    b = parse(make_cell("u2", data={"globalReferences": ["GEN 1:1"]}))
    c = parse(make_cell("GEN 1:2"))
    stems = codex.cell_file_stems([a, b, c])
    assert stems[2] == "GEN_001_002"
    assert stems[0] != stems[1] and stems[0].startswith("GEN_001_001_")
    assert codex.cell_file_stems([b, a, c]) == [stems[1], stems[0], stems[2]]  # order-independent


def test_broken_json_names_the_file(tmp_path):
    bad = tmp_path / "files" / "target" / "BAD.codex"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"cells": [ {"kind": 2,')
    with pytest.raises(CodexError, match="BAD.codex: broken JSON at line 1"):
        codex.read_codex_document(bad)
    bad.write_text('["not", "a", "document"]')
    with pytest.raises(CodexError, match="BAD.codex: not a Codex document"):
        codex.read_codex_document(bad)
    bad.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(CodexError, match="BAD.codex: not UTF-8"):
        codex.read_codex_document(bad)


def test_iter_project_documents_sorted(tmp_path):
    target = tmp_path / "files" / "target"
    target.mkdir(parents=True)
    for name in ("REV", "GEN", "MRK"):
        (target / f"{name}.codex").write_text(json.dumps({"cells": []}))
    (target / "notes.txt").write_text("x")
    assert [p.stem for p in codex.iter_project_documents(tmp_path)] == ["GEN", "MRK", "REV"]
    with pytest.raises(CodexError, match="no files/target"):
        list(codex.iter_project_documents(tmp_path / "nope"))


def test_resolve_attachment_refuses_escapes(tmp_path):
    project = tmp_path / "project"
    (project / ".project" / "attachments" / "files" / "GEN").mkdir(parents=True)
    inside = codex.resolve_attachment(project, ".project/attachments/files/GEN/a.webm")
    assert inside == (project / ".project/attachments/files/GEN/a.webm").resolve()
    assert codex.resolve_attachment(project, ".project\\attachments\\files\\GEN\\a.webm") == inside
    for url in (
        "../secret.webm",
        ".project/../../secret.webm",
        "/etc/passwd",
        "file:///etc/passwd",
        "C:/x.webm",
        "",
    ):
        with pytest.raises(CodexError, match="refused|no scheme|empty"):
            codex.resolve_attachment(project, url)
    outside = tmp_path / "outside.webm"
    outside.write_bytes(b"x")
    os.symlink(outside, project / ".project" / "attachments" / "files" / "GEN" / "link.webm")
    with pytest.raises(CodexError, match="outside the project"):
        codex.resolve_attachment(project, ".project/attachments/files/GEN/link.webm")


def test_attachment_repo_paths_and_extension():
    assert codex.attachment_repo_paths(".project/attachments/files/GEN/a.webm") == [
        ".project/attachments/files/GEN/a.webm",
        ".project/attachments/pointers/GEN/a.webm",
    ]
    assert codex.attachment_extension("x/a.WAV") == ".wav"
    assert codex.attachment_extension("x/a", "audio/mpeg") == ".mp3"
    assert codex.attachment_extension("x/a") == ".webm"
