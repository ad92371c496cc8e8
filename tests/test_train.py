"""The train stage end to end on CPU with a tiny VITS model and real audio (LibriSpeech clips).

The datasets are built here the way the dataset stage writes them: a DatasetDict saved to disk
with an `Audio` column of embedded WAV bytes, `speakers.json` and `vocab.json`.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

import pytest
import torch
import yaml
from vits_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from tts_pipeline import modeling
from tts_pipeline.audio import decode_audio
from tts_pipeline.config import load_config
from tts_pipeline.errors import PipelineError

REPO = Path(__file__).resolve().parents[1]
CLIPS = REPO / "tests" / "data" / "librispeech-6spk"
TEXTS = ["she sells sea shells", "a quick brown fox", "hello there my friend", "the rain in spain",
         "good morning to you", "we will meet again"]  # fmt: skip
TINY_TRAINING = {
    "base_model": None,
    "scratch_model": yaml.safe_load((REPO / "languages" / "demo.yaml").read_text())["training"][
        "scratch_model"
    ],
    "discriminator_width": 0.0625,
    "batch_size": 2,
    "gradient_accumulation_steps": 1,
    "mixed_precision": "no",
    "max_steps": 4,
    "save_steps": 2,
    "save_total_limit": 2,
    "logging_steps": 1,
    "eval_steps": 2,
    "warmup_steps": 2,
    "segment_size": 2048,
    "num_workers": 0,
    "mlflow": False,
}


def make_dataset(
    out: Path, speakers=("1688", "1998"), per_speaker=3, seconds=1.0, with_speaker_column=True
) -> Path:
    import soundfile as sf
    from datasets import Audio, Dataset, DatasetDict, Features, Value

    rows: dict[str, list] = {"train": [], "validation": []}
    for sid, spk in enumerate(speakers):
        for i, clip in enumerate(sorted((CLIPS / spk).glob("*.webm"))[: per_speaker + 1]):
            wave = decode_audio(clip, 16000)[4800 : 4800 + int(seconds * 16000)]
            buffer = io.BytesIO()
            sf.write(buffer, wave, 16000, format="WAV", subtype="PCM_16")
            row = {
                "audio": {"bytes": buffer.getvalue(), "path": f"{clip.stem}.wav"},
                "text": TEXTS[(i + sid) % 6],
            }
            if with_speaker_column:
                row |= {"speaker_id": sid, "speaker": f"reader_{spk}"}
            rows["train" if i < per_speaker else "validation"].append(row)
    columns = {"audio": {"bytes": Value("binary"), "path": Value("string")}, "text": Value("string")}
    if with_speaker_column:
        columns |= {"speaker_id": Value("int64"), "speaker": Value("string")}
    data = DatasetDict(
        {
            name: Dataset.from_list(items, features=Features(columns)).cast_column(
                "audio", Audio(sampling_rate=16000)
            )
            for name, items in rows.items()
        }
    )
    data.save_to_disk(str(out))
    if with_speaker_column:
        speakers_json = {
            str(i): {"name": f"reader_{s}", "clips": per_speaker, "hours": 0.001}
            for i, s in enumerate(speakers)
        }
        (out / "speakers.json").write_text(json.dumps(speakers_json))
    (out / "vocab.json").write_text(json.dumps(modeling.build_vocab(TEXTS)))
    return out


@pytest.fixture(scope="module")
def two_speakers(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "dataset")


def make_config(tmp: Path, params: Path | None = None, **training):
    lang = {"language": {"code": "tt"}, "source": {"type": "local", "path": str(tmp)},
            "training": {**TINY_TRAINING, **training}}  # fmt: skip
    path = tmp / "tt.yaml"
    path.write_text(yaml.safe_dump(lang))
    return load_config(path, params or REPO / "params.yaml")


def paths_for(tmp: Path, dataset: Path, name: str = "run"):
    from tts_pipeline.train import TrainPaths

    return TrainPaths(dataset=dataset, output_dir=tmp / name / "model", checkpoint_dir=tmp / name / "checkpoints",
                      metrics_file=tmp / name / "metrics" / "train.json")  # fmt: skip


def make_trainer(cfg, dataset: Path, tmp: Path, **trainer_kwargs):
    from accelerate.utils import set_seed

    from tts_pipeline.train import build_generator
    from tts_pipeline.vits.data import dataset_speakers, load_dataset_dict, prepare_split
    from tts_pipeline.vits.trainer import Trainer

    data = load_dataset_dict(dataset)
    speakers = dataset_speakers(dataset, data)
    set_seed(cfg.training.seed)
    model, tokenizer = build_generator(cfg, dataset, len(speakers), tmp)
    common = {"sampling_rate": 16000, "hop_length": 256, "max_audio_s": 15.0, "num_speakers": len(speakers)}
    train, _ = prepare_split(data["train"], tokenizer, where="train", **common)
    val, _ = prepare_split(data["validation"], tokenizer, where="validation", **common)
    return Trainer(
        cfg.training, model, tokenizer, speakers, train, val, tmp / "checkpoints", **trainer_kwargs
    )


def test_one_step_changes_generator_and_discriminator(tmp_path, two_speakers):
    from tts_pipeline.vits.data import collate

    trainer = make_trainer(make_config(tmp_path), two_speakers, tmp_path)
    gen_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    disc_before = {k: v.clone() for k, v in trainer.bare_discriminator.state_dict().items()}
    metrics = trainer.train_step([collate(trainer.train_examples[:2])])
    assert metrics["nonfinite"] == 0
    for name in ("loss_gen", "loss_disc", "mel_l1", "kl", "duration", "adversarial", "feature_matching"):
        assert torch.isfinite(torch.tensor(metrics[name])), name
    gen_changed = [k for k, v in trainer.model.state_dict().items() if not torch.equal(v, gen_before[k])]
    disc_changed = [
        k for k, v in trainer.bare_discriminator.state_dict().items() if not torch.equal(v, disc_before[k])
    ]
    for part in (
        "text_encoder.",
        "posterior_encoder.",
        "flow.",
        "duration_predictor.",
        "decoder.",
        "embed_speaker.",
    ):
        assert any(k.startswith(part) for k in gen_changed), f"{part} did not learn"
    assert len(disc_changed) == len(disc_before), "every discriminator weight moves"

    # gradient accumulation: two batches, one optimiser step each for D and G
    before_acc = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    batches = [collate(trainer.train_examples[:2]), collate(trainer.train_examples[2:4])]
    metrics = trainer.train_step(batches)
    assert metrics["nonfinite"] == 0 and trainer.opt_g.state_dict()["state"][0]["step"] == 2
    assert any(not torch.equal(v, before_acc[k]) for k, v in trainer.model.state_dict().items())


def test_adam_epsilon_setting_reaches_both_optimisers(tmp_path, two_speakers):
    """training.adam_epsilon (default 1e-8, as A1; VITS's 1e-9 learned the mel more slowly)."""
    assert make_config(tmp_path).training.adam_epsilon == 1e-8
    trainer = make_trainer(make_config(tmp_path, adam_epsilon=1e-7), two_speakers, tmp_path)
    assert [g["eps"] for opt in (trainer.opt_g, trainer.opt_d) for g in opt.param_groups] == [1e-7, 1e-7]


def test_discriminator_learning_rate_is_scaled_from_the_generators(tmp_path, two_speakers):
    cfg = make_config(tmp_path, learning_rate=2e-4, discriminator_lr_scale=0.25, warmup_steps=0)
    trainer = make_trainer(cfg, two_speakers, tmp_path)
    assert [g["lr"] for g in trainer.opt_g.param_groups] == [2e-4]
    assert [g["lr"] for g in trainer.opt_d.param_groups] == [pytest.approx(5e-5)]
    for _ in range(3):  # the schedule keeps the ratio
        trainer.sched_g.step()
        trainer.sched_d.step()
    assert trainer.sched_d.get_last_lr()[0] == pytest.approx(0.25 * trainer.sched_g.get_last_lr()[0])


def test_discriminator_channels_setting_builds_and_loads_that_layout(tmp_path, two_speakers):
    """training.discriminator_*_channels build finetune-hf-vits' layout for those channels, and a
    discriminator saved in that recipe's file layout (keys under `discriminator.`, `final_conv`,
    weight norm folded) loads into it and then trains."""
    from safetensors.torch import save_file

    from tts_pipeline.vits.data import collate

    channels = {"discriminator_period_channels": [1, 4, 8, 16], "discriminator_scale_channels": [1, 8, 16]}
    source = make_trainer(make_config(tmp_path, **channels), two_speakers, tmp_path).bare_discriminator
    assert tuple(source.discriminators[1].convs[0].weight.shape) == (4, 1, 5, 1)
    assert tuple(source.discriminators[0].convs[1].weight.shape) == (16, 2, 41)  # 8 -> 16, groups 4
    folded = {}
    for name, module in source.named_modules():
        if hasattr(module, "parametrizations"):
            key = f"discriminator.{name.replace('conv_post', 'final_conv')}"
            folded[f"{key}.weight"] = module.weight.detach().clone() * 1.5  # recognisably not a fresh draw
            folded[f"{key}.bias"] = module.bias.detach().clone()
    save_file(folded, str(tmp_path / "model.safetensors"))
    cfg = make_config(tmp_path, discriminator_checkpoint=str(tmp_path / "model.safetensors"), **channels)
    trainer = make_trainer(cfg, two_speakers, tmp_path)
    loaded = dict(trainer.bare_discriminator.named_modules())
    for key, value in folded.items():
        if key.endswith(".weight"):
            module = loaded[key[len("discriminator.") : -len(".weight")].replace("final_conv", "conv_post")]
            assert torch.allclose(module.weight, value, atol=1e-6), key
    assert trainer.train_step([collate(trainer.train_examples[:2])])["nonfinite"] == 0


def test_balance_is_logged_and_discriminator_weight_and_clipping_apply(tmp_path, two_speakers):
    """Discriminator loss weight (A1: 3) scales its gradient; the balance figures are logged."""
    from tts_pipeline.vits.data import collate

    batch = [collate([e]) for e in make_trainer(make_config(tmp_path), two_speakers, tmp_path).train_examples[:1]]
    norms = {}
    for weight in (1.0, 3.0):
        cfg = make_config(tmp_path, weight_discriminator=weight, max_grad_norm=1e9, discriminator_generator_loss_weight=0.0)
        metrics = make_trainer(cfg, two_speakers, tmp_path).train_step(batch)
        norms[weight] = metrics["grad_norm_disc"]
        for key in ("disc_score_real", "disc_score_fake", "grad_norm_gen", "grad_norm_disc", "loss_disc"):
            assert math.isfinite(metrics[key]), key
    assert norms[3.0] == pytest.approx(3 * norms[1.0], rel=1e-4)


def test_discriminator_generator_loss_pulls_the_discriminator_towards_balance(tmp_path, two_speakers):
    """`discriminator_generator_loss_weight` adds the generator's adversarial loss to the
    discriminator's objective: with it alone, the discriminator's step raises its score of the
    generated audio (towards "real"); with neither term, the discriminator gets no gradient."""
    from tts_pipeline.vits.data import collate

    def one_step(follow: float, weight_d: float):
        cfg = make_config(tmp_path, discriminator_generator_loss_weight=follow, weight_discriminator=weight_d,
                          weight_feature_matching=0.0, learning_rate=1e-3, discriminator_lr_scale=1.0,
                          warmup_steps=0, max_grad_norm=1e9)  # fmt: skip
        trainer = make_trainer(cfg, two_speakers, tmp_path)
        batch = [collate(trainer.train_examples[:2])]
        with torch.no_grad():
            out = trainer.gen(batch[0].to(trainer.device))

        def fake_score() -> float:
            with torch.no_grad():
                _, scores, _, _ = trainer.bare_discriminator(out.target, out.generated)
            return float(sum(x.float().mean() for x in scores) / len(scores))

        before = fake_score()
        metrics = trainer.train_step(batch)
        return before, fake_score(), metrics["grad_norm_disc"]

    before, after, norm = one_step(follow=1.0, weight_d=0.0)
    assert norm > 0 and after > before, (before, after, norm)
    assert one_step(follow=0.0, weight_d=0.0)[2] == 0.0


def test_overfits_one_short_utterance(tmp_path, two_speakers):
    from tts_pipeline.vits.data import collate

    cfg = make_config(tmp_path, learning_rate=3e-4, warmup_steps=0, batch_size=1, segment_size=4096)
    trainer = make_trainer(cfg, two_speakers, tmp_path)
    example = trainer.train_examples[0]
    example.audio = example.audio[: 256 * 50]  # 0.8 s
    trainer.train_examples = trainer.val_examples = [example]
    before = trainer.evaluate()
    batch = collate([example])
    for _ in range(100):
        assert trainer.train_step([batch])["nonfinite"] == 0
    after = trainer.evaluate()
    # mel L1 on the whole clip: ~4.5 -> ~2.0 (ratio 0.41-0.50 over seeds 1, 2, 42)
    assert after["val_mel_l1"] < 0.65 * before["val_mel_l1"], (before, after)
    assert after["val_loss"] < 0.2 * before["val_loss"], (before, after)


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, two_speakers):
    """An uninterrupted 6-step run, and one "killed" after step 4 then resumed to step 6.

    6 train clips, batch 2: 3 batches per epoch, so step 4 resumes in the middle of epoch 2.
    Shared by the resume tests below (each checks one behaviour); none of them changes it.
    """
    from tts_pipeline.train import train

    tmp = tmp_path_factory.mktemp("resume")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as `one_torch_thread`, which a module fixture runs before
    try:
        straight = train(make_config(tmp, max_steps=6), paths_for(tmp, two_speakers, "straight"))
        part = paths_for(tmp, two_speakers, "resumed")
        first = train(make_config(tmp, max_steps=4), part)  # "killed" after step 4
        resumed = train(make_config(tmp, max_steps=6), part)  # same settings, longer run
    finally:
        torch.set_num_threads(threads)
    return tmp, straight, first, resumed, part


