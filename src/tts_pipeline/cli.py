"""The `tts-pipeline` command: one sub-command per stage, a thin shell over the stage modules.

Stage modules (and so numpy, torch, HTTP libraries) are imported only for the command that
runs, after its configuration has loaded: `--help` and configuration errors answer in a
fraction of a second.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import logging
import os
import sys
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

log = logging.getLogger("tts_pipeline")

#: sub-command -> (module, one-line help). Each module defines
#: `add_arguments(parser)` and `run(cfg, args) -> int | None`.
STAGES: dict[str, tuple[str, str]] = {
    "collect": ("collect", "Codex project (GitLab or local) -> raw/audio + metadata.csv"),
    "preprocess": ("preprocess", "raw audio -> 16 kHz mono 16-bit WAV, loudness-normalised, measured"),
    "speakers": ("speakers.stage", "speaker embeddings, clustering, review page, corrections"),
    "dataset": ("dataset", "preprocessed clips + speakers -> Hugging Face dataset"),
    "train": ("train", "fine-tune an MMS-TTS (VITS) model"),
    "evaluate": ("evaluate", "synthesize the validation set, measure, listening page"),
    "synthesize": ("synthesize", "voice the verses nobody recorded; optional write-back"),
    "demo": ("webdemo", "local web page to try the trained voice"),
    "run": ("run", "run the whole pipeline for a language through DVC"),
    "experiments": ("experiments", "DVC experiments as a short table: changed settings, headline metrics"),
}

#: The planning document's Phase 2 flags: a stage command that runs the next stages right after
#: it, in order (a later flag implies the earlier ones). (flag, stage, help). Orchestration
#: lives here, never in the stage modules: a stage module does not import another stage.
FOLLOW_UPS: dict[str, list[tuple[str, str, str]]] = {
    "collect": [
        ("--preprocess", "preprocess", "then preprocess the collected audio (paths.preprocessed)"),
        ("--diarize", "speakers", "then run the speakers stage too (implies --preprocess)"),
        (
            "--prepare-training",
            "dataset",
            "then build the training-ready dataset too (paths.hf_dataset; implies --diarize)",
        ),
    ],
}

#: Commands that replace an output folder (`fsutil.atomic_directory`) and so take --force.
WRITES_OUTPUT = ("collect", "preprocess", "speakers", "dataset", "train", "evaluate", "synthesize")


def _common(parser: argparse.ArgumentParser, config_required: bool = True) -> None:
    parser.add_argument(
        "--config",
        "--config_path",  # the planning document's gitlab_to_hf_dataset.py spelling
        dest="config",
        required=config_required,
        metavar="FILE",
        help="language config, e.g. languages/hsn.yaml",
    )
    parser.add_argument(
        "--params", metavar="FILE", default=None, help="generic defaults (default: params.yaml)"
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )


def build_parser(commands: Collection[str] | None = None) -> argparse.ArgumentParser:
    """The whole command line; with `commands`, only those commands get their module's own
    arguments (the module is imported for that), the others only the common ones."""
    parser = argparse.ArgumentParser(
        prog="tts-pipeline",
        description="Turn the recorded verses of a Codex project into a fine-tuned MMS-TTS voice.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    for name, (module_name, help_text) in STAGES.items():
        stage_parser = sub.add_parser(name, help=help_text, description=help_text)
        _common(stage_parser)
        stage_parser.set_defaults(module=module_name)
        module = _import_stage(module_name, soft=True) if commands is None or name in commands else None
        if module is not None and hasattr(module, "add_arguments"):
            module.add_arguments(stage_parser)
        for flag, _, flag_help in FOLLOW_UPS.get(name, []):
            stage_parser.add_argument(flag, action="store_true", help=flag_help)
        if name in WRITES_OUTPUT:
            stage_parser.add_argument(
                "--force",
                action="store_true",
                help="replace the output folder even if tts-pipeline did not write it (its contents are lost)",
            )

    new = sub.add_parser(
        "new-language",
        help="set up a new language: languages/<code>.yaml, its corrections file, params.yaml",
        description="Set up a new language in one command: check the source answers, write "
        "languages/<code>.yaml (only what differs from params.yaml) and an empty "
        "languages/<code>.speakers.yaml, add the language to params.yaml (comments kept), and print "
        "the next command. Never overwrites an existing language.",
    )
    new.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging verbosity (default: INFO)",
    )
    if commands is None or "new-language" in commands:
        newlanguage = _import_stage("newlanguage")  # a command module: loaded for its command only
        newlanguage.add_arguments(new)

    config_parser = sub.add_parser("config", help="inspect the effective configuration")
    config_sub = config_parser.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    show = config_sub.add_parser("show", help="print every setting and the file it came from")
    _common(show)
    check = config_sub.add_parser("check", help="validate the configuration and exit")
    _common(check)
    freeze = config_sub.add_parser(
        "freeze", help="write each stage's effective settings to OUTPUT_DIR/<stage>.json (used by dvc.yaml)"
    )
    _common(freeze)
    freeze.add_argument("--output_dir", required=True, help="e.g. params/<code>")
    return parser


def _import_stage(module_name: str, soft: bool = False):
    try:
        return importlib.import_module(f".{module_name}", __package__)
    except ModuleNotFoundError as exc:
        if soft and exc.name and exc.name.startswith(f"{__package__}.{module_name}"):
            return None
        raise


def _experiment_hint() -> str:
    """Under `dvc exp run -S ...`: DVC has already written the rejected value into the working tree."""
    if not os.environ.get("DVC_EXP_NAME"):
        return ""
    return (
        "; `dvc exp run -S` left this value in params.yaml / languages/*.yaml (the frozen params/ files "
        "are unchanged): `git diff params.yaml languages/` shows it, `git checkout -- params.yaml` "
        "restores the committed file"
    )


def _stage_args(module_name: str, args: argparse.Namespace, overrides: dict[str, str]) -> argparse.Namespace:
    """The arguments a stage gets when run with only --config/--params (its own defaults)."""
    parser = argparse.ArgumentParser(add_help=False)
    module = _import_stage(module_name)
    if hasattr(module, "add_arguments"):
        module.add_arguments(parser)
    stage_args = parser.parse_args([])
    for key in ("config", "params", "log_level"):
        setattr(stage_args, key, getattr(args, key, None))
    for key, value in overrides.items():
        if hasattr(stage_args, key):
            setattr(stage_args, key, value)
    return stage_args


def run_with_follow_ups(cfg: Config, args: argparse.Namespace) -> int:
    """Run the command's stage, then the follow-up stages its Phase 2 flags ask for."""
    result = int(_import_stage(args.module).run(cfg, args) or 0)
    chain = FOLLOW_UPS.get(args.command, [])
    wanted = [
        i for i, (flag, _, _) in enumerate(chain) if getattr(args, flag.lstrip("-").replace("-", "_"), False)
    ]
    if result or not wanted:
        return result
    overrides: dict[str, str] = {}
    if args.command == "collect" and getattr(
        args, "output_dir", None
    ):  # preprocess reads what was just written
        overrides = {"input_dir": args.output_dir, "input_metadata": f"{args.output_dir}/metadata.csv"}
    for _, stage, _ in chain[: max(wanted) + 1]:
        log.info("%s: running the %s stage", args.command, stage)
        result = int(_import_stage(stage).run(cfg, _stage_args(stage, args, overrides)) or 0)
        if result:
            return result
        overrides = {}
    return 0


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )


