"""Review of the model area: edge cases found by a second reader (each test failed before its fix)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from test_remote_s3 import s3_endpoint  # noqa: F401 (fixture)
from test_train import make_config, make_dataset, paths_for
from vits_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from tts_pipeline import modeling


@pytest.fixture(scope="module")
def two_speakers(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "dataset")


# --------------------------------------------------------------------------- resume


@pytest.mark.parametrize(
    "lost", ["state/optimizers.pt", "state/trainer_state.json", "model/model.safetensors"]
)
def test_resume_skips_a_checkpoint_that_was_cut_short(tmp_path, two_speakers, lost, caplog):
    """A checkpoint folder restored from a half-finished backup upload (`gpu-box.sh
    --sync-checkpoints` preempted mid-upload), or left by a kill while save_total_limit pruned
    it, has a model/config.json but misses files. It must not be taken as the latest: the run
    resumes from the newest complete checkpoint instead of failing (FileNotFoundError /
    'not a training checkpoint') until the user deletes folders by hand."""
    from tts_pipeline.train import train

    paths = paths_for(tmp_path, two_speakers)
    first = train(make_config(tmp_path, max_steps=4), paths)
    assert first.steps == 4
    half = paths.checkpoint_dir / "checkpoint-6"
    shutil.copytree(paths.checkpoint_dir / "checkpoint-4", half)
    (half / lost).unlink()

    with caplog.at_level(logging.WARNING):
        resumed = train(make_config(tmp_path, max_steps=6), paths)
    assert resumed.resumed_from == 4 and resumed.steps == 6
    assert any("checkpoint-6" in r.getMessage() for r in caplog.records)
    # the new checkpoint-6 is a complete one, and it is the latest
    assert (half / "state" / "optimizers.pt").is_file() and (half / "model" / "model.safetensors").is_file()
    latest = modeling.resolve_checkpoint(paths.output_dir, paths.checkpoint_dir, "latest")
    assert latest == half / "model"
    index = json.loads((paths.checkpoint_dir / "index.json").read_text())
    assert index["latest_step"] == 6


# --------------------------------------------------------------------------- secrets


def test_scrub_removes_the_whole_password_even_with_an_at_sign():
    from tts_pipeline.tracking import flatten_params, scrub

    assert scrub("https://user:p@ss@gitlab.example.com/g/p.git") == "https://gitlab.example.com/g/p.git"
    assert scrub("https://oauth2:glpat-abc@gitlab.com/x") == "https://gitlab.com/x"
    assert scrub("https://gitlab.com/group/a@b") == "https://gitlab.com/group/a@b"  # not userinfo
    flat = flatten_params({"source": {"url": "https://u:pw@h/x"}, "extra": {"urls": ["https://u:pw@h/y"]}})
    assert "pw" not in json.dumps(flat)


def test_tracking_uri_with_credentials_is_not_logged(monkeypatch, caplog, tmp_path):
    """`MLFLOW_TRACKING_URI=https://user:token@mlflow.example` must not end up in the log."""
    from tts_pipeline import tracking

    monkeypatch.setattr(tracking, "tracking_uri", lambda: "https://bob:s3cret-token@mlflow.example")
    tracker = tracking.Tracker(enabled=True)
    tracker.run_id = None

    class FakeRun:  # the store is not reachable from a test; only the log line is under test
        class info:
            run_id = "abc"

    class FakeMlflow:
        def __getattr__(self, name):
            return lambda *a, **k: FakeRun() if name == "start_run" else None

    monkeypatch.setitem(__import__("sys").modules, "mlflow", FakeMlflow())
    with caplog.at_level(logging.INFO, logger="tts_pipeline.tracking"):
        assert tracker.start("exp", "run", {}) == "abc"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "mlflow.example" in text and "s3cret-token" not in text


@pytest.fixture
def unreachable_store_with_password(monkeypatch):
    """A tracking server URI with credentials in it; nothing listens on the discard port."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://bob:s3cret-token@127.0.0.1:9/")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


def test_mlflow_failure_warning_does_not_print_the_password(unreachable_store_with_password, caplog):
    """MLflow's own exception text repeats the tracking URI, password included."""
    from tts_pipeline.tracking import Tracker

    with caplog.at_level(logging.WARNING):
        assert Tracker(enabled=True).start("exp", "run", {"a": 1}) is None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "MLflow" in text and "s3cret-token" not in text


