import pytest
import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.pipelines.factory import build_components


def test_guidance_encoder_widths_can_be_chosen():
    components = build_components(unet_block_out_channels=(16, 32), vae_block_out_channels=(8, 16, 16),
                                  guidance_block_out_channels=(4, 8, 16), norm_num_groups=4)
    assert tuple(components["guidance_encoder"].config.block_out_channels) == (4, 8, 16)
    assert components["guidance_encoder"].config.guidance_embedding_channels == 16
    ReferenceLCMPipeline(**components)  # widths agree with the UNet and the VAE factor


def test_default_guidance_widths_follow_the_unet():
    components = build_components(unet_block_out_channels=(8, 16), vae_block_out_channels=(8, 8, 16, 16))
    assert tuple(components["guidance_encoder"].config.block_out_channels) == (8, 16, 16, 32)


def test_guidance_widths_must_match_the_vae_depth():
    with pytest.raises(ValueError, match="guidance_block_out_channels.*3 widths"):
        build_components(vae_block_out_channels=(8, 16, 16), guidance_block_out_channels=(8, 16))


def test_build_components_leaves_the_global_rng_unchanged():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = build_components()
    assert torch.equal(torch.get_rng_state(), state)
    second = build_components()  # still seeded by `seed`: the same weights every time
    for name in ("vae", "denoising_unet", "guidance_encoder"):
        assert all(torch.equal(a, b) for a, b in zip(first[name].state_dict().values(), second[name].state_dict().values()))
