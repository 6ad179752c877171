"""Guidance injection into a stock D-UNet, and the one function that calls a D-UNet with all its conditions.

Guidance features must be added to the output of the D-UNet's ``conv_in`` (Champ). Rather than fork the UNet's
``forward``, ``conv_in`` becomes a :class:`GuidedConvIn` (same parameters, same state-dict keys) and the features
travel **inside the sample**, concatenated after the latent channels: ``conv_in(sample[:, :C]) + sample[:, C:]``.
No state is stored between calls, so CPU offload, gradient checkpointing and ``torch.compile`` see an ordinary module.
"""

from __future__ import annotations

import torch
from diffusers import UNetMotionModel
from einops import rearrange
from torch import nn

from .reference_attention import ReferenceBank


class GuidedConvIn(nn.Conv2d):
    """``conv_in`` that adds guidance features carried as extra input channels.

    Input ``(N, C_latent, h, w)`` behaves as the plain convolution; ``(N, C_latent + C_out, h, w)`` returns
    ``conv(x[:, :C_latent]) + x[:, C_latent:]``.
    """

    def forward(self, sample: torch.Tensor) -> torch.Tensor:
        channels = sample.shape[1]
        if channels == self.in_channels:
            return super().forward(sample)
        if channels != self.in_channels + self.out_channels:
            raise ValueError(
                f"D-UNet input must have {self.in_channels} latent channels, optionally followed by "
                f"{self.out_channels} guidance channels; got {channels}."
            )
        latents, guidance_features = sample.split([self.in_channels, self.out_channels], dim=1)
        return super().forward(latents) + guidance_features


def install_guidance_injection(unet: nn.Module) -> None:
    """Turn ``unet.conv_in`` into a :class:`GuidedConvIn` sharing its parameters (idempotent)."""
    conv_in = unet.conv_in
    if isinstance(conv_in, GuidedConvIn):
        return
    guided = GuidedConvIn(
        conv_in.in_channels,
        conv_in.out_channels,
        kernel_size=conv_in.kernel_size,
        stride=conv_in.stride,
        padding=conv_in.padding,
        bias=conv_in.bias is not None,
        device="meta",
    )
    # Share the Parameter objects so optimisers, EMA and offload hooks keep working on the same tensors.
    guided.weight, guided.bias = conv_in.weight, conv_in.bias
    unet.conv_in = guided


def unwrap_unet(unet: nn.Module) -> nn.Module:
    """The UNet inside DDP / ``torch.compile`` wrappers (``.module`` / ``._orig_mod``), or ``unet`` itself."""
    while isinstance(getattr(unet, "module", None), nn.Module) or isinstance(getattr(unet, "_orig_mod", None), nn.Module):
        unet = getattr(unet, "module", None) or unet._orig_mod
    return unet


def is_motion_unet(unet: nn.Module) -> bool:
    """Whether ``unet`` (possibly wrapped) models time (``UNetMotionModel``) rather than single frames."""
    return isinstance(unwrap_unet(unet), UNetMotionModel)


def run_denoising_unet(
    unet: nn.Module,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    image_embeds: torch.Tensor,
    reference_bank: ReferenceBank | None,
    guidance_features: torch.Tensor | None = None,
    timestep_cond: torch.Tensor | None = None,
) -> torch.Tensor:
    """One D-UNet evaluation ``F^D(x_t, t, c^p, F^R(I), c^I)`` (paper §2.1).

    Args:
        unet: a ``UNet2DConditionModel`` or ``UNetMotionModel`` with reference read hooks and guidance injection.
        latents: ``(B, C, F, h, w)`` (or ``(B, C, h, w)`` for a 2-D UNet).
        timesteps: ``(B,)`` or a scalar.
        image_embeds: ``(B, 1, D)`` CLIP image embeddings (zeros for the unconditional branch).
        reference_bank: R-UNet tokens with batch ``B`` (and its per-sample drop mask), or ``None`` for no reference.
        guidance_features: ``(B, C_0, F, h, w)`` (or 4-D) from :class:`MultiGuidanceEncoder`, or ``None``.
        timestep_cond: ``(B, time_cond_proj_dim)`` guidance-scale embedding, or ``None``.

    Returns:
        The model output (ε, v or x₀, per the scheduler's ``prediction_type``), shaped like ``latents``.
        A 2-D UNet treats frames independently: they are folded into the batch.
    """
    sample = latents if guidance_features is None else torch.cat([latents, guidance_features.to(latents)], dim=1)
    # The first parameter's dtype, as ``ModelMixin.dtype`` finds it, without its walk over every submodule (about
    # 2 ms on a UNetMotionModel, paid at every denoising step).
    dtype = next(unwrap_unet(unet).parameters()).dtype
    sample = sample.to(dtype)
    image_embeds = image_embeds.to(dtype)
    timestep_cond = None if timestep_cond is None else timestep_cond.to(dtype)
    kwargs = {"cross_attention_kwargs": {"reference_bank": reference_bank}, "return_dict": False}
    if sample.ndim == 4:
        return unet(sample, timesteps, encoder_hidden_states=image_embeds, timestep_cond=timestep_cond, **kwargs)[0]

    # Both UNet kinds see frames folded into the batch inside their spatial layers, so each frame gets its own copy
    # of the image embedding (diffusers' UNetMotionModel expects them pre-repeated, as AnimateDiffPipeline does).
    batch_size, _, num_frames = sample.shape[:3]
    frame_embeds = image_embeds.repeat_interleave(num_frames, dim=0)
    if is_motion_unet(unet):
        return unet(sample, timesteps, encoder_hidden_states=frame_embeds, timestep_cond=timestep_cond, **kwargs)[0]
    timesteps = torch.as_tensor(timesteps, device=sample.device).expand(batch_size)
    output = unet(
        rearrange(sample, "b c f h w -> (b f) c h w"),
        timesteps.repeat_interleave(num_frames),
        encoder_hidden_states=frame_embeds,
        timestep_cond=None if timestep_cond is None else timestep_cond.repeat_interleave(num_frames, dim=0),
        **kwargs,
    )[0]
    return rearrange(output, "(b f) c h w -> b c f h w", b=batch_size)
