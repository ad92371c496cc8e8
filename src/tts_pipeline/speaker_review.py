"""The speakers stage's review page: one self-contained HTML file to listen and correct.

Why self-contained: it is a DVC output that travels with `dvc push/pull` and opens from disk
or from `tts-pipeline speakers review`; audio is embedded as small WebM/Opus data URIs and the
2-D map as an inline PNG, so nothing points outside the file.
"""

from __future__ import annotations

import base64
import http.server
import io
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .localserver import PageHandler, bind_server

if TYPE_CHECKING:  # pragma: no cover
    from .speakers import Assignment, Clip, Clustering, Corrections

log = logging.getLogger(__name__)

PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
]  # fmt: skip


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
    from .pages import render
    from .speakers import ranked_members

    uri_cache: dict[int, str] = {}

    def uri(i: int) -> str:
        if i not in uri_cache:
            samples, rate = load_samples(clips[i])
            uri_cache[i] = _audio_uri(samples, rate)
        return uri_cache[i]

    def row(i: int, with_audio: bool) -> dict[str, Any]:
        sid = int(assignment.labels[i])
        return {
            "file": clips[i].file_name,
            "text": getattr(clips[i], "text", ""),
            "duration": float(clips[i].duration_s),
            "confidence": float(assignment.confidence[i]),
            "uncertain": bool(assignment.uncertain[i]),
            "pinned": bool(assignment.pinned[i]),
            "speaker_id": sid,
            "speaker": assignment.names[sid],
            "audio": uri(i) if with_audio else "",
        }

    path_label = str(corrections_file) if corrections_file else "languages/<code>.speakers.yaml"
    durations = np.array([c.duration_s for c in clips], dtype=float)
    written = {s.name: s for s in corrections.speakers}
    speakers = []
    for sid, name in enumerate(assignment.names):
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
        speakers.append(
            {
                "id": sid,
                "name": name,
                "colour": PALETTE[sid % len(PALETTE)],
                "count": int(members.sum()),
                "hours": float(durations[members].sum() / 3600),
                "mean_confidence": float(assignment.confidence[members].mean()),
                "uncertain": int(assignment.uncertain[members].sum()),
                "named": bool(assignment.named[sid]),
                "representative": [row(i, True) for i in shown],
                "least": [row(i, True) for i in rest],
                "intro": intro,
                "intro_end": intro_end,
                "block": block,
                "merge": "\n".join(f"      - {_yaml_key(a)}" for a in anchors[:1]),
                "moves": "\n".join(f"      - {_yaml_key(assignment.file_names[i])}" for i in rest[:3]),
            }
        )
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
        clips=[row(i, False) for i in order],
        map_png=base64.b64encode(map_png(X, assignment)).decode("ascii"),
        suggested=suggested_corrections(X, assignment, corrections),
        data=page_data,
    )


# --------------------------------------------------------------------------- editing the corrections file


class EditError(ValueError):
    """An edit the reviewer asked for that cannot be made (shown on the page, file untouched)."""


def _yaml_round_trip() -> Any:
    """ruamel.yaml in round-trip mode: comments, key order and quoting survive an edit."""
    from ruamel.yaml import YAML

    yaml_rt = YAML()
    yaml_rt.indent(mapping=2, sequence=4, offset=2)  # the layout the docs and the review page use
    yaml_rt.preserve_quotes = True
    yaml_rt.width = 4096
    return yaml_rt


NEW_FILE_HEADER = (
    "# Speaker corrections (format: top of src/tts_pipeline/speakers.py), written by\n"
    "# `tts-pipeline speakers review`; applied on the next `speakers` run.\n"
)


@dataclass
class ReviewState:
    """The last speakers run as the review server sees it: who each clip belongs to."""

    clip_speaker: dict[str, int]
    confidence: dict[str, float]
    names: dict[int, str]

    @classmethod
    def read(cls, output_dir: Path) -> ReviewState:
        from .errors import PipelineError
        from .fsutil import read_json

        path = output_dir / "speaker_ids.json"
        if not path.is_file():
            raise PipelineError(f"{path}: missing; run `tts-pipeline speakers --config ...` first")
        doc = read_json(path)
        clips = doc.get("clips", {})
        return cls(
            {name: int(v["speaker_id"]) for name, v in clips.items()},
            {name: float(v.get("confidence", 0.0)) for name, v in clips.items()},
            {int(k): str(v["name"]) for k, v in doc.get("speakers", {}).items()},
        )

    def members(self, sid: int) -> list[str]:
        """Clips of speaker `sid`, most confident first (ties by name): the best anchors first."""
        names = [c for c, s in self.clip_speaker.items() if s == sid]
        return sorted(names, key=lambda c: (-self.confidence[c], c))


