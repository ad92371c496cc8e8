"""VITS losses: LSGAN adversarial, feature matching, KL between posterior and prior.

The mel L1 and the duration NLL are computed in `generator.py` next to the tensors they need.
All losses are reduced to scalars in float32 so that mixed precision cannot overflow them.
"""

from __future__ import annotations

import torch


def discriminator_loss(scores_real: list[torch.Tensor], scores_fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN: push real scores to 1 and generated ones to 0, summed over sub-discriminators."""
    loss = torch.zeros((), device=scores_real[0].device)
    for real, fake in zip(scores_real, scores_fake, strict=True):
        loss = loss + torch.mean((1 - real.float()) ** 2) + torch.mean(fake.float() ** 2)
    return loss


def generator_adversarial_loss(scores_fake: list[torch.Tensor]) -> torch.Tensor:
    """LSGAN generator side: push the discriminator's scores of generated audio to 1."""
    loss = torch.zeros((), device=scores_fake[0].device)
    for fake in scores_fake:
        loss = loss + torch.mean((1 - fake.float()) ** 2)
    return loss


def feature_matching_loss(
    fmaps_real: list[list[torch.Tensor]], fmaps_fake: list[list[torch.Tensor]]
) -> torch.Tensor:
    """L1 between discriminator activations of real and generated audio (x2, as in VITS)."""
    loss = torch.zeros((), device=fmaps_real[0][0].device)
    for maps_r, maps_g in zip(fmaps_real, fmaps_fake, strict=True):
        for real, fake in zip(maps_r, maps_g, strict=True):
            loss = loss + torch.mean(torch.abs(real.detach().float() - fake.float()))
    return loss * 2


def kl_loss(
    z_p: torch.Tensor, logs_q: torch.Tensor, m_p: torch.Tensor, logs_p: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """KL(q(z|x_spec) || p(z|text)) per frame, with the flow-mapped posterior sample z_p.

    All (B, F, T); `logs_*` are log standard deviations (VitsModel's `prior_log_variances` is
    used as a log-sigma everywhere, so it is treated as one here).
    """
    z_p, logs_q, m_p, logs_p, mask = (t.float() for t in (z_p, logs_q, m_p, logs_p, mask))
    kl = logs_p - logs_q - 0.5
    kl = kl + 0.5 * ((z_p - m_p) ** 2) * torch.exp(-2.0 * logs_p)
    return torch.sum(kl * mask) / torch.clamp_min(torch.sum(mask), 1.0)
