"""The automatic training batch size (`training.batch_size: null`): measured on the GPU, not guessed.

On CUDA the trainer runs a short probe before training: one real training step (generator +
discriminator, forward + backward + both optimiser steps, the configured mixed precision) on
a worst-case batch, i.e. `b` copies of the longest clip the data loader can produce with the
longest token sequence, and reads the step's peak with `torch.cuda.max_memory_allocated`.
The search starts from the arithmetic estimate (`batch_size_for_memory`), doubles while the
peak fits, halves while it does not, then bisects between the largest batch that fitted and
the smallest that did not (at most 64). A batch "fits" when its measured peak is at most the
usable memory minus a margin:

    usable = free memory on the card (`torch.cuda.mem_get_info`, which already excludes the
             CUDA context and other processes) + what PyTorch's caching allocator holds unused,
             measured with the models and AdamW's two moments already on the card;
    margin = max(10 % of usable, 1 GiB): allocator fragmentation, cuDNN/cuBLAS workspaces
             that vary between steps, evaluation and sample synthesis.

An out-of-memory error at a candidate counts as "does not fit" (`torch.cuda.empty_cache()`,
then a smaller one). The probe leaves no trace on training: weights, optimiser state (the
moments it allocates are dropped), schedulers, loss scalers, gradients and every RNG (python,
numpy, torch, CUDA) are restored, so a run with the probe trains exactly as one with that
batch size set. With several processes (`accelerate launch`) the estimate is used instead:
probe steps there would meet the other processes' collectives, and an out-of-memory error in
one process would leave the others waiting.
The log lists the peak of every candidate, the free memory, the margin and the choice.

On CPU the batch size is a small fixed default (4): CPU training is for tests and the demo,
where step time, not memory, is the limit. The search rule (`largest_fitting_batch`) takes the
measurement as a function, so it is tested on CPU with a fake peak(batch) and memory budget.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

log = logging.getLogger(__name__)

#: Activation memory of one batch item for the MMS-size model in fp32, measured with
#: `benchmarks/train.py --mms_memory` (bytes autograd saves for backward in one full step):
#: 991 MB for a 2 s clip, 1085 MB for 8 s, so ~16 MB per second of audio (text encoder,
#: posterior encoder, flow, duration predictor run on the whole clip) plus ~960 MB for the
#: decoder + discriminator on the 8192-sample segment (~120 KB per segment sample).
#: Only the probe's starting point on CUDA; the probe's measurement decides.
ACTIVATION_BYTES_PER_AUDIO_SECOND = 16 * 2**20
ACTIVATION_BYTES_PER_SEGMENT_SAMPLE = 120 * 2**10
ACTIVATION_MARGIN = 1.5  # allocator fragmentation, cuDNN workspaces, transient buffers
CPU_DEFAULT_BATCH_SIZE = 4
MAX_AUTO_BATCH_SIZE = 64
#: The probe's margin: max(MARGIN_FRACTION x usable memory, MIN_MARGIN_BYTES).
MARGIN_FRACTION = 0.10
MIN_MARGIN_BYTES = 2**30
GIB = 2**30


def auto_batch_size(
    device: torch.device, max_item_seconds: float, num_parameters: int, segment_size: int = 8192
) -> int:
    """The estimated batch size: CPU_DEFAULT_BATCH_SIZE on CPU; on CUDA the probe's starting point."""
    if device.type != "cuda":
        return CPU_DEFAULT_BATCH_SIZE
    free, _total = torch.cuda.mem_get_info(device)
    return batch_size_for_memory(free, max_item_seconds, num_parameters, segment_size)


