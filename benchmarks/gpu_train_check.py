"""GPU check of the training stage: full MMS-size VITS, a few real steps in fp16 and bf16.

For each precision: a random-init model with VitsConfig's defaults (the MMS architecture,
36 M generator) and the full 46.7 M discriminator, trained by our `Trainer` for a few steps on
synthetic 15 s clips (harmonic tones + noise, random text) at the batch size `auto_batch_size`
picks for a 12 GB card; prints finite losses, `torch.cuda.max_memory_allocated` (is it within
12 GB?), then saves a checkpoint, builds a second trainer, resumes and checks that one more step
gives the same losses as the uninterrupted trainer's step.

    python benchmarks/gpu_train_check.py [--steps 3] [--card_gb 12] [--mel_basis mel.npy]

`--mel_basis`: a precomputed (80, 513) Slaney filter bank (the GPU image has no librosa);
`python benchmarks/gpu_train_check.py --write_mel_basis mel.npy` writes it on a machine that has.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--card_gb", type=float, default=12.0)
    ap.add_argument("--batch_size", type=int, default=0, help="instead of the 12 GB auto size")
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--precisions", nargs="+", default=["fp16", "bf16"])
    ap.add_argument("--mel_basis", default=None)
    ap.add_argument("--write_mel_basis", default=None)
    ap.add_argument("--cpu_smoke", action="store_true", help="tiny model on the CPU: checks this script only")
    ap.add_argument("--determinism", action="store_true",
                    help="instead: train the same model twice from the same seed per precision and "
                         "report whether the weights are bit-identical (what the README says of GPUs)")  # fmt: skip
    ap.add_argument("--deterministic_algorithms", action="store_true",
                    help="torch.use_deterministic_algorithms(True) and deterministic cuDNN for --determinism")
    args = ap.parse_args()
    if args.deterministic_algorithms:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False

    from tts_pipeline.vits import spectrogram

    if args.write_mel_basis:
        cfg = spectrogram.SpectrogramConfig()
        np.save(args.write_mel_basis, spectrogram.mel_basis(cfg, "cpu").numpy())
        return
    if not torch.cuda.is_available() and not args.cpu_smoke:
        raise SystemExit("no CUDA device")
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    cuda = device.type == "cuda"
    scratch = {"layerdrop": 0.1}
    if args.cpu_smoke:
        import yaml

        demo = Path(__file__).resolve().parents[1] / "languages" / "demo.yaml"
        scratch.update(yaml.safe_load(demo.read_text())["training"]["scratch_model"])
    if args.mel_basis:
        basis = torch.from_numpy(np.load(args.mel_basis)).to(device)
        cfg = spectrogram.SpectrogramConfig()
        spectrogram._MEL_BASES[(cfg.sampling_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.fmax, str(device))] = basis

    from accelerate.utils import set_seed

    from tts_pipeline import modeling
    from tts_pipeline.config import TrainingSection
    from tts_pipeline.vits.batch_probe import batch_size_for_memory
    from tts_pipeline.vits.data import Example
    from tts_pipeline.vits.trainer import Trainer, make_accelerator

    print(f"device {torch.cuda.get_device_name(0) if cuda else 'cpu'}, torch {torch.__version__}", flush=True)
    rng = np.random.default_rng(0)
    vocab = modeling.build_vocab(["abcdefghijklmnopqrstuvwxyz .,"])
    sr, hop = 16000, 256

    def clip(i: int) -> Example:
        n = int(args.seconds * sr) // hop * hop
        t = np.arange(n) / sr
        f0 = 100 + 20 * i
        wave = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6)) * 0.2 + rng.normal(0, 0.01, n)
        ids = [int(x) for x in rng.integers(1, len(vocab), size=int(args.seconds * 12))]
        ids = [0 if j % 2 == 0 else ids[j // 2] for j in range(2 * len(ids) + 1)]  # add_blank layout
        return Example(ids, (np.clip(wave, -1, 1) * 32767).astype(np.int16), 0, "synthetic")

    examples = [clip(i) for i in range(24)]
    results = {}
    if args.determinism:
        for precision in args.precisions:
            runs = []
            for _ in range(2):
                with tempfile.TemporaryDirectory() as tmp:
                    set_seed(0)
                    model = modeling.build_scratch_model(scratch, vocab, 1, sr)
                    settings = TrainingSection(base_model=None, max_steps=args.steps, batch_size=args.batch_size or 2,
                                               gradient_accumulation_steps=1, mixed_precision=precision,
                                               num_workers=0, save_steps=10**9, eval_steps=10**9, logging_steps=1,
                                               mlflow=False, warmup_steps=0)  # fmt: skip
                    tokenizer = modeling.make_tokenizer(vocab, Path(tmp) / "tok")
                    set_seed(0)
                    trainer = Trainer(settings, model, tokenizer, {0: {"name": "s"}}, examples, [],
                                      Path(tmp) / "ck", accelerator=make_accelerator(precision))  # fmt: skip
                    trainer.fit()
                    runs.append({k: v.detach().float().cpu().clone() for k, v in model.state_dict().items()})
                    del trainer, model
            a, b = runs
            diff = max(float((a[k] - b[k]).abs().max()) for k in a)
            results[precision] = {"bit_identical": all(torch.equal(a[k], b[k]) for k in a),
                                  "max_abs_weight_difference": diff, "steps": args.steps}  # fmt: skip
            print(json.dumps({precision: results[precision]}), flush=True)
        print("GPU-DETERMINISM " + json.dumps(results))
        return
    for precision in args.precisions:
        with tempfile.TemporaryDirectory() as tmp:
            set_seed(0)
            model = modeling.build_scratch_model(scratch, vocab, 1, sr)
            n_gen = sum(p.numel() for p in model.parameters())
            n_params = n_gen + 46_700_000
            batch = args.batch_size or batch_size_for_memory(int(args.card_gb * 1e9), args.seconds, n_params, 8192)
            settings = TrainingSection(base_model=None, max_steps=args.steps + 1, batch_size=batch,
                                       gradient_accumulation_steps=1, mixed_precision=precision, num_workers=0,
                                       save_steps=10**9, eval_steps=10**9, logging_steps=1, mlflow=False,
                                       warmup_steps=0)  # fmt: skip
            acc = make_accelerator(precision)
            tokenizer = modeling.make_tokenizer(vocab, Path(tmp) / "tok")
            set_seed(0)
            trainer = Trainer(settings, model, tokenizer, {0: {"name": "s"}}, examples, [], Path(tmp) / "ck",
                              accelerator=acc)  # fmt: skip
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            trainer.s.max_steps = args.steps
            trainer.fit()
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
            losses = [{k: round(float(r[k]), 4) for k in ("loss_gen", "loss_disc", "mel_l1", "kl", "duration")}
                      for r in trainer.state.history]  # fmt: skip
            finite = all(math.isfinite(v) for r in losses for v in r.values())
            trainer.save_checkpoint()
            ck = Path(tmp) / "ck" / f"{modeling.CHECKPOINT_PREFIX}{args.steps}"
            # the uninterrupted trainer's next step, then a fresh trainer resumed from the checkpoint
            trainer.s.max_steps = args.steps + 1
            trainer.fit()
            straight = trainer.state.history[-1]
            set_seed(0)
            model2 = modeling.build_scratch_model(scratch, vocab, 1, sr)
            resumed = Trainer(settings, model2, tokenizer, {0: {"name": "s"}}, examples, [], Path(tmp) / "ck2",
                              accelerator=acc)  # fmt: skip
            resumed.load_checkpoint(ck)
            resumed.s.max_steps = args.steps + 1
            resumed.fit()
            again = resumed.state.history[-1]
            same = all(abs(float(straight[k]) - float(again[k])) <= 1e-3 * max(1.0, abs(float(straight[k])))
                       for k in ("loss_gen", "loss_disc", "mel_l1"))  # fmt: skip
            results[precision] = {"batch_size_for_12GB": batch, "peak_allocated_GiB": round(peak, 2),
                                  "within_card": peak * 2**30 <= args.card_gb * 1e9, "finite": finite,
                                  "losses": losses, "resume_step_matches": same,
                                  "straight": {k: round(float(straight[k]), 4) for k in ("loss_gen", "mel_l1")},
                                  "resumed": {k: round(float(again[k]), 4) for k in ("loss_gen", "mel_l1")},
                                  "s_per_step": round(1 / max(trainer.state.history[-2]["steps_per_s"], 1e-9), 3),
                                  "generator_params": n_gen}  # fmt: skip
            print(json.dumps({precision: results[precision]}), flush=True)
            del trainer, resumed, model, model2
            if cuda:
                torch.cuda.empty_cache()
    print("GPU-CHECK " + json.dumps(results))


if __name__ == "__main__":
    main()
