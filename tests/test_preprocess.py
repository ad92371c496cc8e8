"""preprocess stage: real Opus/FLAC clips from tests/data plus generated bad files.

The corpus is built once per module (a dozen short clips); each test works on its own output
and cache folders so the cache behaviour is observable (decode calls are counted).
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
from helpers import tree_sha256

from tts_pipeline import audio_quality as aq
from tts_pipeline import preprocess as pp
from tts_pipeline.audio import decode_audio, encode_webm_opus, resample, trim_bounds
from tts_pipeline.errors import PipelineError

DATA = Path(__file__).parent / "data"
OPUS = [
    "3331/3331-159605-0004.webm",
    "2414/2414-128291-0009.webm",
    "1688/1688-142285-0002.webm",
    "1998/1998-15444-0008.webm",
    "2033/2033-164914-0000.webm",
    "3080/3080-5032-0000.webm",
]
FLAC = ["2414-128291-0000.flac", "1688-142285-0000.flac"]
SR = 16000


def _text_for(seconds: float) -> str:
    """A transcript of plausible length (~14 letters per second) for a clip of `seconds`."""
    words = max(1, round(seconds * 14 / 5))
    return " ".join(["hello"] * words)


def _write_rows(path: Path, rows: list[dict[str, object]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file_name", "transcription", "verse_id", "duration_s"])
        writer.writeheader()
        writer.writerows(rows)


#: raw file_name -> the reason it must be rejected with (None = kept)
EXPECTED: dict[str, str | None] = {}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A raw dataset folder as collect writes it: audio/ + metadata.csv."""
    EXPECTED.clear()
    root = tmp_path_factory.mktemp("raw")
    audio = root / "audio"
    audio.mkdir()
    rows: list[dict[str, object]] = []

    def add(name: str, seconds: float, reason: str | None, text: str | None = None) -> None:
        rows.append(
            {
                "file_name": f"audio/{name}",
                "transcription": _text_for(seconds) if text is None else text,
                "verse_id": Path(name).stem,
                "duration_s": round(seconds, 3),
            }
        )
        EXPECTED[f"audio/{name}"] = reason

    for rel in OPUS:
        src = DATA / "librispeech-6spk" / rel
        shutil.copy(src, audio / src.name)
        add(src.name, len(decode_audio(src, SR)) / SR, None)
    for name in FLAC:
        shutil.copy(DATA / "flac" / name, audio / f"flac-{name}")
        add(f"flac-{name}", sf.info(DATA / "flac" / name).duration, None)

    speech = decode_audio(DATA / "librispeech-6spk" / OPUS[1], SR)
    # quiet speech with one loud click: normalising needs the limiter to respect the ceiling
    quiet = speech * 0.05
    quiet[len(quiet) // 2] = 0.5
    sf.write(audio / "quiet_click.wav", quiet, SR, subtype="PCM_16")
    add("quiet_click.wav", len(quiet) / SR, None)
    # one second of low noise before and after the speech: trimmed down to the 0.1 s margins
    pad = np.random.default_rng(3).normal(0, 1e-4, SR).astype(np.float32)
    padded = np.concatenate([pad, speech, pad])
    sf.write(audio / "padded.flac", padded, SR, subtype="PCM_16")
    add("padded.flac", len(padded) / SR, None, text=_text_for(len(speech) / SR))
    # WebM/Opus at 48 kHz as the recording app writes it, encoded here from the FLAC clip
    flac, rate = sf.read(DATA / "flac" / FLAC[0], dtype="float32")
    (audio / "reencoded.webm").write_bytes(encode_webm_opus(flac, rate))
    add("reencoded.webm", len(flac) / rate, None)

    # --- bad files
    (audio / "corrupt.webm").write_bytes(b"\x1aE\xdf\xa3" + bytes(range(256)) * 20)
    add("corrupt.webm", 1.0, "corrupt")
    (audio / "empty.webm").write_bytes(b"")
    add("empty.webm", 1.0, "empty")
    (audio / "pointer.webm").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 12345\n"
    )
    add("pointer.webm", 1.0, "lfs_pointer")
    short = speech[SR // 2 : SR // 2 + int(0.2 * SR)]
    (audio / "short.webm").write_bytes(encode_webm_opus(short, SR))
    add("short.webm", 0.2, "too_short", text="hi")
    clipped = np.clip(speech * 40.0, -1.0, 1.0)
    sf.write(audio / "clipped.flac", clipped, SR, subtype="PCM_16")
    add("clipped.flac", len(clipped) / SR, "clipped")
    (audio / "clipped-opus.webm").write_bytes(encode_webm_opus(clipped, SR))  # rings around the flat tops
    add("clipped-opus.webm", len(clipped) / SR, "clipped")
    sf.write(audio / "silent.wav", np.zeros(SR * 2, dtype=np.float32), SR, subtype="PCM_16")
    add("silent.wav", 2.0, "silent")
    noise = np.random.default_rng(0).normal(0, 1e-4, SR * 2).astype(np.float32)
    sf.write(audio / "hiss.wav", noise, SR, subtype="FLOAT")
    add("hiss.wav", 2.0, "silent")
    shutil.copy(DATA / "librispeech-6spk" / OPUS[2], audio / "mismatch.webm")
    add("mismatch.webm", 3.0, "speech_rate_low", text="Amen.")
    # a transcript twice too long: under the absolute 30 chars/s, far off this corpus' median
    other = DATA / "librispeech-6spk" / "1998/1998-15444-0002.webm"
    shutil.copy(other, audio / "other-verse.webm")
    seconds = len(decode_audio(other, SR)) / SR
    add("other-verse.webm", seconds, "speech_rate_outlier", text=_text_for(seconds * 2.0))
    add("not-there.webm", 1.0, "missing")
    rows.append({"file_name": "../outside.webm", "transcription": "x", "verse_id": "o", "duration_s": 1})
    EXPECTED["../outside.webm"] = "bad_path"
    # same output stem as an earlier clip, other extension
    shutil.copy(DATA / "librispeech-6spk" / OPUS[0], audio / f"{Path(OPUS[0]).stem}.ogg")
    add(f"{Path(OPUS[0]).stem}.ogg", 2.0, "duplicate")
    _write_rows(root / "metadata.csv", rows)
    return root


def _run(raw: Path, out: Path, cache: Path, workers: int = 1, **kw) -> pp.PreprocessSummary:
    return pp.preprocess_corpus(
        input_metadata=raw / "metadata.csv",
        output_dir=out,
        cache_dir=cache,
        params=kw.pop("params", pp.ProcessParams()),
        filters=kw.pop("filters", pp.Filters()),
        metrics_file=kw.pop("metrics_file", None),
        workers=workers,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def first_run(raw, tmp_path_factory):
    """One pooled run (2 workers) shared by the read-only checks."""
    work = tmp_path_factory.mktemp("run")
    before = tree_sha256(raw)
    summary = _run(raw, work / "out", work / "cache", workers=2, metrics_file=work / "metrics" / "pp.json")
    assert tree_sha256(raw) == before, "the input folder must never change"
    return summary, work


@pytest.fixture
def decode_counter(monkeypatch):
    calls: list[Path] = []
    real = pp.decode_audio_native

    def counting(path, *args, **kwargs):
        calls.append(Path(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pp, "decode_audio_native", counting)
    return calls


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- signal functions


def test_loudness_matches_pyloudnorm_and_handles_short_clips():
    x = decode_audio(DATA / "librispeech-6spk" / OPUS[0], SR)
    meter = pyloudnorm.Meter(SR)
    assert aq.integrated_loudness(x, SR) == pytest.approx(
        meter.integrated_loudness(x.astype(np.float64)), abs=0.01
    )
    noise = np.random.default_rng(1).normal(0, 0.05, int(SR * 1.37))
    assert aq.integrated_loudness(noise, SR) == pytest.approx(meter.integrated_loudness(noise), abs=0.01)
    short = x[SR : SR + int(0.2 * SR)]  # pyloudnorm refuses < 0.4 s; we measure one block
    with pytest.raises(ValueError):
        meter.integrated_loudness(short.astype(np.float64))
    value = aq.integrated_loudness(short, SR)
    assert math.isfinite(value) and -40 < value < 0
    assert aq.integrated_loudness(np.zeros(SR, dtype=np.float32), SR) == -math.inf
    assert aq.integrated_loudness(np.zeros(0, dtype=np.float32), SR) == -math.inf


def test_trim_bounds_keep_margin():
    tone = 0.5 * np.sin(2 * np.pi * 220 * np.arange(SR) / SR).astype(np.float32)
    x = np.concatenate([np.zeros(SR // 2), tone, np.zeros(SR // 2)]).astype(np.float32)
    start, end = trim_bounds(x, SR, threshold_db=-40, margin_s=0.1)
    assert start == pytest.approx(0.4 * SR, abs=0.011 * SR)
    assert end == pytest.approx(1.6 * SR, abs=0.011 * SR)
    assert trim_bounds(np.zeros(SR, dtype=np.float32), SR, -40, 0.1) == (0, SR)


def test_limiter_respects_ceiling_and_keeps_loudness():
    x = decode_audio(DATA / "librispeech-6spk" / OPUS[0], SR)
    x = x * 0.05
    x[SR] = 0.9  # a click 26 dB above the speech peaks
    loudness = aq.integrated_loudness(x, SR)
    out, gain_db, limited = aq.normalize_loudness(x, SR, loudness, -20.0, -1.0)
    assert limited
    assert np.max(np.abs(out)) <= aq.db_to_gain(-1.0) + 1e-6
    assert aq.integrated_loudness(out, SR) == pytest.approx(-20.0, abs=0.1)
    quiet = x * 0.0 + 0.01 * np.sin(np.arange(x.size, dtype=np.float32))
    assert aq.limit_peaks(quiet, SR, 0.5) is quiet  # nothing above the ceiling: untouched


def test_snr_estimate_falls_with_noise():
    x = decode_audio(DATA / "librispeech-6spk" / OPUS[3], SR)
    power = float(np.mean(x**2))
    rng = np.random.default_rng(2)
    estimates = []
    for snr in (0.0, 10.0, 20.0):  # white noise mixed in at a known SNR
        noise = rng.normal(0, math.sqrt(power / 10 ** (snr / 10)), x.size)
        estimates.append(aq.estimate_snr_db(x + noise, SR))
        assert estimates[-1] == pytest.approx(snr, abs=6.0)
    assert estimates == sorted(estimates)
    assert aq.estimate_snr_db(x, SR) > 25


def test_speech_rate_bounds_are_robust():
    assert pp.speech_rate_bounds([14.0] * 9, 4.0) is None  # too few clips for statistics
    low, high, median = pp.speech_rate_bounds([14.0] * 20, 4.0)
    assert median == pytest.approx(14.0)
    assert (low, high) == pytest.approx((14.0 / math.exp(0.6), 14.0 * math.exp(0.6)))  # sigma floor
    rates = list(np.random.default_rng(4).lognormal(math.log(12.0), 0.3, 200)) + [60.0, 1.0]
    low, high, median = pp.speech_rate_bounds(rates, 4.0)
    assert median == pytest.approx(12.0, rel=0.1)
    assert low > 1.0 and high < 60.0 and sum(low <= r <= high for r in rates) >= 199


def test_speech_chars_count_letters_of_any_script():
    assert aq.count_speech_chars("Hello, world!") == 10
    assert aq.count_speech_chars("日本語 3") == 4
    assert aq.count_speech_chars(" ... ") == 0


def _encode(path: Path, samples: np.ndarray, rate: int, codec: str, container: str) -> None:
    """Stereo file in another format the recording app may produce (MP3, M4A/AAC, Ogg/Opus)."""
    import av

    stereo = np.stack([samples, samples * 0.5]).astype(np.float32)
    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream(codec, rate=48000 if codec == "libopus" else 44100, layout="stereo")
        frame = av.AudioFrame.from_ndarray(stereo, format="fltp", layout="stereo")
        frame.sample_rate = rate
        ctx = stream.codec_context
        resampler = av.AudioResampler(
            format=ctx.format.name, layout="stereo", rate=ctx.sample_rate, frame_size=ctx.frame_size or None
        )
        for piece in resampler.resample(frame) + resampler.resample(None):
            for packet in stream.encode(piece):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)


def test_decode_native_reads_every_format(tmp_path):
    samples, rate = sf.read(DATA / "flac" / FLAC[0], dtype="float32")
    files = {
        "a.mp3": lambda p: _encode(p, samples, rate, "libmp3lame", "mp3"),
        "a.m4a": lambda p: _encode(p, samples, rate, "aac", "mp4"),
        "a.ogg": lambda p: _encode(p, samples, rate, "libopus", "ogg"),
        "a.webm": lambda p: p.write_bytes(encode_webm_opus(samples, rate)),
        "s16.wav": lambda p: sf.write(p, np.stack([samples, samples], 1), rate, subtype="PCM_16"),
        "u8.wav": lambda p: sf.write(p, samples, rate, subtype="PCM_U8"),
        "f24.flac": lambda p: sf.write(p, np.stack([samples, samples], 1), rate, subtype="PCM_24"),
    }
    for name, make in files.items():
        make(tmp_path / name)
        decoded, decoded_rate = pp.decode_audio_native(tmp_path / name)
        assert decoded.dtype == np.float32 and decoded.ndim == 1
        x = resample(decoded, decoded_rate, SR)
        reference = decode_audio(tmp_path / name, SR)  # the shared swr-based decoder
        assert abs(x.size - reference.size) <= 2, name
        n = min(x.size, reference.size)
        assert np.corrcoef(x[:n], reference[:n])[0, 1] > 0.99, name
    with pytest.raises(pp.AudioTooLongError):
        pp.decode_audio_native(tmp_path / "a.webm", max_seconds=1.0)
    with pytest.raises(pp.AudioTooLongError):
        pp.decode_audio_native(tmp_path / "f24.flac", max_seconds=1.0)
    (tmp_path / "fake.wav").write_bytes(b"RIFF" + bytes(100))
    with pytest.raises(pp.AudioError, match="fake.wav"):
        pp.decode_audio_native(tmp_path / "fake.wav")


# --------------------------------------------------------------------------- the corpus


def test_outputs_are_16k_mono_pcm16_at_target_loudness(first_run):
    summary, work = first_run
    out = work / "out"
    rows = _read_csv(out / "metadata.csv")
    kept = {Path(r["file_name"]).stem for r in rows}
    assert kept == {Path(name).stem for name, reason in EXPECTED.items() if reason is None}
    meter = pyloudnorm.Meter(SR)
    for row in rows:
        path = out / row["file_name"]
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (SR, 1, "PCM_16", "WAV")
        samples, _ = sf.read(path, dtype="float64")
        assert meter.integrated_loudness(samples) == pytest.approx(-20.0, abs=0.5), row["file_name"]
        assert 20 * np.log10(np.max(np.abs(samples))) <= -1.0 + 0.01
        assert float(row["duration_s"]) == pytest.approx(info.duration, abs=1e-3)
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(f"{s}.wav" for s in kept)
    assert summary.kept == len(rows)


def test_metadata_columns_and_values(first_run):
    _, work = first_run
    with open(work / "out" / "metadata.csv", newline="", encoding="utf-8") as handle:
        header = next(csv.reader(handle))
    assert header == ["file_name", "transcription", "verse_id", "duration_s", *pp.QUALITY_COLUMNS[1:]]
    rows = {Path(r["file_name"]).stem: r for r in _read_csv(work / "out" / "metadata.csv")}
    for row in rows.values():
        assert row["file_name"].startswith("audio/") and row["file_name"].endswith(".wav")
        assert 20 < float(row["snr_db"]) <= 100
        assert float(row["clipping_ratio"]) == 0.0
        assert 5 < float(row["chars_per_second"]) < 20
        assert float(row["peak_db"]) <= 0.0
    assert float(rows["quiet_click"]["loudness_before_lufs"]) < -40  # speech at 5 %: very quiet
    assert float(rows["quiet_click"]["trimmed_s"]) < 1.0  # the click does not make speech "silence"
    # the 2 x 1 s of padding go, less the 0.1 s margins (the clip's own lead-in may go too)
    speech_s = len(decode_audio(DATA / "librispeech-6spk" / OPUS[1], SR)) / SR
    assert 1.8 - 0.02 <= float(rows["padded"]["trimmed_s"]) <= 2.0 + speech_s / 2
    assert float(rows["padded"]["duration_s"]) <= speech_s + 0.2 + 0.02


def test_rejections_have_reasons(first_run):
    summary, work = first_run
    rejected = {r["file_name"]: r for r in _read_csv(work / "out" / "rejected.csv")}
    expected = {name: reason for name, reason in EXPECTED.items() if reason is not None}
    assert {name: r["reason"] for name, r in rejected.items()} == expected
    assert all(r["detail"] for r in rejected.values())
    assert str(work) not in rejected["audio/corrupt.webm"]["detail"]  # cached text names no path
    metrics = json.loads((work / "metrics" / "pp.json").read_text())
    assert metrics["clips_total"] == len(EXPECTED)
    assert metrics["clips_kept"] == summary.kept
    assert metrics["rejected_by_reason"]["silent"] == 2
    assert metrics["rejected_by_reason"]["speech_rate_outlier"] == 1
    assert "median" in rejected["audio/other-verse.webm"]["detail"]
    assert metrics["hours_kept"] == pytest.approx(summary.seconds_kept / 3600, abs=1e-4)
    assert set(metrics["rejected_by_reason"]) == set(pp.REASONS)
    text = summary.format()
    assert "rejected silent: 2" in text and f"{summary.kept} kept" in text


def test_second_run_does_no_decoding(raw, first_run, decode_counter, tmp_path):
    _, work = first_run
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)  # the pooled run's cache, used in-process here
    summary = _run(raw, tmp_path / "out", cache)
    assert decode_counter == []
    assert summary.decoded == 0 and summary.cache_hits > 0
    assert tree_sha256(tmp_path / "out") == tree_sha256(work / "out")


def test_one_new_clip_is_one_decode(raw, first_run, decode_counter, tmp_path):
    _, work = first_run
    grown = tmp_path / "raw"
    shutil.copytree(raw, grown)
    shutil.copy(DATA / "librispeech-6spk" / "1998/1998-15444-0001.webm", grown / "audio" / "new.webm")
    with open(grown / "metadata.csv", "a", newline="", encoding="utf-8") as handle:
        seconds = len(decode_audio(grown / "audio" / "new.webm", SR)) / SR
        csv.writer(handle, lineterminator="\n").writerow(["audio/new.webm", _text_for(seconds), "new", ""])
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)
    decode_counter.clear()
    summary = _run(grown, tmp_path / "out", cache)
    assert [p.name for p in decode_counter] == ["new.webm"]
    assert summary.decoded == 1
    assert (tmp_path / "out" / "audio" / "new.wav").is_file()


def test_cache_key_has_processing_params_not_filters(raw, first_run, decode_counter, monkeypatch, tmp_path):
    _, work = first_run
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)
    strict = pp.Filters(min_snr_db=99.0)  # a filter change reuses every cached clip
    summary = _run(raw, tmp_path / "a", cache, filters=strict)
    kept_before = sum(1 for reason in EXPECTED.values() if reason is None)
    assert decode_counter == [] and summary.kept == 0
    # + the two speech-rate ones: SNR is checked first
    assert summary.rejected["low_snr"] == kept_before + 2
    louder = pp.ProcessParams(target_lufs=-18.0)  # a processing change recomputes every clip
    summary = _run(raw, tmp_path / "b", cache, params=louder)
    assert summary.decoded == len(decode_counter) > 0
    assert summary.cache_hits == 1  # only mismatch.webm: the same bytes as a clip decoded earlier
    row = _read_csv(tmp_path / "b" / "metadata.csv")[0]
    samples, _ = sf.read(tmp_path / "b" / row["file_name"], dtype="float64")
    assert pyloudnorm.Meter(SR).integrated_loudness(samples) == pytest.approx(-18.0, abs=0.5)

    decode_counter.clear()
    monkeypatch.setattr(pp, "code_fingerprint", lambda: "other code")  # a code change: recompute
    summary = _run(raw, tmp_path / "c", cache)
    assert summary.cache_hits == 1 and summary.decoded == len(decode_counter) > 0


def test_broken_cache_entry_is_recomputed(raw, first_run, decode_counter, tmp_path):
    _, work = first_run
    cache = tmp_path / "cache"
    shutil.copytree(work / "cache", cache)
    clip = raw / "audio" / Path(OPUS[3]).name
    key = pp.cache_key(pp.sha256_file(clip), pp.ProcessParams(), pp.code_fingerprint())
    entry = cache / key[:2] / f"{key}.json"
    assert entry.is_file()
    entry.write_text('{"format": 1, "aud')  # as if a crash had cut it short
    summary = _run(raw, tmp_path / "out", cache)
    assert summary.decoded == 1 and decode_counter == [clip]
    json.loads(entry.read_text())  # rewritten whole


def test_interrupted_run_leaves_previous_output(raw, first_run, monkeypatch, decode_counter, tmp_path):
    _, work = first_run
    out = tmp_path / "out"
    shutil.copytree(work / "out", out)
    before = tree_sha256(out)
    real = pp.process_clip
    seen = []

    def crash_on_third(ctx, task):
        seen.append(task)
        if len(seen) == 3:
            raise KeyboardInterrupt
        return real(ctx, task)

    monkeypatch.setattr(pp, "process_clip", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        _run(raw, out, tmp_path / "cache")
    assert tree_sha256(out) == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dir left
    # the clips finished before the interruption are cached: the re-run does not decode them
    monkeypatch.setattr(pp, "process_clip", real)
    finished = {tasks.source.name for tasks in seen[:2]}
    decode_counter.clear()
    summary = _run(raw, out, tmp_path / "cache")
    assert finished.isdisjoint(p.name for p in decode_counter)
    assert summary.cache_hits == 3  # those two + mismatch.webm (same bytes as an earlier clip)
    assert tree_sha256(out) == before


def test_processing_failure_rejects_one_clip(raw, monkeypatch, tmp_path):
    real = pp.process_audio

    def fails_on_short_clips(samples, rate, params):
        if samples.size < rate:  # only short.webm
            raise FloatingPointError("boom")
        return real(samples, rate, params)

    monkeypatch.setattr(pp, "process_audio", fails_on_short_clips)
    summary = _run(raw, tmp_path / "out", tmp_path / "cache")
    rejected = {r["file_name"]: r for r in _read_csv(tmp_path / "out" / "rejected.csv")}
    assert rejected["audio/short.webm"]["reason"] == "error"
    assert "FloatingPointError: boom" in rejected["audio/short.webm"]["detail"]
    assert summary.kept == sum(1 for reason in EXPECTED.values() if reason is None)


def _dying_worker(ctx, task):
    """Stands in for process_clip in a pool worker: dies like a process killed for memory."""
    if task.index == 3:
        os._exit(9)
    return _REAL_PROCESS_CLIP(ctx, task)


_REAL_PROCESS_CLIP = pp.process_clip


def test_dead_worker_fails_the_run_and_keeps_previous_output(raw, first_run, monkeypatch, tmp_path):
    _, work = first_run
    out = tmp_path / "out"
    shutil.copytree(work / "out", out)
    before = tree_sha256(out)
    monkeypatch.setattr(pp, "process_clip", _dying_worker)  # workers are forked: they see it too
    with pytest.raises(PipelineError, match="worker process died"):
        _run(raw, out, tmp_path / "cache", workers=2)
    assert tree_sha256(out) == before


def test_bad_inputs_are_clear_errors(raw, tmp_path):
    with pytest.raises(PipelineError, match="metadata file not found"):
        _run(tmp_path / "nothing", tmp_path / "out", tmp_path / "cache")
    with pytest.raises(PipelineError, match="inside the input"):
        pp.preprocess_corpus(
            raw / "metadata.csv",
            raw / "pre",
            tmp_path / "cache",
            pp.ProcessParams(),
            pp.Filters(),
            progress=False,
        )
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.csv").write_text("file_name,transcription\na.wav,hi,extra\n")
    with pytest.raises(PipelineError, match="more fields"):
        _run(broken, tmp_path / "out", tmp_path / "cache")
    assert not (tmp_path / "out").exists()


def test_cli_flags_win_over_config(raw, tmp_path, capsys):
    from tts_pipeline.cli import main

    repo = Path(__file__).resolve().parent.parent
    config = tmp_path / "xx.yaml"
    config.write_text(
        "language: {code: xx}\n"
        "source: {type: local, path: nowhere}\n"
        f"paths: {{cache: '{tmp_path / 'cache'}', raw_dataset: '{tmp_path / 'no-raw'}'}}\n"
        "preprocess: {workers: 1}\n"
    )
    code = main(
        [
            "preprocess",
            "--config",
            str(config),
            "--params",
            str(repo / "params.yaml"),
            "--input_dir",
            str(raw),
            "--output_dir",
            str(tmp_path / "pre"),
            "--metrics_file",
            str(tmp_path / "m.json"),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "clips in" in printed and "kept" in printed
    assert (tmp_path / "pre" / "metadata.csv").is_file() and (tmp_path / "pre" / "rejected.csv").is_file()
    assert json.loads((tmp_path / "m.json").read_text())["clips_total"] == len(EXPECTED)


_SLOW_RUN = """
import sys, time
from pathlib import Path
from tts_pipeline import preprocess as pp
real = pp.process_clip
def slow(ctx, task):
    time.sleep(1.0)
    return real(ctx, task)
pp.process_clip = slow
raw, out, cache = map(Path, sys.argv[1:4])
pp.preprocess_corpus(input_metadata=raw / "metadata.csv", output_dir=out, cache_dir=cache,
                     params=pp.ProcessParams(), filters=pp.Filters(), workers=2, progress=False)
"""


def _live_children(pid: int) -> list[int]:
    """Processes whose parent is `pid` and that are not zombies (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _wait_for(predicate, seconds: float) -> bool:
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_kill_9_takes_the_workers_along_and_the_next_run_cleans_up(raw, tmp_path):
    import signal
    import subprocess
    import sys

    out, cache = tmp_path / "out", tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_RUN, str(raw), str(out), str(cache)], env=env)
    try:
        assert _wait_for(lambda: len(_live_children(proc.pid)) >= 2, 120), "the pool never started"
        workers = _live_children(proc.pid)
        assert list(tmp_path.glob(f".out.tmp-{proc.pid}-*"))
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    # the kernel ends them at once: 30 s is only a ceiling for a loaded machine
    assert _wait_for(lambda: not any(_alive(w) for w in workers), 30), "workers outlived their parent"
    stale = list(tmp_path.glob(f".out.tmp-{proc.pid}-*"))
    assert stale and not out.exists()  # what kill -9 leaves: a temp folder, no output
    _run(raw, out, cache)
    assert not stale[0].exists() and (out / "metadata.csv").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def _alive(pid: int) -> bool:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z"
