"""Review of the data stages (preprocess, speakers corrections, dataset): bad input a user can hit.

Each test reproduces one defect found in review: a metadata.csv saved by a spreadsheet (BOM) or
in a legacy encoding, a float WAV with NaN samples, a recording with a DC offset, a corrections
file with a speaker named twice or in a legacy encoding, a dataset whose text report depended
on the row order of metadata.csv.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tree_sha256

from tts_pipeline import audio, fsutil, modeling
from tts_pipeline import preprocess as pp
from tts_pipeline.config import DatasetSection
from tts_pipeline.dataset import build_dataset
from tts_pipeline.errors import PipelineError
from tts_pipeline.speakers import load_corrections

DATA = Path(__file__).parent / "data" / "librispeech-6spk"
SR = 16000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    """About 6 s of real speech at 16 kHz."""
    return audio.decode_audio(DATA / "2414" / "2414-128291-0009.webm", SR)[: 6 * SR]


def _raw_corpus(root: Path, clips: dict[str, np.ndarray], subtype: str = "PCM_16") -> Path:
    (root / "audio").mkdir(parents=True)
    for name, samples in clips.items():
        sf.write(root / "audio" / name, samples, SR, subtype=subtype)
    return root


def _metadata_text(clips: dict[str, np.ndarray]) -> str:
    """Header + one row per clip, with a transcript of plausible length (~14 letters/s)."""
    lines = ["file_name,transcription"]
    for name, samples in clips.items():
        words = max(1, round(len(samples) / SR * 14 / 5))
        lines.append(f"audio/{name},{' '.join(['hello'] * words)}")
    return "\r\n".join(lines) + "\r\n"


def _preprocess(raw: Path, out: Path, **filters) -> pp.PreprocessSummary:
    return pp.preprocess_corpus(
        raw / "metadata.csv",
        out,
        raw.parent / "cache",
        pp.ProcessParams(),
        pp.Filters(**filters),
        workers=1,
        progress=False,
    )


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- metadata.csv


def test_metadata_saved_with_a_bom_and_crlf_is_read(tmp_path, speech):
    """Excel and Notepad save 'CSV UTF-8' with a byte-order mark: the header must still match."""
    clips = {"a.wav": speech}
    raw = _raw_corpus(tmp_path / "raw", clips)
    (raw / "metadata.csv").write_bytes(b"\xef\xbb\xbf" + _metadata_text(clips).encode("utf-8"))
    summary = _preprocess(raw, tmp_path / "out")
    assert summary.kept == 1
    with open(tmp_path / "out" / "metadata.csv", encoding="utf-8") as handle:
        header = handle.readline().rstrip("\n").split(",")
    assert header[:2] == ["file_name", "transcription"]
    assert not any("\ufeff" in column for column in header)


def test_metadata_not_in_utf8_is_a_clear_error(tmp_path, speech):
    clips = {"a.wav": speech}
    raw = _raw_corpus(tmp_path / "raw", clips)
    (raw / "metadata.csv").write_bytes(_metadata_text(clips).replace("hello", "caf\xe9", 1).encode("latin-1"))
    with pytest.raises(PipelineError, match=r"metadata\.csv:2: .*UTF-8"):
        _preprocess(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------- audio


def test_float_wav_with_nan_samples_is_rejected_as_corrupt(tmp_path, speech, caplog):
    """A NaN in a float WAV used to crash trimming (IndexError traceback in the log, reason 'error')."""
    bad = speech.copy()
    bad[1000] = np.nan
    bad[2000] = np.inf
    clips = {"nan.wav": bad, "ok.wav": speech}
    raw = _raw_corpus(tmp_path / "raw", clips, subtype="FLOAT")
    (raw / "metadata.csv").write_text(_metadata_text(clips), encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        summary = _preprocess(raw, tmp_path / "out")
    assert "Traceback" not in caplog.text and "processing failed" not in caplog.text
    rejected = {r["file_name"]: r for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert rejected["audio/nan.wav"]["reason"] == "corrupt"
    assert "NaN" in rejected["audio/nan.wav"]["detail"]
    assert summary.kept == 1


def test_dc_offset_is_removed_before_normalising(tmp_path, speech):
    """A cheap microphone's DC offset used to be amplified with the speech: the limiter then
    squashed the whole clip (or the SNR filter threw a clean recording away)."""
    clips = {"dc.wav": (speech * 0.5 + 0.3).astype(np.float32), "plain.wav": speech * 0.5}
    raw = _raw_corpus(tmp_path / "raw", clips, subtype="FLOAT")
    (raw / "metadata.csv").write_text(_metadata_text(clips), encoding="utf-8")
    summary = _preprocess(raw, tmp_path / "out")  # default filters, min_snr_db 5 included
    assert summary.kept == 2, _rows(tmp_path / "out" / "rejected.csv")
    rows = {r["file_name"]: r for r in _rows(tmp_path / "out" / "metadata.csv")}
    dc, _ = sf.read(tmp_path / "out" / "audio" / "dc.wav")
    plain, _ = sf.read(tmp_path / "out" / "audio" / "plain.wav")
    assert abs(float(dc.mean())) < 1e-3
    assert abs(float(rows["audio/dc.wav"]["snr_db"]) - float(rows["audio/plain.wav"]["snr_db"])) < 1.0
    assert np.corrcoef(dc[: len(plain)], plain[: len(dc)])[0, 1] > 0.99  # same speech, not squashed


# --------------------------------------------------------------------------- corrections file


def test_speaker_named_twice_in_corrections_is_an_error(tmp_path):
    """YAML keeps only the last of two equal keys: the first block's clips were silently lost."""
    path = tmp_path / "demo.speakers.yaml"
    path.write_text(
        "speakers:\n  Maria:\n    clips: [audio/a.wav]\n  Jonas:\n    clips: [audio/c.wav]\n"
        "  Maria:\n    clips: [audio/b.wav]\n",
        encoding="utf-8",
    )
    with pytest.raises(PipelineError, match=r"demo\.speakers\.yaml.*Maria.*twice"):
        load_corrections(path)
    path.write_text(
        "speakers:\n  'Maria ':\n    clips: [audio/a.wav]\n  Maria:\n    clips: [audio/b.wav]\n",
        encoding="utf-8",
    )
    with pytest.raises(PipelineError, match=r"demo\.speakers\.yaml.*Maria.*twice"):
        load_corrections(path)