def test_resume_after_kill_equals_uninterrupted_run(resumed_run):
    tmp, straight, first, resumed, part = resumed_run
    assert straight.steps == 6 and straight.resumed_from is None
    assert first.steps == 4
    assert resumed.resumed_from == 4 and resumed.steps == 6
    a, b = _weights(straight.model_dir), _weights(resumed.model_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    disc_a = torch.load(
        part.checkpoint_dir / "checkpoint-6" / "state" / "discriminator.pt", weights_only=True
    )
    disc_b = torch.load(tmp / "straight" / "checkpoints" / "checkpoint-6" / "state" / "discriminator.pt",
                        weights_only=True)  # fmt: skip
    assert all(torch.equal(disc_a[k], disc_b[k]) for k in disc_a)


def test_resumed_training_curve_continues_the_first_part(resumed_run):
    _, _, _, _, part = resumed_run
    curve = (part.metrics_file.parent / "train_curve.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in curve[1:]] == ["1", "2", "3", "4", "5", "6"]


def test_resume_keeps_the_last_checkpoints_and_the_best(resumed_run):
    """save_total_limit keeps the last 2 plus the best; index.json lists them."""
    _, _, _, _, part = resumed_run
    index = json.loads((part.checkpoint_dir / "index.json").read_text())
    steps = [c["step"] for c in index["checkpoints"]]
    assert steps[-2:] == [4, 6] and set(steps) <= {2, 4, 6} and index["best_step"] in steps


def test_checkpoints_resolve_by_latest_best_and_step_and_speak(resumed_run):
    _, _, _, _, part = resumed_run
    index = json.loads((part.checkpoint_dir / "index.json").read_text())
    assert modeling.resolve_checkpoint(part.output_dir, part.checkpoint_dir, "latest") == (
        part.checkpoint_dir / "checkpoint-6" / "model"
    )
    best = modeling.resolve_checkpoint(part.output_dir, part.checkpoint_dir, "best")
    assert best == part.checkpoint_dir / f"checkpoint-{index['best_step']}" / "model"
    assert (
        modeling.resolve_checkpoint(part.output_dir, part.checkpoint_dir, "4").parent.name == "checkpoint-4"
    )
    assert modeling.load_voice(best).synthesize("hello there", speaker_id=1).size > 0


def test_a_changed_setting_starts_over(resumed_run, tmp_path):
    """--resume insists on the checkpoints; otherwise another config clears them (on a copy here)."""
    import shutil

    from tts_pipeline.train import choose_resume

    _, _, _, _, part = resumed_run
    checkpoints = tmp_path / "checkpoints"
    shutil.copytree(part.checkpoint_dir, checkpoints)
    assert choose_resume(checkpoints, "another-config", resume=True) is not None  # --resume insists
    assert choose_resume(checkpoints, "another-config", resume=None) is None
    assert modeling.list_checkpoints(checkpoints) == []
    with pytest.raises(PipelineError, match="no checkpoint"):
        choose_resume(checkpoints, "x", resume=True)


def test_saved_model_reloads_bit_identically_and_speaks(tmp_path, two_speakers):
    from transformers import VitsModel, pipeline

    from tts_pipeline.train import train

    paths = paths_for(tmp_path, two_speakers)
    result = train(make_config(tmp_path, max_steps=2), paths)
    saved = _weights(paths.output_dir)
    reloaded = VitsModel.from_pretrained(str(paths.output_dir))
    state = reloaded.state_dict()
    assert saved.keys() == state.keys()
    assert all(torch.equal(saved[k], state[k]) for k in saved)
    # the same weights as the final checkpoint's model (the trained state, folded)
    ckpt = _weights(paths.checkpoint_dir / "checkpoint-2" / "model")
    assert all(torch.equal(saved[k], ckpt[k]) for k in saved)

    voice = modeling.load_voice(paths.output_dir)
    assert voice.speakers[1]["name"] == "reader_1998"
    audio = voice.synthesize("hello there my friend", speaker_id=voice.speaker_id("reader_1998"))
    assert (
        audio.dtype.name == "float32" and audio.size > 1000 and torch.isfinite(torch.from_numpy(audio)).all()
    )
    speech = pipeline("text-to-speech", model=str(paths.output_dir), device="cpu")("hello")
    assert speech["sampling_rate"] == 16000 and speech["audio"].size > 0

    info = json.loads((paths.output_dir / "training_info.json").read_text())
    assert info["steps"] == 2 and info["speakers"] == 2 and info["train_split"]["kept"] == 6
    assert info["dropout"] == {"hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
                               "duration_predictor_dropout": 0.0}  # training.dropout (default 0) was applied
    metrics = json.loads(paths.metrics_file.read_text())
    assert metrics["step"] == 2 and metrics["val_loss"] is not None and result.metrics == metrics
    header = (paths.metrics_file.parent / "train_curve.tsv").read_text().splitlines()[0].split("\t")
    assert header[:3] == ["step", "epoch", "lr"] and "mel_l1" in header


def test_model_directory_is_byte_identical_run_after_run(tmp_path, two_speakers):
    """The model directory is a DVC output: same inputs + settings + code -> same bytes (no
    timings, run ids, git revision or paths inside; those go to training_run.json beside it)."""
    from tts_pipeline.train import train

    cfg = make_config(tmp_path, max_steps=2)
    first, second = paths_for(tmp_path, two_speakers, "a"), paths_for(tmp_path, two_speakers, "b")
    train(cfg, first)
    train(cfg, second)
    files = sorted(p.relative_to(first.output_dir) for p in first.output_dir.rglob("*") if p.is_file())
    assert {"training_info.json", "README.md", "model.safetensors"} <= {str(f) for f in files}
    for rel in files:
        assert (first.output_dir / rel).read_bytes() == (second.output_dir / rel).read_bytes(), rel
    info = json.loads((first.output_dir / "training_info.json").read_text())
    assert not {"git_revision", "mlflow_run_id", "wall_seconds_this_run", "dataset"} & set(info)
    assert info["discriminator"] == "random"
    assert "random" in (first.output_dir / "README.md").read_text()
    run = json.loads((first.output_dir.parent / "training_run.json").read_text())
    assert {"git_revision", "mlflow_run_id", "wall_seconds_this_run"} <= set(run)

    # the checkpoints (a persisted DVC output) too, but for the run facts that .dvcignore hides
    from tts_pipeline.vits.trainer import TRAINER_RUN_FACTS

    ckpts = sorted(p.relative_to(first.checkpoint_dir) for p in first.checkpoint_dir.rglob("*") if p.is_file())
    assert any(p.name == "trainer_state.json" for p in ckpts)
    for rel in ckpts:
        if rel.name != TRAINER_RUN_FACTS:
            assert (first.checkpoint_dir / rel).read_bytes() == (second.checkpoint_dir / rel).read_bytes(), rel
    facts = json.loads(next(first.checkpoint_dir.rglob(TRAINER_RUN_FACTS)).read_text())
    assert {"mlflow_run_id", "train_seconds"} <= set(facts)
    assert "*.volatile.json" in (Path(__file__).parents[1] / ".dvcignore").read_text()


def test_configured_learning_rate_reaches_the_optimizer(tmp_path, two_speakers):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["training"]["learning_rate"] = "5e-5"  # as `dvc exp run -S training.learning_rate=5e-5` writes it
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params))
    overrides = {k: v for k, v in TINY_TRAINING.items()}
    cfg = make_config(tmp_path, params=params_file, **overrides)
    cfg_lr = cfg.training.learning_rate
    assert cfg_lr == 5e-5
    trainer = make_trainer(cfg, two_speakers, tmp_path)
    scale = cfg.training.discriminator_lr_scale  # the discriminator's rate follows the generator's
    for optimizer, lr in ((trainer.opt_g, 5e-5), (trainer.opt_d, 5e-5 * scale)):
        group = optimizer.param_groups[0]
        assert group["initial_lr"] == pytest.approx(lr)
        assert group["lr"] == pytest.approx(lr / 2)  # warm-up step 1 of 2
        assert group["betas"] == (0.8, 0.99)
    trainer.train_step([trainer_batch(trainer)])
    assert trainer.opt_g.param_groups[0]["lr"] == pytest.approx(5e-5)
    assert trainer.opt_d.param_groups[0]["lr"] == pytest.approx(5e-5 * scale)


