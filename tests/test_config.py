"""Config: params.yaml + language file -> one typed, validated object with origins."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tts_pipeline.config import (
    ConfigError,
    format_config,
    freeze_stage_settings,
    languages_in_params,
    load_config,
)

REPO = Path(__file__).resolve().parents[1]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture()
def params(tmp_path: Path) -> Path:
    return write(tmp_path / "params.yaml", (REPO / "params.yaml").read_text())


def lang(tmp_path: Path, body: str, name: str = "xx") -> Path:
    return write(tmp_path / "languages" / f"{name}.yaml", body)


def test_repo_configs_load() -> None:
    hsn = load_config(REPO / "languages/hsn.yaml", REPO / "params.yaml")
    assert hsn.training.num_epochs == 300
    assert hsn.origins["training.num_epochs"].endswith("hsn.yaml")
    assert hsn.training.base_model == "facebook/mms-tts-cmn"
    assert hsn.source.type == "gitlab"
    assert hsn.paths.hf_dataset == "data/hsn/dataset"
    demo = load_config(REPO / "languages/demo.yaml", REPO / "params.yaml")
    assert demo.training.base_model is None
    assert demo.dataset.seed == 42 and demo.dataset.shuffle


def test_seed_style_exponent_is_a_float(tmp_path: Path, params: Path) -> None:
    # PyYAML reads 1e-4 (no dot) as a string; the typed config must accept it as a number.
    cfg = load_config(
        lang(tmp_path, "source: {type: local, path: p}\ntraining: {learning_rate: 5e-5}\n"), params
    )
    assert cfg.training.learning_rate == pytest.approx(5e-5)
    assert isinstance(cfg.training.learning_rate, float)


def test_show_names_the_origin_of_each_value() -> None:
    text = format_config(load_config(REPO / "languages/hsn.yaml", REPO / "params.yaml"))
    assert "training.num_epochs = 300  # " in text
    line = next(x for x in text.splitlines() if x.startswith("training.num_epochs"))
    assert line.endswith("hsn.yaml")
    lr = next(x for x in text.splitlines() if x.startswith("training.learning_rate"))
    assert lr.endswith("params.yaml")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("source: {type: local, path: p}\ntraining: {learnig_rate: 0.1}\n", "training.learnig_rate"),
        ("source: {type: local, path: p}\ntrainig: {}\n", "did you mean 'training'"),
        ("source: {type: local, path: p}\ntraining: {num_epochs: many}\n", "expected an integer"),
        ("source: {type: local, path: p}\ntraining: {learning_rate: fast}\n", "expected a number"),
        ("source: {type: local, path: p}\ntraining: {learning_rate: 7}\n", "outside the allowed range"),
        ("source: {type: local, path: p}\ntraining: {mixed_precision: fp8}\n", "not one of"),
        ("source: {type: local, path: p}\ndataset: {shuffle: 'yes'}\n", "expected true or false"),
        ("source: {type: local}\n", "source.path is required"),
        ("source: {type: gitlab, url: 'https://x'}\n", "source.project"),
        ("source: {type: local, path: p}\ndataset: {train_split: 0.5}\n", "add up to 1"),
        (
            "source: {type: local, path: p}\nspeaker_diarization: {min_speakers: 5, max_speakers: 2}\n",
            "min_speakers",
        ),
        ("source: [1, 2]\n", "must be a mapping"),
        ("source: {type: local, path: p\n", "not valid YAML"),
    ],
)
def test_bad_language_file_names_file_and_key(tmp_path: Path, params: Path, body: str, fragment: str) -> None:
    path = lang(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_config(path, params)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_missing_language_file(tmp_path: Path, params: Path) -> None:
    with pytest.raises(ConfigError, match="language config file not found: .*nope.yaml"):
        load_config(tmp_path / "languages/nope.yaml", params)


def test_unknown_key_in_params_names_params_file(tmp_path: Path) -> None:
    params = write(tmp_path / "params.yaml", "languages: {}\naudio: {sample_rte: 16000}\n")
    with pytest.raises(
        ConfigError, match=r"params.yaml: audio.sample_rte: unknown setting \(did you mean 'sample_rate'"
    ):
        load_config(lang(tmp_path, "source: {type: local, path: p}\n"), params)


def test_language_code_defaults_to_file_name_and_paths_follow(tmp_path: Path, params: Path) -> None:
    cfg = load_config(
        lang(tmp_path, "source: {type: local, path: p}\npaths: {checkpoints: /ckpt}\n", "abc"), params
    )
    assert cfg.code == "abc"
    assert cfg.paths.raw_dataset == "data/abc/raw"
    assert cfg.paths.checkpoints == "/ckpt"


def test_token_only_from_environment(tmp_path: Path, params: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    body = "source: {type: gitlab, url: 'https://g', project: a/b, token_env: MY_TOKEN}\n"
    cfg = load_config(lang(tmp_path, body), params)
    monkeypatch.delenv("MY_TOKEN", raising=False)
    assert cfg.source.token() is None
    monkeypatch.setenv("MY_TOKEN", "s3cret")
    assert cfg.source.token() == "s3cret"
    assert "s3cret" not in format_config(cfg)
    assert "s3cret" not in json.dumps(cfg.to_dict())


def test_freeze_writes_only_what_each_stage_uses(tmp_path: Path, params: Path) -> None:
    cfg = load_config(lang(tmp_path, "source: {type: local, path: p}\ntraining: {num_epochs: 7}\n"), params)
    freeze_stage_settings(cfg, tmp_path / "build")
    collect = json.loads((tmp_path / "build/collect.json").read_text())
    train = json.loads((tmp_path / "build/train.json").read_text())
    assert "training" not in collect
    assert train["training"]["num_epochs"] == 7
    before = (tmp_path / "build/collect.json").read_bytes()
    cfg.training.num_epochs = 8
    freeze_stage_settings(cfg, tmp_path / "build")
    assert (tmp_path / "build/collect.json").read_bytes() == before


def test_languages_in_params() -> None:
    assert "demo" in languages_in_params(REPO / "params.yaml")


def test_cli_config_errors_fast_and_clear(tmp_path: Path, params: Path) -> None:
    path = lang(tmp_path, "source: {type: local, path: p}\ntraining: {learnig_rate: 0.1}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tts_pipeline", "preprocess", "--config", str(path), "--params", str(params)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "training.learnig_rate" in result.stderr and str(path) in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "tts_pipeline", "train", "--config", str(tmp_path / "missing.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "missing.yaml" in result.stderr


def test_cli_help_does_not_import_heavy_libraries() -> None:
    code = (
        "import sys; from tts_pipeline.cli import build_parser; build_parser();"
        "heavy = [m for m in ('torch', 'transformers', 'datasets', 'mlflow', 'av', 'sklearn') if m in sys.modules];"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


@pytest.mark.parametrize(
    ("argv", "code"),
    [(["--help"], 0), (["dataset", "--help"], 0), (["train", "--config", "missing.yaml"], 2)],
)
def test_help_and_config_errors_import_no_stage_module(argv: list[str], code: int) -> None:
    """`--help` and configuration errors answer before any stage module, numpy or HTTP library
    is imported (issue 18: well under 0.3 s); a stage's own --help imports only that stage."""
    script = (
        "import sys; from tts_pipeline import cli\n"
        "try:\n    rc = cli.main(sys.argv[1:])\nexcept SystemExit as exc:\n    rc = exc.code\n"
        "stages = {f'tts_pipeline.{m}' for m, _ in cli.STAGES.values()} | {'tts_pipeline.newlanguage'}\n"
        "heavy = {'numpy', 'requests', 'urllib3', 'httpx', 'torch', 'datasets', 'yaml'}\n"
        "print(rc, sorted(m for m in sys.modules if m in stages | heavy))\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    rc, loaded = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert int(rc) == code
    if argv == ["dataset", "--help"]:  # the stage's own options: that stage only, no HTTP library
        assert (
            "tts_pipeline.dataset" in loaded
            and "requests" not in loaded
            and "tts_pipeline.train" not in loaded
        )
    else:  # reading the configuration needs the YAML parser, nothing else
        assert loaded == ("['yaml']" if code == 2 else "[]")


def test_unquoted_no_is_the_word_not_false(tmp_path: Path, params: Path) -> None:
    # YAML 1.1 reads `no` as false, and `dvc exp run -S` rewrites drop the quotes around "no".
    cfg = load_config(
        lang(tmp_path, "source: {type: local, path: p}\ntraining: {mixed_precision: no}\n"), params
    )
    assert cfg.training.mixed_precision == "no"
    with pytest.raises(ConfigError, match="not one of"):
        load_config(
            lang(tmp_path, "source: {type: local, path: p}\ntraining: {mixed_precision: yes}\n"), params
        )


def test_cli_reports_a_full_disk_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import errno

    from tts_pipeline import cli

    class FullDisk:
        @staticmethod
        def run(cfg, args):
            raise OSError(errno.ENOSPC, "No space left on device", "data/demo/raw/audio/x.webm")

    monkeypatch.setattr(cli, "_import_stage", lambda name, soft=False: FullDisk)
    code = cli.main(
        ["collect", "--config", str(REPO / "languages/demo.yaml"), "--params", str(REPO / "params.yaml")]
    )
    assert code == 1
    err = capsys.readouterr().err
    assert "disk full writing data/demo/raw/audio/x.webm" in err


def test_credentials_in_the_source_url_are_refused(tmp_path: Path, params: Path) -> None:
    # The language file is a DVC param (it lands in dvc.lock): a token there would be committed.
    body = "source: {type: gitlab, url: 'https://oauth2:glpat-XYZ@gitlab.example.org', project: a/b}\n"
    with pytest.raises(ConfigError, match="must not contain a user name or token") as info:
        load_config(lang(tmp_path, body), params)
    assert "glpat-XYZ" not in str(info.value)


@pytest.mark.parametrize("param", ["private_token", "access_token", "job_token"])
def test_a_token_in_the_url_query_is_refused_without_echoing_it(
    tmp_path: Path, params: Path, param: str, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "glpat-S3cretValue123456"
    body = f"source: {{type: gitlab, url: 'https://gitlab.example.org/?{param}={secret}', project: a/b}}\n"
    config = lang(tmp_path, body)
    with pytest.raises(ConfigError, match=f"must not carry a token.*'{param}'") as info:
        load_config(config, params)
    assert secret not in str(info.value)
    from tts_pipeline import cli

    out_dir = tmp_path / "frozen"
    code = cli.main(
        ["config", "freeze", "--config", str(config), "--params", str(params), "--output_dir", str(out_dir)]
    )
    captured = capsys.readouterr()
    assert code == 2 and secret not in captured.err + captured.out
    assert not out_dir.exists()  # nothing frozen, so nothing reaches git or dvc.lock


@pytest.mark.parametrize("pasted", ["glpat-AbCdEf0123456789xyzw", "AbCdEf0123456789xyzwQ"])
def test_a_token_pasted_into_token_env_is_refused_without_echoing_it(
    tmp_path: Path, params: Path, pasted: str
) -> None:
    body = (
        f"source: {{type: gitlab, url: 'https://gitlab.example.org', project: a/b, token_env: '{pasted}'}}\n"
    )
    with pytest.raises(ConfigError, match="token_env must be the NAME") as info:
        load_config(lang(tmp_path, body), params)
    assert pasted not in str(info.value)


def test_ordinary_token_env_names_are_accepted(tmp_path: Path, params: Path) -> None:
    for name in ("GITLAB_TOKEN", "CI_JOB_TOKEN", "my_token", "HSN_GITLAB_TOKEN2"):
        body = f"source: {{type: gitlab, url: 'https://gitlab.example.org/?page=1', project: a/b, token_env: {name}}}\n"
        assert load_config(lang(tmp_path, body), params).source.token_env == name


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "'nan'", "1e400"])
def test_non_finite_numbers_are_config_errors_naming_the_key(
    tmp_path: Path, params: Path, value: str
) -> None:
    body = f"source: {{type: local, path: p}}\ntraining:\n  learning_rate: {value}\n"
    with pytest.raises(ConfigError, match=r"xx\.yaml: training\.learning_rate: .*not a finite number"):
        load_config(lang(tmp_path, body), params)


