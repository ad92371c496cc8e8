"""HiFi-GAN discriminator as VITS uses it: multi-period (2, 3, 5, 7, 11) + multi-scale.

Layout and parameter names follow the original VITS `MultiPeriodDiscriminator`
(`discriminators.0` = the scale discriminator on raw audio, then one period discriminator per
period; extra scales, on 2x/4x average-pooled audio as in HiFi-GAN's MSD, come after), so a
converted VITS/MMS `D_*.pth` or a finetune-hf-vits discriminator loads with
`load_discriminator_checkpoint` (old-style `weight_g/weight_v` names are mapped to the torch
parametrization names). `width` scales every channel count: 1.0 is the 46.7 M-parameter original;
tests and the CPU demo use a small fraction. `period_channels` / `scale_channels` instead give
the channels outright, in finetune-hf-vits' `VitsConfig` convention (`discriminator_period_channels`,
`discriminator_scale_channels`, input channel first), so any layout that recipe trains is built
exactly: the original is [1, 32, 128, 512, 1024] and [1, 16, 64, 256, 1024].
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..errors import PipelineError

log = logging.getLogger(__name__)

LRELU_SLOPE = 0.1
#: the original VITS/MMS channels (finetune-hf-vits convention: the input channel first)
PERIOD_CHANNELS = [1, 32, 128, 512, 1024]
SCALE_CHANNELS = [1, 16, 64, 256, 1024]


@dataclass
class DiscriminatorConfig:
    periods: list[int] = field(default_factory=lambda: [2, 3, 5, 7, 11])
    scales: int = 1  # VITS uses 1 scale discriminator; HiFi-GAN uses 3 (audio, x2 pooled, x4 pooled)
    width: float = 1.0  # channel multiplier of the original layout
    period_channels: list[int] | None = None  # given outright (then `width` does not apply to them)
    scale_channels: list[int] | None = None

    def channels(self) -> tuple[list[int], list[int]]:
        """(period, scale) channel lists: as given, else the original's scaled by `width`."""
        period = self.period_channels or [1] + [_ch(c, self.width) for c in PERIOD_CHANNELS[1:]]
        scale = self.scale_channels or [1] + [_ch(c, self.width) for c in SCALE_CHANNELS[1:]]
        return list(period), list(scale)


def _wn(module: nn.Module) -> nn.Module:
    return nn.utils.parametrizations.weight_norm(module)


