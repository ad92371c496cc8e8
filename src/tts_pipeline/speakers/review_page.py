"""The speakers stage's review page: one self-contained HTML file to listen and correct.

Why self-contained: it is a DVC output that travels with `dvc push/pull` and opens from disk
or from `tts-pipeline speakers review`; audio is embedded as small WebM/Opus data URIs and the
2-D map as an inline PNG, so nothing points outside the file.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..audio import encode_webm_opus
from ..pages import render
from .clips import Clip
from .clustering import Clustering
from .corrections import Assignment, Corrections, ranked_members

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]  # fmt: skip


def _audio_uri(samples: np.ndarray, sample_rate: int, max_s: float = 20.0) -> str:
    """A small WebM/Opus data URI (about 4 kB per second) for an <audio> element.

    Encoded at 16 kHz with the fastest Opus setting: about 6x faster than the shared
    48 kHz encoder (the page holds dozens of clips) and plenty for judging a voice.
    """
    data = encode_webm_opus(
        samples[: int(max_s * sample_rate)],
        sample_rate,
        32000,
        opus_rate=16000,
        compression_level=0,
    )
    return "data:audio/webm;base64," + base64.b64encode(data).decode("ascii")


def pca_2d(X: np.ndarray) -> np.ndarray:
    """First two principal components (numpy SVD; deterministic sign)."""
    if len(X) == 0:
        return np.zeros((0, 2))
    centred = X - X.mean(axis=0)
    if len(X) == 1 or not np.any(centred):
        return np.zeros((len(X), 2))
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    comps = vt[:2]
    comps = comps * np.sign(comps[np.arange(len(comps)), np.argmax(np.abs(comps), axis=1)])[:, None]
    points = centred @ comps.T
    return np.pad(points, ((0, 0), (0, 2 - points.shape[1])))


def map_png(X: np.ndarray, assignment: Assignment) -> bytes:
    """Scatter of the embeddings (PCA) coloured by speaker; uncertain clips as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = pca_2d(X)
    fig, ax = plt.subplots(figsize=(7, 5), dpi=100)
    for sid, name in enumerate(assignment.names):
        colour = PALETTE[sid % len(PALETTE)]
        sure = (assignment.labels == sid) & ~assignment.uncertain
        unsure = (assignment.labels == sid) & assignment.uncertain
        ax.scatter(points[sure, 0], points[sure, 1], s=28, c=colour, label=f"{sid}: {name}", alpha=0.85)
        if unsure.any():
            ax.scatter(points[unsure, 0], points[unsure, 1], s=50, c=colour, marker="x")
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title("speaker embeddings (PCA); x = uncertain")
    if assignment.names:
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def corrections_block(name: str, anchors: Sequence[str], clips: Sequence[str], comment: str = "") -> str:
    """The YAML lines for one speaker in the corrections file."""
    lines = [f"  {_yaml_key(name)}:{'  # ' + comment if comment else ''}"]
    if anchors:
        lines.append("    anchors:")
        lines += [f"      - {_yaml_key(a)}" for a in anchors]
    if clips:
        lines.append("    clips:")
        lines += [f"      - {_yaml_key(c)}" for c in clips]
    return "\n".join(lines)


def _yaml_key(name: str) -> str:
    """`name` as a one-line YAML scalar: quoted only when needed ('#', ': '), never wrapped or escaped."""
    import yaml

    text = yaml.safe_dump(name, default_style=None, allow_unicode=True, width=float("inf"))
    return text.strip().removesuffix("...").strip()


def suggested_corrections(
    X: np.ndarray, assignment: Assignment, corrections: Corrections, anchors_per_speaker: int = 2
) -> str:
    """A complete corrections file reproducing this result: named entries as written, the
    automatic speakers with their most representative clips as anchors."""
    written = {s.name: s for s in corrections.speakers}
    blocks = ["speakers:"]
    for sid, name in enumerate(assignment.names):
        count = int((assignment.labels == sid).sum())
        if assignment.named[sid] and name in written:
            entry = written[name]
            blocks.append(corrections_block(name, entry.anchors, entry.clips, f"id {sid}, {count} clips"))
        else:
            representative, _ = ranked_members(X, assignment, sid)
            anchors = [assignment.file_names[i] for i in representative[:anchors_per_speaker]]
            blocks.append(corrections_block(name, anchors, [], f"id {sid}, {count} clips: rename me"))
    return "\n".join(blocks) + "\n"