def trainer_batch(trainer):
    from tts_pipeline.vits.data import collate

    return collate(trainer.train_examples[:2])


def test_single_speaker_dataset_without_speaker_columns_trains(tmp_path):

    from tts_pipeline import cli

    dataset = make_dataset(tmp_path / "single", speakers=("2414",), per_speaker=4, with_speaker_column=False)
    paths = paths_for(tmp_path, dataset)
    make_config(tmp_path, max_steps=2)  # writes tmp_path/tt.yaml
    argv = ["train", "--config", str(tmp_path / "tt.yaml"), "--params", str(REPO / "params.yaml"),
            "--dataset_path", str(dataset), "--output_dir", str(paths.output_dir), "--checkpoint_dir",
            str(paths.checkpoint_dir), "--metrics_file", str(paths.metrics_file), "--no-resume"]  # fmt: skip
    assert cli.main(argv) == 0
    voice = modeling.load_voice(paths.output_dir)
    assert voice.model.config.num_speakers == 1 and voice.speakers == {0: {"name": "speaker_0"}}
    assert voice.synthesize("good morning").size > 0
    assert json.loads(paths.metrics_file.read_text())["step"] == 2
    argv[argv.index("--no-resume")] = "--resume"
    assert cli.main(argv) == 0  # finished run: resumes at step 2, nothing to train, same model
    assert json.loads((paths.output_dir.parent / "training_run.json").read_text())["resumed_from"] == 2