def test_a_key_written_twice_names_the_key_and_both_lines(tmp_path: Path, params: Path) -> None:
    body = (
        "source: {type: local, path: p}\ntraining:\n  learning_rate: 1e-4\n  seed: 1\n  learning_rate: 1e-3\n"
    )
    with pytest.raises(ConfigError, match=r"xx\.yaml: key 'learning_rate' is written twice .*lines 3 and 5"):
        load_config(lang(tmp_path, body), params)
    top = "source: {type: local, path: p}\ntraining: {seed: 1}\ntraining: {seed: 2}\n"
    with pytest.raises(ConfigError, match=r"key 'training' is written twice .*lines 2 and 3"):
        load_config(lang(tmp_path, top), params)


def test_non_finite_numbers_inside_mappings_and_lists_are_refused(tmp_path: Path, params: Path) -> None:
    body = "source: {type: local, path: p}\ntraining:\n  scratch_model: {hidden_size: 32, dropout: .nan}\n"
    with pytest.raises(ConfigError, match=r"training\.scratch_model\.dropout: nan is not a finite number"):
        load_config(lang(tmp_path, body), params)


@pytest.mark.parametrize("periods", ["[]", "[2, 0]", "[3, -1]", "[2, x]"])
def test_discriminator_periods_are_checked_when_the_config_loads(
    tmp_path: Path, params: Path, periods: str
) -> None:
    """A cross-field rule lives in config.py: it answers before hours of data loading, naming the file."""
    path = lang(tmp_path, f"source: {{type: local, path: p}}\ntraining: {{discriminator_periods: {periods}}}\n")
    with pytest.raises(ConfigError, match="discriminator_periods must be a list of positive integers") as info:
        load_config(path, params)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("channels", ["[]", "[1]", "[8, 16]", "[1, 0]", "[1, x]"])
