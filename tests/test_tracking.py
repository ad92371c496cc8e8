"""MLflow helpers: a self-contained copy of an HTML page, run names that say what changed."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from tts_pipeline.tracking import run_name, self_contained_html


def test_page_copy_carries_its_audio_and_images(tmp_path: Path) -> None:
    report = tmp_path / "report"
    (report / "samples" / "real").mkdir(parents=True)
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "  # the bytes only have to round-trip
    png = b"\x89PNG\r\n\x1a\nfake"
    (report / "samples" / "real" / "a&b.wav").write_bytes(wav)
    (report / "summary.png").write_bytes(png)
    (tmp_path / "secret.txt").write_text("outside the report")
    page = report / "index.html"
    page.write_text(
        '<img src="summary.png" alt="s"><audio controls src="samples/real/a&amp;b.wav"></audio>'
        "<a href='samples/real/a&amp;b.wav'>download</a> <a href=\"#top\">top</a>"
        '<a href="https://example.org/x.png">web</a> <img src="../secret.txt"> <img src="gone.png">',
        encoding="utf-8",
    )
    text = self_contained_html(page)
    uris = re.findall(r"data:([a-z/]+);base64,([A-Za-z0-9+/=]+)", text)
    assert [mime for mime, _ in uris] == ["image/png", "audio/wav", "audio/wav"]
    assert base64.b64decode(uris[0][1]) == png and base64.b64decode(uris[1][1]) == wav
    # anchors, absolute URLs, paths leaving the folder and missing files stay as they were
    for kept in ('href="#top"', 'href="https://example.org/x.png"', 'src="../secret.txt"', 'src="gone.png"'):
        assert kept in text
    assert "outside the report" not in text
    assert page.read_text(encoding="utf-8").startswith('<img src="summary.png"')  # the file is untouched


def test_run_names_say_the_experiment_and_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dvc_helpers import git

    (tmp_path / "params" / "demo").mkdir(parents=True)
    committed = {"audio": {"sample_rate": 16000}, "training": {"learning_rate": 1e-4, "batch_size": 4}}
    (tmp_path / "params" / "demo" / "train.json").write_text(json.dumps(committed))
    git("init", "-q", "-b", "main", cwd=tmp_path)
    git("add", "-A", cwd=tmp_path)
    git("commit", "-q", "-m", "baseline", cwd=tmp_path)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    for var in ("DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        monkeypatch.delenv(var, raising=False)

    assert run_name("train", "demo", committed) == "train-demo"
    changed = {"audio": {"sample_rate": 16000}, "training": {"learning_rate": 5e-5, "batch_size": 4}}
    assert run_name("train", "demo", changed) == "train-demo (learning_rate=5e-05)"
    monkeypatch.setenv("DVC_EXP_NAME", "lr5e-5")
    assert run_name("train", "demo", changed) == "lr5e-5 (learning_rate=5e-05)"
    assert run_name("train", "hsn", changed) == "lr5e-5"  # nothing committed to compare with
    assert len(run_name("train", "demo", {"training": {"learning_rate": "x" * 400}})) == 250
