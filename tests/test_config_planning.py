"""The planning document's own config files (examples/planning-document/, verbatim) load and
mean what the document means: its names are aliases of one canonical setting each."""

from __future__ import annotations

from pathlib import Path

import pytest

from tts_pipeline import cli
from tts_pipeline.config import ALIASES, ConfigError, format_config, load_config

REPO = Path(__file__).resolve().parents[1]
SEED = REPO / "examples" / "planning-document"
TEMPLATE = SEED / "tts_config_template.yaml"
LANGUAGE = SEED / "config.yaml"


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_both_seed_files_together_mean_what_the_document_says(capsys) -> None:
    cfg = load_config(LANGUAGE, TEMPLATE)
    assert cfg.code == "hsn" and cfg.language.name == "config"
    assert cfg.training.base_model == "facebook/mms-tts-cmn"
    assert cfg.training.num_epochs == 300  # the language file overrides the template's 250
    assert cfg.dataset.validation_split == 0.1
    assert cfg.speaker_diarization.backend == "pyannote"
    assert cfg.paths.checkpoints == "/home/lansford/vast_ai_tts/checkpoints/config-mms-tts"
    assert cfg.paths.raw_dataset == "/path/to/output/raw"
    assert cfg.paths.preprocessed == "/path/to/output/preprocessed"
    assert cfg.paths.speaker_analysis == "/path/to/output/speaker_analysis"
    assert cfg.paths.hf_dataset == "/path/to/output/hf_dataset"
    assert cfg.source.type is None  # no source: fine for every stage but collect/synthesize

    argv = ["config", "show", "--config", str(LANGUAGE), "--params", str(TEMPLATE)]
    assert cli.main(argv) == 0
    shown = capsys.readouterr().out
    assert f"training.base_model = 'facebook/mms-tts-cmn'  # {LANGUAGE} (as language.base_model)" in shown
    assert f"dataset.validation_split = 0.1  # {TEMPLATE} (as dataset.val_split)" in shown
    assert f"speaker_diarization.backend = 'pyannote'  # {TEMPLATE} (as speaker_diarization.method)" in shown
    assert "training.num_epochs = 300" in shown
    assert f"audio.bit_depth = 16  # {TEMPLATE}" in shown


def test_each_seed_file_with_the_projects_params() -> None:
    cfg = load_config(LANGUAGE, REPO / "params.yaml")
    assert (cfg.training.base_model, cfg.training.num_epochs) == ("facebook/mms-tts-cmn", 300)
    assert cfg.speaker_diarization.backend == "resemblyzer"  # params.yaml's own default

    demo = load_config(REPO / "languages" / "demo.yaml", TEMPLATE)
    assert demo.dataset.validation_split == 0.2  # demo.yaml's canonical name wins over the template
    assert demo.speaker_diarization.backend == "pyannote"
    assert demo.paths.checkpoints == "/path/to/checkpoints"  # training.output_dir of the template
    assert demo.training.base_model is None


@pytest.mark.parametrize(
    ("alias", "canonical", "value", "attr"),
    [
        ("language.base_model", "training.base_model", "facebook/mms-tts-eng", ("training", "base_model")),
        ("dataset.val_split", "dataset.validation_split", 0.25, ("dataset", "validation_split")),
        (
            "speaker_diarization.method",
            "speaker_diarization.backend",
            "speechbrain",
            ("speaker_diarization", "backend"),
        ),
        ("training.output_dir", "paths.checkpoints", "/ckpt/here", ("paths", "checkpoints")),
    ],
)
def test_each_alias_sets_its_canonical_setting(tmp_path, alias, canonical, value, attr) -> None:
    assert ALIASES[alias] == canonical
    section, key = alias.split(".")
    extra = ", train_split: 0.75" if alias == "dataset.val_split" else ""  # splits add up to 1
    body = f"{section}: {{{key}: {value!r}{extra}}}\n"
    cfg = load_config(write(tmp_path / "xx.yaml", body), REPO / "params.yaml")
    assert getattr(getattr(cfg, attr[0]), attr[1]) == value
    assert cfg.origins[canonical] == f"{tmp_path / 'xx.yaml'} (as {alias})"
    assert f"(as {alias})" in format_config(cfg)


def test_alias_and_canonical_name_disagreeing_in_one_file_is_an_error(tmp_path) -> None:
    body = "language: {code: xx, base_model: facebook/mms-tts-eng}\ntraining: {base_model: facebook/mms-tts-cmn}\n"
    with pytest.raises(ConfigError, match=r"language.base_model .* and training.base_model .* keep one"):
        load_config(write(tmp_path / "xx.yaml", body), REPO / "params.yaml")
    same = "language: {code: xx, base_model: facebook/mms-tts-eng}\ntraining: {base_model: facebook/mms-tts-eng}\n"
    assert load_config(write(tmp_path / "yy.yaml", same), REPO / "params.yaml").training.base_model.endswith(
        "eng"
    )


