from pathlib import Path
from types import SimpleNamespace

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


def test_a_convolution_only_finest_level_builds_both_unets_without_attention_there():
    components = build_components(unet_block_out_channels=(8, 16, 16), unet_attention_levels=(False, True, False),
                                  vae_block_out_channels=(8, 16))
    for name in ("reference_unet", "denoising_unet"):
        unet = components[name]
        assert not hasattr(unet.down_blocks[0], "attentions") and not hasattr(unet.up_blocks[-1], "attentions")
        assert hasattr(unet.down_blocks[1], "attentions") and hasattr(unet.up_blocks[1], "attentions")
    pipe = ReferenceLCMPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    guidance = {name: torch.rand(3, 3, 32, 32, generator=generator) for name in pipe.guidance_types}
    reference = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
    frames = pipe(reference, guidance, num_inference_steps=2, output_type="pt").frames[0]
    assert frames.shape == (3, 3, 32, 32)
    # The reference still reaches the output through the attention levels that remain.
    other = pipe(255 - reference, guidance, num_inference_steps=2, output_type="pt").frames[0]
    assert (frames - other).abs().max() > 1e-4


@pytest.mark.parametrize("levels", [(True,), (False, False), (True, True, True)])
def test_attention_levels_must_fit_the_unet(levels):
    with pytest.raises(ValueError, match="attention_levels.*one flag per UNet level"):
        build_components(unet_block_out_channels=(8, 16), unet_attention_levels=levels)


def test_guidance_encoders_without_attention_run_and_stay_so_when_rebuilt_to_fit(tmp_path):
    from referencelcm.training.teacher_stages import replace_from_folders

    components = build_components(guidance_attention=False)
    assert components["guidance_encoder"].config.add_attention is False
    pipe = ReferenceLCMPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    guidance = {name: torch.rand(2, 3, 32, 32, generator=generator) for name in pipe.guidance_types}
    reference = (torch.rand(32, 32, 3, generator=generator) * 255).to(torch.uint8).numpy()
    assert pipe(reference, guidance, num_inference_steps=1, output_type="pt").frames[0].shape == (2, 3, 32, 32)
    build_components(vae_block_out_channels=(8, 16))["vae"].save_pretrained(tmp_path / "vae")
    rebuilt = replace_from_folders(components, vae_path=tmp_path)["guidance_encoder"]
    assert rebuilt.downsample_factor == 2 and rebuilt.config.add_attention is False


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


def test_model_configs_load_from_json_and_yaml(tmp_path):
    from referencelcm.pipelines.factory import MODEL_CONFIG_KEYS, load_model_config

    (tmp_path / "sizes.json").write_text('{"unet_block_out_channels": [8, 16], "image_size": 32}')
    (tmp_path / "sizes.yaml").write_text("unet_block_out_channels: [8, 16]\nimage_size: 32\n")
    assert load_model_config(tmp_path / "sizes.json") == load_model_config(tmp_path / "sizes.yaml")
    assert load_model_config(tmp_path / "sizes.json") == {"unet_block_out_channels": [8, 16], "image_size": 32}
    repository = Path(__file__).resolve().parents[2]
    for shipped in (repository / "examples" / "configs").glob("*.json"):  # the shipped sizes build components
        assert set(load_model_config(shipped)) <= set(MODEL_CONFIG_KEYS), shipped.name
    assert load_model_config(repository / "examples" / "configs" / "tiny.json")["image_size"] == 32


def test_model_config_errors_name_the_argument_and_the_file(tmp_path):
    from referencelcm.pipelines.factory import load_model_config

    with pytest.raises(FileNotFoundError, match="`--sizes` .*missing.json.* is not a file"):
        load_model_config(tmp_path / "missing.json", "--sizes")
    (tmp_path / "list.json").write_text("[8, 16]")
    with pytest.raises(ValueError, match="`--model_config` .*list.json.* must hold a mapping, got list"):
        load_model_config(tmp_path / "list.json")
    (tmp_path / "unknown.yaml").write_text("image_size: 32\nwidth: 3\n")
    with pytest.raises(ValueError, match=r"`--model_config` has unknown keys \['width'\]; known: .*image_size"):
        load_model_config(tmp_path / "unknown.yaml")


def _sized(block_out_channels):
    """A stand-in with only the config the matching reads (no weights are built)."""
    return SimpleNamespace(config=SimpleNamespace(block_out_channels=tuple(block_out_channels)))


def test_matching_guidance_encoder_fits_the_denoising_unet_and_the_vae():
    from referencelcm.pipelines.factory import (
        CHAMP_GUIDANCE_WIDTHS,
        guidance_encoder_fits,
        matching_guidance_encoder,
    )

    components = build_components(unet_block_out_channels=(8, 16), vae_block_out_channels=(8, 16, 16))
    assert guidance_encoder_fits(components["guidance_encoder"], components["denoising_unet"], components["vae"])
    wider, deeper_vae = _sized((16, 32)), _sized((8, 8, 16, 16))
    assert not guidance_encoder_fits(components["guidance_encoder"], wider, components["vae"])
    assert not guidance_encoder_fits(components["guidance_encoder"], components["denoising_unet"], deeper_vae)

    encoder = matching_guidance_encoder(("depth", "dwpose"), wider, deeper_vae)  # (w, 2w, 2w, 4w), w = 16
    assert tuple(encoder.config.block_out_channels) == (16, 32, 32, 64)
    assert list(encoder.config.guidance_types) == ["depth", "dwpose"]
    assert guidance_encoder_fits(encoder, wider, deeper_vae)
    champ = matching_guidance_encoder(("depth",), _sized((320, 640)), deeper_vae)  # SD1.5 widths: Champ's encoder
    assert tuple(champ.config.block_out_channels) == CHAMP_GUIDANCE_WIDTHS
    assert champ.config.guidance_embedding_channels == 320 and champ.config.attention_num_heads == 8
