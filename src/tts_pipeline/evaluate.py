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
import logging
import math
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from . import modeling
from .audio import AudioError, decode_wav_bytes, resample, write_wav
from .config import Config, EvaluationSection, SpeakerSection
from .embeddings import EmbeddingError, SpeakerEmbedder, embed_many, get_embedder
from .errors import PipelineError
from .evaluation_report import (
    PAGE_NAME,
    SAMPLES_DIR,
    SENTENCES_CSV,
    SUMMARY_PLOT,
    EvaluationReport,
    SentenceResult,
    ValidationItem,
    format_value,
    render_page,
    write_sentences_csv,
    write_summary_plot,
)
from .fsutil import atomic_directory, atomic_write_bytes, claim_output_dir, read_json, write_json
from .speech_metrics import MetricThresholds, SampleMetrics, measure_sample, summarize_by_speaker
from .text import tokenizer_view
from .tracking import Tracker, self_contained_html

log = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("audio", "text", "speaker_id")
#: What a report folder of an earlier version (before the output marker) always holds.
EVALUATE_LEGACY = (PAGE_NAME, SENTENCES_CSV)


@dataclass
class EvaluateOptions:
    """Everything the evaluation needs besides its inputs, taken from the config."""

    max_samples: int = EvaluationSection.max_samples
    compare_base_model: bool = EvaluationSection.compare_base_model
    base_model: str | None = None  # none: no comparison (from_config: training.base_model)
    embedding_backend: str = SpeakerSection.backend
    embedding_model: str | None = SpeakerSection.model
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
                trim_threshold_db=cfg.audio.trim_threshold_db,
                trim_margin_s=cfg.audio.trim_margin_s,
            ),
            code=cfg.code,
        )


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


def _validation_split(dataset_path: Path, split: str) -> Any:
    """The saved dataset's `split`, checked for the columns evaluation needs (errors name the fix)."""
    import datasets

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
    return table


def load_validation(
    dataset_path: str | Path, max_samples: int, split: str = "validation"
) -> list[ValidationItem]:
    """The chosen validation rows with their audio decoded (soundfile; no torchcodec needed)."""
    import datasets

    dataset_path = Path(dataset_path)
    table = _validation_split(dataset_path, split)
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
        try:
            samples, rate = decode_wav_bytes(audio.get("bytes"), where)
        except AudioError as exc:
            raise PipelineError(f"{exc}; rebuild the dataset (tts-pipeline dataset)") from None
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


def model_speaker(voice: modeling.LoadedVoice, speaker_id: int, speaker: str) -> int:
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
    voice: modeling.LoadedVoice,
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


def model_input(voice: modeling.LoadedVoice, text: str) -> str:
    """Exactly the characters the model reads of `text` (its tokenizer drops the rest)."""
    try:
        return tokenizer_view(text, voice.tokenizer).kept
    except PipelineError:  # a phonemizing tokenizer: its view cannot be reproduced offline
        return text


def load_base_voice(base_model: str | None) -> modeling.LoadedVoice | None:
    """The base model for comparison, or None with a warning when it cannot be loaded."""
    if not base_model:
        return None
    try:
        return modeling.load_voice(base_model)
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
    claim_output_dir(output_dir, "evaluate", EVALUATE_LEGACY)  # before loading anything
    items = load_validation(dataset_path, options.max_samples)
    voice = modeling.load_voice(model_dir, device=options.device)
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
        base = _measure_base(base_voice, items, samples / "base", real_embeddings, embedder, options)
        report = build_report(items, synth, base, options, model_dir, output_dir)
        (tmp / PAGE_NAME).write_text(render_page(report), encoding="utf-8")
        write_sentences_csv(tmp / SENTENCES_CSV, report.sentences)
        write_summary_plot(tmp / SUMMARY_PLOT, report)
    if metrics_file is not None:
        Path(metrics_file).parent.mkdir(parents=True, exist_ok=True)
        write_json(metrics_file, report.metrics())
    if plot_file is not None:
        atomic_write_bytes(plot_file, (output_dir / SUMMARY_PLOT).read_bytes())
    return report


