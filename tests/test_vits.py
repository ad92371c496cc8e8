"""Unit tests of the training-time VITS pieces (CPU, tiny sizes, real transformers modules)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from vits_helpers import one_torch_thread  # noqa: F401 (autouse fixture)

from tts_pipeline import modeling
from tts_pipeline.vits import alignment, losses
from tts_pipeline.vits.discriminator import (
    DiscriminatorConfig,
    VitsDiscriminator,
    convert_state_dict,
    load_discriminator_checkpoint,
)
from tts_pipeline.vits.models import export_generator, load_base_model, prepare_for_training
from tts_pipeline.vits.spectrogram import SpectrogramConfig, linear_spectrogram, mel_spectrogram

TINY = {
    "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "ffn_dim": 32, "flow_size": 16,
    "upsample_initial_channel": 32, "upsample_rates": [8, 8, 2, 2], "upsample_kernel_sizes": [16, 16, 4, 4],
    "resblock_kernel_sizes": [3], "resblock_dilation_sizes": [[1, 3]], "prior_encoder_num_flows": 2,
    "posterior_encoder_num_wavenet_layers": 2, "duration_predictor_num_flows": 2,
    "duration_predictor_filter_channels": 16,
}  # fmt: skip
VOCAB = modeling.build_vocab(["abc def"])


def _ragged(batch=5, frames=70, tokens=25, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ll = torch.randn(batch, frames, tokens, generator=gen)
    f_len = torch.randint(tokens, frames + 1, (batch,), generator=gen)
    t_len = torch.randint(1, tokens + 1, (batch,), generator=gen)
    t_len = torch.minimum(t_len, f_len)
    mask = (torch.arange(frames)[None, :, None] < f_len[:, None, None]) & (
        torch.arange(tokens)[None, None, :] < t_len[:, None, None]
    )
    return ll, mask.float(), f_len, t_len


def test_mas_numba_matches_numpy_and_is_a_monotonic_path():
    ll, mask, f_len, t_len = _ragged()
    path = alignment.maximum_path(ll, mask)
    assert torch.equal(path, alignment.maximum_path_numpy(ll, mask))
    for b in range(len(f_len)):
        p = path[b, : f_len[b], : t_len[b]]
        assert torch.all(p.sum(1) == 1), "every frame gets exactly one token"
        assert torch.all(p.sum(0) >= 1), "every token gets at least one frame"
        idx = p.argmax(1)
        assert idx[0] == 0 and idx[-1] == t_len[b] - 1
        assert torch.all((idx.diff() >= 0) & (idx.diff() <= 1))
        assert path[b].sum() == f_len[b], "nothing outside the mask"


def test_mas_finds_the_best_path_on_a_small_case():
    # a diagonal of high likelihood must be followed exactly
    ll = torch.full((1, 6, 3), -10.0)
    for frame, token in enumerate([0, 0, 1, 1, 1, 2]):
        ll[0, frame, token] = 0.0
    path = alignment.maximum_path(ll, torch.ones_like(ll))
    assert path[0].argmax(1).tolist() == [0, 0, 1, 1, 1, 2]


def test_spectrogram_frames_match_hop_and_are_finite():
    cfg = SpectrogramConfig(sampling_rate=16000, n_fft=1024, hop_length=256, win_length=1024)
    wave = torch.randn(2, 256 * 20) * 0.1
    spec = linear_spectrogram(wave, cfg)
    mel = mel_spectrogram(wave, cfg)
    assert spec.shape == (2, 513, 20) and mel.shape == (2, 80, 20)
    assert torch.isfinite(mel).all() and torch.isfinite(spec).all()
    silent = mel_spectrogram(torch.zeros(1, 256 * 4), cfg)
    # silence: finite (the 1e-6 inside the sqrt avoids log(0) and NaN gradients), very low, flat
    assert torch.isfinite(silent).all() and float(silent.max()) < -9.0
    assert torch.allclose(silent, silent[..., :1].expand_as(silent))


def test_discriminator_layout_size_and_outputs():
    full = VitsDiscriminator()
    assert abs(sum(p.numel() for p in full.parameters()) / 1e6 - 46.7) < 0.1  # VITS's discriminator
    small = VitsDiscriminator(DiscriminatorConfig(scales=3, width=1 / 16))
    assert len(small.discriminators) == 1 + 5 + 2
    x = torch.randn(2, 1, 2048)
    with torch.no_grad():
        scores_r, scores_g, fmaps_r, fmaps_g = small(x, x)
    assert len(scores_r) == 8 and all(torch.equal(a, b) for a, b in zip(scores_r, scores_g, strict=True))
    assert float(losses.feature_matching_loss(fmaps_r, fmaps_g)) == 0.0


def test_discriminator_channels_given_outright_build_the_finetune_hf_vits_layout():
    """Channel lists in finetune-hf-vits' convention build its layout exactly (here its tiny
    CPU model's), and the original's lists are the same as the width-1 default."""
    tiny = VitsDiscriminator(DiscriminatorConfig(period_channels=[1, 8, 16, 32, 64], scale_channels=[1, 16, 32, 64]))
    shapes = {k.replace(".parametrizations.weight.original1", ""): tuple(v.shape)
              for k, v in tiny.state_dict().items() if k.endswith("original1")}  # fmt: skip
    # scale discriminator: wide first conv, grouped strided convs (groups 4, 16, 64), a plain last
    assert [shapes[f"discriminators.0.convs.{i}"] for i in range(5)] == [
        (16, 1, 15), (32, 4, 41), (64, 2, 41), (64, 1, 41), (64, 64, 5)
    ]  # fmt: skip
    assert shapes["discriminators.0.conv_post"] == (1, 64, 3)
    # period discriminators: four strided 2-D convs, one at the last width, then the output
    assert [shapes[f"discriminators.1.convs.{i}"] for i in range(5)] == [
        (8, 1, 5, 1), (16, 8, 5, 1), (32, 16, 5, 1), (64, 32, 5, 1), (64, 64, 5, 1)
    ]  # fmt: skip
    assert [d.convs[i].stride[0] for d in tiny.discriminators[1:] for i in range(5)] == [3, 3, 3, 3, 1] * 5
    assert abs(sum(p.numel() for p in tiny.parameters()) - 207_124) < 10
    torch.manual_seed(0)
    default = VitsDiscriminator().state_dict()
    torch.manual_seed(0)
    explicit = VitsDiscriminator(
        DiscriminatorConfig(period_channels=[1, 32, 128, 512, 1024], scale_channels=[1, 16, 64, 256, 1024])
    ).state_dict()
    assert default.keys() == explicit.keys() and all(torch.equal(default[k], explicit[k]) for k in default)


def test_discriminator_checkpoint_with_old_weight_norm_names_loads(tmp_path):
    source = VitsDiscriminator(DiscriminatorConfig(width=1 / 16))
    old_style = {}
    for key, value in source.state_dict().items():  # how original VITS D_*.pth files name them
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        key = key.replace(".parametrizations.weight.original1", ".weight_v")
        old_style[key] = value
    assert any(k.endswith("weight_g") for k in old_style)
    torch.save({"model": old_style, "iteration": 1}, tmp_path / "D_1.pth")
    target = VitsDiscriminator(DiscriminatorConfig(width=1 / 16))
    load_discriminator_checkpoint(target, tmp_path / "D_1.pth")
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    assert convert_state_dict({"module.x.weight_g": torch.ones(1)}) == {
        "x.parametrizations.weight.original0": torch.ones(1)
    }
    # finetune-hf-vits layout: inside a full training model, `final_conv`, weight norm folded
    from safetensors.torch import save_file

    folded = {"text_encoder.embed_tokens.weight": torch.zeros(3, 2)}
    for name, module in source.named_modules():
        if hasattr(module, "parametrizations"):
            hf_name = name.replace("conv_post", "final_conv")
            folded[f"discriminator.{hf_name}.weight"] = module.weight.detach().clone()
            folded[f"discriminator.{hf_name}.bias"] = module.bias.detach().clone()
    save_file(folded, str(tmp_path / "model.safetensors"))
    from_hf = VitsDiscriminator(DiscriminatorConfig(width=1 / 16))
    load_discriminator_checkpoint(from_hf, tmp_path / "model.safetensors")
    x = torch.randn(1, 1, 1024)
    with torch.no_grad():
        for a, b in zip(source(x, x)[0], from_hf(x, x)[0], strict=True):
            assert torch.allclose(a, b, atol=1e-5)
    wrong = VitsDiscriminator(DiscriminatorConfig(width=1 / 8))
    with pytest.raises(Exception, match="shapes differ"):
        load_discriminator_checkpoint(wrong, tmp_path / "D_1.pth")


def test_losses_have_their_minimum_where_expected():
    ones, zeros = [torch.ones(2, 5)], [torch.zeros(2, 5)]
    assert float(losses.discriminator_loss(ones, zeros)) == 0.0
    assert float(losses.generator_adversarial_loss(ones)) == 0.0
    assert float(losses.discriminator_loss(zeros, ones)) == 2.0
    m = torch.randn(1, 4, 7)
    logs = torch.randn(1, 4, 7) * 0.1
    mask = torch.ones(1, 1, 7)
    # z_p at the prior mean with equal variances: KL reduces to -0.5 per element
    assert abs(float(losses.kl_loss(m, logs, m, logs, mask)) + 0.5 * 4) < 1e-5


def _save_single_speaker_base(path):
    torch.manual_seed(0)
    model = modeling.build_scratch_model(TINY, VOCAB, num_speakers=1)
    model.save_pretrained(str(path))
    return model


def test_single_speaker_base_grows_a_speaker_table_without_nan(tmp_path):
    base = _save_single_speaker_base(tmp_path / "base")
    model = load_base_model(str(tmp_path / "base"), num_speakers=3, speaker_embedding_size=8)
    assert model.config.num_speakers == 3 and model.embed_speaker.weight.shape == (3, 8)
    for name, param in model.named_parameters():
        assert torch.isfinite(param).all(), name
    # new conditioning starts at zero: every speaker initially sounds like the base model
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    outputs = []
    for model_, kwargs in ((base, {}), (model, {"speaker_id": 0}), (model, {"speaker_id": 2})):
        model_.eval()
        torch.manual_seed(1)
        with torch.no_grad():
            outputs.append(model_(input_ids=ids, **kwargs).waveform)
    assert torch.allclose(outputs[0], outputs[1]) and torch.allclose(outputs[0], outputs[2])


def test_multi_speaker_base_is_resized_to_the_dataset(tmp_path):
    model = modeling.build_scratch_model({**TINY, "speaker_embedding_size": 8}, VOCAB, num_speakers=4)
    model.save_pretrained(str(tmp_path / "base4"))
    resized = load_base_model(str(tmp_path / "base4"), num_speakers=2)
    assert resized.embed_speaker.weight.shape == (2, 8)
    assert torch.equal(resized.flow.flows[0].conv_pre.weight, model.flow.flows[0].conv_pre.weight)
    same = load_base_model(str(tmp_path / "base4"), num_speakers=1)  # single-speaker data: keep the table
    assert same.config.num_speakers == 4


def test_export_is_bit_identical_after_reload_and_leaves_training_model_intact(tmp_path):
    from transformers import VitsModel

    model = modeling.build_scratch_model({**TINY, "speaker_embedding_size": 8}, VOCAB, num_speakers=2)
    prepare_for_training(model)
    with torch.no_grad():  # make the weight-norm magnitudes differ from the folded weights' norms
        for module in model.decoder.modules():
            if torch.nn.utils.parametrize.is_parametrized(module):
                module.parametrizations.weight.original0.mul_(1.5)
    rng_before = torch.get_rng_state()
    exported = export_generator(model)
    assert torch.equal(rng_before, torch.get_rng_state()), "exporting must not consume the training RNG"
    exported.save_pretrained(str(tmp_path / "m"))
    reloaded = VitsModel.from_pretrained(str(tmp_path / "m"))
    exported_state = exported.state_dict()
    for key, value in reloaded.state_dict().items():
        assert torch.equal(value, exported_state[key]), key
    assert torch.equal(reloaded.decoder.upsampler[0].weight, model.decoder.upsampler[0].weight)
    # the training model still works (a deepcopy + remove_parametrizations would break it)
    model.decoder(torch.randn(1, 16, 4), model.embed_speaker(torch.tensor([1])).unsqueeze(-1))


def test_automatic_batch_size_arithmetic():
    from tts_pipeline.vits.batch_probe import auto_batch_size, batch_size_for_memory

    mms_params = 83_000_000  # generator + full discriminator
    on_12gb = batch_size_for_memory(12 * 2**30, 15.0, mms_params, 8192)
    assert 2 <= on_12gb <= 8
    assert batch_size_for_memory(8 * 2**30, 15.0, mms_params, 8192) < on_12gb
    assert batch_size_for_memory(12 * 2**30, 15.0, mms_params, 4096) > on_12gb  # shorter decoder window
    assert batch_size_for_memory(2**30, 15.0, mms_params, 8192) == 1  # never 0
    assert batch_size_for_memory(2**40, 1.0, 1, 256) == 64  # capped
    assert auto_batch_size(torch.device("cpu"), 15.0, mms_params) == 4


# ------------------------------------------------------------------ issue 14: init, layout, discriminator


def _demo_model(num_speakers: int = 1, **overrides):
    import yaml

    repo = Path(__file__).resolve().parents[1]
    scratch = yaml.safe_load((repo / "languages" / "demo.yaml").read_text())["training"]["scratch_model"]
    return modeling.build_scratch_model({**scratch, **overrides}, {c: i for i, c in enumerate("_abcdefghij ")},
                                        num_speakers)  # fmt: skip


def test_fresh_demo_model_output_on_random_latents_does_not_saturate():
    """transformers 5 initialises the upsamplers 2.5x too wide: tanh saturated 9-22 % of samples."""
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        model = _demo_model()
        prepare_for_training(model)
        z = torch.randn(4, model.config.flow_size, 64)
        with torch.no_grad():
            wave = model.decoder(z)
        at_full_scale = float((wave.abs() > 0.999).float().mean())
        assert at_full_scale < 0.001, (seed, at_full_scale)
        # the first upsampler has PyTorch's default init: std 1/sqrt(3 * fan_in)
        weight = export_generator(model).decoder.upsampler[0].weight
        fan_in = weight.shape[1] * weight.shape[2]
        assert float(weight.detach().std()) == pytest.approx((3 * fan_in) ** -0.5, rel=0.15)


def test_training_layout_has_mms_weight_norm_and_exports_loadable_weights(tmp_path):
    from transformers import VitsModel

    from tts_pipeline.vits.models import weight_norm_modules

    torch.manual_seed(0)
    model = _demo_model()
    model.config.layerdrop = 0.1
    prepare_for_training(model)
    assert model.text_encoder.encoder.layerdrop == 0.1  # as the checkpoint says
    modules = weight_norm_modules(model)
    assert "flow.flows.0.conv_pre" in modules and "flow.flows.0.conv_post" in modules
    assert all(torch.nn.utils.parametrize.is_parametrized(m) for m in modules.values())
    assert not torch.nn.utils.parametrize.is_parametrized(model.decoder.conv_pre)  # VITS: plain
    exported = export_generator(model)
    exported.save_pretrained(str(tmp_path))
    reloaded = VitsModel.from_pretrained(str(tmp_path)).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    model.eval()
    with torch.no_grad():
        torch.manual_seed(3)
        a = model(input_ids=ids).waveform
        torch.manual_seed(3)
        b = reloaded(input_ids=ids).waveform
    assert torch.allclose(a, b, atol=1e-5)


def _dropout_rates(model) -> set[float]:
    """Every dropout rate the text encoder and the duration predictor's own stacks apply."""
    rates = set()
    for layer in model.text_encoder.encoder.layers:
        rates |= {layer.dropout.p, layer.attention.dropout, layer.feed_forward.dropout.p}
    predictor = model.duration_predictor
    stacks = [predictor.conv_dds, predictor.post_conv_dds] if hasattr(predictor, "conv_dds") else [predictor]
    return rates | {stack.dropout.p for stack in stacks}


