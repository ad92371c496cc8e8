"""What the evaluate stage writes about its results: the records, the listening page, the CSV, the plot.

Kept apart from `evaluate.py` (which loads the dataset and models, synthesizes and measures) so
each file does one job: this one turns an `EvaluationReport` into what a person reads.
"""

from __future__ import annotations

import csv
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup

from .pages import render
from .speech_metrics import SampleMetrics, Summary

SAMPLES_DIR = "samples"
PAGE_NAME = "index.html"
SENTENCES_CSV = "sentences.csv"
SUMMARY_PLOT = "summary.png"

#: One line per metric: the page's legend and the README.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "mcd_dtw": "Mel-cepstral distortion in dB between synthesized and real speech (c1-c24 of an 80-band "
    "mel cepstrum, 25 ms windows, 10 ms hop), frames aligned by dynamic time warping; lower is better, 0 = identical.",
    "speaker_similarity": "Cosine similarity of speaker embeddings (speaker_diarization.backend) of the synthesized "
    "and the real clip of the same sentence; higher is better, 1 = same voice.",
    "duration_ratio": "Synthesized / real speech duration, leading and trailing silence trimmed as preprocess "
    "trims clips (audio.trim_threshold_db, audio.trim_margin_s); 1 = same pace, >1 slower.",
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


# --------------------------------------------------------------------------- CSV and plot


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


def format_value(value: Any, digits: int = 3) -> str:
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
        # format_value escapes what it prints
        fmt=lambda value, digits=3: Markup(format_value(value, digits)),
    )
