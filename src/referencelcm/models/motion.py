"""Motion-module normalisation modes, so converted Champ / AnimateDiff v1-v2 motion modules behave as trained.

diffusers' ``AnimateDiffTransformer3D`` normalises its input over ``(C, F, H, W)`` groups (whole clip); Champ's
motion modules normalise each frame on its own. Swapping the stock ``GroupNorm`` for :class:`FrameWiseGroupNorm`
keeps the parameters (same keys, same tensors) and changes only the statistics.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn

MOTION_NORM_MODES = ("video", "frame")


class FrameWiseGroupNorm(nn.GroupNorm):
    """A ``GroupNorm`` that, given ``(B, C, F, H, W)``, normalises every frame separately (as on ``(B F) C H W``)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if hidden_states.ndim != 5:
            return super().forward(hidden_states)
        num_frames = hidden_states.shape[2]
        frames = rearrange(hidden_states, "b c f h w -> (b f) c h w")
        frames = super().forward(frames)
        return rearrange(frames, "(b f) c h w -> b c f h w", f=num_frames)


def _swap_group_norm(norm: nn.GroupNorm, cls: type[nn.GroupNorm]) -> nn.GroupNorm:
    swapped = cls(norm.num_groups, norm.num_channels, eps=norm.eps, affine=norm.affine, device="meta")
    # Share the Parameter objects: optimisers, EMA copies and offload hooks keep pointing at the same tensors.
    swapped.weight, swapped.bias = norm.weight, norm.bias
    return swapped


def set_motion_norm_mode(unet: nn.Module, mode: str) -> int:
    """Set how every motion module of ``unet`` normalises its input: ``"video"`` (diffusers) or ``"frame"`` (Champ).

    Returns the number of motion modules changed (0 for a UNet without motion modules).
    """
    if mode not in MOTION_NORM_MODES:
        raise ValueError(f"`motion_norm_mode` must be one of {MOTION_NORM_MODES}, got {mode!r}.")
    target = FrameWiseGroupNorm if mode == "frame" else nn.GroupNorm
    changed = 0
    for name, module in unet.named_modules():
        if ".motion_modules." not in f".{name}." or not isinstance(getattr(module, "norm", None), nn.GroupNorm):
            continue
        if type(module.norm) is not target:
            module.norm = _swap_group_norm(module.norm, target)
        changed += 1
    return changed
