"""Reviewer-approved takes (Codex `validatedBy`): preferred when no take is selected, counted
per collect, and with `collect.require_validated_audio: true` the only takes exported."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from helpers import DEMO_PROJECT, PARAMS, read_rows

from tts_pipeline import cli, codex

T = 1_730_000_000_000


def approval(name: str = "rev", deleted: bool = False) -> dict:
    return {"username": name, "creationTimestamp": T, "updatedTimestamp": T + 5, "isDeleted": deleted}


def take(created: int, validated_by: list | None = None, **extra) -> dict:
    out = {
        "url": f".project/attachments/files/MRK/audio-{created}.webm",
        "type": "audio",
        "createdAt": created,
    }
    out["createdBy"] = "reader"
    if validated_by is not None:
        out["validatedBy"] = validated_by
    out.update(extra)
    return out


def cell(attachments: dict, selected: str | None = None) -> codex.Cell:
    meta = {"id": "MRK 1:1", "type": "text", "attachments": attachments}
    if selected:
        meta["selectedAudioId"] = selected
    return codex.parse_cell({"value": "<span>In the beginning</span>", "metadata": meta}, "MRK", 0)


def test_validated_by_and_created_by_are_read() -> None:
    c = cell(
        {
            "a": take(T, [approval("ana"), approval("bo", deleted=True)]),
            "b": take(T + 1, [approval(deleted=True)]),
        }
    )
    by_id = {t.audio_id: t for t in c.takes}
    assert by_id["a"].validated_by == ("ana",) and by_id["a"].validated
    assert by_id["a"].created_by == "reader"
    assert by_id["b"].validated_by == () and not by_id["b"].validated  # a withdrawn approval does not count
    odd = cell({"c": take(T, "yes"), "d": take(T, [None, 3, {"isDeleted": False}])})
    assert {t.audio_id: t.validated for t in odd.takes} == {"c": False, "d": True}


def test_newest_validated_take_beats_a_newer_unvalidated_one() -> None:
    c = cell(
        {"old": take(T, [approval()]), "new": take(T + 9, []), "mid": take(T + 5, [approval(deleted=True)])}
    )
    assert codex.usable_take(c).audio_id == "old"
    two = cell({"a": take(T, [approval()]), "b": take(T + 3, [approval()]), "c": take(T + 9)})
    assert codex.usable_take(two).audio_id == "b"
    none = cell({"a": take(T), "b": take(T + 3)})
    assert codex.usable_take(none).audio_id == "b"  # nobody approved anything: newest, as before
    deleted = cell({"a": take(T, [approval()], isDeleted=True), "b": take(T + 3)})
    assert codex.usable_take(deleted).audio_id == "b"  # an approved but deleted take is not usable


def test_selected_take_still_wins_unless_validation_is_required() -> None:
    c = cell({"a": take(T, [approval()]), "b": take(T + 3)}, selected="b")
    assert codex.usable_take(c).audio_id == "b"
    assert codex.usable_take(c, require_validated=True).audio_id == "a"
    plan = codex.plan_cell(
        cell({"a": take(T), "b": take(T + 3, [approval(deleted=True)])}), require_validated=True
    )
    assert plan.take is None and plan.skip_reason == "not_validated"
    assert codex.plan_cell(cell({}), require_validated=True).skip_reason == "no_audio"


def demo_config(tmp_path: Path, require: bool) -> Path:
    language = yaml.safe_load((PARAMS.parent / "languages" / "demo.yaml").read_text())
    language["source"] = {"type": "local", "path": str(DEMO_PROJECT)}
    language["collect"] = {"require_validated_audio": require}
    path = tmp_path / f"demo-{require}.yaml"
    path.write_text(yaml.safe_dump(language))
    return path


def test_demo_collect_counts_and_requires_validated_takes(tmp_path) -> None:
    out = tmp_path / "all"
    assert (
        cli.main(
            [
                "collect",
                "--config",
                str(demo_config(tmp_path, False)),
                "--params",
                str(PARAMS),
                "--output_dir",
                str(out),
            ]
        )
        == 0
    )
    cells = json.loads((out / "collect_report.json").read_text())["cells"]
    assert (cells["exported"], cells["exported_validated"]) == (13, 11)
    rows = {r["verse_id"]: r["audio_id"] for r in read_rows(out)}
    assert rows["MRK 1:5"] == "audio-1730000004000-mrk005"  # approved, over the newer unchecked take

    strict = tmp_path / "strict"
    argv = [
        "collect",
        "--config",
        str(demo_config(tmp_path, True)),
        "--params",
        str(PARAMS),
        "--output_dir",
        str(strict),
    ]
    assert cli.main(argv) == 0
    cells = json.loads((strict / "collect_report.json").read_text())["cells"]
    assert (cells["exported"], cells["exported_validated"]) == (11, 11)
    assert cells["skipped_by_reason"]["not_validated"] == 2
    assert {"LUK 1:4", "LUK 1:5"}.isdisjoint(r["verse_id"] for r in read_rows(strict))
