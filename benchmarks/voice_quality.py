"""Benchmark: voice quality of our trainer side by side with the public recipe (A1).

A1 is ylacombe/finetune-hf-vits run unmodified through `../shared/anchors/a1/run_a1.py` (its
venv from `setup.sh`). Both systems train the same tiny model (A1's `TINY_CONFIG`, 6 speakers,
speaker embedding 16; our discriminator built in A1's layout from its channel lists) from the
same initial weights (`--init a1`: A1's runner builds its tiny model for the seed and ours
loads that generator, tokenizer and discriminator; `--init own`: our own random draw), on the
same clips, batch 4, lr 2e-4, no warm-up,
AdamW weight decay 0.01 (torch's default, which A1 keeps), fp32 on CPU, for the same number
of steps, for each seed; otherwise each system runs with its own defaults (ours: params.yaml's
`training:` values, e.g. `dropout: 0`). Then the SAME evaluation code (ours)
measures both final models:

* train mel L1 / KL / duration NLL / discriminator and generator-adversarial loss: mean of the
  last 5 steps of each system's own log;
* validation mel L1, KL, duration NLL: teacher-forced on the whole validation clips (eval mode);
* synthesized validation sentences, each drawn `SYNTHESIS_DRAWS` (5) times with fixed seeds:
  MCD-DTW (dB) against the real clip and duration ratio (speech seconds synthesized / real),
  means over all draws; clipped outputs (> 0.1 % of samples at full scale) of all draws.

Corpora (rebuilt offline, deterministic): six espeak-ng voices (Debian package `espeak-ng`;
the benchmark checks that it is installed and says how to install it) speaking a fixed list of
sentences, 16 kHz. `--corpus harvard` (the one the trainer was tuned on) and `--corpus rainbow`
(other voices, other sentences, other speaking rates: not tuned on).

    python benchmarks/voice_quality.py --corpus harvard --steps 400 --seeds 123 456
    python benchmarks/voice_quality.py --corpus rainbow --steps 400 --seeds 123 456

Options: `--a1-python` / `--a1-src` (default /work/a1venv), `--only ours|a1`, `--init a1|own`,
`--override` JSON for our training settings (ablations), `--workdir`.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
A1_DIR = REPO.parent / "shared" / "anchors" / "a1"
if not A1_DIR.is_dir():  # a worktree next to the lead's checkout
    A1_DIR = Path("/work/shared/anchors/a1")
SR = 16000
SYNTHESIS_DRAWS = 5  # synthesis draws per validation sentence (MCD-DTW, duration ratio, clipped)

HARVARD = [
    "The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background.",
    "It's easy to tell the depth of a well.", "These days a chicken leg is a rare dish.",
    "Rice is often served in round bowls.", "The juice of lemons makes fine punch.",
    "The box was thrown beside the parked truck.", "The hogs were fed chopped corn and garbage.",
    "Four hours of steady work faced us.", "A large size in stockings is hard to sell.",
    "The boy was there when the sun rose.", "A rod is used to catch pink salmon.",
    "The source of the huge river is the clear spring.", "Kick the ball straight and follow through.",
    "Help the woman get back to her feet.", "A pot of tea helps to pass the evening.",
    "Smoky fires lack flame and heat.", "The soft cushion broke the man's fall.",
    "The salt breeze came across from the sea.", "The girl at the booth sold fifty bonds.",
    "The small pup gnawed a hole in the sock.", "The fish twisted and turned on the bent hook.",
    "Press the pants and sew a button on the vest.", "The swan dive was far short of perfect.",
    "The beauty of the view stunned the young boy.", "Two blue fish swam in the tank.",
    "Her purse was full of useless trash.", "The colt reared and threw the tall rider.",
    "It snowed, rained, and hailed the same morning.", "Read verse out loud for pleasure.",
    "Hoist the load to your left shoulder.", "Take the winding path to reach the lake.",
    "Note closely the size of the gas tank.", "Wipe the grease off his dirty face.",
    "Mend the coat before you go out.", "The wrist was badly strained and hung limp.",
    "The stray cat gave birth to kittens.", "The young girl gave no clear response.",
    "The meal was cooked before the bell rang.", "What joy there is in living.",
    "A king ruled the state in the early days.", "The ship was torn apart on the sharp reef.",
    "Sickness kept him home the third week.", "The wide road shimmered in the hot sun.",
    "The lazy cow lay in the cool grass.", "Lift the square stone over the fence.",
    "The rope will bind the seven books at once.", "Hop over the fence and plunge in.",
]  # fmt: skip
RAINBOW = [
    "When the sunlight strikes raindrops in the air, they act as a prism and form a rainbow.",
    "The rainbow is a division of white light into many beautiful colors.",
    "These take the shape of a long round arch, with its path high above.",
    "Its two ends apparently beyond the horizon.", "There is, according to legend, a boiling pot of gold at one end.",
    "People look, but no one ever finds it.", "When a man looks for something beyond his reach, his friends say he is looking for the pot of gold.",
    "Throughout the centuries people have explained the rainbow in various ways.",
    "Some have accepted it as a miracle without physical explanation.",
    "To the Hebrews it was a token that there would be no more universal floods.",
    "The Greeks used to imagine that it was a sign from the gods to foretell war or heavy rain.",
    "The Norsemen considered the rainbow as a bridge over which the gods passed.",
    "Others have tried to explain the phenomenon physically.", "Aristotle thought that the rainbow was caused by reflection.",
    "Since then physicists have found that it is not reflection, but refraction by the raindrops.",
    "Many complicated ideas about the rainbow have been formed.",
    "The difference in the rainbow depends considerably upon the size of the drops.",
    "The width of the colored band increases as the size of the drops increases.",
    "The actual primary rainbow observed is said to be the effect of many rainbows.",
    "If the red of the second bow falls upon the green of the first, the result is a bow with an abnormally wide yellow band.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "Six spoons of fresh snow peas, five thick slabs of blue cheese, and maybe a snack for her brother Bob.",
    "We also need a small plastic snake and a big toy frog for the kids.",
    "She can scoop these things into three red bags, and we will go meet her Wednesday at the train station.",
]  # fmt: skip
CORPORA = {
    # name: (espeak-ng voices = the six speakers, words per minute per speaker, sentences)
    "harvard": (["en-us", "en-us+f3", "en+m3", "en-gb+f2", "en+m7", "en-us+f4"], [160, 150, 170, 155, 165, 145], HARVARD),
    "rainbow": (["en-gb", "en+f5", "en-us+m2", "en+f1", "en-us+m5", "en-gb+f4"], [175, 140, 150, 185, 135, 160], RAINBOW),
}  # fmt: skip
TRAIN_PER_SPEAKER, VAL_PER_SPEAKER = 7, 1


# ----------------------------------------------------------------------------------- corpus


def build_corpus(name: str, out: Path) -> tuple[list[dict], list[dict]]:
    """WAVs (16 kHz PCM) + train/metadata.csv and val/metadata.csv; returns (train rows, val rows)."""
    import soundfile as sf

    from tts_pipeline.audio import resample

    if shutil.which("espeak-ng") is None:
        raise SystemExit("espeak-ng is not installed: `apt-get install espeak-ng` (Debian package), then rerun")
    voices, rates, sentences = CORPORA[name]
    rows: dict[str, list[dict]] = {"train": [], "val": []}
    per = TRAIN_PER_SPEAKER + VAL_PER_SPEAKER
    for spk, (voice, wpm) in enumerate(zip(voices, rates, strict=True)):
        for k in range(per):
            text = sentences[(spk * per + k) % len(sentences)] if len(sentences) >= 6 * per else sentences[(spk * 3 + k) % len(sentences)]
            split = "train" if k < TRAIN_PER_SPEAKER else "val"
            (out / split).mkdir(parents=True, exist_ok=True)
            file_name = f"spk{spk}_{k:02d}.wav"
            with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
                subprocess.run(["espeak-ng", "-v", voice, "-s", str(wpm), "-w", tmp.name, text], check=True)
                audio, rate = sf.read(tmp.name, dtype="float32")
            audio = resample(audio, rate, SR) * 0.8
            sf.write(out / split / file_name, audio, SR, subtype="PCM_16")
            rows[split].append({"file_name": file_name, "transcription": text.lower(), "speaker_id": str(spk)})
    for split, items in rows.items():
        with open(out / split / "metadata.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["file_name", "transcription", "speaker_id"])
            writer.writeheader()
            writer.writerows(items)
    return rows["train"], rows["val"]


def tiny_config() -> dict:
    sys.path.insert(0, str(A1_DIR))
    from run_a1 import TINY_CONFIG  # the anchor's own tiny model, so both sides build the same

    return dict(TINY_CONFIG)


# ----------------------------------------------------------------------------------- ours


def load_examples(rows: list[dict], directory: Path, tokenizer, hop: int):
    from tts_pipeline.audio import read_wav
    from tts_pipeline.vits.data import Example

    examples = []
    for row in rows:
        audio, _ = read_wav(directory / row["file_name"])
        n = (len(audio) // hop) * hop
        ids = tokenizer(row["transcription"])["input_ids"]
        pcm = np.clip(np.round(audio[:n] * 32767.0), -32768, 32767).astype(np.int16)
        examples.append(Example(ids, pcm, int(row["speaker_id"]), row["transcription"]))
    return examples


def a1_initial_model(corpus: Path, seed: int, work: Path, a1_python: str, a1_src: str) -> Path:
    """A1's freshly built tiny model for `seed` (generator, discriminator and tokenizer, before any
    step), so that both trainers start from the same weights: the one A1's own run of this seed
    saved before training, else built by the runner (one step is run and thrown away)."""
    for init in (work / f"a1_s{seed}" / "tiny_model", work / f"a1init_s{seed}" / "tiny_model"):
        if (init / "model.safetensors").is_file():
            return init
    run_a1(corpus, seed, 1, init.parent, a1_python, a1_src)
    return init


def run_ours(corpus: Path, train_rows, val_rows, seed: int, steps: int, work: Path, override: dict,
             model_override: dict | None = None, init: Path | None = None) -> dict:
    from accelerate.utils import set_seed
    from transformers import VitsModel, VitsTokenizer

    from tts_pipeline import modeling
    from tts_pipeline.config import TrainingSection
    from tts_pipeline.vits.trainer import Trainer

    cfg = tiny_config()
    settings = dict(base_model=None, max_steps=steps, learning_rate=2e-4, batch_size=4, gradient_accumulation_steps=1,
                    mixed_precision="no", warmup_steps=0, weight_decay=0.01, segment_size=cfg["segment_size"],
                    save_steps=10**9, eval_steps=10**9, logging_steps=5, seed=seed, num_workers=0, mlflow=False,
                    eval_samples=0, discriminator_period_channels=cfg["discriminator_period_channels"],
                    discriminator_scale_channels=cfg["discriminator_scale_channels"])  # fmt: skip
    if init is not None:  # A1's initial weights, discriminator included
        settings["discriminator_checkpoint"] = str(init / "model.safetensors")
    settings.update(override)
    s = TrainingSection(**settings)
    work.mkdir(parents=True, exist_ok=True)
    if init is not None:
        tokenizer = VitsTokenizer.from_pretrained(str(init))
        model = VitsModel.from_pretrained(str(init))
        tokenizer.save_pretrained(str(work / "tokenizer"))
    else:  # our own scratch model (same config, our own random draw)
        texts = [r["transcription"] for r in train_rows + val_rows]
        tokenizer = modeling.make_tokenizer(modeling.build_vocab(texts), work / "tokenizer")
        overrides = {k: v for k, v in cfg.items() if k not in ("num_speakers", "speaker_embedding_size", "sampling_rate")}
        overrides["speaker_embedding_size"] = 16
        overrides.update(model_override or {})
        set_seed(seed)
        model = modeling.build_scratch_model(overrides, tokenizer.get_vocab(), 6, SR)
    hop = int(math.prod(model.config.upsample_rates))
    train = load_examples(train_rows, corpus / "train", tokenizer, hop)
    val = load_examples(val_rows, corpus / "val", tokenizer, hop)
    speakers = {i: {"name": f"spk{i}"} for i in range(6)}
    set_seed(seed)
    trainer = Trainer(s, model, tokenizer, speakers, train, val, work / "checkpoints", accelerator=None)
    trainer.fit()
    out = work / "model"
    shutil.rmtree(out, ignore_errors=True)
    trainer.save_model(out)
    last = trainer.state.history[-1]
    return {"model_dir": out, "tokenizer_dir": out, "params_disc": trainer.summary["discriminator_parameters"],
            "train": {"mel_l1": last["mel_l1"], "kl": last["kl"], "duration": last["duration"],
                      "disc": last["loss_disc"], "gen_adv": last["adversarial"], "fmaps": last["feature_matching"]}}  # fmt: skip


# ----------------------------------------------------------------------------------- A1


def run_a1(corpus: Path, seed: int, steps: int, work: Path, a1_python: str, a1_src: str,
           training_seed_offset: int = 0) -> dict:
    """A1 for `seed`: its initial weights are drawn from `seed`; its training (batch order, noise,
    segments) from `seed + training_seed_offset`, so an offset run is A1 against itself."""
    shutil.rmtree(work, ignore_errors=True)
    cmd = [a1_python, str(A1_DIR / "run_a1.py"), "--src", a1_src, "--workdir", str(work), "--steps", str(steps),
           "--batch", "4", "--seed", str(seed), "--lr", "2e-4", "--data-dir", str(corpus / "train"), "--multispeaker",
           "--threads", str(os.environ.get("BENCH_THREADS", "1"))]  # fmt: skip
    if training_seed_offset:
        cmd += ["--recipe-override", json.dumps({"seed": seed + training_seed_offset})]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"A1 failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    record = json.loads((work / f"steps_b4_s{steps}.json").read_text())
    last = record["postfix"][-5:]

    def mean(key):
        return float(np.mean([float(d[key]) for d in last]))

    return {"model_dir": work / f"out_b4_s{steps}", "tokenizer_dir": work / "tiny_model",
            "train": {"mel_l1": mean("step_loss_mel"), "kl": mean("step_loss_kl"), "duration": mean("step_loss_duration"),
                      "disc": mean("step_loss_disc"), "gen_adv": mean("step_loss_gen"), "fmaps": mean("step_loss_fmaps")}}  # fmt: skip


# ----------------------------------------------------------------------------------- evaluation


def evaluate(model_dir: Path, tokenizer_dir: Path, corpus: Path, val_rows: list[dict], seed: int,
             draws: int = SYNTHESIS_DRAWS) -> dict:
    """Teacher-forced validation losses and synthesis metrics, same code for both systems.

    Synthesis samples the prior and the durations (noise scales 0.667 / 0.8), so one draw per
    sentence makes MCD-DTW and the duration ratio noisy; each sentence is synthesized `draws`
    times (fixed seeds) and the metrics are means over all of them."""
    import torch
    from transformers import VitsModel, VitsTokenizer

    from tts_pipeline import speech_metrics as sm
    from tts_pipeline.vits.data import collate
    from tts_pipeline.vits.generator import training_forward
    from tts_pipeline.vits.spectrogram import SpectrogramConfig

    model = VitsModel.from_pretrained(str(model_dir)).eval()
    tokenizer = VitsTokenizer.from_pretrained(str(tokenizer_dir))
    spec = SpectrogramConfig.from_model_config(model.config)
    examples = load_examples(val_rows, corpus / "val", tokenizer, spec.hop_length)
    tf = {"mel_l1": [], "kl": [], "duration": []}
    mcd, ratio, clipped = [], [], 0
    with torch.no_grad():
        for i, ex in enumerate(examples):
            torch.manual_seed(seed + i)
            out = training_forward(model, collate([ex]), spec, 1 << 30)
            tf["mel_l1"].append(float(out.mel_l1))
            tf["kl"].append(float(out.kl))
            tf["duration"].append(float(out.duration))
            ref = ex.audio.astype(np.float32) / 32768.0
            ref_speech_s = max(sm.speech_duration_s(ref, SR), 1e-3)
            for draw in range(draws):
                torch.manual_seed(seed + i + 1000 * draw)  # draw 0: the single draw of earlier tables
                wave = model(input_ids=torch.tensor([ex.input_ids]), speaker_id=ex.speaker_id).waveform[0].numpy()
                mcd.append(sm.mcd_dtw(ref, wave, SR))
                ratio.append(sm.speech_duration_s(wave, SR) / ref_speech_s)
                clipped += sm.clipping_ratio(wave) > 0.001
    return {"val_mel_l1": float(np.mean(tf["mel_l1"])), "val_kl": float(np.mean(tf["kl"])),
            "val_duration": float(np.mean(tf["duration"])), "mcd_dtw": float(np.mean(mcd)),
            "duration_ratio": float(np.mean(ratio)), "clipped": f"{clipped}/{len(mcd)}"}  # fmt: skip


COLUMNS = [("train", "mel_l1"), ("train", "kl"), ("train", "duration"), ("train", "disc"), ("train", "gen_adv"),
           ("val", "val_mel_l1"), ("val", "val_kl"), ("val", "val_duration"), ("val", "mcd_dtw"),
           ("val", "duration_ratio"), ("val", "clipped")]  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", choices=sorted(CORPORA), default="harvard")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[123, 456])
    ap.add_argument("--only", choices=["ours", "a1"], default=None)
    ap.add_argument("--override", default="{}", help="JSON overrides of our training settings (ablations)")
    ap.add_argument("--model-override", default="{}",
                    help='JSON overrides of our tiny VitsConfig, e.g. \'{"hidden_dropout": 0}\' (ablations)')
    ap.add_argument("--init", choices=["a1", "own"], default="a1",
                    help="a1: our trainer starts from A1's initial weights for the seed (the same model, "
                         "discriminator included); own: from our own scratch model (another random draw)")
    ap.add_argument("--a1-training-seed-offset", type=int, default=0,
                    help="A1 trains with seed + this (its initial weights still from seed): with --only a1 "
                         "and another --workdir, A1 against itself, the per-run spread of the comparison")
    ap.add_argument("--a1-python", default="/work/a1venv/bin/python")
    ap.add_argument("--a1-src", default="/work/a1venv/finetune-hf-vits")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "voice-quality"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    os.environ["BENCH_THREADS"] = str(args.threads)
    work = Path(args.workdir) / args.corpus
    corpus = work / "corpus"
    shutil.rmtree(corpus, ignore_errors=True)
    train_rows, val_rows = build_corpus(args.corpus, corpus)
    print(f"corpus {args.corpus}: {len(train_rows)} train / {len(val_rows)} validation clips, 6 espeak-ng voices; "
          f"{args.steps} steps, batch 4, lr 2e-4, seeds {args.seeds}", flush=True)  # fmt: skip
    results = []
    for seed in args.seeds:  # interleaved: A1 then ours for each seed (same machine load)
        for system in ("a1", "ours"):
            if args.only and system != args.only:
                continue
            if system == "a1":
                r = run_a1(corpus, seed, args.steps, work / f"a1_s{seed}", args.a1_python, args.a1_src,
                           args.a1_training_seed_offset)
            else:
                init = None
                if args.init == "a1":
                    init = a1_initial_model(corpus, seed, work, args.a1_python, args.a1_src)
                r = run_ours(corpus, train_rows, val_rows, seed, args.steps, work / f"ours_s{seed}",
                             json.loads(args.override), json.loads(args.model_override), init)  # fmt: skip
            r["val"] = evaluate(r["model_dir"], r["tokenizer_dir"], corpus, val_rows, seed)
            row = {"system": system, "seed": seed, **{k: r[g][k] for g, k in COLUMNS}}
            results.append(row)
            print(json.dumps(row), flush=True)
    header = ["system", "seed"] + [k for _, k in COLUMNS]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in results:
        cells = [f"{row[k]:.3f}" if isinstance(row[k], float) else str(row[k]) for k in header]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
