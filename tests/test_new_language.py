"""`tts-pipeline new-language`, optional speaker corrections, and one-line stage failures.

The end-to-end test follows README "Your language" literally on a copy of the pipeline and the
demo project: scaffold, run until dataset, correct a speaker, run again.
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dvc_helpers import dvc, git, git_env
from fake_gitlab import FakeGitLab
from helpers import REPO, build_tiny_model

from tts_pipeline import cli
from tts_pipeline.config import ConfigError, freeze_stage_settings, load_config
from tts_pipeline.errors import PipelineError
from tts_pipeline.newlanguage import add_to_params
from tts_pipeline.run import explain_failure
from tts_pipeline.speakers import load_corrections


@pytest.fixture()
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """params.yaml + languages/ + the demo Codex project, as in the repository; cwd there."""
    root = tmp_path / "repo"
    (root / "languages").mkdir(parents=True)
    shutil.copy(REPO / "params.yaml", root / "params.yaml")
    shutil.copy(REPO / "languages" / "demo.yaml", root / "languages" / "demo.yaml")
    shutil.copytree(REPO / "examples" / "demo-codex-project", root / "examples" / "demo-codex-project")
    monkeypatch.chdir(root)
    return root


def new_language(*args: str) -> int:
    return cli.main(["new-language", *args])


def test_scaffold_writes_commented_files_and_keeps_params_comments(project: Path, capsys) -> None:
    before = (project / "params.yaml").read_text()
    assert new_language("xyz", "--name", 'The "X" language', "--local", "examples/demo-codex-project") == 0
    out = capsys.readouterr().out
    assert "2 Codex document(s)" in out
    assert "next: tts-pipeline run --config languages/xyz.yaml --until dataset" in out

    after = (project / "params.yaml").read_text()
    assert after.replace('  xyz:\n    source: "examples/demo-codex-project"\n', "", 1) == before  # only added
    assert yaml.safe_load(after)["languages"]["xyz"] == {"source": "examples/demo-codex-project"}
    cfg = load_config(project / "languages" / "xyz.yaml", project / "params.yaml")
    assert (cfg.code, cfg.language.name) == ("xyz", 'The "X" language')
    assert (cfg.source.type, cfg.source.path) == ("local", "examples/demo-codex-project")
    assert cfg.origins["training.base_model"] == str(project / "params.yaml")  # not repeated in the file
    text = (project / "languages" / "xyz.yaml").read_text()
    assert text.startswith("# ") and "training:\n  base_model" not in text
    assert load_corrections(project / "languages" / "xyz.speakers.yaml").speakers == []

    # An existing language is never overwritten.
    snapshot = {p.name: p.read_bytes() for p in (project / "languages").iterdir()}
    assert new_language("xyz", "--name", "again", "--local", "examples/demo-codex-project") == 1
    assert "languages/xyz.yaml: already exists" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in (project / "languages").iterdir()} == snapshot
    assert new_language("demo", "--name", "again", "--local", "examples/demo-codex-project") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--local", "nowhere"], "--local nowhere: not a folder"),
        (["--local", "languages"], "no files/target/*.codex"),
        (
            ["--local", "examples/demo-codex-project", "--base-model", "facebook/bert-base"],
            "MMS-TTS model id",
        ),
        (["--local", "examples/demo-codex-project", "--base-model", "languages"], "without config.json"),
        (["--gitlab", "https://gitlab.example.org"], "--gitlab needs --project"),
        (["--local", "examples/demo-codex-project", "--project", "a/b"], "belong to --gitlab"),
    ],
)
def test_refusals_write_nothing(project: Path, capsys, args, message) -> None:
    before = (project / "params.yaml").read_bytes()
    assert new_language("abc", "--name", "A", *args) == 1
    assert message in capsys.readouterr().err
    assert (project / "params.yaml").read_bytes() == before
    assert sorted(p.name for p in (project / "languages").iterdir()) == ["demo.yaml"]


def test_bad_code_and_base_model_forms(project: Path, capsys) -> None:
    assert new_language("X Y", "--name", "A", "--local", "examples/demo-codex-project") == 1
    assert "lowercase letters" in capsys.readouterr().err
    model = build_tiny_model(project / "base", {0: {"name": "base"}}, ["abc"])
    args = ["--local", "examples/demo-codex-project", "--base-model"]
    assert new_language("abc", "--name", "A", *args, "facebook/mms-tts-eng") == 0
    assert load_config(project / "languages" / "abc.yaml").training.base_model == "facebook/mms-tts-eng"
    assert new_language("abd", "--name", "A", *args, str(model)) == 0


def test_gitlab_source_is_checked_with_the_named_token(project: Path, capsys, monkeypatch) -> None:
    with FakeGitLab(token="s3cret-token") as server:
        server.add_project("team/xyz-bible", {"files/target/A.codex": b'{"cells": []}'})
        monkeypatch.setenv("XYZ_TOKEN", "wrong")
        base = [
            "xyz",
            "--name",
            "X",
            "--gitlab",
            server.url,
            "--project",
            "team/xyz-bible",
            "--token-env",
            "XYZ_TOKEN",
        ]
        assert new_language(*base) == 1
        err = capsys.readouterr().err
        assert "did not answer" in err and "$XYZ_TOKEN" in err and "wrong" not in err
        assert not (project / "languages" / "xyz.yaml").exists()
        monkeypatch.setenv("XYZ_TOKEN", "s3cret-token")
        assert new_language(*base) == 0
    assert "team/xyz-bible' answers" in capsys.readouterr().out
    cfg = load_config(project / "languages" / "xyz.yaml")
    assert (cfg.source.type, cfg.source.project, cfg.source.token_env) == (
        "gitlab",
        "team/xyz-bible",
        "XYZ_TOKEN",
    )
    assert yaml.safe_load((project / "params.yaml").read_text())["languages"]["xyz"] == {
        "source": "params/xyz/collect.json"
    }
    assert "s3cret" not in "".join(p.read_text() for p in (project / "languages").iterdir())


def test_help_explains_every_flag() -> None:
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["new-language"]
    for action in sub._actions:
        assert action.help, f"{action.option_strings or action.dest} has no help"
    assert {"--name", "--gitlab", "--project", "--local", "--base-model", "--token-env"} <= {
        o for a in sub._actions for o in a.option_strings
    }


def test_add_to_params_handles_an_empty_or_absent_languages_block() -> None:
    assert yaml.safe_load(add_to_params("languages: {}\ncollect: {}\n", "ab", "x"))["languages"] == {
        "ab": {"source": "x"}
    }
    assert yaml.safe_load(add_to_params("collect: {}\n", "ab", "x"))["languages"] == {"ab": {"source": "x"}}


def test_corrections_are_optional_and_frozen_for_dvc(project: Path) -> None:
    cfg = load_config(project / "languages" / "demo.yaml")
    frozen = project / "params" / "demo"
    freeze_stage_settings(cfg, frozen)
    assert json.loads((frozen / "speakers.json").read_text())["corrections"] is None
    (project / "languages" / "demo.speakers.yaml").write_text("speakers:\n  Ann:\n    clips: [audio/a.wav]\n")
    freeze_stage_settings(cfg, frozen)
    assert json.loads((frozen / "speakers.json").read_text())["corrections"] == {
        "speakers": {"Ann": {"clips": ["audio/a.wav"]}}
    }
    (project / "languages" / "demo.speakers.yaml").write_text("speakers:\n  Ann: [a\n")
    with pytest.raises(ConfigError, match=r"demo\.speakers\.yaml line 3: not valid YAML"):
        freeze_stage_settings(cfg, frozen)
    dvc_yaml = yaml.safe_load((REPO / "dvc.yaml").read_text())
    deps = dvc_yaml["stages"]["speakers"]["do"]["deps"]
    assert not any("speakers.yaml" in str(d) for d in deps)  # DVC never requires the file


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("speakers:\n  A:\n    clips: 3\n", 3, "speakers.A.clips: expected a list"),
        (
            "speakers:\n  A:\n    clips: [a]\n  B:\n    anchors: [a]\n",
            5,
            "speakers.B.anchors: a is already listed",
        ),
        ("speakers:\n  A:\n    anchor: [a]\n", 2, "speakers.A: unknown key(s) anchor"),
        ("# c\nspeaker:\n  A: {}\n", 2, "speaker: unknown key(s) speaker"),
        ("speakers:\n  A: [a\n", 3, "not valid YAML"),
        ("speakers:\n  A: {}\n  A: {}\n", 3, "given twice"),
    ],
)
def test_malformed_corrections_name_the_line(tmp_path: Path, text: str, line: int, message: str) -> None:
    path = tmp_path / "xyz.speakers.yaml"
    path.write_text(text)
    with pytest.raises(PipelineError) as info:
        load_corrections(path)
    assert f"{path} line {line}: " in str(info.value) and message in str(info.value)


def test_stage_failures_are_one_line_in_user_terms() -> None:
    from dvc.exceptions import ReproductionError
    from dvc.stage.exceptions import MissingDataSource, StageCmdFailedError

    def wrapped(cause: BaseException) -> ReproductionError:
        try:
            raise ReproductionError("failed to reproduce 'speakers@xyz'") from cause
        except ReproductionError as exc:
            return exc

    missing = OSError(errno.ENOENT, "No such file or directory", "languages/xyz.speakers.yaml")
    message = explain_failure("speakers@xyz", wrapped(missing))
    assert message.startswith("languages/xyz.speakers.yaml: not found; create it")
    assert message.endswith("(while running the speakers step)")
    cmd = explain_failure("dataset@xyz", wrapped(StageCmdFailedError("tts-pipeline dataset", 1)))
    assert "the dataset step stopped with an error (exit code 1)" in cmd
    source = explain_failure("collect@xyz", wrapped(MissingDataSource(["examples/xyz"])))
    assert source.startswith("examples/xyz: not found, and the collect step needs it")
    odd = explain_failure("train@xyz", wrapped(RuntimeError("[Errno 5] Input/output error\nmore")))
    assert odd == "Input/output error"
    for text in (message, cmd, source, odd):
        assert "\n" not in text and "Errno" not in text


# --------------------------------------------------------------------------- README, literally


def tts(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "tts_pipeline", *args],
        cwd=cwd,
        env=git_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, f"tts-pipeline {' '.join(args)}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_readme_your_language_steps_on_a_copy_of_the_demo(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".gitignore", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "languages", root / "languages")
    shutil.copytree(REPO / "examples" / "demo-codex-project", root / "codex" / "xyz-project")
    # An offline stand-in for facebook/mms-tts-<iso>: a local model folder (the flag accepts both).
    letters = "abcdefghijklmnopqrstuvwxyz' ,.?!-"
    build_tiny_model(root / "base-voice", {0: {"name": "base"}}, [letters])
    git("init", "-q", "-b", "main", cwd=root)
    dvc("init", "-q", cwd=root)
    git("add", "-A", cwd=root)
    git("commit", "-q", "-m", "copy", cwd=root)

    # README "Your language": the command, then step 2.
    tts(
        "new-language",
        "xyz",
        "--name",
        "My language",
        "--local",
        "codex/xyz-project",
        "--base-model",
        "base-voice",
        cwd=root,
    )
    assert not (root / "languages" / "xyz.speakers.yaml").read_text().count("\n  ")  # empty: speakers: {}
    (root / "languages" / "xyz.speakers.yaml").unlink()  # and optional: no file = no corrections
    first = tts("run", "--config", "languages/xyz.yaml", "--until", "dataset", cwd=root).stdout
    assert "dataset@xyz" in first
    ids = json.loads((root / "data" / "xyz" / "speakers" / "speaker_ids.json").read_text())
    dataset = root / "data" / "xyz" / "dataset"
    assert (dataset / "dataset_dict.json").is_file()
    assert json.loads((root / "params" / "xyz" / "speakers.json").read_text())["corrections"] is None

    # Step 3: name the speaker of one clip, as the review page suggests; step 4: run again.
    clip = sorted(ids["clips"])[0]
    (root / "languages" / "xyz.speakers.yaml").write_text(f"speakers:\n  Maria:\n    anchors: [{clip}]\n")
    second = tts("run", "--config", "languages/xyz.yaml", "--until", "dataset", cwd=root).stdout
    summary = second[second.index("summary for language 'xyz'") :]
    for stage, status in (
        ("collect", "up to date"),
        ("preprocess", "up to date"),
        ("speakers", "ran"),
        ("dataset", "ran"),
    ):
        assert any(
            line.split()[:1] == [f"{stage}@xyz"] and status in line for line in summary.splitlines()
        ), summary
    assert "Maria" in (root / "data" / "xyz" / "speakers" / "speaker_ids.json").read_text()
    names = [s["name"] for s in json.loads((dataset / "speakers.json").read_text()).values()]
    assert "Maria" in names
