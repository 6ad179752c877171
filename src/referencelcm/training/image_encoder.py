"""Training the CLIP image encoder to carry the reference's colours, for teachers trained from scratch.

Champ keeps a pretrained CLIP frozen: its ``image_embeds`` already describe the reference, and the UNets'
cross-attention learns to read them. A teacher built from scratch has no such encoder, and a random one trained
jointly with the UNets learnt nothing the UNets could use (benchmarks/RESULTS.md, "a 128 px pilot": part-colour
error unchanged when the encoder was shown a grey image). So the encoder gets its own stage
(``train_teacher.py --stage image_encoder``) before the image stage:

    from the CLIP input of a frame (a random square crop of 0.85–1 of its side, :func:`clip_inputs`), predict the mean
    colour of every body part and of the background in that frame,

through a linear head on ``image_embeds`` that is dropped afterwards, so the embedding itself carries the colours
linearly, which is what the UNets' cross-attention can read. Regions come from SynthDance's semantic maps
(:func:`~referencelcm.data.synthdance.semantic_part_labels`); other datasets have no part labels, so the stage refuses
them. Loss: the mean squared error of the predicted colours (RGB in [0, 1]) over the regions present in the frame.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.synthdance import NUM_PARTS, semantic_part_labels
from ..metrics import region_mean_colours

NUM_REGIONS = NUM_PARTS + 1  # the body parts, then the background


@dataclass
class ColourLossOutput:
    """``loss`` (0-d) and ``terms`` (floats for logging)."""

    loss: torch.Tensor
    terms: dict[str, float]


class RegionColourModel(nn.Module):
    """A ``CLIPVisionModelWithProjection`` with a linear head: CLIP inputs ``(B, 3, C, C)`` → region colours
    ``(B, num_regions, 3)``. One module, so a ``DistributedDataParallel`` wrapper sees both; state dict keys
    ``image_encoder.*`` and ``head.*``."""

    def __init__(self, image_encoder: nn.Module, num_regions: int = NUM_REGIONS):
        super().__init__()
        self.image_encoder = image_encoder
        self.num_regions = num_regions
        self.head = nn.Linear(image_encoder.config.projection_dim, num_regions * 3)

    def forward(self, clip_pixels: torch.Tensor) -> torch.Tensor:
        embeds = self.image_encoder(clip_pixels.to(self.image_encoder.dtype)).image_embeds
        return self.head(embeds.to(self.head.weight.dtype)).view(-1, self.num_regions, 3)


def clip_inputs(
    frames: torch.Tensor,
    feature_extractor,
    generator: torch.Generator | None = None,
    crop_scale: tuple[float, float] = (0.85, 1.0),
) -> torch.Tensor:
    """CLIP inputs ``(B, 3, S, S)`` of ``frames`` ``(B, 3, H, W)`` in [0, 1]: one square crop per frame, of side
    ``U(crop_scale) · min(H, W)`` at a random place, resized (bicubic, antialiased) to the ``feature_extractor``'s
    crop size ``S`` and normalised with its ``image_mean`` / ``image_std``. With ``crop_scale`` ``(1, 1)`` and square
    frames this is what the pipeline's ``CLIPImageProcessor`` makes of a frame, up to resampling."""
    if frames.ndim != 4 or frames.shape[1] != 3:
        raise ValueError(f"`frames` must be (B, 3, H, W), got shape {tuple(frames.shape)}.")
    if not 0.0 < crop_scale[0] <= crop_scale[1] <= 1.0:
        raise ValueError(f"`crop_scale` must be (low, high) with 0 < low <= high <= 1, got {crop_scale!r}.")
    size = (feature_extractor.crop_size["height"], feature_extractor.crop_size["width"])
    height, width = frames.shape[2:]
    crops = []
    for frame in frames:
        scale = crop_scale[0] + (crop_scale[1] - crop_scale[0]) * torch.rand((), generator=generator).item()
        side = max(1, round(min(height, width) * scale))
        top = int(torch.randint(height - side + 1, (), generator=generator))
        left = int(torch.randint(width - side + 1, (), generator=generator))
        crop = frame[None, :, top : top + side, left : left + side].float()
        crops.append(F.interpolate(crop, size=size, mode="bicubic", align_corners=False, antialias=True))
    pixels = torch.cat(crops).clamp(0, 1)
    mean = torch.tensor(feature_extractor.image_mean, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(feature_extractor.image_std, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def part_labels(semantic_maps: torch.Tensor) -> torch.Tensor:
    """SynthDance part labels ``(B, H, W)`` int64 on CPU (``-1`` background) of semantic maps ``(B, 3, H, W)`` in
    [0, 1] (:func:`~referencelcm.data.synthdance.semantic_part_labels` on their uint8 form)."""
    maps = (semantic_maps.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return torch.from_numpy(semantic_part_labels(np.ascontiguousarray(maps.cpu().numpy())).astype(np.int64))


def region_colour_targets(frames: torch.Tensor, semantic_maps: torch.Tensor) -> torch.Tensor:
    """The mean colour of each SynthDance region of each frame.

    Args:
        frames: ``(B, 3, H, W)`` in [0, 1].
        semantic_maps: ``(B, 3, H, W)`` SynthDance semantic maps in [0, 1], at their own size (as the training
            dataset reads them without a crop): a bilinear resize blends neighbouring parts' colours into a third
            part's, which mislabels small parts.

    Returns:
        float32 ``(B, NUM_REGIONS, 3)`` in [0, 1]: the parts, then the background; NaN where a region is absent.
    """
    if frames.ndim != 4 or semantic_maps.shape != frames.shape:
        raise ValueError(f"`frames` and `semantic_maps` must both be (B, 3, H, W); got {tuple(frames.shape)} and "
                         f"{tuple(semantic_maps.shape)}.")
    colours = region_mean_colours(frames.detach().float().cpu(), part_labels(semantic_maps), NUM_PARTS)
    return colours.float().to(frames.device)


def region_colour_loss(prediction: torch.Tensor, targets: torch.Tensor) -> ColourLossOutput:
    """Mean squared error of ``prediction`` ``(B, R, 3)`` against ``targets`` ``(B, R, 3)`` over the regions present
    (non-NaN) in ``targets``; 0 (still differentiable) when none is."""
    if prediction.shape != targets.shape:
        raise ValueError(f"`prediction` {tuple(prediction.shape)} and `targets` {tuple(targets.shape)} must match.")
    present = ~targets.isnan()
    if present.any():
        loss = (prediction.float()[present] - targets[present]).pow(2).mean()
    else:
        loss = prediction.sum() * 0.0
    terms = {"loss": loss.item(), "regions_present": present.all(-1).float().mean().item()}
    return ColourLossOutput(loss, terms)
