"""`tts-pipeline evaluate`: synthesize the validation sentences, measure them, make a listening page.

Why: training losses say little about how a voice sounds. This stage speaks every validation
sentence (capped by `evaluation.max_samples`) in its reader's voice and compares it with the
real recording: numbers for `dvc exp show` (metrics/<code>/evaluate.json) and a page to listen
to (reports/<code>/index.html). When the base model can be loaded, it speaks the same sentences,
so the page and the metrics show what fine-tuning gained.

Outputs (one DVC `outs` directory, written atomically):

    reports/<code>/index.html            the listening page (audio referenced relatively)
    reports/<code>/samples/real/*.wav    the real recordings
    reports/<code>/samples/synth/*.wav   the trained model's output
    reports/<code>/samples/base/*.wav    the base model's output (when it loads)
    reports/<code>/sentences.csv         per-sentence metrics
    reports/<code>/summary.png           per-speaker bars (for `dvc plots show` and MLflow)
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import html
import io
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import Config
from .errors import PipelineError
from .speech_metrics import (
    MetricThresholds,
    SampleMetrics,
    Summary,
    measure_sample,
    resample,
    summarize_by_speaker,
)

if TYPE_CHECKING:  # pragma: no cover
    from .embeddings import SpeakerEmbedder
    from .modeling import LoadedVoice

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("audio", "text", "speaker_id")
SAMPLES_DIR = "samples"
PAGE_NAME = "index.html"
SENTENCES_CSV = "sentences.csv"
SUMMARY_PLOT = "summary.png"
#: What a report folder of an earlier version (before the output marker) always holds.
EVALUATE_LEGACY = (PAGE_NAME, SENTENCES_CSV)

#: One line per metric: the page's legend and the README.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "mcd_dtw": "Mel-cepstral distortion in dB between synthesized and real speech (c1-c24 of an 80-band "
    "mel cepstrum, 25 ms windows, 10 ms hop), frames aligned by dynamic time warping; lower is better, 0 = identical.",
    "speaker_similarity": "Cosine similarity of speaker embeddings (speaker_diarization.backend) of the synthesized "
    "and the real clip of the same sentence; higher is better, 1 = same voice.",
    "duration_ratio": "Synthesized / real speech duration (leading and trailing silence trimmed); 1 = same pace, "
    ">1 slower.",
    "silent_fraction": "Fraction of sentences whose synthesized audio is empty, non-finite or quieter than "
    "evaluation.silence_threshold_db peak.",
    "clipped_fraction": "Fraction of sentences whose synthesized audio has more than evaluation.max_clipping_ratio "
    "of its samples at full scale.",
}


# --------------------------------------------------------------------------- records


@dataclass
class ValidationItem:
    """One validation sentence with its real recording (mono float32)."""

    index: int
    file_name: str
    text: str
    text_original: str
    speaker_id: int
    speaker: str
    verse_id: str
    audio: np.ndarray
    sample_rate: int
    stem: str = ""
    model_input: str = ""  # what the model's tokenizer keeps of `text` (set once the model is loaded)


@dataclass
class EvaluateOptions:
    """Everything the evaluation needs besides its inputs, taken from the config."""

    max_samples: int = 50
    compare_base_model: bool = True
    base_model: str | None = None
    embedding_backend: str = "resemblyzer"
    embedding_model: str | None = None
    thresholds: MetricThresholds = field(default_factory=MetricThresholds)
    code: str = ""
    device: str = "cpu"

    @classmethod
    def from_config(cls, cfg: Config) -> EvaluateOptions:
        ev = cfg.evaluation
        return cls(
            max_samples=ev.max_samples,
            compare_base_model=ev.compare_base_model,
            base_model=cfg.training.base_model,
            embedding_backend=cfg.speaker_diarization.backend,
            embedding_model=cfg.speaker_diarization.model,
            thresholds=MetricThresholds(
                silence_threshold_db=ev.silence_threshold_db,
                max_clipping_ratio=ev.max_clipping_ratio,
            ),
            code=cfg.code,
        )


@dataclass
class SentenceResult:
    """One sentence on the page: where its audio files are and how it measured."""

    item: ValidationItem
    real_wav: str
    synth_wav: str
    metrics: SampleMetrics
    base_wav: str | None = None
    base_metrics: SampleMetrics | None = None


@dataclass
class EvaluationReport:
    """The whole evaluation: per-sentence results, summaries, and where it was written."""

    code: str
    model_dir: str
    sentences: list[SentenceResult]
    summary: Summary
    base_model: str | None = None
    base_summary: Summary | None = None
    output_dir: Path = Path()

    def metrics(self) -> dict[str, Any]:
        """The DVC metrics document: flat overall numbers, then per speaker, then the base model."""
        doc = self.summary.to_dict()
        if self.base_summary is not None:
            doc["base_model"] = self.base_summary.to_dict()
        return doc


# --------------------------------------------------------------------------- dataset


def select_indices(speaker_ids: Sequence[int], file_names: Sequence[str], max_samples: int) -> list[int]:
    """Deterministic choice of at most `max_samples` rows, spread evenly over the speakers.

    Round robin over speakers (by id), each speaker's rows in file-name order, so every
    reader is heard even when the cap is small, and the same rows are chosen every run.
    """
    groups: dict[int, list[int]] = {}
    for index, sid in enumerate(speaker_ids):
        groups.setdefault(int(sid), []).append(index)
    queues = [sorted(groups[sid], key=lambda i: (str(file_names[i]), i)) for sid in sorted(groups)]
    chosen: list[int] = []
    depth = 0
    while len(chosen) < max_samples and any(depth < len(q) for q in queues):
        for queue in queues:
            if depth < len(queue) and len(chosen) < max_samples:
                chosen.append(queue[depth])
        depth += 1
    return sorted(chosen, key=lambda i: (int(speaker_ids[i]), str(file_names[i]), i))


def _safe_stem(name: str, fallback: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(name).stem).strip("._")
    return stem or fallback


def _decode_bytes(data: bytes | None, where: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    if not data:
        raise PipelineError(
            f"{where}: audio has no embedded bytes; rebuild the dataset (tts-pipeline dataset)"
        )
    try:
        samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise PipelineError(f"{where}: cannot decode the embedded audio: {exc}") from None
    return samples.mean(axis=1).astype(np.float32), int(rate)


def load_validation(
    dataset_path: str | Path, max_samples: int, split: str = "validation"
) -> list[ValidationItem]:
    """The chosen validation rows with their audio decoded (soundfile; no torchcodec needed)."""
    import datasets

    dataset_path = Path(dataset_path)
    if not dataset_path.exists():
        raise PipelineError(f"{dataset_path}: dataset not found; run the dataset stage first")
    try:
        loaded = datasets.load_from_disk(str(dataset_path))
    except (FileNotFoundError, ValueError) as exc:
        raise PipelineError(f"{dataset_path}: not a saved Hugging Face dataset: {exc}") from None
    if not isinstance(loaded, datasets.DatasetDict) or split not in loaded:
        have = ", ".join(loaded.keys()) if isinstance(loaded, datasets.DatasetDict) else "a single Dataset"
        raise PipelineError(
            f"{dataset_path}: has no '{split}' split (has: {have}); rebuild it with the dataset stage"
        )
    table = loaded[split]
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise PipelineError(f"{dataset_path}: the '{split}' split lacks column(s) {', '.join(missing)}")
    if len(table) == 0:  # training copes without one; failing here would stop `run` before synthesize
        log.warning(
            "%s: the '%s' split is empty, nothing to evaluate (the report has no sentences); "
            "set dataset.validation_split > 0 (speakers need 2+ clips) and rebuild the dataset",
            dataset_path,
            split,
        )
        return []
    columns = set(table.column_names)
    speaker_ids = [int(s) for s in table["speaker_id"]]
    file_names = table["file_name"] if "file_name" in columns else [f"row_{i:05d}" for i in range(len(table))]
    indices = select_indices(speaker_ids, file_names, max_samples)
    rows = table.cast_column("audio", datasets.Audio(decode=False)).select(indices)
    items: list[ValidationItem] = []
    used: set[str] = set()
    for index, row in zip(indices, rows, strict=True):
        file_name = str(row.get("file_name") or f"row_{index:05d}")
        where = f"{dataset_path} ({split}, {file_name})"
        audio = row["audio"] or {}
        samples, rate = _decode_bytes(audio.get("bytes"), where)
        stem = _safe_stem(file_name, f"row_{index:05d}")
        if stem in used:
            stem = f"{stem}_{index}"
        used.add(stem)
        sid = int(row["speaker_id"])
        items.append(
            ValidationItem(
                index=index,
                file_name=file_name,
                text=str(row["text"]),
                text_original=str(row.get("text_original") or row["text"]),
                speaker_id=sid,
                speaker=str(row.get("speaker") or f"speaker_{sid}"),
                verse_id=str(row.get("verse_id") or ""),
                audio=samples,
                sample_rate=rate,
                stem=stem,
            )
        )
    log.info("%s: %d of %d validation sentences chosen", dataset_path, len(items), len(table))
    return items


# --------------------------------------------------------------------------- synthesis + measures


def model_speaker(voice: LoadedVoice, speaker_id: int, speaker: str) -> int:
    """The model's speaker id for a dataset speaker: by name first, then by id; 0 for one voice."""
    if int(voice.model.config.num_speakers) <= 1:
        return 0
    for sid, info in voice.speakers.items():
        if info.get("name") == speaker:
            return int(sid)
    if 0 <= speaker_id < int(voice.model.config.num_speakers):
        return int(speaker_id)
    raise PipelineError(
        f"{voice.directory}: the model has no speaker {speaker!r} (id {speaker_id}); "
        "was it trained on this dataset? Re-run train, or evaluate with the matching --dataset_path"
    )


