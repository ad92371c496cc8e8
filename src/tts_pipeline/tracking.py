"""MLflow tracking that can never stop a training run.

Store: `MLFLOW_TRACKING_URI` when set, else the embedded `sqlite:///mlflow.db` in the working
directory (MLflow 3's default; gitignored), browsed with `mlflow ui`. The run is tagged with the
DVC experiment (`DVC_EXP_NAME`, which `dvc exp run` sets for the command it runs; also
`DVC_EXP_BASELINE_REV` and `DVC_STAGE`) and the git revision. Params are the effective config,
flattened; nothing is read from the environment into params, and URLs lose any user:password.

Every MLflow call goes through `_safe`: the first failure is logged as a warning and tracking
switches itself off for the rest of the run, so a broken or unreachable store costs a warning,
not a training run.
"""

from __future__ import annotations

import base64
import contextlib
import html
import json
import logging
import mimetypes
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
#: Environment variables DVC sets for the commands of `dvc exp run` / `dvc repro`.
DVC_ENV_TAGS = {
    "DVC_EXP_NAME": "dvc.exp_name",
    "DVC_EXP_BASELINE_REV": "dvc.baseline_rev",
    "DVC_STAGE": "dvc.stage",
}
# userinfo runs to the *last* "@" before the path: a raw "@" in a password must not leak its tail
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)[^/?#\s]*@", re.IGNORECASE)
# src="..." / href="..." (either quote) whose value has no scheme, no leading "/" or "#"
_RELATIVE_REF = re.compile(
    r"""(?P<attr>\b(?:src|href|poster)=)(?P<q>["'])(?P<url>(?![a-z][a-z0-9+.-]*:|/|#)[^"'#?]+)(?P=q)""",
    re.IGNORECASE,
)
_SECRET_KEY = re.compile(r"(token|secret|password|passwd|api_key|credential)", re.IGNORECASE)


def project_root() -> Path:
    """The DVC project: `DVC_ROOT` under `dvc repro`/`dvc exp run`, else the working directory.

    A queued experiment (`dvc exp run --queue`) runs in a temporary copy under .dvc/tmp/exps
    that is deleted afterwards; anything relative to the working directory would vanish with it.
    """
    return Path(os.environ.get("DVC_ROOT") or ".").resolve()


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else the embedded store `mlflow.db` at the project root."""
    explicit = os.environ.get("MLFLOW_TRACKING_URI")
    if explicit:
        return explicit
    if os.environ.get("DVC_ROOT"):
        return f"sqlite:///{project_root() / 'mlflow.db'}"
    return DEFAULT_URI


def use_experiment(mlflow: Any, name: str) -> None:
    """Select (creating if needed) an experiment whose artifacts live at the project root."""
    if mlflow.get_experiment_by_name(name) is None and not os.environ.get("MLFLOW_TRACKING_URI"):
        mlflow.create_experiment(name, artifact_location=(project_root() / "mlartifacts").as_uri())
    mlflow.set_experiment(name)


def git_revision(cwd: str | Path | None = None) -> str | None:
    """HEAD's commit (with `-dirty` when the tree has changes), or None outside git."""
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=10, check=True).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{rev}-dirty" if dirty else rev


def scrub(value: Any) -> Any:
    """Remove credentials embedded in URLs (https://user:token@host -> https://host)."""
    if isinstance(value, str):
        return _URL_USERINFO.sub(r"\g<scheme>", value)
    return value


def flatten_params(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """{"training": {"lr": 1e-4}} -> {"training.lr": "0.0001"}; secret-looking keys dropped.

    Values are strings cut to MLflow's 6000-character limit.
    """
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if _SECRET_KEY.search(str(key)) and not str(key).endswith("_env"):
            continue
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = scrub(str(value))[:6000]  # also URLs inside lists
    return flat


def self_contained_html(page: str | Path) -> str:
    """The page with every relative `src`/`href` to a file beside it inlined as a data: URI.

    MLflow shows an HTML artifact in a sandboxed frame where relative links lead nowhere: the
    listening page's players were dead and its image broken. The copy logged to MLflow carries
    its audio and images inside itself; the page on disk keeps its links (small, diffable).
    Links that leave the page's folder or name no file stay as they are.
    """
    page = Path(page)
    base = page.parent.resolve()

    def inline(match: re.Match[str]) -> str:
        target = (base / html.unescape(match["url"])).resolve()
        if not target.is_file() or not target.is_relative_to(base):
            return match[0]
        mime = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        if target.suffix.lower() == ".wav":
            mime = "audio/wav"  # some platforms say audio/x-wav, which Safari won't play
        data = base64.b64encode(target.read_bytes()).decode("ascii")
        return f"{match['attr']}{match['q']}data:{mime};base64,{data}{match['q']}"

    return _RELATIVE_REF.sub(inline, page.read_text(encoding="utf-8"))


def changed_settings(stage: str, code: str, settings: dict[str, Any]) -> dict[str, str]:
    """Settings of `stage` that differ from the committed frozen file `params/<code>/<stage>.json`.

    Compared with the experiment's baseline commit (`DVC_EXP_BASELINE_REV`) under `dvc exp run`,
    else HEAD: what this run changed. Empty outside git or when the file isn't committed.
    """
    rev = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    try:
        proc = subprocess.run(["git", "show", f"{rev}:params/{code}/{stage}.json"], cwd=project_root(),
                              capture_output=True, text=True, timeout=10)  # fmt: skip
        before = flatten_params(json.loads(proc.stdout)) if proc.returncode == 0 else None
    except (OSError, subprocess.SubprocessError, ValueError):
        before = None
    if before is None:
        return {}
    now = flatten_params(settings)
    return {k: v for k, v in now.items() if before.get(k) != v}


def run_name(stage: str, code: str, settings: dict[str, Any], limit: int = 250) -> str:
    """`<DVC experiment or stage-code> (what changed)`, e.g. `lr5e-5 (learning_rate=5e-05)`.

    So the MLflow run list reads like `dvc exp show`, not a column of identical `train-hsn`.
    """
    name = os.environ.get("DVC_EXP_NAME") or f"{stage}-{code}"
    changes = changed_settings(stage, code, settings)
    if changes:
        name += " (" + ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in changes.items()) + ")"
    return name if len(name) <= limit else name[: limit - 1] + "…"


