"""dataset stage: real WAVs (LibriSpeech clips decoded with PyAV), real datasets + transformers."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import tree_sha256

from tts_pipeline import audio, fsutil, modeling
from tts_pipeline.config import DatasetSection
from tts_pipeline.dataset import (
    Clip,
    build_dataset,
    split_clips,
)
from tts_pipeline.errors import PipelineError

DATA = Path(__file__).parent / "data" / "librispeech-6spk"
SPEAKERS = ["1688", "1998", "2033"]
COLUMNS = ["audio", "text", "text_original", "speaker_id", "speaker", "file_name", "verse_id", "duration_s"]


@pytest.fixture(scope="module")
def source_audio() -> dict[str, list[np.ndarray]]:
    """Up to 7 real clips per speaker, 16 kHz, cut to 0.4 s so the dataset stays tiny."""
    out = {}
    for spk in SPEAKERS:
        files = sorted((DATA / spk).glob("*.webm"))[:7]
        out[spk] = [audio.decode_audio(f, 16000)[4000:10400] for f in files]
    return out


def make_corpus(
    root: Path,
    source: dict[str, list[np.ndarray]],
    counts: dict[str, int],
    texts: dict[str, str] | None = None,
    speaker_ids: bool = True,
) -> tuple[Path, Path, Path]:
    """A preprocessed dir (audio/*.wav + metadata.csv) and a speakers dir (speaker_ids.json)."""
    pre = root / "preprocessed"
    (pre / "audio").mkdir(parents=True)
    rows, clips = [], {}
    texts = texts or {}
    for sid, (spk, n) in enumerate(counts.items()):
        for i in range(n):
            stem = f"MRK_{sid + 1:03d}_{i + 1:03d}"
            name = f"audio/{stem}.wav"
            audio.write_wav(pre / name, source[spk][i], 16000)
            text = texts.get(stem, f"Clip {i} of speaker {spk}, read aloud.")
            rows.append({"file_name": name, "transcription": text, "verse_id": f"MRK {sid + 1}:{i + 1}"})
            clips[name] = {"speaker_id": sid, "confidence": 0.9, "uncertain": False}
    with open(pre / "metadata.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription", "verse_id", "duration_s"])
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "duration_s": "0.4"})
    ids = root / "speakers" / "speaker_ids.json"
    if speaker_ids:
        speakers = {
            str(sid): {"name": f"reader_{spk}", "clips": n, "hours": 0.0}
            for sid, (spk, n) in enumerate(counts.items())
        }
        fsutil.write_json(ids, {"clips": clips, "speakers": speakers})
    return pre, pre / "metadata.csv", ids


def save_tokenizer(directory: Path, chars: str, **kwargs) -> Path:
    """A local 'base model' tokenizer with exactly `chars` (plus the pad symbol)."""
    from transformers import VitsTokenizer

    vocab = {modeling.PAD_SYMBOL: 0, **{c: i + 1 for i, c in enumerate(chars)}}
    tok = modeling.make_tokenizer(vocab, directory)
    if kwargs:
        tok = VitsTokenizer(
            vocab_file=str(directory / "vocab.json"), pad_token="_", unk_token="_", phonemize=False, **kwargs
        )
    tok.save_pretrained(directory)
    return directory


def cfg(**kw) -> DatasetSection:
    kw.setdefault("train_split", 0.8)
    kw.setdefault("validation_split", 0.2)
    return DatasetSection(**kw)


def test_build_round_trip_and_demo_shape(tmp_path, source_audio):
    """13 clips, 2 speakers, 0.8/0.2 like the demo: both speakers in both splits; audio readable."""
    from datasets import Audio, load_from_disk

    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 7, "1998": 6})
    out = tmp_path / "dataset"
    summary = build_dataset(meta, pre, ids, out, cfg(), base_model=None, language="demo")

    dd = load_from_disk(str(out))
    assert sorted(dd) == ["train", "validation"]
    assert dd["train"].num_rows + dd["validation"].num_rows == 13
    for split in dd.values():
        assert split.column_names == COLUMNS
        assert split.features["audio"] == Audio(sampling_rate=16000)
        assert sorted(set(split["speaker_id"])) == [0, 1]
    assert dd["validation"].num_rows == 2
    # Readers never decode through datasets (torchcodec): bytes + soundfile.
    raw = dd["validation"].cast_column("audio", Audio(decode=False))
    row = raw[0]
    samples, rate = sf.read(io.BytesIO(row["audio"]["bytes"]), dtype="float32")
    on_disk, _ = sf.read(pre / row["file_name"], dtype="float32")
    assert rate == 16000 and np.array_equal(samples, on_disk)
    assert row["audio"]["path"] == Path(row["file_name"]).name  # no path outside the dataset
    assert row["duration_s"] == pytest.approx(len(samples) / 16000)
    assert row["text"] == row["text_original"].lower()
    assert row["speaker"] in {"reader_1688", "reader_1998"}

    speakers = json.loads((out / "speakers.json").read_text())
    assert {k: (v["name"], v["clips"]) for k, v in speakers.items()} == {
        "0": ("reader_1688", 7),
        "1": ("reader_1998", 6),
    }
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["_"] == 0 and set("clip of speaker, read aloud.") <= set(vocab)
    assert vocab == modeling.build_vocab(dd["train"]["text"])
    card = (out / "README.md").read_text()
    assert "| train | 11 |" in card and "| validation | 2 |" in card and "reader_1998" in card
    m = summary.metrics
    assert m["clips"] == {"train": 11, "validation": 2, "total": 13}
    assert m["speakers"]["1"]["validation"]["clips"] == 1
    assert m["rejected_total"] == 0 and m["oov"]["distinct_chars"] == 0
    assert not list(tmp_path.glob(".dataset*"))  # no temporary leftovers beside the output
    assert len(list((out / "train").glob("*.arrow"))) == 1


def test_byte_identical_rerun(tmp_path, source_audio):
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 5, "1998": 4, "2033": 3})
    c = cfg(max_shard_size="20KB")
    a, b = tmp_path / "a", tmp_path / "b"
    build_dataset(meta, pre, ids, a, c, base_model=None)
    first = tree_sha256(a)
    build_dataset(meta, pre, ids, b, c, base_model=None)
    build_dataset(meta, pre, ids, a, c, base_model=None)  # over an existing output
    assert first == tree_sha256(b) == tree_sha256(a)
    assert len([k for k in first if k.startswith("train/data-")]) > 1  # several shards
    assert not any("cache-" in k or ".lock" in k for k in first)
    # A different seed gives a different (still deterministic) split.
    build_dataset(meta, pre, ids, b, cfg(max_shard_size="20KB", seed=7), base_model=None)
    assert tree_sha256(b)["validation/state.json"] != first["validation/state.json"]


def _clips(counts: dict[int, int]) -> list[Clip]:
    return [
        Clip(f"audio/{s}_{i:03d}.wav", Path("x"), "t", "t", s, f"s{s}", "", 1.0, "")
        for s, n in counts.items()
        for i in range(n)
    ]


@pytest.mark.parametrize("test_split", [0.0, 0.1])
def test_split_stratified_and_deterministic(test_split):
    counts = {0: 1, 1: 2, 2: 3, 3: 13, 4: 40}
    c = cfg(train_split=0.8 - test_split, validation_split=0.2, test_split=test_split)
    splits = split_clips(_clips(counts), c)
    assert set(splits) == ({"train", "validation", "test"} if test_split else {"train", "validation"})
    names = lambda items: [x.file_name for x in items]  # noqa: E731
    assert {k: names(v) for k, v in split_clips(_clips(counts), c).items()} == {
        k: names(v) for k, v in splits.items()
    }
    all_names = [n for v in splits.values() for n in names(v)]
    assert sorted(all_names) == sorted(x.file_name for x in _clips(counts))  # a partition
    for spk, n in counts.items():
        per = {k: sum(x.source_speaker == spk for x in v) for k, v in splits.items()}
        assert per["train"] >= 1
        if n >= 2:
            assert per["validation"] >= 1, (spk, per)
        if test_split and n >= 3:
            assert per["test"] >= 1
    assert sum(x.source_speaker == 4 for x in splits["validation"]) == 8  # 40 * 0.2
    other = split_clips(_clips(counts), cfg(seed=1, train_split=0.8 - test_split, test_split=test_split))
    assert names(other["validation"]) != names(splits["validation"])


def test_oov_report_and_policies(tmp_path, source_audio):
    """A base tokenizer without 'z', 'q' and ',': exactly those are reported, with examples."""
    texts = {
        "MRK_001_001": "Zebra quiz, okay",
        "MRK_001_002": "a plain line",
        "MRK_001_003": "zz top",
        "MRK_002_001": "another plain line",
        "MRK_002_002": "Question?",
        "MRK_002_003": "?!",  # nothing the tokenizer can read
    }
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 3, "1998": 3}, texts)
    base = save_tokenizer(tmp_path / "base", "abcdefghijklmnoprstuvwxy ")
    summary = build_dataset(meta, pre, ids, tmp_path / "out", cfg(), base_model=str(base))
    by_char = summary.metrics["oov"]["by_char"]
    assert {v["char"]: (v["count"], v["clips"]) for v in by_char.values()} == {
        "z": (4, 2),
        "q": (2, 2),
        ",": (1, 1),
        "?": (2, 2),
        "!": (1, 1),
    }
    assert set(by_char) == {"U+007A", "U+0071", "U+002C", "U+003F", "U+0021"}
    report = json.loads((tmp_path / "out" / "text_report.json").read_text())
    assert report["oov"]["by_char"]["U+007A"]["examples"][0] == "audio/MRK_001_001.wav: zebra quiz, okay"
    assert report["oov"]["by_char"]["U+002C"]["name"] == "COMMA"
    assert summary.rejected_by == {"no_tokenizable_text": 1}
    kept = {c.file_name for v in summary.splits.values() for c in v}
    assert "audio/MRK_001_001.wav" in kept and "audio/MRK_002_003.wav" not in kept
    assert (
        "'z' U+007A LATIN SMALL LETTER Z (spoken: lost speech): 4x"
        in (tmp_path / "out" / "README.md").read_text()
    )
    assert not (tmp_path / "out" / "vocab.json").exists()  # the base model brings its own

    strict = build_dataset(
        meta, pre, ids, tmp_path / "strict", cfg(oov_policy="drop_clip"), base_model=str(base)
    )
    assert strict.rejected_by == {"no_tokenizable_text": 1, "oov_chars": 3}
    assert {c.file_name for v in strict.splits.values() for c in v} == {
        "audio/MRK_001_002.wav",
        "audio/MRK_002_001.wav",
    }

    mapped = build_dataset(
        meta,
        pre,
        ids,
        tmp_path / "mapped",
        cfg(oov_policy="map", oov_map={"z": "s", "q": "k", "?": ""}),
        base_model=str(base),
    )
    assert set(mapped.oov.chars) == {",", "!"}
    assert mapped.rejected_by == {"no_tokenizable_text": 1}
    texts_out = {c.file_name: c.text for v in mapped.splits.values() for c in v}
    assert texts_out["audio/MRK_001_001.wav"] == "sebra kuis, okay"


def test_uroman_policy(tmp_path, source_audio):
    texts = {
        "MRK_001_001": "Привет мир",
        "MRK_001_002": "Ἐν ἀρχῇ",
        "MRK_002_001": "плохо",
        "MRK_002_002": "hello",
    }
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 2, "1998": 2}, texts)
    base = save_tokenizer(tmp_path / "base", "abcdefghijklmnopqrstuvwxyz ")
    plain = build_dataset(
        meta, pre, ids, tmp_path / "plain", cfg(validation_split=0.5, train_split=0.5), base_model=str(base)
    )
    assert plain.rejected_by == {"no_tokenizable_text": 3}  # Cyrillic/Greek: nothing readable
    assert "U+043F" in plain.metrics["oov"]["by_char"]  # п
    cyrillic_only = meta.read_text(encoding="utf-8").replace("hello", "привет")
    (pre / "cyrillic.csv").write_text(cyrillic_only, encoding="utf-8")
    with pytest.raises(PipelineError, match="no clip left for training .*oov_policy: uroman"):
        build_dataset(pre / "cyrillic.csv", pre, ids, tmp_path / "x", cfg(), base_model=str(base))
    roman = build_dataset(
        meta,
        pre,
        ids,
        tmp_path / "roman",
        cfg(validation_split=0.5, train_split=0.5, oov_policy="uroman"),
        base_model=str(base),
    )
    texts_out = {c.file_name: (c.text, c.text_original) for v in roman.splits.values() for c in v}
    assert texts_out["audio/MRK_001_001.wav"] == ("privet mir", "Привет мир")
    assert texts_out["audio/MRK_001_002.wav"][0] == "en arche"
    assert roman.metrics["rejected_total"] == 0 and roman.metrics["oov"]["distinct_chars"] == 0


def test_is_uroman_base_tokenizer_is_checked_as_it_tokenises(tmp_path, source_audio):
    """An MMS-style is_uroman tokenizer romanises itself: no OOV although the text is Cyrillic."""
    texts = {
        "MRK_001_001": "Привет мир",
        "MRK_001_002": "мир",
        "MRK_002_001": "плохо",
        "MRK_002_002": "hello",
    }
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 2, "1998": 2}, texts)
    base = save_tokenizer(tmp_path / "base", "abcdefghijklmnopqrstuvwxyz ", is_uroman=True)
    summary = build_dataset(
        meta, pre, ids, tmp_path / "out", cfg(validation_split=0.5, train_split=0.5), base_model=str(base)
    )
    assert summary.metrics["rejected_total"] == 0 and summary.metrics["oov"]["distinct_chars"] == 0
    assert {c.text for v in summary.splits.values() for c in v} == {"привет мир", "мир", "плохо", "hello"}


def test_empty_after_normalisation_is_rejected(tmp_path, source_audio):
    texts = {"MRK_001_001": " … ", "MRK_001_002": "", "MRK_002_001": "\u200b"}
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 3, "1998": 3}, texts)
    c = cfg(punctuation_map={"…": ""})
    summary = build_dataset(meta, pre, ids, tmp_path / "out", c, base_model=None)
    assert summary.rejected_by == {"empty_after_normalization": 2, "no_tokenizable_text": 1}
    with open(tmp_path / "out" / "rejected.csv", encoding="utf-8") as handle:
        rejected = list(csv.DictReader(handle))
    assert [(r["file_name"], r["reason"]) for r in rejected] == [
        ("audio/MRK_001_001.wav", "empty_after_normalization"),
        ("audio/MRK_001_002.wav", "empty_after_normalization"),
        ("audio/MRK_002_001.wav", "no_tokenizable_text"),
    ]
    from datasets import load_from_disk

    dd = load_from_disk(str(tmp_path / "out"))
    assert all(t.strip() for split in dd.values() for t in split["text"])
    assert "audio/MRK_002_001.wav" not in list(dd["train"]["file_name"]) + list(dd["validation"]["file_name"])


def test_speaker_labels_missing_clip_and_missing_file(tmp_path, source_audio, caplog):
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 3, "1998": 3})
    data = json.loads(ids.read_text())
    del data["clips"]["audio/MRK_002_003.wav"]
    fsutil.write_json(ids, data)
    out = tmp_path / "out"
    with pytest.raises(PipelineError, match=r"speaker_ids.json: 1 clip\(s\) .*no speaker: audio/MRK_002_003"):
        build_dataset(meta, pre, ids, out, cfg(), base_model=None)
    assert not out.exists()
    summary = build_dataset(meta, pre, ids, out, cfg(unlabelled_clips="drop"), base_model=None)
    assert summary.rejected_by == {"no_speaker": 1}

    with caplog.at_level(logging.WARNING):
        single = build_dataset(meta, pre, tmp_path / "nope.json", tmp_path / "one", cfg(), base_model=None)
    assert "every clip is treated as one speaker" in caplog.text
    assert single.speakers == {
        0: {"name": "speaker_0", "source_id": 0, "clips": 6, "hours": pytest.approx(6 * 0.4 / 3600, abs=1e-6)}
    }


def test_speaker_ids_renumbered_contiguous(tmp_path, source_audio):
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 2, "1998": 2, "2033": 2})
    data = json.loads(ids.read_text())
    for entry in data["clips"].values():
        entry["speaker_id"] = {0: 0, 1: 5, 2: 2}[entry["speaker_id"]]  # ids with a gap
    data["speakers"] = {"0": {"name": "anna"}, "5": {"name": "ben"}, "2": {"name": "cleo"}}
    fsutil.write_json(ids, data)
    summary = build_dataset(meta, pre, ids, tmp_path / "out", cfg(), base_model=None)
    assert {k: (v["name"], v["source_id"]) for k, v in summary.speakers.items()} == {
        0: ("anna", 0),
        1: ("cleo", 2),
        2: ("ben", 5),
    }
    assert modeling.load_speakers(tmp_path / "out")[2]["name"] == "ben"


def test_wrong_sample_rate_names_the_file(tmp_path, source_audio):
    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 2, "1998": 2})
    audio.write_wav(pre / "audio" / "MRK_002_002.wav", source_audio["1998"][1], 22050)
    with pytest.raises(PipelineError, match=r"MRK_002_002.wav: 22050 Hz"):
        build_dataset(meta, pre, ids, tmp_path / "out", cfg(), base_model=None)


def test_cli_flags(tmp_path, source_audio):
    from tts_pipeline.cli import main

    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 3, "1998": 3})
    lang = tmp_path / "tst.yaml"
    lang.write_text(
        "language: {code: tst}\nsource: {type: local, path: x}\ntraining: {base_model: null}\n"
        "dataset: {train_split: 0.7, validation_split: 0.3}\n"
    )
    params = Path(__file__).parent.parent / "params.yaml"
    out, metrics = tmp_path / "ds", tmp_path / "m" / "dataset.json"
    rc = main(
        ["dataset", "--config", str(lang), "--params", str(params), "--audio_dir", str(pre),
         "--speaker_ids", str(ids), "--output_dir", str(out), "--metrics_file", str(metrics)]
    )  # fmt: skip
    assert rc == 0
    m = json.loads(metrics.read_text())
    assert m["clips"] == {"train": 4, "validation": 2, "total": 6}
    assert (out / "dataset_dict.json").is_file()
    rc = main(
        ["dataset", "--config", str(lang), "--params", str(params), "--audio_dir", str(tmp_path / "missing")]
    )
    assert rc == 1


def test_failure_while_writing_keeps_the_previous_output(tmp_path, source_audio):
    from tts_pipeline.dataset import (
        DatasetSummary,
        load_speaker_labels,
        read_clips,
        renumber_speakers,
        split_clips,
        write_dataset,
    )
    from tts_pipeline.text import OovReport

    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 3, "1998": 3})
    out = tmp_path / "out"
    build_dataset(meta, pre, ids, out, cfg(), base_model=None)
    before = tree_sha256(out)
    clips, rejected, n = read_clips(meta, pre, load_speaker_labels(ids), cfg(), 16000)
    splits = split_clips(clips, cfg())
    summary = DatasetSummary(splits, rejected, renumber_speakers(splits), OovReport(), n)
    audio.write_wav(pre / "audio" / "MRK_002_002.wav", source_audio["2033"][0], 16000)  # changes under us
    with pytest.raises(PipelineError, match="MRK_002_002.wav: changed while"):
        write_dataset(out, summary, cfg(), sample_rate=16000, language="x")
    assert tree_sha256(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "preprocessed", "speakers"]


def test_test_split_and_empty_validation(tmp_path, source_audio):
    from datasets import load_from_disk

    pre, meta, ids = make_corpus(tmp_path, source_audio, {"1688": 4, "1998": 1})
    c = cfg(train_split=0.5, validation_split=0.25, test_split=0.25)
    summary = build_dataset(meta, pre, ids, tmp_path / "three", c, base_model=None)
    dd = load_from_disk(str(tmp_path / "three"))
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 3, "validation": 1, "test": 1}
    assert summary.metrics["speakers"]["0"]["test"]["clips"] == 1
    assert "| test | 1 |" in (tmp_path / "three" / "README.md").read_text()

    pre2, meta2, ids2 = make_corpus(tmp_path / "single", source_audio, {"1688": 1, "1998": 1})
    build_dataset(meta2, pre2, ids2, tmp_path / "two", cfg(), base_model=None)
    dd = load_from_disk(str(tmp_path / "two"))
    assert {k: v.num_rows for k, v in dd.items()} == {"train": 2, "validation": 0}
    assert dd["validation"].column_names == COLUMNS


def test_streaming_save_matches_datasets_save_to_disk(tmp_path, monkeypatch):
    """The split writer (record batch by record batch, flat memory) writes exactly the bytes
    `Dataset.save_to_disk` writes: several shards, ~100-row groups not aligned to the 100-row
    record batches, clips of different lengths, and the estimate datasets shards by."""
    from datasets import config as ds_config

    from tts_pipeline.dataset import _estimate_nbytes, _save_split, _split_dataset

    rng = np.random.default_rng(0)
    audio_dir = tmp_path / "audio"
    audio_dir.mkdir()
    clips = []
    for i in range(600):
        path = audio_dir / f"c{i:03d}.wav"
        audio.write_wav(path, rng.uniform(-0.5, 0.5, 1600 + 37 * (i % 50)).astype(np.float32), 16000)
        clips.append(
            Clip(
                f"audio/c{i:03d}.wav",
                path,
                f"T{i}",
                f"t{'x' * (i % 9)}",
                0,
                "s",
                f"V {i}",
                0.1,
                fsutil.sha256_file(path),
                speaker_id=i % 3,
            )
        )
    ds = _split_dataset(clips, 16000, tmp_path / "cache", "train")
    assert _estimate_nbytes(ds) == ds._estimate_nbytes()
    monkeypatch.setattr(ds_config, "MAX_ROW_GROUP_SIZE", "750KB")  # groups of ~150 rows, not 100
    ds.save_to_disk(str(tmp_path / "theirs"), max_shard_size="1600KB")
    _save_split(ds, tmp_path / "ours", "1600KB")
    theirs = tree_sha256(tmp_path / "theirs")
    assert len([k for k in theirs if k.endswith(".arrow")]) > 1
    assert tree_sha256(tmp_path / "ours") == theirs
