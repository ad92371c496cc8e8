"""Speaker-embedding backends: the resemblyzer backend on real LibriSpeech clips."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

from tts_pipeline.audio import decode_audio
from tts_pipeline.errors import PipelineError
from tts_pipeline.speakers.embeddings import (
    EmbeddingError,
    SpeakerEmbedder,
    cosine_similarity,
    embed_file,
    embed_many,
    get_embedder,
)

DATA = Path(__file__).parent / "data" / "librispeech-6spk"
CLIPS = {
    "1688a": DATA / "1688" / "1688-142285-0000.webm",
    "1688b": DATA / "1688" / "1688-142285-0001.webm",
    "3080a": DATA / "3080" / "3080-5032-0000.webm",
    "3080b": DATA / "3080" / "3080-5032-0001.webm",
}


@pytest.fixture(scope="module")
def wavs() -> dict[str, np.ndarray]:
    return {k: decode_audio(p, 16000) for k, p in CLIPS.items()}


def test_interface_shape_norm_dtype(embedder, wavs):
    assert isinstance(embedder, SpeakerEmbedder)
    assert embedder.name == "resemblyzer" and embedder.dim == 256
    vec = embedder.embed(wavs["1688a"], 16000)
    assert vec.shape == (256,) and vec.dtype == np.float32
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-5


def test_same_speaker_is_closer_than_other_speaker(embedder, wavs):
    e = {k: embedder.embed(w, 16000) for k, w in wavs.items()}
    same = [cosine_similarity(e["1688a"], e["1688b"]), cosine_similarity(e["3080a"], e["3080b"])]
    other = [cosine_similarity(e[a], e[b]) for a in ("1688a", "1688b") for b in ("3080a", "3080b")]
    assert min(same) > max(other) + 0.1


def test_matches_resemblyzer_reference_pipeline(embedder, wavs):
    """Our vectorised preprocessing + batching gives resemblyzer's own embeddings."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from resemblyzer import preprocess_wav
    two = [wavs["1688a"], wavs["3080b"]]
    batch = embed_many(embedder, two, 16000)
    reference = np.stack([embedder.encoder.embed_utterance(preprocess_wav(w, 16000)) for w in two])
    assert batch.shape == (2, 256)
    np.testing.assert_allclose(batch, reference, atol=1e-4)


def test_other_sample_rates_are_resampled(embedder, wavs):
    import librosa

    at_48k = librosa.resample(wavs["3080a"], orig_sr=16000, target_sr=48000)
    assert cosine_similarity(embedder.embed(at_48k, 48000), embedder.embed(wavs["3080a"], 16000)) > 0.98


def test_short_clip_is_repeated_not_zero_padded(embedder, wavs):
    short = wavs["1688a"][: 16000 // 2]  # 0.5 s
    vec = embedder.embed(short, 16000)
    assert np.isfinite(vec).all() and abs(float(np.linalg.norm(vec)) - 1) < 1e-5


def test_embed_file_decodes_any_format(embedder, wavs):
    vec = embed_file(embedder, CLIPS["1688a"])
    np.testing.assert_allclose(vec, embedder.embed(wavs["1688a"], 16000), atol=1e-5)


def test_silent_and_empty_audio_raise(embedder):
    with pytest.raises(EmbeddingError):
        embedder.embed(np.zeros(16000, dtype=np.float32), 16000)
    with pytest.raises(EmbeddingError):
        embedder.embed(np.zeros(0, dtype=np.float32), 16000)


@pytest.mark.parametrize("backend", ["pyannote", "speechbrain"])
def test_optional_backends_explain_how_to_install(backend):
    pytest.importorskip("torch")
    try:
        __import__({"pyannote": "pyannote.audio", "speechbrain": "speechbrain"}[backend])
    except ImportError:
        pass
    else:  # pragma: no cover - only on a GPU box with the extra installed
        pytest.skip(f"{backend} is installed here")
    with pytest.raises(PipelineError, match=r"pip install '\.\[gpu\]'"):
        get_embedder(backend)


def test_unknown_backend_is_a_clear_error():
    with pytest.raises(PipelineError, match="unknown backend 'nope'"):
        get_embedder("nope")