@pytest.mark.parametrize("stochastic", [True, False])
def test_training_dropout_setting_reaches_every_dropout_module(stochastic):
    from tts_pipeline.vits.models import DROPOUT_KEYS, model_summary

    torch.manual_seed(0)
    model = _demo_model(use_stochastic_duration_prediction=stochastic)
    ids = torch.tensor([[1, 2, 3, 4, 5, 6]])

    def encode(seed):  # a training-mode text encoder forward: dropout is live
        torch.manual_seed(seed)
        return model.text_encoder(input_ids=ids, padding_mask=torch.ones(1, 6, 1)).last_hidden_state

    # null: the checkpoint's own rates (transformers' defaults 0.1, duration predictor 0.5)
    assert prepare_for_training(model, None) == {**dict.fromkeys(DROPOUT_KEYS[:3], 0.1), "duration_predictor_dropout": 0.5}
    assert _dropout_rates(model) == {0.1, 0.5}
    assert not torch.equal(encode(1), encode(2))
    # a number: every one of those modules, and the config the model is saved with
    assert prepare_for_training(model, 0.0) == dict.fromkeys(DROPOUT_KEYS, 0.0)
    assert _dropout_rates(model) == {0.0} and model.training
    assert torch.equal(encode(1), encode(2))
    assert model.config.hidden_dropout == 0.0 and model.config.duration_predictor_dropout == 0.0
    prepare_for_training(model, 0.3)
    assert _dropout_rates(model) == {0.3}
    assert model_summary(model, VitsDiscriminator(DiscriminatorConfig([2], 1, 0.0625)))["dropout"] == dict.fromkeys(DROPOUT_KEYS, 0.3)


