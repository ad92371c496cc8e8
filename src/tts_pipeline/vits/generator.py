"""The VITS training forward over `transformers.VitsModel`'s own submodules.

`VitsModel.forward` only synthesises (text -> prior -> reversed flow -> decoder). Training
goes the other way round (VITS paper, Kim et al. 2021, section 2):

1. text encoder -> prior mean / log-sigma per token (m_p, logs_p), hidden states h;
2. posterior encoder on the *linear* spectrogram of the target audio -> z ~ q(z|spec);
3. flow(z) -> z_p, which should look like a sample of the prior;
4. monotonic alignment search between z_p and the per-token prior gives hard durations;
5. stochastic duration predictor: NLL of those durations given h (`duration.py`);
6. KL between q and the aligned prior;
7. a random window of z (`segment_frames`) -> HiFi-GAN decoder -> audio, compared with the
   same window of the real audio (mel L1 here, adversarial losses in the trainer).

Shapes follow the transformers modules: the text encoder wants `padding_mask` (B, Tx, 1) and
`attention_mask` (B, Tx) and returns channels-last stats; every other module wants (B, 1, T)
masks and channels-first tensors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from . import alignment
from .duration import stochastic_duration_nll
from .losses import kl_loss
from .spectrogram import SpectrogramConfig, linear_spectrogram, spectrogram_to_mel


@dataclass
class Batch:
    """A padded training batch (the collate function builds it)."""

    input_ids: torch.Tensor  # (B, Tx) long, padded with 0
    attention_mask: torch.Tensor  # (B, Tx) long
    waveform: torch.Tensor  # (B, T) float32, T a multiple of the hop length
    waveform_lengths: torch.Tensor  # (B,) long, multiples of the hop length
    speaker_ids: torch.Tensor  # (B,) long

    def to(self, device) -> Batch:
        return Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.waveform,
                                              self.waveform_lengths, self.speaker_ids)))  # fmt: skip

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class GeneratorOutput:
    """What the losses need from one generator forward."""

    generated: torch.Tensor  # (B, 1, segment samples) decoder output
    target: torch.Tensor  # (B, 1, segment samples) the matching window of real audio
    mel_generated: torch.Tensor  # (B, n_mels, segment frames)
    mel_target: torch.Tensor
    kl: torch.Tensor  # scalar
    duration: torch.Tensor  # scalar (NLL per token for the stochastic predictor)
    slice_starts: torch.Tensor  # (B,) frame index of each window

    @property
    def mel_l1(self) -> torch.Tensor:
        return torch.nn.functional.l1_loss(self.mel_generated.float(), self.mel_target.float())


def sequence_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    return torch.arange(max_length, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)


def slice_segments(x: torch.Tensor, starts: torch.Tensor, size: int) -> torch.Tensor:
    """x (B, C, T) -> (B, C, size) windows beginning at `starts` (B,)."""
    index = starts.view(-1, 1, 1) + torch.arange(size, device=x.device).view(1, 1, -1)
    return torch.gather(x, 2, index.expand(x.shape[0], x.shape[1], size))


def speaker_conditioning(model, speaker_ids: torch.Tensor) -> torch.Tensor | None:
    """(B, E, 1) speaker embeddings for multi-speaker models, else None."""
    if model.config.num_speakers > 1:
        return model.embed_speaker(speaker_ids).unsqueeze(-1)
    return None


def alignment_log_likelihood(z_p: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor) -> torch.Tensor:
    """log N(z_p[:, :, frame] | m_p[:, :, token], exp(logs_p)) summed over channels: (B, frames, tokens)."""
    z_p, m_p, logs_p = z_p.float(), m_p.float(), logs_p.float()
    inv_var = torch.exp(-2.0 * logs_p)  # (B, F, Tx)
    term1 = torch.sum(-0.5 * math.log(2 * math.pi) - logs_p, dim=1, keepdim=True)  # (B, 1, Tx)
    term2 = torch.matmul(-0.5 * (z_p**2).transpose(1, 2), inv_var)  # (B, Ty, Tx)
    term3 = torch.matmul(z_p.transpose(1, 2), m_p * inv_var)  # (B, Ty, Tx)
    term4 = torch.sum(-0.5 * (m_p**2) * inv_var, dim=1, keepdim=True)  # (B, 1, Tx)
    return term1 + term2 + term3 + term4


def training_forward(
    model,
    batch: Batch,
    spec_config: SpectrogramConfig,
    segment_frames: int,
    generator: torch.Generator | None = None,
) -> GeneratorOutput:
    """One VITS training forward; `generator` (optional) makes the window choice reproducible."""
    hop = spec_config.hop_length
    device = batch.input_ids.device

    # --- text side
    text_mask_2d = batch.attention_mask
    text_padding = text_mask_2d.unsqueeze(-1).to(model.text_encoder.embed_tokens.weight.dtype)
    encoded = model.text_encoder(
        input_ids=batch.input_ids, padding_mask=text_padding, attention_mask=text_mask_2d, return_dict=True
    )
    hidden = encoded.last_hidden_state.transpose(1, 2)  # (B, H, Tx)
    m_p = encoded.prior_means.transpose(1, 2)  # (B, F, Tx)
    logs_p = encoded.prior_log_variances.transpose(1, 2)
    x_mask = text_padding.transpose(1, 2)  # (B, 1, Tx)
    g = speaker_conditioning(model, batch.speaker_ids)

    # --- audio side: linear spectrogram -> posterior -> flow
    spec = linear_spectrogram(batch.waveform, spec_config)  # (B, bins, Ty) float32
    spec_lengths = batch.waveform_lengths // hop
    frames = spec.shape[-1]
    y_mask = sequence_mask(spec_lengths, frames).unsqueeze(1).to(x_mask.dtype)  # (B, 1, Ty)
    z, m_q, logs_q = model.posterior_encoder(spec.to(x_mask.dtype), y_mask, g)
    z_p = model.flow(z, y_mask, g, reverse=False)

    # --- monotonic alignment search (no gradient, float32)
    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=False):  # float32 under fp16/bf16
        log_likelihood = alignment_log_likelihood(z_p, m_p, logs_p)  # (B, Ty, Tx)
        path_mask = y_mask.transpose(1, 2) * x_mask  # (B, Ty, Tx)
        attn = alignment.maximum_path(log_likelihood, path_mask).to(m_p.dtype)

    # --- durations
    durations = attn.sum(1).unsqueeze(1)  # (B, 1, Tx) frames per token
    if model.config.use_stochastic_duration_prediction:
        nll = stochastic_duration_nll(model.duration_predictor, hidden, x_mask, g, durations)
        duration_loss = torch.sum(nll.float()) / torch.clamp_min(torch.sum(x_mask.float()), 1.0)
    else:
        log_target = torch.log(durations + 1e-6) * x_mask
        log_pred = model.duration_predictor(hidden, x_mask, g)
        duration_loss = torch.sum((log_pred.float() - log_target.float()) ** 2) / torch.clamp_min(
            torch.sum(x_mask.float()), 1.0
        )

    # --- expand the prior along the alignment; KL
    m_p_frames = torch.matmul(attn, m_p.transpose(1, 2)).transpose(1, 2)  # (B, F, Ty)
    logs_p_frames = torch.matmul(attn, logs_p.transpose(1, 2)).transpose(1, 2)
    kl = kl_loss(z_p, logs_q, m_p_frames, logs_p_frames, y_mask)

    # --- random window -> decoder
    segment = int(min(segment_frames, int(spec_lengths.min())))
    max_start = (spec_lengths - segment).clamp_min(0) + 1
    rand = torch.rand(len(batch), generator=generator, device="cpu" if generator is not None else device)
    starts = (rand.to(device) * max_start.to(rand.dtype).to(device)).long().clamp_max(max_start - 1)
    z_slice = slice_segments(z, starts, segment)
    generated = model.decoder(z_slice, g).float()  # (B, 1, segment * hop)
    target = slice_segments(batch.waveform.unsqueeze(1), starts * hop, segment * hop)

    mel_target = slice_segments(spectrogram_to_mel(spec, spec_config), starts, segment)
    mel_generated = spectrogram_to_mel(linear_spectrogram(generated, spec_config), spec_config)
    return GeneratorOutput(
        generated=generated,
        target=target,
        mel_generated=mel_generated,
        mel_target=mel_target,
        kl=kl,
        duration=duration_loss,
        slice_starts=starts,
    )
