"""The VITS training loop: discriminator step then generator step, checkpoints, evaluation.

One optimiser step consumes `gradient_accumulation_steps` batches. For each batch the
discriminator loss (real vs. detached generated audio) is back-propagated; on the last batch
of the group the discriminator steps first, then the generator losses (mel L1, KL, duration
NLL, LSGAN adversarial, feature matching: weights from `training.weight_*`) are computed
against the *updated* discriminator and the generator steps, as in VITS. With accumulation 1
this is exactly VITS's order; with more, the generator losses of the earlier micro-batches see
the discriminator as it was before this step (keeping their graphs alive or re-running the
generator would cost the memory or time accumulation is there to save), as in finetune-hf-vits
(`accelerator.accumulate` over both models). Both optimisers are AdamW (betas and epsilon from the config), with a
linear warm-up over `warmup_steps` and then exponential decay by `lr_decay` per epoch (VITS's
schedule, applied smoothly per step); gradients are clipped to `max_grad_norm`. A step whose
loss (or, in fp32/bf16, gradient norm) is NaN or inf is skipped for the optimiser concerned and
counted; `max_nonfinite_steps` in a row stop the run with an error.

The discriminator's own objective can include the generator's adversarial and feature-matching
losses on the same (detached) generated audio, weighted by `discriminator_generator_loss_weight`:
a pull towards scoring generated audio as real, which keeps the discriminator near the balanced
point instead of winning. finetune-hf-vits (A1) does this by accident of its loop (the
discriminator keeps `requires_grad` during the generator step, so its next step adds the
generator's gradient to its own, weight 1 against its loss weight 3); here it is explicit, on
the current step's audio, costs no extra forward pass and keeps the step stateless (resume
stays exact).

Mixed precision: `accelerate` places the models, wraps them for DDP and picks the precision,
but the optimisers are *not* passed through `accelerator.prepare`: accelerate would give both
one shared GradScaler whose `update()` runs at each optimiser's step, so with accumulation a
scale change at the discriminator step would leave the generator's accumulated gradients
scaled by two different factors. Under fp16 each optimiser has its own `torch.amp.GradScaler`
instead, and each does scale -> backward (accumulated) -> unscale_ -> clip -> step -> update
at its own step only; a scale change therefore only ever affects that optimiser's *next*
step. An fp16 gradient overflow is the scaler's business (the step is skipped and the scale
halved), not a counted non-finite step.

Resuming is exact: the checkpoint holds both models (weight-norm parametrisations included),
both optimisers, schedulers and fp16 grad scalers, the python/numpy/torch/CUDA RNG states,
and the position in the epoch; batches are a pure function of (seed, epoch), evaluation and
sample synthesis run under a forked RNG. So k steps + resume to N equals N straight steps.

The voice saved (final model, each checkpoint's `model/`) and the one the validation loss and
samples measure is a running average of the generator's weights (`ema_length`, see
averaging.py); training itself goes on with the raw weights, which the checkpoint's state keeps
beside the average.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import resource
import shutil
import time
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import fsutil, modeling
from ..errors import PipelineError
from . import losses
from .averaging import WeightAverage
from .batch_probe import auto_batch_size, probe_batch_size
from .checkpointing import enable_gradient_checkpointing
from .data import Example, collate, epoch_batches
from .discriminator import (
    DiscriminatorConfig,
    VitsDiscriminator,
    base_model_discriminator,
    find_discriminator_checkpoint,
    load_discriminator_checkpoint,
)
from .generator import Batch, GeneratorOutput, training_forward
from .models import export_generator, model_summary, prepare_for_training
from .spectrogram import SpectrogramConfig

log = logging.getLogger(__name__)

STATE_DIR = "state"
FULL_CLIP = 1 << 30  # segment length that the training forward clamps to the shortest clip
MODEL_DIR = "model"
TRAINER_STATE = "trainer_state.json"
WEIGHT_AVERAGE = "weight_average.pt"
#: Beside TRAINER_STATE: the run's volatile facts (MLflow run id, seconds, speed, memory). The
#: `*.volatile.json` pattern is in `.dvcignore`, so the checkpoints' DVC hash stays a pure
#: function of inputs, settings and code, while a resume on the same machine still continues
#: the same MLflow run.
TRAINER_RUN_FACTS = "trainer_run.volatile.json"
#: TrainerState fields and history columns that vary from run to run for the same inputs.
VOLATILE_STATE = ("mlflow_run_id", "train_seconds")
VOLATILE_HISTORY = ("steps_per_s", "peak_memory_mb")

#: Below this fp16 loss scale (fp16's smallest normal number) an overflow is no longer the
#: scale's fault but a real NaN/inf gradient: it counts towards `max_nonfinite_steps`.
MIN_LOSS_SCALE = 2.0**-14


def make_accelerator(mixed_precision: str, num_processes_hint: int = 1):
    """An `accelerate.Accelerator`; fp16 without CUDA falls back to fp32 with a warning."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        log.warning("training.mixed_precision fp16 needs CUDA; training in fp32 on this CPU instead")
        mixed_precision = "no"
    state = AcceleratorState._shared_state
    if state and state.get("_mixed_precision", mixed_precision) != mixed_precision:
        # a second training in the same process (tests, notebooks) with another precision
        AcceleratorState._reset_state()
    handlers = [DistributedDataParallelKwargs(find_unused_parameters=True)]
    return Accelerator(mixed_precision=mixed_precision, kwargs_handlers=handlers)