class _Rows:
    """Clip rows of the page; each clip's audio is encoded once, only for the clips shown."""

    def __init__(
        self,
        clips: Sequence[Clip],
        assignment: Assignment,
        load_samples: Callable[[Clip], tuple[np.ndarray, int]],
    ) -> None:
        self.clips, self.assignment, self.load_samples = clips, assignment, load_samples
        self._uris: dict[int, str] = {}

    def uri(self, i: int) -> str:
        if i not in self._uris:
            samples, rate = self.load_samples(self.clips[i])
            self._uris[i] = _audio_uri(samples, rate)
        return self._uris[i]

    def row(self, i: int, with_audio: bool) -> dict[str, Any]:
        a = self.assignment
        sid = int(a.labels[i])
        return {
            "file": self.clips[i].file_name,
            "text": getattr(self.clips[i], "text", ""),
            "duration": float(self.clips[i].duration_s),
            "confidence": float(a.confidence[i]),
            "uncertain": bool(a.uncertain[i]),
            "pinned": bool(a.pinned[i]),
            "speaker_id": sid,
            "speaker": a.names[sid],
            "audio": self.uri(i) if with_audio else "",
        }


def _speaker_card(
    sid: int, X: np.ndarray, rows: _Rows, durations: np.ndarray, written: dict[str, Any], per_speaker: int
) -> dict[str, Any]:
    """One speaker's section: counts, the clearest and the least certain clips, what to paste."""
    assignment = rows.assignment
    name = assignment.names[sid]
    members = assignment.labels == sid
    representative, least = ranked_members(X, assignment, sid)
    shown = [int(i) for i in representative[:per_speaker]]
    rest = [int(i) for i in least if int(i) not in set(shown)][:per_speaker]
    anchors = [assignment.file_names[i] for i in representative[:2]]
    if assignment.named[sid] and name in written:
        block = corrections_block(name, written[name].anchors, written[name].clips)
        intro, intro_end = "Named in", " by this entry:"
    else:
        block = corrections_block("Name_of_reader", anchors, [])
        intro, intro_end = "To name this speaker, add to", " (with the reader's name):"
    return {
        "id": sid,
        "name": name,
        "colour": PALETTE[sid % len(PALETTE)],
        "count": int(members.sum()),
        "hours": float(durations[members].sum() / 3600),
        "mean_confidence": float(assignment.confidence[members].mean()),
        "uncertain": int(assignment.uncertain[members].sum()),
        "named": bool(assignment.named[sid]),
        "representative": [rows.row(i, True) for i in shown],
        "least": [rows.row(i, True) for i in rest],
        "intro": intro,
        "intro_end": intro_end,
        "block": block,
        "merge": "\n".join(f"      - {_yaml_key(a)}" for a in anchors[:1]),
        "moves": "\n".join(f"      - {_yaml_key(assignment.file_names[i])}" for i in rest[:3]),
    }


def render_review_page(
    clips: Sequence[Clip],
    X: np.ndarray,
    clustering: Clustering,
    assignment: Assignment,
    metrics: dict[str, Any],
    *,
    corrections: Corrections,
    per_speaker: int = 5,
    corrections_file: Path | None = None,
    load_samples: Callable[[Clip], tuple[np.ndarray, int]],
    notes: Sequence[str] = (),
    data: dict[str, Any] | None = None,
) -> str:
    """The whole HTML page as a string (template `review.html.j2`).

    `notes` are extra lines under the summary; `data` is merged into the JSON the page's script
    reads (`#review-data`), so other stages can hand the page more facts without a new argument.
    """
    rows = _Rows(clips, assignment, load_samples)
    path_label = str(corrections_file) if corrections_file else "languages/<code>.speakers.yaml"
    durations = np.array([c.duration_s for c in clips], dtype=float)
    written = {s.name: s for s in corrections.speakers}
    speakers = [
        _speaker_card(sid, X, rows, durations, written, per_speaker) for sid in range(assignment.n_speakers)
    ]
    order = sorted(
        range(len(clips)),
        key=lambda i: (not assignment.uncertain[i], float(assignment.confidence[i]), clips[i].file_name),
    )
    page_data: dict[str, Any] = {
        "corrections_file": path_label,
        "speakers": [{"id": s["id"], "name": s["name"], "named": s["named"]} for s in speakers],
    }
    page_data.update(data or {})
    return render(
        "review.html.j2",
        summary={
            "clips": metrics.get("clips", len(clips)),
            "speakers": assignment.n_speakers,
            "uncertain": int(assignment.uncertain.sum()),
            "method": clustering.method,
            "backend": str(metrics.get("backend", "")),
            "silhouette": clustering.silhouette,
        },
        notes=[*clustering.notes, *notes],
        path_label=path_label,
        speakers=speakers,
        clips=[rows.row(i, False) for i in order],
        map_png=base64.b64encode(map_png(X, assignment)).decode("ascii"),
        suggested=suggested_corrections(X, assignment, corrections),
        data=page_data,
    )
