"""The evaluate stage end to end on a tiny model and a tiny dataset built here from real clips."""

from __future__ import annotations

import json
import logging
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from browser_helpers import browser  # noqa: F401 - fixture
from helpers import build_tiny_model, wav_bytes

from tts_pipeline.audio import decode_audio
from tts_pipeline.config import load_config
from tts_pipeline.errors import PipelineError
from tts_pipeline.evaluate import (
    EvaluateOptions,
    evaluate,
    load_base_voice,
    load_validation,
    log_to_mlflow,
    select_indices,
)
from tts_pipeline.evaluation_report import METRIC_DESCRIPTIONS
from tts_pipeline.speech_metrics import MetricThresholds

ROOT = Path(__file__).resolve().parents[1]
CLIPS = ROOT / "tests" / "data" / "librispeech-6spk"
SR = 16000
TEXTS = ["hello there", "good morning friend", "the sun is up", "we read the book", "see you soon"]
METRIC_KEYS = {"mcd_dtw", "speaker_similarity", "duration_ratio", "silent_fraction", "clipped_fraction"}


def build_dataset(path: Path, speakers: dict[str, str], per_speaker: int = 2, seconds: float = 2.5) -> None:
    """A DatasetDict with the contract's columns; audio bytes embedded (WAV, 16 kHz)."""
    from datasets import Audio, Dataset, DatasetDict

    rows: dict[str, list] = {
        k: []
        for k in (
            "audio",
            "text",
            "text_original",
            "speaker_id",
            "speaker",
            "file_name",
            "verse_id",
            "duration_s",
        )
    }
    for sid, (name, folder) in enumerate(speakers.items()):
        for n, clip in enumerate(sorted((CLIPS / folder).glob("*.webm"))[:per_speaker]):
            samples = decode_audio(clip, SR)[: int(seconds * SR)]
            text = TEXTS[(sid * per_speaker + n) % len(TEXTS)]
            stem = f"MRK_{sid + 1:03d}_{n + 1:03d}"
            rows["audio"].append({"bytes": wav_bytes(samples, SR), "path": f"{stem}.wav"})
            rows["text"].append(text)
            rows["text_original"].append(text.capitalize() + ".")
            rows["speaker_id"].append(sid)
            rows["speaker"].append(name)
            rows["file_name"].append(f"audio/{stem}.wav")
            rows["verse_id"].append(f"MRK {sid + 1}:{n + 1}")
            rows["duration_s"].append(samples.size / SR)
    table = Dataset.from_dict(rows).cast_column("audio", Audio(sampling_rate=SR))
    DatasetDict(train=table.select([0]), validation=table).save_to_disk(str(path))


def build_model(path: Path, speakers: list[str]) -> Path:
    """A tiny randomly initialised VITS (the demo's scratch_model sizes), saved as a model dir."""
    return build_tiny_model(path, {i: {"name": name} for i, name in enumerate(speakers)}, TEXTS)


