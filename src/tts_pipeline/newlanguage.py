"""`tts-pipeline new-language`: scaffold a language in one command (README "Your language").

Writes `languages/<code>.yaml` (commented, only what differs from params.yaml), an empty
commented `languages/<code>.speakers.yaml`, and adds the language to `languages:` in
params.yaml by inserting lines (its comments stay). Everything is checked first (the code,
the base model, that the source answers), and nothing is written when a check fails; an
existing language is never overwritten.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError, load_config
from .errors import PipelineError
from .gitlab_source import GitLabSource

log = logging.getLogger(__name__)

#: An MMS-TTS checkpoint on the hub: facebook/mms-tts-<ISO 639-3>[-<script or variant>].
MMS_TTS_ID = re.compile(r"^facebook/mms-tts-[a-z]{3}(-[a-z0-9]+)*$")
CODE = re.compile(r"^[a-z][a-z0-9_-]{1,31}$")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("code", help="language code, e.g. the ISO 639-3 code 'hsn' (file names, stage names)")
    parser.add_argument("--name", required=True, help='display name, e.g. "Xiang Chinese"')
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--gitlab", metavar="URL", help="the GitLab server holding the Codex project, e.g. https://gitlab.com"
    )
    where.add_argument(
        "--local", metavar="PATH", help="a local Codex project folder (has files/target/*.codex)"
    )
    parser.add_argument(
        "--project", metavar="GROUP/NAME", help="with --gitlab: the project, 'group/name' or a numeric id"
    )
    parser.add_argument(
        "--ref", default=None, help="with --gitlab: branch, tag or commit (default: default branch)"
    )
    parser.add_argument(
        "--token-env",
        default="GITLAB_TOKEN",
        metavar="VAR",
        help="with --gitlab: the NAME of the environment variable holding the token (default "
        "GITLAB_TOKEN); the token itself is never written anywhere",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        metavar="ID_OR_PATH",
        help="voice to fine-tune: an MMS-TTS hub id facebook/mms-tts-<iso> or a local model folder "
        "(default: training.base_model of params.yaml)",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        metavar="FILE",
        help="the project's params.yaml (default: ./params.yaml)",
    )
    parser.add_argument(
        "--no-check-source",
        action="store_true",
        help="do not check that the source answers (e.g. writing the files before you are online)",
    )


# --------------------------------------------------------------------------- checks


def check_code(code: str, params: dict[str, Any], languages_dir: Path) -> None:
    if not CODE.match(code):
        raise PipelineError(
            f"language code {code!r}: use 2-32 lowercase letters, digits, '-' or '_', starting with a "
            "letter (e.g. the ISO 639-3 code 'hsn')"
        )
    langs = params.get("languages") or {}
    listed = code in langs if isinstance(langs, (dict, list)) else False
    for path in (languages_dir / f"{code}.yaml", languages_dir / f"{code}.speakers.yaml"):
        if path.exists():
            raise PipelineError(
                f"{path}: already exists; language '{code}' is set up (edit that file instead)"
            )
    if listed:
        raise PipelineError(f"language '{code}' is already listed under 'languages:' in params.yaml")


def check_base_model(value: str) -> None:
    """A hub id that looks like MMS-TTS, or an existing local model folder."""
    if Path(value).is_dir():
        if not (Path(value) / "config.json").is_file():
            raise PipelineError(f"--base-model {value}: a folder without config.json is not a saved model")
        return
    if not MMS_TTS_ID.match(value):
        raise PipelineError(
            f"--base-model {value!r}: expected an MMS-TTS model id 'facebook/mms-tts-<iso>' "
            "(e.g. facebook/mms-tts-cmn) or an existing local model folder"
        )


def check_local_source(path: Path) -> int:
    """The number of .codex documents under the project's files/target (at least one)."""
    if not path.is_dir():
        raise PipelineError(f"--local {path}: not a folder; give the Codex project folder")
    documents = sorted((path / "files" / "target").glob("*.codex"))
    if not documents:
        raise PipelineError(
            f"--local {path}: no files/target/*.codex; is this a Codex project folder "
            "(the one holding metadata.json and files/)?"
        )
    return len(documents)


