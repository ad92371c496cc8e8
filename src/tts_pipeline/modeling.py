"""The VITS model as every stage sees it: build, save, load, and synthesize.

Shared by train (build/save), evaluate, synthesize and the web demo (load + synthesize),
so there is one definition of "a model directory":

    <model_dir>/config.json, model.safetensors      VitsModel.save_pretrained
    <model_dir>/vocab.json, tokenizer_config.json   VitsTokenizer.save_pretrained
    <model_dir>/speakers.json                       {"0": {"name": ..., ...}, ...}

Heavy imports (torch, transformers) stay inside functions so the CLI starts fast.
"""

from __future__ import annotations

import json
import logging
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import PipelineError

if TYPE_CHECKING:  # pragma: no cover
    from transformers import VitsModel, VitsTokenizer

log = logging.getLogger(__name__)

SPEAKERS_FILE = "speakers.json"
PAD_SYMBOL = "_"  # id 0; VitsTokenizer pads with the id-0 symbol


def build_vocab(texts: Iterable[str], extra: str = " ") -> dict[str, int]:
    """A character vocabulary for a model trained from scratch: pad symbol first (id 0)."""
    chars = sorted({c for text in texts for c in text} | set(extra))
    chars = [c for c in chars if c != PAD_SYMBOL and not unicodedata.category(c).startswith("C")]
    return {PAD_SYMBOL: 0, **{c: i + 1 for i, c in enumerate(chars)}}


def make_tokenizer(vocab: dict[str, int], directory: str | Path) -> VitsTokenizer:
    """A VitsTokenizer over `vocab` (written to `directory`/vocab.json), no phonemizer needed."""
    from transformers import VitsTokenizer

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False, indent=1), encoding="utf-8")
    pad = next(ch for ch, idx in vocab.items() if idx == 0)
    return VitsTokenizer(
        vocab_file=str(vocab_file),
        pad_token=pad,
        unk_token=pad,
        add_blank=True,
        normalize=True,
        phonemize=False,
        is_uroman=False,
    )


def build_scratch_model(
    overrides: dict[str, Any], vocab: dict[str, int], num_speakers: int = 1, sampling_rate: int = 16000
) -> VitsModel:
    """A randomly initialised VitsModel (the demo's tiny model, or tests')."""
    from transformers import VitsConfig, VitsModel

    settings = dict(overrides)
    settings.setdefault("speaker_embedding_size", 16 if num_speakers > 1 else 0)
    if num_speakers <= 1:
        settings["speaker_embedding_size"] = 0
    config = VitsConfig(
        vocab_size=len(vocab),
        num_speakers=max(1, num_speakers),
        sampling_rate=sampling_rate,
        pad_token_id=0,
        **{"layerdrop": 0.0, **settings},
    )
    model = VitsModel(config)
    init_upsamplers(model)
    return model


def init_upsamplers(model: VitsModel) -> None:
    """Give the decoder's transposed convolutions PyTorch's default initialisation.

    transformers 5 initialises them like the other convolutions (Kaiming-normal over the
    *output* channels x kernel: std 0.0625 for the demo's first upsampler), 2.5 x what
    finetune-hf-vits (A1, transformers 4.x's VitsPreTrainedModel, which leaves ConvTranspose1d
    alone) and HiFi-GAN start from; the decoder's tanh output then saturates on a random latent
    and the discriminator wins at once. `reset_parameters` = Kaiming-uniform(a=sqrt(5)), std
    1/sqrt(3 * fan_in), as in A1. Draws from the global RNG (seeded by the caller).
    """
    for layer in model.decoder.upsampler:
        layer.reset_parameters()


def remove_decoder_weight_norm(model: VitsModel) -> None:
    """Fold the decoder's weight-norm parametrizations so save/reload is bit-identical."""
    import torch

    for module in model.decoder.modules():
        if torch.nn.utils.parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                torch.nn.utils.parametrize.remove_parametrizations(module, name, leave_parametrized=True)


