"""Typed, validated configuration: params.yaml (generic defaults) + languages/<code>.yaml.

Why a hand-written validator: every stage must fail *before any work* with a message that
names the file and the key, and PyYAML reads `1e-4` as a string, so numbers need coercion.
Each setting also remembers which file it came from, for `tts-pipeline config show`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

DEFAULT_PARAMS = Path("params.yaml")


class ConfigError(ValueError):
    """A configuration problem, with the file and key it concerns in the message."""


def _range(minimum: float | None = None, maximum: float | None = None, **kw: Any) -> Any:
    return field(metadata={"min": minimum, "max": maximum}, **kw)


# --------------------------------------------------------------------------- sections


@dataclass
class LanguageSection:
    code: str = ""
    name: str | None = None


@dataclass
class SourceSection:
    """Where the Codex project comes from. The GitLab token is read from `token_env` only."""

    #: null = no source: only collect and synthesize need one (`Config.require_source`)
    type: Literal["local", "gitlab"] | None = None
    path: str | None = None
    url: str | None = None
    project: str | None = None  # numeric id or "group/name"
    ref: str | None = None  # branch, tag or commit; null = the project's default branch
    token_env: str = "GITLAB_TOKEN"

    def token(self) -> str | None:
        """The GitLab token from the environment (never stored in the config)."""
        return os.environ.get(self.token_env) or None


@dataclass
class PathsSection:
    """Per-language directories; empty strings are filled with data/<code>/... defaults."""

    raw_dataset: str = ""
    preprocessed: str = ""
    speaker_analysis: str = ""
    hf_dataset: str = ""
    checkpoints: str = ""
    model: str = ""
    reports: str = ""
    synthesized: str = ""
    metrics: str = ""
    cache: str = ".cache/tts-pipeline"


@dataclass
class CollectSection:
    text_source: Literal["cell", "transcription"] = "cell"
    require_validated_audio: bool = False  # export only takes a reviewer approved (validatedBy)
    download_workers: int = _range(1, 256, default=8)
    max_retries: int = _range(0, 100, default=5)
    timeout_s: float = _range(0.1, 3600, default=60.0)
    retry_backoff_s: float = _range(0, 600, default=1.0)


@dataclass
class AudioSection:
    sample_rate: int = _range(8000, 48000, default=16000)
    channels: int = _range(1, 1, default=1)  # fixed (FIXED_SETTINGS): mono is what MMS-TTS trains on
    target_db: float = _range(-70, 0, default=-20.0)
    peak_ceiling_db: float = _range(-30, 0, default=-1.0)
    trim_silence: bool = True
    trim_threshold_db: float = _range(-100, 0, default=-40.0)
    trim_margin_s: float = _range(0, 5, default=0.1)


@dataclass
class PreprocessSection:
    workers: int | None = _range(1, 1024, default=None)
    min_duration_s: float = _range(0, None, default=0.3)
    max_duration_s: float = _range(0, None, default=20.0)
    max_clipping_ratio: float = _range(0, 1, default=0.001)
    min_snr_db: float | None = _range(-100, 100, default=5.0)
    min_chars_per_second: float | None = _range(0, None, default=2.0)
    max_chars_per_second: float | None = _range(0, None, default=30.0)
    min_loudness_db: float = _range(-120, 0, default=-60.0)  # quieter input (LUFS) = silent
    speech_rate_outlier_sigmas: float | None = _range(0.5, 100, default=4.0)  # corpus-relative chars/s bound


@dataclass
class SpeakerSection:
    backend: Literal["resemblyzer", "pyannote", "speechbrain"] = "resemblyzer"
    model: str | None = None
    clustering_method: Literal["auto", "hdbscan", "kmeans"] = "auto"
    duplicate_cosine: float | None = _range(0.5, 1, default=0.99)  # near-duplicate takes; null = off
    min_speakers: int | None = _range(1, 1000, default=None)
    max_speakers: int | None = _range(1, 1000, default=None)
    min_cluster_size: int = _range(2, 100000, default=3)
    review_clips_per_speaker: int = _range(1, 100, default=5)


@dataclass
class DatasetSection:
    train_split: float = _range(0, 1, default=0.9)
    validation_split: float = _range(0, 1, default=0.1)
    test_split: float = _range(0, 1, default=0.0)
    shuffle: bool = True
    seed: int = 42
    unicode_normalization: Literal["NFC", "NFKC", "NFD", "NFKD", "none"] = "NFC"
    lowercase: bool = True
    punctuation_map: dict[str, str] = field(default_factory=dict)
    oov_policy: Literal["drop_char", "map", "uroman", "drop_clip"] = "drop_char"
    oov_map: dict[str, str] = field(default_factory=dict)
    #: a clip of metadata.csv missing from speaker_ids.json: stop with an error, or drop it
    unlabelled_clips: Literal["error", "drop"] = "error"
    #: largest Arrow shard save_to_disk writes ("500MB"): a few big files move fast with DVC
    max_shard_size: str = "500MB"


@dataclass
class TrainingSection:
    base_model: str | None = "facebook/mms-tts-cmn"
    scratch_model: dict[str, Any] = field(default_factory=dict)
    discriminator_checkpoint: str | None = None
    num_epochs: int = _range(1, None, default=250)
    max_steps: int | None = _range(1, None, default=None)
    learning_rate: float = _range(0, 1, default=1e-4)
    adam_beta1: float = _range(0, 1, default=0.8)
    adam_beta2: float = _range(0, 1, default=0.99)
    #: AdamW epsilon of both optimisers (A1/transformers: 1e-8; VITS: 1e-9)
    adam_epsilon: float = _range(0, 1, default=1e-8)
    weight_decay: float = _range(0, 1, default=0.01)
    lr_decay: float = _range(0, 1, default=0.999875)
    batch_size: int | None = _range(1, 4096, default=None)
    gradient_accumulation_steps: int = _range(1, 4096, default=4)
    max_grad_norm: float = _range(0, None, default=1.0)
    #: gradient clipping of the discriminator (null = max_grad_norm)
    max_grad_norm_discriminator: float | None = _range(0, None, default=None)
    mixed_precision: Literal["no", "fp16", "bf16"] = "fp16"
    #: recompute the generator's activations in the backward pass: less memory (cards under 12 GB), slower steps
    gradient_checkpointing: bool = False
    save_steps: int = _range(1, None, default=25)
    save_total_limit: int = _range(1, None, default=3)
    logging_steps: int = _range(1, None, default=10)
    eval_steps: int = _range(1, None, default=100)
    warmup_steps: int = _range(0, None, default=500)
    segment_size: int = _range(256, None, default=8192)
    max_audio_s: float = _range(0.1, None, default=15.0)
    #: loss weights of mel L1 and KL: VITS's own (45 / 1.0, its published configs;
    #: finetune-hf-vits: 35 / 1.5; README "Voice quality")
    weight_mel: float = _range(0, None, default=45.0)
    weight_kl: float = _range(0, None, default=1.0)
    weight_duration: float = _range(0, None, default=1.0)
    weight_generator: float = _range(0, None, default=1.0)
    weight_feature_matching: float = _range(0, None, default=1.0)
    weight_discriminator: float = _range(0, None, default=3.0)
    #: weight of the generator's adversarial + feature-matching losses in the discriminator's
    #: own objective (a pull towards balance; A1 does it by accident of its loop: vits/trainer.py)
    discriminator_generator_loss_weight: float = _range(0, None, default=0.0)
    #: the discriminator's learning rate = learning_rate x this (0.5: README "Voice quality")
    discriminator_lr_scale: float = _range(0.001, 100, default=0.5)
    #: optimiser steps over which the adversarial + feature-matching weights ramp 0 -> 1
    adversarial_warmup_steps: int = _range(0, None, default=0)
    #: the saved voice is a running average of the generator's weights over this share of the
    #: steps so far (power EMA, vits/averaging.py); null = the last step's weights
    ema_length: float | None = _range(0.001, 0.28, default=0.05)
    #: dropout of the text encoder (hidden, attention, activation) and of the duration predictor
    #: while training; null = as the model's config says (MMS: 0.1 and 0.5)
    dropout: float | None = _range(0, 0.9, default=0.0)
    seed: int = 42
    num_workers: int = _range(0, 64, default=2)
    max_nonfinite_steps: int = _range(1, None, default=20)
    # model / discriminator shape (see params.yaml for what each one means)
    speaker_embedding_size: int | None = _range(1, 4096, default=None)
    discriminator_periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    discriminator_scales: int = _range(1, 3, default=1)
    discriminator_width: float = _range(0.001, 4, default=1.0)
    discriminator_period_channels: list[int] | None = None
    discriminator_scale_channels: list[int] | None = None
    # mel spectrogram of the mel L1 loss
    mel_bins: int = _range(8, 512, default=80)
    mel_fmin: float = _range(0, None, default=0.0)
    mel_fmax: float | None = _range(1, None, default=None)
    # evaluation during training
    eval_max_clips: int = _range(1, None, default=64)
    eval_samples: int = _range(0, 100, default=3)
    mlflow: bool = True
    cpu_threads: int | None = _range(1, 1024, default=None)
    #: processes (GPUs) one training runs on, through `accelerate launch` (null = every visible GPU, 1 on CPU)
    num_processes: int | None = _range(1, 1024, default=None)


@dataclass
class EvaluationSection:
    max_samples: int = _range(1, None, default=50)
    compare_base_model: bool = True
    silence_threshold_db: float = _range(-150, 0, default=-50.0)
    max_clipping_ratio: float = _range(0, 1, default=0.001)


@dataclass
class SynthesisSection:
    speaker: str | None = None
    checkpoint: str = "final"
    max_chars: int = _range(10, None, default=200)
    pause_s: float = _range(0, 10, default=0.3)
    format: Literal["webm", "wav"] = "webm"
    seed: int = _range(0, None, default=0)
    speaking_rate: float = _range(0.1, 10, default=1.0)
    require_approval: bool | None = None  # null = true for GitLab sources (write-back opens a public MR)


SECTIONS: dict[str, type] = {
    "language": LanguageSection,
    "source": SourceSection,
    "paths": PathsSection,
    "collect": CollectSection,
    "audio": AudioSection,
    "preprocess": PreprocessSection,
    "speaker_diarization": SpeakerSection,
    "dataset": DatasetSection,
    "training": TrainingSection,
    "evaluation": EvaluationSection,
    "synthesis": SynthesisSection,
}
#: Sections only a language file may set (they make no sense as generic defaults).
LANGUAGE_ONLY = {"language", "source", "paths"}
#: Top-level keys of params.yaml that are not stage settings.
PARAMS_EXTRA_KEYS = {"languages"}

#: Names from the planning document's config files (tts_config_template.yaml / config.yaml),
#: accepted as aliases of the one canonical setting they mean (README "Configuration reference").
ALIASES: dict[str, str] = {
    "language.base_model": "training.base_model",
    "dataset.val_split": "dataset.validation_split",
    "speaker_diarization.method": "speaker_diarization.backend",
    "training.output_dir": "paths.checkpoints",
}
#: Planning-document settings that the pipeline does not vary: accepted with the value the
#: pipeline implements (any other is an error, never silently ignored), with the reason why.
FIXED_SETTINGS: dict[str, tuple[Any, str]] = {
    "audio.channels": (1, "preprocess writes mono WAV, the input MMS-TTS is trained on"),
    "audio.bit_depth": (16, "preprocess writes 16-bit PCM WAV"),
    "audio.normalize": (True, "preprocess always loudness-normalises to audio.target_db"),
}


@dataclass
class Config:
    """The effective configuration of one language."""

    language: LanguageSection
    source: SourceSection
    paths: PathsSection
    collect: CollectSection
    audio: AudioSection
    preprocess: PreprocessSection
    speaker_diarization: SpeakerSection
    dataset: DatasetSection
    training: TrainingSection
    evaluation: EvaluationSection
    synthesis: SynthesisSection
    config_path: Path = Path()
    params_path: Path = Path()
    #: "section.key" -> file (or "default") that set it.
    origins: dict[str, str] = field(default_factory=dict)

    @property
    def code(self) -> str:
        return self.language.code

    def path(self, name: str) -> Path:
        """A per-language path from the `paths` section."""
        return Path(getattr(self.paths, name))

    def flag_or_path(self, args: Any, flag: str, name: str, *, under: str | None = None) -> Path:
        """The command-line flag `--<flag>` when given, else `paths.<name>` (joined with `under`).

        The one rule every stage's `run()` follows for where to read and write.
        """
        value = getattr(args, flag, None)
        if value:
            return Path(value)
        return self.path(name) / under if under else self.path(name)

    @property
    def corrections_path(self) -> Path:
        """`languages/<code>.speakers.yaml`, beside the language config (optional file)."""
        return Path(self.config_path).with_name(f"{self.code}.speakers.yaml")

    def require_source(self, stage: str) -> SourceSection:
        """The source section, for the stages that read the Codex project; an error if unset."""
        if self.source.type is None:
            raise ConfigError(
                f"{self.config_path}: no 'source' section, and {stage} reads the recordings from it; "
                "add 'source: {type: local, path: <Codex project folder>}' or "
                "'source: {type: gitlab, url: https://gitlab.com, project: <group/name>}'"
            )
        return self.source

    def flat_items(self) -> list[tuple[str, Any, str]]:
        """(dotted key, value, origin) for every setting, for display and MLflow."""
        rows = []
        for section in SECTIONS:
            for f in dataclasses.fields(getattr(self, section)):
                key = f"{section}.{f.name}"
                value = getattr(getattr(self, section), f.name)
                rows.append((key, value, self.origins.get(key, "default")))
        return rows

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain dict of every section (secrets are never part of the config)."""
        return {s: dataclasses.asdict(getattr(self, s)) for s in SECTIONS}