def check_gitlab_source(url: str, project: str, ref: str | None, token_env: str) -> str:
    """Open the project (and resolve the ref) with the token from `token_env`; the commit id."""
    token = os.environ.get(token_env) or None
    if token is None:
        log.warning("environment variable %s is not set: checking GitLab without a token", token_env)
    source = GitLabSource(url, project, ref, token, token_env=token_env, timeout_s=30.0, max_retries=1)
    try:
        return source.connect().commit_id
    except PipelineError as exc:
        raise PipelineError(
            f"--gitlab {url} --project {project}: the project did not answer ({exc}); check the URL, the "
            f"project path and the token in ${token_env}, or pass --no-check-source to write the files anyway"
        ) from None


# --------------------------------------------------------------------------- writing


def _q(value: str) -> str:
    """A YAML scalar (JSON strings are valid YAML): safe for any name or path."""
    return json.dumps(value, ensure_ascii=False)


def language_yaml(args: argparse.Namespace, default_base_model: Any) -> str:
    """The commented language file: only what differs from params.yaml."""
    lines = [
        f"# {args.name} ({args.code}), created by `tts-pipeline new-language`. Only what differs from",
        "# params.yaml is here; `tts-pipeline config show --config languages/"
        f"{args.code}.yaml` prints every setting.",
        "language:",
        f"  code: {args.code}",
        f"  name: {_q(args.name)}",
        "",
        "# Where the recordings are (only collect and synthesize read it).",
        "source:",
    ]
    if args.local:
        lines += ["  type: local", f"  path: {_q(args.local)}"]
    else:
        lines += [
            "  type: gitlab",
            f"  url: {_q(args.gitlab)}",
            f"  project: {_q(args.project)}      # numeric id or group/name",
        ]
        if args.ref:
            lines.append(f"  ref: {_q(args.ref)}")
        lines.append(
            f"  token_env: {args.token_env}   # the token is read from this environment variable only"
        )
    lines.append("")
    if args.base_model and args.base_model != default_base_model:
        lines += [
            "# The voice to start from: an MMS-TTS model (facebook/mms-tts-<iso>) or a local folder.",
            "training:",
            f"  base_model: {_q(args.base_model)}",
        ]
    else:
        lines += [
            f"# The voice to start from is params.yaml's training.base_model ({default_base_model}); to change it:",
            "# training:",
            "#   base_model: facebook/mms-tts-<iso>",
        ]
    lines += [
        "",
        "# Any other setting of params.yaml can be overridden here, under its section, e.g.:",
        "# training:",
        "#   num_epochs: 300",
    ]
    return "\n".join(lines) + "\n"


def speakers_yaml(code: str) -> str:
    return (
        f"# Speaker corrections for {code}, applied on the next `speakers` run. Optional: no file or\n"
        "# an empty one means no corrections. The review page prints the exact lines to paste:\n"
        f"#   tts-pipeline speakers review --config languages/{code}.yaml\n"
        "# Format (top of src/tts_pipeline/speakers/corrections.py):\n"
        "# speakers:\n"
        "#   Maria:                        # the reader's name\n"
        "#     anchors: [audio/MRK_001_001.wav]   # the cluster holding this clip is Maria\n"
        "#     clips: [audio/LUK_003_007.wav]     # this clip is Maria, whatever the clustering says\n"
        "speakers: {}\n"
    )


