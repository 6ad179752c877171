import pytest
import torch
from diffusers import UNet2DConditionModel
from torch import nn

from referencelcm.models.injection import GuidedConvIn, install_guidance_injection, run_denoising_unet
from referencelcm.models.motion import FrameWiseGroupNorm, set_motion_norm_mode

from ..conftest import build_components, unet_2d_config


def test_guided_conv_in_shares_parameters_and_keys():
    unet = UNet2DConditionModel(**unet_2d_config())
    weight = unet.conv_in.weight
    keys = set(unet.state_dict())
    install_guidance_injection(unet)
    install_guidance_injection(unet)  # idempotent
    assert isinstance(unet.conv_in, GuidedConvIn)
    assert unet.conv_in.weight is weight
    assert set(unet.state_dict()) == keys


def test_guidance_features_are_added_to_conv_in_output():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 8, 3, padding=1)
    holder = nn.Module()
    holder.conv_in = conv
    install_guidance_injection(holder)
    latents, features = torch.randn(2, 4, 5, 5), torch.randn(2, 8, 5, 5)
    assert torch.allclose(holder.conv_in(torch.cat([latents, features], 1)), conv(latents) + features)
    assert torch.equal(holder.conv_in(latents), conv(latents))
    with pytest.raises(ValueError, match="guidance channels"):
        holder.conv_in(torch.randn(2, 5, 5, 5))


@pytest.mark.parametrize("motion", [True, False])
def test_zero_features_change_nothing(motion):
    unet = build_components(motion=motion)["denoising_unet"]
    install_guidance_injection(unet)
    latents = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        zero = run_denoising_unet(unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None)
        with_zero_features = run_denoising_unet(
            unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None, torch.zeros(1, 8, 2, 4, 4)
        )
        with_features = run_denoising_unet(
            unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None, torch.randn(1, 8, 2, 4, 4)
        )
    assert zero.shape == latents.shape
    assert torch.equal(zero, with_zero_features)
    assert not torch.allclose(with_features, zero, atol=1e-4)


def test_frame_wise_norm_normalises_each_frame():
    torch.manual_seed(0)
    norm = FrameWiseGroupNorm(2, 8)
    video = torch.randn(2, 8, 3, 4, 4) * torch.tensor([1.0, 5.0, 20.0]).view(1, 1, 3, 1, 1)
    expected = torch.stack([nn.functional.group_norm(video[:, :, i], 2, norm.weight, norm.bias) for i in range(3)], 2)
    assert torch.allclose(norm(video), expected, atol=1e-5)


def test_motion_norm_mode_switches_and_keeps_weights():
    unet = build_components(motion=True)["denoising_unet"]
    keys = {key: value.clone() for key, value in unet.state_dict().items()}
    latents = torch.randn(1, 4, 3, 4, 4) * torch.tensor([1.0, 4.0, 9.0]).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        video_output = run_denoising_unet(unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None)
        changed = set_motion_norm_mode(unet, "frame")
        frame_output = run_denoising_unet(unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None)
        set_motion_norm_mode(unet, "video")
        back = run_denoising_unet(unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None)
    assert changed > 0
    assert not torch.allclose(video_output, frame_output, atol=1e-4)
    assert torch.equal(back, video_output)
    assert all(torch.equal(value, keys[key]) for key, value in unet.state_dict().items())
    with pytest.raises(ValueError, match="motion_norm_mode"):
        set_motion_norm_mode(unet, "batch")


def test_wrapped_unets_are_seen_through():
    from referencelcm.models.injection import is_motion_unet, unwrap_unet

    unet = build_components(motion=True)["denoising_unet"]

    class Wrapper(nn.Module):  # what DDP and torch.compile put around a model
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, *args, **kwargs):
            return self.module(*args, **kwargs)

    wrapped = Wrapper(unet)
    assert unwrap_unet(wrapped) is unet and is_motion_unet(wrapped)
    latents = torch.randn(1, 4, 2, 4, 4)
    with torch.no_grad():
        direct = run_denoising_unet(unet, latents, torch.tensor(3), torch.zeros(1, 1, 16), None)
        through = run_denoising_unet(wrapped, latents, torch.tensor(3), torch.zeros(1, 1, 16), None)
    assert torch.equal(direct, through)
