import json

import pytest
import torch

from referencelcm import MultiGuidanceEncoder

TYPES = ("depth", "normal", "semantic_map", "dwpose")


def tiny_encoder(guidance_types=TYPES) -> MultiGuidanceEncoder:
    torch.manual_seed(0)
    return MultiGuidanceEncoder(guidance_types, 3, (8, 16, 16, 32), 32, 4)


def random_guidance(shape, guidance_types=TYPES):
    generator = torch.Generator().manual_seed(0)
    return {name: torch.rand(shape, generator=generator) for name in guidance_types}


def test_output_shapes_for_video_and_images():
    encoder = tiny_encoder()
    assert encoder(random_guidance((2, 3, 5, 32, 48))).shape == (2, 32, 5, 4, 6)
    assert encoder(random_guidance((2, 3, 32, 48))).shape == (2, 32, 4, 6)
    assert encoder.downsample_factor == 8


def test_output_is_zero_initialised():
    assert encoder_output_abs_max(tiny_encoder()) == 0.0


def encoder_output_abs_max(encoder):
    return encoder(random_guidance((1, 3, 2, 16, 16))).abs().max().item()


def test_sum_over_types_and_chunking_does_not_change_result():
    encoder = tiny_encoder()
    for sub in encoder.encoders.values():
        torch.nn.init.normal_(sub.conv_out.weight, std=0.02)
    guidance = random_guidance((2, 3, 5, 16, 16))
    full = encoder(guidance, chunk_size=16)
    assert torch.allclose(encoder(guidance, chunk_size=1), full, atol=1e-5)
    frames = guidance["depth"].permute(0, 2, 1, 3, 4).reshape(10, 3, 16, 16)
    depth_only = encoder.encoders["depth"](frames).reshape(2, 5, 32, 2, 2).permute(0, 2, 1, 3, 4)
    others = sum(
        encoder.encoders[name](guidance[name].permute(0, 2, 1, 3, 4).reshape(10, 3, 16, 16))
        .reshape(2, 5, 32, 2, 2)
        .permute(0, 2, 1, 3, 4)
        for name in TYPES[1:]
    )
    assert torch.allclose(depth_only + others, full, atol=1e-5)


def test_champ_module_names():
    keys = tiny_encoder(("depth",)).state_dict().keys()
    prefixes = {key.split(".")[2] for key in keys}
    assert prefixes == {"conv_in", "blocks", "attention", "conv_out"}
    assert {key.split(".")[3] for key in keys if ".blocks." in key} == {str(i) for i in range(6)}


@pytest.mark.parametrize(
    "guidance, message",
    [
        (random_guidance((1, 3, 2, 16, 16), TYPES[:3]), "missing \\['semantic_map'\\]|missing"),
        ({**random_guidance((1, 3, 2, 16, 16)), "mask": torch.rand(1, 3, 2, 16, 16)}, "unknown \\['mask'\\]"),
        ({**random_guidance((1, 3, 2, 16, 16)), "depth": torch.rand(1, 3, 3, 16, 16)}, "same shape"),
        (random_guidance((1, 1, 2, 16, 16)), "\\(B, 3, H, W\\)"),
    ],
)
def test_bad_guidance_is_rejected(guidance, message):
    with pytest.raises(ValueError, match=message):
        tiny_encoder()(guidance)


def test_config_round_trip(tmp_path):
    encoder = tiny_encoder()
    for sub in encoder.encoders.values():
        torch.nn.init.normal_(sub.conv_out.weight, std=0.02)
    encoder.save_pretrained(tmp_path)
    loaded = MultiGuidanceEncoder.from_pretrained(tmp_path)
    guidance = random_guidance((1, 3, 2, 16, 16))
    assert loaded.config.guidance_types == list(TYPES) or tuple(loaded.config.guidance_types) == TYPES
    assert torch.equal(loaded(guidance), encoder(guidance))


def test_an_encoder_without_attention_is_convolutions_only_and_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = MultiGuidanceEncoder(TYPES, 3, (8, 16, 16, 32), 32, 4, add_attention=False)
    for sub in encoder.encoders.values():
        assert sub.attention is None
        torch.nn.init.normal_(sub.conv_out.weight, std=0.02)
    assert not any("attention" in name for name in encoder.state_dict())
    guidance = random_guidance((1, 3, 2, 16, 16))
    with_attention = tiny_encoder()
    with_attention.load_state_dict(encoder.state_dict(), strict=False)  # same convolutions, plus attention
    assert encoder(guidance).shape == with_attention(guidance).shape == (1, 32, 2, 2, 2)
    assert not torch.allclose(encoder(guidance), with_attention(guidance))
    encoder.save_pretrained(tmp_path)
    loaded = MultiGuidanceEncoder.from_pretrained(tmp_path)
    assert loaded.config.add_attention is False
    assert torch.equal(loaded(guidance), encoder(guidance))


