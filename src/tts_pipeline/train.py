"""Stage `train`: fine-tune an MMS-TTS (VITS) voice on the dataset stage's output.

    tts-pipeline train --config languages/<code>.yaml [--resume | --no-resume]

Reads `data/<code>/dataset` (a `DatasetDict` with train/validation, `speakers.json`, and
`vocab.json` when `training.base_model` is null), writes the final model directory
(`models/<code>/model`: save_pretrained + tokenizer + speakers.json + training_info.json),
checkpoints (`models/<code>/checkpoints`, a persisted DVC output: each `checkpoint-<step>/`
holds a loadable `model/` and the training `state/`, plus `index.json`), the metrics JSON and
the `train_curve.tsv` curve and its `train_curve.png` plot beside it, and an MLflow run.

Resuming: by default (and so under `dvc repro`) training continues from the latest checkpoint
when its configuration fingerprint (training settings that change the trajectory, the
dataset's fingerprint, the base model) matches; otherwise it starts over and removes the stale
checkpoints. `--resume` insists on resuming (error if there is no checkpoint; a warning if the
settings changed); `--no-resume` always starts over. The loop lives in `vits/trainer.py`.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import fsutil, launch, modeling, plots
from .config import Config, TrainingSection, stage_settings
from .errors import PipelineError
from .tracking import Tracker, git_revision, run_name

log = logging.getLogger(__name__)

#: Training settings that do not change the trajectory of a run: a checkpoint made under other
#: values of these can still be resumed (e.g. raising max_steps continues a finished run).
RESUMABLE_ACROSS = {
    "num_epochs", "max_steps", "save_steps", "save_total_limit", "logging_steps", "eval_steps",
    "eval_max_clips", "eval_samples", "num_workers", "max_nonfinite_steps", "mlflow", "cpu_threads",
    "num_processes",
}  # fmt: skip
CURVE_COLUMNS = [
    "step", "epoch", "lr", "loss_gen", "loss_disc", "mel_l1", "kl", "duration", "adversarial",
    "feature_matching", "grad_norm_gen", "grad_norm_disc", "val_loss", "val_mel_l1", "val_kl",
    "val_duration", "nonfinite",
]  # fmt: skip  # speed and memory vary run to run: MLflow has them, DVC outputs must not


@dataclass
class TrainPaths:
    dataset: Path
    output_dir: Path
    checkpoint_dir: Path
    metrics_file: Path

    @property
    def curve_file(self) -> Path:
        return self.metrics_file.parent / "train_curve.tsv"


@dataclass
class TrainResult:
    steps: int
    epochs: int
    model_dir: Path
    metrics: dict[str, Any]
    resumed_from: int | None = None
    info: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset_path", default=None, help="dataset directory (default: paths.hf_dataset)")
    parser.add_argument("--output_dir", default=None, help="final model directory (default: paths.model)")
    parser.add_argument("--checkpoint_dir", default=None, help="checkpoints (default: paths.checkpoints)")
    parser.add_argument(
        "--metrics_file", default=None, help="metrics JSON (default: paths.metrics/train.json)"
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=None,
                       help="continue from the latest checkpoint (error if none)")  # fmt: skip
    group.add_argument("--no-resume", dest="resume", action="store_false",
                       help="start over (removes existing checkpoints)")  # fmt: skip
    launch.add_arguments(parser)


#: What a model folder of an earlier version (before the output marker) always holds.
MODEL_LEGACY = ("training_info.json",)


def run(cfg: Config, args: argparse.Namespace) -> int:
    paths = TrainPaths(
        dataset=cfg.flag_or_path(args, "dataset_path", "hf_dataset"),
        output_dir=cfg.flag_or_path(args, "output_dir", "model"),
        checkpoint_dir=cfg.flag_or_path(args, "checkpoint_dir", "checkpoints"),
        metrics_file=cfg.flag_or_path(args, "metrics_file", "metrics", under="train.json"),
    )
    fsutil.claim_output_dir(paths.output_dir, "train", MODEL_LEGACY)  # before hours of training, not after
    launched = launch.relaunch_if_needed(cfg, args)  # several processes: `accelerate launch` runs this again
    if launched is not None:
        return launched
    result = train(cfg, paths, resume=args.resume)
    if not launch.is_main_worker():
        return 0
    val = result.metrics.get("val_loss")
    print(
        f"trained {result.steps} steps ({result.epochs} epochs)"
        + (f", resumed from step {result.resumed_from}" if result.resumed_from else "")
        + f"; mel L1 {result.metrics.get('mel_l1', float('nan')):.3f}"
        + (f", validation loss {val:.3f}" if val is not None else "")
        + f"; model in {result.model_dir}"
    )
    return 0


# --------------------------------------------------------------------------- pieces


def build_generator(cfg: Config, dataset_path: Path, num_speakers: int, workdir: Path):
    """(VitsModel, VitsTokenizer) from `training.base_model`, or a scratch model + dataset vocab."""
    s = cfg.training
    if s.base_model is None:
        vocab_file = dataset_path / "vocab.json"
        if not vocab_file.is_file():
            raise PipelineError(
                f"{vocab_file}: missing; training.base_model is null, so the dataset must provide vocab.json"
            )
        vocab = fsutil.read_json(vocab_file)
        if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
            raise PipelineError(f"{vocab_file}: expected a flat {{character: id}} map with ids 0..n-1")
        tokenizer = modeling.make_tokenizer(vocab, workdir / "tokenizer")
        model = modeling.build_scratch_model(s.scratch_model, vocab, num_speakers, cfg.audio.sample_rate)
        return model, tokenizer
    from .vits.models import load_base_model

    tokenizer = modeling.load_tokenizer(s.base_model)
    model = load_base_model(s.base_model, num_speakers, s.speaker_embedding_size)
    if int(model.config.sampling_rate) != cfg.audio.sample_rate:
        log.warning("%s is a %d Hz model; audio.sample_rate is %d: the dataset is resampled to the model's rate",
                    s.base_model, model.config.sampling_rate, cfg.audio.sample_rate)  # fmt: skip
    return model, tokenizer


def config_fingerprint(cfg: Config, dataset_fingerprints: dict[str, str], num_speakers: int) -> str:
    """Hash of everything that makes a checkpoint resumable by this run (see RESUMABLE_ACROSS)."""
    training = {k: v for k, v in cfg.to_dict()["training"].items() if k not in RESUMABLE_ACROSS}
    return fsutil.sha256_json({"training": training, "sample_rate": cfg.audio.sample_rate,
                               "dataset": dataset_fingerprints, "num_speakers": num_speakers})[:16]  # fmt: skip


def _checkpoint_hash(checkpoint_model_dir: Path) -> str | None:
    state_file = checkpoint_model_dir.parent / "state" / "trainer_state.json"
    try:
        return fsutil.read_json(state_file).get("config_hash")
    except (FileNotFoundError, ValueError):
        return None


def clear_checkpoints(checkpoint_dir: Path) -> None:
    for child in checkpoint_dir.glob(f"{modeling.CHECKPOINT_PREFIX}*"):
        shutil.rmtree(child, ignore_errors=True)
    (checkpoint_dir / modeling.CHECKPOINT_INDEX).unlink(missing_ok=True)


#: What `Trainer.save_checkpoint` writes into every checkpoint-<step>/ (plus model weights).
CHECKPOINT_FILES = (
    "model/config.json", "state/trainer_state.json", "state/generator.pt", "state/discriminator.pt",
    "state/optimizers.pt", "state/rng.pt",
)  # fmt: skip


def checkpoint_complete(directory: Path) -> bool:
    """True when `directory` holds everything a resume (and a synthesis from it) reads."""
    return all((directory / name).is_file() for name in CHECKPOINT_FILES) and any(
        (directory / "model").glob("model*.safetensors")
    )


def remove_partial_checkpoints(checkpoint_dir: Path) -> None:
    """Remove what a cut-short checkpoint left: the temporary directory of a run killed while it
    wrote one, and checkpoint-<step>/ folders missing files (a backup restored from a half-done
    upload, a kill while `save_total_limit` pruned one). Such a folder cannot be resumed, and
    left in place it would count as the latest (or make the settings look changed and so wipe
    the good checkpoints)."""
    for child in checkpoint_dir.glob(f".{modeling.CHECKPOINT_PREFIX}*.tmp-*"):
        log.info("removing %s (a checkpoint interrupted while being written)", child)
        shutil.rmtree(child, ignore_errors=True)
    for child in sorted(checkpoint_dir.glob(f"{modeling.CHECKPOINT_PREFIX}*")):
        suffix = child.name[len(modeling.CHECKPOINT_PREFIX) :]
        if child.is_dir() and suffix.isdigit() and not checkpoint_complete(child):
            missing = [name for name in CHECKPOINT_FILES if not (child / name).is_file()] or ["model weights"]
            log.warning("removing %s: an incomplete checkpoint (missing %s)", child, ", ".join(missing))
            shutil.rmtree(child, ignore_errors=True)


def choose_resume(checkpoint_dir: Path, config_hash: str, resume: bool | None) -> Path | None:
    """The checkpoint to resume from (None = start over, after removing stale checkpoints)."""
    checkpoints = modeling.list_checkpoints(checkpoint_dir)
    latest = checkpoint_dir / checkpoints[-1]["dir"] if checkpoints else None
    if resume is False:
        if latest:
            log.info("--no-resume: removing the checkpoints in %s", checkpoint_dir)
            clear_checkpoints(checkpoint_dir)
        return None
    if latest is None:
        if resume:
            raise PipelineError(f"{checkpoint_dir}: --resume given but there is no checkpoint to resume from")
        return None
    saved = _checkpoint_hash(latest / "model")
    if saved == config_hash:
        return latest
    if resume:
        log.warning(
            "%s: settings or dataset changed since this checkpoint; resuming anyway (--resume)", latest
        )
        return latest
    log.warning("%s: settings or dataset changed since the checkpoints were made; starting over "
                "(removing them). Use --resume to continue anyway.", checkpoint_dir)  # fmt: skip
    clear_checkpoints(checkpoint_dir)
    return None


def model_card(code: str, info: dict[str, Any]) -> str:
    """README.md of the model directory: what it is and how it was trained (no dates, no paths)."""
    disc = info.get("discriminator")
    disc_line = (
        "**random** (no pretrained discriminator was given: the adversarial and feature-matching losses "
        "start as noise; see training.discriminator_checkpoint)"
        if disc == "random" else f"pretrained, from `{disc}`"
    )
    return "\n".join([
        f"# {code}: VITS voice",
        "",
        f"- base model: `{info.get('base_model') or 'none (trained from scratch)'}`",
        f"- discriminator at the start of training: {disc_line}",
        f"- speakers: {info.get('speakers')}; steps: {info.get('steps')} ({info.get('epochs')} epochs); "
        f"batch {info.get('batch_size')} x {info.get('gradient_accumulation_steps')}; "
        f"precision {info.get('mixed_precision')}",
        "- weights: " + (f"running average of the generator's weights (power EMA, {info['weight_average']:g} of the "
                         "run wide: training.ema_length)" if info.get("weight_average") else "the last step's"),
        "- load with `transformers.VitsModel.from_pretrained(<this folder>)`; speakers.json maps speaker ids to names",
        "",
    ])  # fmt: skip


def write_curve(path: Path, history: list[dict[str, Any]]) -> None:
    """The `dvc plots` TSV: one row per logged step, empty cells where a value is absent."""

    def fmt(value: Any) -> str:
        if value is None:
            return ""
        return f"{value:.6g}" if isinstance(value, float) else str(value)

    lines = ["\t".join(CURVE_COLUMNS)]
    lines += ["\t".join(fmt(row.get(c)) for c in CURVE_COLUMNS) for row in history]
    fsutil.atomic_write_text(path, "\n".join(lines) + "\n")


def _number(value: Any) -> float | None:
    """Rounded float, or None for NaN/inf (which are not valid JSON for `dvc metrics`)."""
    value = float(value)
    return round(value, 6) if math.isfinite(value) else None


#: the run's volatile facts (MLflow run id, git revision, timings), beside the model directory
RUN_INFO_FILE = "training_run.json"
#: metrics that depend on the machine and the run, not on inputs/settings/code: kept out of the
#: model directory (they stay in metrics/<code>/train.json and MLflow)
VOLATILE_METRICS = ("train_hours", "steps_per_s")


def final_metrics(state, steps_per_epoch: int) -> dict[str, Any]:
    last = state.history[-1] if state.history else {}
    metrics: dict[str, Any] = {"step": state.step, "epoch": state.epoch, "steps_per_epoch": steps_per_epoch}
    for key in ("loss_gen", "loss_disc", "mel_l1", "kl", "duration", "adversarial", "feature_matching", "lr"):
        if key in last:
            metrics[key] = _number(last[key])
    for key, value in state.last_eval.items():
        metrics[key] = _number(value)
    metrics["best_val_loss"] = None if state.best_val_loss is None else round(state.best_val_loss, 6)
    metrics["best_step"] = state.best_step
    metrics["nonfinite_steps"] = state.total_nonfinite
    return metrics


def timing_metrics(state) -> dict[str, float]:
    """Wall-clock figures: for MLflow only, never in a DVC output (same inputs, same bytes)."""
    if not state.train_seconds:
        return {}
    return {
        "train_hours": round(state.train_seconds / 3600, 5),
        "steps_per_s": round(state.step / state.train_seconds, 4),
    }


# --------------------------------------------------------------------------- the stage


def make_device(s: TrainingSection) -> Any:
    """The accelerator for `training.mixed_precision` (CPU threads capped by `training.cpu_threads`)."""
    from .vits.trainer import make_accelerator

    accelerator = make_accelerator(s.mixed_precision)
    if accelerator.device.type == "cpu" and s.cpu_threads:
        import torch

        torch.set_num_threads(s.cpu_threads)
    return accelerator


@dataclass
class Splits:
    """The dataset's splits, tokenized and cut to the model's frames, with what was dropped."""

    train: list[Any]
    train_report: Any
    validation: list[Any]
    validation_report: Any


def prepare_splits(
    s: TrainingSection, dataset_path: Path, data: Any, tokenizer: Any, model: Any, num_speakers: int
) -> Splits:
    """Tokenize and frame the train split (and up to the evaluation clips of the validation split)."""
    from .vits.data import prepare_split

    common = {
        "sampling_rate": int(model.config.sampling_rate),
        "hop_length": int(math.prod(model.config.upsample_rates)),
        "max_audio_s": s.max_audio_s,
        "num_speakers": num_speakers,
    }
    train_examples, train_report = prepare_split(
        data["train"], tokenizer, where=f"{dataset_path}[train]", **common
    )
    if not train_examples:
        raise PipelineError(f"{dataset_path}: no usable training clips (see the warnings above)")
    if "validation" not in data or not len(data["validation"]):
        log.warning("%s: no validation split; 'best' checkpoints fall back to the latest", dataset_path)
        return Splits(train_examples, train_report, [], None)
    val_examples, val_report = prepare_split(
        data["validation"], tokenizer, where=f"{dataset_path}[validation]",
        limit=max(s.eval_max_clips, s.eval_samples), **common,
    )  # fmt: skip
    return Splits(train_examples, train_report, val_examples, val_report)


def resume_trainer(
    trainer: Any, accelerator: Any, checkpoint_dir: Path, config_hash: str, resume: bool | None
) -> int | None:
    """Load the checkpoint to continue from, if any; the step it was at.

    The main process decides (and may remove stale checkpoints) before the others look.
    """
    if accelerator.is_main_process:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        remove_partial_checkpoints(checkpoint_dir)
        checkpoint = choose_resume(checkpoint_dir, config_hash, resume)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        checkpoint = choose_resume(checkpoint_dir, config_hash, resume)
    if checkpoint is None:
        return None
    trainer.load_checkpoint(checkpoint)
    log.info("resuming from %s (step %d, epoch %d)", checkpoint, trainer.state.step, trainer.state.epoch)
    return int(trainer.state.step)


def batch_scale(s: TrainingSection, trainer: Any) -> dict[str, Any]:
    """Effective batch (batch x accumulation x processes) and the learning-rate rule, for logs and info."""
    return launch.scale_summary(trainer.state.batch_size, s.gradient_accumulation_steps,
                                trainer.accelerator.num_processes)  # fmt: skip


def fit_tracked(cfg: Config, trainer: Any, tracker: Any) -> Any:
    """Train under an MLflow run (resumed with the checkpoint); the run ends FAILED if training does."""
    s = cfg.training
    run_id = tracker.start(
        experiment=f"tts-pipeline-{cfg.code}",
        run_name=run_name("train", cfg.code, stage_settings(cfg, "train")),
        params={
            **cfg.to_dict(),
            "effective": {"batch_size": trainer.state.batch_size, **batch_scale(s, trainer), **trainer.summary},
        },
        tags={"language": cfg.code, "base_model": str(s.base_model)},
        resume_run_id=trainer.state.mlflow_run_id,
    )
    trainer.state.mlflow_run_id = run_id or trainer.state.mlflow_run_id
    status = "FAILED"
    try:
        state = trainer.fit()
        status = "FINISHED"
    finally:
        if status != "FINISHED":
            tracker.end(status)
    return state


def training_info(
    cfg: Config, trainer: Any, accelerator: Any, splits: Splits, config_hash: str,
    fingerprints: dict[str, str], num_speakers: int, sampling_rate: int, metrics: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """training_info.json, inside the model directory (a DVC output): only what the inputs,
    settings and code determine. Timings, run ids, the git revision and paths go to MLflow."""
    state, s = trainer.state, cfg.training
    return {
        "base_model": s.base_model,
        "discriminator": trainer.discriminator_source,
        "steps": state.step,
        "epochs": state.epoch,
        "config_hash": config_hash,
        "dataset_fingerprints": fingerprints,
        "train_split": splits.train_report.to_dict(),
        "validation_split": splits.validation_report.to_dict() if splits.validation_report else None,
        "speakers": num_speakers,
        "batch_size": state.batch_size,
        "gradient_accumulation_steps": s.gradient_accumulation_steps,
        **batch_scale(s, trainer),
        "mixed_precision": accelerator.mixed_precision,
        "weight_average": s.ema_length,
        "device": str(accelerator.device),
        "sampling_rate": sampling_rate,
        "metrics": {k: v for k, v in metrics.items() if k not in VOLATILE_METRICS},
        **trainer.summary,
    }


def save_outputs(
    cfg: Config, paths: TrainPaths, trainer: Any, tracker: Any, info: dict[str, Any],
    run_info: dict[str, Any], metrics: dict[str, Any],
) -> None:  # fmt: skip
    """The model folder (atomically), metrics, curve and plot; the same to MLflow; then end its run."""
    state = trainer.state
    with fsutil.atomic_directory(paths.output_dir, "train", MODEL_LEGACY) as tmp:
        trainer.save_model(tmp, extra_info=info)
        (tmp / "README.md").write_text(model_card(cfg.code, info), encoding="utf-8")
    fsutil.write_json(paths.metrics_file, metrics)
    write_curve(paths.curve_file, state.history)
    plots.write_training_curves(paths.curve_file.with_suffix(".png"), state.history, f"Training: {cfg.code}")
    final = {**metrics, **timing_metrics(state)}
    tracker.log_metrics(
        {f"final_{k}": v for k, v in final.items() if isinstance(v, (int, float))}, state.step
    )
    tracker.log_dict(info, "training_info.json")
    tracker.log_dict(run_info, "training_run.json")
    # next to the model directory, not inside it: evaluate finds the MLflow run here
    fsutil.write_json(paths.output_dir.parent / RUN_INFO_FILE, run_info)
    tracker.end("FINISHED")


def train(cfg: Config, paths: TrainPaths, resume: bool | None = None, tracker=None) -> TrainResult:
    """Load data and model, train (resuming when appropriate), save model, metrics and plots."""
    from accelerate.utils import set_seed

    from .vits.data import dataset_speakers, load_dataset_dict
    from .vits.trainer import Trainer

    s = cfg.training
    accelerator = make_device(s)
    data = load_dataset_dict(paths.dataset)
    speakers = dataset_speakers(paths.dataset, data)
    fingerprints = {name: str(getattr(split, "_fingerprint", "")) for name, split in data.items()}
    config_hash = config_fingerprint(cfg, fingerprints, len(speakers))

    with tempfile.TemporaryDirectory(prefix="tts-train-") as workdir:
        set_seed(s.seed)
        model, tokenizer = build_generator(cfg, paths.dataset, len(speakers), Path(workdir))
        splits = prepare_splits(s, paths.dataset, data, tokenizer, model, len(speakers))
        set_seed(s.seed)
        tracker = (
            tracker if tracker is not None else Tracker(enabled=s.mlflow and accelerator.is_main_process)
        )
        trainer = Trainer(s, model, tokenizer, speakers, splits.train, splits.validation, paths.checkpoint_dir,
                          config_hash=config_hash, tracker=tracker, accelerator=accelerator)  # fmt: skip
        resumed_from = resume_trainer(trainer, accelerator, paths.checkpoint_dir, config_hash, resume)
        log_plan(s, trainer, accelerator, splits, len(speakers))
        started = time.time()
        state = fit_tracked(cfg, trainer, tracker)
        accelerator.wait_for_everyone()

        metrics = final_metrics(state, trainer.steps_per_epoch())
        rate = int(model.config.sampling_rate)
        info = training_info(
            cfg, trainer, accelerator, splits, config_hash, fingerprints, len(speakers), rate, metrics
        )
        run_info = {
            "resumed_from": resumed_from,
            "dataset": str(paths.dataset),
            "git_revision": git_revision(),
            "mlflow_run_id": state.mlflow_run_id,
            "wall_seconds_this_run": round(time.time() - started, 1),
            "train_hours": metrics.get("train_hours"),
            "steps_per_s": metrics.get("steps_per_s"),
        }
        if accelerator.is_main_process:
            save_outputs(cfg, paths, trainer, tracker, info, run_info, metrics)
    log.info("model saved to %s", paths.output_dir)
    return TrainResult(steps=state.step, epochs=state.epoch, model_dir=paths.output_dir, metrics=metrics,
                       resumed_from=resumed_from, info={**info, **run_info})  # fmt: skip


def log_plan(s: TrainingSection, trainer: Any, accelerator: Any, splits: Splits, num_speakers: int) -> None:
    """What is about to be trained, on what, and how (and the effective batch)."""
    scale = batch_scale(s, trainer)
    log.info("effective batch %d clips per optimiser step (batch %d x %d accumulation x %d processes); "
             "learning-rate scaling: %s", scale["effective_batch_size"], trainer.state.batch_size,
             s.gradient_accumulation_steps, accelerator.num_processes, scale["learning_rate_scaling"])  # fmt: skip
    log.info("training %s: %d train / %d validation clips, %d speaker(s), batch %d x %d accumulation, "
             "%d steps (%d per epoch), device %s, precision %s, generator %.2f M / discriminator %.2f M params",
             s.base_model or "a scratch model", len(splits.train), len(splits.validation), num_speakers,
             trainer.state.batch_size, s.gradient_accumulation_steps, trainer.total_steps(),
             trainer.steps_per_epoch(), accelerator.device, accelerator.mixed_precision,
             trainer.summary["generator_parameters"] / 1e6,
             trainer.summary["discriminator_parameters"] / 1e6)  # fmt: skip
