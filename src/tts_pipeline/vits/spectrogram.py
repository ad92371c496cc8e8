"""Linear and mel spectrograms in torch, matching the original VITS front end.

VITS computes an STFT with `center=False` after reflect-padding (n_fft - hop) / 2 on each
side, so a waveform of `n * hop` samples gives exactly `n` frames: that 1:1 frame/sample
relation is what lets us slice latents and audio with the same offsets. The magnitude is
`sqrt(power + 1e-6)` (no NaN gradient at 0), the mel is a Slaney filter bank (librosa), and the
log uses a 1e-5 floor. Everything runs in float32 (STFT under fp16/bf16 is inaccurate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class SpectrogramConfig:
    """STFT/mel settings; `from_model_config` derives them from a VitsConfig."""

    sampling_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mels: int = 80
    fmin: float = 0.0
    fmax: float | None = None

    @property
    def bins(self) -> int:
        return self.n_fft // 2 + 1

    @classmethod
    def from_model_config(
        cls, config, n_mels: int = 80, fmin: float = 0.0, fmax: float | None = None
    ) -> SpectrogramConfig:
        """n_fft from `spectrogram_bins`, hop = product of the decoder's upsample rates."""
        import math

        n_fft = (int(config.spectrogram_bins) - 1) * 2
        hop = int(math.prod(config.upsample_rates))
        return cls(
            sampling_rate=int(config.sampling_rate),
            n_fft=n_fft,
            hop_length=hop,
            win_length=n_fft,
            n_mels=n_mels,
            fmin=fmin,
            fmax=fmax,
        )


_WINDOWS: dict[tuple, torch.Tensor] = {}
_MEL_BASES: dict[tuple, torch.Tensor] = {}


def _window(cfg: SpectrogramConfig, device) -> torch.Tensor:
    import torch

    key = (cfg.win_length, str(device))
    if key not in _WINDOWS:
        _WINDOWS[key] = torch.hann_window(cfg.win_length, device=device, dtype=torch.float32)
    return _WINDOWS[key]


def mel_basis(cfg: SpectrogramConfig, device) -> torch.Tensor:
    """(n_mels, bins) Slaney mel filter bank, cached per device."""
    import torch

    key = (cfg.sampling_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, str(device))
    if key not in _MEL_BASES:
        import librosa

        basis = librosa.filters.mel(
            sr=cfg.sampling_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax
        )
        _MEL_BASES[key] = torch.from_numpy(basis).to(device=device, dtype=torch.float32)
    return _MEL_BASES[key]


def linear_spectrogram(waveform: torch.Tensor, cfg: SpectrogramConfig) -> torch.Tensor:
    """(B, T) or (B, 1, T) waveform -> (B, bins, T // hop) magnitude spectrogram (float32)."""
    import torch

    if waveform.dim() == 3:
        waveform = waveform.squeeze(1)
    waveform = waveform.float()
    pad = (cfg.n_fft - cfg.hop_length) // 2
    with torch.autocast(device_type=waveform.device.type, enabled=False):
        padded = torch.nn.functional.pad(waveform.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        stft = torch.stft(
            padded,
            cfg.n_fft,
            hop_length=cfg.hop_length,
            win_length=cfg.win_length,
            window=_window(cfg, waveform.device),
            center=False,
            normalized=False,
            onesided=True,
            return_complex=True,
        )
        return torch.sqrt(stft.real.pow(2) + stft.imag.pow(2) + 1e-6)


def spectrogram_to_mel(spectrogram: torch.Tensor, cfg: SpectrogramConfig) -> torch.Tensor:
    """Linear magnitude (B, bins, frames) -> log mel (B, n_mels, frames)."""
    import torch

    with torch.autocast(device_type=spectrogram.device.type, enabled=False):
        mel = torch.matmul(mel_basis(cfg, spectrogram.device), spectrogram.float())
        return torch.log(torch.clamp(mel, min=1e-5))


def mel_spectrogram(waveform: torch.Tensor, cfg: SpectrogramConfig) -> torch.Tensor:
    """(B, T) waveform -> (B, n_mels, T // hop) log mel spectrogram."""
    return spectrogram_to_mel(linear_spectrogram(waveform, cfg), cfg)
