"""Fixtures several test files share."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def embedder():
    """The default speaker embedder (Resemblyzer, weights in the wheel), loaded once per run.

    Inference only (the model is in eval mode), so tests can share it.
    """
    from tts_pipeline.speakers.embeddings import get_embedder

    return get_embedder("resemblyzer")
