"""The stochastic duration predictor's training loss, in the flow order its inference pass inverts.

VITS (Kim et al. 2021, eq. 7-8) trains the stochastic duration predictor (SDP) on a variational
bound: posterior flows turn noise into a dequantisation `u` in (0, 1) and an extra channel `nu`,
and the main flows map `[log(d - u), nu]` to a standard normal. Synthesis runs the main flows
backwards from noise. In VITS, and so in every MMS checkpoint, each flow stack is
`ElementwiseAffine, (ConvFlow, Flip) x n`: no flip after the first, elementwise flow.

`transformers.VitsStochasticDurationPredictor.forward(reverse=False)` flips after every flow,
the elementwise one included, while its `reverse=True` pass follows VITS. Trained through it,
the main flows learn a map that synthesis does not invert. On the voice benchmark that made
every token last about the same, far too long: 15-28 frames against 1-10 measured, and speech
8-14 times too long. Trained here, as VITS and finetune-hf-vits train it, the same weights
give durations near the measured ones. It also keeps a pretrained MMS predictor's flows acting
on the channels they were trained on.

The submodules and their parameters are transformers' own, so checkpoints load and save as before.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LOG_2PI = math.log(2 * math.pi)


def _flow_stack(flows: nn.ModuleList, latents: torch.Tensor, mask: torch.Tensor, conditioning: torch.Tensor):
    """Run `flows` forward in VITS order (a channel flip after every flow but the first);
    returns (latents, summed log-determinant per utterance)."""
    latents, log_det = flows[0](latents, mask, global_conditioning=conditioning)
    for flow in flows[1:]:
        latents, step_log_det = flow(latents, mask, global_conditioning=conditioning)
        latents = torch.flip(latents, [1])
        log_det = log_det + step_log_det
    return latents, log_det


def stochastic_duration_nll(
    predictor: nn.Module,
    hidden: torch.Tensor,
    text_mask: torch.Tensor,
    speaker: torch.Tensor | None,
    durations: torch.Tensor,
) -> torch.Tensor:
    """Negative variational lower bound of `durations` (B, 1, Tx) frames per token, per utterance (B,).

    `hidden` (B, H, Tx) and `speaker` (B, S, 1) are detached: as in VITS, the duration loss does
    not train the text encoder or the speaker embedding.
    """
    text = predictor.conv_pre(hidden.detach())
    if speaker is not None:
        text = text + predictor.cond(speaker.detach())
    text = predictor.conv_proj(predictor.conv_dds(text, text_mask)) * text_mask

    observed = predictor.post_conv_pre(durations)
    observed = predictor.post_conv_proj(predictor.post_conv_dds(observed, text_mask)) * text_mask

    # posterior q(u, nu | d, text); the noise comes from torch's CPU generator, as transformers draws it
    noise = torch.randn(durations.size(0), 2, durations.size(2)).to(device=text.device, dtype=text.dtype) * text_mask
    posterior, log_det_q = _flow_stack(predictor.post_flows, noise, text_mask, text + observed)
    u, nu = torch.split(posterior, [1, 1], dim=1)
    log_det_q = log_det_q + torch.sum((nn.functional.logsigmoid(u) + nn.functional.logsigmoid(-u)) * text_mask, [1, 2])
    log_q = torch.sum(-0.5 * (LOG_2PI + noise**2) * text_mask, [1, 2]) - log_det_q

    # p(log(d - u), nu | text) through the main flows to a standard normal
    log_residual = torch.log(torch.clamp_min((durations - torch.sigmoid(u)) * text_mask, 1e-5)) * text_mask
    latents, log_det = _flow_stack(predictor.flows, torch.cat([log_residual, nu], dim=1), text_mask, text)
    log_det = log_det - torch.sum(log_residual, [1, 2])
    log_p = torch.sum(-0.5 * (LOG_2PI + latents**2) * text_mask, [1, 2]) + log_det
    return log_q - log_p
