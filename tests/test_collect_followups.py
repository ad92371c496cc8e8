"""`collect --preprocess --diarize` gives the same outputs as running the three stages one by one."""

from __future__ import annotations

from pathlib import Path

import yaml
from helpers import DEMO_PROJECT, PARAMS, REPO, tree_bytes

from tts_pipeline import cli


def demo_language(tmp_path: Path, name: str) -> Path:
    """languages/demo.yaml with every output (and the caches) under tmp_path/name."""
    language = yaml.safe_load((REPO / "languages" / "demo.yaml").read_text())
    language["source"] = {"type": "local", "path": str(DEMO_PROJECT)}
    root = tmp_path / name
    language["paths"] = {
        "raw_dataset": str(root / "raw"),
        "preprocessed": str(root / "preprocessed"),
        "speaker_analysis": str(root / "speakers"),
        "metrics": str(root / "metrics"),
        "cache": str(tmp_path / "cache"),  # shared: the second run reuses embeddings, as DVC would
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(language))
    return path


def test_collect_preprocess_diarize_equals_separate_stages(tmp_path):
    chained = demo_language(tmp_path, "chained")
    assert (
        cli.main(["collect", "--config", str(chained), "--params", str(PARAMS), "--preprocess", "--diarize"])
        == 0
    )

    separate = demo_language(tmp_path, "separate")
    for stage in ("collect", "preprocess", "speakers"):
        assert cli.main([stage, "--config", str(separate), "--params", str(PARAMS)]) == 0

    a, b = tmp_path / "chained", tmp_path / "separate"
    assert tree_bytes(a / "raw") == tree_bytes(b / "raw")
    assert tree_bytes(a / "preprocessed") == tree_bytes(b / "preprocessed")
    assert len(tree_bytes(a / "preprocessed", "*.wav")) == 13
    for name in ("speaker_ids.json", "embeddings.npy", "embeddings_index.json"):
        assert (a / "speakers" / name).read_bytes() == (b / "speakers" / name).read_bytes()
    assert (a / "metrics" / "preprocess.json").is_file() and (a / "metrics" / "speakers.json").is_file()


def test_preprocess_reads_a_custom_output_dir(tmp_path):
    config = demo_language(tmp_path, "custom")
    out = tmp_path / "elsewhere"
    assert (
        cli.main(
            [
                "collect",
                "--config",
                str(config),
                "--params",
                str(PARAMS),
                "--output_dir",
                str(out),
                "--preprocess",
            ]
        )
        == 0
    )
    assert (out / "metadata.csv").is_file()
    assert not (tmp_path / "custom" / "raw").exists()
    assert len(tree_bytes(tmp_path / "custom" / "preprocessed", "*.wav")) == 13