def test_length_buckets_change_members_from_epoch_to_epoch():
    from tts_pipeline.vits.data import epoch_batches

    lengths = [16000 + 100 * i for i in range(40)]
    first = {frozenset(b) for b in epoch_batches(lengths, 4, seed=1, epoch=0)}
    second = {frozenset(b) for b in epoch_batches(lengths, 4, seed=1, epoch=1)}
    assert first != second
    assert epoch_batches(lengths, 4, seed=1, epoch=1) == epoch_batches(lengths, 4, seed=1, epoch=1)
    for batch in epoch_batches(lengths, 4, seed=1, epoch=1):  # still bucketed by length
        spread = max(lengths[i] for i in batch) / min(lengths[i] for i in batch)
        assert spread < 1.25


def _hf_train_checkpoint(directory: Path, source: VitsDiscriminator) -> None:
    """A finetune-hf-vits '-train' folder: model.safetensors with the generator and discriminator."""
    from safetensors.torch import save_file

    folded = {"text_encoder.embed_tokens.weight": torch.zeros(3, 2)}
    for name, module in source.named_modules():
        if hasattr(module, "parametrizations"):
            folded[f"discriminator.{name.replace('conv_post', 'final_conv')}.weight"] = module.weight.detach().clone()
            folded[f"discriminator.{name.replace('conv_post', 'final_conv')}.bias"] = module.bias.detach().clone()
    directory.mkdir(parents=True)
    save_file(folded, str(directory / "model.safetensors"))