def test_fine_tunes_a_single_speaker_base_model_on_two_speakers(tmp_path, two_speakers):
    """The MMS path: `training.base_model` (a local directory here: no hub offline) + its tokenizer."""
    from tts_pipeline.train import train

    base = tmp_path / "base"
    torch.manual_seed(0)
    vocab = modeling.build_vocab(TEXTS)
    modeling.make_tokenizer(vocab, base).save_pretrained(str(base))
    base_model = modeling.build_scratch_model(TINY_TRAINING["scratch_model"], vocab, num_speakers=1)
    base_model.save_pretrained(str(base))
    paths = paths_for(tmp_path, two_speakers)
    result = train(make_config(tmp_path, base_model=str(base), max_steps=2, speaker_embedding_size=8), paths)
    voice = modeling.load_voice(paths.output_dir)
    assert voice.model.config.num_speakers == 2 and voice.model.config.speaker_embedding_size == 8
    assert all(torch.isfinite(p).all() for p in voice.model.parameters())
    assert result.info["base_model"] == str(base) and voice.synthesize("hello", speaker_id=1).size > 0


def test_fp16_on_cpu_falls_back_to_fp32_with_a_warning(caplog):
    from tts_pipeline.vits.trainer import make_accelerator

    with caplog.at_level(logging.WARNING):
        accelerator = make_accelerator("fp16")
    assert accelerator.mixed_precision == "no"
    assert any("fp16 needs CUDA" in r.message for r in caplog.records)
    assert make_accelerator("bf16").mixed_precision == "bf16"  # bf16 autocast is allowed on CPU
    make_accelerator("no")


