"""Tiny seeded components (diffusers-test style) shared by every test: nothing is downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    LCMScheduler,
    MotionAdapter,
    UNet2DConditionModel,
    UNetMotionModel,
)
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from referencelcm import MultiGuidanceEncoder, ReferenceLCMPipeline

GUIDANCE_TYPES = ("depth", "dwpose")
IMAGE_SIZE = 32
CROSS_ATTENTION_DIM = 16

TEACHER_SCHEDULER_CONFIG = dict(
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    clip_sample=False,
    set_alpha_to_one=False,
)


def unet_2d_config(time_cond_proj_dim: int | None = None) -> dict:
    return dict(
        sample_size=IMAGE_SIZE // 8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(8, 16),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=CROSS_ATTENTION_DIM,
        attention_head_dim=2,
        norm_num_groups=2,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def build_components(
    motion: bool = True,
    guidance_types: tuple[str, ...] = GUIDANCE_TYPES,
    time_cond_proj_dim: int | None = None,
    scheduler: str = "lcm",
    seed: int = 0,
) -> dict:
    """Every pipeline component, tiny and seeded: images of 32 px, latents of 4 × 4 px, 8-frame motion modules."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=2,
        layers_per_block=1,
        sample_size=IMAGE_SIZE,
    )
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=16,
            projection_dim=CROSS_ATTENTION_DIM,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            image_size=32,
            patch_size=8,
        )
    )
    feature_extractor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    reference_unet = UNet2DConditionModel(**unet_2d_config())
    denoising_unet = UNet2DConditionModel(**unet_2d_config(time_cond_proj_dim))
    if motion:
        adapter = MotionAdapter(
            block_out_channels=(8, 16),
            motion_layers_per_block=1,
            motion_norm_num_groups=2,
            motion_num_attention_heads=2,
            motion_max_seq_length=32,
        )
        denoising_unet = UNetMotionModel.from_unet2d(denoising_unet, adapter)
    guidance_encoder = MultiGuidanceEncoder(
        guidance_types,
        guidance_input_channels=3,
        block_out_channels=(8, 16, 16, 32),
        guidance_embedding_channels=8,
        attention_num_heads=4,
    )
    if scheduler == "lcm":
        scheduler_object = LCMScheduler(**TEACHER_SCHEDULER_CONFIG)
    else:
        scheduler_object = DDIMScheduler(**TEACHER_SCHEDULER_CONFIG)
    # from_pretrained returns models in eval mode; build them the same way so both compare like for like.
    for model in (vae, image_encoder, reference_unet, denoising_unet, guidance_encoder):
        model.eval()
    return dict(
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        guidance_encoder=guidance_encoder,
        scheduler=scheduler_object,
    )


def randomize_guidance_encoder(guidance_encoder: MultiGuidanceEncoder, seed: int = 1) -> None:
    """Give the zero-initialised output convolutions random weights, so guidance visibly changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for encoder in guidance_encoder.encoders.values():
            encoder.conv_out.weight.copy_(torch.randn(encoder.conv_out.weight.shape, generator=generator) * 0.1)


def make_inputs(num_frames: int = 3, size: int = IMAGE_SIZE, guidance_types=GUIDANCE_TYPES, seed: int = 0) -> dict:
    """A reference image (uint8 numpy) and guidance tensors ``(F, 3, size, size)`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    reference = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
    guidance = {name: torch.rand(num_frames, 3, size, size, generator=generator) for name in guidance_types}
    return dict(reference_image=reference, guidance=guidance)


@pytest.fixture
def components() -> dict:
    return build_components()


@pytest.fixture
def pipe(components) -> ReferenceLCMPipeline:
    pipeline = ReferenceLCMPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def inputs() -> dict:
    return make_inputs()


def as_numpy(frames) -> np.ndarray:
    return np.asarray(frames, dtype=np.float32)
