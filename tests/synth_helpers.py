"""Shared by the synthesize / write-back / web-demo tests: a tiny two-speaker VITS model on disk.

Built from the demo language's `training.scratch_model` sizes with a character vocabulary,
decoder weight norm folded so save/reload is exact: the real model-directory contract, just
untrained (it speaks noise, which is all these tests need).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tts_pipeline import modeling

REPO = Path(__file__).resolve().parents[1]
DEMO_PROJECT = REPO / "examples" / "demo-codex-project"
SPEAKERS = {0: {"name": "Diane", "hours": 0.01}, 1: {"name": "Sheila", "hours": 0.02}}


def build_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Write a tiny random two-speaker model (Sheila has the most hours) to `directory`."""
    import torch

    overrides = yaml.safe_load((REPO / "languages" / "demo.yaml").read_text())["training"]["scratch_model"]
    torch.manual_seed(seed)
    vocab = modeling.build_vocab(["abcdefghijklmnopqrstuvwxyz'.,?!-"])
    tokenizer = modeling.make_tokenizer(vocab, directory)
    model = modeling.build_scratch_model(overrides, vocab, num_speakers=len(SPEAKERS))
    modeling.remove_decoder_weight_norm(model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    modeling.save_speakers(directory, SPEAKERS)
    return directory


def copy_demo_project(target: Path) -> Path:
    shutil.copytree(DEMO_PROJECT, target)
    return target


def tree_bytes(root: Path) -> dict[str, bytes]:
    """Every file under `root` (relative posix path -> bytes), to prove what changed and what did not."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


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
        _SHARED_MODEL = build_tiny_model(factory.mktemp("tiny-model"))
    return _SHARED_MODEL