def test_bf16_step_runs_on_cpu(tmp_path, two_speakers):
    trainer = make_trainer(make_config(tmp_path, mixed_precision="bf16"), two_speakers, tmp_path)
    metrics = trainer.train_step([trainer_batch(trainer)])
    assert metrics["nonfinite"] == 0 and metrics["mel_l1"] > 0


def _scalers(trainer, gen_scale: float, disc_scale: float) -> None:
    """Give a (CPU, fp16) trainer fresh loss scalers with known, different initial scales."""
    trainer.scaler_g = torch.amp.GradScaler("cpu", init_scale=gen_scale)
    trainer.scaler_d = torch.amp.GradScaler("cpu", init_scale=disc_scale)


def _grads_at_step(optimizer) -> list[list[torch.Tensor]]:
    """Records the (unscaled, clipped) gradients each time `optimizer` really steps."""
    seen: list[list[torch.Tensor]] = []
    optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.append(
            [p.grad.clone() for g in opt.param_groups for p in g["params"] if p.grad is not None]
        )
    )
    return seen


def _inject_inf_once(module: torch.nn.Module):
    """The next backward through `module` gives its first parameter an inf gradient (an fp16 overflow)."""
    param = next(module.parameters())
    fired: list[bool] = []

    def hook(grad):
        if not fired:
            fired.append(True)
            return torch.full_like(grad, float("inf"))
        return None

    return param.register_hook(hook)


