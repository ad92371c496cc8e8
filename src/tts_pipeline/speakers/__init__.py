"""The speakers stage as a package: who read which clip.

    clips.py            the input: preprocessed clips of a metadata.csv, their audio
    embedding_cache.py  every clip's embedding, cached by content (`tts_pipeline.cache`)
    duplicates.py       near-duplicate takes, clustered as one point
    clustering.py       HDBSCAN and/or k-means, confidence
    corrections.py      the corrections file (format at its top) and how it is applied
    review_page.py      the self-contained review.html
    review_edit.py      reviewer actions written to the corrections file
    review_server.py    `tts-pipeline speakers review`
    stage.py            the stage: `run_speakers`, `add_arguments`, `run`
    layout.py           the output folder's file names

The names below are re-exported lazily (PEP 562), so importing one module of the package
(e.g. `speakers.corrections`) does not import the stage and its dependencies.
The embedding backends are a library outside the package (`tts_pipeline.embeddings`): evaluate
uses them too.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, tuple[str, ...]] = {
    "clips": ("Clip", "load_clips", "load_samples"),
    "clustering": (
        "CONFIDENCE_TEMPERATURE",
        "UNCERTAIN_BELOW",
        "Clustering",
        "centroid_confidence",
        "cluster_embeddings",
    ),
    "corrections": (
        "Assignment",
        "Corrections",
        "SpeakerCorrection",
        "apply_corrections",
        "corrections_path",
        "load_corrections",
        "parse_corrections",
        "ranked_members",
    ),
    "duplicates": ("DUPLICATE_COSINE", "near_duplicate_groups"),
    "embedding_cache": ("EMBEDDING_VERSION", "EMBED_BATCH", "embed_clips"),
    "layout": (
        "EMBEDDINGS_FILE",
        "INDEX_FILE",
        "REVIEW_FILE",
        "SAMPLES_DIR",
        "SPEAKERS_LEGACY",
        "SPEAKER_IDS_FILE",
    ),
    "review_server": ("make_review_server", "serve_review"),
    "stage": (
        "SpeakersResult",
        "add_arguments",
        "cluster_speakers",
        "run",
        "run_speakers",
        "speaker_ids_document",
        "summarise",
        "write_cluster_sample",
        "write_outputs",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
