"""Speaker-embedding backends behind one small interface (used by speakers and evaluate).

A library, not part of the stage: `evaluate` imports it without importing the speakers stage.

Why an interface: the default must work offline on a CPU laptop (`resemblyzer`, weights ship
in its wheel), while a GPU box may prefer a stronger model (`pyannote`, `speechbrain`) that
needs torchaudio and is therefore only available with the optional `gpu` extra.

Every backend returns one L2-normalised float32 vector per utterance, so callers compare
voices with a plain dot product (cosine similarity)::

    embedder = get_embedder("resemblyzer")
    a = embedder.embed(samples, 16000)          # (embedder.dim,) float32, ||a|| = 1
    b = embed_file(embedder, "clip.wav")
    similarity = float(a @ b)

Heavy imports (torch, resemblyzer, pyannote, speechbrain) happen inside functions.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .audio import decode_audio, resample
from .errors import PipelineError

log = logging.getLogger(__name__)

BACKENDS = ("resemblyzer", "pyannote", "speechbrain")
DEFAULT_MODELS: dict[str, str | None] = {
    "resemblyzer": None,  # the weights bundled with the wheel
    "pyannote": "pyannote/wespeaker-voxceleb-resnet34-LM",
    "speechbrain": "speechbrain/spkrec-ecapa-voxceleb",
}
GPU_EXTRA_HINT = "install the optional GPU extra: pip install '.[gpu]'"


class EmbeddingError(ValueError):
    """Audio that yields no usable embedding (silent, empty); the caller names the file."""


@runtime_checkable
class SpeakerEmbedder(Protocol):
    """One utterance in, one L2-normalised float32 vector of length `dim` out."""

    name: str
    dim: int

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray: ...


def l2_normalise(vectors: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Row-wise (or vector) L2 normalisation as float32."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return (vectors / np.maximum(norms, eps)).astype(np.float32)


def _finish(vector: Any, what: str) -> np.ndarray:
    """Flatten, check finiteness and a non-zero norm, L2-normalise."""
    vector = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(vector).all() or norm < 1e-8:
        raise EmbeddingError(f"{what}: no usable speaker embedding (silent or too short audio?)")
    return (vector / norm).astype(np.float32)


def _check_samples(samples: np.ndarray) -> np.ndarray:
    samples = np.asarray(samples, dtype=np.float32)
    if samples.ndim == 2:  # multi-channel, either layout: the shorter axis is the channels
        samples = samples.mean(axis=int(np.argmin(samples.shape)))
    elif samples.ndim != 1:
        samples = samples.reshape(-1)
    if samples.size == 0:
        raise EmbeddingError("empty audio")
    if not np.isfinite(samples).all():
        raise EmbeddingError("audio contains NaN or infinite samples")
    return samples


# --------------------------------------------------------------------------- resemblyzer


class ResemblyzerEmbedder:
    """Resemblyzer's GE2E VoiceEncoder (256-d), with the same preprocessing as its own
    `preprocess_wav` (volume normalisation, long silences removed by WebRTC VAD), vectorised,
    and partial windows of several clips batched through the LSTM in one forward pass.
    """

    name = "resemblyzer"
    dim = 256
    sample_rate = 16000
    #: `embed_many` may run for several batches at once in threads: a forward pass keeps no state.
    parallel_batches = True

    def __init__(self, device: str = "cpu", weights: str | None = None) -> None:
        import torch

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # webrtcvad/resemblyzer import pkg_resources
            from resemblyzer import VoiceEncoder, hparams

        if device != "cpu" and not torch.cuda.is_available():
            log.warning("device %r requested but CUDA is not available; using the CPU", device)
            device = "cpu"
        self._hp = hparams
        self._torch = torch
        self.encoder = VoiceEncoder(device=device, verbose=False, weights_fpath=weights)
        self.encoder.eval()
        self.dim = int(hparams.model_embedding_size)

    # Same steps as resemblyzer.audio.preprocess_wav, without the per-sample struct.pack.
    def preprocess(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """Resample to 16 kHz, raise quiet audio to -30 dBFS, shorten long silences."""
        from scipy.ndimage import binary_dilation

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import webrtcvad

        hp = self._hp
        wav = resample(_check_samples(samples), sample_rate, self.sample_rate)
        rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64))))
        if rms < 1e-7:
            raise EmbeddingError("silent audio")
        gain_db = hp.audio_norm_target_dBFS - 20 * np.log10(rms)
        if gain_db > 0:  # increase_only, as resemblyzer does
            wav = wav * (10 ** (gain_db / 20))
        window = (hp.vad_window_length * self.sample_rate) // 1000
        usable = len(wav) - len(wav) % window
        if usable < window:
            return wav.astype(np.float32)
        trimmed = wav[:usable]
        pcm = np.round(np.clip(trimmed, -1.0, 1.0) * (2**15 - 1)).astype("<i2").tobytes()
        vad = webrtcvad.Vad(mode=3)
        flags = np.array(
            [
                vad.is_speech(pcm[i * 2 : (i + window) * 2], sample_rate=self.sample_rate)
                for i in range(0, usable, window)
            ],
            dtype=np.float64,
        )
        width = hp.vad_moving_average_width
        padded = np.concatenate((np.zeros((width - 1) // 2), flags, np.zeros(width // 2)))
        smooth = np.cumsum(padded, dtype=float)
        smooth[width:] = smooth[width:] - smooth[:-width]
        mask = np.round(smooth[width - 1 :] / width).astype(bool)
        mask = binary_dilation(mask, np.ones(hp.vad_max_silence_length + 1))
        kept = trimmed[np.repeat(mask, window)]
        # A clip the VAD finds no speech in (very short, or telephone band) keeps its audio:
        # an embedding of the whole clip is better than none.
        if len(kept) < self.sample_rate // 4:
            return wav.astype(np.float32)
        return kept.astype(np.float32)

    def _partials(self, wav: np.ndarray) -> np.ndarray:
        """Mel windows of 1.6 s at 1.3 windows/s, as VoiceEncoder.embed_utterance makes them."""
        from resemblyzer.audio import wav_to_mel_spectrogram

        # A clip shorter than one 1.6 s window is repeated to fill it instead of zero-padded:
        # with zero padding, short clips of different people look alike (the padding dominates);
        # on the demo's 0.4-1 s telephone clips repeating raised the 2-speaker ARI from -0.08 to 0.23.
        window = self._hp.partials_n_frames * (self.sample_rate * self._hp.mel_window_step // 1000)
        if 0 < len(wav) < window:
            wav = np.tile(wav, int(np.ceil(window / len(wav))))[:window]
        wav_slices, mel_slices = self.encoder.compute_partial_slices(len(wav), rate=1.3, min_coverage=0.75)
        stop = wav_slices[-1].stop
        if stop >= len(wav):
            wav = np.pad(wav, (0, stop - len(wav)))
        mel = wav_to_mel_spectrogram(wav)
        return np.stack([mel[s] for s in mel_slices])

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        """One utterance -> 256-d L2-normalised embedding."""
        return self.embed_many([samples], sample_rate)[0]

    def embed_many(self, batch: Sequence[np.ndarray], sample_rate: int, max_windows: int = 256) -> np.ndarray:
        """Several utterances at once: their partial windows go through the LSTM together."""
        torch = self._torch
        windows = [self._partials(self.preprocess(samples, sample_rate)) for samples in batch]
        counts = [len(w) for w in windows]
        stacked = np.concatenate(windows).astype(np.float32)
        outputs = []
        with torch.inference_mode():
            for start in range(0, len(stacked), max_windows):
                chunk = torch.from_numpy(stacked[start : start + max_windows]).to(self.encoder.device)
                outputs.append(self.encoder(chunk).cpu().numpy())
        partial = np.concatenate(outputs)
        result = np.empty((len(batch), self.dim), dtype=np.float32)
        offset = 0
        for i, count in enumerate(counts):
            result[i] = _finish(partial[offset : offset + count].mean(axis=0), f"clip {i}")
            offset += count
        return result


# --------------------------------------------------------------------------- pyannote


class PyannoteEmbedder:
    """pyannote.audio embedding model (e.g. WeSpeaker ResNet34), whole-utterance inference.

    `model` is a Hugging Face hub id (token from the HF_TOKEN environment variable, as
    huggingface_hub reads it) or a local checkpoint path.
    """

    name = "pyannote"

    def __init__(self, model: str | None = None, device: str = "cpu") -> None:
        try:
            import torch
            from pyannote.audio import Inference, Model
        except ImportError as exc:
            raise PipelineError(
                f"speaker_diarization.backend 'pyannote' needs pyannote.audio (and torchaudio), "
                f"which is not installed ({exc}); {GPU_EXTRA_HINT}, or use backend 'resemblyzer'"
            ) from None
        self.model_id = model or DEFAULT_MODELS["pyannote"]
        try:
            loaded = Model.from_pretrained(self.model_id)
        except Exception as exc:  # hub/network/auth problems surface as many exception types
            raise PipelineError(
                f"speaker_diarization.model {self.model_id!r}: cannot load the pyannote model ({exc}); "
                "give a local checkpoint path or set HF_TOKEN for a gated hub model"
            ) from None
        if loaded is None:
            raise PipelineError(f"speaker_diarization.model {self.model_id!r}: pyannote could not load it")
        self._torch = torch
        self.inference = Inference(loaded, window="whole", device=torch.device(device))
        self.dim = int(getattr(loaded, "dimension", 0) or 0) or len(
            self._raw(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1, 16000)
        )

    def _raw(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        waveform = self._torch.from_numpy(np.ascontiguousarray(samples))[None]
        return np.asarray(self.inference({"waveform": waveform, "sample_rate": sample_rate})).reshape(-1)

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        return _finish(self._raw(_check_samples(samples), sample_rate), "pyannote embedding")


# --------------------------------------------------------------------------- speechbrain


class SpeechBrainEmbedder:
    """SpeechBrain ECAPA-TDNN speaker encoder (192-d); hub id or local directory."""

    name = "speechbrain"
    sample_rate = 16000

    def __init__(
        self, model: str | None = None, device: str = "cpu", savedir: str | Path | None = None
    ) -> None:
        try:
            import torch
            from speechbrain.inference.speaker import EncoderClassifier
        except ImportError as exc:
            raise PipelineError(
                f"speaker_diarization.backend 'speechbrain' needs speechbrain (and torchaudio), "
                f"which is not installed ({exc}); {GPU_EXTRA_HINT} plus speechbrain, or use backend 'resemblyzer'"
            ) from None
        self.model_id = model or DEFAULT_MODELS["speechbrain"]
        try:
            self.classifier = EncoderClassifier.from_hparams(
                source=self.model_id, savedir=str(savedir) if savedir else None, run_opts={"device": device}
            )
        except Exception as exc:
            raise PipelineError(
                f"speaker_diarization.model {self.model_id!r}: cannot load the SpeechBrain model ({exc})"
            ) from None
        self._torch = torch
        self.dim = len(self._raw(np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1))

    def _raw(self, wav: np.ndarray) -> np.ndarray:
        with self._torch.inference_mode():
            out = self.classifier.encode_batch(self._torch.from_numpy(np.ascontiguousarray(wav))[None])
        return out.cpu().numpy().reshape(-1)

    def embed(self, samples: np.ndarray, sample_rate: int) -> np.ndarray:
        wav = resample(_check_samples(samples), sample_rate, self.sample_rate)
        return _finish(self._raw(wav), "speechbrain embedding")


# --------------------------------------------------------------------------- factory


def get_embedder(
    backend: str = "resemblyzer", model: str | None = None, device: str = "cpu"
) -> SpeakerEmbedder:
    """Build the embedder named by `speaker_diarization.backend` (+ `.model`).

    Raises PipelineError for an unknown backend or one whose optional packages are missing.
    """
    if backend == "resemblyzer":
        return ResemblyzerEmbedder(device=device, weights=model)
    if backend == "pyannote":
        return PyannoteEmbedder(model=model, device=device)
    if backend == "speechbrain":
        return SpeechBrainEmbedder(model=model, device=device)
    raise PipelineError(
        f"speaker_diarization.backend: unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}"
    )


def embed_many(embedder: SpeakerEmbedder, batch: Sequence[np.ndarray], sample_rate: int) -> np.ndarray:
    """(len(batch), dim) embeddings; uses the backend's batched path when it has one."""
    if not batch:
        return np.zeros((0, embedder.dim), dtype=np.float32)
    fast = getattr(embedder, "embed_many", None)
    if fast is not None:
        return np.asarray(fast(batch, sample_rate), dtype=np.float32)
    return np.stack([embedder.embed(samples, sample_rate) for samples in batch]).astype(np.float32)


def embed_file(embedder: SpeakerEmbedder, path: str | Path, sample_rate: int = 16000) -> np.ndarray:
    """Decode any audio file (WAV, WebM/Opus, FLAC, ...) and embed it; errors name the file."""
    samples = decode_audio(path, sample_rate)
    try:
        return embedder.embed(samples, sample_rate)
    except EmbeddingError as exc:
        raise EmbeddingError(f"{path}: {exc}") from None


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> np.ndarray | float:
    """Cosine similarity of two vectors (float) or of row sets (matrix)."""
    a, b = l2_normalise(a), l2_normalise(b)
    if a.ndim == 1 and b.ndim == 1:
        return float(a @ b)
    return np.atleast_2d(a) @ np.atleast_2d(b).T