def test_discriminator_found_in_each_supported_layout(tmp_path, monkeypatch):
    from tts_pipeline.errors import PipelineError
    from tts_pipeline.vits.discriminator import base_model_discriminator, find_discriminator_checkpoint

    source = VitsDiscriminator(DiscriminatorConfig(width=1 / 16))
    x = torch.randn(1, 1, 1024)
    with torch.no_grad():
        expected = source(x, x)[0]
    # a finetune-hf-vits -train folder, as a discriminator_checkpoint and as the base model itself
    _hf_train_checkpoint(tmp_path / "mms-train", source)
    assert find_discriminator_checkpoint(tmp_path / "mms-train") == tmp_path / "mms-train" / "model.safetensors"
    assert base_model_discriminator(str(tmp_path / "mms-train")) == tmp_path / "mms-train" / "model.safetensors"
    # a folder of original VITS/MMS D_<step>.pth files: the newest
    (tmp_path / "vits").mkdir()
    torch.save({"model": source.state_dict()}, tmp_path / "vits" / "D_900.pth")
    torch.save({"model": {}}, tmp_path / "vits" / "D_100.pth")
    assert find_discriminator_checkpoint(tmp_path / "vits") == tmp_path / "vits" / "D_900.pth"
    for path in (tmp_path / "mms-train", tmp_path / "vits"):
        target = VitsDiscriminator(DiscriminatorConfig(width=1 / 16))
        load_discriminator_checkpoint(target, find_discriminator_checkpoint(path))
        with torch.no_grad():
            got = target(x, x)[0]
        assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(expected, got, strict=True))
    # a plain generator folder has no discriminator; a hub id offline is a one-line error
    (tmp_path / "plain").mkdir()
    assert base_model_discriminator(str(tmp_path / "plain")) is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match="cannot download"):
        find_discriminator_checkpoint("nobody/no-such-model-train")
    with pytest.raises(PipelineError, match="no discriminator checkpoint"):
        find_discriminator_checkpoint(tmp_path / "plain")
