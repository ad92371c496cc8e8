"""Builders and comparisons several test files share: repo paths, directory snapshots, tiny models.

Kept independent of the stage code under test except where the contract itself is the point
(a model directory is written with `modeling`, as the train stage writes it).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from tts_pipeline import fsutil, modeling

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params.yaml"
DEMO_PROJECT = REPO / "examples" / "demo-codex-project"


def tree_bytes(root: Path, pattern: str = "*") -> dict[str, bytes]:
    """Every file under `root` matching `pattern` (relative posix path -> bytes), to prove what changed."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob(pattern)) if p.is_file()
    }


def tree_sha256(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> sha256), for trees too large to hold as bytes."""
    return {str(p.relative_to(root)): fsutil.sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def read_rows(out: Path) -> list[dict[str, str]]:
    """`out/metadata.csv` as plain dicts, read with csv (not the code under test)."""
    with open(out / "metadata.csv", newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def wav_bytes(samples: np.ndarray, sample_rate: int) -> bytes:
    """16-bit PCM WAV file bytes, as the dataset stage embeds them."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, samples, sample_rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def build_tiny_model(
    directory: Path, speakers: dict[int, dict[str, Any]], texts: Iterable[str], seed: int = 0
) -> Path:
    """Write a tiny random VITS model directory (languages/demo.yaml's `training.scratch_model`).

    Character vocabulary from `texts`; decoder weight norm folded so save/reload is exact: the
    real model-directory contract, just untrained (it speaks noise, which is all tests need).
    """
    import torch

    overrides = yaml.safe_load((REPO / "languages" / "demo.yaml").read_text())["training"]["scratch_model"]
    torch.manual_seed(seed)
    vocab = modeling.build_vocab(texts)
    tokenizer = modeling.make_tokenizer(vocab, directory)
    model = modeling.build_scratch_model(overrides, vocab, num_speakers=len(speakers))
    modeling.remove_decoder_weight_norm(model)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    modeling.save_speakers(directory, speakers)
    return directory
