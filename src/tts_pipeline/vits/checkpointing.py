"""Gradient checkpointing for the VITS generator (`training.gradient_checkpointing`).

For cards with less than ~12 GB: activations of the heavy generator parts are not kept for
the backward pass but recomputed there (those parts run forward twice: slower steps). On the
MMS-size model, batch 2 x 6 s, fp32, the step's peak of live tensors drops from 1,350 to
1,019 MB, about 660 MB of which are weights and gradients (`benchmarks/gradient_checkpointing.py`).

transformers' own switch (`gradient_checkpointing_enable()`, `activation_checkpointing_enable()`
from 5.24 on) only covers the text encoder's transformer layers, and warns on VitsModel that it
exposes no input embeddings. The memory is in the HiFi-GAN decoder's residual blocks (full
audio rate), the posterior encoder's WaveNet (the whole clip) and the flow's coupling layers
(the whole clip). Those and the text encoder layers are checkpointed here, one module at a
time, with `torch.utils.checkpoint` (non-reentrant: works under autocast, with DDP and with
inputs that need no gradient). The RNG state is replayed in the recomputation (the posterior
encoder samples noise), so losses and gradients are the same as without checkpointing and
the training RNG stream is unchanged. The discriminator is not checkpointed: its feature maps
are outputs the feature-matching loss keeps anyway.
"""

from __future__ import annotations

import types

import torch
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(self: torch.nn.Module, *args, **kwargs):
    """The class's own forward, under `checkpoint` while training with gradients.

    Bound to the instance (`types.MethodType`), so a deep copy of the model binds it to the
    copy, and the weights' names (state_dict keys) stay as they are."""
    forward = type(self).forward
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, self, *args, use_reentrant=False, **kwargs)
    return forward(self, *args, **kwargs)


def checkpointed_modules(model) -> list[torch.nn.Module]:
    """The generator modules whose activations are recomputed: decoder residual blocks,
    posterior encoder, flow coupling layers, text encoder layers."""
    return [*model.decoder.resblocks, model.posterior_encoder, *model.flow.flows,
            *model.text_encoder.encoder.layers]  # fmt: skip


def enable_gradient_checkpointing(model) -> int:
    """Checkpoint `checkpointed_modules(model)`; returns how many modules."""
    modules = checkpointed_modules(model)
    for module in modules:
        module.forward = types.MethodType(_checkpointed_forward, module)
    return len(modules)


def is_checkpointed(module: torch.nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return getattr(forward, "__func__", None) is _checkpointed_forward
