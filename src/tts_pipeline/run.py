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
import errno
import logging
import re
import sys
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


#: Where a stage's missing outputs will come from (values of `plan_outputs`).
FROM_CACHE, FROM_REMOTE, FROM_RUN = "cache", "remote", "run"


def outputs_source(repo: Repo, stage: Stage) -> str | None:
    """Where the stage's outputs that are not in the workspace can come from.

    None: all are here. `FROM_CACHE`: DVC's local cache has them. `FROM_REMOTE`: the default
    remote has them (their top object, a directory's `.dir` listing or the file, is on the
    remote; nothing is downloaded). `FROM_RUN`:
    nowhere (an uncached output, no remote, or objects missing everywhere): only running the
    stage makes them.
    """
    from dvc.exceptions import DvcException

    missing = [out for out in stage.outs if not out.exists]
    if not missing:
        return None
    if any(not out.use_cache or not out.hash_info for out in missing):
        return FROM_RUN
    if all(not out.changed_cache() for out in missing):
        return FROM_CACHE
    try:
        odb = repo.cloud.get_remote_odb(None, "fetch")
        on_remote = all(odb.exists(out.hash_info.value) for out in missing)
    except DvcException as exc:  # no remote configured, ...
        log.debug("%s: no remote to look in (%s)", stage.addressing, exc)
        return FROM_RUN
    except OSError as exc:  # unreachable remote: say so, then recompute
        log.warning(
            "%s: cannot look in the DVC remote (%s); the stage will be recomputed", stage.addressing, exc
        )
        return FROM_RUN
    return FROM_REMOTE if on_remote else FROM_RUN


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


def _producers(steps: Sequence[Stage]) -> dict[str, Stage]:
    """Output path -> the stage that writes it."""
    return {out.fs_path: stage for stage in steps for out in stage.outs}


def _sinks(steps: Sequence[Stage], graph: Any) -> list[Stage]:
    """The planned stages no other planned stage depends on: what the user asked to reach."""
    depended_on = {u.addressing for s in steps if s in graph for u in graph.successors(s)}
    return [s for s in steps if s.addressing not in depended_on]


def plan_outputs(
    repo: Repo, steps: Sequence[Stage], targets: Sequence[Stage], forced: set[str]
) -> dict[str, str]:
    """Stages whose missing outputs must be made present, and where from (`--allow-missing`).

    Walks the plan backwards from `targets`: a target's outputs are needed; a stage that will
    run (changed, forced, or needed with outputs that exist nowhere) needs every input that is
    not in the workspace, so the stage producing it is needed in turn. A needed stage whose
    outputs are in the cache or on the remote is restored, not re-run, and needs nothing.
    """
    from dvc.repo import lock_repo

    producers = _producers(steps)
    needed = {s.addressing for s in targets}
    result: dict[str, str] = {}
    for stage in reversed(list(steps)):
        name = stage.addressing
        with lock_repo(repo):
            runs = name in forced or stage.changed(allow_missing=True)
        if name in needed:
            source = outputs_source(repo, stage)
            if source is not None:
                result[name] = FROM_RUN if runs else source
                runs = runs or source == FROM_RUN
        if runs:
            for dep in stage.deps:
                producer = producers.get(dep.fs_path)
                if producer is not None and not dep.exists:
                    needed.add(producer.addressing)
    return result


def _restorable_from_run_cache(repo: Repo, name: str) -> bool:
    """Would DVC restore this stage from its cache instead of running its command?

    The check `StageCache.restore` makes before a run (the one `dvc repro --dry` asks, with
    `dry=True`), on a freshly collected, throw-away copy of the stage: first the outputs
    `dvc.lock` records when the inputs are unchanged, else the run cache looked up by the
    inputs as they are now (outputs' recorded hashes cleared, so only the inputs decide).
    """
    from dvc.stage.cache import RunCacheNotFoundError
    from dvc_data.hashfile.hash_info import HashInfo

    cache_log = logging.getLogger("dvc.stage.cache")
    old_level = cache_log.level
    cache_log.setLevel(logging.WARNING)  # its "is cached - skipping run" would mislead here
    try:
        stage = repo.stage.collect(name)[0]
        if not (stage.changed_stage() or not stage.deps_cached() or not all(o.hash_info for o in stage.outs)):
            repo.stage_cache.restore(stage, dry=True)
            return True
        stage.save_deps()
        for out in stage.outs:
            out.hash_info = HashInfo()
        repo.stage_cache.restore(stage, dry=True)
    except RunCacheNotFoundError:
        return False
    except Exception as exc:  # noqa: BLE001 - e.g. an input missing: the stage will run
        log.debug("%s: run cache not checked (%s)", name, exc)
        return False
    finally:
        cache_log.setLevel(old_level)
    return True


