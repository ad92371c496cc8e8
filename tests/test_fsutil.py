"""fsutil: atomic outputs that never half-exist and never replace somebody's project."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_pipeline.errors import PipelineError
from tts_pipeline.fsutil import atomic_directory


def test_output_replaced_only_on_success(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("first")
    with pytest.raises(RuntimeError), atomic_directory(out) as tmp:
        (tmp / "a.txt").write_text("second")
        raise RuntimeError("crash mid-stage")
    assert (out / "a.txt").read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directory left behind


@pytest.mark.parametrize("marker", [".git", ".dvc", "dvc.yaml", "files/target", ".project"])
def test_a_project_is_never_replaced(tmp_path: Path, marker: str) -> None:
    project = tmp_path / "project"
    (project / marker).mkdir(parents=True)  # existence is what counts, file or folder
    (project / "precious.txt").write_text("months of recordings")
    with (
        pytest.raises(PipelineError, match="refusing to use as an output directory"),
        atomic_directory(project),
    ):
        pass
    assert (project / "precious.txt").read_text() == "months of recordings"


def test_working_directory_and_its_parents_are_never_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "repo" / "sub"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    for target in (work, tmp_path / "repo"):
        with pytest.raises(PipelineError, match="working directory"), atomic_directory(target):
            pass
    assert work.is_dir()