def test_in_different_files_the_language_file_wins(tmp_path) -> None:
    params = write(tmp_path / "p.yaml", "training: {base_model: facebook/mms-tts-cmn}\n")
    cfg = load_config(write(tmp_path / "xx.yaml", "language: {base_model: facebook/mms-tts-eng}\n"), params)
    assert cfg.training.base_model == "facebook/mms-tts-eng"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("audio: {bit_depth: 24}\n", "audio.bit_depth: 24 is not supported; preprocess writes 16-bit"),
        ("audio: {normalize: false}\n", "audio.normalize: False is not supported; .* must be true"),
        ("audio: {channels: 2}\n", "audio.channels: 2 is not supported; .*mono"),
        ("audio: {bit_depth: deep}\n", "audio.bit_depth: expected an integer"),
    ],
)
def test_fixed_audio_settings_other_values_are_clear_errors(tmp_path, body, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path / "xx.yaml", "language: {code: xx}\n" + body), REPO / "params.yaml")


def test_fixed_audio_settings_with_the_pipelines_values_are_accepted(tmp_path) -> None:
    body = "language: {code: xx}\naudio: {bit_depth: 16, normalize: true, channels: 1}\n"
    cfg = load_config(write(tmp_path / "xx.yaml", body), REPO / "params.yaml")
    assert cfg.audio.channels == 1


def test_collect_without_a_source_says_what_to_add(tmp_path, capsys) -> None:
    config = write(tmp_path / "xx.yaml", "language: {code: xx}\n")
    out = tmp_path / "raw"
    assert (
        cli.main(
            [
                "collect",
                "--config",
                str(config),
                "--params",
                str(REPO / "params.yaml"),
                "--output_dir",
                str(out),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "no 'source' section" in err and "source: {type: local, path: <Codex project folder>}" in err
    assert not out.exists()


def test_source_type_may_be_left_out(tmp_path) -> None:
    local = load_config(write(tmp_path / "a.yaml", "source: {path: proj}\n"), REPO / "params.yaml")
    assert local.source.type == "local"
    gitlab = load_config(
        write(tmp_path / "b.yaml", "source: {url: 'https://g', project: a/b}\n"), REPO / "params.yaml"
    )
    assert gitlab.source.type == "gitlab"


@pytest.mark.slow
def test_the_documents_execution_sequence_works_as_written(tmp_path) -> None:
    """Planning document "Execution Sequence", steps 1-4 with its flags; step 5's flag parses."""
    import yaml
    from helpers import DEMO_PROJECT, build_tiny_model, tree_bytes

    out = tmp_path / "output"
    base = build_tiny_model(
        tmp_path / "base-voice", {0: {"name": "base"}}, ["abcdefghijklmnopqrstuvwxyz' ,.?!-"]
    )
    demo = yaml.safe_load((REPO / "languages" / "demo.yaml").read_text())
    config = {  # the document's config.yaml shape, with the demo's data and an offline base model
        "language": {"name": "config", "code": "hsn", "base_model": str(base)},
        "source": {"type": "local", "path": str(DEMO_PROJECT)},
        "paths": {
            "raw_dataset": str(out / "raw"),
            "preprocessed": str(out / "preprocessed"),
            "speaker_analysis": str(out / "speaker_analysis"),
            "hf_dataset": str(out / "hf_dataset"),
            "checkpoints": str(tmp_path / "checkpoints"),
            "metrics": str(tmp_path / "metrics"),
            "cache": str(tmp_path / "cache"),
        },
        "preprocess": demo["preprocess"],
        "speaker_diarization": {**demo["speaker_diarization"], "method": "resemblyzer"},
    }
    path = write(tmp_path / "config.yaml", yaml.safe_dump(config))
    c, p = str(path), str(REPO / "params.yaml")
    steps = [
        ["collect", "--config_path", c],
        [
            "preprocess",
            "--config",
            c,
            "--input_dir",
            f"{out}/raw/audio",
            "--input_metadata",
            f"{out}/raw/metadata.csv",
        ]
        + ["--output_dir", f"{out}/preprocessed"],
        [
            "speakers",
            "--config",
            c,
            "--audio_dir",
            f"{out}/preprocessed/audio",
            "--output_dir",
            f"{out}/speaker_analysis",
        ],
        ["dataset", "--config", c, "--audio_dir", f"{out}/preprocessed/audio"]
        + ["--metadata_csv", f"{out}/preprocessed/metadata.csv"]
        + ["--speaker_ids", f"{out}/speaker_analysis/speaker_ids.json", "--output_dir", f"{out}/hf_dataset"],
    ]
    for argv in steps:
        assert cli.main([*argv, "--params", p]) == 0, argv
    assert len(tree_bytes(out / "preprocessed" / "audio", "*.wav")) == 13  # every raw clip found
    assert (
        len(__import__("json").loads((out / "speaker_analysis" / "speaker_ids.json").read_text())["clips"])
        == 13
    )
    assert (out / "hf_dataset" / "dataset_dict.json").is_file()
    train = cli.build_parser().parse_args(["train", "--config", c, "--dataset_path", f"{out}/hf_dataset"])
    assert train.dataset_path == f"{out}/hf_dataset"
    assert load_config(path, REPO / "params.yaml").paths.checkpoints == str(tmp_path / "checkpoints")
