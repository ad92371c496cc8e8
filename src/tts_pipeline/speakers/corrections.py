"""The human corrections of the speakers stage: the file, its checks, and how it is applied.

Clustering (`clustering.py`) finds who read which clip; people correct it here, and the
stage applies the corrections after every clustering (`apply_corrections`).

Corrections file: ``languages/<code>.speakers.yaml`` (beside the language config)
--------------------------------------------------------------------------------
Cluster numbers are not stable (new clips, another backend, other settings renumber them), so
corrections never name a cluster by number: they name *clips*, and clusters are found through
them on every run::

    speakers:
      Maria:                        # the reader's name (goes into the dataset and the model)
        anchors:                    # "the cluster containing this clip is Maria":
          - audio/MRK_001_001.wav   #   the whole cluster gets the name; anchors in two
          - audio/MRK_002_004.wav   #   different clusters MERGE those clusters into Maria
        clips:                      # "this clip is Maria", whatever the clustering says:
          - audio/LUK_003_007.wav   #   PIN a clip / move a misplaced clip
      Jonas:
        clips:                      # clips only (no anchors): SPLIT them off into a new speaker
          - audio/LUK_001_001.wav

Rules, applied after clustering, deterministically:
1. Every clip listed (anchors and clips) belongs to that speaker (confidence 1).
2. A cluster holding anchors of one speaker is that speaker. A cluster holding anchors of
   several speakers is divided between them: each clip goes to the speaker whose anchors'
   mean embedding is closest (re-clustering that merged two named people is undone).
3. Clusters with no anchors stay automatic speakers, named ``speaker_<id>``.
4. Final ids are contiguous from 0: named speakers in the order of the file, then automatic
   ones by size (largest first, ties by first clip name).
A clip listed twice, or a malformed file, is an error naming the file and key; a clip that is
no longer in the corpus (dropped by preprocess) is skipped with a warning. The review page
prints the block to paste for each speaker (rename the key, keep the anchors).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..embeddings import l2_normalise
from ..errors import PipelineError
from .clustering import CONFIDENCE_TEMPERATURE, UNCERTAIN_BELOW, Clustering, centroid_confidence

if TYPE_CHECKING:  # pragma: no cover
    from ..config import Config

log = logging.getLogger(__name__)


@dataclass
class SpeakerCorrection:
    name: str
    anchors: list[str] = field(default_factory=list)
    clips: list[str] = field(default_factory=list)


@dataclass
class Corrections:
    path: Path | None = None
    speakers: list[SpeakerCorrection] = field(default_factory=list)


@dataclass
class Assignment:
    """Final result: clip i (in `file_names` order) -> speaker `labels[i]` named `names[...]`."""

    file_names: list[str]
    labels: np.ndarray
    confidence: np.ndarray
    uncertain: np.ndarray
    names: list[str]
    named: list[bool]  # speaker id -> named in the corrections file
    pinned: np.ndarray  # (N,) bool: listed in the corrections file

    @property
    def n_speakers(self) -> int:
        return len(self.names)


def corrections_path(cfg: Config) -> Path:
    """`languages/<code>.speakers.yaml`, beside the language config."""
    return cfg.corrections_path


def _clip_list(value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise PipelineError(
            f"{where}: expected a list of clip file names (e.g. audio/MRK_001_001.wav), got {value!r}"
        )
    return [v.strip() for v in value]


def parse_corrections(data: Any, path: Path | None, lines: dict[str, int] | None = None) -> Corrections:
    """Validate the YAML structure documented at the top of this module.

    `lines` (dotted key -> 1-based line, from `_key_lines`) lets each error name its line.
    """
    where = str(path or "corrections")
    lines = lines or {}

    def at(key: str) -> str:
        return f"{where} line {lines[key]}: {key}" if key in lines else f"{where}: {key}"

    if data is None:
        return Corrections(path)
    if not isinstance(data, dict):
        raise PipelineError(f"{where} line 1: expected a mapping with a 'speakers' key at the top level")
    unknown = set(data) - {"speakers"}
    if unknown:
        first = sorted(unknown, key=lambda k: lines.get(str(k), 0))[0]
        raise PipelineError(
            f"{at(str(first))}: unknown key(s) {', '.join(map(str, sorted(unknown, key=str)))}; "
            "only 'speakers' is allowed"
        )
    speakers = data.get("speakers") or {}
    if not isinstance(speakers, dict):
        raise PipelineError(f"{at('speakers')}: expected a mapping of speaker name -> {{anchors, clips}}")
    result = Corrections(path)
    owner: dict[str, str] = {}
    for name, entry in speakers.items():
        key = at(f"speakers.{name}")
        if not isinstance(name, str) or not name.strip():
            raise PipelineError(f"{key}: speaker names must be non-empty strings, got {name!r}")
        if entry is None:
            entry = {}
        if not isinstance(entry, dict):
            raise PipelineError(f"{key}: expected a mapping with 'anchors' and/or 'clips', got {entry!r}")
        bad = set(entry) - {"anchors", "clips"}
        if bad:
            raise PipelineError(
                f"{key}: unknown key(s) {', '.join(map(str, sorted(bad, key=str)))}; use 'anchors' and 'clips'"
            )
        item = SpeakerCorrection(
            name.strip(),
            _clip_list(entry.get("anchors"), at(f"speakers.{name}.anchors")),
            _clip_list(entry.get("clips"), at(f"speakers.{name}.clips")),
        )
        for kind, clip_names in (("anchors", item.anchors), ("clips", item.clips)):
            for clip in clip_names:
                if clip in owner:
                    raise PipelineError(
                        f"{at(f'speakers.{name}.{kind}')}: {clip} is already listed under {owner[clip]}; "
                        "a clip has one speaker"
                    )
                owner[clip] = f"speakers.{name}"
        result.speakers.append(item)
    return result


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line of the key, for the first two levels under `speakers`."""
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node: Any, prefix: str, depth: int) -> None:
        if not isinstance(node, yaml.MappingNode) or depth > 2:
            return
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                dotted = f"{prefix}{key_node.value.strip()}"
                lines.setdefault(dotted, key_node.start_mark.line + 1)
                walk(value_node, f"{dotted}.", depth + 1)

    walk(root, "", 0)
    return lines