def save_speakers(directory: str | Path, speakers: dict[int, dict[str, Any]]) -> None:
    payload = {str(k): v for k, v in sorted(speakers.items())}
    (Path(directory) / SPEAKERS_FILE).write_text(
        json.dumps(payload, indent=2, ensure_ascii=False, sort_keys=True) + "\n", encoding="utf-8"
    )


def load_speakers(directory: str | Path) -> dict[int, dict[str, Any]]:
    path = Path(directory) / SPEAKERS_FILE
    if not path.is_file():
        return {0: {"name": "speaker_0"}}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise PipelineError(f"{path}: broken JSON: {exc}") from None
    return {int(k): v for k, v in data.items()}


@dataclass
class LoadedVoice:
    """A model ready to speak: the generator, its tokenizer and its speakers."""

    model: VitsModel
    tokenizer: VitsTokenizer
    speakers: dict[int, dict[str, Any]] = field(default_factory=dict)
    directory: Path = Path()

    @property
    def sampling_rate(self) -> int:
        return int(self.model.config.sampling_rate)

    def speaker_id(self, speaker: str | int | None) -> int:
        """Resolve a speaker name or id; None = the speaker with the most hours."""
        if speaker is None or speaker == "":
            if not self.speakers:
                return 0
            return max(self.speakers, key=lambda k: (self.speakers[k].get("hours", 0.0), -k))
        if isinstance(speaker, int) or str(speaker).isdigit():
            sid = int(speaker)
            if sid not in self.speakers and not (sid == 0 and not self.speakers):
                raise PipelineError(f"speaker id {sid} not in {self.directory / SPEAKERS_FILE}")
            return sid
        for sid, info in self.speakers.items():
            if info.get("name") == speaker:
                return sid
        names = ", ".join(str(v.get("name")) for v in self.speakers.values())
        raise PipelineError(
            f"speaker {speaker!r} not found in {self.directory / SPEAKERS_FILE} (has: {names})"
        )

    def synthesize(self, text: str, speaker_id: int = 0, seed: int | None = 0) -> np.ndarray:
        """Speech for `text` as float32 at `sampling_rate`; empty array if nothing tokenises."""
        import torch

        device = next(self.model.parameters()).device
        inputs = {k: v.to(device) for k, v in self.tokenizer(text, return_tensors="pt").items()}
        if inputs["input_ids"].shape[-1] == 0:
            return np.zeros(0, dtype=np.float32)
        if seed is not None:
            torch.manual_seed(seed)
        kwargs: dict[str, Any] = {}
        if self.model.config.num_speakers > 1:
            kwargs["speaker_id"] = int(speaker_id)
        with torch.no_grad():
            output = self.model(**inputs, **kwargs)
        return output.waveform[0].float().cpu().numpy()


def load_tokenizer(name: str, setting: str = "training.base_model") -> VitsTokenizer:
    """`VitsTokenizer.from_pretrained(name)` (hub id or local path) with a clear error.

    Offline, transformers does not always raise OSError: for a hub id missing from the cache
    the tokenizer gets `vocab_file=None` and fails with a TypeError deep inside.
    """
    from transformers import VitsTokenizer

    try:
        return VitsTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as exc:
        raise PipelineError(
            f"{setting} {name!r}: cannot load its tokenizer ({exc}). Give a local model directory, "
            "or make the Hugging Face hub (or its cache) reachable."
        ) from None


def load_voice(model_dir: str | Path, device: str = "cpu") -> LoadedVoice:
    """Load a saved model directory (ours, or a hub id such as facebook/mms-tts-cmn)."""
    from transformers import VitsModel

    model_dir_str = str(model_dir)
    local = Path(model_dir_str)
    looks_local = local.is_absolute() or model_dir_str.startswith((".", "~")) or model_dir_str.count("/") > 1
    if looks_local and not local.exists():
        raise PipelineError(
            f"{local}: model directory not found; has training finished? (or pass --model_dir)"
        )
    if local.exists() and not (local / "config.json").is_file():
        raise PipelineError(f"{local}: not a model directory (no config.json); has training finished?")
    try:
        model = VitsModel.from_pretrained(model_dir_str).to(device).eval()
    except OSError as exc:
        raise PipelineError(f"cannot load model {model_dir_str!r}: {exc}") from None
    tokenizer = load_tokenizer(model_dir_str, "model")
    speakers = load_speakers(local) if local.exists() else {0: {"name": "speaker_0"}}
    return LoadedVoice(model=model, tokenizer=tokenizer, speakers=speakers, directory=local)


