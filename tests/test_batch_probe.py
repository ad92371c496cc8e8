"""The automatic batch size (a measured probe on CUDA) and gradient checkpointing, on CPU.

No GPU here: the probe's search rule gets a fake peak(batch) and memory budget, and the whole
probe runs real training steps on a tiny trainer with an injected memory reader.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from test_train import make_config, make_dataset, make_trainer
from vits_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from tts_pipeline.vits.batch_probe import (
    GIB,
    auto_batch_size,
    largest_fitting_batch,
    probe_batch_size,
    probe_margin,
)

MIB = 2**20


def linear_peak(fixed: int, per_item: int, calls: list[int], oom_from: int | None = None):
    """A fake measurement: fixed + per_item x batch bytes; OutOfMemoryError from `oom_from` on."""

    def measure(batch: int) -> int:
        calls.append(batch)
        if oom_from is not None and batch >= oom_from:
            raise torch.OutOfMemoryError(f"CUDA out of memory (fake, batch {batch})")
        return fixed + per_item * batch

    return measure


@pytest.mark.parametrize("start", [1, 3, 5, 6, 7, 12, 64])
def test_search_finds_the_largest_batch_under_the_budget_from_any_start(start):
    calls: list[int] = []
    # 1 GiB fixed + 1.5 GiB per item under a 10 GiB budget: 6 fits (10 GiB), 7 does not
    result = largest_fitting_batch(linear_peak(GIB, 3 * GIB // 2, calls), 10 * GIB, start=start)
    assert result.batch_size == 6
    assert result.fits(6) and not result.fits(7)
    assert len(calls) == len(set(calls)), "a batch is measured once"
    assert len(calls) <= 8
    assert result.peaks[6] == 10 * GIB


def test_out_of_memory_at_a_candidate_counts_as_too_big():
    calls: list[int] = []
    # the arithmetic says 20 fit, but a real step runs out of memory from 9 on
    result = largest_fitting_batch(linear_peak(0, 100 * MIB, calls, oom_from=9), 2 * GIB, start=4)
    assert result.batch_size == 8
    assert result.peaks[16] is None and calls[:2] == [4, 8]
    assert not result.nothing_fits


def test_capped_at_64_and_never_below_1():
    calls: list[int] = []
    assert largest_fitting_batch(linear_peak(0, MIB, calls), 80 * GIB, start=16).batch_size == 64
    assert max(calls) == 64
    nothing = largest_fitting_batch(linear_peak(GIB, GIB, []), GIB // 2, start=4)
    assert nothing.batch_size == 1 and nothing.nothing_fits
    assert largest_fitting_batch(linear_peak(0, GIB, [], oom_from=1), 8 * GIB, start=2).nothing_fits


def test_margin_is_ten_percent_or_at_least_one_gib():
    assert probe_margin(40 * GIB) == 4 * GIB
    assert probe_margin(8 * GIB) == GIB
    assert probe_margin(0) == GIB


def test_cpu_keeps_the_small_default_batch():
    assert auto_batch_size(torch.device("cpu"), 15.0, 83_000_000) == 4


# ------------------------------------------------------------------ the probe on a real (tiny) trainer


class FakeMemory:
    """Memory reader with a budget: usable 5 GiB (margin 1 GiB: 4 GiB for a step); a step at
    batch b "peaks" at b GiB and batch 4 runs out of memory, whatever the arithmetic says."""

    def __init__(self):
        self.steps: list[int] = []

    def usable(self) -> tuple[int, int]:
        return 5 * GIB, 5 * GIB

    def peak_of(self, step, batch_size: int) -> int:
        self.steps.append(batch_size)
        step()  # a real training step on the tiny trainer
        if batch_size >= 4:
            raise torch.OutOfMemoryError("CUDA out of memory (fake)")
        return batch_size * GIB


@pytest.fixture(scope="module")
def two_speakers(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "ds", per_speaker=2)


def _snapshot(trainer) -> dict:
    return {
        "gen": copy.deepcopy(trainer.model.state_dict()),
        "disc": copy.deepcopy(trainer.bare_discriminator.state_dict()),
        "opt": [copy.deepcopy(o.state_dict()) for o in (trainer.opt_g, trainer.opt_d)],
        "sched": [s.state_dict() for s in (trainer.sched_g, trainer.sched_d)],
        "rng": torch.get_rng_state(),
    }


def test_probe_measures_real_steps_and_leaves_training_unchanged(tmp_path, two_speakers, caplog):
    from tts_pipeline.vits.data import collate

    cfg = make_config(tmp_path, batch_size=2)
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    probed = make_trainer(cfg, two_speakers, tmp_path / "a")
    before = _snapshot(probed)
    memory = FakeMemory()
    with caplog.at_level(logging.INFO, logger="tts_pipeline.vits.batch_probe"):
        assert probe_batch_size(probed, start=2, memory=memory) == 3
    assert memory.steps == [2, 4, 3]
    text = caplog.text
    assert "measured peak per batch: 2: 2.00 GiB, 3: 3.00 GiB, 4: out of memory" in text
    assert "usable 5.00 GiB" in text and "margin 1.00 GiB" in text
    assert "automatic batch size: 3" in text

    after = _snapshot(probed)
    for key in ("gen", "disc"):
        for name, value in before[key].items():
            assert torch.equal(value, after[key][name]), name
    assert after["opt"][0]["state"] == {} and after["opt"][1]["state"] == {}, "optimiser moments dropped"
    assert after["sched"] == before["sched"]
    assert torch.equal(after["rng"], before["rng"])
    assert all(p.grad is None for p in probed.model.parameters())

    # the next training step is the one a trainer that never probed takes
    plain = make_trainer(cfg, two_speakers, tmp_path / "b")
    batch = collate(probed.train_examples[:2])
    torch.manual_seed(1)
    metrics = probed.train_step([batch])
    torch.manual_seed(1)
    assert metrics == plain.train_step([batch])
    for name, value in plain.model.state_dict().items():
        assert torch.equal(value, probed.model.state_dict()[name]), name


def test_probe_is_skipped_on_cpu(tmp_path, two_speakers):
    trainer = make_trainer(make_config(tmp_path, batch_size=None), two_speakers, tmp_path)
    assert trainer.state.batch_size == 4  # as before: the CPU default
    assert probe_batch_size(trainer, start=4) == 4


# ------------------------------------------------------------------ gradient checkpointing


def _losses_and_grads(trainer, batch) -> tuple[dict[str, float], dict[str, torch.Tensor], int]:
    """One training step's losses, the generator's gradients just before its optimiser step,
    and how often a convolution inside a decoder residual block ran (2 = recomputed)."""
    grads: dict[str, torch.Tensor] = {}
    optimizer_step = trainer._optimizer_step

    def capture(module, optimizer, *args):
        if optimizer is trainer.opt_g:
            grads.update(
                {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
            )
        return optimizer_step(module, optimizer, *args)

    calls = []
    conv = trainer.model.decoder.resblocks[0].convs1[0]
    hook = conv.register_forward_hook(lambda *_: calls.append(1))
    trainer._optimizer_step = capture
    try:
        metrics = trainer.train_step([batch])
    finally:
        hook.remove()
    return metrics, grads, len(calls)


def test_gradient_checkpointing_gives_the_same_losses_and_gradients(tmp_path, two_speakers):
    from tts_pipeline.vits.checkpointing import checkpointed_modules, is_checkpointed
    from tts_pipeline.vits.data import collate

    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    plain = make_trainer(make_config(tmp_path / "a"), two_speakers, tmp_path / "a")
    assert make_config(tmp_path / "a").training.gradient_checkpointing is False
    cfg = make_config(tmp_path / "b", gradient_checkpointing=True)
    ckpt = make_trainer(cfg, two_speakers, tmp_path / "b")
    modules = checkpointed_modules(ckpt.model)
    assert modules and all(is_checkpointed(m) for m in modules)
    assert all(is_checkpointed(layer) for layer in ckpt.model.text_encoder.encoder.layers)
    assert not any(is_checkpointed(m) for m in checkpointed_modules(plain.model))
    assert list(ckpt.model.state_dict()) == list(plain.model.state_dict()), "weight names unchanged"

    batch = collate(plain.train_examples[:2])
    torch.manual_seed(0)
    metrics_plain, grads_plain, runs_plain = _losses_and_grads(plain, batch)
    rng_plain = torch.get_rng_state()
    torch.manual_seed(0)
    metrics_ckpt, grads_ckpt, runs_ckpt = _losses_and_grads(ckpt, batch)
    assert (runs_plain, runs_ckpt) == (1, 2), "with checkpointing the decoder block runs again in backward"
    assert torch.equal(torch.get_rng_state(), rng_plain), (
        "the recomputation replays, not draws, random numbers"
    )
    for key in ("loss_gen", "mel_l1", "kl", "duration", "loss_disc"):
        assert metrics_ckpt[key] == pytest.approx(metrics_plain[key], rel=1e-5, abs=1e-6), key
    assert grads_plain.keys() == grads_ckpt.keys() and len(grads_plain) > 50
    for name, grad in grads_plain.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_checkpointed_model_deep_copies_to_an_independent_model(tmp_path, two_speakers):
    from tts_pipeline.vits.checkpointing import checkpointed_modules, enable_gradient_checkpointing

    trainer = make_trainer(make_config(tmp_path), two_speakers, tmp_path)
    model = trainer.model
    enable_gradient_checkpointing(model)
    clone = copy.deepcopy(model)
    for original, copied in zip(checkpointed_modules(model), checkpointed_modules(clone), strict=True):
        assert copied.forward.__self__ is copied and original.forward.__self__ is original


def test_several_processes_keep_the_estimate_without_probing(caplog):
    from types import SimpleNamespace

    import numpy as np

    from tts_pipeline.vits.data import Example

    example = Example(input_ids=[1, 2, 3], audio=np.zeros(16000, dtype=np.int16), speaker_id=0, text="abc")
    trainer = SimpleNamespace(
        device=torch.device("cpu"), train_examples=[example], accelerator=SimpleNamespace(num_processes=2)
    )
    memory = FakeMemory()
    with caplog.at_level(logging.INFO, logger="tts_pipeline.vits.batch_probe"):
        assert probe_batch_size(trainer, start=5, memory=memory) == 5
    assert memory.steps == []
    assert "automatic batch size: 5, estimated" in caplog.text
