"""`collect --prepare-training` (the planning document's Phase 2 flags) gives the same outputs as
running the four stages one by one; the chaining lives in cli.py, not in a stage module."""

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
        "hf_dataset": str(root / "dataset"),
        "metrics": str(root / "metrics"),
        "cache": str(tmp_path / "cache"),  # shared: the second run reuses embeddings, as DVC would
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(language))
    return path


def test_collect_prepare_training_equals_separate_stages(tmp_path):
    chained = demo_language(tmp_path, "chained")
    assert cli.main(["collect", "--config", str(chained), "--params", str(PARAMS), "--prepare-training"]) == 0

    separate = demo_language(tmp_path, "separate")
    for stage in ("collect", "preprocess", "speakers", "dataset"):
        assert cli.main([stage, "--config", str(separate), "--params", str(PARAMS)]) == 0

    a, b = tmp_path / "chained", tmp_path / "separate"
    assert tree_bytes(a / "raw") == tree_bytes(b / "raw")
    assert tree_bytes(a / "preprocessed") == tree_bytes(b / "preprocessed")
    assert len(tree_bytes(a / "preprocessed", "*.wav")) == 13
    for name in ("speaker_ids.json", "embeddings.npy", "embeddings_index.json"):
        assert (a / "speakers" / name).read_bytes() == (b / "speakers" / name).read_bytes()
    assert (a / "metrics" / "preprocess.json").is_file() and (a / "metrics" / "speakers.json").is_file()
    assert tree_bytes(a / "dataset") == tree_bytes(b / "dataset")
    assert (a / "dataset" / "dataset_dict.json").is_file()


def test_diarize_stops_before_the_dataset_and_later_stages_need_no_source(tmp_path):
    config = demo_language(tmp_path, "d")
    assert cli.main(["collect", "--config", str(config), "--params", str(PARAMS), "--diarize"]) == 0
    assert (tmp_path / "d" / "speakers" / "speaker_ids.json").is_file()
    assert not (tmp_path / "d" / "dataset").exists()

    no_source = yaml.safe_load(config.read_text())
    del no_source["source"]
    bare = tmp_path / "bare.yaml"
    bare.write_text(yaml.safe_dump(no_source))
    assert cli.main(["dataset", "--config", str(bare), "--params", str(PARAMS)]) == 0
    assert (tmp_path / "d" / "dataset" / "dataset_dict.json").is_file()


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