class GeneratorTrainingModule(torch.nn.Module):
    """Wraps VitsModel so that the training forward goes through `forward` (needed by DDP)."""

    def __init__(self, model, spec_config: SpectrogramConfig, segment_frames: int):
        super().__init__()
        self.model = model
        self.spec_config = spec_config
        self.segment_frames = segment_frames

    def forward(
        self, batch: Batch, generator: torch.Generator | None = None, segment_frames: int | None = None
    ) -> GeneratorOutput:
        segment = segment_frames or self.segment_frames
        return training_forward(self.model, batch, self.spec_config, segment, generator)


@dataclass
class TrainerState:
    """Everything about the loop's position that a resumed run needs (JSON-able)."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    consecutive_nonfinite: int = 0
    total_nonfinite: int = 0
    best_val_loss: float | None = None
    best_step: int | None = None
    batch_size: int = 0
    config_hash: str = ""
    mlflow_run_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    last_eval: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    #: processes that made `batch_in_epoch` (each takes every n-th batch of the epoch)
    num_processes: int = 1


def split_volatile(state: TrainerState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state as (what inputs/settings/code determine, what varies run to run)."""
    stable = {k: v for k, v in state.__dict__.items() if k not in VOLATILE_STATE}
    stable["history"] = [{k: v for k, v in row.items() if k not in VOLATILE_HISTORY} for row in state.history]
    volatile: dict[str, Any] = {k: getattr(state, k) for k in VOLATILE_STATE}
    volatile["history"] = [
        {"step": row.get("step"), **{k: row[k] for k in VOLATILE_HISTORY if k in row}} for row in state.history
    ]
    return stable, volatile