def test_fp16_loss_scalers_are_independent_with_accumulation_and_resume_exactly(tmp_path, two_speakers):
    """fp16 loss scaling (forced on CPU) with 2 micro-batches: one scaler per optimiser.

    The discriminator overflows on the first micro-batch; its step is skipped and its scale
    halved *between* the generator's two backward passes. The generator must still step, with
    gradients unscaled by the one scale they were scaled with: they match a run whose
    generator scale is 1 (nothing to unscale). A shared scaler fails this: half the generator
    gradient would come out 2x too large.
    """
    # a scratch model's KL gradients are huge (norm ~2e5 at weight 1.5): fp16 overflows at scale 4
    cfg = make_config(
        tmp_path,
        gradient_accumulation_steps=2,
        max_grad_norm=0.0,
        weight_kl=0.1,
        logging_steps=2,
        max_steps=10,
    )
    scaled = make_trainer(cfg, two_speakers, tmp_path / "a", precision="fp16")
    plain = make_trainer(cfg, two_speakers, tmp_path / "b", precision="fp16")
    assert scaled.scaler_g is not scaled.scaler_d and scaled.scaler_g.is_enabled()
    _scalers(scaled, gen_scale=8.0, disc_scale=1024.0)
    _scalers(plain, gen_scale=1.0, disc_scale=1.0)
    micro = [collate_one(scaled, 0), collate_one(scaled, 2)]
    grads, first = {}, {}
    for name, trainer in (("scaled", scaled), ("plain", plain)):
        disc_before = {k: v.clone() for k, v in trainer.bare_discriminator.state_dict().items()}
        gen_before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        grads[name] = _grads_at_step(trainer.opt_g)
        disc_steps = _grads_at_step(trainer.opt_d)
        handle = _inject_inf_once(trainer.bare_discriminator)
        torch.manual_seed(7)
        metrics = trainer.train_step(micro)
        handle.remove()
        assert metrics["nonfinite"] == 0, "an fp16 overflow is the scaler's business, not a bad step"
        assert disc_steps == [] and all(torch.equal(v, disc_before[k])
                                        for k, v in trainer.bare_discriminator.state_dict().items())  # fmt: skip
        assert len(grads[name]) == 1, "the generator steps despite the discriminator's overflow"
        assert any(not torch.equal(v, gen_before[k]) for k, v in trainer.model.state_dict().items())
        first[name] = metrics
    scales = {name: (m["loss_scale_gen"], m["loss_scale_disc"]) for name, m in first.items()}
    assert scales == {"scaled": (8.0, 512.0), "plain": (1.0, 0.5)}, "only the overflowing scale is halved"
    a, b = (torch.cat([g.flatten() for g in grads[name][0]]) for name in ("scaled", "plain"))
    assert torch.isfinite(a).all() and a.norm() > 0
    # a shared scaler: relative error 0.56; separate ones: 5e-5 (fp16 rounding)
    assert ((a - b).norm() / b.norm()) < 1e-3, "generator gradients are not correctly unscaled"

    # a normal step: both optimisers step with their own scales
    torch.manual_seed(8)
    metrics = scaled.train_step(micro)
    assert (
        metrics["nonfinite"] == 0 and metrics["loss_scale_disc"] == 512.0 and metrics["loss_scale_gen"] == 8.0
    )
    # the log row averages finite values only: the overflow's inf norm does not make it inf
    assert math.isinf(first["scaled"]["grad_norm_disc"]) and math.isfinite(metrics["grad_norm_disc"])
    for step, values in ((1, first["scaled"]), (2, metrics)):
        scaled.state.step = step
        scaled._log_step(values, 1.0)
    row = scaled.state.history[-1]
    assert row["step"] == 2 and row["grad_norm_disc"] == pytest.approx(metrics["grad_norm_disc"])
    assert row["loss_gen"] == pytest.approx((first["scaled"]["loss_gen"] + metrics["loss_gen"]) / 2)

    # resume: both scalers' states come back (a fresh trainer starts at another scale)
    saved = scaled.save_checkpoint()
    resumed = make_trainer(cfg, two_speakers, tmp_path / "c", precision="fp16")
    assert resumed.scaler_d.get_scale() != 512.0
    resumed.load_checkpoint(saved)
    assert resumed.scaler_g.state_dict() == scaled.scaler_g.state_dict()
    assert resumed.scaler_d.state_dict() == scaled.scaler_d.state_dict()
    for trainer in (scaled, resumed):
        _inject_inf_once(trainer.bare_discriminator)
        torch.manual_seed(9)
        trainer.train_step(micro)
    assert resumed.scaler_d.get_scale() == scaled.scaler_d.get_scale() == 256.0
    a, b = scaled.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed fp16 training diverges"

    # an overflow at a scale that cannot usefully go lower is a real NaN/inf: a counted bad step
    plain.scaler_d = torch.amp.GradScaler("cpu", init_scale=2.0**-20)
    _inject_inf_once(plain.bare_discriminator)
    assert plain.train_step(micro)["nonfinite"] == 1


