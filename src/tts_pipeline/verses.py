"""Which verses need a voice: the text cells of the Codex project with no usable recording.

Shared by the `synthesize` stage and the try-it page (`webdemo`). The collect rules come from
`codex.py`; a GitLab source is read through `writeback.gitlab_documents`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from . import codex
from .voice import VerseToVoice
from .writeback import gitlab_documents

if TYPE_CHECKING:  # pragma: no cover
    from .config import Config

log = logging.getLogger(__name__)


def missing_verses(documents: Iterable[tuple[str, bytes | None]]) -> tuple[list[VerseToVoice], list[str]]:
    """The text cells without a usable recording, in document order, and the documents skipped.

    `documents` is (path, bytes) of each `.codex` file. The rules are collect's (`codex.py`);
    a take this pipeline wrote back (`metadata.synthetic`) is not a recording, so its verse
    stays listed and re-runs keep producing (and write-back deduplicating) it. A broken
    document is reported and skipped (its verses are not voiced), the others still are.
    """
    cells: list[codex.Cell] = []
    problems: list[str] = []
    for path, data in documents:
        if data is None:
            problems.append(f"{path}: cannot read the file")
            continue
        try:
            cells.extend(c for c in codex.parse_codex_bytes(data, path) if codex.needs_recording(c))
        except codex.CodexError as exc:
            log.error("%s", exc)
            problems.append(str(exc))
    stems = codex.cell_file_stems(cells)
    verses = [
        VerseToVoice(verse_id=c.verse_id, cell_id=c.cell_id, document=c.document, text=c.text, stem=stem)
        for c, stem in zip(cells, stems, strict=True)
    ]
    return verses, problems


def local_documents(project_dir: str | Path) -> list[tuple[str, bytes | None]]:
    """(path, bytes) of a local project's `.codex` documents; None for one that cannot be read."""
    out: list[tuple[str, bytes | None]] = []
    for path in codex.iter_project_documents(project_dir):
        try:
            out.append((str(path), path.read_bytes()))
        except OSError as exc:  # named and skipped by missing_verses, like a broken document
            log.error("%s: cannot read (%s); its verses are skipped", path, exc.strerror)
            out.append((str(path), None))
    return out


def source_documents(cfg: Config) -> list[tuple[str, bytes | None]]:
    """(path, bytes) of every `.codex` document of the configured source (local or GitLab)."""
    if cfg.require_source("synthesize").type == "local":
        return local_documents(cfg.source.path or ".")
    return gitlab_documents(cfg)