def batch_size_for_memory(
    free_bytes: int, max_item_seconds: float, num_parameters: int, segment_size: int
) -> int:
    """`(free - 16 bytes per parameter) / per-item activations`, clamped to [1, 64].

    16 bytes per parameter = fp32 weight, gradient and AdamW's two moments, generator +
    discriminator. Per item = 1.5 x (120 KB x segment_size + 16 MB x the longest clip's
    seconds). `free_bytes` is `torch.cuda.mem_get_info`'s, which already excludes the CUDA
    context (the former version subtracted it a second time)."""
    budget = free_bytes - 16 * num_parameters
    per_item = ACTIVATION_MARGIN * (
        ACTIVATION_BYTES_PER_SEGMENT_SAMPLE * segment_size
        + ACTIVATION_BYTES_PER_AUDIO_SECOND * max_item_seconds
    )
    return int(min(MAX_AUTO_BATCH_SIZE, max(1, budget // per_item)))


def probe_margin(usable_bytes: int) -> int:
    """Memory kept free beyond the measured peak: max(10 % of usable, 1 GiB)."""
    return max(int(MARGIN_FRACTION * usable_bytes), MIN_MARGIN_BYTES)


@dataclass
class ProbeResult:
    """What the probe measured and chose (peaks in bytes; None = out of memory)."""

    batch_size: int
    budget_bytes: int
    peaks: dict[int, int | None] = field(default_factory=dict)

    def fits(self, batch: int) -> bool:
        peak = self.peaks.get(batch)
        return peak is not None and peak <= self.budget_bytes

    @property
    def nothing_fits(self) -> bool:
        return not any(self.fits(b) for b in self.peaks)


def largest_fitting_batch(
    measure: Callable[[int], int], budget_bytes: int, start: int = 1, maximum: int = MAX_AUTO_BATCH_SIZE
) -> ProbeResult:
    """The largest batch in [1, maximum] whose `measure(batch)` (peak bytes) is <= `budget_bytes`.

    `measure` raising `torch.OutOfMemoryError` means "does not fit". Starts at `start`; doubles
    while it fits (or halves while it does not), then bisects; assumes the peak grows with the
    batch. Each batch is measured at most once. When not even 1 fits, chooses 1 (and says so
    via `nothing_fits`): training will then run out of memory, with the caller's hint.
    """
    result = ProbeResult(batch_size=1, budget_bytes=budget_bytes)

    def fits(batch: int) -> bool:
        if batch not in result.peaks:
            try:
                result.peaks[batch] = int(measure(batch))
            except torch.OutOfMemoryError:
                result.peaks[batch] = None
        return result.fits(batch)

    maximum = max(1, maximum)
    start = min(max(1, start), maximum)
    good, bad = 0, maximum + 1  # largest known to fit, smallest known not to
    if fits(start):
        good = start
        while good < maximum and bad > maximum:
            candidate = min(maximum, 2 * good)
            if fits(candidate):
                good = candidate
            else:
                bad = candidate
    else:
        bad = start
        while bad > 1 and good == 0:
            candidate = bad // 2
            if fits(candidate):
                good = candidate
            else:
                bad = candidate
    while good and bad - good > 1:
        candidate = (good + bad) // 2
        if fits(candidate):
            good = candidate
        else:
            bad = candidate
    result.batch_size = max(1, good)
    return result


# ---------------------------------------------------------------------- the probe on a trainer


def worst_case_example(examples):
    """An example as long as the longest clip, with as many tokens as the longest text: what
    a padded batch of the data loader can at most hold per item."""
    from .data import Example

    longest_audio = max(examples, key=lambda e: e.num_samples)
    longest_text = max(examples, key=lambda e: len(e.input_ids))
    return Example(
        input_ids=list(longest_text.input_ids),
        audio=longest_audio.audio,
        speaker_id=longest_audio.speaker_id,
        text=longest_text.text,
    )


def _cpu_copy(state):
    """A deep copy of a (nested) state dict with every tensor on the CPU."""
    if isinstance(state, torch.Tensor):
        return state.detach().to("cpu", copy=True)
    if isinstance(state, dict):
        return {k: _cpu_copy(v) for k, v in state.items()}
    if isinstance(state, list | tuple):
        return type(state)(_cpu_copy(v) for v in state)
    return copy.deepcopy(state)


class _Restorer:
    """Snapshot of everything a training step changes on a `Trainer`; `restore()` puts it back."""

    def __init__(self, trainer):
        self.t = trainer
        self.models = [trainer.model, trainer.bare_discriminator]
        self.stateful = [trainer.opt_g, trainer.opt_d, trainer.sched_g, trainer.sched_d,
                         trainer.scaler_g, trainer.scaler_d]  # fmt: skip
        self.saved_models = [_cpu_copy(m.state_dict()) for m in self.models]
        self.saved = [_cpu_copy(obj.state_dict()) for obj in self.stateful]

    def restore_models(self) -> None:
        """Weights back (in place) and gradients dropped."""
        for model, state in zip(self.models, self.saved_models, strict=True):
            model.load_state_dict(state)
        for optimizer in (self.t.opt_g, self.t.opt_d):
            optimizer.zero_grad(set_to_none=True)

    def restore(self) -> None:
        """Everything back, optimiser moments and all."""
        self.restore_models()
        for obj, state in zip(self.stateful, self.saved, strict=True):
            if state or not isinstance(obj, torch.amp.GradScaler):  # a disabled scaler saves {}
                obj.load_state_dict(copy.deepcopy(state))


def _allocate_optimizer_state(optimizers) -> None:
    """Make AdamW allocate its moments now (one step on zero gradients), so they are part of
    the baseline: in training they exist during every step but the first."""
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@contextlib.contextmanager
def _all_rng_restored(device: torch.device):
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _release(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()


class CudaMemory:
    """How the probe reads GPU memory; tests inject an object with the same two methods."""

    def __init__(self, device: torch.device):
        self.device = device

    def usable(self) -> tuple[int, int]:
        """(usable bytes, free bytes): free on the card + what the caching allocator holds unused."""
        _release(self.device)
        free, _total = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return free + cached, free

    def peak_of(self, step: Callable[[], None], batch_size: int) -> int:
        """Bytes `step()` allocates at its peak beyond what was allocated before it."""
        _release(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        base = torch.cuda.memory_allocated(self.device)
        step()
        torch.cuda.synchronize(self.device)
        return torch.cuda.max_memory_allocated(self.device) - base


def probe_batch_size(trainer, start: int, memory=None) -> int:
    """The largest batch whose measured training step fits this card (see the module docstring).

    `trainer` is a `vits.trainer.Trainer` whose models, optimisers, schedulers and scalers
    exist; `memory` defaults to `CudaMemory` (tests pass a fake to run the probe on CPU)."""
    from .data import collate

    device = trainer.device
    if memory is None:
        if device.type != "cuda":
            return start
        memory = CudaMemory(device)
    if not trainer.train_examples:
        return start
    acc = trainer.accelerator
    if acc.num_processes > 1:
        # each probe step would meet the other processes' collectives (DDP, the skip flags) a
        # different number of times, and an out-of-memory in one of them would hang the others
        log.info(
            "automatic batch size: %d, estimated (the probe measures single-process training only: run one "
            "process once and set training.batch_size to the batch it chooses)",
            start,
        )
        return start
    example = worst_case_example(trainer.train_examples)
    seconds = example.num_samples / trainer.spec_config.sampling_rate
    with _all_rng_restored(device):
        restorer = _Restorer(trainer)
        try:
            _allocate_optimizer_state([trainer.opt_g, trainer.opt_d])
            restorer.restore_models()  # AdamW's zero-gradient step applied weight decay
            usable, free = memory.usable()
            margin = probe_margin(usable)

            def measure(batch_size: int) -> int:
                batch = collate([example] * batch_size)

                def step() -> None:
                    trainer.train_step([batch])

                try:
                    return memory.peak_of(step, batch_size)
                finally:
                    restorer.restore_models()
                    _release(device)

            result = largest_fitting_batch(measure, usable - margin, start=start)
        finally:
            restorer.restore()
            _release(device)
    chosen = result.batch_size
    peaks = ", ".join(
        f"{b}: {'out of memory' if p is None else f'{p / GIB:.2f} GiB'}"
        for b, p in sorted(result.peaks.items())
    )
    log.info(
        "batch size probe (%s precision, longest clip %.1f s with %d tokens): usable %.2f GiB = free %.2f GiB "
        "+ %.2f GiB cached, margin %.2f GiB (max of 10 %% and 1 GiB); measured peak per batch: %s",
        trainer.precision, seconds, len(example.input_ids), usable / GIB, free / GIB, (usable - free) / GIB,
        margin / GIB, peaks,
    )  # fmt: skip
    if result.nothing_fits:
        log.warning(
            "batch size probe: even batch 1 needs more than the %.2f GiB this card has for a step; training will "
            "likely run out of memory. Set training.gradient_checkpointing: true, a smaller training.segment_size "
            "or training.max_audio_s, or training.mixed_precision: fp16",
            result.budget_bytes / GIB,
        )
    log.info(
        "automatic batch size: %d (the largest measured to fit %.2f GiB)", chosen, result.budget_bytes / GIB
    )
    return chosen