def _command(argv: Sequence[str]) -> str | None:
    """The sub-command named on the command line (the first word that is not an option)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _command(argv)
    if command is None or {"-h", "--help"} & set(argv):  # help: nothing else to import
        build_parser(commands=() if command is None else (command,)).parse_args(argv)
    # Loaded after --help has answered: the config schema (yaml, dataclasses) is the one
    # package import `--help` must not pay for (issue 18: under 0.3 s).
    from .config import ConfigError, load_config

    if command in STAGES and not {"-h", "--help"} & set(argv):
        # Load the configuration before importing the stage module: a configuration error
        # answers at once, without numpy, torch or HTTP libraries.
        known, _ = build_parser(commands=()).parse_known_args(argv)
        try:
            load_config(known.config, known.params)
        except ConfigError as exc:
            print(f"tts-pipeline: configuration error: {exc}", file=sys.stderr)
            return 2
    parser = build_parser(commands=() if command is None else (command,))
    args = parser.parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "new-language":
        try:
            return _import_stage("newlanguage").run(args)
        except PipelineError as exc:
            print(f"tts-pipeline new-language: error: {exc}", file=sys.stderr)
            return 1
    try:
        cfg: Config = load_config(args.config, args.params)
    except ConfigError as exc:
        print(f"tts-pipeline: configuration error: {exc}{_experiment_hint()}", file=sys.stderr)
        return 2
    if args.command == "config":
        return _config_command(cfg, args)
    return _run_command(cfg, args)


def _config_command(cfg: Config, args: argparse.Namespace) -> int:
    """`tts-pipeline config show|check|freeze`."""
    from .config import format_config, freeze_stage_settings

    if args.config_command == "show":
        print(format_config(cfg))
    elif args.config_command == "freeze":
        for path in freeze_stage_settings(cfg, args.output_dir):
            log.info("wrote %s", path)
    else:
        print(f"{cfg.config_path}: OK (language '{cfg.code}')")
    return 0


def _run_command(cfg: Config, args: argparse.Namespace) -> int:
    """Run a command (and its follow-ups); every user-fixable failure becomes one line and an exit code."""
    from .config import ConfigError
    from .fsutil import forcing

    try:
        with forcing(bool(getattr(args, "force", False)) and args.command in WRITES_OUTPUT):
            result = run_with_follow_ups(cfg, args)
    except KeyboardInterrupt:
        log.error("interrupted; finished work is kept, re-run to continue")
        return 130
    except ConfigError as exc:
        print(f"tts-pipeline: configuration error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"tts-pipeline {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        where = f" writing {exc.filename}" if exc.filename else ""
        print(
            f"tts-pipeline {args.command}: error: disk full{where}; free some space and re-run "
            "(finished work and earlier outputs are kept)",
            file=sys.stderr,
        )
        return 1
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