def embed_or_none(
    embedder: SpeakerEmbedder | None, samples: np.ndarray, sample_rate: int, what: str
) -> np.ndarray | None:
    """A speaker embedding, or None (with a warning) for audio that yields none."""
    from .embeddings import EmbeddingError

    if embedder is None or samples.size == 0:
        return None
    try:
        return embedder.embed(samples, sample_rate)
    except EmbeddingError as exc:
        log.warning("%s: no speaker embedding (%s)", what, exc)
        return None


def embed_real(embedder: SpeakerEmbedder | None, items: Sequence[ValidationItem]) -> list[np.ndarray | None]:
    """Embeddings of the real recordings: one batched pass when the backend has one and all
    clips share a rate, else clip by clip (a clip without an embedding gets None)."""
    from .embeddings import EmbeddingError, embed_many

    if embedder is None:
        return [None] * len(items)
    rates = {item.sample_rate for item in items}
    if len(rates) == 1 and hasattr(embedder, "embed_many"):
        try:
            return list(embed_many(embedder, [item.audio for item in items], rates.pop()))
        except EmbeddingError:
            pass  # one clip is unusable: find it below, keep the others
    return [embed_or_none(embedder, i.audio, i.sample_rate, f"real {i.file_name}") for i in items]


def synthesize_and_measure(
    voice: LoadedVoice,
    items: Sequence[ValidationItem],
    out_dir: Path,
    real_embeddings: Sequence[np.ndarray | None],
    embedder: SpeakerEmbedder | None,
    thresholds: MetricThresholds,
    label: str = "model",
) -> list[tuple[str, SampleMetrics]]:
    """Speak every item with `voice`, write `<out_dir>/<stem>.wav`, measure against the real clip.

    Returns (wav file name, metrics) per item, in order.
    """
    from tqdm import tqdm

    from .audio import write_wav

    out_dir.mkdir(parents=True, exist_ok=True)
    results: list[tuple[str, SampleMetrics]] = []
    for item, real_emb in zip(
        tqdm(items, desc=f"synthesize ({label})", unit="sentence"), real_embeddings, strict=True
    ):
        sid = model_speaker(voice, item.speaker_id, item.speaker)
        synth = np.asarray(voice.synthesize(item.text, sid), dtype=np.float32)
        wav_name = f"{item.stem}.wav"
        write_wav(out_dir / wav_name, synth if synth.size else np.zeros(1, np.float32), voice.sampling_rate)
        at_rate = resample(synth, voice.sampling_rate, item.sample_rate)
        synth_emb = None
        if np.isfinite(at_rate).all():
            synth_emb = embed_or_none(
                embedder, at_rate, item.sample_rate, f"{label} output for {item.file_name}"
            )
        metrics = measure_sample(item.audio, at_rate, item.sample_rate, real_emb, synth_emb, thresholds)
        results.append((wav_name, metrics))
    return results


