"""Output of :class:`ReferenceLCMPipeline`."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
from diffusers.utils import BaseOutput


@dataclass
class ReferenceLCMPipelineOutput(BaseOutput):
    """Generated videos, one per batch entry (diffusers' video convention, as ``AnimateDiffPipeline``).

    Attributes:
        frames: ``output_type="pil"``: a list (batch) of lists of ``F`` PIL images; ``"np"``: array
            ``(B, F, H, W, 3)`` in ``[0, 1]``; ``"pt"``: tensor ``(B, F, 3, H, W)`` in ``[0, 1]``; ``"latent"``: the
            denoised latents ``(B, C, F, h, w)``.
    """

    frames: torch.Tensor | np.ndarray | list[list[PIL.Image.Image]]