class CorrectionsEditor:
    """Applies one reviewer action to the corrections file, keeping the rest of it as written.

    Actions mirror what the static page tells people to paste (module doc of speakers.py):
    rename = an entry with anchors; merge = an anchor of one speaker under the other's name;
    move/pin = the clip under `clips:`; split = a new entry listing only the clip.
    """

    def __init__(self, path: Path, state: ReviewState) -> None:
        self.path = path
        self.state = state
        self.yaml = _yaml_round_trip()
        from ruamel.yaml.comments import CommentedMap
        from ruamel.yaml.error import YAMLError

        try:
            text = path.read_text(encoding="utf-8-sig") if path.is_file() else NEW_FILE_HEADER
            self.doc = self.yaml.load(text)
            if self.doc is None:  # only comments (or nothing): keep them above a new `speakers:` key
                self.doc = self.yaml.load(text.rstrip("\n") + "\nspeakers:\n")
        except (YAMLError, UnicodeDecodeError) as exc:
            raise EditError(
                f"{path}: cannot read it ({exc}); fix the file by hand, nothing written"
            ) from None
        if not isinstance(self.doc, dict) or not isinstance(self.doc.get("speakers") or {}, dict):
            raise EditError(f"{path}: expected a 'speakers' mapping at the top; fix the file by hand")
        if self.doc.get("speakers") is None:
            self.doc["speakers"] = CommentedMap()
        self.speakers = self.doc["speakers"]
        for name in list(self.speakers):
            if self.speakers[name] is None:  # `Maria:` with nothing under it yet
                self.speakers[name] = CommentedMap()

    # -- helpers

    def _name(self, sid: int) -> str:
        if sid not in self.state.names:
            raise EditError(f"no speaker {sid} in the last run")
        return self.state.names[sid]

    def _listed(self) -> set[str]:
        return {
            c
            for entry in self.speakers.values()
            for key in ("anchors", "clips")
            for c in (entry or {}).get(key) or []
        }

    def _seq(self, entry: Any, key: str) -> Any:
        from ruamel.yaml.comments import CommentedSeq

        if entry.get(key) is None:
            entry[key] = CommentedSeq()
        return entry[key]

    def _find(self, sid: int) -> str | None:
        """The key of speaker `sid` in the file, if it has one.

        Found by its anchors first, by name second: an entry renamed since the last run still
        anchors clips the last run gave to `sid`.
        """
        for key, entry in self.speakers.items():
            if any(self.state.clip_speaker.get(c) == sid for c in (entry or {}).get("anchors") or []):
                return str(key)
        name = self._name(sid)
        return name if name in self.speakers else None

    def _entry(self, sid: int, exclude: str | None = None) -> str:
        """The key of speaker `sid` in the file, adding it (anchored to its clearest clips) if absent."""
        from ruamel.yaml.comments import CommentedMap

        found = self._find(sid)
        if found is not None:
            return found
        name = self._name(sid)
        listed = self._listed() | {exclude}
        anchors = [c for c in self.state.members(sid) if c not in listed][:2]
        if not anchors and exclude is None:
            raise EditError(f"speaker {name} has no clip left to anchor it")
        self.speakers[name] = CommentedMap()
        if anchors:  # none when the only clip is the one being pinned: `clips:` alone holds it
            self._seq(self.speakers[name], "anchors").extend(anchors)
        return name

    def _release(self, clip: str) -> None:
        """Take `clip` out of every entry; an entry that loses its last anchor gets another one."""
        for name in list(self.speakers):
            entry = self.speakers[name]
            touched = False
            for key in ("anchors", "clips"):
                seq = entry.get(key)
                if seq and clip in seq:
                    touched = True
                    del seq[list(seq).index(clip)]
                    if key == "anchors" and not seq:
                        sid = self.state.clip_speaker[clip]
                        listed = self._listed() | {clip}
                        spare = [c for c in self.state.members(sid) if c not in listed]
                        if spare:
                            seq.append(spare[0])
                        else:
                            del entry[key]
            if touched and not entry.get("anchors") and not entry.get("clips"):
                del self.speakers[name]

    def _check_new_name(self, name: Any) -> str:
        if not isinstance(name, str) or not name.strip():
            raise EditError("give the speaker a name")
        name = name.strip()
        if name in self.speakers or name in self.state.names.values():
            raise EditError(f"there is already a speaker called {name}; use merge to join two speakers")
        if "\n" in name or name.startswith(("#", "-", "&", "*", "!", "|", ">", "%", "@", "`")):
            raise EditError(f"{name!r}: a speaker name cannot start with a YAML symbol or span lines")
        return name

    def _clip(self, clip: Any) -> str:
        if not isinstance(clip, str) or clip not in self.state.clip_speaker:
            raise EditError(f"no clip {clip!r} in the last run")
        return clip

    # -- actions

    def rename(self, sid: int, new_name: Any) -> str:
        new_name = self._check_new_name(new_name)
        old = self._entry(sid)
        keys = list(self.speakers)
        value = self.speakers[old]
        comment = self.speakers.ca.items.pop(old, None)
        del self.speakers[old]
        self.speakers.insert(keys.index(old), new_name, value)
        if comment is not None:
            self.speakers.ca.items[new_name] = comment
        return f"speaker {sid} ({old}) renamed {new_name}"

    def merge(self, sid: int, into: int) -> str:
        if sid == into:
            raise EditError("pick two different speakers to merge")
        target = self._entry(into)
        source = self._find(sid)
        if source == target:
            raise EditError(f"{target}: these two are already one speaker in the corrections file")
        if source is not None:
            entry = self.speakers[source] or {}
            for key in ("anchors", "clips"):
                if entry.get(key):
                    self._seq(self.speakers[target], key).extend(list(entry[key]))
            del self.speakers[source]
        else:
            source = self._name(sid)
            listed = self._listed()
            anchor = next((c for c in self.state.members(sid) if c not in listed), None)
            if anchor is None:
                raise EditError(f"speaker {source} has no clip left to anchor it")
            self._seq(self.speakers[target], "anchors").append(anchor)
        return f"{source} merged into {target}"

    def move(self, clip: Any, sid: int) -> str:
        clip = self._clip(clip)
        self._name(sid)  # an unknown speaker fails before anything changes
        self._release(clip)
        target = self._entry(sid, exclude=clip)
        self._seq(self.speakers[target], "clips").append(clip)
        return f"{clip} pinned to {target}"

    def split(self, clip: Any, new_name: Any) -> str:
        from ruamel.yaml.comments import CommentedMap

        clip = self._clip(clip)
        new_name = self._check_new_name(new_name)
        self._release(clip)
        self.speakers[new_name] = CommentedMap()
        self._seq(self.speakers[new_name], "clips").append(clip)
        return f"{clip} split off as the new speaker {new_name}"

    def apply(self, request: dict[str, Any]) -> str:
        """One action from the page: {"action": rename|merge|move|pin|split, ...}."""
        action = request.get("action")
        try:
            if action == "rename":
                return self.rename(int(request["speaker"]), request.get("name"))
            if action == "merge":
                return self.merge(int(request["speaker"]), int(request["into"]))
            if action == "move":
                return self.move(request.get("clip"), int(request["speaker"]))
            if action == "pin":
                clip = self._clip(request.get("clip"))
                return self.move(clip, self.state.clip_speaker[clip])
            if action == "split":
                return self.split(request.get("clip"), request.get("name"))
        except (KeyError, TypeError) as exc:
            raise EditError(f"{action}: missing or bad field {exc}") from None
        raise EditError(f"unknown action {action!r}; expected rename, merge, move, pin or split")

    def text(self) -> str:
        buffer = io.StringIO()
        self.yaml.dump(self.doc, buffer)
        return buffer.getvalue()

    def save(self) -> Path | None:
        """Validate the new text as the speakers stage will, back up the old file, write atomically."""
        import shutil

        import yaml

        from .errors import PipelineError
        from .fsutil import atomic_write_text
        from .speakers import _unique_key_loader, parse_corrections

        text = self.text()
        try:
            parse_corrections(yaml.load(text, Loader=_unique_key_loader()), self.path)
        except (PipelineError, yaml.YAMLError) as exc:
            raise EditError(f"the change would make the file invalid ({exc}); nothing written") from None
        backup = None
        if self.path.is_file():
            backup = self.path.with_name(self.path.name + ".bak")
            shutil.copy2(self.path, backup)
        atomic_write_text(self.path, text)
        return backup