def subset_encoder(guidance_type_dropout: float = 0.5) -> MultiGuidanceEncoder:
    """A tiny encoder trained (as recorded in its config) with guidance-type dropout, outputs made non-zero."""
    torch.manual_seed(0)
    encoder = MultiGuidanceEncoder(TYPES, 3, (8, 16, 16, 32), 32, 4, guidance_type_dropout=guidance_type_dropout)
    for sub in encoder.encoders.values():
        torch.nn.init.normal_(sub.conv_out.weight, std=0.02)
    return encoder


def test_a_subset_model_takes_any_non_empty_subset_and_a_missing_type_adds_nothing():
    encoder = subset_encoder()
    assert encoder.accepts_subsets and not tiny_encoder().accepts_subsets
    guidance = random_guidance((2, 3, 3, 16, 16))
    dwpose_only = encoder({"dwpose": guidance["dwpose"]})
    frames = guidance["dwpose"].permute(0, 2, 1, 3, 4).reshape(6, 3, 16, 16)
    expected = encoder.encoders["dwpose"](frames).reshape(2, 3, 32, 2, 2).permute(0, 2, 1, 3, 4)
    assert torch.allclose(dwpose_only, expected, atol=1e-6)
    # dropping every other type in training zeroes exactly what leaving it out zeroes at inference
    dropped = torch.tensor([[True, True, True, False]] * 2)
    assert torch.allclose(encoder(guidance, drop_mask=dropped), dwpose_only, atol=1e-6)
    with pytest.raises(ValueError, match="non-empty subset .* unknown \\['mask'\\]"):
        encoder({"mask": guidance["dwpose"]})
    with pytest.raises(ValueError, match="non-empty subset"):
        encoder({})


def test_drop_mask_zeroes_one_type_of_one_sample():
    encoder = subset_encoder()
    guidance = random_guidance((2, 3, 2, 16, 16))
    full = encoder(guidance)
    drop_depth_of_first = torch.tensor([[True, False, False, False], [False, False, False, False]])
    dropped = encoder(guidance, drop_mask=drop_depth_of_first)
    without_depth = encoder({name: maps for name, maps in guidance.items() if name != "depth"})
    assert torch.allclose(dropped[0], without_depth[0], atol=1e-6) and torch.equal(dropped[1], full[1])
    images = {name: maps[:, :, 0] for name, maps in guidance.items()}  # (B, 3, H, W): image mode
    assert torch.allclose(encoder(images, drop_mask=drop_depth_of_first)[0], without_depth[0, :, 0], atol=1e-6)
    with pytest.raises(ValueError, match="`drop_mask` must have shape \\(2, 4\\)"):
        encoder(guidance, drop_mask=torch.zeros(2, 3, dtype=torch.bool))


def test_sample_drop_mask_draws_each_type_per_sample_and_nothing_without_dropout():
    generator = torch.Generator().manual_seed(0)
    state = generator.get_state()
    assert tiny_encoder().sample_drop_mask(4, generator) is None
    assert torch.equal(generator.get_state(), state)  # a run without dropout draws what it drew before
    mask = subset_encoder(0.25).sample_drop_mask(4000, generator)
    assert mask.shape == (4000, len(TYPES)) and mask.dtype == torch.bool
    assert abs(mask.float().mean().item() - 0.25) < 0.02
    again = subset_encoder(0.25).sample_drop_mask(4000, torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)


def test_a_model_without_dropout_says_how_to_get_a_subset_model():
    with pytest.raises(ValueError, match="missing \\['depth', 'normal', 'semantic_map'\\].*--guidance_type_dropout"):
        tiny_encoder()({"dwpose": torch.rand(1, 3, 2, 16, 16)})
    with pytest.raises(ValueError, match="must be in \\[0, 1\\)"):
        MultiGuidanceEncoder(TYPES, 3, (8, 16, 16, 32), 32, 4, guidance_type_dropout=1.0)


def test_the_dropout_is_saved_and_an_older_config_loads_as_a_full_model(tmp_path):
    subset_encoder(0.3).save_pretrained(tmp_path / "subset")
    assert MultiGuidanceEncoder.from_pretrained(tmp_path / "subset").config.guidance_type_dropout == 0.3
    tiny_encoder().save_pretrained(tmp_path / "old")
    config_path = tmp_path / "old" / "config.json"
    config = json.loads(config_path.read_text())
    del config["guidance_type_dropout"]  # written before the option existed
    config_path.write_text(json.dumps(config))
    loaded = MultiGuidanceEncoder.from_pretrained(tmp_path / "old")
    assert loaded.config.guidance_type_dropout == 0.0 and not loaded.accepts_subsets
