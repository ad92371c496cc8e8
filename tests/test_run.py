"""`tts-pipeline run`: real DVC reproduction of a language's stages, on a small toy project."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import yaml
from dvc_helpers import dvc, git, make_toy_project, stage_runs

from tts_pipeline import cli
from tts_pipeline.errors import PipelineError
from tts_pipeline.run import (
    FAILED,
    NOT_HERE,
    RAN,
    RESTORED,
    SKIPPED,
    UP_TO_DATE,
    WOULD_RESTORE,
    WOULD_RUN,
    check_language,
    run_pipeline,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_toy_project(tmp_path_factory.mktemp("toy") / "proj")


def statuses(summary) -> dict[str, str]:
    return {r.name: r.status for r in summary.results}


def test_runs_then_up_to_date_then_only_what_changed(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(toy)
    first = run_pipeline(toy, "demo")
    assert statuses(first) == {"collect@demo": RAN, "dataset@demo": RAN, "train@demo": RAN}
    assert stage_runs(toy) == ["collect@demo", "dataset@demo", "train@demo"]
    assert all(r.seconds > 0 for r in first.results)
    assert (toy / "models/demo/model/weights.txt").is_file()
    assert "3 ran, 0 up to date" in first.format()

    second = run_pipeline(toy, "demo")
    assert statuses(second) == dict.fromkeys(statuses(first), UP_TO_DATE)
    assert stage_runs(toy) == []

    # A training setting changes: only train re-runs (what `dvc exp run -S` relies on too).
    params = toy / "params.yaml"
    original = params.read_text()
    params.write_text(original.replace("learning_rate: 1e-4", "learning_rate: 3e-4"))
    try:
        dry = run_pipeline(toy, "demo", dry=True)
        assert statuses(dry)["train@demo"] == WOULD_RUN
        assert "training.learning_rate" in dry.results[-1].reason
        assert stage_runs(toy) == []
        third = run_pipeline(toy, "demo")
        assert statuses(third) == {"collect@demo": UP_TO_DATE, "dataset@demo": UP_TO_DATE, "train@demo": RAN}
        assert stage_runs(toy) == ["train@demo"]
        assert json.loads((toy / "metrics/demo/train.json").read_text())["learning_rate"] == 3e-4
    finally:
        params.write_text(original)


def test_until_forced_and_refresh_source(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(toy)
    run_pipeline(toy, "demo")
    stage_runs(toy)
    summary = run_pipeline(toy, "demo", until="dataset", force=True)
    assert [r.name for r in summary.results] == ["collect@demo", "dataset@demo"]
    assert stage_runs(toy) == ["collect@demo", "dataset@demo"]
    # --refresh-source: collect re-runs; its output is identical, so dataset stays up to date.
    refreshed = run_pipeline(toy, "demo", until="dataset", force_stages=("collect",))
    assert statuses(refreshed) == {"collect@demo": RAN, "dataset@demo": UP_TO_DATE}
    with pytest.raises(PipelineError, match=r"--until evaluate: no stage 'evaluate@demo'.*collect, dataset"):
        run_pipeline(toy, "demo", until="evaluate")


def test_source_change_reruns_downstream_and_failure_keeps_upstream(
    toy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(toy)
    run_pipeline(toy, "demo")
    stage_runs(toy)
    (toy / "source/demo.txt").write_text("new recordings\n")
    plan = {r.name: r for r in run_pipeline(toy, "demo", dry=True).results}
    assert plan["collect@demo"].status == WOULD_RUN
    assert "source/demo.txt modified" in plan["collect@demo"].reason
    assert plan["dataset@demo"].reason == "if collect@demo changes its output"
    assert plan["train@demo"].reason == "if dataset@demo changes its output"
    monkeypatch.setenv("TOY_FAIL", "train")
    with pytest.raises(PipelineError, match=r"stage 'train@demo' failed") as info:
        run_pipeline(toy, "demo")
    summary = info.value.summary
    assert statuses(summary) == {"collect@demo": RAN, "dataset@demo": RAN, "train@demo": FAILED}
    assert "1 failed" in summary.format()
    assert (toy / "data/demo/dataset/data.txt").read_text() == "NEW RECORDINGS\n"
    monkeypatch.delenv("TOY_FAIL")
    stage_runs(toy)
    again = run_pipeline(toy, "demo")  # the fixed re-run does only what is left
    assert statuses(again) == {"collect@demo": UP_TO_DATE, "dataset@demo": UP_TO_DATE, "train@demo": RAN}


def test_failure_marks_later_stages_not_run(toy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(toy)
    monkeypatch.setenv("TOY_FAIL", "dataset")
    with pytest.raises(PipelineError) as info:
        run_pipeline(toy, "demo", force=True)
    assert statuses(info.value.summary)["train@demo"] == SKIPPED
    assert "toy stage dataset failing on purpose" not in str(info.value)  # stderr goes to the log
    assert "the dataset step stopped with an error (exit code 1)" in str(info.value)
    assert "\n" not in str(info.value)


def test_cli_run_and_clear_errors(
    toy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.chdir(toy)
    assert cli.main(["run", "--config", "languages/demo.yaml", "--dry"]) == 0
    out = capsys.readouterr().out
    assert "plan for language 'demo'" in out and "train@demo" in out

    assert cli.main(["run", "--config", "languages/demo.yaml"]) == 0
    out = capsys.readouterr().out
    assert "summary for language 'demo'" in out and "up to date" in out

    # A language that params.yaml does not list.
    other = toy / "languages" / "xyz.yaml"
    other.write_text(yaml.safe_dump({"source": {"type": "local", "path": "source"}}))
    try:
        assert cli.main(["run", "--config", "languages/xyz.yaml"]) == 1
        err = capsys.readouterr().err
        assert "language 'xyz' is not in 'languages'" in err and "params.yaml" in err
    finally:
        other.unlink()

    # No DVC project.
    bare = tmp_path / "bare"
    (bare / "languages").mkdir(parents=True)
    (bare / "params.yaml").write_text((toy / "params.yaml").read_text())
    (bare / "languages/demo.yaml").write_text((toy / "languages/demo.yaml").read_text())
    git("init", "-q", cwd=bare)
    monkeypatch.chdir(bare)
    assert cli.main(["run", "--config", "languages/demo.yaml"]) == 1
    assert "DVC isn't initialised" in capsys.readouterr().err


def test_check_language_accepts_list_and_mapping(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("languages: [demo]\n")
    check_language(params, "demo")
    params.write_text("languages:\n  hsn:\n    source: x\n")
    check_language(params, "hsn")
    with pytest.raises(PipelineError, match="'demo' is not in 'languages' \\(listed: hsn\\)"):
        check_language(params, "demo")
    params.write_text("training: {}\n")
    with pytest.raises(PipelineError, match="no 'languages'"):
        check_language(params, "demo")


def test_missing_data_is_restored_and_hints_allow_missing(
    toy: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(toy)
    run_pipeline(toy, "demo")
    stage_runs(toy)
    shutil.rmtree(toy / "data/demo/raw")  # like a clone that pulled only the dataset
    # --allow-missing: nothing needs raw (the dataset is here), nothing recomputed, raw stays absent.
    skipped = run_pipeline(toy, "demo", allow_missing=True)
    assert statuses(skipped) == {
        "collect@demo": NOT_HERE,
        "dataset@demo": UP_TO_DATE,
        "train@demo": UP_TO_DATE,
    }
    assert "1 skipped (data not here, not needed)" in skipped.format()
    assert not (toy / "data/demo/raw").exists()
    # Without it DVC brings raw back (here from its run cache, without running) and we say why.
    with caplog.at_level(logging.WARNING, logger="tts_pipeline.run"):
        restored = run_pipeline(toy, "demo")
    assert statuses(restored)["collect@demo"] == RESTORED
    assert "add --allow-missing" in caplog.text
    assert (toy / "data/demo/raw/items.txt").is_file()
    assert stage_runs(toy) == []


def _laptop_with_lock(path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A toy project that ran every stage and committed dvc.lock, like the repository does."""
    laptop = make_toy_project(path)
    monkeypatch.chdir(laptop)
    run_pipeline(laptop, "demo")
    stage_runs(laptop)
    git("add", "dvc.lock", "metrics", cwd=laptop)
    git("commit", "-q", "-m", "lock", cwd=laptop)
    return laptop


