"""Build the generator (VitsModel) for training, with the speaker table the dataset needs.

Fine-tuning a single-speaker MMS checkpoint on a multi-speaker dataset adds conditioning layers
(speaker embedding -> every WaveNet, the decoder and the duration predictor). Loading that with
`from_pretrained(num_speakers=N)` leaves the new weight-normed layers NaN, so we build
`VitsModel(new_config)`, copy every weight whose name and shape match, and initialise the new
layers ourselves: conditioning projections at zero (the fine-tuned model starts out exactly
as the base model speaks, then learns speaker differences), the embedding table N(0, 1).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch

from ..errors import PipelineError

log = logging.getLogger(__name__)

DEFAULT_SPEAKER_EMBEDDING = 256  # VITS's multi-speaker (VCTK) width


def weight_norm_modules(model) -> dict[str, torch.nn.Module]:
    """The modules MMS/VITS train with weight norm that a saved `VitsModel` stores without it:
    the HiFi-GAN decoder's upsamplers and residual blocks (not conv_pre/conv_post), and each flow coupling layer's `conv_pre`/`conv_post`
    (as finetune-hf-vits does; the WaveNets already carry their own weight norm)."""
    found = {f"decoder.{name}": m for name, m in model.decoder.named_modules()
             if name.startswith(("upsampler.", "resblocks.")) and isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d))}  # fmt: skip
    for i, flow in enumerate(model.flow.flows):
        for name in ("conv_pre", "conv_post"):
            found[f"flow.flows.{i}.{name}"] = getattr(flow, name)
    return found


#: the VitsConfig keys that `training.dropout` sets (text encoder, duration predictor)
DROPOUT_KEYS = ("hidden_dropout", "attention_dropout", "activation_dropout", "duration_predictor_dropout")


def set_dropout(model, p: float | None) -> dict[str, float]:
    """Set the text encoder's and the duration predictor's dropout to `p` (None: leave them as
    the config says); returns the effective values by config key.

    The modules keep the rate they were built with, so besides the config every dropout they
    hold is set: per encoder layer the residual (`hidden_dropout`), the attention weights
    (`attention_dropout`, a plain float there) and the feed-forward (`activation_dropout`); in
    the duration predictor its main and posterior convolution stacks (`duration_predictor_dropout`;
    its flows are built without dropout, as in VITS). Why a setting: finetune-hf-vits never
    calls `model.train()`, so it fine-tunes with all of them off, and on small corpora that
    learns the KL, durations and mel faster (README, "Voice quality").
    """
    if p is not None:
        p = float(p)
        for key in DROPOUT_KEYS:
            setattr(model.config, key, p)
        for layer in model.text_encoder.encoder.layers:
            layer.dropout.p = p
            layer.attention.dropout = p
            layer.feed_forward.dropout.p = p
        predictor = model.duration_predictor
        if model.config.use_stochastic_duration_prediction:
            predictor.conv_dds.dropout.p = p
            predictor.post_conv_dds.dropout.p = p
        else:
            predictor.dropout.p = p
    return {key: float(getattr(model.config, key)) for key in DROPOUT_KEYS}


def prepare_for_training(model, dropout: float | None = None) -> dict[str, float]:
    """MMS's training layout: weight norm where MMS trains with it (see `weight_norm_modules`),
    layerdrop as the model's config says (0 for the demo's scratch model, 0.1 for MMS), and
    the dropout `set_dropout` sets (None: the config's). Returns the effective dropouts."""
    model.text_encoder.encoder.layerdrop = float(model.config.layerdrop)
    dropouts = set_dropout(model, dropout)
    if not any(torch.nn.utils.parametrize.is_parametrized(m) for m in model.decoder.modules()):
        model.decoder.apply_weight_norm()
    for module in weight_norm_modules(model).values():
        if not torch.nn.utils.parametrize.is_parametrized(module):
            torch.nn.utils.parametrizations.weight_norm(module)
    model.train()
    return dropouts


def init_new_weights(model, new_keys: list[str]) -> None:
    """Initialise weights that the base checkpoint did not have (see module docstring)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key in new_keys:
            param = params.get(key)
            if param is None:
                continue
            if key.startswith("embed_speaker."):
                param.normal_(0.0, 1.0)
            elif key.endswith("original1"):  # weight-norm direction: any finite non-zero value
                torch.nn.init.normal_(param, 0.0, 0.02)
            else:  # plain weights, biases and weight-norm magnitudes of conditioning layers
                param.zero_()


def assert_finite(model, where: str) -> None:
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise PipelineError(f"{where}: {len(bad)} weights are NaN/inf after loading (e.g. {bad[0]})")


def load_base_model(name: str, num_speakers: int, speaker_embedding_size: int | None = None):
    """`VitsModel` from a hub id or local path, resized to `num_speakers` when it has a different count."""
    from transformers import VitsModel

    try:
        base = VitsModel.from_pretrained(name)
    except OSError as exc:
        raise PipelineError(f"training.base_model {name!r}: cannot load ({exc})") from None
    config = base.config
    if num_speakers <= 1 or config.num_speakers == num_speakers:
        if num_speakers <= 1 and config.num_speakers > 1:
            log.info(
                "%s has %d speakers; the single-speaker dataset trains speaker 0", name, config.num_speakers
            )
        assert_finite(base, str(name))
        return base
    new_config = copy.deepcopy(config)
    new_config.num_speakers = num_speakers
    if not new_config.speaker_embedding_size:
        new_config.speaker_embedding_size = int(speaker_embedding_size or DEFAULT_SPEAKER_EMBEDDING)
    log.info("%s: %d -> %d speakers (speaker embedding width %d)", name, config.num_speakers, num_speakers,
             new_config.speaker_embedding_size)  # fmt: skip
    model = VitsModel(new_config)
    own = model.state_dict()
    loadable = {k: v for k, v in base.state_dict().items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(loadable, strict=False)
    new_keys = [k for k in own if k not in loadable]
    init_new_weights(model, new_keys)
    log.info(
        "initialised %d new weights (%s)",
        len(new_keys),
        ", ".join(sorted({k.split(".")[0] for k in new_keys})),
    )
    assert_finite(model, str(name))
    return model


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def model_summary(model, discriminator) -> dict[str, Any]:
    return {
        "generator_parameters": parameter_count(model),
        "discriminator_parameters": parameter_count(discriminator),
        "num_speakers": int(model.config.num_speakers),
        "speaker_embedding_size": int(model.config.speaker_embedding_size),
        # effective training dropout (`set_dropout`): into training_info.json and MLflow
        "dropout": {key: float(getattr(model.config, key)) for key in DROPOUT_KEYS},
    }


def export_generator(model):
    """A copy of the training model with the weight norm `prepare_for_training` added folded into plain weights.

    Why not `deepcopy` + `remove_parametrizations`: a deep copy shares the dynamically created
    `Parametrized*` classes, and removing the parametrisation from the copy deletes the `weight`
    property from that shared class, breaking the model still being trained. So the folded
    weights are computed here and loaded into a fresh `VitsModel` (built under a forked RNG so
    that exporting does not change the training run's random stream).
    """
    from transformers import VitsModel

    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name, module in weight_norm_modules(model).items():
        if not torch.nn.utils.parametrize.is_parametrized(module):
            continue
        prefix = f"{name}."
        for tensor_name in list(module.parametrizations.keys()):
            for key in [k for k in state if k.startswith(f"{prefix}parametrizations.{tensor_name}.")]:
                del state[key]
            state[f"{prefix}{tensor_name}"] = getattr(module, tensor_name).detach().clone()
    with torch.random.fork_rng():
        fresh = VitsModel(copy.deepcopy(model.config))
    fresh.load_state_dict(state, strict=True)
    return fresh.eval()