def model_input(voice: LoadedVoice, text: str) -> str:
    """Exactly the characters the model reads of `text` (its tokenizer drops the rest)."""
    from .text import tokenizer_view

    try:
        return tokenizer_view(text, voice.tokenizer).kept
    except PipelineError:  # a phonemizing tokenizer: its view cannot be reproduced offline
        return text


def load_base_voice(base_model: str | None) -> LoadedVoice | None:
    """The base model for comparison, or None with a warning when it cannot be loaded."""
    from .modeling import load_voice

    if not base_model:
        return None
    try:
        return load_voice(base_model)
    except Exception as exc:  # hub offline, gated, wrong path, broken files: all just skip the comparison
        log.warning("base model %r not loaded, no comparison on the page (%s)", base_model, exc)
        return None


def evaluate(
    model_dir: str | Path,
    dataset_path: str | Path,
    output_dir: str | Path,
    metrics_file: str | Path | None,
    options: EvaluateOptions,
    embedder: SpeakerEmbedder | None = None,
    plot_file: str | Path | None = None,
) -> EvaluationReport:
    """The stage's work: synthesize, measure, write samples, page, CSV and metrics JSON.

    `embedder` defaults to the `options.embedding_backend` one (tests pass their own to share it).
    `plot_file` gets a copy of the summary image outside the report directory, for a DVC
    `plots` entry (`dvc plots diff` then shows two experiments' images side by side).
    """
    from .audio import write_wav
    from .embeddings import get_embedder
    from .fsutil import atomic_directory, atomic_write_bytes, claim_output_dir, write_json
    from .modeling import load_voice

    claim_output_dir(output_dir, "evaluate", EVALUATE_LEGACY)  # before loading anything
    items = load_validation(dataset_path, options.max_samples)
    voice = load_voice(model_dir, device=options.device)
    for item in items:
        item.model_input = model_input(voice, item.text)
    base_voice = load_base_voice(options.base_model) if options.compare_base_model else None
    if embedder is None:
        embedder = get_embedder(options.embedding_backend, options.embedding_model, device=options.device)

    output_dir = Path(output_dir)
    with atomic_directory(output_dir, "evaluate", EVALUATE_LEGACY) as tmp:
        samples = tmp / SAMPLES_DIR
        (samples / "real").mkdir(parents=True)
        for item in items:
            write_wav(samples / "real" / f"{item.stem}.wav", item.audio, item.sample_rate)
        real_embeddings = embed_real(embedder, items)
        synth = synthesize_and_measure(
            voice, items, samples / "synth", real_embeddings, embedder, options.thresholds, "model"
        )
        base = None
        if base_voice is not None:
            try:
                base = synthesize_and_measure(
                    base_voice,
                    items,
                    samples / "base",
                    real_embeddings,
                    embedder,
                    options.thresholds,
                    "base model",
                )
            except Exception as exc:  # the comparison is a bonus: never lose the evaluation to it
                log.warning(
                    "base model %r could not speak the sentences, no comparison (%s)", options.base_model, exc
                )
                shutil.rmtree(samples / "base", ignore_errors=True)
                base_voice = None
        sentences = [
            SentenceResult(
                item=item,
                real_wav=f"{SAMPLES_DIR}/real/{item.stem}.wav",
                synth_wav=f"{SAMPLES_DIR}/synth/{synth[i][0]}",
                metrics=synth[i][1],
                base_wav=f"{SAMPLES_DIR}/base/{base[i][0]}" if base else None,
                base_metrics=base[i][1] if base else None,
            )
            for i, item in enumerate(items)
        ]
        report = EvaluationReport(
            code=options.code,
            model_dir=str(model_dir),
            sentences=sentences,
            summary=summarize_by_speaker([(s.item.speaker, s.metrics) for s in sentences]),
            base_model=options.base_model if base_voice is not None else None,
            base_summary=(
                summarize_by_speaker([(s.item.speaker, s.base_metrics) for s in sentences if s.base_metrics])
                if base
                else None
            ),
            output_dir=output_dir,
        )
        (tmp / PAGE_NAME).write_text(render_page(report), encoding="utf-8")
        write_sentences_csv(tmp / SENTENCES_CSV, sentences)
        write_summary_plot(tmp / SUMMARY_PLOT, report)
    if metrics_file is not None:
        Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics_file, report.metrics())
    if plot_file is not None:
        atomic_write_bytes(plot_file, (output_dir / SUMMARY_PLOT).read_bytes())
    return report