def test_corrections_file_in_legacy_encoding_or_with_bom(tmp_path):
    path = tmp_path / "demo.speakers.yaml"
    path.write_bytes("speakers:\n  Mar\xeda:\n    clips: [audio/a.wav]\n".encode("latin-1"))
    with pytest.raises(PipelineError, match=r"demo\.speakers\.yaml: .*UTF-8"):
        load_corrections(path)
    path.write_bytes("\ufeffspeakers:\n  Mar\xeda:\n    clips: [audio/a.wav]\n".encode())
    assert [s.name for s in load_corrections(path).speakers] == ["Mar\xeda"]


# --------------------------------------------------------------------------- dataset


def test_dataset_bytes_do_not_depend_on_row_order(tmp_path, speech):
    """Same clips, rows in another order: identical output (the OOV examples included)."""
    pre = tmp_path / "pre"
    (pre / "audio").mkdir(parents=True)
    texts = [f"zebra number {i} quiz" for i in range(8)]
    rows, clip_ids = [], {}
    for i, text in enumerate(texts):
        name = f"audio/MRK_001_{i + 1:03d}.wav"
        audio.write_wav(pre / name, speech[i * 4000 : i * 4000 + 6400], SR)
        rows.append(f"{name},{text},MRK 1:{i + 1}")
        clip_ids[name] = {"speaker_id": i % 2, "confidence": 1.0, "uncertain": False}
    ids = tmp_path / "speaker_ids.json"
    fsutil.write_json(ids, {"clips": clip_ids, "speakers": {"0": {"name": "a"}, "1": {"name": "b"}}})
    base = tmp_path / "base"
    tok = modeling.make_tokenizer(
        {modeling.PAD_SYMBOL: 0, **{c: i + 1 for i, c in enumerate("abeinorum ")}}, base
    )
    tok.save_pretrained(base)
    cfg = DatasetSection(train_split=0.75, validation_split=0.25)
    outputs = []
    for order, ordered in (("forward", rows), ("reversed", rows[::-1])):
        meta = pre / f"metadata-{order}.csv"
        meta.write_text("file_name,transcription,verse_id\n" + "\n".join(ordered) + "\n", encoding="utf-8")
        out = tmp_path / order
        build_dataset(meta, pre, ids, out, cfg, base_model=str(base))
        outputs.append(tree_sha256(out))
    assert outputs[0] == outputs[1]