# --------------------------------------------------------------------------- loading


class _UniqueKeyLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """SafeLoader that refuses a key written twice in one mapping (YAML would keep the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            try:
                first = seen.setdefault(key, line)
            except TypeError:
                continue  # unhashable key: the base class reports it
            if first != line:
                raise ConfigError(
                    f"{key_node.start_mark.name}: key {key!r} is written twice in one mapping "
                    f"(lines {first} and {line}); keep one"
                )
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.load(handle, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def _suggest(name: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _check_finite(value: Any, where: str) -> None:
    """NaN/inf anywhere inside a mapping or list setting (scratch_model, ...) is an error naming it."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        if isinstance(item, float) and not math.isfinite(item):
            raise ConfigError(f"{where}.{key}: {item!r} is not a finite number; write an ordinary number")
        _check_finite(item, f"{where}.{key}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check `value` against type hint `tp`, converting the few safe cases (1e-4 strings)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {value!r}")
    if origin is Literal:
        return _coerce_word(value, typing.get_args(tp), where)
    if tp in (bool, int, float, str):
        return _coerce_scalar(value, tp, where)
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        _check_finite(value, where)
        return dict(value)
    if origin is list or tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        _check_finite(value, where)
        return list(value)
    if tp is Any:
        return value
    raise ConfigError(f"{where}: unsupported setting type {tp}")  # pragma: no cover