SPEAKERS = {"anna": "3080", "ben": "1688"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaluate")
    build_dataset(root / "dataset", SPEAKERS)
    build_model(root / "model", list(SPEAKERS))
    return root


@pytest.fixture(scope="module")
def report(workdir: Path, embedder):
    """One evaluation with the base-model comparison (the tiny model stands in for the base)."""
    options = EvaluateOptions(
        max_samples=3, compare_base_model=True, base_model=str(workdir / "model"), code="tiny"
    )
    return evaluate(
        workdir / "model",
        workdir / "dataset",
        workdir / "reports",
        workdir / "metrics" / "evaluate.json",
        options,
        embedder,
    )


def test_select_indices_is_deterministic_and_spreads_speakers() -> None:
    speaker_ids = [1, 0, 1, 0, 1, 2]
    names = ["f", "e", "d", "c", "b", "a"]
    chosen = select_indices(speaker_ids, names, 3)
    assert sorted(speaker_ids[i] for i in chosen) == [0, 1, 2]
    assert chosen == select_indices(speaker_ids, names, 3)
    assert [names[i] for i in chosen] == ["c", "b", "a"]  # first file name of each speaker
    assert sorted(select_indices(speaker_ids, names, 100)) == list(range(6))


def test_metrics_json_has_the_keys_dvc_exp_show_lists(report, workdir: Path) -> None:
    doc = json.loads((workdir / "metrics" / "evaluate.json").read_text())
    assert set(doc) >= METRIC_KEYS
    assert doc["num_samples"] == 3
    assert set(doc["per_speaker"]) == set(SPEAKERS)
    for values in doc["per_speaker"].values():
        assert set(values) >= METRIC_KEYS
    assert set(doc["base_model"]) >= METRIC_KEYS
    assert doc["base_model"]["num_samples"] == 3
    # A random model's output is still audio: all measures are defined and in range.
    if doc["silent_fraction"] < 1:
        assert doc["mcd_dtw"] > 0
        assert doc["duration_ratio"] > 0
    assert -1 <= doc["speaker_similarity"] <= 1
    assert 0 <= doc["silent_fraction"] <= 1 and 0 <= doc["clipped_fraction"] <= 1
    # The same model as "base": same seed, same audio, same numbers.
    assert doc["base_model"]["mcd_dtw"] == pytest.approx(doc["mcd_dtw"])


def test_samples_written_for_every_sentence(report, workdir: Path) -> None:
    out = workdir / "reports"
    assert len(report.sentences) == 3
    for s in report.sentences:
        for rel in (s.real_wav, s.synth_wav, s.base_wav):
            data, rate = sf.read(out / rel)
            assert rate == SR and data.size > 0
    real = sorted(p.name for p in (out / "samples" / "real").iterdir())
    assert real == sorted(p.name for p in (out / "samples" / "synth").iterdir())
    assert (out / "sentences.csv").read_text().count("\n") == 4
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(workdir.glob(".reports.tmp-*"))  # atomic directory cleaned up


class _PageParser(HTMLParser):
    """Collects, per sentence row, the audio players' sources."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.sections: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and "sentence" in (a.get("class") or ""):
            self.rows.append({"speaker": a.get("data-speaker"), "audio": []})
        elif tag == "audio" and self.rows:
            self.rows[-1]["audio"].append(a.get("src"))
        elif tag == "h2":
            self._in_h2 = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        if self._in_h2:
            self.sections.append(data.strip())


def test_listening_page_plays_real_and_synthesized_audio(report, workdir: Path) -> None:
    out = workdir / "reports"
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    parser = _PageParser()
    parser.feed(page)
    assert parser.sections[:3] == ["Summary", "Speakers", "Sentences"]
    assert len(parser.rows) == 3
    for row, sentence in zip(parser.rows, report.sentences, strict=True):
        assert row["speaker"] == sentence.item.speaker
        real, synth, base = row["audio"]
        assert (
            real.startswith("samples/real/")
            and synth.startswith("samples/synth/")
            and base.startswith("samples/base/")
        )
        for src in row["audio"]:
            assert not Path(src).is_absolute() and (out / src).is_file()
    # Texts as the reader saw them, per-speaker summary rows, and the metric legend.
    for sentence in report.sentences:
        assert sentence.item.text_original in page
    for name in SPEAKERS:
        assert f'<th scope="row">{name}</th>' in page
    for key in METRIC_DESCRIPTIONS:
        assert f"<dt>{key}</dt>" in page


def test_page_escapes_text(workdir: Path, embedder, tmp_path: Path) -> None:
    """Text from the project is user data: it must not become markup."""
    from tts_pipeline.evaluation_report import render_page

    items = load_validation(workdir / "dataset", 1)
    items[0].text_original = "<script>alert(1)</script> & co"
    from tts_pipeline.evaluation_report import EvaluationReport, SentenceResult
    from tts_pipeline.speech_metrics import SampleMetrics, summarize_by_speaker

    m = SampleMetrics(None, None, None, True, False)
    page = render_page(
        EvaluationReport(
            "x",
            "m",
            [SentenceResult(items[0], "samples/real/a.wav", "samples/synth/a.wav", m)],
            summarize_by_speaker([("s", m)]),
        )
    )
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "silent" in page


def test_base_model_that_cannot_load_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "not-a-model").mkdir()
    with caplog.at_level(logging.WARNING, logger="tts_pipeline.evaluate"):
        assert load_base_voice(str(tmp_path / "not-a-model")) is None
    assert "not-a-model" in caplog.text and "no comparison" in caplog.text
    assert load_base_voice(None) is None


def test_base_model_that_fails_to_speak_is_a_warning(
    workdir: Path, embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from tts_pipeline import evaluate as stage
    from tts_pipeline.modeling import load_voice

    broken = load_voice(workdir / "model")

    def fail(text: str, speaker_id: int = 0, seed: int | None = 0) -> np.ndarray:
        raise RuntimeError("CUDA out of memory")

    broken.synthesize = fail  # type: ignore[method-assign]
    monkeypatch.setattr(stage, "load_base_voice", lambda name: broken)
    options = EvaluateOptions(max_samples=1, compare_base_model=True, base_model="some/base", code="tiny")
    with caplog.at_level(logging.WARNING, logger="tts_pipeline.evaluate"):
        result = stage.evaluate(
            workdir / "model", workdir / "dataset", tmp_path / "out", tmp_path / "m.json", options, embedder
        )
    assert "could not speak" in caplog.text and "CUDA out of memory" in caplog.text
    assert result.base_summary is None and "base_model" not in json.loads((tmp_path / "m.json").read_text())
    assert not (tmp_path / "out" / "samples" / "base").exists()
    assert (tmp_path / "out" / "samples" / "synth").is_dir()


def test_bad_inputs_name_the_file(workdir: Path, tmp_path: Path, embedder) -> None:
    with pytest.raises(PipelineError, match="missing-dataset"):
        load_validation(tmp_path / "missing-dataset", 5)
    from datasets import Dataset, DatasetDict

    DatasetDict(train=Dataset.from_dict({"text": ["a"]})).save_to_disk(str(tmp_path / "no-val"))
    with pytest.raises(PipelineError, match="no 'validation' split"):
        load_validation(tmp_path / "no-val", 5)
    (tmp_path / "empty-model").mkdir()
    previous = workdir / "reports" / "index.html"
    before = previous.read_bytes() if previous.exists() else None
    with pytest.raises(PipelineError, match="empty-model"):
        evaluate(
            tmp_path / "empty-model", workdir / "dataset", tmp_path / "out", None, EvaluateOptions(), embedder
        )
    assert not (tmp_path / "out").exists()
    if before is not None:
        assert previous.read_bytes() == before


def test_cli_stage_writes_report_and_metrics(
    workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`tts-pipeline evaluate` with the flags dvc.yaml passes, on a language file of its own."""
    from tts_pipeline.cli import main

    lang = tmp_path / "languages" / "tiny.yaml"
    lang.parent.mkdir()
    lang.write_text(
        "language: {code: tiny}\nsource: {type: local, path: nowhere}\n"
        "training: {base_model: null}\nevaluation: {max_samples: 2, compare_base_model: true}\n"
    )
    metrics = tmp_path / "metrics" / "tiny" / "evaluate.json"
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "evaluate", "--config", str(lang), "--params", str(ROOT / "params.yaml"),
            "--model_dir", str(workdir / "model"), "--dataset_path", str(workdir / "dataset"),
            "--output_dir", str(tmp_path / "reports" / "tiny"), "--metrics_file", str(metrics), "--no-mlflow",
        ]
    )  # fmt: skip
    assert code == 0
    doc = json.loads(metrics.read_text())
    assert doc["num_samples"] == 2 and "base_model" not in doc  # base_model null: no comparison
    assert (tmp_path / "reports" / "tiny" / "index.html").is_file()
    # The image for `dvc plots`, next to the metrics (default path from paths.metrics).
    assert (tmp_path / "metrics" / "tiny" / "evaluate.png").read_bytes()[:4] == b"\x89PNG"
    assert not (tmp_path / "mlflow.db").exists()