def test_discriminator_channels_are_checked_when_the_config_loads(tmp_path: Path, params: Path, channels: str) -> None:
    path = lang(tmp_path, f"source: {{type: local, path: p}}\ntraining: {{discriminator_scale_channels: {channels}}}\n")
    with pytest.raises(ConfigError, match="discriminator_scale_channels must be null or a list") as info:
        load_config(path, params)
    assert str(path) in str(info.value)
    ok = lang(tmp_path, "source: {type: local, path: p}\ntraining: {discriminator_period_channels: [1, 8, 16]}\n")
    assert load_config(ok, params).training.discriminator_period_channels == [1, 8, 16]


def test_a_flag_wins_over_the_configured_path(tmp_path: Path, params: Path) -> None:
    import argparse

    cfg = load_config(lang(tmp_path, "source: {type: local, path: p}\n"), params)
    given = argparse.Namespace(output_dir="elsewhere", metrics_file=None)
    assert cfg.flag_or_path(given, "output_dir", "model") == Path("elsewhere")
    assert cfg.flag_or_path(given, "metrics_file", "metrics", under="train.json") == cfg.path("metrics") / "train.json"
    assert cfg.flag_or_path(argparse.Namespace(), "dataset_path", "hf_dataset") == cfg.path("hf_dataset")