def test_evaluate_mlflow_failure_warning_does_not_print_the_password(
    unreachable_store_with_password, caplog, tmp_path
):
    from tts_pipeline.evaluate import log_to_mlflow
    from tts_pipeline.evaluation_report import EvaluationReport
    from tts_pipeline.speech_metrics import Summary

    report = EvaluationReport(code="tt", model_dir=str(tmp_path), sentences=[], summary=Summary({}))
    with caplog.at_level(logging.INFO):
        assert log_to_mlflow(report, run_id="0123") is None
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "MLflow" in text and "s3cret-token" not in text


# --------------------------------------------------------------------------- text splitting


@pytest.mark.parametrize("max_chars", [20, 30, 45])
def test_split_text_keeps_closing_quotes_and_brackets(max_chars):
    """A sentence end followed by a closing quote or bracket is a split point; the quote or
    bracket must stay with its sentence, not vanish from what the model reads."""
    from tts_pipeline.voice import split_text

    text = 'He said, "Go home." Then he left. (See verse 2.) And he went \u201cup\u201d. \u300c\u4f60\u597d\u3002\u300d Done!'
    chunks = split_text(text, max_chars)
    assert all(len(c) <= max_chars for c in chunks)
    assert "".join("".join(chunks).split()) == "".join(text.split())
    assert any(c.endswith('home."') or 'home." ' in c for c in chunks)


# --------------------------------------------------------------------------- broken model output


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from synth_helpers import shared_tiny_model

    return shared_tiny_model(tmp_path_factory)


def _nan_voice(model_dir: Path, monkeypatch):
    """A loaded voice whose generator went NaN (a diverged or damaged checkpoint)."""
    voice = modeling.load_voice(model_dir)
    monkeypatch.setattr(
        voice, "synthesize", lambda text, speaker_id=0, seed=0: torch.full((4000,), float("nan")).numpy()
    )
    return voice


def test_synthesize_does_not_write_or_cache_nan_audio(tiny_model, tmp_path, monkeypatch):
    """NaN samples encode to full-scale noise in Opus: such a take must be reported as not
    voiced, not written (nor handed to --write-back), nor cached for the next run."""
    from helpers import DEMO_PROJECT

    from tts_pipeline import synthesize
    from tts_pipeline.config import SynthesisSection
    from tts_pipeline.verses import local_documents, missing_verses

    verses, _ = missing_verses(local_documents(DEMO_PROJECT))
    cache = tmp_path / "cache"
    report = synthesize.synthesize_verses(
        verses, tiny_model, tmp_path / "out", SynthesisSection(), cache,
        progress=False, loaded=_nan_voice(tiny_model, monkeypatch),
    )  # fmt: skip
    assert report.verses == [] and len(report.failed) == len(verses)
    assert all("NaN" in reason for _, reason in report.failed)
    assert list((tmp_path / "out" / "audio").iterdir()) == []
    assert not cache.exists() or not any(cache.rglob("*.webm"))


def test_web_demo_answers_a_nan_model_with_an_error_not_noise(tiny_model, monkeypatch):
    from tts_pipeline.config import SynthesisSection
    from tts_pipeline.voice import text_normalizer
    from tts_pipeline.webdemo import DemoApp

    app = DemoApp(_nan_voice(tiny_model, monkeypatch), SynthesisSection(), text_normalizer(None))
    with pytest.raises(ValueError, match="NaN"):
        app.speak("hello there", None)


def test_changing_cpu_threads_resumes_instead_of_wiping_the_checkpoints(tmp_path, two_speakers):
    """`training.cpu_threads` (like num_workers) only says how fast a step runs; changing it
    (e.g. to keep a laptop responsive) must not count as a new configuration, which deletes
    every checkpoint and starts over."""
    from tts_pipeline.train import train

    paths = paths_for(tmp_path, two_speakers)
    train(make_config(tmp_path, max_steps=2), paths)
    resumed = train(make_config(tmp_path, max_steps=4, cpu_threads=1), paths)
    assert resumed.resumed_from == 2 and resumed.steps == 4


# --------------------------------------------------------------------------- the GPU box


