"""Training a small ``AutoencoderKL`` on a dataset's frames, for teachers trained from scratch (no pretrained VAE).

Loss per image ``x`` ``(3, H, W)`` in [-1, 1]: ``L1(x̂, x) + MSE(x̂, x) + kl_weight · KL(q(z|x) ‖ N(0, I))``, with
``x̂ = decode(z)``, ``z ~ q(z|x)`` and the KL summed over latent elements (the Stable Diffusion VAE recipe without the
perceptual and adversarial terms, which need downloaded networks). After training, :func:`latent_scaling_factor`
sets ``scaling_factor`` so the scaled latents have unit variance, as the diffusion models expect.
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


def vae_loss(
    vae: nn.Module,
    pixels: torch.Tensor,
    kl_weight: float = 1e-6,
    generator: torch.Generator | None = None,
    reconstruction_model: nn.Module | None = None,
) -> VAELossOutput:
    """Reconstruction + KL loss of ``pixels`` ``(B, 3, H, W)`` in [-1, 1] through an ``AutoencoderKL``.

    ``reconstruction_model`` is the :class:`VAEReconstruction` of ``vae`` to call (e.g. as wrapped by
    ``accelerator.prepare``); default: a new one.
    """
    if pixels.ndim != 4:
        raise ValueError(f"`pixels` must be (B, 3, H, W), got shape {tuple(pixels.shape)}.")
    if kl_weight < 0:
        raise ValueError(f"`kl_weight` must be >= 0, got {kl_weight}.")
    model = reconstruction_model if reconstruction_model is not None else VAEReconstruction(vae)
    reconstruction, mean, logvar = model(pixels, generator)
    reconstruction, target, mean, logvar = reconstruction.float(), pixels.float(), mean.float(), logvar.float()
    l1 = (reconstruction - target).abs().flatten(1).mean(1)
    mse = (reconstruction - target).pow(2).flatten(1).mean(1)
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
