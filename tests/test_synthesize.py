"""synthesize: which verses get voiced, text splitting, and real synthesis with a tiny model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from codex_fixtures import cell
from helpers import DEMO_PROJECT, REPO
from synth_helpers import copy_demo_project, shared_tiny_model, write_config

from tts_pipeline import audio, cli, synthesize
from tts_pipeline.config import DatasetSection, SynthesisSection, load_config
from tts_pipeline.metadata import read_metadata
from tts_pipeline.modeling import load_voice
from tts_pipeline.verses import local_documents, missing_verses
from tts_pipeline.voice import VerseToVoice, model_revision, render, split_text, text_chunks, text_normalizer

#: An untrained model drawls; a fast speaking rate keeps the clips (and the tests) short.
FAST = SynthesisSection(speaking_rate=4.0)

# --------------------------------------------------------------------------- which verses


def test_missing_verses_of_the_demo_project() -> None:
    verses, problems = missing_verses(local_documents(DEMO_PROJECT))
    assert problems == []
    assert [(v.verse_id, v.document, v.stem) for v in verses] == [
        ("LUK 1:7", "LUK", "LUK_001_007"),
        ("MRK 1:9", "MRK", "MRK_001_009"),
        ("MRK 1:10", "MRK", "MRK_001_010"),  # its only take is deleted
    ]
    assert verses[1].text == "We will meet again in the morning."
    assert verses[0].text == "It is a long way from Texas to New Jersey, isn't it?"  # &#39; decoded


def _take(audio_id: str, deleted: bool = False, missing: bool = False, synthetic: bool = False) -> dict:
    meta = {"mimeType": "audio/webm", "durationSec": 1.0}
    if synthetic:
        meta.update(synthetic=True, generator="tts-pipeline", modelRevision="abc")
    return {
        audio_id: {
            "url": f".project/attachments/files/GEN/{audio_id}.webm",
            "type": "audio",
            "createdAt": 1,
            "isDeleted": deleted,
            "isMissing": missing,
            "metadata": meta,
        }
    }


def test_missing_verses_follow_the_collect_skip_rules() -> None:
    cells = [
        cell("GEN 1:0", "<h1>Genesis</h1>", "paratext"),
        cell("GEN 1", "1", "milestone"),
        cell("GEN 1:1", "<span>recorded</span>", attachments=_take("audio-1-a")),
        cell("GEN 1:2", "<span>never recorded</span>"),
        cell("GEN 1:3", "<span>only a deleted take</span>", attachments=_take("audio-1-b", deleted=True)),
        cell("GEN 1:4", "<span>only a missing take</span>", attachments=_take("audio-1-c", missing=True)),
        cell("GEN 1:5", "<span>merged away</span>", data={"merged": True}),
        cell("GEN 1:6", "<span>deleted cell</span>", data={"deleted": True}),
        cell("GEN 1:7", "<span>hidden</span>", data={"hidden": True}),
        cell("GEN 1:8", "<span></span>"),
        cell(
            "6f1c0c4e-uuid",
            "<span>uuid cell &amp; more</span>",
            data={"globalReferences": ["GEN 1:9"]},
        ),
        cell(
            "GEN 1:10", "<span>only our synthetic take</span>", attachments=_take("audio-2-t", synthetic=True)
        ),
    ]
    good = json.dumps({"cells": cells, "metadata": {"id": "GEN"}}).encode()
    broken = b'{"cells": [ {"kind": 2,'
    verses, problems = missing_verses([("files/target/EXO.codex", broken), ("files/target/GEN.codex", good)])
    assert len(problems) == 1 and "EXO.codex" in problems[0]
    assert [v.verse_id for v in verses] == ["GEN 1:2", "GEN 1:3", "GEN 1:4", "GEN 1:9", "GEN 1:10"]
    uuid_verse = verses[3]
    assert (uuid_verse.cell_id, uuid_verse.stem, uuid_verse.text) == (
        "6f1c0c4e-uuid",
        "GEN_001_009",
        "uuid cell & more",
    )


# --------------------------------------------------------------------------- text


def test_split_text_keeps_short_text_whole() -> None:
    assert split_text("  Hello,   world. ", 200) == ["Hello, world."]
    assert split_text("", 50) == []


def test_split_text_at_sentences_then_clauses_then_words() -> None:
    text = (
        "In the beginning was the Word, and the Word was with God, and the Word was God. "
        "He was with God in the beginning! Through him all things were made; without him nothing was made "
        "that has been made. Supercalifragilisticexpialidocious"
    )
    for max_chars in (10, 25, 40, 60, 100):
        chunks = split_text(text, max_chars)
        assert all(0 < len(c) <= max_chars for c in chunks), (max_chars, chunks)
        if max_chars >= len("Supercalifragilisticexpialidocious"):
            assert " ".join(chunks).split() == text.split()  # nothing lost, nothing reordered
    chunks = split_text(text, 100)
    assert chunks[0] == "In the beginning was the Word, and the Word was with God, and the Word was God."
    assert chunks[1].startswith("He was with God in the beginning!")
    # a sentence over the limit breaks after a clause mark, not in the middle of a clause
    assert split_text("aaaa bbbb, cccc dddd; eeee", 12) == ["aaaa bbbb,", "cccc dddd;", "eeee"]
    # a word longer than the limit is cut, never dropped
    assert "".join(split_text("x" * 25, 10)) == "x" * 25


def test_text_chunks_use_the_dataset_normalisation() -> None:
    ds = DatasetSection(punctuation_map={"\u201c": '"', "\u201d": '"'}, lowercase=True)
    normalize = text_normalizer(ds)
    assert text_chunks("\u201cHELLO\u201d  World.", 200, normalize) == ['"hello" world.']


# --------------------------------------------------------------------------- synthesis


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shared_tiny_model(tmp_path_factory)


def test_synthesize_writes_valid_opus_with_matching_durations(model_dir: Path, tmp_path: Path) -> None:
    import av

    verses, _ = missing_verses(local_documents(DEMO_PROJECT))
    out = tmp_path / "synthesized"
    report = synthesize.synthesize_verses(
        verses, model_dir, out, FAST, cache_dir=tmp_path / "cache", progress=False
    )
    assert report.failed == [] and len(report.verses) == 3 and report.cache_hits == 0
    rows = read_metadata(out / "metadata.csv")
    assert list(rows[0])[:6] == [
        "file_name",
        "transcription",
        "verse_id",
        "speaker",
        "duration_s",
        "model_revision",
    ]
    assert [r["file_name"] for r in rows] == [
        "audio/LUK_001_007.webm",
        "audio/MRK_001_009.webm",
        "audio/MRK_001_010.webm",
    ]
    assert {r["speaker"] for r in rows} == {"Sheila"}  # most hours
    assert {r["model_revision"] for r in rows} == {model_revision(model_dir)}
    for row in rows:
        path = out / row["file_name"]
        with av.open(str(path)) as container:
            stream = container.streams.audio[0]
            assert container.format.name.startswith("matroska") or "webm" in container.format.name
            assert (stream.codec_context.name, stream.rate, stream.channels) == ("opus", 48000, 1)
        decoded = audio.decode_audio(path, 16000)
        duration = float(row["duration_s"])
        assert duration > 0.1
        assert abs(decoded.size / 16000 - duration) < 0.03, row
        assert np.abs(decoded).max() > 0  # not silence
    assert sorted(p.name for p in out.iterdir()) == [
        ".tts-pipeline-output.json",
        "audio",
        "metadata.csv",
        "synthesize_report.json",
    ]
    assert not list(tmp_path.glob(".synthesized*"))  # no temp leftovers
    summary = json.loads((out / "synthesize_report.json").read_text())
    assert summary["voiced"] == 3 and summary["speaker"] == {"id": 1, "name": "Sheila"}


def test_cache_resynthesizes_only_changed_verses_and_output_is_deterministic(
    model_dir: Path, tmp_path: Path
) -> None:
    verses, _ = missing_verses(local_documents(DEMO_PROJECT))
    settings = FAST
    cache = tmp_path / "cache"
    voice = load_voice(model_dir)

    def run(verses, out, cache, speaker=None):
        return synthesize.synthesize_verses(
            verses, model_dir, tmp_path / out, settings, cache, speaker, progress=False, loaded=voice
        )

    first = run(verses, "a", cache)
    files_a = {p.name: p.read_bytes() for p in (tmp_path / "a" / "audio").iterdir()}

    # same inputs, no cache: byte-identical audio (seeded noise, bit-exact container)
    run(verses, "b", None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "b" / "audio").iterdir()} == files_a

    # one verse's text changed: only that one is synthesized again
    changed = [*verses[:2], VerseToVoice(**{**verses[2].__dict__, "text": "Goodbye for now."})]
    again = run(changed, "a", cache)
    assert (first.cache_hits, again.cache_hits) == (0, 2)
    assert [v.cached for v in again.verses] == [True, True, False]
    files_again = {p.name: p.read_bytes() for p in (tmp_path / "a" / "audio").iterdir()}
    assert files_again["LUK_001_007.webm"] == files_a["LUK_001_007.webm"]
    assert files_again["MRK_001_010.webm"] != files_a["MRK_001_010.webm"]

    # another speaker is another cache entry
    other = run(verses[:1], "c", cache, "Diane")
    assert other.cache_hits == 0 and other.verses[0].speaker == "Diane"


def test_long_verse_is_split_and_joined_with_pauses(model_dir: Path) -> None:
    voice = load_voice(model_dir)
    settings = SynthesisSection(max_chars=22, pause_s=0.25, speaking_rate=4.0)
    text = "we will meet again, in the morning. thank you for calling."
    chunks = text_chunks(text, settings.max_chars, text_normalizer(None))
    assert chunks == ["we will meet again,", "in the morning.", "thank you for calling."]
    joined = render(voice, chunks, 1, settings)
    parts = [voice.synthesize(c, 1, seed=settings.seed) for c in chunks]
    pause = int(0.25 * voice.sampling_rate)
    assert joined.size == sum(p.size for p in parts) + 2 * pause
    start = parts[0].size
    assert np.all(joined[start : start + pause] == 0)
    np.testing.assert_array_equal(joined[:start], parts[0])


def test_cli_dry_run_writes_nothing_then_real_run(model_dir: Path, tmp_path: Path, capsys) -> None:
    project = copy_demo_project(tmp_path / "project")
    config = write_config(tmp_path, project, model_dir, synthesis={"format": "wav", "speaking_rate": 4.0})
    args = ["synthesize", "--config", str(config), "--params", str(REPO / "params.yaml")]
    assert cli.main([*args, "--dry-run", "--write-back"]) == 0
    printed = capsys.readouterr().out
    assert "would voice MRK 1:9" in printed and "would add 3 synthetic take(s)" in printed
    assert not (tmp_path / "synthesized").exists() and not (tmp_path / "cache").exists()

    assert cli.main(args) == 0
    cfg = load_config(config, REPO / "params.yaml")
    rows = read_metadata(Path(cfg.paths.synthesized) / "metadata.csv")
    assert [r["verse_id"] for r in rows] == ["LUK 1:7", "MRK 1:9", "MRK 1:10"]
    samples, rate = audio.read_wav(Path(cfg.paths.synthesized) / rows[0]["file_name"])
    assert rate == 16000 and abs(samples.size / rate - float(rows[0]["duration_s"])) < 1e-3


def test_unknown_speaker_and_missing_model_are_clear_errors(model_dir: Path, tmp_path: Path, capsys) -> None:
    project = copy_demo_project(tmp_path / "project")
    config = write_config(tmp_path, project, model_dir, synthesis={"speaker": "Nobody"})
    assert cli.main(["synthesize", "--config", str(config), "--params", str(REPO / "params.yaml")]) == 1
    assert "speaker 'Nobody' not found" in capsys.readouterr().err
    config = write_config(tmp_path, project, tmp_path / "no-model")
    assert cli.main(["synthesize", "--config", str(config), "--params", str(REPO / "params.yaml")]) == 1
    assert "no-model" in capsys.readouterr().err
    assert not (tmp_path / "synthesized").exists()


def test_checkpoint_setting_picks_the_model(model_dir: Path, tmp_path: Path, capsys) -> None:
    import shutil

    project = copy_demo_project(tmp_path / "project")
    for step in (10, 20):
        shutil.copytree(model_dir, tmp_path / "checkpoints" / f"checkpoint-{step}" / "model")
    (tmp_path / "checkpoints" / "index.json").write_text(
        json.dumps({"checkpoints": [{"step": 10, "val_loss": 1.5}, {"step": 20, "val_loss": 2.5}]})
    )
    for which, expected in (("latest", "checkpoint-20"), ("best", "checkpoint-10"), ("20", "checkpoint-20")):
        config = write_config(tmp_path, project, tmp_path / "no-final-model", synthesis={"checkpoint": which})
        assert (
            cli.main(
                ["synthesize", "--config", str(config), "--params", str(REPO / "params.yaml"), "--dry-run"]
            )
            == 0
        )
        assert f"{expected}/model (revision" in capsys.readouterr().out
    config = write_config(tmp_path, project, tmp_path / "no-final-model", synthesis={"checkpoint": "7"})
    assert (
        cli.main(["synthesize", "--config", str(config), "--params", str(REPO / "params.yaml"), "--dry-run"])
        == 1
    )
    assert "no checkpoint for step 7" in capsys.readouterr().err