def test_corrections_block_round_trips_any_clip_or_speaker_name(tmp_path):
    """The review page's blocks are pasted as they are: a '#' or ': ' in a clip name, a long
    name, or an accented speaker name must read back as written (not as a comment, a wrapped
    line or an escape sequence)."""
    from tts_pipeline.speakers.review_page import corrections_block

    clips = ["audio/take #2.wav", "audio/a: b.wav", "audio/" + "long name with spaces " * 6 + ".wav"]
    block = corrections_block("Maria José", clips[:1], clips[1:], comment="id 0")
    path = tmp_path / "demo.speakers.yaml"
    path.write_text("speakers:\n" + block + "\n", encoding="utf-8")
    (entry,) = load_corrections(path).speakers
    assert (entry.name, entry.anchors, entry.clips) == ("Maria José", clips[:1], clips[1:])
    assert "Maria José:" in block


def test_every_clip_rejected_points_downstream_stages_at_the_reasons(tmp_path):
    """preprocess keeps nothing (exit 0, warning); speakers then says why there is nothing."""
    from tts_pipeline.speakers import load_clips

    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    (raw / "audio" / "a.webm").write_bytes(b"")
    (raw / "audio" / "b.webm").write_text("version https://git-lfs.github.com/spec/v1\n")
    (raw / "metadata.csv").write_text("file_name,transcription\naudio/a.webm,hi\naudio/b.webm,hi\n")
    summary = _preprocess(raw, tmp_path / "pre")
    assert (summary.total, summary.kept) == (2, 0)
    with pytest.raises(PipelineError, match=r"no clips to analyse.*pre/rejected\.csv"):
        load_clips(tmp_path / "pre" / "metadata.csv", tmp_path / "pre")


def test_row_error_names_the_file_line_after_multiline_transcriptions(tmp_path):
    """Quoted newlines and commas in a transcription are data; a broken row after them is named
    by its line in the file (what an editor shows), not by its record number."""
    from tts_pipeline.metadata import MetadataError, iter_metadata

    path = tmp_path / "metadata.csv"
    path.write_text(
        'file_name,transcription\r\naudio/a.wav,"line one,\r\nline two ""quoted"""\r\n'
        "audio/b.wav,fine\r\naudio/c.wav,too,many\r\n",
        encoding="utf-8",
    )
    with pytest.raises(MetadataError, match=r"metadata\.csv:5: more fields"):
        list(iter_metadata(path))
    path.write_text('file_name,transcription\naudio/a.wav,"one,\ntwo"\n', encoding="utf-8")
    assert [r["transcription"] for r in iter_metadata(path)] == ["one,\ntwo"]


