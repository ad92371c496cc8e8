"""`tts-pipeline run`: reproduce one language's stages through DVC, with a readable summary.

Why through DVC and not by calling the stage functions directly: DVC's content hashes decide
what is out of date, its cache restores outputs that were computed before, and `dvc.lock`
records exactly what produced them. Users who never type `dvc` still get all of that.

The stages are reproduced one at a time (`dvc repro --single-item`, through DVC's Python
API) in the order DVC's own planner gives for the target, so the summary can say which stage
ran, which was up to date, and how long each took.
"""

from __future__ import annotations

import argparse
import errno
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import Config, languages_in_params
from .errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from dvc.repo import Repo
    from dvc.stage import Stage

log = logging.getLogger(__name__)

#: The pipeline's stages in dependency order (docs/ARCHITECTURE.md); `--until` picks a prefix.
STAGE_ORDER: tuple[str, ...] = (
    "config",
    "collect",
    "preprocess",
    "speakers",
    "dataset",
    "train",
    "evaluate",
    "synthesize",
)

#: Outcome of one stage in the summary.
RAN, UP_TO_DATE, RESTORED, FAILED, SKIPPED, WOULD_RUN = (
    "ran",
    "up to date",
    "restored from cache",
    "FAILED",
    "not run",
    "would run",
)


@dataclass
class StageResult:
    """What happened to one stage (`name` is the DVC address, e.g. `train@demo`)."""

    name: str
    status: str
    seconds: float = 0.0
    reason: str = ""