def _ch(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def _run_convs(
    convs: nn.ModuleList, conv_post: nn.Module, x: torch.Tensor
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Leaky-ReLU conv stack then the output conv: (flattened scores, every layer's activations)."""
    fmap = []
    for conv in convs:
        x = nn.functional.leaky_relu(conv(x), LRELU_SLOPE)
        fmap.append(x)
    x = conv_post(x)
    fmap.append(x)
    return torch.flatten(x, 1, -1), fmap


class PeriodDiscriminator(nn.Module):
    """Reshapes audio to (T/p, p) and applies 2-D convolutions along time (HiFi-GAN MPD)."""

    def __init__(self, period: int, channels: list[int], kernel_size: int = 5, stride: int = 3):
        """channels: [input, ...]: one strided convolution per step, then one more at the last width."""
        super().__init__()
        self.period = period
        channels = list(channels) + [channels[-1]]
        pad = (kernel_size - 1) // 2
        self.convs = nn.ModuleList()
        for i in range(len(channels) - 1):
            s = stride if i < len(channels) - 2 else 1
            self.convs.append(
                _wn(nn.Conv2d(channels[i], channels[i + 1], (kernel_size, 1), (s, 1), (pad, 0)))
            )
        self.conv_post = _wn(nn.Conv2d(channels[-1], 1, (3, 1), 1, (1, 0)))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, c, t = x.shape
        if t % self.period:
            pad = self.period - (t % self.period)
            x = nn.functional.pad(x, (0, pad), "reflect")
            t = t + pad
        x = x.view(b, c, t // self.period, self.period)
        return _run_convs(self.convs, self.conv_post, x)


class ScaleDiscriminator(nn.Module):
    """Grouped 1-D convolutions on (optionally average-pooled) audio (HiFi-GAN MSD)."""

    def __init__(self, channels: list[int], pool: int = 1):
        """channels: [input, first, ...]: a wide first convolution, grouped strided ones (groups
        4, 16, ... as far as the channels allow), one more strided and one plain at the last width."""
        super().__init__()
        self.pool = nn.AvgPool1d(pool * 2, pool, padding=pool) if pool > 1 else nn.Identity()
        self.convs = nn.ModuleList()
        # (out_channels, kernel, stride, groups, padding)
        layers = [(channels[1], 15, 1, 1, 7)]
        layers += [(out, 41, 4, 4 ** (i + 1), 20) for i, out in enumerate(channels[2:] + channels[-1:])]
        layers.append((channels[-1], 5, 1, 1, 2))
        in_ch = channels[0]
        for out_ch, kernel, stride, groups, padding in layers:
            g = math.gcd(math.gcd(in_ch, out_ch), groups)
            self.convs.append(_wn(nn.Conv1d(in_ch, out_ch, kernel, stride, groups=g, padding=padding)))
            in_ch = out_ch
        self.conv_post = _wn(nn.Conv1d(in_ch, 1, 3, 1, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        return _run_convs(self.convs, self.conv_post, self.pool(x))


class VitsDiscriminator(nn.Module):
    """All sub-discriminators; `forward(real, fake)` returns scores and feature maps of both."""

    def __init__(self, config: DiscriminatorConfig | None = None):
        super().__init__()
        self.config = config or DiscriminatorConfig()
        period, scale = self.config.channels()
        subs: list[nn.Module] = [ScaleDiscriminator(scale)]
        subs += [PeriodDiscriminator(p, period) for p in self.config.periods]
        subs += [ScaleDiscriminator(scale, pool=2**i) for i in range(1, self.config.scales)]
        self.discriminators = nn.ModuleList(subs)

    def forward(self, real: torch.Tensor, fake: torch.Tensor):
        """real, fake: (B, 1, T) -> (scores_real, scores_fake, fmaps_real, fmaps_fake), one per sub."""
        scores_r, scores_g, fmaps_r, fmaps_g = [], [], [], []
        for disc in self.discriminators:
            s_r, f_r = disc(real)
            s_g, f_g = disc(fake)
            scores_r.append(s_r)
            scores_g.append(s_g)
            fmaps_r.append(f_r)
            fmaps_g.append(f_g)
        return scores_r, scores_g, fmaps_r, fmaps_g


def convert_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map other discriminator layouts' names to ours.

    Original VITS/MMS `D_*.pth`: old-style weight norm (`weight_g`, `weight_v`). finetune-hf-vits
    (a whole `VitsModelForPreTraining` file): keys under `discriminator.`, `final_conv` for our
    `conv_post`, weight norm removed (plain `weight`, split again in `load_discriminator_checkpoint`).
    """
    if any(k.startswith("discriminator.") for k in state):  # a full training model: keep its discriminator
        state = {k: v for k, v in state.items() if k.startswith("discriminator.")}
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "discriminator."):
            if key.startswith(prefix):
                key = key[len(prefix) :]
        key = key.replace(".final_conv.", ".conv_post.")
        if key.endswith(".weight_g"):
            key = key[: -len(".weight_g")] + ".parametrizations.weight.original0"
        elif key.endswith(".weight_v"):
            key = key[: -len(".weight_v")] + ".parametrizations.weight.original1"
        out[key] = value
    return out


def _split_weight_norm(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Plain `X.weight` where our layer is weight-normed -> magnitude g and direction v (same weight)."""
    out = {}
    for key, value in state.items():
        stem = key[: -len(".weight")] if key.endswith(".weight") else None
        g_key = f"{stem}.parametrizations.weight.original0"
        if stem is not None and key not in own and g_key in own:
            dims = tuple(range(1, value.dim()))
            out[g_key] = torch.linalg.vector_norm(value, dim=dims, keepdim=True)
            out[f"{stem}.parametrizations.weight.original1"] = value
        else:
            out[key] = value
    return out


def load_discriminator_checkpoint(discriminator: VitsDiscriminator, path: str | Path) -> None:
    """Load a converted discriminator (.safetensors, or a torch file with an optional "model" key)."""
    path = Path(path)
    if not path.is_file():
        raise PipelineError(f"{path}: training.discriminator_checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise PipelineError(f"{path}: cannot read discriminator checkpoint: {exc}") from None
    own = discriminator.state_dict()
    state = _split_weight_norm(convert_state_dict(state), own)
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if mismatched:
        raise PipelineError(
            f"{path}: discriminator shapes differ from training.discriminator_* settings "
            f"(e.g. {mismatched[0]}: {tuple(state[mismatched[0]].shape)} vs {tuple(own[mismatched[0]].shape)}); "
            "use width 1.0 and periods [2, 3, 5, 7, 11] for VITS/MMS checkpoints, or set a finetune-hf-vits "
            "model's discriminator_period_channels / discriminator_scale_channels"
        )
    result = discriminator.load_state_dict(state, strict=False)
    if result.missing_keys:
        log.warning("%s: %d discriminator weights missing (kept fresh), e.g. %s",
                    path, len(result.missing_keys), result.missing_keys[0])  # fmt: skip
    if result.unexpected_keys:
        log.warning("%s: %d unexpected keys ignored, e.g. %s", path, len(result.unexpected_keys),
                    result.unexpected_keys[0])  # fmt: skip


#: files a model directory may hold its discriminator in, in order of preference
_CHECKPOINT_FILES = ("model.safetensors", "pytorch_model.bin")


def _has_discriminator(path: Path) -> bool:
    """Whether a finetune-hf-vits style model file holds `discriminator.*` weights."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return any(k.startswith("discriminator.") for k in f.keys())  # noqa: SIM118 - safe_open is not iterable
    return False


def find_discriminator_checkpoint(source: str | Path) -> Path:
    """A discriminator file from `source`: a file; a directory (a `-train` checkpoint as
    finetune-hf-vits saves it, or a folder of VITS `D_<step>.pth`, the newest taken); or a hub
    id (its model.safetensors, downloaded; offline: from the local cache only)."""
    path = Path(source)
    if path.is_file():
        return path
    if path.is_dir():
        for name in _CHECKPOINT_FILES:
            if (path / name).is_file():
                return path / name
        vits = sorted(path.glob("D_*.pth"), key=lambda p: int("".join(c for c in p.stem if c.isdigit()) or 0))
        if vits:
            return vits[-1]
        raise PipelineError(f"{path}: no discriminator checkpoint in this folder (expected model.safetensors, "
                            "pytorch_model.bin or D_<step>.pth)")  # fmt: skip
    if str(source).startswith((".", "/")) or str(source).count("/") != 1:
        raise PipelineError(f"{source}: training.discriminator_checkpoint not found")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(str(source), "model.safetensors"))
    except Exception as exc:  # noqa: BLE001 - offline, missing repo, no such file: one line for the user
        raise PipelineError(f"training.discriminator_checkpoint {source!r}: cannot download its model.safetensors "
                            f"({type(exc).__name__}); give a local file or folder, or null for a random "
                            "discriminator") from None  # fmt: skip


def base_model_discriminator(base_model: str | None) -> Path | None:
    """The base model's own discriminator when it is a local training checkpoint that has one
    (a finetune-hf-vits `-train` folder); None otherwise (hub ids are not probed)."""
    if not base_model or not Path(base_model).is_dir():
        return None
    for name in _CHECKPOINT_FILES[:1]:
        candidate = Path(base_model) / name
        if candidate.is_file() and _has_discriminator(candidate):
            return candidate
    return None
