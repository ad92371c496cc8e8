"""What DVC's state says about a language's stages: the plan, why a stage is out of date, where
missing outputs can come from, and what a failure means in the user's terms.

Read from DVC's own objects (stage status, the local cache, the remote, the run cache), never
from its log text, so `run` can tell "ran" from "restored" from "up to date" reliably.
"""

from __future__ import annotations

import errno
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

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


def stage_base(address: str) -> str:
    """`train@demo` -> `train`; `dvc.yaml:train@demo` -> `train`."""
    return address.rsplit(":", 1)[-1].split("@", 1)[0]


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


def missing_uncached_outs(stage: Stage) -> list[str]:
    """`cache: false` outputs that are not on disk: no remote has them, only a re-run makes them."""
    return [str(out) for out in stage.outs if not out.use_cache and not out.exists]


def only_data_missing(repo: Repo, stage: Stage) -> bool:
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


def producers(steps: Sequence[Stage]) -> dict[str, Stage]:
    """Output path -> the stage that writes it."""
    return {out.fs_path: stage for stage in steps for out in stage.outs}


def sinks(steps: Sequence[Stage], graph: Any) -> list[Stage]:
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

    writers = producers(steps)
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
                producer = writers.get(dep.fs_path)
                if producer is not None and not dep.exists:
                    needed.add(producer.addressing)
    return result


def restorable_from_run_cache(repo: Repo, name: str) -> bool:
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


def outs_present(repo: Repo, name: str) -> tuple[bool, list[str]]:
    """(all outputs in the workspace, the missing ones), from a freshly collected stage."""
    stage = repo.stage.collect(name)[0]
    missing = [str(out) for out in stage.outs if not out.exists]
    return not missing, missing


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


# --------------------------------------------------------------------------- running