def _outs_present(repo: Repo, name: str) -> tuple[bool, list[str]]:
    """(all outputs in the workspace, the missing ones), from a freshly collected stage."""
    stage = repo.stage.collect(name)[0]
    missing = [str(out) for out in stage.outs if not out.exists]
    return not missing, missing


# --------------------------------------------------------------------------- running


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
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    root = Path(root).resolve()
    summary = RunSummary(code=code, root=root, dry=dry)
    dvc_logger = logging.getLogger("dvc")
    old_level = dvc_logger.level
    if log.isEnabledFor(logging.DEBUG):
        dvc_logger.setLevel(logging.DEBUG)
    elif not dvc_logger.isEnabledFor(logging.INFO):
        dvc_logger.setLevel(logging.INFO)  # DVC's own handlers print its familiar repro output
    old_propagate, dvc_logger.propagate = dvc_logger.propagate, False  # ours would print it twice
    _point_dvc_handlers_at_current_streams()
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
            targets = _sinks(steps, graph)
            target_names = {s.addressing for s in targets}
            forced = {s.addressing for s in steps if force or stage_base(s.addressing) in force_stages}
            outputs_plan = plan_outputs(repo, steps, targets, forced) if allow_missing else {}
            will_run: set[str] = set()
            hinted = False
            for i, stage in enumerate(steps, 1):
                name = stage.addressing
                stage_force = name in forced
                source = outputs_plan.get(name)
                if dry:
                    with lock_repo(repo):
                        missing_ok = allow_missing and not _missing_uncached_outs(stage) and source is None
                        changed = stage_force or stage.changed(allow_missing=missing_ok)
                        why = describe_changes(stage) if changed and not stage_force else ""
                    runs_before = sorted(upstream_of[name] & will_run)
                    if source in (FROM_CACHE, FROM_REMOTE) and not runs_before:
                        result = StageResult(
                            name, WOULD_RESTORE, reason=f"outputs not here; from the {source}"
                        )
                    elif changed or runs_before or source == FROM_RUN:
                        reason = "forced" if stage_force else why
                        if source == FROM_RUN and not stage_force:
                            reason = "outputs not here, in the cache or on the remote"
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
                recorded = all(out.hash_info for out in stage.outs if not out.exists)
                if source == FROM_RUN and not stage_force and recorded:
                    log.warning(
                        "%s: dvc.lock records outputs that are not here, in the DVC cache or on "
                        "the remote: running it",
                        name,
                    )
                had_outs, _ = _outs_present(repo, name)
                from_run_cache = not stage_force and _restorable_from_run_cache(repo, name)
                started = time.perf_counter()
                # A needed stage gets DVC's plain semantics (missing outputs count as a change),
                # pulling from the remote when that is where they are.
                missing_ok = allow_missing and not _missing_uncached_outs(stage) and source is None
                try:
                    done = repo.reproduce(
                        name,
                        single_item=True,
                        force=stage_force,
                        pull=pull or source == FROM_REMOTE,
                        allow_missing=missing_ok,
                    )
                except DvcException as exc:
                    cause = explain_failure(name, exc)
                    raise _stage_failed(
                        summary, name, time.perf_counter() - started, cause, steps[i:],
                        f"stage '{name}' failed: {cause}; outputs of the stages before it are kept "
                        f"(see the log above), fix the problem and re-run the same command",
                    ) from exc  # fmt: skip
                seconds = time.perf_counter() - started
                has_outs, missing = _outs_present(repo, name)
                if done:
                    status = RESTORED if from_run_cache else RAN
                elif has_outs:
                    status = UP_TO_DATE if had_outs else RESTORED
                else:
                    status = NOT_HERE
                if status == NOT_HERE and (source is not None or name in target_names):
                    raise _stage_failed(
                        summary, name, seconds, "outputs missing", steps[i:],
                        f"stage '{name}': DVC calls it up to date but {', '.join(missing)} is not here; "
                        f"`dvc pull {name}` (if the remote has it) or re-run with --force to recompute it",
                    )  # fmt: skip
                summary.results.append(StageResult(name, status, seconds))
                print(f"==> [{i}/{total}] {name}: {status} ({seconds:.1f}s)", flush=True)
    finally:
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
            "Outputs are in DVC's cache; `dvc push` copies them to the remote, and "
            "`git add dvc.lock params.yaml params languages metrics` records what produced them."
        )
    return 0
