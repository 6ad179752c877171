"""Build freshly initialised pipeline components from size settings (no download): tests, demos, benchmarks."""

from __future__ import annotations

import functools
import inspect
import json
import os
from pathlib import Path
from typing import Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from ..models.guidance_encoder import MultiGuidanceEncoder

# The teacher schedule of docs/design.md §2 (Champ's): v-prediction, zero terminal SNR, trailing timesteps.
TEACHER_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    rescale_betas_zero_snr=True,
    timestep_spacing="trailing",
    clip_sample=False,
    set_alpha_to_one=True,  # diffusers' default, as Champ: the last DDIM step lands on x̂₀
    steps_offset=1,
)


# The default CLIP vision tower: tiny, for tests and CPU-sized models (``build_components(image_encoder_config=...)``).
TINY_IMAGE_ENCODER = dict(
    hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32, image_size=32, patch_size=8
)


def unet_2d_config(
    sample_size: int,
    block_out_channels: Sequence[int] = (8, 16),
    cross_attention_dim: int = 16,
    attention_head_dim: int = 2,
    norm_num_groups: int = 2,
    time_cond_proj_dim: int | None = None,
    layers_per_block: int = 1,
    latent_channels: int = 4,
    attention_levels: Sequence[bool] | None = None,
) -> dict:
    """A ``UNet2DConditionModel`` config reading and predicting ``latent_channels``-channel latents.

    ``attention_levels`` says, level by level from the finest, which blocks carry transformer layers (cross-attention
    to the image embedding, and the self-attention that reference features join); the default is SD1.5's pattern,
    every level but the deepest. A convolution-only finest level keeps large latents affordable: attention cost grows
    with the square of the tokens (measured at 32 × 32 latents: 6–7 × a 16 × 16 D-UNet step with attention there,
    1.8 × without).
    """
    depth = len(block_out_channels)
    if attention_levels is None:
        attention_levels = (True,) * (depth - 1) + (False,)
    attention_levels = tuple(bool(level) for level in attention_levels)
    if len(attention_levels) != depth or not any(attention_levels):
        raise ValueError(
            f"`attention_levels` must give one flag per UNet level ({depth}, as `block_out_channels`) with at least "
            f"one True (reference features are read by attention), got {list(attention_levels)}."
        )
    down_block_types = tuple("CrossAttnDownBlock2D" if level else "DownBlock2D" for level in attention_levels)
    up_block_types = tuple("CrossAttnUpBlock2D" if level else "UpBlock2D" for level in reversed(attention_levels))
    return dict(
        sample_size=sample_size,
        in_channels=latent_channels,
        out_channels=latent_channels,
        block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block,
        down_block_types=down_block_types,
        up_block_types=up_block_types,
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=norm_num_groups,
        time_cond_proj_dim=time_cond_proj_dim,
    )