def collate_one(trainer, index: int):
    from tts_pipeline.vits.data import collate

    return collate(trainer.train_examples[index : index + 2])


def test_nonfinite_losses_are_skipped_then_stop_the_run(tmp_path, two_speakers, monkeypatch):
    from tts_pipeline.vits import generator

    trainer = make_trainer(make_config(tmp_path, max_nonfinite_steps=3, max_steps=10), two_speakers, tmp_path)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_kl = generator.kl_loss
    monkeypatch.setattr(generator, "kl_loss", lambda *a: real_kl(*a) * float("nan"))
    with pytest.raises(PipelineError, match="3 steps in a row had NaN/inf"):
        trainer.fit()
    assert trainer.state.step == 3 and trainer.state.total_nonfinite == 3
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items()), (
        "skipped steps change nothing"
    )


def test_mlflow_run_has_params_metrics_and_audio_and_failures_only_warn(
    tmp_path, two_speakers, monkeypatch, caplog
):
    import mlflow

    from tts_pipeline.train import train

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("DVC_EXP_NAME", "lucky-lark")
    monkeypatch.setenv("GITLAB_TOKEN", "glpat-secret-value")
    result = train(
        make_config(tmp_path, max_steps=2, mlflow=True, eval_samples=2), paths_for(tmp_path, two_speakers)
    )
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(result.info["mlflow_run_id"])
    assert run.data.tags["dvc.exp_name"] == "lucky-lark"
    assert run.data.params["training.learning_rate"] == "0.0001"
    assert "glpat-secret-value" not in json.dumps(run.data.params)
    assert {"loss_gen", "mel_l1", "val_loss", "lr"} <= set(run.data.metrics)
    artifacts = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="samples", tracking_uri=uri
    )
    wavs = sorted(Path(artifacts).rglob("*.wav"))
    assert len(wavs) == 2 and all(w.stat().st_size > 1000 for w in wavs)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/")  # nothing listens on the discard port
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    with caplog.at_level(logging.WARNING):
        broken = train(
            make_config(tmp_path, max_steps=1, mlflow=True), paths_for(tmp_path, two_speakers, "b")
        )
    assert broken.steps == 1 and any("MLflow" in r.message for r in caplog.records)