# --------------------------------------------------------------------------- the review server


@dataclass
class ReviewServerApp:
    """What `speakers review` serves: the page, the clips' audio, and the corrections edits."""

    output_dir: Path
    corrections_file: Path
    audio_dir: Path | None = None
    rerun: str = "tts-pipeline speakers --config <language file>"
    lock: threading.Lock = field(default_factory=threading.Lock)

    def state(self) -> dict[str, Any]:
        current = ReviewState.read(self.output_dir)
        text = (
            self.corrections_file.read_text(encoding="utf-8-sig") if self.corrections_file.is_file() else ""
        )
        return {
            "corrections_file": str(self.corrections_file),
            "corrections": text,
            "rerun": self.rerun,
            "speakers": {str(k): v for k, v in sorted(current.names.items())},
            "audio": self.audio_dir is not None,
        }

    def edit(self, request: dict[str, Any]) -> dict[str, Any]:
        with self.lock:  # two tabs must not interleave read-modify-write
            editor = CorrectionsEditor(self.corrections_file, ReviewState.read(self.output_dir))
            message = editor.apply(request)
            backup = editor.save()
        log.info("review: %s (%s)", message, self.corrections_file)
        return {
            "message": message,
            "corrections_file": str(self.corrections_file),
            "backup": str(backup) if backup else None,
            "corrections": editor.text(),
            "rerun": self.rerun,
        }

    def clip_audio(self, name: str) -> Path | None:
        """A clip's audio, only for file names of the last run (no path tricks)."""
        if self.audio_dir is None:
            return None
        from .metadata import resolve_clip_path

        if name not in ReviewState.read(self.output_dir).clip_speaker:
            return None
        path = resolve_clip_path(self.audio_dir, name)
        return path if path.is_file() else None


