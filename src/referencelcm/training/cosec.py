"""CoSeC regularisers (paper §2.2): pure functions over the student's denoised latents x̂_0, no model calls.

Batch bookkeeping, given per sample ``(B,)`` integer ids:

- ``group_ids``: samples with the same id form an *equivalent group* — same target, pose guidance, noise and
  timestep, references drawn from the same source video (RAS). A sample in no group gets an id of its own.
- ``source_ids``: the video each sample's reference frame comes from; pairs with different ids are inter-source (ERS).

Pairwise terms average the distance over all unordered pairs ``i < j`` of the kind asked for, pooled over the batch,
and are 0 (a 0-d tensor) when the batch has no such pair. Every term is symmetric in the pair, so permuting the batch
together with its ids leaves it unchanged.
"""

from __future__ import annotations

import torch
from einops import rearrange

LOSS_TYPES = ("huber", "l2")


def sample_distance(
    prediction: torch.Tensor, target: torch.Tensor, loss_type: str = "huber", huber_c: float = 0.001
) -> torch.Tensor:
    """Per-sample distance D(·,·) of Eqs. 3, 4 and 7: ``(B, ...)`` × ``(B, ...)`` → ``(B,)`` float32.

    ``"huber"``: pseudo-Huber ``sqrt((a − b)² + c²) − c`` averaged over all non-batch elements (diffusers' LCD);
    ``"l2"``: mean squared error per sample.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {loss_type!r}.")
    if prediction.shape != target.shape:
        raise ValueError(
            f"`prediction` and `target` must have the same shape, got {tuple(prediction.shape)} and "
            f"{tuple(target.shape)}."
        )
    squared = (prediction.float() - target.float()) ** 2
    if loss_type == "huber":
        per_element = torch.sqrt(squared + huber_c**2) - huber_c
    else:
        per_element = squared
    return per_element.flatten(1).mean(dim=1)


def equivalent_target_aggregation(
    denoised: torch.Tensor, group_ids: torch.Tensor, loss_type: str = "huber", huber_c: float = 0.001
) -> torch.Tensor:
    """ETA: mean distance between the x̂_0 of members of the same equivalent group (first term of Eq. 4).

    ``denoised`` ``(B, ...)``, ``group_ids`` ``(B,)`` → 0-d float32; 0 when no group has two members.
    """
    same_group = _ids(group_ids, denoised, "group_ids")
    return _mean_pair_distance(denoised, same_group[:, None] == same_group[None, :], loss_type, huber_c)


def contrastive_negative_sampling(
    denoised: torch.Tensor, source_ids: torch.Tensor, loss_type: str = "huber", huber_c: float = 0.001
) -> torch.Tensor:
    """CoNS: mean distance between the x̂_0 of samples whose references come from different videos (Eq. 4, second term).

    ``denoised`` ``(B, ...)``, ``source_ids`` ``(B,)`` → 0-d float32; 0 when all references share one source.
    Pairs from the same source never enter it.
    """
    sources = _ids(source_ids, denoised, "source_ids")
    return _mean_pair_distance(denoised, sources[:, None] != sources[None, :], loss_type, huber_c)


def spatial_regulariser(
    denoised: torch.Tensor,
    group_ids: torch.Tensor,
    source_ids: torch.Tensor,
    eta_weight: float,
    cons_weight: float,
    loss_type: str = "huber",
    huber_c: float = 0.001,
) -> torch.Tensor:
    """``R_spt = φ1·ETA − φ2·CoNS`` (Eq. 4), a 0-d tensor; ``L_1 = L_CD + R_spt`` (Eq. 5).

    ``eta_weight`` is φ1, ``cons_weight`` is φ2 (appendix C, phase 1: 0.1 and 0.02). A zero weight skips its term.
    """
    regulariser = denoised.new_zeros((), dtype=torch.float32)
    if eta_weight != 0:
        regulariser = regulariser + eta_weight * equivalent_target_aggregation(denoised, group_ids, loss_type, huber_c)
    if cons_weight != 0:
        regulariser = regulariser - cons_weight * contrastive_negative_sampling(
            denoised, source_ids, loss_type, huber_c
        )
    return regulariser


def self_dependency(latents: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Temporal self-dependency matrix ``T = D⁻¹ Z Zᵀ D⁻¹`` (Eq. 6): ``(B, C, F, H, W)`` → ``(B, F, F)`` float32.

    ``Z`` is the ``(F, C·H·W)`` matrix of flattened frames and ``D = diag(‖v_i‖)``, so ``T[i, j]`` is the cosine
    similarity of frames i and j (the paper's ``ZᵀZ`` is a typo for this f×f product). Norms below ``eps`` are
    clamped to ``eps``, so an all-zero frame gives a zero row and column instead of NaN.
    """
    if latents.ndim != 5:
        raise ValueError(f"`latents` must be a video (B, C, F, H, W), got shape {tuple(latents.shape)}.")
    frames = rearrange(latents.float(), "b c f h w -> b f (c h w)")
    unit_frames = torch.nn.functional.normalize(frames, dim=-1, eps=eps)
    return unit_frames @ unit_frames.transpose(1, 2)


def temporal_regulariser(
    denoised_video: torch.Tensor, group_ids: torch.Tensor, loss_type: str = "huber", huber_c: float = 0.001
) -> torch.Tensor:
    """``R_tmp``: mean distance between the self-dependency matrices of equivalent-group members (Eq. 7).

    ``denoised_video`` ``(B, C, F, H, W)``, ``group_ids`` ``(B,)`` → 0-d float32; ``L_2 = L_CD + λ·R_tmp`` (Eq. 8).
    """
    return equivalent_target_aggregation(self_dependency(denoised_video), group_ids, loss_type, huber_c)


def _ids(ids: torch.Tensor, denoised: torch.Tensor, name: str) -> torch.Tensor:
    if ids.shape != (denoised.shape[0],):
        raise ValueError(
            f"`{name}` must have shape ({denoised.shape[0]},) (one id per sample), got {tuple(ids.shape)}."
        )
    return ids.to(denoised.device)


def _mean_pair_distance(
    denoised: torch.Tensor, pair_mask: torch.Tensor, loss_type: str, huber_c: float
) -> torch.Tensor:
    """Mean ``sample_distance`` over the unordered pairs ``i < j`` where ``pair_mask[i, j]``; 0 when there are none."""
    first, second = torch.triu(pair_mask, diagonal=1).nonzero(as_tuple=True)
    if first.numel() == 0:
        return denoised.new_zeros((), dtype=torch.float32)
    return sample_distance(denoised[first], denoised[second], loss_type, huber_c).mean()
