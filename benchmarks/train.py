"""Benchmark: VITS training steps/s and peak memory (tiny model on CPU; CUDA too when present).

Same process, same batch, same model: the full training step (numba monotonic alignment
search, discriminator step then generator step) against two baselines:

* `numpy MAS`: the identical step with the batch-vectorised numpy alignment search instead of
  the numba kernel (what a pure-Python/numpy implementation costs);
* `generator only`: the VITS generator forward + mel/KL/duration losses + AdamW, no
  discriminator (the price of the GAN part).

Plus the alignment search alone on a 16 x 800 x 200 problem, and optionally (`--mms_memory`)
the activation memory per second of audio of the MMS-size model, the basis of the estimate
the CUDA batch-size probe starts from (`vits/batch_probe.py: ACTIVATION_BYTES_PER_AUDIO_SECOND`). Memory: the activations
autograd keeps for backward in one step (counted per storage with `saved_tensors_hooks`:
independent of allocator caching), the process's peak resident set, and on CUDA
`torch.cuda.max_memory_allocated`.

    python benchmarks/train.py [--steps 20] [--batch_size 4] [--threads 1] [--mms_memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "librispeech-6spk"
TEXTS = ["she sells sea shells by the shore", "a quick brown fox jumps", "hello there my dear friend",
         "the rain in spain stays mainly"]  # fmt: skip

from tts_pipeline import modeling  # noqa: E402
from tts_pipeline.audio import decode_audio  # noqa: E402
from tts_pipeline.config import load_config  # noqa: E402
from tts_pipeline.vits import alignment, generator  # noqa: E402
from tts_pipeline.vits.data import Example, collate  # noqa: E402


@contextmanager
def activation_bytes():
    """Yields a dict that gets 'mb': bytes of tensors autograd saved for backward (activations).

    Counted through `saved_tensors_hooks` (each storage once), so the figure does not depend on
    the allocator's caching, unlike the process's resident set.
    """
    seen: dict[int, int] = {}
    result: dict[str, float] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield result
    result["mb"] = sum(seen.values()) / 2**20


def examples(tokenizer, count: int, seconds: float) -> list[Example]:
    items = []
    clips = sorted(CLIPS.glob("*/*.webm"))
    for i in range(count):
        wave = decode_audio(clips[i], 16000)[: int(seconds * 16000) // 256 * 256]
        audio = (wave.clip(-1, 1) * 32767).astype("int16")
        items.append(Example(list(tokenizer(TEXTS[i % 4])["input_ids"]), audio, i % 2, TEXTS[i % 4]))
    return items


def make_trainer(args, workdir: Path, device_cpu: bool):
    from accelerate.utils import set_seed

    from tts_pipeline.vits.trainer import Trainer

    demo = yaml.safe_load((REPO / "languages" / "demo.yaml").read_text())["training"]
    lang = workdir / "bench.yaml"
    lang.write_text(yaml.safe_dump({"language": {"code": "bench"}, "source": {"type": "local", "path": "."},
                                    "training": {**demo, "batch_size": args.batch_size, "mlflow": False}}))  # fmt: skip
    cfg = load_config(lang, REPO / "params.yaml")
    vocab = modeling.build_vocab(TEXTS)
    tokenizer = modeling.make_tokenizer(vocab, workdir / "tok")
    set_seed(0)
    model = modeling.build_scratch_model(cfg.training.scratch_model, vocab, num_speakers=2)
    items = examples(tokenizer, args.batch_size, args.seconds)
    return Trainer(cfg.training, model, tokenizer, {0: {"name": "a"}, 1: {"name": "b"}}, items, items[:1],
                   workdir / "ckpt"), items  # fmt: skip


def time_steps(step, steps: int, device: torch.device) -> tuple[float, float]:
    """(steps per second, activation MB of one step)."""
    for _ in range(3):  # warm-up: numba compilation, allocator
        step()
    with activation_bytes() as mem:
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps / (time.perf_counter() - start), mem["mb"]


def generator_only_step(trainer, batch):
    """VITS generator losses without the GAN: the 'no discriminator' baseline."""
    optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-4, betas=(0.8, 0.99), eps=1e-9)
    s = trainer.s

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        out = trainer.gen(batch)
        loss = s.weight_mel * out.mel_l1 + s.weight_kl * out.kl + s.weight_duration * out.duration
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), s.max_grad_norm)
        optimizer.step()

    return step


def mas_micro() -> dict[str, float]:
    ll = torch.randn(16, 800, 200)
    mask = torch.ones_like(ll)
    alignment.maximum_path(ll, mask)  # compile
    result = {}
    for name, fn in (("numba", alignment.maximum_path), ("numpy", alignment.maximum_path_numpy)):
        start = time.perf_counter()
        for _ in range(5):
            fn(ll, mask)
        result[f"mas_{name}_ms"] = (time.perf_counter() - start) / 5 * 1000
    return result


def mms_memory(seconds_list=(2.0, 8.0)) -> dict[str, float]:
    """Peak memory of one full-size (MMS) training step vs. audio length (batch 1, fp32)."""
    from transformers import VitsConfig, VitsModel

    from tts_pipeline.vits import losses
    from tts_pipeline.vits.discriminator import VitsDiscriminator
    from tts_pipeline.vits.models import prepare_for_training
    from tts_pipeline.vits.spectrogram import SpectrogramConfig

    torch.manual_seed(0)
    model = VitsModel(VitsConfig(vocab_size=40, layerdrop=0.0))
    prepare_for_training(model)
    disc = VitsDiscriminator()
    spec = SpectrogramConfig.from_model_config(model.config)
    peaks = {}
    for seconds in seconds_list:
        samples = int(seconds * 16000) // 256 * 256
        tokens = int(seconds * 14) * 2 + 1  # ~14 characters per second, with blanks
        batch = generator.Batch(torch.randint(1, 40, (1, tokens)), torch.ones(1, tokens, dtype=torch.long),
                                torch.randn(1, samples) * 0.1, torch.tensor([samples]), torch.zeros(1, dtype=torch.long))  # fmt: skip
        with activation_bytes() as mem:
            out = generator.training_forward(model, batch, spec, 32)
            scores_r, scores_g, fr, fg = disc(out.target, out.generated)
            loss = 45 * out.mel_l1 + out.kl + out.duration + losses.generator_adversarial_loss(scores_g)
            loss = loss + losses.feature_matching_loss(fr, fg)
            loss.backward()
            del out, scores_r, scores_g, fr, fg, loss
        model.zero_grad(set_to_none=True)
        disc.zero_grad(set_to_none=True)
        peaks[seconds] = mem["mb"]
    (s1, p1), (s2, p2) = list(peaks.items())[:2]
    return {f"mms_activation_mb_{s:g}s": p for s, p in peaks.items()} | {
        "mms_mb_per_audio_second": (p2 - p1) / (s2 - s1)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.5, help="audio per item")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--mms_memory", action="store_true", help="also measure the MMS-size model's memory")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    report: dict[str, float | str] = {"torch_threads": args.threads, "batch_size": args.batch_size,
                                      "seconds_per_item": args.seconds}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        trainer, items = make_trainer(args, Path(tmp), True)
        batch = collate(items)
        device = trainer.device
        report["device"] = str(device)
        full = lambda: trainer.train_step([batch])  # noqa: E731
        report["full_steps_per_s"], report["full_activation_mb"] = time_steps(full, args.steps, device)
        numba_mas = alignment.maximum_path
        alignment.maximum_path = alignment.maximum_path_numpy
        try:
            report["numpy_mas_steps_per_s"], report["numpy_mas_activation_mb"] = time_steps(
                full, args.steps, device
            )
        finally:
            alignment.maximum_path = numba_mas
        gen_step = generator_only_step(trainer, batch.to(device))
        report["generator_only_steps_per_s"], report["generator_only_activation_mb"] = time_steps(
            gen_step, args.steps, device
        )
    report |= mas_micro()
    if args.mms_memory:
        report |= mms_memory()
    report["speedup_vs_numpy_mas"] = report["full_steps_per_s"] / report["numpy_mas_steps_per_s"]
    report["gan_cost_ratio"] = report["generator_only_steps_per_s"] / report["full_steps_per_s"]
    report["mas_kernel_speedup"] = report["mas_numpy_ms"] / report["mas_numba_ms"]
    report["process_max_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if torch.cuda.is_available():
        report["cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    for key, value in report.items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    print(json.dumps(report), file=sys.stderr)


if __name__ == "__main__":
    main()
