"""`tts-pipeline run`: reproduce one language's stages through DVC, with a readable summary.

Why through DVC and not by calling the stage functions directly: DVC's content hashes decide
what is out of date, its cache restores outputs that were computed before, and `dvc.lock`
records exactly what produced them. Users who never type `dvc` still get all of that.

The stages are reproduced one at a time (`dvc repro --single-item`, through DVC's Python
API) in the order DVC's own planner gives for the target, so the summary can say which stage
ran, which was up to date, and how long each took. What happened is read from DVC's state
(outputs present before and after, the run cache, the stage DVC returns), never from its log.

Never a silent no-op: the stages asked for (`--until`, else the last ones) must end with their
outputs in the workspace. With `--allow-missing` DVC skips a stage whose only change is missing
data, which on a fresh clone whose `dvc.lock` names outputs that exist nowhere (not here, not
in the cache, not on the remote) would report "up to date" and train nothing. So the outputs
that are needed are fetched when the cache or remote has them and recomputed when nothing has
them, and the upstream stages whose outputs that recomputation needs are planned the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .config import Config, languages_in_params
from .dvc_state import (
    FROM_CACHE,
    FROM_REMOTE,
    FROM_RUN,
    STAGE_ORDER,
    describe_changes,
    explain_failure,
    find_dvc_root,
    missing_uncached_outs,
    only_data_missing,
    outs_present,
    plan,
    plan_outputs,
    restorable_from_run_cache,
    sinks,
    stage_base,
)
from .errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from dvc.repo import Repo
    from dvc.stage import Stage

log = logging.getLogger(__name__)

#: Outcome of one stage in the summary.
RAN, UP_TO_DATE, RESTORED, FAILED, SKIPPED, WOULD_RUN, NOT_HERE, WOULD_RESTORE = (
    "ran",
    "up to date",
    "restored from cache",
    "FAILED",
    "not run",
    "would run",
    "skipped, data not here",
    "would restore",
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
        sw = max([len(r.status) for r in self.results] + [10 if self.dry else 19])
        lines = [f"tts-pipeline run: {title} for language '{self.code}' ({self.root})"]
        if self.dry:
            lines.append(f"  {'stage':<{width}}  {'status':<{sw}}  why")
            for r in self.results:
                lines.append(f"  {r.name:<{width}}  {r.status:<{sw}}  {r.reason}".rstrip())
        else:
            lines.append(f"  {'stage':<{width}}  {'status':<{sw}}  {'time':>8}")
            for r in self.results:
                timed = r.status in (RAN, UP_TO_DATE, RESTORED, FAILED, NOT_HERE)
                secs = f"{r.seconds:7.1f}s" if timed else ""
                extra = f"  ({r.reason})" if r.reason else ""
                lines.append(f"  {r.name:<{width}}  {r.status:<{sw}}  {secs:>8}{extra}")
        total = sum(r.seconds for r in self.results)
        if self.dry:
            restore = f", {self.count(WOULD_RESTORE)} would restore" if self.count(WOULD_RESTORE) else ""
            lines.append(
                f"  {self.count(WOULD_RUN)} would run{restore}, {self.count(UP_TO_DATE)} up to date "
                "(nothing was run: --dry)"
            )
        else:
            parts = [f"{self.count(RAN)} ran", f"{self.count(UP_TO_DATE)} up to date"]
            if self.count(RESTORED):
                parts.append(f"{self.count(RESTORED)} restored from cache")
            if self.count(NOT_HERE):
                parts.append(f"{self.count(NOT_HERE)} skipped (data not here, not needed)")
            if self.count(FAILED):
                parts.append(f"{self.count(FAILED)} failed")
            if self.count(SKIPPED):
                parts.append(f"{self.count(SKIPPED)} not run")
            lines.append(f"  {', '.join(parts)}; total {total:.1f}s")
        return "\n".join(lines)


# --------------------------------------------------------------------------- checks


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


def _point_dvc_handlers_at_current_streams() -> None:
    """Aim DVC's console handlers at today's stdout/stderr.

    DVC binds its handlers to the streams of the moment its logging was first set up; when
    those were replaced since (an embedding program, a test runner's capture), writing to the
    old, closed stream would fail the stage.
    """
    for name in ("dvc", "dvc_objects", "dvc_data"):
        for handler in logging.getLogger(name).handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                # not setStream(): it flushes the old stream, which may be closed
                with handler.lock or contextlib.nullcontext():
                    handler.stream = sys.stderr if handler.level >= logging.WARNING else sys.stdout


def _stage_failed(
    summary: RunSummary, name: str, seconds: float, reason: str, rest: Sequence[Stage], message: str
) -> PipelineError:
    """Record a failed stage and the ones it leaves unrun; the error to raise carries the summary."""
    summary.results.append(StageResult(name, FAILED, seconds, reason=reason))
    summary.results.extend(StageResult(stage.addressing, SKIPPED) for stage in rest)
    err = PipelineError(message)
    err.summary = summary  # type: ignore[attr-defined]
    return err


@dataclass
class RunPlan:
    """The stages to reproduce and what is known about each before anything runs."""

    steps: list[Stage]
    upstream_of: dict[str, set[str]]  # stage -> the planned stages it depends on
    targets: set[str]  # what the user asked to reach: must end with its outputs here
    forced: set[str]
    outputs: dict[str, str]  # stage -> where its missing outputs come from (`plan_outputs`)
    allow_missing: bool = False

    def missing_ok(self, stage: Stage) -> bool:
        """`--allow-missing` for this stage; a needed one gets DVC's plain semantics instead."""
        return (
            self.allow_missing
            and not missing_uncached_outs(stage)
            and self.outputs.get(stage.addressing) is None
        )


def make_plan(
    repo: Repo, code: str, until: str | None, force: bool, force_stages: Sequence[str], allow_missing: bool
) -> RunPlan:
    """DVC's plan for the language, with the dependencies, targets, forced stages and output sources."""
    from dvc.exceptions import DvcException

    try:
        steps = plan(repo, code, until)
    except DvcException as exc:
        raise PipelineError(f"{repo.root_dir}/dvc.yaml: {exc}") from exc
    graph = repo.index.graph  # points from a stage to its dependencies
    upstream_of = {
        s.addressing: {u.addressing for u in graph.successors(s)} if s in graph else set() for s in steps
    }
    targets = sinks(steps, graph)
    forced = {s.addressing for s in steps if force or stage_base(s.addressing) in force_stages}
    outputs = plan_outputs(repo, steps, targets, forced) if allow_missing else {}
    return RunPlan(steps, upstream_of, {s.addressing for s in targets}, forced, outputs, allow_missing)


@contextlib.contextmanager
def dvc_console() -> Iterator[None]:
    """DVC prints its familiar repro output through its own handlers (ours would print it twice)."""
    dvc_logger = logging.getLogger("dvc")
    old_level, old_propagate = dvc_logger.level, dvc_logger.propagate
    if log.isEnabledFor(logging.DEBUG):
        dvc_logger.setLevel(logging.DEBUG)
    elif not dvc_logger.isEnabledFor(logging.INFO):
        dvc_logger.setLevel(logging.INFO)
    dvc_logger.propagate = False
    _point_dvc_handlers_at_current_streams()
    try:
        yield
    finally:
        dvc_logger.setLevel(old_level)
        dvc_logger.propagate = old_propagate


def dry_result(repo: Repo, stage: Stage, run_plan: RunPlan, will_run: set[str]) -> StageResult:
    """What reproducing `stage` would do, and why (adds it to `will_run` when it would run)."""
    from dvc.repo import lock_repo

    name = stage.addressing
    stage_force = name in run_plan.forced
    source = run_plan.outputs.get(name)
    with lock_repo(repo):
        changed = stage_force or stage.changed(allow_missing=run_plan.missing_ok(stage))
        why = describe_changes(stage) if changed and not stage_force else ""
    runs_before = sorted(run_plan.upstream_of[name] & will_run)
    if source in (FROM_CACHE, FROM_REMOTE) and not runs_before:
        return StageResult(name, WOULD_RESTORE, reason=f"outputs not here; from the {source}")
    if not (changed or runs_before or source == FROM_RUN):
        return StageResult(name, UP_TO_DATE)
    reason = "forced" if stage_force else why
    if source == FROM_RUN and not stage_force:
        reason = "outputs not here, in the cache or on the remote"
    will_run.add(name)
    return StageResult(name, WOULD_RUN, reason=reason or f"if {', '.join(runs_before)} changes its output")


def warn_before_running(repo: Repo, stage: Stage, run_plan: RunPlan, hint: bool) -> bool:
    """Say when DVC will recompute only because data is missing; True when the hint was given."""
    name = stage.addressing
    stage_force = name in run_plan.forced
    hinted = False
    if hint and not run_plan.allow_missing and not stage_force and only_data_missing(repo, stage):
        hinted = True
        log.warning(
            "%s: nothing changed, only its data is not here, so DVC recomputes it; on a "
            "machine that pulled just what it needs (a GPU box), add --allow-missing",
            name,
        )
    recorded = all(out.hash_info for out in stage.outs if not out.exists)
    if run_plan.outputs.get(name) == FROM_RUN and not stage_force and recorded:
        log.warning(
            "%s: dvc.lock records outputs that are not here, in the DVC cache or on the remote: running it",
            name,
        )
    return hinted


def reproduce_stage(repo: Repo, stage: Stage, run_plan: RunPlan, pull: bool) -> tuple[bool, str, list[str]]:
    """Reproduce one stage (`dvc repro --single-item`): (DVC did something, outcome, missing outputs).

    The outcome comes from DVC's state before and after (outputs present, the run cache),
    never from its log: "ran", "restored from cache", "up to date" or "data not here".
    """
    name = stage.addressing
    stage_force = name in run_plan.forced
    source = run_plan.outputs.get(name)
    had_outs, _ = outs_present(repo, name)
    from_run_cache = not stage_force and restorable_from_run_cache(repo, name)
    done = repo.reproduce(
        name,
        single_item=True,
        force=stage_force,
        pull=pull or source == FROM_REMOTE,  # a needed stage is pulled from where its outputs are
        allow_missing=run_plan.missing_ok(stage),
    )
    has_outs, missing = outs_present(repo, name)
    if done:
        return True, RESTORED if from_run_cache else RAN, missing
    if has_outs:
        return False, UP_TO_DATE if had_outs else RESTORED, missing
    return False, NOT_HERE, missing


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
    here and nothing downstream needs them: on a GPU box that pulled only the dataset,
    collect/preprocess/speakers stay put (`dvc repro --allow-missing`). Outputs that are
    needed but missing are restored from the cache/remote, or recomputed when they exist
    nowhere (`plan_outputs`); a stage asked for never ends "up to date" without its outputs.
    `force_stages` (base names, e.g. `collect`) re-run even if DVC sees no change: a GitLab
    source can have new recordings that no watched file reflects.
    """
    from dvc.repo import Repo

    root = Path(root).resolve()
    summary = RunSummary(code=code, root=root, dry=dry)
    with dvc_console(), Repo(str(root)) as repo:
        run_plan = make_plan(repo, code, until, force, force_stages, allow_missing)
        if dry:
            will_run: set[str] = set()
            summary.results.extend(dry_result(repo, stage, run_plan, will_run) for stage in run_plan.steps)
            return summary
        hint = True
        for i, stage in enumerate(run_plan.steps, 1):
            print(f"==> [{i}/{len(run_plan.steps)}] {stage.addressing}", flush=True)
            if warn_before_running(repo, stage, run_plan, hint):
                hint = False  # once a run is enough
            result = _run_step(repo, stage, run_plan, pull, summary, run_plan.steps[i:])
            summary.results.append(result)
            print(
                f"==> [{i}/{len(run_plan.steps)}] {result.name}: {result.status} ({result.seconds:.1f}s)",
                flush=True,
            )
    return summary


def _run_step(
    repo: Repo, stage: Stage, run_plan: RunPlan, pull: bool, summary: RunSummary, rest: Sequence[Stage]
) -> StageResult:
    """One stage, timed; a failure (or a needed stage left without outputs) raises with the summary."""
    from dvc.exceptions import DvcException

    name = stage.addressing
    started = time.perf_counter()
    try:
        _, status, missing = reproduce_stage(repo, stage, run_plan, pull)
    except DvcException as exc:
        cause = explain_failure(name, exc)
        raise _stage_failed(
            summary, name, time.perf_counter() - started, cause, rest,
            f"stage '{name}' failed: {cause}; outputs of the stages before it are kept "
            f"(see the log above), fix the problem and re-run the same command",
        ) from exc  # fmt: skip
    seconds = time.perf_counter() - started
    if status == NOT_HERE and (run_plan.outputs.get(name) is not None or name in run_plan.targets):
        raise _stage_failed(
            summary, name, seconds, "outputs missing", rest,
            f"stage '{name}': DVC calls it up to date but {', '.join(missing)} is not here; "
            f"`dvc pull {name}` (if the remote has it) or re-run with --force to recompute it",
        )  # fmt: skip
    return StageResult(name, status, seconds)


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
            "Outputs are in DVC's cache; `dvc push` copies them to the remote, and "
            "`git add dvc.lock params.yaml params languages metrics` records what produced them."
        )
    return 0
