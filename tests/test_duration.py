"""The stochastic duration predictor learns durations that synthesis reproduces."""

from __future__ import annotations

import torch
from transformers import VitsConfig
from transformers.models.vits.modeling_vits import VitsStochasticDurationPredictor
from vits_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from tts_pipeline.vits.duration import stochastic_duration_nll

SHORT, LONG = 2.0, 7.0


def _train_on_two_kinds_of_token(steps: int = 100):
    """A tiny predictor trained on one fixed batch: tokens of one kind last SHORT frames, of the
    other LONG; returns (predictor, hidden states, mask, which kind each token is)."""
    torch.manual_seed(0)
    config = VitsConfig(hidden_size=16, duration_predictor_num_flows=2, duration_predictor_filter_channels=16,
                        duration_predictor_dropout=0.0)  # fmt: skip
    predictor = VitsStochasticDurationPredictor(config)
    kinds = torch.randn(2, 16)
    kind_of_token = torch.randint(0, 2, (8, 12))
    hidden = kinds[kind_of_token].transpose(1, 2)  # (B, H, Tx)
    durations = torch.tensor([SHORT, LONG])[kind_of_token].unsqueeze(1)  # (B, 1, Tx)
    mask = torch.ones(8, 1, 12)
    optimizer = torch.optim.AdamW(predictor.parameters(), 3e-3)
    for _ in range(steps):
        loss = stochastic_duration_nll(predictor, hidden, mask, None, durations).sum() / mask.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return predictor.eval(), hidden, mask, kind_of_token


def test_synthesis_reproduces_the_durations_the_predictor_was_trained_on():
    # transformers' own training forward (reverse=False) flips the channels after the first flow,
    # which its synthesis pass does not undo: trained through it, this same set-up synthesises
    # 1 frame for the LONG tokens. Trained through our loss, synthesis (transformers' reverse pass,
    # noise 0) gives back exactly the measured durations once rounded up, as VitsModel rounds them.
    predictor, hidden, mask, kind_of_token = _train_on_two_kinds_of_token()
    with torch.no_grad():
        frames = torch.ceil(torch.exp(predictor(hidden, mask, reverse=True, noise_scale=0.0)))[:, 0]
    assert torch.equal(frames[kind_of_token == 0], torch.full_like(frames[kind_of_token == 0], SHORT))
    assert torch.equal(frames[kind_of_token == 1], torch.full_like(frames[kind_of_token == 1], LONG))


def test_duration_loss_reaches_the_predictor_only():
    # as in VITS: the duration loss trains the predictor, never the text encoder or speaker table
    config = VitsConfig(hidden_size=16, speaker_embedding_size=4, duration_predictor_num_flows=2,
                        duration_predictor_filter_channels=16)  # fmt: skip
    predictor = VitsStochasticDurationPredictor(config)
    hidden = torch.randn(2, 16, 5, requires_grad=True)
    speaker = torch.randn(2, 4, 1, requires_grad=True)
    durations = torch.randint(1, 5, (2, 1, 5)).float()
    nll = stochastic_duration_nll(predictor, hidden, torch.ones(2, 1, 5), speaker, durations)
    assert nll.shape == (2,) and torch.isfinite(nll).all()
    nll.sum().backward()
    assert hidden.grad is None and speaker.grad is None
    assert all(p.grad is not None for p in predictor.parameters())
