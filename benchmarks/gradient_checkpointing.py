"""Benchmark: what `training.gradient_checkpointing` saves, on the MMS-size model.

One full training step (generator training forward, discriminator on the segment, generator
losses, backward) of a randomly initialised MMS-size VitsModel (transformers' default
VitsConfig) + the full discriminator, batch `--batch_size` x `--seconds` of audio, fp32, with
checkpointing off and on (in that order, then again, so the second pair is warm). Memory is
the peak of live tensor bytes, counted exactly: a TorchDispatchMode registers every new
storage an operation creates and a finalizer subtracts it when it is freed. That is what
`torch.cuda.max_memory_allocated` measures on a GPU (without the allocator's rounding), and
the weights and gradients are in it too. Runs on CPU: no GPU needed.

    python benchmarks/gradient_checkpointing.py [--seconds 8] [--batch_size 2] [--threads 2] [--repeats 2]

Prints JSON: peak MB off / on, the ratio, and seconds per step off / on.
"""

from __future__ import annotations

import argparse
import json
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once while the mode is active (plus `base`)."""

    def __init__(self, base: int = 0):
        super().__init__()
        self.live = self.peak = base
        self.seen: set[int] = set()

    def _release(self, key: int, size: int) -> None:
        self.seen.discard(key)
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in self.seen:
                    size = storage.nbytes()
                    self.seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._release, key, size)
        return out


def one_step(model, disc, batch, spec) -> tuple[float, float]:
    from tts_pipeline.vits import generator, losses

    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *disc.parameters()])
    torch.manual_seed(0)
    start = time.perf_counter()
    with LiveTensorBytes(base=resident) as mem:
        out = generator.training_forward(model, batch, spec, 8192 // spec.hop_length)
        scores_r, scores_g, fmaps_r, fmaps_g = disc(out.target, out.generated)
        loss = 45 * out.mel_l1 + out.kl + out.duration + losses.generator_adversarial_loss(scores_g)
        loss = loss + losses.feature_matching_loss(fmaps_r, fmaps_g)
        loss.backward()
        del out, scores_r, scores_g, fmaps_r, fmaps_g, loss
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    disc.zero_grad(set_to_none=True)
    return mem.peak / 2**20, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per item")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2, help="off/on pairs; the last pair is reported")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import copy

    from transformers import VitsConfig, VitsModel

    from tts_pipeline.vits.checkpointing import enable_gradient_checkpointing
    from tts_pipeline.vits.discriminator import VitsDiscriminator
    from tts_pipeline.vits.generator import Batch
    from tts_pipeline.vits.models import prepare_for_training
    from tts_pipeline.vits.spectrogram import SpectrogramConfig

    torch.manual_seed(0)
    plain = VitsModel(VitsConfig(vocab_size=40, layerdrop=0.0))
    prepare_for_training(plain)
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    disc = VitsDiscriminator()
    spec = SpectrogramConfig.from_model_config(plain.config)
    b, samples = args.batch_size, int(args.seconds * 16000) // 256 * 256
    tokens = int(args.seconds * 14) * 2 + 1  # ~14 characters per second, with blanks
    batch = Batch(torch.randint(1, 40, (b, tokens)), torch.ones(b, tokens, dtype=torch.long),
                  torch.randn(b, samples) * 0.1, torch.full((b,), samples), torch.zeros(b, dtype=torch.long))  # fmt: skip
    runs: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
    for _ in range(max(1, args.repeats)):
        runs["off"].append(one_step(plain, disc, batch, spec))
        runs["on"].append(one_step(checkpointed, disc, batch, spec))
    off_mb, off_s = runs["off"][-1]
    on_mb, on_s = runs["on"][-1]
    print(json.dumps({
        "model": "MMS-size VitsModel (default VitsConfig) + full discriminator, fp32, CPU",
        "batch": f"{b} x {args.seconds:g} s, segment 8192 samples",
        "peak_live_tensor_mb": {"off": round(off_mb), "on": round(on_mb)},
        "peak_ratio_on_off": round(on_mb / off_mb, 3),
        "seconds_per_step": {"off": round(off_s, 2), "on": round(on_s, 2)},
        "first_pair": {k: [round(v[0][0]), round(v[0][1], 2)] for k, v in runs.items()},
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
