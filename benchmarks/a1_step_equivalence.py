"""Check: one training step's losses and gradients, ours against the public recipe (A1).

`voice_quality.py` compares where two whole trainings end; this checks the step itself. Both
sides start from A1's tiny initial model for `--seed` (built by A1's runner, as the voice
benchmark does), take the same first `--batch` training clips and the same torch seed (so the
posterior noise, the duration predictor's noise and the decoder windows are the same draws),
and compute each generator loss term with its own code: mel L1, KL, duration NLL,
adversarial and feature matching, plus the discriminator loss. A1's side runs in A1's venv
(`a1_side_gradients.py`); ours is `vits.generator.training_forward` with `vits.losses` and our
discriminator loaded from A1's weights. For each term the generator's gradient of that term
alone is compared parameter by parameter (weight-norm names mapped).

Prints each loss on both sides and the largest relative gradient difference per term
(|g_ours - g_a1| / |g_a1| over each parameter tensor, tensors with |g_a1| < 1e-6 left out:
those are numerically zero); exits 1 when a loss differs by more than 1e-4 (relative) or a
gradient by more than 1 %.

    python benchmarks/a1_step_equivalence.py --corpus rainbow --seed 123
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import voice_quality as vq  # noqa: E402  (corpus, A1's initial model, data loading)
from a1_side_gradients import TERMS, step_record  # noqa: E402  (what both sides record)

LOSS_TOLERANCE = 1e-4  # relative
GRADIENT_TOLERANCE = 1e-2  # relative, per parameter tensor
NEGLIGIBLE_GRADIENT = 1e-6  # |g| below this is numerically zero on both sides


def weight_norm_name(name: str) -> str:
    """torch's parametrized weight-norm names -> the old `weight_g` / `weight_v` ones."""
    return (name.replace(".parametrizations.weight.original0", ".weight_g")
            .replace(".parametrizations.weight.original1", ".weight_v"))  # fmt: skip


def ours_side(corpus: Path, init: Path, batch_size: int, torch_seed: int) -> dict:
    import csv

    import torch
    from transformers import VitsModel, VitsTokenizer

    from tts_pipeline.vits import losses
    from tts_pipeline.vits.data import collate
    from tts_pipeline.vits.discriminator import (
        DiscriminatorConfig,
        VitsDiscriminator,
        load_discriminator_checkpoint,
    )
    from tts_pipeline.vits.generator import training_forward
    from tts_pipeline.vits.models import prepare_for_training
    from tts_pipeline.vits.spectrogram import SpectrogramConfig

    torch.set_num_threads(1)
    cfg = vq.tiny_config()
    model = VitsModel.from_pretrained(str(init))
    prepare_for_training(model, 0.0)  # A1 trains in eval mode: every dropout off
    tokenizer = VitsTokenizer.from_pretrained(str(init))
    discriminator = VitsDiscriminator(DiscriminatorConfig(
        [2, 3, 5, 7, 11], 1, 1.0, cfg["discriminator_period_channels"], cfg["discriminator_scale_channels"]))  # fmt: skip
    load_discriminator_checkpoint(discriminator, init / "model.safetensors")
    spec = SpectrogramConfig.from_model_config(model.config)
    with open(corpus / "train" / "metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:batch_size]
    batch = collate(vq.load_examples(rows, corpus / "train", tokenizer, spec.hop_length))

    torch.manual_seed(torch_seed)
    out = training_forward(model, batch, spec, cfg["segment_size"] // spec.hop_length)
    scores_real, scores_fake, _, _ = discriminator(out.target, out.generated.detach())
    loss_disc = losses.discriminator_loss(scores_real, scores_fake)
    discriminator.requires_grad_(False)
    _, scores_gen, fmaps_real, fmaps_gen = discriminator(out.target, out.generated)
    terms = {"mel": out.mel_l1, "kl": out.kl, "duration": out.duration,
             "adversarial": losses.generator_adversarial_loss(scores_gen),
             "feature_matching": losses.feature_matching_loss(fmaps_real, fmaps_gen)}  # fmt: skip
    return step_record(model, terms, loss_disc, out.slice_starts)


def compare(a1: dict, ours: dict) -> bool:
    """Print the comparison; True when everything is within tolerance."""
    ok = a1["slice_starts"] == ours["slice_starts"]
    print(f"decoder windows (frames): A1 {a1['slice_starts']}, ours {ours['slice_starts']}")
    rows = [("discriminator", a1["discriminator"], ours["discriminator"])]
    rows += [(t, a1["losses"][t], ours["losses"][t]) for t in TERMS]
    print(
        f"{'term':18} {'A1 loss':>12} {'ours loss':>12} {'rel diff':>9} {'max grad diff':>14}  worst parameter"
    )
    for term, x, y in rows:
        rel = abs(y - x) / max(abs(x), 1e-12)
        ok &= rel <= LOSS_TOLERANCE
        worst, where = 0.0, "-"
        if term in TERMS:
            ga = {weight_norm_name(k): v for k, v in a1["gradients"][term].items()}
            gb = {weight_norm_name(k): v for k, v in ours["gradients"][term].items()}
            if set(ga) != set(gb):
                print(
                    f"  {term}: parameters with a gradient differ: A1 only {sorted(set(ga) - set(gb))[:5]}, "
                    f"ours only {sorted(set(gb) - set(ga))[:5]}"
                )
                ok = False
            for name in sorted(set(ga) & set(gb)):
                norm = float(ga[name].norm())
                if ga[name].shape != gb[name].shape:
                    print(f"  {term}: {name} shape {tuple(ga[name].shape)} vs {tuple(gb[name].shape)}")
                    ok = False
                elif norm >= NEGLIGIBLE_GRADIENT:
                    diff = float((gb[name] - ga[name]).norm()) / norm
                    if diff > worst:
                        worst, where = diff, name
            ok &= worst <= GRADIENT_TOLERANCE
        print(f"{term:18} {x:12.6f} {y:12.6f} {rel:9.1e} {worst:14.1e}  {where}")
    return ok


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", choices=["harvard", "rainbow"], default="rainbow")
    ap.add_argument("--seed", type=int, default=123, help="A1's initial-weight seed")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--torch-seed", type=int, default=1234)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/a1_step_equivalence"))
    ap.add_argument("--a1-python", default="/work/a1venv/bin/python")
    ap.add_argument("--a1-src", default="/work/a1venv/finetune-hf-vits")
    args = ap.parse_args()
    import torch

    corpus = args.workdir / args.corpus / "corpus"
    vq.build_corpus(args.corpus, corpus)
    init = vq.a1_initial_model(corpus, args.seed, args.workdir / args.corpus, args.a1_python, args.a1_src)
    a1_file = args.workdir / args.corpus / f"a1_step_s{args.seed}.pt"
    subprocess.run([args.a1_python, str(Path(__file__).with_name("a1_side_gradients.py")), "--src", args.a1_src,
                    "--corpus", str(corpus), "--init", str(init), "--out", str(a1_file), "--batch", str(args.batch),
                    "--torch-seed", str(args.torch_seed)], check=True)  # fmt: skip
    a1 = torch.load(a1_file, weights_only=False)
    ours = ours_side(corpus, init, args.batch, args.torch_seed)
    print(f"corpus {args.corpus}, A1 initial weights seed {args.seed}, first {args.batch} training clips")
    ok = compare(a1, ours)
    print("SAME step (within tolerance)" if ok else "DIFFERENT step")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