def merge_volatile(stable: dict[str, Any], volatile: dict[str, Any]) -> dict[str, Any]:
    """Inverse of `split_volatile` (history timings matched by step)."""
    merged = {**stable, **{k: volatile[k] for k in VOLATILE_STATE if k in volatile}}
    timings = {row.get("step"): row for row in volatile.get("history", [])}
    merged["history"] = [
        {**row, **{k: v for k, v in timings.get(row.get("step"), {}).items() if k != "step"}}
        for row in stable.get("history", [])
    ]
    return merged


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [
            np_state[0],
            torch.from_numpy(np_state[1].copy()),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(tuple(state["python"]) if not isinstance(state["python"], tuple) else state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def reduce_over_processes(value: float, op: str, accelerator) -> float:
    """`value`'s min or max over the processes of a launch (itself with one process)."""
    if accelerator.num_processes == 1:
        return value
    tensor = torch.tensor([float(value)], device=accelerator.device)
    reduce_op = {"min": torch.distributed.ReduceOp.MIN, "max": torch.distributed.ReduceOp.MAX}[op]
    torch.distributed.all_reduce(tensor, op=reduce_op)
    return float(tensor.item())


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


class Trainer:
    """Holds models, optimisers and the loop state. See the module docstring for the algorithm."""

    def __init__(
        self,
        settings,
        model,
        tokenizer,
        speakers: dict[int, dict[str, Any]],
        train_examples: list[Example],
        val_examples: list[Example],
        checkpoint_dir: str | Path,
        *,
        config_hash: str = "",
        tracker=None,
        accelerator=None,
        precision: str | None = None,
    ):
        """`precision` overrides the accelerator's ("no", "fp16", "bf16"); internal, for tests:
        fp16 autocast and loss scaling also run on CPU, which `make_accelerator` refuses users."""
        self.s = settings
        self.tokenizer = tokenizer
        self.speakers = speakers
        self.train_examples = train_examples
        self.val_examples = val_examples
        self.checkpoint_dir = Path(checkpoint_dir)
        self.tracker = tracker
        self.accelerator = accelerator or make_accelerator(settings.mixed_precision)
        self.device = self.accelerator.device
        self.precision = precision or self.accelerator.mixed_precision
        self.amp_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.precision)
        # one loss scaler per optimiser (see the module docstring); disabled = pass-through
        scaling = self.precision == "fp16"
        self.scaler_g = torch.amp.GradScaler(self.device.type, enabled=scaling)
        self.scaler_d = torch.amp.GradScaler(self.device.type, enabled=scaling)

        prepare_for_training(model, settings.dropout)
        if settings.gradient_checkpointing:  # for cards under ~12 GB (see vits/checkpointing.py)
            enable_gradient_checkpointing(model)
        self.spec_config = SpectrogramConfig.from_model_config(
            model.config, n_mels=settings.mel_bins, fmin=settings.mel_fmin, fmax=settings.mel_fmax
        )
        hop = self.spec_config.hop_length
        self.segment_frames = max(1, settings.segment_size // hop)
        self.discriminator = VitsDiscriminator(
            DiscriminatorConfig(
                list(settings.discriminator_periods),
                settings.discriminator_scales,
                settings.discriminator_width,
                settings.discriminator_period_channels,
                settings.discriminator_scale_channels,
            )  # fmt: skip
        )
        self.discriminator_source = self._load_discriminator(settings)
        self.summary = model_summary(model, self.discriminator)

        def adamw(module, lr: float):
            return torch.optim.AdamW(
                module.parameters(), lr=lr, betas=(settings.adam_beta1, settings.adam_beta2),
                eps=settings.adam_epsilon, weight_decay=settings.weight_decay,
            )  # fmt: skip

        gen_module = GeneratorTrainingModule(model, self.spec_config, self.segment_frames)
        # the optimisers stay plain torch ones: prepared, they would share accelerate's scaler
        self.gen, self.disc = self.accelerator.prepare(gen_module, self.discriminator)
        self.opt_g = opt_g = adamw(model, settings.learning_rate)
        self.opt_d = opt_d = adamw(self.discriminator, settings.learning_rate * settings.discriminator_lr_scale)
        self.weight_average = WeightAverage(model, settings.ema_length) if settings.ema_length else None
        self.state = TrainerState(config_hash=config_hash, num_processes=self.accelerator.num_processes)
        self._steps_per_epoch_key: tuple[int, int] | None = None
        self._steps_per_epoch = 1
        max_seconds = max((e.num_samples for e in train_examples), default=0) / self.spec_config.sampling_rate
        self.state.batch_size = settings.batch_size or auto_batch_size(
            self.device,
            max_seconds,
            self.summary["generator_parameters"] + self.summary["discriminator_parameters"],
            settings.segment_size,
        )
        # one batch size for all processes: each must cut the epoch into as many batches (DDP)
        self.state.batch_size = int(reduce_over_processes(self.state.batch_size, "min", self.accelerator))
        warmup, decay = settings.warmup_steps, settings.lr_decay

        def schedule(step: int) -> float:
            """Linear warm-up, then `lr_decay` per epoch (VITS), applied smoothly per step."""
            if warmup and step < warmup:
                return (step + 1) / warmup
            return decay ** ((step - warmup) / self.steps_per_epoch())

        self.sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, schedule)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, schedule)
        if not settings.batch_size and self.device.type == "cuda":  # measured (needs the schedulers)
            self.state.batch_size = probe_batch_size(self, start=self.state.batch_size)
        self._since_log: dict[str, float] = defaultdict(float)
        self._finite_since_log: dict[str, int] = defaultdict(int)
        self._steps_since_log = 0
        self._time_since_log = 0.0

    def _load_discriminator(self, settings) -> str:
        """Pretrained discriminator weights when there are any; returns where they came from
        ("random" when none: written to the log, training_info.json and the model card)."""
        source = settings.discriminator_checkpoint
        path = find_discriminator_checkpoint(source) if source else base_model_discriminator(settings.base_model)
        if path is not None:
            load_discriminator_checkpoint(self.discriminator, path)
            log.info("discriminator: pretrained weights from %s", source or path)
            return str(source or settings.base_model)
        if settings.base_model:
            log.warning(
                "the discriminator starts RANDOM against the pretrained generator %s: its early adversarial "
                "and feature-matching gradients are noise and can roughen the base voice. Set "
                "training.discriminator_checkpoint to the base model's training checkpoint (a local folder or "
                "hub id of a finetune-hf-vits '-train' model, or a VITS D_*.pth) to start from a trained one.",
                settings.base_model,
            )
        return "random"

    # ------------------------------------------------------------------ properties
    @property
    def model(self):
        """The bare VitsModel (with decoder weight norm)."""
        return self.accelerator.unwrap_model(self.gen).model

    @property
    def bare_discriminator(self) -> VitsDiscriminator:
        return self.accelerator.unwrap_model(self.disc)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        lengths = [e.num_samples for e in self.train_examples]
        return epoch_batches(lengths, self.state.batch_size, self.s.seed, epoch,
                             self.accelerator.num_processes, self.accelerator.process_index)  # fmt: skip

    def steps_per_epoch(self) -> int:
        key = (self.state.batch_size, self.accelerator.num_processes)
        if self._steps_per_epoch_key != key:
            batches = len(self.batches_for_epoch(0))
            if not batches:  # more processes than batches: each would get none, and loop forever
                raise PipelineError(
                    f"{len(self.train_examples)} training clips make fewer than one batch of {self.state.batch_size} "
                    f"per process for {self.accelerator.num_processes} processes; lower training.num_processes "
                    "(or --num-processes) or training.batch_size"
                )
            self._steps_per_epoch = max(1, math.ceil(batches / self.s.gradient_accumulation_steps))
            self._steps_per_epoch_key = key
        return self._steps_per_epoch

    def total_steps(self) -> int:
        total = self.s.num_epochs * self.steps_per_epoch()
        return min(total, self.s.max_steps) if self.s.max_steps else total

    # ------------------------------------------------------------------ one step
    def _autocast(self):
        """Autocast to the training precision (a no-op context in fp32)."""
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _optimizer_step(
        self, module, optimizer, scaler: torch.amp.GradScaler, bad_loss: bool, max_norm: float
    ) -> tuple[float, bool]:
        """Unscale, clip, step and update one optimiser with its own scaler: (grad norm, skipped as non-finite).

        A non-finite *loss* drops the accumulated gradients and leaves the scale alone (it says
        nothing about the scale). With loss scaling, non-finite *gradients* are an overflow:
        `scaler.step` skips the step and `scaler.update` lowers the scale; only once the scale
        is below `MIN_LOSS_SCALE` is that a counted non-finite step (a NaN that no scale cures
        would otherwise halve the scale forever). Without scaling they are a non-finite step.
        """
        params = [p for p in module.parameters() if p.grad is not None]
        if bad_loss or not params:
            optimizer.zero_grad(set_to_none=True)
            return float("nan"), bad_loss
        scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm or float("inf")))
        if scaler.is_enabled():
            scale = scaler.get_scale()
            scaler.step(optimizer)  # skipped when unscale_ found inf/NaN gradients
            scaler.update()
            return norm, not math.isfinite(norm) and scale < MIN_LOSS_SCALE
        if not math.isfinite(norm):
            optimizer.zero_grad(set_to_none=True)
            return norm, True
        optimizer.step()
        return norm, False

    def _on_any_process(self, flag: bool) -> bool:
        """True when `flag` is true in any process: all skip (or take) the optimiser step together,
        so that the model copies stay identical."""
        return bool(reduce_over_processes(float(flag), "max", self.accelerator))

    def adversarial_ramp(self) -> float:
        """Weight factor of the adversarial + feature-matching losses: 0 -> 1 over
        `adversarial_warmup_steps` (a random discriminator's early gradients are noise)."""
        warm = self.s.adversarial_warmup_steps
        return 1.0 if not warm else min(1.0, (self.state.step + 1) / warm)

    def adversarial_objective(self, loss_adv: torch.Tensor, loss_fm: torch.Tensor) -> torch.Tensor:
        """The generator's adversarial + feature-matching terms as weighted and ramped in its loss
        (also what `discriminator_generator_loss_weight` adds to the discriminator's)."""
        s = self.s
        return self.adversarial_ramp() * (s.weight_generator * loss_adv + s.weight_feature_matching * loss_fm)

    def train_step(self, micro_batches: list[Batch]) -> dict[str, float]:
        """One optimiser step over `micro_batches`; returns the (averaged) losses and norms."""
        s, acc = self.s, self.accelerator
        self.gen.train()
        self.disc.train()
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_d.zero_grad(set_to_none=True)
        n = len(micro_batches)
        sums: dict[str, float] = defaultdict(float)
        bad_d = bad_g = skipped_d = skipped_g = False
        bare_disc = self.bare_discriminator
        for i, batch in enumerate(micro_batches):
            last = i == n - 1
            batch = batch.to(self.device)
            sync = contextlib.ExitStack()
            if not last:
                sync.enter_context(acc.no_sync(self.gen))
                sync.enter_context(acc.no_sync(self.disc))
            with sync:
                # discriminator: real vs. detached generated audio
                with self._autocast():
                    out = self.gen(batch)
                    scores_r, scores_g, fmaps_r, fmaps_g = self.disc(out.target, out.generated.detach())
                    loss_d = losses.discriminator_loss(scores_r, scores_g)
                    objective_d = loss_d * s.weight_discriminator
                    if s.discriminator_generator_loss_weight:  # see the module docstring
                        objective_d = objective_d + s.discriminator_generator_loss_weight * self.adversarial_objective(
                            losses.generator_adversarial_loss(scores_g), losses.feature_matching_loss(fmaps_r, fmaps_g)
                        )
                # with several processes every rank joins DDP's gradient all-reduce, finite or not
                # (one rank skipping backward would hang the others); the flags are combined below
                if _finite(objective_d) or acc.num_processes > 1:
                    self.scaler_d.scale(objective_d / n).backward()
                bad_d = bad_d or not _finite(objective_d)
                sums["loss_disc"] += float(loss_d.detach()) / n
                # balance: mean LSGAN scores (real -> 1, generated -> 0 for a winning discriminator)
                sums["disc_score_real"] += float(sum(x.detach().float().mean() for x in scores_r) / len(scores_r)) / n
                sums["disc_score_fake"] += float(sum(x.detach().float().mean() for x in scores_g) / len(scores_g)) / n
                if last:
                    disc_clip = s.max_grad_norm if s.max_grad_norm_discriminator is None else s.max_grad_norm_discriminator
                    bad_d = self._on_any_process(bad_d)
                    sums["grad_norm_disc"], skipped_d = self._optimizer_step(
                        self.disc, self.opt_d, self.scaler_d, bad_d, disc_clip
                    )
                # generator: through the (updated) discriminator, which gets no gradient itself
                bare_disc.requires_grad_(False)
                try:
                    with self._autocast():
                        _, scores_g, fmaps_r, fmaps_g = bare_disc(out.target, out.generated)
                        loss_adv = losses.generator_adversarial_loss(scores_g)
                        loss_fm = losses.feature_matching_loss(fmaps_r, fmaps_g)
                    mel = out.mel_l1
                    loss_g = (s.weight_mel * mel + s.weight_kl * out.kl.float() + s.weight_duration * out.duration.float()
                              + self.adversarial_objective(loss_adv, loss_fm))  # fmt: skip
                    if _finite(loss_g) or acc.num_processes > 1:
                        self.scaler_g.scale(loss_g / n).backward()
                    bad_g = bad_g or not _finite(loss_g)
                finally:
                    bare_disc.requires_grad_(True)
                for key, value in (("loss_gen", loss_g), ("mel_l1", mel), ("kl", out.kl), ("duration", out.duration),
                                   ("adversarial", loss_adv), ("feature_matching", loss_fm)):  # fmt: skip
                    sums[key] += float(value.detach()) / n
                if last:
                    bad_g = self._on_any_process(bad_g)
                    sums["grad_norm_gen"], skipped_g = self._optimizer_step(
                        self.gen, self.opt_g, self.scaler_g, bad_g, s.max_grad_norm
                    )
        with warnings.catch_warnings():  # a skipped (non-finite) step still advances the schedule
            warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step\\(\\)` before")
            self.sched_g.step()
            self.sched_d.step()
        if self.scaler_g.is_enabled():
            sums["loss_scale_gen"] = self.scaler_g.get_scale()
            sums["loss_scale_disc"] = self.scaler_d.get_scale()
        sums["nonfinite"] = float(skipped_d or skipped_g)
        return dict(sums)

    # ------------------------------------------------------------------ evaluation
    def _val_batches(self) -> list[list[Example]]:
        items = sorted(self.val_examples[: self.s.eval_max_clips], key=lambda e: e.num_samples)
        size = max(1, self.state.batch_size)
        return [items[i : i + size] for i in range(0, len(items), size)]

    def averaged_weights(self):
        """Context: the generator carries the averaged weights (the voice that is saved); the raw
        ones until `fit` has made a step (`train_step` alone does not update the average)."""
        average = self.weight_average
        return average.applied() if average and average.steps else contextlib.nullcontext()

    def _fork_rng(self):
        devices = [self.device] if self.device.type == "cuda" else []
        return torch.random.fork_rng(devices=devices)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation losses (mel L1 on whole clips, KL, duration; no adversarial terms), fixed noise."""
        if not self.val_examples:
            return {}
        s = self.s
        gen = self.accelerator.unwrap_model(self.gen)
        gen.eval()
        totals: dict[str, float] = defaultdict(float)
        count = 0
        try:
            with self._fork_rng(), self.averaged_weights():
                torch.manual_seed(s.seed)
                window_rng = torch.Generator().manual_seed(s.seed)
                for examples in self._val_batches():
                    batch = collate(examples).to(self.device)
                    with self._autocast():
                        # whole clips (the shortest of the batch): a stabler measure than one window
                        out = gen(batch, generator=window_rng, segment_frames=FULL_CLIP)
                    k = len(examples)
                    totals["val_mel_l1"] += float(out.mel_l1) * k
                    totals["val_kl"] += float(out.kl) * k
                    totals["val_duration"] += float(out.duration) * k
                    count += k
        finally:
            gen.train()
        result = {key: value / count for key, value in totals.items()}
        result["val_loss"] = (s.weight_mel * result["val_mel_l1"] + s.weight_kl * result["val_kl"]
                              + s.weight_duration * result["val_duration"])  # fmt: skip
        return result

    @torch.no_grad()
    def synthesize_samples(self, directory: Path) -> list[Path]:
        """WAVs of the first `eval_samples` validation sentences (fixed seed), for listening."""
        from ..audio import write_wav

        model = self.model
        model.eval()
        paths = []
        try:
            with self._fork_rng(), self.averaged_weights():
                for i, example in enumerate(self.val_examples[: self.s.eval_samples]):
                    torch.manual_seed(self.s.seed + i)
                    ids = torch.tensor([example.input_ids], device=self.device)
                    kwargs = {"speaker_id": example.speaker_id} if model.config.num_speakers > 1 else {}
                    wave = model(input_ids=ids, **kwargs).waveform[0].float().cpu().numpy()
                    path = directory / f"sample_{i}_speaker_{example.speaker_id}.wav"
                    write_wav(path, wave, self.spec_config.sampling_rate)
                    (directory / f"sample_{i}.txt").write_text(example.text + "\n", encoding="utf-8")
                    paths.append(path)
        finally:
            model.train()
        return paths

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, directory: str | Path, extra_info: dict[str, Any] | None = None) -> None:
        """A loadable model directory (the averaged weights): decoder weight norm folded, tokenizer,
        speakers.json."""
        with self.averaged_weights():
            model = export_generator(self.model).to("cpu")
        directory = Path(directory)
        model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))
        modeling.save_speakers(directory, self.speakers)
        if extra_info is not None:
            fsutil.write_json(directory / "training_info.json", extra_info)

    def save_checkpoint(self, val_loss: float | None = None) -> Path | None:
        """checkpoints/checkpoint-<step>/{model,state}, then index.json, then pruning."""
        self.accelerator.wait_for_everyone()
        if not self.is_main:
            return None
        step = self.state.step
        final = self.checkpoint_dir / f"{modeling.CHECKPOINT_PREFIX}{step}"
        with fsutil.atomic_directory(final, "train-checkpoint", ("model", "state")) as tmp:
            self.save_model(tmp / MODEL_DIR)
            state_dir = tmp / STATE_DIR
            state_dir.mkdir()
            torch.save(self.model.state_dict(), state_dir / "generator.pt")
            torch.save(self.bare_discriminator.state_dict(), state_dir / "discriminator.pt")
            if self.weight_average:
                torch.save(self.weight_average.state_dict(), state_dir / WEIGHT_AVERAGE)
            torch.save({"generator": self.opt_g.state_dict(), "discriminator": self.opt_d.state_dict(),
                        "sched_generator": self.sched_g.state_dict(), "sched_discriminator": self.sched_d.state_dict(),
                        "scaler_generator": self.scaler_g.state_dict(),
                        "scaler_discriminator": self.scaler_d.state_dict()},
                       state_dir / "optimizers.pt")  # fmt: skip
            torch.save(_rng_state(), state_dir / "rng.pt")
            stable, volatile = split_volatile(self.state)
            fsutil.write_json(state_dir / TRAINER_STATE, stable)
            fsutil.write_json(state_dir / TRAINER_RUN_FACTS, volatile)
        self._update_index(step, val_loss)
        return final

    def _update_index(self, step: int, val_loss: float | None) -> None:
        index_path = self.checkpoint_dir / modeling.CHECKPOINT_INDEX
        entries = {int(e["step"]): e for e in modeling.list_checkpoints(self.checkpoint_dir)}
        entries[step] = {"step": step, "epoch": self.state.epoch, "val_loss": val_loss,
                         "dir": f"{modeling.CHECKPOINT_PREFIX}{step}"}  # fmt: skip
        ordered = [entries[k] for k in sorted(entries)]
        scored = [e for e in ordered if e.get("val_loss") is not None]
        best = min(scored, key=lambda e: (e["val_loss"], -e["step"]))["step"] if scored else None
        keep = {e["step"] for e in ordered[-self.s.save_total_limit :]}
        if best is not None:
            keep.add(best)
        for entry in ordered:
            if entry["step"] not in keep:
                shutil.rmtree(self.checkpoint_dir / entry["dir"], ignore_errors=True)
        kept = [e for e in ordered if e["step"] in keep]
        fsutil.write_json(index_path, {"checkpoints": kept, "best_step": best, "latest_step": kept[-1]["step"],
                                       "config_hash": self.state.config_hash})  # fmt: skip

    def load_checkpoint(self, directory: str | Path) -> None:
        """Restore everything `save_checkpoint` wrote (the exact-resume contract)."""
        state_dir = Path(directory) / STATE_DIR
        if not (state_dir / TRAINER_STATE).is_file():
            raise PipelineError(f"{directory}: not a training checkpoint (no {STATE_DIR}/{TRAINER_STATE})")

        def load(name):
            return torch.load(state_dir / name, map_location="cpu", weights_only=True)

        self.model.load_state_dict(load("generator.pt"))
        self.bare_discriminator.load_state_dict(load("discriminator.pt"))
        if self.weight_average and (state_dir / WEIGHT_AVERAGE).is_file():
            self.weight_average.load_state_dict(load(WEIGHT_AVERAGE))
        elif self.weight_average:  # made with ema_length off, or by an older version: start it again
            log.warning("%s: no weight average in this checkpoint; the average starts again from its weights",
                        directory)  # fmt: skip
            self.weight_average.restart()
        opt = load("optimizers.pt")
        self.opt_g.load_state_dict(opt["generator"])
        self.opt_d.load_state_dict(opt["discriminator"])
        self.sched_g.load_state_dict(opt["sched_generator"])
        self.sched_d.load_state_dict(opt["sched_discriminator"])
        for scaler, key in ((self.scaler_g, "scaler_generator"), (self.scaler_d, "scaler_discriminator")):
            saved_scaler = opt.get(key) or opt.get("scaler")  # "scaler": the old shared one
            if saved_scaler:  # empty when saved without loss scaling; a disabled scaler ignores it
                scaler.load_state_dict(saved_scaler)
        saved = fsutil.read_json(state_dir / TRAINER_STATE)
        if (state_dir / TRAINER_RUN_FACTS).is_file():  # absent after `dvc pull`: a new MLflow run
            saved = merge_volatile(saved, fsutil.read_json(state_dir / TRAINER_RUN_FACTS))
        config_hash = self.state.config_hash
        self.state = TrainerState(**saved)
        self.state.config_hash = config_hash or self.state.config_hash
        _set_rng_state(load("rng.pt"))
        self._continue_with_process_count(self.accelerator.num_processes)

    def _continue_with_process_count(self, count: int) -> None:
        """A checkpoint made by another number of processes: carry the position in the epoch over
        as the share of the epoch's batches already seen (rounded down: some batches may be seen
        twice, none skipped); an epoch already complete for the new count starts the next one."""
        saved = self.state.num_processes
        self.state.num_processes = count
        if saved == count or not self.state.batch_in_epoch:
            return
        position = self.state.batch_in_epoch * saved // count
        if position >= len(self.batches_for_epoch(self.state.epoch)):
            self.state.epoch, position = self.state.epoch + 1, 0
        log.info("checkpoint made by %d process(es), continuing on %d: epoch %d from batch %d",
                 saved, count, self.state.epoch, position)  # fmt: skip
        self.state.batch_in_epoch = position

    # ------------------------------------------------------------------ the loop
    def _log_step(self, metrics: dict[str, float], seconds: float) -> None:
        """Averages over the steps since the last log row, of finite values only: one skipped
        step (or an fp16 overflow's inf gradient norm) must not turn a whole row into NaN/inf;
        the `nonfinite` column counts those steps."""
        for key, value in metrics.items():
            if math.isfinite(value):
                self._since_log[key] += value
                self._finite_since_log[key] += 1
            else:
                self._since_log[key] += 0.0  # the column exists even if no value was finite
        self._steps_since_log += 1
        self._time_since_log += seconds
        step = self.state.step
        if step % self.s.logging_steps and step != self.total_steps():
            return
        k = self._steps_since_log
        row: dict[str, Any] = {"step": step, "epoch": self.state.epoch, "lr": self.sched_g.get_last_lr()[0]}
        for key, value in self._since_log.items():
            count = self._finite_since_log[key]
            row[key] = value if key == "nonfinite" else value / count if count else float("nan")
        row["steps_per_s"] = k / max(self._time_since_log, 1e-9)
        row["peak_memory_mb"] = peak_memory_mb(self.device)
        self.state.history.append(row)
        self._since_log.clear()
        self._finite_since_log.clear()
        self._steps_since_log = 0
        self._time_since_log = 0.0
        log.info("step %d/%d  epoch %d  loss_gen %.3f  loss_disc %.3f  mel %.3f  kl %.3f  dur %.3f  lr %.2e  %.2f steps/s",
                 step, self.total_steps(), self.state.epoch, row["loss_gen"], row["loss_disc"], row["mel_l1"],
                 row["kl"], row["duration"], row["lr"], row["steps_per_s"])  # fmt: skip
        if self.tracker is not None and self.is_main:
            self.tracker.log_metrics({k2: v for k2, v in row.items() if k2 != "step"}, step)

    def _eval_and_save(self, save: bool, evaluate: bool) -> None:
        val_loss = None
        if evaluate:
            metrics = self.evaluate()
            if metrics:
                val_loss = metrics["val_loss"] if math.isfinite(metrics["val_loss"]) else None
                self.state.last_eval = metrics
                if val_loss is not None and (
                    self.state.best_val_loss is None or val_loss < self.state.best_val_loss
                ):
                    self.state.best_val_loss, self.state.best_step = val_loss, self.state.step
                log.info(
                    "step %d: validation loss %.4f (mel %.4f)",
                    self.state.step,
                    metrics["val_loss"],
                    metrics["val_mel_l1"],
                )
                if self.state.history and self.state.history[-1]["step"] == self.state.step:
                    self.state.history[-1].update(metrics)
                if self.tracker is not None and self.is_main:
                    self.tracker.log_metrics(metrics, self.state.step)
                    if self.tracker.enabled and self.s.eval_samples:
                        import tempfile

                        with tempfile.TemporaryDirectory() as tmp:
                            self.synthesize_samples(Path(tmp))
                            self.tracker.log_artifacts(tmp, f"samples/step-{self.state.step:07d}")
        if save:
            self.save_checkpoint(val_loss)

    def fit(self) -> TrainerState:
        """Train until `total_steps()` (continuing from the restored state, if any)."""
        from tqdm.auto import tqdm

        total = self.total_steps()
        accumulation = self.s.gradient_accumulation_steps
        if self.state.step >= total:
            log.info("already at step %d of %d; nothing to train", self.state.step, total)
            return self.state
        progress = tqdm(total=total, initial=self.state.step, desc="training", unit="step",
                        disable=not self.is_main)  # fmt: skip
        try:
            while self.state.step < total:
                batches = self.batches_for_epoch(self.state.epoch)
                remaining = batches[self.state.batch_in_epoch :]
                loader = torch.utils.data.DataLoader(
                    _ListDataset(self.train_examples), batch_sampler=remaining, collate_fn=collate,
                    num_workers=self.s.num_workers, persistent_workers=False,
                    # own generator: creating an iterator must not draw from the global RNG,
                    # or a run resumed mid-epoch would diverge from an uninterrupted one
                    generator=torch.Generator().manual_seed(self.s.seed + self.state.epoch),
                )  # fmt: skip
                group: list[Batch] = []
                for position, batch in enumerate(loader, start=self.state.batch_in_epoch + 1):
                    group.append(batch)
                    if len(group) < accumulation and position < len(batches):
                        continue
                    started = time.perf_counter()
                    metrics = self.train_step(group)
                    seconds = time.perf_counter() - started
                    group = []
                    self.state.step += 1
                    if self.weight_average:
                        self.weight_average.update(self.state.step)
                    self.state.batch_in_epoch = position
                    self.state.train_seconds += seconds
                    if position >= len(batches):
                        self.state.epoch += 1
                        self.state.batch_in_epoch = 0
                    self._check_nonfinite(metrics)
                    progress.update(1)
                    self._log_step(metrics, seconds)
                    step = self.state.step
                    done = step >= total
                    self._eval_and_save(save=done or step % self.s.save_steps == 0,
                                        evaluate=done or step % self.s.eval_steps == 0)  # fmt: skip
                    if done or self.state.batch_in_epoch == 0:
                        break
        finally:
            progress.close()
        return self.state

    def _check_nonfinite(self, metrics: dict[str, float]) -> None:
        if metrics.get("nonfinite"):
            self.state.consecutive_nonfinite += 1
            self.state.total_nonfinite += 1
            log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)",
                        self.state.step, self.state.consecutive_nonfinite)  # fmt: skip
            if self.state.consecutive_nonfinite >= self.s.max_nonfinite_steps:
                raise PipelineError(
                    f"training stopped at step {self.state.step}: {self.state.consecutive_nonfinite} steps in a row "
                    "had NaN/inf losses (training.max_nonfinite_steps). Lower training.learning_rate, use "
                    "mixed_precision 'no' or 'bf16', or check the dataset; the last good checkpoint is in "
                    f"{self.checkpoint_dir}"
                )
        else:
            self.state.consecutive_nonfinite = 0


class _ListDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Example]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Example:
        return self.items[index]
