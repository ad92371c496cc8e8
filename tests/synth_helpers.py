"""Shared by the synthesize / write-back / web-demo tests: a tiny two-speaker VITS model on disk.

The model is `helpers.build_tiny_model` (demo `training.scratch_model` sizes, untrained) with
two named speakers and a lower-case character vocabulary, built once per test process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from helpers import DEMO_PROJECT, build_tiny_model

#: The shared model's speakers (Sheila has the most hours) and the text its vocabulary covers.
SPEAKERS = {0: {"name": "Diane", "hours": 0.01}, 1: {"name": "Sheila", "hours": 0.02}}
VOCAB_TEXT = "abcdefghijklmnopqrstuvwxyz'.,?!-"


def copy_demo_project(target: Path) -> Path:
    shutil.copytree(DEMO_PROJECT, target)
    return target


def write_config(tmp: Path, project: Path, model: Path, **sections: dict) -> Path:
    """A language file for a local source, with every output under `tmp`."""
    cfg = {
        "language": {"code": "demo"},
        "source": {"type": "local", "path": str(project)},
        "paths": {
            "model": str(model),
            "checkpoints": str(tmp / "checkpoints"),
            "synthesized": str(tmp / "synthesized"),
            "cache": str(tmp / "cache"),
        },
    }
    for name, values in sections.items():
        cfg.setdefault(name, {}).update(values)
    path = tmp / "demo.yaml"
    path.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return path


_SHARED_MODEL: Path | None = None


def shared_tiny_model(factory) -> Path:
    """One tiny model per test process (read-only for the tests), built on first use."""
    global _SHARED_MODEL
    if _SHARED_MODEL is None or not (_SHARED_MODEL / "config.json").is_file():
        _SHARED_MODEL = build_tiny_model(factory.mktemp("tiny-model"), SPEAKERS, [VOCAB_TEXT])
    return _SHARED_MODEL