# --------------------------------------------------------------------------- checkpoints
#
# Layout written by the train stage (a persisted DVC output):
#
#     <checkpoints_dir>/index.json                  {"checkpoints": [{"step", "epoch", "val_loss", "dir"}, ...]}
#     <checkpoints_dir>/checkpoint-<step>/model/    a model directory (same contract as above)
#     <checkpoints_dir>/checkpoint-<step>/state/    training state (discriminator, optimisers, RNG, ...)

CHECKPOINT_INDEX = "index.json"
CHECKPOINT_PREFIX = "checkpoint-"


def list_checkpoints(checkpoints_dir: str | Path) -> list[dict[str, Any]]:
    """Checkpoints that hold a loadable model, oldest first: dicts with step, epoch, val_loss, dir.

    Reads index.json when present (it has the validation losses); otherwise scans the folder,
    so a checkpoint directory copied without its index still resolves (without losses).
    """
    root = Path(checkpoints_dir)
    if not root.is_dir():
        return []
    entries: dict[int, dict[str, Any]] = {}
    index = root / CHECKPOINT_INDEX
    if index.is_file():
        try:
            data = json.loads(index.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise PipelineError(
                f"{index}: broken JSON ({exc}); delete it to rescan the checkpoints"
            ) from None
        for item in data.get("checkpoints", []):
            entries[int(item["step"])] = dict(item)
    for child in root.glob(f"{CHECKPOINT_PREFIX}*"):
        suffix = child.name[len(CHECKPOINT_PREFIX) :]
        if suffix.isdigit() and int(suffix) not in entries:
            entries[int(suffix)] = {"step": int(suffix), "epoch": None, "val_loss": None, "dir": child.name}
    result = []
    for step in sorted(entries):
        item = entries[step]
        item.setdefault("dir", f"{CHECKPOINT_PREFIX}{step}")
        if (root / item["dir"] / "model" / "config.json").is_file():
            result.append(item)
    return result


def resolve_checkpoint(model_dir: str | Path, checkpoints_dir: str | Path, which: str = "final") -> Path:
    """The model directory (loadable by `load_voice`) for `which`.

    `final`: the trained model (`model_dir`); `latest`: the newest checkpoint; `best`: the
    checkpoint with the lowest validation loss recorded by training (the newest one, with a
    warning, when no validation loss was recorded); `<step>`: `checkpoint-<step>`.
    """
    which = str(which).strip().lower()
    if which == "final":
        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise PipelineError(f"{path}: no trained model here (no config.json); run the train stage first")
        return path
    root = Path(checkpoints_dir)
    checkpoints = list_checkpoints(root)
    if not checkpoints:
        raise PipelineError(f"{root}: no checkpoints with a model/ folder; run the train stage first")
    if which == "latest":
        chosen = checkpoints[-1]
    elif which == "best":
        scored = [c for c in checkpoints if c.get("val_loss") is not None]
        if scored:
            chosen = min(scored, key=lambda c: (float(c["val_loss"]), -int(c["step"])))
        else:
            log.warning("%s: no validation loss recorded; using the latest checkpoint as 'best'", root)
            chosen = checkpoints[-1]
    elif which.isdigit():
        matches = [c for c in checkpoints if int(c["step"]) == int(which)]
        if not matches:
            steps = ", ".join(str(c["step"]) for c in checkpoints)
            raise PipelineError(f"{root}: no checkpoint for step {which} (have: {steps})")
        chosen = matches[0]
    else:
        raise PipelineError(f"synthesis.checkpoint {which!r}: expected final, latest, best or a step number")
    return root / chosen["dir"] / "model"
