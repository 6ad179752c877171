"""Exponential moving average of the student into the EMA target D-UNet (θ⁻ ← α·θ⁻ + (1 − α)·θ, appendix D)."""

from __future__ import annotations

from collections.abc import Iterable

import torch


@torch.no_grad()
def ema_update(target_params: Iterable[torch.Tensor], source_params: Iterable[torch.Tensor], decay: float) -> None:
    """In place, for each pair: ``target ← decay·target + (1 − decay)·source``.

    ``decay`` is the paper's α (appendix C: 0.95); 1 keeps the target, 0 copies the source. Pairs are matched by
    position (pass ``module.parameters()`` of two identically built modules). The blend runs in the wider of the
    two dtypes and is stored in the target's dtype and device. Call it only on steps where gradients synced.
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"`decay` must be in [0, 1], got {decay}.")
    targets, sources = list(target_params), list(source_params)
    if len(targets) != len(sources):
        raise ValueError(
            f"`target_params` and `source_params` must pair up, got {len(targets)} and {len(sources)} tensors."
        )
    for target, source in zip(targets, sources):
        if target.shape != source.shape:
            raise ValueError(f"Parameter shapes differ: target {tuple(target.shape)}, source {tuple(source.shape)}.")
        dtype = torch.promote_types(target.dtype, source.dtype)
        source = source.to(device=target.device, dtype=dtype)
        if target.dtype == dtype:
            target.lerp_(source, 1.0 - decay)
        else:
            target.copy_(target.to(dtype).lerp_(source, 1.0 - decay))
