"""The speakers stage's review page: one self-contained HTML file to listen and correct.

Why self-contained: it is a DVC output that travels with `dvc push/pull` and opens from disk
or from `tts-pipeline speakers review`; audio is embedded as small WebM/Opus data URIs and the
2-D map as an inline PNG, so nothing points outside the file.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .speakers import Assignment, Clip, Clustering, Corrections

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]  # fmt: skip

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:70em;padding:0 1em;color:#222}
h1{margin-bottom:.2em} .muted{color:#666} table{border-collapse:collapse}
td,th{padding:.25em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:middle}
section.speaker{border-left:6px solid var(--c);padding:.2em 1em;margin:1.5em 0;background:#fafafa}
.swatch{display:inline-block;width:.9em;height:.9em;background:var(--c);border-radius:50%}
pre{background:#f3f3f3;padding:.8em;overflow-x:auto} audio{height:2em;vertical-align:middle}
.uncertain{color:#b00} img.map{max-width:100%;border:1px solid #ddd}
"""

HOW_TO = """Corrections go into <code>{path}</code> (YAML). Cluster numbers change between runs, so
corrections name <em>clips</em>:
<ul>
<li><b>Name</b> a speaker: copy its block below and replace the key (<code>speaker_N</code>) with the
reader's name. Its <code>anchors</code> find the cluster again on every run.</li>
<li><b>Merge</b> two clusters: put an anchor of each under one name.</li>
<li><b>Move / pin</b> a clip: add it under <code>clips:</code> of the right speaker; it keeps that
speaker whatever the clustering says.</li>
<li><b>Split</b>: list clips under <code>clips:</code> of a new name (no anchors needed).</li>
</ul>
Then run <code>dvc repro</code> (or <code>tts-pipeline speakers --config ...</code>) again."""


def _audio_uri(samples: np.ndarray, sample_rate: int, max_s: float = 20.0) -> str:
    """A small WebM/Opus data URI (about 4 kB per second) for an <audio> element.

    Encoded at 16 kHz with the fastest Opus setting: about 6x faster than the shared
    48 kHz encoder (the page holds dozens of clips) and plenty for judging a voice.
    """
    from .audio import encode_webm_opus

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
    from .speakers import ranked_members

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


def _player(uri: str) -> str:
    return f'<audio controls preload="none" src="{uri}"></audio>'


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
) -> str:
    """The whole HTML page as a string."""
    esc = html.escape
    uri_cache: dict[int, str] = {}

    def uri(i: int) -> str:
        if i not in uri_cache:
            samples, rate = load_samples(clips[i])
            uri_cache[i] = _audio_uri(samples, rate)
        return uri_cache[i]

    def clip_row(i: int) -> str:
        c = float(assignment.confidence[i])
        flag = ' <span class="uncertain">uncertain</span>' if assignment.uncertain[i] else ""
        pin = " (pinned)" if assignment.pinned[i] else ""
        return (
            f'<tr class="clip" data-file="{esc(clips[i].file_name)}"><td>{_player(uri(i))}</td>'
            f"<td><code>{esc(clips[i].file_name)}</code>{pin}</td><td>{clips[i].duration_s:.1f} s</td>"
            f"<td>{c:.2f}{flag}</td></tr>"
        )

    path_label = str(corrections_file) if corrections_file else "languages/<code>.speakers.yaml"
    durations = np.array([c.duration_s for c in clips], dtype=float)
    png = base64.b64encode(map_png(X, assignment)).decode("ascii")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Speaker review</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Speaker review</h1>",
        f'<p class="muted">{metrics.get("clips", len(clips))} clips, {assignment.n_speakers} speaker(s), '
        f"{int(assignment.uncertain.sum())} uncertain; clustering <code>{esc(clustering.method)}</code>, "
        f"embeddings <code>{esc(str(metrics.get('backend', '')))}</code>"
        + (f", silhouette {clustering.silhouette:.2f}" if clustering.silhouette is not None else "")
        + "</p>",
        '<table id="summary"><tr><th></th><th>id</th><th>name</th><th>clips</th><th>hours</th>'
        "<th>mean confidence</th><th>uncertain</th></tr>",
    ]
    for sid, name in enumerate(assignment.names):
        members = assignment.labels == sid
        parts.append(
            f'<tr style="--c:{PALETTE[sid % len(PALETTE)]}"><td><span class="swatch"></span></td><td>{sid}</td>'
            f"<td>{esc(name)}</td><td>{int(members.sum())}</td><td>{durations[members].sum() / 3600:.3f}</td>"
            f"<td>{assignment.confidence[members].mean():.2f}</td><td>{int(assignment.uncertain[members].sum())}</td></tr>"
        )
    parts.append("</table>")
    parts.append(
        f'<h2>Map</h2><img class="map" id="map" alt="2-D map of the speaker embeddings" src="data:image/png;base64,{png}">'
    )
    if clustering.notes:
        parts.append('<p class="muted">' + "<br>".join(esc(n) for n in clustering.notes) + "</p>")

    from .speakers import ranked_members

    for sid, name in enumerate(assignment.names):
        members = assignment.labels == sid
        representative, least = ranked_members(X, assignment, sid)
        colour = PALETTE[sid % len(PALETTE)]
        parts.append(
            f'<section class="speaker" id="speaker-{sid}" style="--c:{colour}"><h2>{sid}: {esc(name)}</h2>'
            f"<p>{int(members.sum())} clips, {durations[members].sum() / 3600:.3f} hours"
            f"{' (named in the corrections file)' if assignment.named[sid] else ''}</p>"
        )
        parts.append('<h3>Most representative</h3><table class="representative">')
        parts += [clip_row(int(i)) for i in representative[:per_speaker]]
        parts.append("</table>")
        rest = [int(i) for i in least if int(i) not in set(representative[:per_speaker].tolist())][
            :per_speaker
        ]
        if rest:
            parts.append('<h3>Least certain</h3><table class="least-certain">')
            parts += [clip_row(i) for i in rest]
            parts.append("</table>")
        anchors = [assignment.file_names[i] for i in representative[:2]]
        written = {s.name: s for s in corrections.speakers}
        if assignment.named[sid] and name in written:
            block = corrections_block(name, written[name].anchors, written[name].clips)
            intro = f"Named in <code>{esc(path_label)}</code> by this entry:"
        else:
            block = corrections_block("Name_of_reader", anchors, [])
            intro = f"To name this speaker, add to <code>{esc(path_label)}</code> (with the reader's name):"
        merge = "\n".join(f"      - {_yaml_key(a)}" for a in anchors[:1])
        parts.append(
            f'<p>{intro}</p><pre class="yaml">speakers:\n{esc(block)}</pre>'
            "<p>To merge this speaker into another one, add this anchor to that speaker's "
            f'<code>anchors:</code>:</p><pre class="yaml">    anchors:\n{esc(merge)}</pre>'
        )
        if rest:
            moves = "\n".join(f"      - {_yaml_key(assignment.file_names[i])}" for i in rest[:3])
            parts.append(
                "<p>To move a clip to another speaker, list it under that speaker's <code>clips:</code>:</p>"
                f'<pre class="yaml">speakers:\n  Other_reader:\n    clips:\n{esc(moves)}</pre>'
            )
        parts.append("</section>")
    parts.append('<h2>Corrections</h2><div class="howto">' + HOW_TO.format(path=esc(path_label)) + "</div>")
    parts.append(
        "<p>A complete corrections file for the current result (rename the keys):</p>"
        f'<pre class="yaml" id="corrections">{esc(suggested_corrections(X, assignment, corrections))}</pre>'
    )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
