"""Training a small ``AutoencoderKL`` on a dataset's frames, for teachers trained from scratch (no pretrained VAE).

Loss per image ``x`` ``(3, H, W)`` in [-1, 1]: ``L1(x̂, x) + MSE(x̂, x) + kl_weight · KL(q(z|x) ‖ N(0, I))``, with
``x̂ = decode(z)``, ``z ~ q(z|x)`` and the KL summed over latent elements (the Stable Diffusion VAE recipe without the
perceptual and adversarial terms, which need downloaded networks). After training, :func:`latent_scaling_factor`
sets ``scaling_factor`` so the scaled latents have unit variance, as the diffusion models expect.

In pose-animation frames the person is a small part of the picture (SynthDance: about 8 % of a 64-px frame) and the
part the model must get right, so the reconstruction terms can weight person pixels ``1 + person_weight`` and
training can run on crops centred on the person (:func:`person_crops`): a convolutional autoencoder trained on
crops works on whole frames, and a crop costs a fraction of a frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn


@dataclass
class VAELossOutput:
    """``loss`` (0-d), ``terms`` (floats for logging) and the detached reconstruction ``(B, 3, H, W)``."""

    loss: torch.Tensor
    terms: dict[str, float]
    reconstruction: torch.Tensor


class VAEReconstruction(nn.Module):
    """An ``AutoencoderKL``'s encode → sample → decode as one ``forward``, so a ``DistributedDataParallel`` wrapper
    (``accelerator.prepare``) sees the whole use of its parameters. The state dict is the VAE's, prefixed ``vae.``."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(
        self, pixels: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` → reconstruction ``(B, 3, H, W)``, posterior mean and log-variance ``(B, C, h, w)``."""
        posterior = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist
        reconstruction = self.vae.decode(posterior.sample(generator=generator)).sample
        return reconstruction, posterior.mean, posterior.logvar


def person_crops(
    pixels: torch.Tensor,
    masks: torch.Tensor,
    size: int,
    generator: torch.Generator | None = None,
    person_probability: float = 0.75,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Square crops of ``size`` pixels, each centred (as far as the frame allows) on a random person pixel with
    probability ``person_probability``, else on a uniformly random pixel (also when a frame shows no person).

    Args:
        pixels: ``(B, C, H, W)`` images; ``masks``: ``(B, H, W)`` bool person masks.
        size: crop side, at most ``min(H, W)``.

    Returns:
        The crops ``(B, C, size, size)`` and their masks ``(B, size, size)``.
    """
    if pixels.ndim != 4 or masks.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(f"`pixels` (B, C, H, W) and `masks` (B, H, W) must agree; got {tuple(pixels.shape)} and "
                         f"{tuple(masks.shape)}.")
    height, width = pixels.shape[2:]
    if not 1 <= size <= min(height, width):
        raise ValueError(f"`size` must be in [1, {min(height, width)}] for {height}x{width} frames, got {size}.")
    if not 0.0 <= person_probability <= 1.0:
        raise ValueError(f"`person_probability` must be in [0, 1], got {person_probability}.")
    crops, crop_masks = [], []
    for image, mask in zip(pixels, masks.bool()):
        rows, columns = torch.nonzero(mask, as_tuple=True)
        if len(rows) and torch.rand((), generator=generator).item() < person_probability:
            pick = int(torch.randint(len(rows), (), generator=generator))
            centre_row, centre_column = int(rows[pick]), int(columns[pick])
        else:
            centre_row = int(torch.randint(height, (), generator=generator))
            centre_column = int(torch.randint(width, (), generator=generator))
        top = min(max(centre_row - size // 2, 0), height - size)
        left = min(max(centre_column - size // 2, 0), width - size)
        crops.append(image[:, top : top + size, left : left + size])
        crop_masks.append(mask[top : top + size, left : left + size])
    return torch.stack(crops), torch.stack(crop_masks)


def vae_loss(
    vae: nn.Module,
    pixels: torch.Tensor,
    kl_weight: float = 1e-6,
    generator: torch.Generator | None = None,
    reconstruction_model: nn.Module | None = None,
    masks: torch.Tensor | None = None,
    person_weight: float = 0.0,
) -> VAELossOutput:
    """Reconstruction + KL loss of ``pixels`` ``(B, 3, H, W)`` in [-1, 1] through an ``AutoencoderKL``.

    ``reconstruction_model`` is the :class:`VAEReconstruction` of ``vae`` to call (e.g. as wrapped by
    ``accelerator.prepare``); default: a new one. With person ``masks`` ``(B, H, W)`` bool, person pixels count
    ``1 + person_weight`` times in the L1 and MSE terms (each image's terms are weighted means, so the loss keeps its
    scale).
    """
    if pixels.ndim != 4:
        raise ValueError(f"`pixels` must be (B, 3, H, W), got shape {tuple(pixels.shape)}.")
    if kl_weight < 0:
        raise ValueError(f"`kl_weight` must be >= 0, got {kl_weight}.")
    if person_weight < 0:
        raise ValueError(f"`person_weight` must be >= 0, got {person_weight}.")
    if masks is not None and masks.shape != (pixels.shape[0], *pixels.shape[2:]):
        raise ValueError(f"`masks` must be (B, H, W) = {(pixels.shape[0], *pixels.shape[2:])}, got "
                         f"{tuple(masks.shape)}.")
    model = reconstruction_model if reconstruction_model is not None else VAEReconstruction(vae)
    reconstruction, mean, logvar = model(pixels, generator)
    reconstruction, target, mean, logvar = reconstruction.float(), pixels.float(), mean.float(), logvar.float()
    weights = torch.ones_like(target[:, :1])
    if masks is not None and person_weight > 0:
        weights = weights + person_weight * masks.to(weights.device, weights.dtype)[:, None]
    weights = weights / weights.flatten(1).mean(1).view(-1, 1, 1, 1)  # per image: mean weight 1
    l1 = ((reconstruction - target).abs() * weights).flatten(1).mean(1)
    mse = ((reconstruction - target).pow(2) * weights).flatten(1).mean(1)
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)  # KL(N(mean, var) ‖ N(0, I))
    loss = (l1 + mse + kl_weight * kl).mean()
    terms = {"loss": loss.item(), "l1": l1.mean().item(), "mse": mse.mean().item(), "kl": kl.mean().item()}
    return VAELossOutput(loss, terms, reconstruction.detach())


@torch.no_grad()
def latent_scaling_factor(vae: nn.Module, pixel_batches: Iterable[torch.Tensor], eps: float = 1e-6) -> float:
    """``1 / std`` of the posterior means over ``pixel_batches`` (each ``(B, 3, H, W)`` in [-1, 1])."""
    latents = [vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mode().float().flatten()
               for pixels in pixel_batches]
    if not latents:
        raise ValueError("`pixel_batches` is empty: need at least one batch of images to measure the latent scale.")
    return float(1.0 / (torch.cat(latents).std() + eps))