@pytest.mark.slow
def test_gpu_box_restores_backed_up_checkpoints_newer_than_the_pulled_ones(tmp_path, s3_endpoint):  # noqa: F811
    """A replacement box whose `dvc pull` brought an earlier run's checkpoints (the folder is
    not empty) must still get the newer ones `--sync-checkpoints` backed up; otherwise the
    run resumes from the old step and the preempted box's progress is lost."""
    import subprocess

    from test_remote_s3 import BUCKET, aws_env, laptop_and_box

    env = aws_env(s3_endpoint)
    _, box = laptop_and_box(tmp_path, s3_endpoint, "newer", env)
    env_box = {**env, "TTS_S3_URL": f"s3://{BUCKET}/newer", "TTS_S3_ENDPOINT": s3_endpoint}
    script = ["bash", "scripts/gpu-box.sh", "--lang", "demo", "--skip-install"]

    ckpts = box / "models/demo/checkpoints"
    for step in (10, 20):
        (ckpts / f"checkpoint-{step}" / "state").mkdir(parents=True)
        (ckpts / f"checkpoint-{step}" / "state" / "trainer_state.json").write_text(f'{{"step": {step}}}')
        (ckpts / f"checkpoint-{step}" / "state.bin").write_bytes(bytes([step]) * 100)
    (ckpts / "index.json").write_text('{"latest_step": 20}')
    sync = subprocess.run([*script, "--sync-once"], cwd=box, env=env_box, capture_output=True, text=True)
    assert sync.returncode == 0, sync.stdout + sync.stderr

    # the next box: only the older checkpoint is here (pulled by DVC), with its older index
    shutil.rmtree(ckpts / "checkpoint-20")
    (ckpts / "index.json").write_text('{"latest_step": 10}')
    proc = subprocess.run(script, cwd=box, env=env_box, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ckpts / "checkpoint-20" / "state.bin").read_bytes() == bytes([20]) * 100
    assert json.loads((ckpts / "index.json").read_text()) == {"latest_step": 20}
    # a half-restored newest checkpoint here does not count: the backup's complete one comes back
    shutil.rmtree(ckpts / "checkpoint-20" / "state")
    proc = subprocess.run(script, cwd=box, env=env_box, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (ckpts / "checkpoint-20" / "state" / "trainer_state.json").is_file()
    # and a box that already has the newest checkpoint keeps what it has
    shutil.copytree(ckpts / "checkpoint-20", ckpts / "checkpoint-30")
    again = subprocess.run(script, cwd=box, env=env_box, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "nothing newer than step 30" in again.stdout, again.stdout + again.stderr


# --------------------------------------------------------------------------- checkpoint choice


@pytest.mark.parametrize("which", ["garbage", "-1", "1.5", ""])
def test_an_unknown_checkpoint_setting_names_the_setting(tmp_path, which):
    (tmp_path / "checkpoint-5" / "model").mkdir(parents=True)
    (tmp_path / "checkpoint-5" / "model" / "config.json").write_text("{}")
    with pytest.raises(modeling.PipelineError, match=r"synthesis\.checkpoint .*final, latest, best"):
        modeling.resolve_checkpoint(tmp_path / "model", tmp_path, which)


def test_checkpoint_setting_accepts_step_numbers_and_words_in_any_case(tmp_path):
    for step in (5, 17):
        (tmp_path / f"checkpoint-{step}" / "model").mkdir(parents=True)
        (tmp_path / f"checkpoint-{step}" / "model" / "config.json").write_text("{}")
    assert modeling.resolve_checkpoint(tmp_path / "m", tmp_path, 17).parent.name == "checkpoint-17"
    assert modeling.resolve_checkpoint(tmp_path / "m", tmp_path, " Latest ").parent.name == "checkpoint-17"
    assert modeling.resolve_checkpoint(tmp_path / "m", tmp_path, "BEST").parent.name == "checkpoint-17"
    with pytest.raises(modeling.PipelineError, match="no checkpoint for step 6 .have: 5, 17"):
        modeling.resolve_checkpoint(tmp_path / "m", tmp_path, "6")


# --------------------------------------------------------------------------- evaluate


def test_evaluate_with_an_empty_validation_split_reports_nothing_instead_of_failing(
    tmp_path, two_speakers, tiny_model, embedder, caplog
):
    """The dataset stage writes an empty validation split when no speaker has 2+ clips (or
    validation_split is 0); training copes (no validation loss). Evaluate must not fail then
    either: under `tts-pipeline run` a failing evaluate stops the pipeline before synthesize."""
    from datasets import load_from_disk

    from tts_pipeline.evaluate import EvaluateOptions, evaluate

    dataset = tmp_path / "dataset"
    shutil.copytree(two_speakers, dataset)
    shutil.rmtree(dataset / "validation")
    empty = load_from_disk(str(two_speakers))["validation"].select([])
    empty.save_to_disk(str(dataset / "validation"), num_shards=1)  # as the dataset stage does
    metrics_file = tmp_path / "metrics" / "evaluate.json"
    options = EvaluateOptions(compare_base_model=False)
    with caplog.at_level(logging.WARNING):
        report = evaluate(tiny_model, dataset, tmp_path / "report", metrics_file, options, embedder)
    assert report.sentences == []
    assert json.loads(metrics_file.read_text())["num_samples"] == 0
    assert (tmp_path / "report" / "index.html").is_file()
    assert any("validation" in r.getMessage() and "empty" in r.getMessage() for r in caplog.records)