def _leaves_global_rng_unchanged(function: Callable) -> Callable:
    """Run ``function`` on a fork of the CPU torch RNG, so seeding inside it does not change the caller's RNG."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with torch.random.fork_rng(devices=[]):
            return function(*args, **kwargs)

    return wrapper


@_leaves_global_rng_unchanged
def build_components(
    image_size: int = 32,
    guidance_types: Sequence[str] = ("depth", "normal", "semantic_map", "dwpose"),
    motion: bool = True,
    time_cond_proj_dim: int | None = None,
    scheduler: str = "lcm",
    unet_block_out_channels: Sequence[int] = (8, 16),
    vae_block_out_channels: Sequence[int] = (8, 8, 16, 16),
    cross_attention_dim: int = 16,
    norm_num_groups: int = 2,
    seed: int = 0,
    layers_per_block: int = 1,
    attention_head_dim: int = 2,
    motion_layers_per_block: int | None = None,
    motion_num_attention_heads: int = 2,
    motion_max_seq_length: int = 32,
    guidance_block_out_channels: Sequence[int] | None = None,
    vae_latent_channels: int = 4,
    vae_norm_num_groups: int | None = None,
    image_encoder_config: dict | None = None,
    unet_attention_levels: Sequence[bool] | None = None,
    guidance_attention: bool = True,
) -> dict:
    """Every :class:`ReferenceLCMPipeline` component, freshly initialised from ``seed`` (defaults: tiny, CPU-fast).

    The VAE downsamples by ``2 ** (len(vae_block_out_channels) - 1)``; the guidance encoder matches it. Models are
    returned in eval mode, as ``from_pretrained`` returns them. ``scheduler`` is ``"lcm"`` (student) or ``"ddim"``
    (teacher), both on the teacher schedule :data:`TEACHER_SCHEDULER_CONFIG`. ``layers_per_block`` and
    ``attention_head_dim`` size both UNets; the ``motion_*`` settings size the motion adapter (see
    :func:`build_motion_adapter`). ``guidance_block_out_channels`` are the guidance encoders' conv widths (one more
    than the VAE's downsampling steps; default ``(w, 2w, …, 4w)`` with ``w`` the first UNet width).
    ``vae_latent_channels`` sets the latent's channels (and both UNets' input and output); ``vae_norm_num_groups``
    the VAE's group-norm groups (default ``norm_num_groups``). ``image_encoder_config`` overrides the tiny CLIP
    vision config (``hidden_size``, ``num_hidden_layers``, ``image_size``, ``patch_size`` …; the feature extractor
    follows its ``image_size``). ``unet_attention_levels`` picks the UNet levels with attention, finest first (see
    :func:`unet_2d_config`; default: all but the deepest); ``guidance_attention=False`` builds the guidance encoders
    without their attention block (``MultiGuidanceEncoder(add_attention=False)``). The weights are drawn from a
    forked RNG seeded with ``seed``: the caller's global torch RNG state is left unchanged.
    """
    if scheduler not in ("lcm", "ddim"):
        raise ValueError(f"`scheduler` must be 'lcm' or 'ddim', got {scheduler!r}.")
    torch.manual_seed(seed)
    vae_depth = len(vae_block_out_channels)
    vae = AutoencoderKL(
        block_out_channels=tuple(vae_block_out_channels),
        down_block_types=("DownEncoderBlock2D",) * vae_depth,
        up_block_types=("UpDecoderBlock2D",) * vae_depth,
        latent_channels=vae_latent_channels,
        norm_num_groups=vae_norm_num_groups or norm_num_groups,
        layers_per_block=1,
        sample_size=image_size,
    )
    clip_config = {**TINY_IMAGE_ENCODER, "projection_dim": cross_attention_dim, **(image_encoder_config or {})}
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip_config))
    clip_size = clip_config["image_size"]
    feature_extractor = CLIPImageProcessor(crop_size=clip_size, size={"shortest_edge": clip_size})
    latent_size = image_size // 2 ** (vae_depth - 1)
    unet_kwargs = dict(
        sample_size=latent_size,
        block_out_channels=unet_block_out_channels,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=norm_num_groups,
        layers_per_block=layers_per_block,
        attention_head_dim=attention_head_dim,
        latent_channels=vae_latent_channels,
        attention_levels=unet_attention_levels,
    )
    reference_unet = UNet2DConditionModel(**unet_2d_config(**unet_kwargs))
    denoising_unet = UNet2DConditionModel(**unet_2d_config(**unet_kwargs, time_cond_proj_dim=time_cond_proj_dim))
    if motion:
        adapter = build_motion_adapter(
            denoising_unet, motion_layers_per_block, motion_num_attention_heads, motion_max_seq_length,
            zero_init=False,
        )
        denoising_unet = UNetMotionModel.from_unet2d(denoising_unet, adapter)
    first_width = unet_block_out_channels[0]
    if guidance_block_out_channels is None:
        guidance_block_out_channels = (first_width,) + (2 * first_width,) * (vae_depth - 2) + (4 * first_width,)
    if len(guidance_block_out_channels) != vae_depth:
        raise ValueError(
            f"`guidance_block_out_channels` must have {vae_depth} widths (the VAE downsamples "
            f"{len(vae_block_out_channels) - 1} times), got {list(guidance_block_out_channels)}."
        )
    guidance_encoder = MultiGuidanceEncoder(
        tuple(guidance_types),
        guidance_input_channels=3,
        block_out_channels=tuple(guidance_block_out_channels),
        guidance_embedding_channels=first_width,
        attention_num_heads=4,
        add_attention=guidance_attention,
    )
    scheduler_class = LCMScheduler if scheduler == "lcm" else DDIMScheduler
    for model in (vae, image_encoder, reference_unet, denoising_unet, guidance_encoder):
        model.eval()
    return dict(
        vae=vae,
        image_encoder=image_encoder,
        feature_extractor=feature_extractor,
        reference_unet=reference_unet,
        denoising_unet=denoising_unet,
        guidance_encoder=guidance_encoder,
        scheduler=scheduler_class(**TEACHER_SCHEDULER_CONFIG),
    )


def build_motion_adapter(
    unet: UNet2DConditionModel,
    motion_layers_per_block: int | None = None,
    motion_num_attention_heads: int = 2,
    motion_max_seq_length: int = 32,
    motion_norm_num_groups: int | None = None,
    zero_init: bool = True,
) -> MotionAdapter:
    """A fresh ``MotionAdapter`` that fits ``unet`` (same block widths; layers and norm groups default to the UNet's).

    With ``zero_init`` every motion module's output projection starts at zero (as AnimateDiff initialises them), so
    ``UNetMotionModel.from_unet2d(unet, adapter)`` first computes exactly what ``unet`` computes frame by frame.
    """
    adapter = MotionAdapter(
        block_out_channels=tuple(unet.config.block_out_channels),
        motion_layers_per_block=motion_layers_per_block or unet.config.layers_per_block,
        motion_norm_num_groups=motion_norm_num_groups or unet.config.norm_num_groups,
        motion_num_attention_heads=motion_num_attention_heads,
        motion_max_seq_length=motion_max_seq_length,
    )
    if zero_init:
        with torch.no_grad():
            for name, module in adapter.named_modules():
                if name.endswith("proj_out") and isinstance(module, torch.nn.Linear):
                    module.weight.zero_()
                    module.bias.zero_()
    return adapter


# The keys of a model config file (``examples/configs/*.json``): :func:`build_components`' arguments, and the
# pipeline's ``reference_locality`` (a setting a teacher is trained with, not a component size).
MODEL_CONFIG_KEYS = (*inspect.signature(build_components).parameters, "reference_locality")


def load_model_config(path: str | os.PathLike, argument: str = "--model_config") -> dict:
    """Component sizes from a JSON or YAML file whose keys are :func:`build_components` arguments
    (:data:`MODEL_CONFIG_KEYS`), e.g. ``examples/configs/default.json``. Errors name ``argument`` and the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`{argument}` {str(path)!r} is not a file.")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        sizes = yaml.safe_load(text)
    else:
        sizes = json.loads(text)
    if not isinstance(sizes, dict):
        raise ValueError(f"`{argument}` {str(path)!r} must hold a mapping, got {type(sizes).__name__}.")
    unknown = sorted(set(sizes) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"`{argument}` has unknown keys {unknown}; known: {list(MODEL_CONFIG_KEYS)}.")
    return sizes


# Champ's guidance-encoder widths, for a 4-level (SD1.5) VAE and a D-UNet at least 64 wide.
CHAMP_GUIDANCE_WIDTHS = (16, 32, 96, 256)


def matching_guidance_encoder(
    guidance_types: Sequence[str], denoising_unet: torch.nn.Module, vae: torch.nn.Module, add_attention: bool = True
) -> MultiGuidanceEncoder:
    """A new guidance encoder for ``denoising_unet``'s first width and ``vae``'s downsampling factor: Champ's widths
    (:data:`CHAMP_GUIDANCE_WIDTHS`) for a 4-level VAE and a D-UNet at least 64 wide, otherwise ``(w, 2w, …, 4w)``
    with ``w`` the D-UNet's first width; with or without attention blocks (``add_attention``)."""
    vae_depth = len(vae.config.block_out_channels)
    first_width = denoising_unet.config.block_out_channels[0]
    widths = CHAMP_GUIDANCE_WIDTHS if vae_depth == len(CHAMP_GUIDANCE_WIDTHS) and first_width >= 64 else (
        (first_width,) + (2 * first_width,) * (vae_depth - 2) + (4 * first_width,))
    return MultiGuidanceEncoder(tuple(guidance_types), block_out_channels=widths,
                                guidance_embedding_channels=first_width,
                                attention_num_heads=8 if first_width >= 64 else 4, add_attention=add_attention)


def guidance_encoder_fits(
    guidance_encoder: MultiGuidanceEncoder, denoising_unet: torch.nn.Module, vae: torch.nn.Module
) -> bool:
    """Whether ``guidance_encoder``'s features have ``denoising_unet``'s first width and ``vae``'s latent size."""
    return (guidance_encoder.config.guidance_embedding_channels == denoising_unet.config.block_out_channels[0]
            and guidance_encoder.downsample_factor == 2 ** (len(vae.config.block_out_channels) - 1))