def write_sentences_csv(path: Path, sentences: Sequence[SentenceResult]) -> None:
    """Per-sentence measures (one row per sentence, base-model columns when compared)."""
    keys = ["mcd_dtw", "speaker_similarity", "duration_ratio", "silent", "clipped"]
    header = ["sentence", "file_name", "verse_id", "speaker", "text"] + keys
    with_base = any(s.base_metrics for s in sentences)
    if with_base:
        header += [f"base_{k}" for k in keys]
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for number, s in enumerate(sentences, 1):
            m = s.metrics.to_dict()
            row = [number, s.item.file_name, s.item.verse_id, s.item.speaker, s.item.text_original]
            row += [_csv_value(m[k]) for k in keys]
            if with_base:
                b = s.base_metrics.to_dict() if s.base_metrics else {}
                row += [_csv_value(b.get(k)) for k in keys]
            writer.writerow(row)


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float) and not isinstance(value, bool):
        return round(value, 4)
    return value


def write_summary_plot(path: Path, report: EvaluationReport) -> None:
    """Per-speaker bars of the main measures (model, and base model when compared).

    An image `dvc plots show` can embed and MLflow shows with the run: the numbers at a glance.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("mcd_dtw", "MCD-DTW (dB), lower is better"), ("speaker_similarity", "speaker similarity"),
              ("duration_ratio", "duration ratio (1 = real pace)"))  # fmt: skip
    names = list(report.summary.per_speaker) + ["all"]
    series = [("model", {**report.summary.per_speaker, "all": report.summary.overall})]
    if report.base_summary is not None:
        series.append(("base model", {**report.base_summary.per_speaker, "all": report.base_summary.overall}))
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.2 * len(panels), 0.45 * len(names) + 1.6), squeeze=False
    )
    height = 0.8 / len(series)
    positions = np.arange(len(names))
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        for k, (label, values) in enumerate(series):
            data = [values.get(n, {}).get(key) for n in names]
            ax.barh(positions + k * height, [np.nan if v is None else v for v in data], height, label=label)
        ax.set_yticks(positions + height * (len(series) - 1) / 2, names)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        if key == "duration_ratio":
            ax.axvline(1.0, color="grey", linewidth=0.8)
    if len(series) > 1:
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper left", ncols=len(series), fontsize=8)
    fig.suptitle(
        f"Evaluation: {report.code or 'voice'} ({report.summary.overall.get('num_samples')} sentences)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- page


#: Plain-language verdicts on the page: (higher is better?, good bound, fair bound) per metric.
#: Rules of thumb, stated on the page; MCD-DTW figures follow published MMS/VITS fine-tunes
#: (about 5-7 dB), speaker similarity the Resemblyzer same-speaker range (above 0.75).
VERDICT_RULES: dict[str, tuple[bool, float, float]] = {
    "mcd_dtw": (False, 6.0, 8.0),
    "speaker_similarity": (True, 0.80, 0.65),
    "duration_error": (False, 0.15, 0.35),  # |duration_ratio - 1|
    "silent_fraction": (False, 0.0, 0.05),
    "clipped_fraction": (False, 0.0, 0.05),
}


def verdict(metric: str, value: Any) -> str | None:
    """good / fair / poor for one summary number (None when undefined or not judged)."""
    if (
        value is None
        or isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
    ):
        return None
    if metric == "duration_ratio":
        metric, value = "duration_error", abs(float(value) - 1.0)
    if metric not in VERDICT_RULES:
        return None
    higher, good, fair = VERDICT_RULES[metric]
    if higher:
        return "good" if value >= good else "fair" if value >= fair else "poor"
    return "good" if value <= good else "fair" if value <= fair else "poor"


def verdict_rule(metric: str) -> str:
    """The thresholds in words, as printed next to each verdict."""
    if metric == "duration_ratio":
        _, good, fair = VERDICT_RULES["duration_error"]
        return (
            f"good {1 - good:.2f}-{1 + good:.2f}, fair {1 - fair:.2f}-{1 + fair:.2f}, poor outside "
            "(1 = the reader's pace)"
        )
    higher, good, fair = VERDICT_RULES[metric]
    unit = " dB" if metric == "mcd_dtw" else ""
    if higher:
        return f"good ≥ {good:g}{unit}, fair ≥ {fair:g}{unit}, poor below"
    best = f"good = {good:g}" if good == 0 else f"good ≤ {good:g}{unit}"
    return f"{best}, fair ≤ {fair:g}{unit}, poor above"


VERDICT_MEANING = {
    "mcd_dtw": "How close the sound is to the real recording",
    "speaker_similarity": "Does it sound like the same reader",
    "duration_ratio": "Does it speak at the reader's pace",
    "silent_fraction": "Sentences that came out silent",
    "clipped_fraction": "Sentences that came out distorted (clipped)",
}


def _verdicts(report: EvaluationReport) -> list[dict[str, Any]]:
    """One row per metric: the plain-language question, value and verdict per model, the rule."""
    summaries = [report.summary.overall]
    if report.base_summary is not None:
        summaries.append(report.base_summary.overall)
    return [
        {
            "metric": metric,
            "question": question,
            "cells": [(values.get(metric), verdict(metric, values.get(metric))) for values in summaries],
            "rule": verdict_rule(metric),
        }
        for metric, question in VERDICT_MEANING.items()
    ]


_SUMMARY_KEYS = (
    "mcd_dtw",
    "speaker_similarity",
    "duration_ratio",
    "silent_fraction",
    "clipped_fraction",
    "num_samples",
)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return html.escape(str(value))


def _metrics_view(m: SampleMetrics | None) -> dict[str, Any] | None:
    if m is None:
        return None
    flags = [name for name, on in (("silent", m.silent), ("clipped", m.clipped)) if on]
    return {**m.to_dict(), "flags": flags}


def render_page(report: EvaluationReport) -> str:
    """The listening page (template `listening.html.j2`): verdicts, overall and per-speaker
    summaries, then one row per sentence with the text, what the model reads of it, and the
    real, fine-tuned and base-model recordings side by side with their measures."""
    from markupsafe import Markup

    from .pages import render

    overall = [("model", report.summary.overall)]
    speakers = list(report.summary.per_speaker.items())
    if report.base_summary is not None:
        overall.append((f"base model ({report.base_model})", report.base_summary.overall))
        speakers += [(f"{name} (base model)", v) for name, v in report.base_summary.per_speaker.items()]
    sentences = []
    for s in report.sentences:
        item = s.item
        kept = item.model_input or item.text
        sentences.append(
            {
                "ident": item.verse_id or item.file_name,
                "speaker": item.speaker,
                "text": item.text_original,
                "model_input": kept if kept != item.text_original else None,
                "real": s.real_wav,
                "synth": s.synth_wav,
                "base": s.base_wav,
                "metrics": _metrics_view(s.metrics),
                "base_metrics": _metrics_view(s.base_metrics),
            }
        )
    return render(
        "listening.html.j2",
        title=f"Evaluation: {report.code or 'voice'}",
        model_dir=report.model_dir,
        with_base=report.base_summary is not None,
        verdicts=_verdicts(report),
        overall=overall,
        speakers=speakers,
        summary_keys=_SUMMARY_KEYS,
        plot=SUMMARY_PLOT,
        sentences=sentences,
        legend=METRIC_DESCRIPTIONS,
        fmt=lambda value, digits=3: Markup(_fmt(value, digits)),  # _fmt escapes what it prints
    )


# --------------------------------------------------------------------------- MLflow

TRAINING_INFO = "training_info.json"
TRAINING_RUN = "training_run.json"  # train.RUN_INFO_FILE (no stage imports another)


def _flat_metrics(doc: dict[str, Any], prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in doc.items():
        name = f"{prefix}{re.sub(r'[^A-Za-z0-9_./ -]', '_', str(key))}"
        if isinstance(value, dict):
            flat.update(_flat_metrics(value, f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[name] = float(value)
    return flat


def training_run(model_dir: str | Path) -> tuple[str | None, int]:
    """(MLflow run id, final step) the train stage recorded in the model's training_info.json."""
    from .fsutil import read_json

    info: dict[str, Any] = {}
    # training_info.json (inside the model: steps), training_run.json (beside it: the run id)
    for path in (Path(model_dir) / TRAINING_INFO, Path(model_dir).parent / TRAINING_RUN):
        if path.is_file():
            try:
                info.update(read_json(path))
            except ValueError as exc:
                log.warning("%s", exc)
    return (info.get("mlflow_run_id") or None), int(info.get("steps") or 0)