def test_symlinked_clips_are_read_and_escaping_names_are_not(tmp_path, speech):
    """DVC's `cache.type: symlink` (and users with audio on another disk) make raw/audio/*
    symlinks to files outside raw/: they are the user's own files, not a path escape. A
    `file_name` that itself leaves the folder (`..`, absolute) still is."""
    store = tmp_path / "dvc-cache"
    store.mkdir()
    sf.write(store / "0a1b2c", speech, SR, subtype="PCM_16", format="WAV")
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    (raw / "audio" / "a.wav").symlink_to(store / "0a1b2c")
    (tmp_path / "outside.wav").symlink_to(store / "0a1b2c")
    text = _metadata_text({"a.wav": speech}).split("\r\n")[1].split(",", 1)[1]
    (raw / "metadata.csv").write_text(
        f"file_name,transcription\naudio/a.wav,{text}\n../outside.wav,{text}\n"
        f"{tmp_path / 'outside.wav'},{text}\naudio/../../outside.wav,{text}\n",
        encoding="utf-8",
    )
    summary = _preprocess(raw, tmp_path / "out")
    rejected = {r["file_name"]: r["reason"] for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert summary.kept == 1, rejected
    assert set(rejected.values()) == {"bad_path"} and len(rejected) == 3


def test_an_output_dir_that_holds_the_input_is_refused_before_anything_is_replaced(tmp_path, speech):
    """A mistyped --output_dir one level too high (or the input dir itself) used to replace the
    whole folder on success: raw/ (or preprocessed/) was deleted with it."""
    from tts_pipeline.speakers import run_speakers

    stage_root = tmp_path / "data" / "demo"
    clips = {"a.wav": speech}
    raw = _raw_corpus(stage_root / "raw", clips)
    (raw / "metadata.csv").write_text(_metadata_text(clips), encoding="utf-8")
    before = tree_sha256(stage_root)
    with pytest.raises(PipelineError, match="output"):
        _preprocess(raw, stage_root)
    assert tree_sha256(stage_root) == before

    pre = stage_root / "preprocessed"
    _preprocess(raw, pre)
    before = tree_sha256(stage_root)
    for out in (pre, stage_root):
        with pytest.raises(PipelineError, match="output"):
            run_speakers(pre / "metadata.csv", pre, out, embedder=object())  # type: ignore[arg-type]
        with pytest.raises(PipelineError, match="output"):
            build_dataset(pre / "metadata.csv", pre, None, out, DatasetSection(), base_model=None)
    assert tree_sha256(stage_root) == before


def test_truncated_webm_is_rejected_when_collect_declared_its_length(tmp_path):
    """An interrupted upload or download cuts a WebM short: FFmpeg decodes what is there without
    an error, so the clip used to be kept with the whole verse's transcript for a fraction of
    its audio. collect's `duration_s` (the recording app's length) reveals it."""
    src = DATA / "1688" / "1688-142285-0006.webm"  # 8 s
    full = len(audio.decode_audio(src, SR)) / SR
    raw = tmp_path / "raw"
    (raw / "audio").mkdir(parents=True)
    data = src.read_bytes()
    (raw / "audio" / "cut.webm").write_bytes(data[: len(data) * 2 // 3])  # speech rate still plausible
    (raw / "audio" / "whole.webm").write_bytes(data)
    (raw / "audio" / "unknown.webm").write_bytes(data[: len(data) * 2 // 3])
    words = " ".join(["hello"] * round(full * 14 / 5))
    (raw / "metadata.csv").write_text(
        "file_name,transcription,duration_s\n"
        f"audio/cut.webm,{words},{full:.3f}\n"
        f"audio/whole.webm,{words},{full + 0.3:.3f}\n"  # the app's timer is not sample-exact
        f"audio/unknown.webm,{' '.join(['hello'] * round(full * 9 / 5))},\n",  # no declared length
        encoding="utf-8",
    )
    summary = _preprocess(raw, tmp_path / "out")
    rejected = {r["file_name"]: r for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert set(rejected) == {"audio/cut.webm"}, rejected
    assert rejected["audio/cut.webm"]["reason"] == "truncated"
    assert f"{full:.1f} s" in rejected["audio/cut.webm"]["detail"]
    assert summary.kept == 2


def test_preprocess_output_names_no_absolute_path(tmp_path, speech):
    """preprocessed/ is a DVC output shared through the remote: a machine's absolute path in
    rejected.csv changes its hash per checkout and leaks the local layout."""
    clips = {"a.wav": speech}
    raw = _raw_corpus(tmp_path / "raw", clips)
    (raw / "metadata.csv").write_text(
        _metadata_text(clips) + "audio/gone.webm,hello there\r\n../up.wav,x\r\n", encoding="utf-8"
    )
    _preprocess(raw, tmp_path / "out")
    rejected = {r["file_name"]: r["reason"] for r in _rows(tmp_path / "out" / "rejected.csv")}
    assert rejected == {"audio/gone.webm": "missing", "../up.wav": "bad_path"}
    for path in sorted((tmp_path / "out").rglob("*.csv")):
        assert str(tmp_path) not in path.read_text(encoding="utf-8"), path.name