def load_corrections(path: Path) -> Corrections:
    """Read the corrections file; a missing file means no corrections (the file is optional)."""
    import yaml

    if not path.is_file():
        return Corrections(None)
    try:
        text = path.read_text(encoding="utf-8-sig")
        data = yaml.load(text, Loader=unique_key_loader())  # a SafeLoader
    except UnicodeDecodeError:
        raise PipelineError(f"{path}: not UTF-8 text; save the file as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        what = [getattr(exc, "context", None), getattr(exc, "problem", None)]
        detail = ": ".join(w for w in what if w) or " ".join(str(exc).split())
        raise PipelineError(f"{path}{line}: not valid YAML: {detail}") from None
    return parse_corrections(data, path, _key_lines(text))


def unique_key_loader() -> type:
    """A SafeLoader that refuses a key given twice in one mapping.

    Plain YAML keeps only the last of two equal keys, so a speaker pasted twice from the review
    page would silently lose the first block's anchors and pinned clips.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            seen: set[Any] = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if isinstance(key, str):
                    key = key.strip()
                if not isinstance(key, str | int | float | bool | None):
                    continue  # unhashable: SafeLoader reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (merge the two entries)", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep)

    return UniqueKeyLoader


@dataclass
class _Ownership:
    """Work in progress of `apply_corrections`, per clip: the corrections entry that owns it."""

    owner: np.ndarray  # index into corrections.speakers, -1 = automatic
    confidence: np.ndarray
    uncertain: np.ndarray
    pinned: np.ndarray


def _present(index: dict[str, int], clip_names: list[str], where: str, key: str) -> list[int]:
    """Indices of the listed clips that are in the corpus; the others are skipped with a warning."""
    found = []
    for clip in clip_names:
        if clip in index:
            found.append(index[clip])
        else:
            log.warning(
                "%s: %s: clip %s is not in the corpus (dropped by preprocess?); ignored", where, key, clip
            )
    return found


def _claim_clusters(
    X: np.ndarray,
    raw: np.ndarray,
    anchors: list[list[int]],
    corrections: Corrections,
    own: _Ownership,
    where: str,
) -> None:
    """Rule 2: a cluster with anchors of one speaker is that speaker's; of several, divided by
    the nearest anchors' mean embedding (with a confidence from the similarity margin)."""
    claims: dict[int, list[int]] = {}
    for s_idx, idxs in enumerate(anchors):
        for cluster in sorted({int(raw[i]) for i in idxs}):
            claims.setdefault(cluster, []).append(s_idx)
    for cluster, claimants in sorted(claims.items()):
        members = np.flatnonzero(raw == cluster)
        if len(claimants) == 1:
            own.owner[members] = claimants[0]
            continue
        names = ", ".join(corrections.speakers[c].name for c in claimants)
        log.warning(
            "%s: automatic cluster %d holds anchors of %s; dividing it by nearest anchors",
            where,
            cluster,
            names,
        )
        A = l2_normalise(np.stack([X[anchors[c]].mean(axis=0) for c in claimants]))
        sims = X[members] @ A.T
        own.owner[members] = np.asarray(claimants)[np.argmax(sims, axis=1)]
        top2 = np.sort(sims, axis=1)[:, -2:]
        margin_conf = 1.0 / (1.0 + np.exp(-(top2[:, 1] - top2[:, 0]) / CONFIDENCE_TEMPERATURE))
        own.confidence[members] = margin_conf
        own.uncertain[members] = margin_conf < UNCERTAIN_BELOW


def _final_ids(
    file_names: Sequence[str], raw: np.ndarray, corrections: Corrections, owner: np.ndarray, where: str
) -> tuple[np.ndarray, list[str], list[bool]]:
    """Rule 4: named speakers in file order, then automatic clusters by size (ties: first clip)."""
    final = np.full(len(file_names), -1, dtype=int)
    names: list[str] = []
    named: list[bool] = []
    for s_idx, s in enumerate(corrections.speakers):
        members = owner == s_idx
        if not members.any():
            log.warning(
                "%s: speakers.%s: none of its clips is in the corpus; no such speaker this run", where, s.name
            )
            continue
        final[members] = len(names)
        names.append(s.name)
        named.append(True)
    auto = owner < 0
    groups = sorted(
        {int(c) for c in raw[auto]},
        key=lambda c: (
            -int((auto & (raw == c)).sum()),
            min(file_names[i] for i in np.flatnonzero(auto & (raw == c))),
        ),
    )
    taken = set(names)
    for c in groups:
        sid = len(names)
        name = f"speaker_{sid}"
        while name in taken:  # a corrections name that looks automatic
            name += "_auto"
        final[auto & (raw == c)] = sid
        names.append(name)
        named.append(False)
        taken.add(name)
    return final, names, named


def apply_corrections(
    file_names: Sequence[str], X: np.ndarray, clustering: Clustering, corrections: Corrections
) -> Assignment:
    """Turn automatic clusters + corrections into final contiguous speaker ids (rules in the module doc)."""
    n = len(file_names)
    index = {name: i for i, name in enumerate(file_names)}
    where = str(corrections.path or "corrections")
    raw = clustering.labels
    own = _Ownership(
        np.full(n, -1, dtype=int),
        clustering.confidence.astype(float).copy(),
        clustering.uncertain.copy(),
        np.zeros(n, dtype=bool),
    )
    anchors = [_present(index, s.anchors, where, f"speakers.{s.name}.anchors") for s in corrections.speakers]
    _claim_clusters(X, raw, anchors, corrections, own, where)
    for s_idx, s in enumerate(corrections.speakers):  # rule 1: every listed clip is that speaker's
        for i in anchors[s_idx] + _present(index, s.clips, where, f"speakers.{s.name}.clips"):
            own.owner[i] = s_idx
            own.pinned[i] = True
    own.confidence[own.pinned] = 1.0
    own.uncertain[own.pinned] = False
    final, names, named = _final_ids(file_names, raw, corrections, own.owner, where)
    # Confidence of automatic clips against the final speakers (merges/splits change centroids).
    if len(names) > 1:
        conf_final, _ = centroid_confidence(X, final, len(names))
        keep = ~own.pinned & (own.owner < 0)
        own.confidence[keep] = np.minimum(own.confidence[keep], conf_final[keep])
        own.uncertain[keep] = own.uncertain[keep] | (conf_final[keep] < UNCERTAIN_BELOW)
    return Assignment(list(file_names), final, own.confidence, own.uncertain, names, named, own.pinned)


def ranked_members(X: np.ndarray, assignment: Assignment, sid: int) -> tuple[np.ndarray, np.ndarray]:
    """(most representative first, least certain first) clip indices of speaker `sid`."""
    members = np.flatnonzero(assignment.labels == sid)
    centroid = X[members].mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    sims = X[members] @ centroid
    names = np.array([assignment.file_names[i] for i in members])
    representative = members[np.lexsort((names, -sims))]
    least = members[np.lexsort((names, sims, assignment.confidence[members]))]
    return representative, least
