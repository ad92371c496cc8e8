"""A1's side of `a1_step_equivalence.py`: run in A1's venv (transformers 4.56, finetune-hf-vits).

Loads A1's tiny initial model as `run_vits_finetuning.py` prepares it (weight norm on the
decoder and the flows' conv_pre/conv_post, the discriminator split off with weight norm), builds
one batch of the first `--batch` training clips with A1's own feature extractor and collator,
seeds torch, runs A1's training forward once and saves each loss term with the generator's
gradient of that term alone (A1's own loss functions).

    $A1_PYTHON a1_side_gradients.py --src A1_SRC --corpus DIR --init DIR --out FILE.pt
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile

TERMS = ("mel", "kl", "duration", "adversarial", "feature_matching")


def step_record(model, losses: dict, loss_disc, slice_starts) -> dict:
    """What each side of the comparison saves: the loss values, the decoder windows and, per
    term in TERMS, the generator's gradient of that term alone (by parameter name). Shared by
    both sides (`a1_step_equivalence.py` imports it), so they record the same things alike."""
    import torch

    params = dict(model.named_parameters())
    gradients = {}
    for term in TERMS:
        grads = torch.autograd.grad(losses[term], list(params.values()), retain_graph=True, allow_unused=True)
        gradients[term] = {n: g.detach().clone() for n, g in zip(params, grads, strict=True) if g is not None}
    return {"losses": {k: float(v.detach()) for k, v in losses.items()}, "discriminator": float(loss_disc.detach()),
            "slice_starts": slice_starts.tolist(), "gradients": gradients}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", required=True, help="finetune-hf-vits checkout (A1's)")
    ap.add_argument("--corpus", required=True, help="folder with train/metadata.csv and its WAVs")
    ap.add_argument("--init", required=True, help="A1's tiny initial model (tiny_model/)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--torch-seed", type=int, default=1234)
    args = ap.parse_args()
    sys.path.insert(0, args.src)
    import run_vits_finetuning as recipe  # noqa: E402  (A1's module: losses, collator)
    import soundfile as sf  # noqa: E402
    import torch  # noqa: E402
    from monotonic_align import maximum_path  # noqa: E402
    from transformers import VitsTokenizer  # noqa: E402
    from utils import VitsDiscriminator, VitsFeatureExtractor, VitsModelForPreTraining, slice_segments  # noqa: E402

    torch.set_num_threads(1)
    model = VitsModelForPreTraining.from_pretrained(args.init)
    model.decoder.apply_weight_norm()
    for flow in model.flow.flows:
        torch.nn.utils.weight_norm(flow.conv_pre)
        torch.nn.utils.weight_norm(flow.conv_post)
    with tempfile.TemporaryDirectory() as tmp:  # as the recipe does
        model.discriminator.save_pretrained(tmp)
        discriminator = VitsDiscriminator.from_pretrained(tmp)
    for sub in discriminator.discriminators:
        sub.apply_weight_norm()
    del model.discriminator
    extractor = VitsFeatureExtractor.from_pretrained(args.init)
    tokenizer = VitsTokenizer.from_pretrained(args.init)

    with open(f"{args.corpus}/train/metadata.csv", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[: args.batch]
    features = []
    for row in rows:
        audio, rate = sf.read(f"{args.corpus}/train/{row['file_name']}", dtype="float32")
        extracted = extractor(audio, sampling_rate=rate, return_attention_mask=False, do_normalize=False)
        features.append({
            "input_ids": tokenizer(row["transcription"], return_attention_mask=False)["input_ids"],
            "labels": extracted["input_features"][0],
            "mel_scaled_input_features": extracted["mel_scaled_input_features"][0],
            "waveform": audio, "speaker_id": int(row["speaker_id"]),
        })  # fmt: skip
    batch = recipe.DataCollatorTTSWithPadding(tokenizer=tokenizer, feature_extractor=extractor,
                                              forward_attention_mask=True)(features)  # fmt: skip

    torch.manual_seed(args.torch_seed)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                labels_attention_mask=batch["labels_attention_mask"], speaker_id=batch["speaker_id"],
                return_dict=True, monotonic_alignment_function=maximum_path)  # fmt: skip
    mel_target = slice_segments(batch["mel_scaled_input_features"], out.ids_slice, model.segment_size)
    mel_generated = extractor._torch_extract_fbank_features(out.waveform.squeeze(1))[1]
    target = slice_segments(batch["waveform"].transpose(1, 2), out.ids_slice * extractor.hop_length,
                            model.config.segment_size)  # fmt: skip
    scores_real, _ = discriminator(target)
    scores_fake, _ = discriminator(out.waveform.detach())
    loss_disc = recipe.discriminator_loss(scores_real, scores_fake)[0]
    _, fmaps_real = discriminator(target)
    scores_gen, fmaps_gen = discriminator(out.waveform)
    losses = {
        "mel": torch.nn.functional.l1_loss(mel_target, mel_generated),
        "kl": recipe.kl_loss(out.prior_latents, out.posterior_log_variances, out.prior_means,
                             out.prior_log_variances, out.labels_padding_mask),
        "duration": torch.sum(out.log_duration),
        "adversarial": recipe.generator_loss(scores_gen)[0],
        "feature_matching": recipe.feature_loss(fmaps_real, fmaps_gen),
    }  # fmt: skip
    torch.save(step_record(model, losses, loss_disc, out.ids_slice), args.out)


if __name__ == "__main__":
    main()
