"""Reviewer actions on the corrections file: rename, merge, move, pin and split.

Why round-trip YAML (ruamel.yaml): the file is edited by people too, so comments, key order
and quoting survive an edit; the result is checked as the stage will read it before it is saved.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import PipelineError
from ..fsutil import atomic_write_text, read_json
from .corrections import parse_corrections, unique_key_loader
from .layout import SPEAKER_IDS_FILE


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
    "# Speaker corrections (format: top of src/tts_pipeline/speakers/corrections.py), written by\n"
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
        path = output_dir / SPEAKER_IDS_FILE
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

    Actions mirror what the static page tells people to paste (module doc of speakers/corrections.py):
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

        text = self.text()
        try:
            parse_corrections(yaml.load(text, Loader=unique_key_loader()), self.path)
        except (PipelineError, yaml.YAMLError) as exc:
            raise EditError(f"the change would make the file invalid ({exc}); nothing written") from None
        backup = None
        if self.path.is_file():
            backup = self.path.with_name(self.path.name + ".bak")
            shutil.copy2(self.path, backup)
        atomic_write_text(self.path, text)
        return backup
