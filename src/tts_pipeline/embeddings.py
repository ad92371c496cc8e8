"""Compatibility path: the speaker-embedding backends live in `tts_pipeline.speakers.embeddings`.

Kept so `from tts_pipeline.embeddings import ...` (evaluate, older scripts) still works;
importing it does not import the speakers stage. New code imports the package module.
"""

from .speakers.embeddings import (
    BACKENDS,
    DEFAULT_MODELS,
    EmbeddingError,
    SpeakerEmbedder,
    cosine_similarity,
    embed_file,
    embed_many,
    get_embedder,
    l2_normalise,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_MODELS",
    "EmbeddingError",
    "SpeakerEmbedder",
    "cosine_similarity",
    "embed_file",
    "embed_many",
    "get_embedder",
    "l2_normalise",
]