def run_tags(extra: dict[str, str] | None = None) -> dict[str, str]:
    tags = {tag: os.environ[env] for env, tag in DVC_ENV_TAGS.items() if os.environ.get(env)}
    rev = git_revision()
    if rev:
        tags["git.revision"] = rev
        tags["mlflow.source.git.commit"] = rev.removesuffix("-dirty")
    tags.update(extra or {})
    return tags


class Tracker:
    """One MLflow run (or nothing, when disabled or broken). Safe to call in any state."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.run_id: str | None = None
        self.error: str | None = None  # the first failure (scrubbed), once tracking turned itself off
        self._mlflow: Any = None

    def _safe(self, what: str, fn: Callable[[], Any]) -> Any:
        if not self.enabled:
            return None
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - tracking must never kill training
            # MLflow's messages repeat the tracking URI, credentials included
            self.error = f"{type(exc).__name__}: {scrub(str(exc))}"
            log.warning("MLflow %s failed (%s); continuing without tracking", what, self.error)
            self.enabled = False
            return None

    def start(
        self,
        experiment: str,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str] | None = None,
        resume_run_id: str | None = None,
        tag_resumed: bool = True,
    ) -> str | None:
        """Start (or, with `resume_run_id`, continue) a run; returns its id.

        `tag_resumed=False`: a continued run keeps its own tags (evaluate adding to the training run).
        """

        def _start() -> str:
            import mlflow

            self._mlflow = mlflow
            mlflow.set_tracking_uri(tracking_uri())
            use_experiment(mlflow, experiment)
            run = None
            if resume_run_id:
                try:
                    run = mlflow.start_run(run_id=resume_run_id)
                except Exception as exc:  # noqa: BLE001 - e.g. another store: start a new run
                    log.info(
                        "MLflow run %s not resumable (%s); starting a new one", resume_run_id, scrub(str(exc))
                    )
            if run is None:
                run = mlflow.start_run(run_name=run_name)
                flat = flatten_params(params)
                items = list(flat.items())
                for i in range(0, len(items), 100):
                    mlflow.log_params(dict(items[i : i + 100]))
            elif not tag_resumed:
                return run.info.run_id
            mlflow.set_tags(run_tags(tags))
            return run.info.run_id

        self.run_id = self._safe("start", _start)
        if self.run_id:
            log.info("MLflow run %s at %s", self.run_id, scrub(tracking_uri()))
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self._safe("log_metrics", lambda: self._mlflow.log_metrics(clean, step=step))

    def log_artifacts(self, directory: str | Path, artifact_path: str) -> None:
        self._safe("log_artifacts", lambda: self._mlflow.log_artifacts(str(directory), artifact_path))

    def log_text(self, text: str, name: str) -> None:
        self._safe("log_text", lambda: self._mlflow.log_text(text, name))

    def log_dict(self, data: dict[str, Any], name: str) -> None:
        self._safe("log_dict", lambda: self._mlflow.log_dict(data, name))

    def end_failed(self) -> None:
        """Close the run as FAILED even after tracking turned itself off (never raises)."""
        with contextlib.suppress(Exception):
            if self._mlflow is not None and self._mlflow.active_run() is not None:
                self._mlflow.end_run(status="FAILED")
        self.run_id = None

    def end(self, status: str = "FINISHED") -> None:
        if self._mlflow is not None:
            self._safe("end_run", lambda: self._mlflow.end_run(status=status))
        self.run_id = None