def test_options_from_config() -> None:
    cfg = load_config(ROOT / "languages" / "demo.yaml", ROOT / "params.yaml")
    options = EvaluateOptions.from_config(cfg)
    assert options.max_samples == cfg.evaluation.max_samples
    assert options.embedding_backend == cfg.speaker_diarization.backend
    assert options.thresholds == MetricThresholds(
        silence_threshold_db=cfg.evaluation.silence_threshold_db,
        max_clipping_ratio=cfg.evaluation.max_clipping_ratio,
    )


def test_options_trim_speech_with_the_preprocess_settings() -> None:
    cfg = load_config(ROOT / "languages" / "demo.yaml", ROOT / "params.yaml")
    cfg.audio.trim_threshold_db, cfg.audio.trim_margin_s = -35.0, 0.25
    thresholds = EvaluateOptions.from_config(cfg).thresholds
    assert (thresholds.trim_threshold_db, thresholds.trim_margin_s) == (-35.0, 0.25)


def test_mlflow_logging_attaches_the_page_to_the_training_run(
    report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("tts-pipeline-tiny")
    with mlflow.start_run(run_name="train-tiny") as train_run:
        pass
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "training_info.json").write_text(
        json.dumps({"mlflow_run_id": train_run.info.run_id, "steps": 20})
    )

    logged = log_to_mlflow(dataclasses.replace(report, model_dir=str(model_dir)))
    assert logged == train_run.info.run_id
    client = mlflow.MlflowClient()
    history = client.get_metric_history(logged, "eval/mcd_dtw")
    assert [m.step for m in history] == [20]
    assert history[0].value == pytest.approx(report.summary.overall["mcd_dtw"])
    artifacts = {a.path for a in client.list_artifacts(logged, "evaluation")}
    assert {"evaluation/index.html", "evaluation/samples", "evaluation/summary.png"} <= artifacts
    # MLflow's copy of the page plays and shows without the files beside it
    page = Path(mlflow.artifacts.download_artifacts(run_id=logged, artifact_path="evaluation/index.html"))
    html = page.read_text(encoding="utf-8")
    assert "data:audio/wav;base64," in html and "data:image/png;base64," in html
    assert not re.search(r"""\b(?:src|href)=["'](?:samples/|summary\.png)""", html)

    # A run id from another machine's store: a new evaluate run, linked by a tag.
    (model_dir / "training_info.json").write_text(json.dumps({"mlflow_run_id": "0" * 32}))
    other = log_to_mlflow(dataclasses.replace(report, model_dir=str(model_dir)))
    assert other not in (None, logged)
    run = client.get_run(other)
    assert run.data.tags["training_run_id"] == "0" * 32 and run.info.run_name == "evaluate-tiny"
    assert "eval/per_speaker/anna/mcd_dtw" in run.data.metrics