def _coerce_word(value: Any, allowed: tuple[Any, ...], where: str) -> Any:
    """A `Literal[...]` setting: one of the allowed words."""
    if isinstance(value, bool):
        # YAML 1.1 reads an unquoted `no`/`off` as false (and DVC's `-S` rewrites drop quotes):
        # take it as the word when the setting allows that word.
        words = ("yes", "on", "true") if value else ("no", "off", "false")
        value = next((w for w in words if w in allowed), value)
    if value not in allowed:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def _coerce_scalar(value: Any, tp: type, where: str) -> Any:
    """A bool, int, float or str setting (an integral float is an int; a numeric string a float)."""
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        number: float | None = None
        if isinstance(value, (int, float)):
            number = float(value)
        elif isinstance(value, str):
            with contextlib.suppress(ValueError):
                number = float(value)
        if number is None:
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"{where}: {value!r} is not a finite number; write an ordinary number")
        return number
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported setting type {tp}")  # pragma: no cover


def _resolve_aliases(
    path: Path, data: dict[str, Any], origins: dict[str, str], aliased: dict[str, str]
) -> dict[str, Any]:
    """One file's sections with planning-document names moved to their canonical settings.

    A file giving one setting under two names (e.g. `language.base_model` and
    `training.base_model`) with different values is an error: which one it meant is unknowable.
    Fixed settings (FIXED_SETTINGS) are checked here and dropped unless they are real fields.
    `aliased` receives canonical -> alias for this file (shown by `config show`).
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for alias, canonical in ALIASES.items():
        a_sec, a_key = alias.split(".")
        c_sec, c_key = canonical.split(".")
        section = out.get(a_sec)
        if not isinstance(section, dict) or a_key not in section:
            continue
        value = section.pop(a_key)
        target = out.get(c_sec)
        if target is None:
            target = out[c_sec] = {}
        if not isinstance(target, dict):
            continue  # _build_section reports the section that is not a mapping
        if c_key in target:
            other = target[c_key]
            if other != value:
                raise ConfigError(
                    f"{path}: {alias} ({value!r}) and {canonical} ({other!r}) set the same thing "
                    f"differently; keep one of them"
                )
            continue
        target[c_key] = value
        aliased[canonical] = alias
    for dotted, (expected, why) in FIXED_SETTINGS.items():
        sec, key = dotted.split(".")
        section = out.get(sec)
        if not isinstance(section, dict) or key not in section:
            continue
        where = f"{path}: {dotted}"
        value = _coerce(section[key], type(expected), where)
        if value != expected:
            raise ConfigError(
                f"{where}: {value!r} is not supported; {why}, so it must be {_yaml_word(expected)} "
                "(or leave the key out)"
            )
        origins[dotted] = str(path)
        if key not in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
            del section[key]
    return out


def _yaml_word(value: Any) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


Layer = tuple[Path, dict[str, Any], dict[str, str]]  # file, its sections, canonical -> alias used


def _build_section(name: str, layers: list[Layer], origins: dict[str, str]) -> Any:
    cls = SECTIONS[name]
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for path, data, aliased in layers:
        section = data.get(name)
        if section is None:
            continue
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: section '{name}' must be a mapping, got {section!r}")
        for key, raw in section.items():
            where = f"{path}: {name}.{key}"
            if key not in fields:
                extra = [a.split(".")[1] for a in (*ALIASES, *FIXED_SETTINGS) if a.startswith(f"{name}.")]
                raise ConfigError(
                    f"{where}: unknown setting{_suggest(str(key), [*fields, *extra])}; "
                    f"known: {', '.join(sorted({*fields, *extra}))}"
                )
            value = _coerce(raw, hints[key], where)
            meta = fields[key].metadata
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                lo, hi = meta.get("min"), meta.get("max")
                if (lo is not None and value < lo) or (hi is not None and value > hi):
                    bounds = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]"
                    raise ConfigError(f"{where}: {value} is outside the allowed range {bounds}")
            values[key] = value
            dotted = f"{name}.{key}"
            origins[dotted] = f"{path} (as {aliased[dotted]})" if dotted in aliased else str(path)
    return cls(**values)


def _default_paths(paths: PathsSection, code: str) -> None:
    defaults = {
        "raw_dataset": f"data/{code}/raw",
        "preprocessed": f"data/{code}/preprocessed",
        "speaker_analysis": f"data/{code}/speakers",
        "hf_dataset": f"data/{code}/dataset",
        "checkpoints": f"models/{code}/checkpoints",
        "model": f"models/{code}/model",
        "reports": f"reports/{code}",
        "synthesized": f"data/{code}/synthesized",
        "metrics": f"metrics/{code}",
    }
    for key, value in defaults.items():
        if not getattr(paths, key):
            setattr(paths, key, value)


#: URL query parameters GitLab (and most HTTP APIs) read a credential from.
_SECRET_QUERY_KEYS = {"private_token", "access_token", "job_token", "token", "oauth_token", "api_key", "apikey"}
#: What an environment variable name looks like (POSIX portable names).
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def _looks_like_secret(value: str) -> bool:
    """True for a value shaped like a pasted token rather than a variable name like GITLAB_TOKEN."""
    if not _ENV_NAME.fullmatch(value):
        return True
    mixed = any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
    return len(value) >= 16 and mixed and "_" not in value


def _check_secrets(cfg: Config) -> None:
    """Refuse a credential in the config: it would land in params/<code>/*.json, dvc.lock and git.

    The messages name the key but never echo its value.
    """
    import urllib.parse

    src = cfg.source
    origin = cfg.origins.get("source.url", str(cfg.config_path))
    if src.url:
        parts = urllib.parse.urlsplit(src.url)
        keys = {k.lower() for k, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
        fragment_keys = {k.lower() for k, _ in urllib.parse.parse_qsl(parts.fragment, keep_blank_values=True)}
        found = sorted((keys | fragment_keys) & _SECRET_QUERY_KEYS)
        if found:
            raise ConfigError(
                f"{origin}: source.url must not carry a token (it has a '{found[0]}' parameter); "
                f"remove it from the URL and put the token in the environment variable named by "
                f"source.token_env ({src.token_env if not _looks_like_secret(src.token_env) else 'GITLAB_TOKEN'})"
            )
    if _looks_like_secret(src.token_env):
        raise ConfigError(
            f"{cfg.origins.get('source.token_env', str(cfg.config_path))}: source.token_env must be the NAME "
            "of an environment variable (e.g. GITLAB_TOKEN), not the token itself; the value given is "
            "not shown. Remove it from the file, revoke the token if the file was shared, and "
            "`export GITLAB_TOKEN=...` instead"
        )


def _check(cfg: Config) -> None:
    """Cross-field rules that a single type hint cannot express."""
    where = cfg.config_path
    if not cfg.language.code:
        raise ConfigError(f"{where}: language.code is required (e.g. 'hsn')")
    if not cfg.language.code.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"{where}: language.code {cfg.language.code!r} must be alphanumeric")
    src = cfg.source
    if src.type is None and (src.path or src.url or src.project):
        src.type = "gitlab" if (src.url or src.project) else "local"  # `type` may be left out
    if src.type == "local" and not src.path:
        raise ConfigError(f"{where}: source.path is required when source.type is 'local'")
    if src.type == "gitlab" and not (src.url and src.project):
        raise ConfigError(f"{where}: source.url and source.project are required for gitlab")
    if src.url and re.match(r"^[a-z][a-z0-9+.-]*://[^/@\s]+@", src.url, re.IGNORECASE):
        # The language file is a DVC param: a credential here would land in dvc.lock and git.
        raise ConfigError(
            f"{where}: source.url must not contain a user name or token; put the token in the "
            f"environment variable named by source.token_env ({src.token_env})"
        )
    _check_secrets(cfg)
    sd = cfg.speaker_diarization
    if sd.min_speakers and sd.max_speakers and sd.min_speakers > sd.max_speakers:
        raise ConfigError(
            f"{cfg.origins.get('speaker_diarization.max_speakers', where)}: "
            f"speaker_diarization.min_speakers ({sd.min_speakers}) > max_speakers ({sd.max_speakers})"
        )
    ds = cfg.dataset
    total = ds.train_split + ds.validation_split + ds.test_split
    if abs(total - 1.0) > 1e-6:
        raise ConfigError(
            f"{cfg.origins.get('dataset.train_split', where)}: dataset splits must add up to 1 "
            f"(train {ds.train_split} + validation {ds.validation_split} + test {ds.test_split} = {total:g})"
        )
    pp = cfg.preprocess
    if pp.min_duration_s > pp.max_duration_s:
        raise ConfigError(f"{where}: preprocess.min_duration_s > preprocess.max_duration_s")
    periods = cfg.training.discriminator_periods
    if not periods or not _positive_ints(periods):
        raise ConfigError(
            f"{cfg.origins.get('training.discriminator_periods', where)}: "
            "training.discriminator_periods must be a list of positive integers"
        )
    for name in ("discriminator_period_channels", "discriminator_scale_channels"):
        channels = getattr(cfg.training, name)
        if channels is not None and (len(channels) < 2 or channels[0] != 1 or not _positive_ints(channels)):
            raise ConfigError(
                f"{cfg.origins.get(f'training.{name}', where)}: training.{name} must be null or a list of "
                "positive integers starting with the input channel 1, e.g. [1, 32, 128, 512, 1024]"
            )


def _positive_ints(values: list[Any]) -> bool:
    """Whether every value is an int >= 1 (YAML's true/false are not numbers here)."""
    return all(not isinstance(v, bool) and isinstance(v, int) and v >= 1 for v in values)


def load_config(config_path: str | Path, params_path: str | Path | None = None) -> Config:
    """Load params.yaml then the language file on top; validate everything, do no work."""
    config_path = Path(config_path)
    if params_path is None:
        params_path = DEFAULT_PARAMS
        if not params_path.is_file():  # run from elsewhere: params.yaml beside languages/
            candidate = config_path.resolve().parent.parent / "params.yaml"
            params_path = candidate if candidate.is_file() else params_path
    params_path = Path(params_path)
    params = _read_yaml(params_path, "params file")
    language = _read_yaml(config_path, "language config file")

    for key in params:
        if key in PARAMS_EXTRA_KEYS:
            continue
        if key in LANGUAGE_ONLY:
            raise ConfigError(f"{params_path}: section '{key}' belongs in a language file")
        if key not in SECTIONS:
            raise ConfigError(f"{params_path}: unknown section '{key}'{_suggest(key, SECTIONS)}")
    for key in language:
        if key not in SECTIONS:
            raise ConfigError(f"{config_path}: unknown section '{key}'{_suggest(key, SECTIONS)}")

    origins: dict[str, str] = {}
    layers: list[Layer] = []
    for path, data in ((params_path, params), (config_path, language)):
        aliased: dict[str, str] = {}
        layers.append((path, _resolve_aliases(path, data, origins, aliased), aliased))
    sections = {name: _build_section(name, layers, origins) for name in SECTIONS}
    cfg = Config(**sections, config_path=config_path, params_path=params_path, origins=origins)
    if not cfg.language.code:
        cfg.language.code = config_path.stem
        origins["language.code"] = f"{config_path} (file name)"
    _default_paths(cfg.paths, cfg.language.code)
    _check(cfg)
    return cfg


def languages_in_params(params_path: str | Path = DEFAULT_PARAMS) -> list[str]:
    """The language codes params.yaml asks the DVC pipeline to build (keys of `languages`)."""
    data = _read_yaml(Path(params_path), "params file")
    langs = data.get("languages") or {}
    if isinstance(langs, list):
        return [str(x) for x in langs]
    if not isinstance(langs, dict) or not all(isinstance(v, dict) and "source" in v for v in langs.values()):
        raise ConfigError(
            f"{params_path}: 'languages' must map each language code to {{source: <path DVC watches>}}"
        )
    return [str(k) for k in langs]


#: What each DVC stage depends on: whole sections or single "section.key" settings.
STAGE_SETTINGS: dict[str, list[str]] = {
    # download_workers / retries / timeouts change how, not what: they don't re-run collect.
    "collect": ["language.code", "source", "collect.text_source", "collect.require_validated_audio"],
    "preprocess": ["audio", "preprocess"],
    "speakers": ["audio.sample_rate", "speaker_diarization"],
    "dataset": ["audio.sample_rate", "dataset", "training.base_model"],
    "train": ["audio.sample_rate", "training"],
    "evaluate": ["audio.sample_rate", "evaluation", "speaker_diarization", "training.base_model"],
    "synthesize": ["source", "collect.text_source", "dataset", "synthesis"],
}


def stage_settings(cfg: Config, stage: str) -> dict[str, Any]:
    """The effective settings one stage depends on, as a nested plain dict."""
    full = cfg.to_dict()
    out: dict[str, Any] = {}
    for item in STAGE_SETTINGS[stage]:
        section, _, key = item.partition(".")
        if key:
            out.setdefault(section, {})[key] = full[section][key]
        else:
            out[section] = full[section]
    return out


def frozen_corrections(cfg: Config) -> Any:
    """The speaker corrections file's content (None when there is none: no corrections).

    Frozen into params/<code>/speakers.json, so DVC re-runs the speakers stage when the
    corrections change without dvc.yaml requiring the optional file to exist. The speakers
    stage itself reads and validates the file (errors name the line).
    """
    path = cfg.corrections_path
    if not path.is_file():
        return None
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        detail = ": ".join(w for w in (getattr(exc, "context", None), getattr(exc, "problem", None)) if w)
        raise ConfigError(f"{path}{line}: not valid YAML: {detail or ' '.join(str(exc).split())}") from None


def freeze_stage_settings(cfg: Config, output_dir: str | Path) -> list[Path]:
    """Write params/<code>/<stage>.json per stage: DVC re-runs a stage only when its own file changes."""
    import json

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for stage in STAGE_SETTINGS:
        path = output_dir / f"{stage}.json"
        settings = stage_settings(cfg, stage)
        if stage == "speakers":
            settings["corrections"] = frozen_corrections(cfg)
        text = json.dumps(settings, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            from .fsutil import atomic_write_text  # a killed freeze leaves each file old or new, never half

            atomic_write_text(path, text)
        written.append(path)
    return written


def format_config(cfg: Config) -> str:
    """Human-readable effective config: one `key = value  # origin` line per setting."""
    lines = [f"# effective config for language '{cfg.code}'"]
    for key, value, origin in cfg.flat_items():
        lines.append(f"{key} = {value!r}  # {origin}")
    for key, (value, why) in FIXED_SETTINGS.items():
        if key in cfg.origins and key not in dict((k, 0) for k, _, _ in cfg.flat_items()):
            lines.append(f"{key} = {value!r}  # {cfg.origins[key]} (fixed: {why})")
    return "\n".join(lines)