def log_to_mlflow(report: EvaluationReport, run_id: str | None = None) -> str | None:
    """Attach the listening page, samples, plot and metrics to the training run (never fatal).

    The run is `run_id`, else MLFLOW_RUN_ID, else the one the train stage recorded in the
    model's training_info.json; when none of those exists in the tracking store, a new run
    `evaluate-<code>` in the training's experiment. Returns the run id logged to, or None.
    """
    try:
        import mlflow

        from .tracking import run_tags, scrub, self_contained_html, tracking_uri, use_experiment
    except ImportError:
        return None
    recorded, step = training_run(report.model_dir)
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or recorded
    try:
        mlflow.set_tracking_uri(tracking_uri())
        active = None
        if run_id:
            try:
                active = mlflow.start_run(run_id=run_id)
            except Exception as exc:  # trained on another machine: its run is in another store
                log.info("MLflow run %s not found here (%s); logging to a new run", run_id, scrub(str(exc)))
        if active is None:
            use_experiment(mlflow, f"tts-pipeline-{report.code}")
            active = mlflow.start_run(run_name=f"evaluate-{report.code}")
            tags = {"language": report.code, "stage": "evaluate", "model_dir": report.model_dir}
            if run_id:
                tags["training_run_id"] = run_id
            mlflow.set_tags(run_tags(tags))
        with active:
            mlflow.log_metrics(
                {f"eval/{k}": v for k, v in _flat_metrics(report.metrics()).items()}, step=step
            )
            mlflow.log_artifacts(str(report.output_dir), artifact_path="evaluation")
            # MLflow's viewer resolves no relative links: its copy of the page carries its assets
            page = Path(report.output_dir) / PAGE_NAME
            if page.is_file():
                mlflow.log_text(self_contained_html(page), f"evaluation/{PAGE_NAME}")
            logged = active.info.run_id
        log.info("evaluation logged to MLflow run %s (artifact evaluation/%s)", logged, PAGE_NAME)
        return logged
    except Exception as exc:  # a tracking store problem must not fail the evaluation
        # MLflow's messages repeat the tracking URI, credentials included
        log.warning("could not log the evaluation to MLflow (%s: %s)", type(exc).__name__, scrub(str(exc)))
        with contextlib.suppress(Exception):
            mlflow.end_run(status="FAILED")
        return None


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_dir", default=None, help="trained model directory (default: paths.model)")
    parser.add_argument("--dataset_path", default=None, help="saved dataset (default: paths.hf_dataset)")
    parser.add_argument("--output_dir", default=None, help="report directory (default: paths.reports)")
    parser.add_argument(
        "--metrics_file", default=None, help="metrics JSON (default: <paths.metrics>/evaluate.json)"
    )
    parser.add_argument(
        "--plot_file",
        default=None,
        help="copy of summary.png for dvc plots (default: <paths.metrics>/evaluate.png)",
    )
    parser.add_argument("--no-mlflow", dest="mlflow", action="store_false", help="do not log to MLflow")


def run(cfg: Config, args: argparse.Namespace) -> int:
    model_dir = args.model_dir or cfg.paths.model
    dataset_path = args.dataset_path or cfg.paths.hf_dataset
    output_dir = args.output_dir or cfg.paths.reports
    metrics_file = args.metrics_file or str(Path(cfg.paths.metrics) / "evaluate.json")
    plot_file = args.plot_file or str(Path(cfg.paths.metrics) / "evaluate.png")
    options = EvaluateOptions.from_config(cfg)
    report = evaluate(model_dir, dataset_path, output_dir, metrics_file, options, plot_file=plot_file)
    if getattr(args, "mlflow", True):
        log_to_mlflow(report)
    o = report.summary.overall
    print(
        f"evaluate: {o['num_samples']} sentences; MCD-DTW {_fmt(o['mcd_dtw'], 2)} dB, "
        f"speaker similarity {_fmt(o['speaker_similarity'])}, duration ratio {_fmt(o['duration_ratio'], 2)}, "
        f"silent {_fmt(o['silent_fraction'], 2)}, clipped {_fmt(o['clipped_fraction'], 2)}"
    )
    print(f"listening page: {Path(output_dir) / PAGE_NAME}; metrics: {metrics_file}")
    return 0