def test_the_saved_voice_is_the_weight_average_and_resumes_with_it(resumed_run):
    """training.ema_length (default on): the checkpoint keeps the raw weights to go on training and
    the average beside them; the model folders hold the average (resume exactness covers it)."""
    _, _, _, resumed, part = resumed_run
    checkpoint = part.checkpoint_dir / "checkpoint-6"
    raw = torch.load(checkpoint / "state" / "generator.pt", weights_only=True)
    average = torch.load(checkpoint / "state" / "weight_average.pt", weights_only=True)
    assert average["steps"] == 6
    key = "text_encoder.embed_tokens.weight"
    saved = _weights(checkpoint / "model")
    assert not torch.equal(saved[key], raw[key])
    assert torch.equal(saved[key], _weights(resumed.model_dir)[key])
    assert any(torch.equal(saved[key], a) for a in average["average"])


def test_without_weight_average_the_voice_is_the_last_step_and_old_checkpoints_resume(
    resumed_run, tmp_path, two_speakers, caplog
):
    import shutil

    from tts_pipeline.train import train

    _, _, _, _, part = resumed_run
    run = paths_for(tmp_path, two_speakers, "plain")
    result = train(make_config(tmp_path, max_steps=2, ema_length=None), run)
    checkpoint = run.checkpoint_dir / "checkpoint-2"
    assert not (checkpoint / "state" / "weight_average.pt").exists()
    raw = torch.load(checkpoint / "state" / "generator.pt", weights_only=True)
    key = "text_encoder.embed_tokens.weight"
    assert torch.equal(_weights(result.model_dir)[key], raw[key])
    # a checkpoint made without the average (or by an older version) resumes; the average restarts
    old = paths_for(tmp_path, two_speakers, "old")
    shutil.copytree(part.checkpoint_dir, old.checkpoint_dir)
    for extra in old.checkpoint_dir.glob("checkpoint-*/state/weight_average.pt"):
        extra.unlink()
    with caplog.at_level(logging.WARNING):
        resumed = train(make_config(tmp_path, max_steps=7), old, resume=True)
    assert resumed.resumed_from == 6 and resumed.steps == 7
    assert "no weight average in this checkpoint" in caplog.text
