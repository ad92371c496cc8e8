"""The running average of the generator's weights (`training.ema_length`, vits/averaging.py)."""

from __future__ import annotations

import pytest
import torch

from tts_pipeline.vits.averaging import WeightAverage, power_ema_gamma


@pytest.mark.parametrize(("length", "gamma"), [(0.05, 16.97), (0.10, 6.94)])
def test_gamma_matches_the_values_edm2_publishes(length, gamma):
    assert power_ema_gamma(length) == pytest.approx(gamma, abs=0.01)


def test_a_longer_average_decays_more_slowly():
    short, long = WeightAverage(torch.nn.Linear(2, 2), 0.02), WeightAverage(torch.nn.Linear(2, 2), 0.1)
    assert short.decay(1) == long.decay(1) == 0.0  # step 1: the weights themselves
    assert 0.0 < short.decay(400) < long.decay(400) < 1.0
    assert short.decay(400) < short.decay(40_000)  # spans a share of the run, not a fixed count


def test_update_follows_the_power_ema_recursion():
    layer = torch.nn.Linear(3, 2)
    average = WeightAverage(layer, 0.05)
    expected = [p.detach().clone() for p in layer.parameters()]
    for step in range(1, 6):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        average.update(step)
        beta = (1 - 1 / step) ** (power_ema_gamma(0.05) + 1) if step > 1 else 0.0
        expected = [beta * e + (1 - beta) * p.detach() for e, p in zip(expected, layer.parameters(), strict=True)]
    for got, want in zip(average.average, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert average.steps == 5


def _average_after_a_move(layer: torch.nn.Linear) -> WeightAverage:
    """An average started from `layer`, updated once (step 2) after its weights moved by 1."""
    average = WeightAverage(layer, 0.05)
    with torch.no_grad():
        layer.weight.add_(1.0)
        layer.bias.add_(1.0)
    average.update(2)
    return average


def test_applied_swaps_in_the_average_and_restores_the_weights_exactly_even_on_error():
    layer = torch.nn.Linear(4, 4)
    average = _average_after_a_move(layer)
    raw = layer.weight.detach().clone()
    with average.applied():
        assert torch.equal(layer.weight, average.average[0])
        assert not torch.equal(layer.weight, raw)
    assert torch.equal(layer.weight, raw)
    with pytest.raises(RuntimeError, match="inside"), average.applied():
        raise RuntimeError("inside")
    assert torch.equal(layer.weight, raw)
    assert layer.weight.requires_grad


def test_state_round_trips_and_refuses_another_model():
    average = _average_after_a_move(torch.nn.Linear(3, 3))
    copy = WeightAverage(torch.nn.Linear(3, 3), 0.05)
    copy.load_state_dict(average.state_dict())
    assert copy.steps == 2 and all(torch.equal(a, b) for a, b in zip(copy.average, average.average, strict=True))
    with pytest.raises(ValueError, match="does not match"):
        WeightAverage(torch.nn.Linear(3, 4), 0.05).load_state_dict(average.state_dict())
