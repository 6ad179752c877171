"""Where a model loses the reference: how much of the D-UNet's self-attention goes to the reference tokens.

Each reading ``attn1`` of the D-UNet attends over ``[own tokens ; reference tokens]`` (``N + M`` keys, see
:mod:`referencelcm.models.reference_attention`). The share of its softmax mass on the last ``M`` keys says whether the
D-UNet reads the reference at all: a model that paints people in average colours while this share is near zero never
learnt to look; a large share with wrong colours points at what the reference features carry (VAE, R-UNet) instead.

    with ReferenceAttentionRecorder(pipe.denoising_unet) as recorder:
        pipe(reference, guidance, num_inference_steps=20, guidance_scale=3.5)
    for layer, (share, uniform) in recorder.shares().items():
        print(layer, share, uniform)

The recorder recomputes each layer's attention probabilities from its ``to_q`` / ``to_k`` (one extra ``(N, N + M)``
matrix per head and frame): meant for a few diagnostic calls, not for timing.
"""

from __future__ import annotations

from collections import defaultdict

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from .models.injection import unwrap_unet
from .models.reference_attention import spatial_self_attention_names


class ReferenceAttentionRecorder:
    """Context manager that records, for every spatial self-attention layer of ``denoising_unet`` that reads reference
    tokens, the mean share of attention probability on them (over heads, query tokens, frames and calls).

    Samples whose reference is dropped (the unconditional half of classifier-free guidance, training's reference
    dropout) attend to no reference token and are left out, so the share describes the conditional passes.
    """

    def __init__(self, denoising_unet: nn.Module) -> None:
        unet = unwrap_unet(denoising_unet)
        modules = dict(unet.named_modules())
        self._layers = {name: modules[name] for name in spatial_self_attention_names(unet)}
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)
        self._uniform: dict[str, float] = {}
        self._handles: list = []

    def __enter__(self) -> "ReferenceAttentionRecorder":
        for name, module in self._layers.items():
            self._handles.append(module.register_forward_hook(self._hook(name), with_kwargs=True))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        @torch.no_grad()
        def record(module: Attention, args: tuple, kwargs: dict, output: torch.Tensor) -> None:
            context = kwargs.get("encoder_hidden_states")
            if context is None:  # not reading a reference in this call
                return
            hidden_states = args[0] if args else kwargs["hidden_states"]
            own = hidden_states.shape[1]
            mask = kwargs.get("attention_mask")
            if mask is not None:
                visible = torch.isfinite(mask[:, 0, own:]).all(dim=-1)
                hidden_states, context = hidden_states[visible], context[visible]
            if hidden_states.shape[0] == 0:
                return
            query, key = module.to_q(hidden_states), module.to_k(context)
            heads = module.heads
            query = query.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B·F, heads, N, d)
            key = key.unflatten(-1, (heads, -1)).transpose(1, 2)  # (B·F, heads, N + M, d)
            probabilities = (query @ key.transpose(-1, -2) * module.scale).softmax(dim=-1)
            share = probabilities[..., own:].sum(dim=-1)  # (B·F, heads, N)
            self._sums[name] += share.sum().item()
            self._counts[name] += share.numel()
            self._uniform[name] = (context.shape[1] - own) / context.shape[1]

        return record

    def shares(self) -> dict[str, tuple[float, float]]:
        """``{layer: (share, uniform)}`` for the layers that read a reference while recording: the mean attention
        share on reference tokens, and ``M / (N + M)``, the share of attention that ignored content would give."""
        return {name: (self._sums[name] / self._counts[name], self._uniform[name])
                for name in self._layers if self._counts[name]}