def test_fresh_clone_with_no_data_anywhere_runs_instead_of_calling_it_up_to_date(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dvc.lock names outputs that are not here, in the cache or on a remote: --allow-missing
    alone would skip every stage ("up to date") and train nothing."""
    laptop = _laptop_with_lock(tmp_path / "laptop", monkeypatch)
    box = tmp_path / "box"
    git("clone", "-q", str(laptop), str(box), cwd=tmp_path)
    monkeypatch.chdir(box)
    dry = run_pipeline(box, "demo", until="train", allow_missing=True, dry=True)
    assert statuses(dry) == dict.fromkeys(["collect@demo", "dataset@demo", "train@demo"], WOULD_RUN)
    assert "not here, in the cache or on the remote" in dry.results[-1].reason
    summary = run_pipeline(box, "demo", until="train", allow_missing=True)
    assert statuses(summary) == dict.fromkeys(statuses(dry), RAN)
    assert stage_runs(box) == ["collect@demo", "dataset@demo", "train@demo"]
    assert (box / "models/demo/model/weights.txt").is_file()
    # the workspace now matches the lock: a second run has nothing to do
    again = run_pipeline(box, "demo", until="train", allow_missing=True)
    assert statuses(again) == dict.fromkeys(statuses(dry), UP_TO_DATE)


def test_box_pulls_what_the_remote_has_and_runs_only_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The remote has the dataset only: it is pulled, collect is left alone, train runs."""
    laptop = _laptop_with_lock(tmp_path / "laptop", monkeypatch)
    dvc("remote", "add", "-d", "storage", str(tmp_path / "remote"), cwd=laptop)
    git("commit", "-q", "-am", "remote", cwd=laptop)
    dvc("push", "dataset@demo", cwd=laptop)
    box = tmp_path / "box"
    git("clone", "-q", str(laptop), str(box), cwd=tmp_path)
    monkeypatch.chdir(box)
    dry = run_pipeline(box, "demo", until="train", allow_missing=True, dry=True)
    assert statuses(dry) == {
        "collect@demo": UP_TO_DATE,
        "dataset@demo": WOULD_RESTORE,
        "train@demo": WOULD_RUN,
    }
    summary = run_pipeline(box, "demo", until="train", allow_missing=True)
    assert statuses(summary) == {"collect@demo": NOT_HERE, "dataset@demo": RESTORED, "train@demo": RAN}
    assert stage_runs(box) == ["train@demo"]
    assert not (box / "data/demo/raw").exists()
    assert (box / "models/demo/model/weights.txt").is_file()