def test_mlflow_failure_is_a_warning(report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "unknownscheme://nowhere")
    with caplog.at_level(logging.WARNING, logger="tts_pipeline.evaluate"):
        assert log_to_mlflow(report) is None
    assert "could not log the evaluation to MLflow" in caplog.text


# --------------------------------------------------------------------------- model input, verdicts, browser


def test_model_input_is_exactly_what_the_tokenizer_keeps(workdir: Path) -> None:
    from tts_pipeline.evaluate import model_input
    from tts_pipeline.modeling import load_voice

    voice = load_voice(workdir / "model")  # vocabulary: the letters of TEXTS (no c, j, v, z)
    assert model_input(voice, "the jazz cave") == "the a ae"


@pytest.mark.parametrize(
    ("metric", "value", "word"),
    [
        ("mcd_dtw", 5.9, "good"),
        ("mcd_dtw", 7.5, "fair"),
        ("mcd_dtw", 8.5, "poor"),
        ("speaker_similarity", 0.85, "good"),
        ("speaker_similarity", 0.7, "fair"),
        ("speaker_similarity", 0.3, "poor"),
        ("duration_ratio", 1.1, "good"),
        ("duration_ratio", 0.7, "fair"),
        ("duration_ratio", 1.6, "poor"),
        ("silent_fraction", 0.0, "good"),
        ("silent_fraction", 0.5, "poor"),
        ("mcd_dtw", None, None),
        ("num_samples", 3, None),
    ],
)
def test_verdicts_follow_the_stated_thresholds(metric, value, word) -> None:
    from tts_pipeline.evaluation_report import verdict

    assert verdict(metric, value) == word


def test_listening_page_in_a_browser(report, workdir: Path, browser) -> None:  # noqa: F811 - fixture
    from browser_helpers import open_page, screenshot

    with open_page(browser) as (page, _):
        page.goto((workdir / "reports" / "index.html").as_uri())
        rows = page.locator("#verdicts tr[data-metric]")
        assert rows.count() == 5
        first = rows.first.inner_text()
        assert "How close the sound is" in first and "good ≤ 6 dB, fair ≤ 8 dB, poor above" in first
        assert page.locator("#verdicts td.good, #verdicts td.fair, #verdicts td.poor").count() == 10
        headers = page.locator("#sentences tr").first.locator("th").all_inner_texts()
        assert headers[3:6] == ["real", "fine-tuned", "base model"]  # side by side
        assert page.inner_text("#s1 .model-input") == "model input: " + report.sentences[0].item.model_input
        duration = page.evaluate(
            """() => new Promise(done => { const a = document.querySelectorAll('#s1 audio')[1];
               a.preload = 'auto'; a.load(); a.onloadedmetadata = () => done(a.duration); })"""
        )
        assert duration > 0
        screenshot(page, "listening-page")
