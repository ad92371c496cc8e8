"""`tts-pipeline experiments`: the DVC experiments of one language as a table a person can read.

`dvc exp show` prints every setting of every stage and every dependency hash (hundreds of
columns), so at terminal width every cell is "…". This reads the same data
(`dvc exp show --json`, DVC's stable machine-readable output) and prints only the settings
whose values differ between the rows and the headline metrics of the language, best first;
`--compare` then shows the two best side by side (`dvc exp diff`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config
from .dvc_state import find_dvc_root
from .errors import PipelineError

#: (metrics file under metrics/<code>/, key, short name, True when higher is better)
HEADLINE_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("evaluate.json", "mcd_dtw", "MCD", False),
    ("evaluate.json", "speaker_similarity", "spk_sim", True),
    ("train.json", "best_val_loss", "val_loss", False),
    ("train.json", "step", "steps", True),
)
#: Settings that say which data/run a row is, not how it was trained: never "what changed".
NOT_SETTINGS = ("languages.",)


@dataclass
class ExpRow:
    """One row: the workspace, a commit, or an experiment on top of one."""

    name: str
    rev: str
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str = ""


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def _row(entry: dict[str, Any], code: str) -> ExpRow:
    data = entry.get("data") or {}
    rev = str(entry.get("rev") or data.get("rev") or "")
    name = entry.get("name") or (rev if rev == "workspace" else rev[:7])
    params: dict[str, Any] = {}
    for path, content in (data.get("params") or {}).items():
        prefix = "" if path == "params.yaml" else f"{path}:"
        if path.startswith("languages/") and Path(path).stem != code:
            continue
        params.update({f"{prefix}{k}": v for k, v in _flatten((content or {}).get("data") or {}).items()})
    metrics: dict[str, Any] = {}
    for path, content in (data.get("metrics") or {}).items():
        if Path(path).parent.name == code:
            metrics.update(
                {f"{Path(path).name}:{k}": v for k, v in _flatten((content or {}).get("data") or {}).items()}
            )
    error = entry.get("error") or {}
    return ExpRow(
        name, rev, params, metrics, str(error.get("msg", "")) if isinstance(error, dict) else str(error)
    )


def parse_exp_show(payload: list[dict[str, Any]], code: str) -> list[ExpRow]:
    """Rows of `dvc exp show --json`: each baseline, then the experiments made on top of it."""
    rows: list[ExpRow] = []
    for baseline in payload:
        rows.append(_row(baseline, code))
        for exp in baseline.get("experiments") or []:
            for rev in exp.get("revs") or []:
                rows.append(_row(rev, code))
    return rows


def changed_settings(rows: list[ExpRow]) -> list[str]:
    """Settings whose value is not the same in every row, in params order."""
    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row.params if k not in keys)
    return [
        k
        for k in keys
        if not k.startswith(NOT_SETTINGS)
        and len({json.dumps(r.params.get(k), sort_keys=True, default=str) for r in rows}) > 1
    ]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def rank(rows: list[ExpRow], sort_by: str) -> list[ExpRow]:
    """Best first by the headline metric `sort_by` (its short name); rows without it last."""
    spec = next((m for m in HEADLINE_METRICS if m[2] == sort_by), None)
    if spec is None:
        raise PipelineError(
            f"--sort-by {sort_by}: not a headline metric ({', '.join(m[2] for m in HEADLINE_METRICS)})"
        )
    key = f"{spec[0]}:{spec[1]}"

    def order(row: ExpRow) -> tuple[int, float]:
        value = _number(row.metrics.get(key))
        if value is None:
            return (1, 0.0)
        return (0, -value if spec[3] else value)

    return sorted(rows, key=order)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value) if not isinstance(value, (list, dict)) else json.dumps(value)


def format_table(rows: list[ExpRow], settings: list[str], max_width: int = 24) -> str:
    """Aligned columns: experiment, the changed settings (short names), the headline metrics."""
    headers = ["experiment"] + [s.rsplit(".", 1)[-1] for s in settings] + [m[2] for m in HEADLINE_METRICS]
    table = [headers]
    for row in rows:
        cells = [row.name] + [_cell(row.params.get(s)) for s in settings]
        cells += [_cell(row.metrics.get(f"{m[0]}:{m[1]}")) for m in HEADLINE_METRICS]
        table.append([c if len(c) <= max_width else c[: max_width - 1] + "…" for c in cells])
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if settings:
        lines.append("changed settings: " + ", ".join(settings))
    else:
        lines.append("no setting differs between these rows")
    return "\n".join(lines)


def _dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


def load_rows(root: Path, code: str, all_commits: bool = False) -> list[ExpRow]:
    args = ["exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    proc = _dvc(*args, cwd=root)
    if proc.returncode != 0:
        raise PipelineError(f"{root}: `dvc {' '.join(args)}` failed: {proc.stderr.strip().splitlines()[-1:]}")
    try:
        payload = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{root}: `dvc exp show --json` printed no JSON ({exc})") from exc
    return parse_exp_show(payload, code)


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    names = ", ".join(m[2] for m in HEADLINE_METRICS)
    parser.add_argument(
        "--sort-by", default="MCD", metavar="METRIC", help=f"order, best first ({names}; default: MCD)"
    )
    parser.add_argument("--all-commits", action="store_true", help="also experiments on other commits")
    parser.add_argument(
        "--compare", action="store_true", help="then the two best side by side (dvc exp diff)"
    )


def run(cfg: Config, args: argparse.Namespace) -> int:
    root = find_dvc_root(Path.cwd())
    rows = load_rows(root, cfg.code, args.all_commits)
    ranked = rank(rows, args.sort_by)
    print(format_table(ranked, changed_settings(rows)))
    if args.compare:
        named = [r for r in ranked if r.rev != "workspace"]
        if len(named) < 2:
            raise PipelineError(
                "--compare: fewer than two experiments or commits to compare; run some with `dvc exp run`"
            )
        best, second = named[0], named[1]
        print(f"\n{best.name} (best) vs {second.name}: `dvc exp diff {second.name} {best.name}`")
        proc = _dvc("exp", "diff", second.name, best.name, cwd=root)
        print(proc.stdout or proc.stderr)
    return 0