@dataclass
class RunSummary:
    """Every planned stage with its outcome, in execution order."""

    code: str
    root: Path
    results: list[StageResult] = field(default_factory=list)
    dry: bool = False

    @property
    def ok(self) -> bool:
        return all(r.status != FAILED for r in self.results)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def format(self) -> str:
        """A small table: stage, outcome, seconds (why, for a dry run); then totals."""
        title = "plan" if self.dry else "summary"
        width = max([len(r.name) for r in self.results] + [5])
        lines = [f"tts-pipeline run: {title} for language '{self.code}' ({self.root})"]
        if self.dry:
            lines.append(f"  {'stage':<{width}}  {'status':<10}  why")
            for r in self.results:
                lines.append(f"  {r.name:<{width}}  {r.status:<10}  {r.reason}".rstrip())
        else:
            lines.append(f"  {'stage':<{width}}  {'status':<19}  {'time':>8}")
            for r in self.results:
                timed = r.status in (RAN, UP_TO_DATE, RESTORED, FAILED)
                secs = f"{r.seconds:7.1f}s" if timed else ""
                extra = f"  ({r.reason})" if r.reason else ""
                lines.append(f"  {r.name:<{width}}  {r.status:<19}  {secs:>8}{extra}")
        total = sum(r.seconds for r in self.results)
        if self.dry:
            lines.append(
                f"  {self.count(WOULD_RUN)} would run, {self.count(UP_TO_DATE)} up to date "
                "(nothing was run: --dry)"
            )
        else:
            parts = [f"{self.count(RAN)} ran", f"{self.count(UP_TO_DATE)} up to date"]
            if self.count(RESTORED):
                parts.append(f"{self.count(RESTORED)} restored from cache")
            if self.count(FAILED):
                parts.append(f"{self.count(FAILED)} failed")
            if self.count(SKIPPED):
                parts.append(f"{self.count(SKIPPED)} not run")
            lines.append(f"  {', '.join(parts)}; total {total:.1f}s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- checks


def find_dvc_root(start: Path | str = ".") -> Path:
    """The DVC project that contains `start`; a clear error when there is none."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Path(Repo.find_root(str(start)))
    except NotDvcRepoError as exc:
        raise PipelineError(
            f"{Path(start).resolve()}: DVC isn't initialised here ({exc}); run `dvc init` in the "
            "repository root (or `cd` into the repository) and try again"
        ) from exc


def check_language(params_path: Path, code: str) -> None:
    """The language must be listed in params.yaml `languages`, or dvc.yaml has no stages for it."""
    if not params_path.is_file():
        raise PipelineError(f"{params_path}: not found; the DVC pipeline reads its languages from it")
    data = yaml.safe_load(params_path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not data.get("languages"):
        raise PipelineError(
            f"{params_path}: no 'languages'; add one, e.g. 'languages: {{{code}: {{source: <path>}}}}'"
        )
    langs = languages_in_params(params_path)
    if code not in langs:
        listed = ", ".join(langs) or "none"
        raise PipelineError(
            f"{params_path}: language '{code}' is not in 'languages' (listed: {listed}); add it "
            f"(with the 'source' path DVC watches) so dvc.yaml builds its stages"
        )


# --------------------------------------------------------------------------- planning


def stage_base(address: str) -> str:
    """`train@demo` -> `train`; `dvc.yaml:train@demo` -> `train`."""
    return address.rsplit(":", 1)[-1].split("@", 1)[0]


def language_stages(repo: Repo, code: str) -> dict[str, Stage]:
    """The pipeline's stages for one language (`<stage>@<code>`), keyed by base name."""
    found: dict[str, Stage] = {}
    for stage in repo.index.stages:
        name = getattr(stage, "name", None) or ""
        if name.endswith(f"@{code}"):
            found[stage_base(name)] = stage
    return found


def plan(repo: Repo, code: str, until: str | None = None) -> list[Stage]:
    """Stages to reproduce, in DVC's execution order: `until` and everything upstream of it.

    Without `until`, every stage of the language. Stage names are checked against dvc.yaml so
    a typo is an error before anything runs.
    """
    from dvc.repo.reproduce import get_active_graph, plan_repro

    stages = language_stages(repo, code)
    if not stages:
        raise PipelineError(
            f"{repo.root_dir}/dvc.yaml: no stages named '<stage>@{code}'; is '{code}' in the "
            "'languages' list that dvc.yaml's foreach reads?"
        )
    if until is not None:
        if until not in stages:
            known = ", ".join(sorted(stages, key=_order_key))
            raise PipelineError(f"--until {until}: no stage '{until}@{code}' in dvc.yaml (known: {known})")
        targets = [stages[until]]
    else:
        targets = sorted(stages.values(), key=lambda s: _order_key(stage_base(s.name)))
    graph = get_active_graph(repo.index.graph)
    return plan_repro(graph, targets)


def _order_key(base: str) -> tuple[int, str]:
    return (STAGE_ORDER.index(base) if base in STAGE_ORDER else len(STAGE_ORDER), base)


def describe_changes(stage: Stage) -> str:
    """Why a stage is out of date, short ("data/demo/raw modified; output models/x deleted")."""
    try:
        status = stage.status()
    except Exception as exc:  # noqa: BLE001 - a status problem must not stop a dry run
        return f"status unknown: {exc}"
    bits: list[str] = []
    for entry in status.get(stage.addressing, []):
        if isinstance(entry, str):
            bits.append(entry)
            continue
        for what, changes in entry.items():
            kind = what.replace("changed ", "")
            for path, change in changes.items():
                if isinstance(change, dict):  # params file: {key: modified|new|deleted}
                    bits.extend(f"{path}: {key} {how}" for key, how in change.items())
                else:
                    bits.append(f"{'output ' if kind == 'outs' else ''}{path} {change}")
    return "; ".join(bits[:3]) + (" ..." if len(bits) > 3 else "")


def _missing_uncached_outs(stage: Stage) -> list[str]:
    """`cache: false` outputs that are not on disk: no remote has them, only a re-run makes them."""
    return [str(out) for out in stage.outs if not out.use_cache and not out.exists]


def _only_data_missing(repo: Repo, stage: Stage) -> bool:
    """True when the stage counts as changed only because its outputs/inputs are absent."""
    from dvc.repo import lock_repo

    try:
        with lock_repo(repo):
            return stage.changed() and not stage.changed(allow_missing=True)
    except Exception:  # noqa: BLE001 - only a hint
        return False


# --------------------------------------------------------------------------- running


class _DvcLogCapture(logging.Handler):
    """Collects DVC's log messages so the summary can tell 'ran' from 'cached' from 'skipped'.

    DVC prints its own messages (its handlers are installed when `dvc` is imported), so the
    user sees the familiar `dvc repro` output; this handler only listens.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001
            return
        self.messages.append(msg)


def explain_failure(name: str, exc: BaseException) -> str:
    """One line, in the user's terms, for a stage DVC could not reproduce (never a bare errno)."""
    from dvc.stage.exceptions import MissingDataSource, StageCmdFailedError

    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    stage = stage_base(name)
    for err in chain:
        if isinstance(err, StageCmdFailedError):
            code = re.search(r"exited with (-?\d+)", str(err))
            status = f" (exit code {code.group(1)})" if code else ""
            return (
                f"the {stage} step stopped with an error{status}; the 'tts-pipeline {stage}' message "
                "above says which file or setting to fix"
            )
        if isinstance(err, MissingDataSource):
            missing = str(err).split(":", 1)[-1].strip()
            return (
                f"{missing}: not found, and the {stage} step needs it (an input in dvc.yaml); "
                "create it, or run the step that writes it"
            )
        if isinstance(err, OSError) and (err.filename or err.strerror):
            what = err.strerror or "cannot be used"
            if err.errno == errno.ENOENT:
                what = "not found; create it, or fix the setting or path that names it"
            elif err.errno in (errno.ENOSPC, errno.EDQUOT):
                what = "disk full; free some space"
            elif err.errno in (errno.EACCES, errno.EPERM):
                what = "permission denied; check who owns it"
            where = f"{err.filename}: " if err.filename else ""
            return f"{where}{what} (while running the {stage} step)"
    text = next(
        (line for e in reversed(chain) for line in str(e).splitlines() if line.strip()), "unknown error"
    )
    return re.sub(r"\[Errno -?\d+\]\s*", "", text).strip()


def _classify(messages: Sequence[str], reproduced: bool) -> str:
    text = "\n".join(messages)
    if "is cached - skipping run" in text or "Pulling data for" in text:
        return RESTORED
    if "Running stage" in text:
        return RAN
    if reproduced:
        return RAN
    return UP_TO_DATE


def run_pipeline(
    root: Path | str,
    code: str,
    until: str | None = None,
    force: bool = False,
    dry: bool = False,
    pull: bool = False,
    allow_missing: bool = False,
    force_stages: Sequence[str] = (),
) -> RunSummary:
    """Reproduce `code`'s stages up to `until` in the DVC project at `root`.

    Returns the summary; a failing stage raises `PipelineError` after `summary` is filled
    in (the exception carries it as `.summary`). `pull` fetches outputs that the remote or
    the run cache already has instead of recomputing them (`dvc repro --pull`).
    `allow_missing` skips stages whose only change is that their outputs (or inputs) are not
    here: on a GPU box that pulled only the dataset, collect/preprocess/speakers stay put
    (`dvc repro --allow-missing`); a missing `cache: false` output (never in the remote) is
    regenerated instead. `force_stages` (base names, e.g. `collect`) re-run even if DVC sees no change: a GitLab
    source can have new recordings that no watched file reflects.
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    root = Path(root).resolve()
    summary = RunSummary(code=code, root=root, dry=dry)
    dvc_logger = logging.getLogger("dvc")
    capture = _DvcLogCapture()
    old_level, old_propagate = dvc_logger.level, dvc_logger.propagate
    dvc_logger.addHandler(capture)
    if log.isEnabledFor(logging.DEBUG):
        dvc_logger.setLevel(logging.DEBUG)
    elif not dvc_logger.isEnabledFor(logging.INFO):
        dvc_logger.setLevel(logging.INFO)
    dvc_logger.propagate = False  # DVC's own handlers print; ours would print it twice
    try:
        with Repo(str(root)) as repo:
            try:
                steps = plan(repo, code, until)
            except DvcException as exc:
                raise PipelineError(f"{root}/dvc.yaml: {exc}") from exc
            total = len(steps)
            # stage -> the stages it depends on (DVC's graph points from a stage to its deps)
            graph = repo.index.graph
            upstream_of = {
                s.addressing: {u.addressing for u in graph.successors(s)} if s in graph else set()
                for s in steps
            }
            will_run: set[str] = set()
            hinted = False
            for i, stage in enumerate(steps, 1):
                name = stage.addressing
                stage_force = force or stage_base(name) in force_stages
                if dry:
                    with lock_repo(repo):
                        missing_ok = allow_missing and not _missing_uncached_outs(stage)
                        changed = stage_force or stage.changed(allow_missing=missing_ok)
                        why = describe_changes(stage) if changed and not stage_force else ""
                    runs_before = sorted(upstream_of[name] & will_run)
                    if changed or runs_before:
                        reason = "forced" if stage_force else why
                        if not reason:
                            reason = f"if {', '.join(runs_before)} changes its output"
                        result = StageResult(name, WOULD_RUN, reason=reason)
                        will_run.add(name)
                    else:
                        result = StageResult(name, UP_TO_DATE)
                    summary.results.append(result)
                    continue
                print(f"==> [{i}/{total}] {name}", flush=True)
                if not allow_missing and not stage_force and not hinted and _only_data_missing(repo, stage):
                    hinted = True
                    log.warning(
                        "%s: nothing changed, only its data is not here, so DVC recomputes it; on a "
                        "machine that pulled just what it needs (a GPU box), add --allow-missing",
                        name,
                    )
                capture.messages.clear()
                started = time.perf_counter()
                missing_ok = allow_missing and not _missing_uncached_outs(stage)
                try:
                    done = repo.reproduce(
                        name, single_item=True, force=stage_force, pull=pull, allow_missing=missing_ok
                    )
                except DvcException as exc:
                    seconds = time.perf_counter() - started
                    cause = explain_failure(name, exc)
                    summary.results.append(StageResult(name, FAILED, seconds, reason=cause))
                    for rest in steps[i:]:
                        summary.results.append(StageResult(rest.addressing, SKIPPED))
                    err = PipelineError(
                        f"stage '{name}' failed: {cause}; outputs of the stages before it are kept "
                        f"(see the log above), fix the problem and re-run the same command"
                    )
                    err.summary = summary  # type: ignore[attr-defined]
                    raise err from exc
                seconds = time.perf_counter() - started
                status = _classify(capture.messages, bool(done))
                result = StageResult(name, status, seconds)
                summary.results.append(result)
                print(f"==> [{i}/{total}] {name}: {status} ({seconds:.1f}s)", flush=True)
    finally:
        dvc_logger.removeHandler(capture)
        dvc_logger.setLevel(old_level)
        dvc_logger.propagate = old_propagate
    return summary


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--until",
        metavar="STAGE",
        default=None,
        help=f"stop after this stage ({', '.join(STAGE_ORDER)}); default: all of them",
    )
    parser.add_argument(
        "--force", action="store_true", help="re-run the stages even if nothing changed (dvc repro -f)"
    )
    parser.add_argument(
        "--dry", action="store_true", help="only show which stages would run and why; run nothing"
    )
    parser.add_argument(
        "--pull",
        action="store_true",
        help="fetch outputs the DVC remote already has instead of recomputing them (dvc repro --pull)",
    )
    parser.add_argument(
        "--allow-missing",
        action="store_true",
        help="skip stages whose only change is missing data (a GPU box that pulled just the "
        "dataset: nothing upstream of train is recomputed; dvc repro --allow-missing)",
    )
    parser.add_argument(
        "--refresh-source",
        action="store_true",
        help="re-run collect even if DVC sees no change (new recordings on GitLab); "
        "later stages re-run only if the collected data changed",
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    """Thin shell: check the project and the language, reproduce, print the summary."""
    root = find_dvc_root(Path.cwd())
    if not (root / "dvc.yaml").is_file():
        raise PipelineError(f"{root}/dvc.yaml: not found; this repository has no DVC pipeline")
    params_path = root / "params.yaml"
    check_language(params_path, cfg.code)
    if args.until is not None and args.until not in STAGE_ORDER:
        log.warning("--until %s is not one of the standard stages (%s)", args.until, ", ".join(STAGE_ORDER))
    try:
        summary = run_pipeline(
            root,
            cfg.code,
            until=args.until,
            force=args.force,
            dry=args.dry,
            pull=args.pull,
            allow_missing=args.allow_missing,
            force_stages=("collect",) if args.refresh_source else (),
        )
    except PipelineError as exc:
        partial: Any = getattr(exc, "summary", None)
        if partial is not None:
            print(partial.format(), flush=True)
        raise
    print(summary.format(), flush=True)
    if not args.dry and summary.count(RAN):
        print(
            "Outputs are in DVC's cache; `dvc push` copies them to the remote, "
            "`git add dvc.lock` records what produced them."
        )
    return 0