def _measure_base(
    base_voice: modeling.LoadedVoice | None,
    items: Sequence[ValidationItem],
    folder: Path,
    real_embeddings: Sequence[np.ndarray | None],
    embedder: SpeakerEmbedder | None,
    options: EvaluateOptions,
) -> list[tuple[str, SampleMetrics]] | None:
    """The base model's outputs and measures; None when there is no base model or it cannot speak."""
    if base_voice is None:
        return None
    try:
        return synthesize_and_measure(
            base_voice, items, folder, real_embeddings, embedder, options.thresholds, "base model"
        )
    except Exception as exc:  # the comparison is a bonus: never lose the evaluation to it
        log.warning(
            "base model %r could not speak the sentences, no comparison (%s)", options.base_model, exc
        )
        shutil.rmtree(folder, ignore_errors=True)
        return None


def build_report(
    items: Sequence[ValidationItem],
    synth: list[tuple[str, SampleMetrics]],
    base: list[tuple[str, SampleMetrics]] | None,
    options: EvaluateOptions,
    model_dir: str | Path,
    output_dir: Path,
) -> EvaluationReport:
    """The sentences with their files and measures, summarised per speaker (and for the base model)."""
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
    return EvaluationReport(
        code=options.code,
        model_dir=str(model_dir),
        sentences=sentences,
        summary=summarize_by_speaker([(s.item.speaker, s.metrics) for s in sentences]),
        base_model=options.base_model if base is not None else None,
        base_summary=(
            summarize_by_speaker([(s.item.speaker, s.base_metrics) for s in sentences if s.base_metrics])
            if base
            else None
        ),
        output_dir=output_dir,
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
    recorded, step = training_run(report.model_dir)
    run_id = run_id or os.environ.get("MLFLOW_RUN_ID") or recorded
    tags = {"language": report.code, "stage": "evaluate", "model_dir": report.model_dir}
    if run_id:
        tags["training_run_id"] = run_id
    tracker = Tracker()
    logged = tracker.start(f"tts-pipeline-{report.code}", f"evaluate-{report.code}", params={}, tags=tags,
                           resume_run_id=run_id, tag_resumed=False)  # fmt: skip
    tracker.log_metrics({f"eval/{k}": v for k, v in _flat_metrics(report.metrics()).items()}, step)
    tracker.log_artifacts(report.output_dir, "evaluation")
    # MLflow's viewer resolves no relative links: its copy of the page carries its assets
    page = Path(report.output_dir) / PAGE_NAME
    if page.is_file():
        tracker.log_text(self_contained_html(page), f"evaluation/{PAGE_NAME}")
    if tracker.error is not None:  # a tracking store problem must not fail the evaluation
        log.warning("could not log the evaluation to MLflow (%s)", tracker.error)
        tracker.end_failed()
        return None
    tracker.end()
    log.info("evaluation logged to MLflow run %s (artifact evaluation/%s)", logged, PAGE_NAME)
    return logged


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
    model_dir = cfg.flag_or_path(args, "model_dir", "model")
    dataset_path = cfg.flag_or_path(args, "dataset_path", "hf_dataset")
    output_dir = cfg.flag_or_path(args, "output_dir", "reports")
    metrics_file = cfg.flag_or_path(args, "metrics_file", "metrics", under="evaluate.json")
    plot_file = cfg.flag_or_path(args, "plot_file", "metrics", under="evaluate.png")
    options = EvaluateOptions.from_config(cfg)
    report = evaluate(model_dir, dataset_path, output_dir, metrics_file, options, plot_file=plot_file)
    if getattr(args, "mlflow", True):
        log_to_mlflow(report)
    o = report.summary.overall
    print(
        f"evaluate: {o['num_samples']} sentences; MCD-DTW {format_value(o['mcd_dtw'], 2)} dB, "
        f"speaker similarity {format_value(o['speaker_similarity'])}, duration ratio {format_value(o['duration_ratio'], 2)}, "
        f"silent {format_value(o['silent_fraction'], 2)}, clipped {format_value(o['clipped_fraction'], 2)}"
    )
    print(f"listening page: {Path(output_dir) / PAGE_NAME}; metrics: {metrics_file}")
    return 0
