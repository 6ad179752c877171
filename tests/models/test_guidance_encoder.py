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