class ReviewHandler(PageHandler):
    """GET the page, `audio/<clip>` and `api/state`; POST `api/edit`."""

    server_version = "tts-pipeline-review"

    @property
    def app(self) -> ReviewServerApp:
        return self.server.app  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        log.debug("review server: " + format, *args)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        from urllib.parse import unquote, urlparse

        path = unquote(urlparse(self.path).path)
        if path in ("/", "/review.html"):
            page = self.app.output_dir / "review.html"
            self._send(200, page.read_bytes(), "text/html; charset=utf-8")
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        elif path == "/api/state":
            self._json(200, self.app.state())
        elif path.startswith("/audio/"):
            file = self.app.clip_audio(path[len("/audio/") :])
            if file is None:
                self._json(404, {"error": "no such clip"})
                return
            types = {".wav": "audio/wav", ".webm": "audio/webm", ".flac": "audio/flac", ".ogg": "audio/ogg"}
            self._send(200, file.read_bytes(), types.get(file.suffix, "application/octet-stream"))
        else:
            self._json(404, {"error": "not found"})

    do_HEAD = do_GET

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        if self.path != "/api/edit":
            self._json(404, {"error": "not found"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            request = json.loads(self.rfile.read(min(length, 65536)) or b"{}")
            if not isinstance(request, dict):
                raise ValueError("expected a JSON object")
            self._json(200, self.app.edit(request))
        except EditError as exc:
            self._json(400, {"error": str(exc)})
        except ValueError as exc:
            self._json(400, {"error": f"bad request: {exc}"})
        except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
            log.exception("review edit failed")
            self._json(500, {"error": f"{type(exc).__name__}: {exc}"})


def make_review_app_server(app: ReviewServerApp, port: int = 0) -> http.server.ThreadingHTTPServer:
    """The review server on 127.0.0.1 (port 0 = any free port), not yet serving."""

    server = bind_server("127.0.0.1", port, ReviewHandler)
    server.daemon_threads = True
    server.app = app  # type: ignore[attr-defined]
    return server
