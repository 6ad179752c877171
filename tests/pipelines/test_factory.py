import numpy as np
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


def test_latent_channels_size_the_vae_and_both_unets():
    components = build_components(vae_block_out_channels=(8, 16), vae_latent_channels=8, vae_norm_num_groups=4)
    assert components["vae"].config.latent_channels == 8 and components["vae"].config.norm_num_groups == 4
    for name in ("reference_unet", "denoising_unet"):
        assert components[name].config.in_channels == components[name].config.out_channels == 8
    pipe = ReferenceLCMPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    guidance = {name: torch.rand(2, 3, 32, 32, generator=generator) for name in pipe.guidance_types}
    reference = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
    latents = pipe(reference, guidance, num_inference_steps=2, output_type="latent").frames
    assert latents.shape[1] == 8  # (B, C, F, h, w)
    frames = pipe(reference, guidance, num_inference_steps=2, output_type="pt").frames[0]
    assert frames.shape == (2, 3, 32, 32)


def test_build_components_leaves_the_global_rng_unchanged():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    first = build_components()
    assert torch.equal(torch.get_rng_state(), state)
    second = build_components()  # still seeded by `seed`: the same weights every time
    for name in ("vae", "denoising_unet", "guidance_encoder"):
        assert all(torch.equal(a, b) for a, b in zip(first[name].state_dict().values(), second[name].state_dict().values()))


def test_image_encoder_size_can_be_chosen_and_the_feature_extractor_follows():
    components = build_components(image_encoder_config=dict(image_size=64, hidden_size=32, num_attention_heads=4))
    config = components["image_encoder"].config
    assert (config.image_size, config.hidden_size, config.projection_dim) == (64, 32, 16)
    assert components["feature_extractor"].crop_size == {"height": 64, "width": 64}
    pixels = components["feature_extractor"](images=[np.zeros((80, 80, 3), np.uint8)], return_tensors="pt")
    assert pixels["pixel_values"].shape == (1, 3, 64, 64)
