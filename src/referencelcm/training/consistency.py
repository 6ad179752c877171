"""Consistency-model math shared by training and inference (one copy only).

Guidance-scale embedding (LCM, Luo et al.): ``w`` is embedded with sinusoids into ``embedding_dim`` channels and
fed to the D-UNet as ``timestep_cond`` when ``unet.config.time_cond_proj_dim`` is set.
"""

from __future__ import annotations

import math

import torch


def guidance_scale_embedding(
    guidance_scale: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """Sinusoidal embedding of guidance scales ``w``: ``(B,)`` → ``(B, embedding_dim)``.

    Matches diffusers' LCM pipelines (``get_guidance_scale_embedding``): ``w`` is scaled by 1000, then embedded with
    ``half = embedding_dim // 2`` log-spaced frequencies as ``[sin, cos]``, zero-padded for odd dims.
    """
    if guidance_scale.ndim != 1:
        raise ValueError(f"`guidance_scale` must be 1-D (B,), got shape {tuple(guidance_scale.shape)}.")
    scaled = guidance_scale.float() * 1000.0
    half_dim = embedding_dim // 2
    frequencies = torch.exp(
        torch.arange(half_dim, dtype=torch.float32, device=scaled.device) * -(math.log(10000.0) / (half_dim - 1))
    )
    angles = scaled[:, None] * frequencies[None, :]
    embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if embedding_dim % 2 == 1:
        embedding = torch.nn.functional.pad(embedding, (0, 1))
    return embedding.to(dtype)