def add_to_params(text: str, code: str, watched: str) -> str:
    """params.yaml with `<code>: {source: <watched>}` added under `languages:`, comments kept."""
    entry = [f"  {code}:", f"    source: {_q(watched)}"]
    lines = text.splitlines()
    start = next(
        (i for i, line in enumerate(lines) if re.match(r"^languages:\s*(\{\s*\}|\[\s*\])?\s*(#.*)?$", line)),
        None,
    )
    if start is None:
        return text.rstrip("\n") + "\n\nlanguages:\n" + "\n".join(entry) + "\n"
    if re.match(r"^languages:\s*(\{\s*\}|\[\s*\])", lines[start]):
        lines[start] = "languages:"
    end = start
    for i in range(start + 1, len(lines)):
        if lines[i].strip() and not lines[i][0].isspace():
            break
        if lines[i].strip():
            end = i
    lines[end + 1 : end + 1] = entry
    return "\n".join(lines) + "\n"


def new_language(args: argparse.Namespace) -> list[Path]:
    """Check everything, then write the two language files and update params.yaml."""
    params_path = Path(args.params)
    if not params_path.is_file():
        raise PipelineError(
            f"{params_path}: not found; run new-language in the repository root (beside params.yaml)"
        )
    params_text = params_path.read_text(encoding="utf-8")
    params = yaml.safe_load(params_text) or {}
    if not isinstance(params, dict):
        raise PipelineError(f"{params_path}: expected a mapping of sections")
    if isinstance(params.get("languages"), list):
        raise PipelineError(
            f"{params_path}: 'languages' is a list; make it a mapping code -> {{source: path}}"
        )
    languages_dir = params_path.parent / "languages"
    code = args.code
    check_code(code, params, languages_dir)
    if args.gitlab and not args.project:
        raise PipelineError("--gitlab needs --project GROUP/NAME (or the numeric project id)")
    if args.local and (args.project or args.ref):
        raise PipelineError("--project and --ref belong to --gitlab; a local source is just a folder")
    if args.base_model:
        check_base_model(args.base_model)
    if not getattr(args, "no_check_source", False):
        if args.local:
            count = check_local_source(Path(args.local))
            print(f"source: {args.local}: {count} Codex document(s)")
        else:
            commit = check_gitlab_source(args.gitlab, args.project, args.ref, args.token_env)
            print(f"source: GitLab project '{args.project}' answers (commit {commit[:12]})")

    default_base = (params.get("training") or {}).get("base_model")
    # DVC watches the project folder of a local source; for GitLab, its frozen settings.
    watched = args.local if args.local else f"params/{code}/collect.json"
    new_params = add_to_params(params_text, code, watched)
    added = (yaml.safe_load(new_params) or {}).get("languages") or {}
    if code not in added or {k: v for k, v in yaml.safe_load(new_params).items() if k != "languages"} != {
        k: v for k, v in params.items() if k != "languages"
    }:
        raise PipelineError(f"{params_path}: could not add '{code}' under 'languages:'; add it by hand")

    config_path = languages_dir / f"{code}.yaml"
    speakers_path = languages_dir / f"{code}.speakers.yaml"
    languages_dir.mkdir(exist_ok=True)
    config_path.write_text(language_yaml(args, default_base), encoding="utf-8")
    try:
        load_config(config_path, params_path)  # the result must validate, or nothing stays
    except ConfigError as exc:
        config_path.unlink()
        raise PipelineError(f"the new language file does not validate: {exc}") from None
    speakers_path.write_text(speakers_yaml(code), encoding="utf-8")
    params_path.write_text(new_params, encoding="utf-8")
    return [config_path, speakers_path, params_path]


def run(args: argparse.Namespace) -> int:
    written = new_language(args)
    for path in written:
        print(f"wrote {path}")
    token = f"export {args.token_env}=...   # then:\n  " if args.gitlab else ""
    print(
        f"next: {token}tts-pipeline run --config languages/{args.code}.yaml --until dataset\n"
        f"then listen on the review page (tts-pipeline speakers review --config languages/{args.code}.yaml), "
        f"correct languages/{args.code}.speakers.yaml and run the same command again"
    )
    return 0
