"""The guidance-scale embedding of LCM D-UNets with ``time_cond_proj_dim`` (the D-UNet's ``timestep_cond``).

Inference (the pipeline) and training (the distillation) both condition such a D-UNet on :func:`guidance_condition`,
so it lives here, below both. The guidance scale ω is the *standard* scale (``ω = 1``: the conditional prediction
alone); diffusers' LCM pipelines embed ``w = ω − 1``, and so does :func:`guidance_condition`.
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
    The ``w`` embedded is diffusers' LCM ``w = ω − 1``; call ``guidance_condition(ω)`` with a standard scale ω.
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


def guidance_condition(
    guidance_scale: torch.Tensor, embedding_dim: int = 512, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``timestep_cond`` for a D-UNet with ``time_cond_proj_dim``, from standard guidance scales ω ``(B,)``.

    Returns ``guidance_scale_embedding(ω − 1)`` ``(B, embedding_dim)``: what diffusers' LCM pipeline feeds for
    ``guidance_scale=ω``. Training (with the ω used for the teacher's CFG) and inference must both call this.
    """
    return guidance_scale_embedding(guidance_scale - 1.0, embedding_dim=embedding_dim, dtype=dtype)
