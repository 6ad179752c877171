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

Which path carries the appearance: the reference reaches the D-UNet twice, as the CLIP image embedding (cross-attention)
and as the R-UNet's tokens (self-attention). :func:`reference_path_from` makes one of them come from another image (or
from none) for the calls inside its block, so that a metric run twice says which path the model reads:

    with reference_path_from(pipe, "reference_tokens", other_identity):
        video = pipe(reference, guidance, num_inference_steps=20, guidance_scale=3.5)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from .models.injection import unwrap_unet
from .models.reference_attention import spatial_self_attention_names
from .pipelines.inputs import reference_to_tensor, resize

REFERENCE_PATHS = ("image_embeds", "reference_tokens")


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
            if mask is not None:  # one row per batch entry and head (ReferenceAttentionHook); heads agree
                visible = torch.isfinite(mask[::module.heads, 0, own:]).all(dim=-1)
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


@contextmanager
def reference_path_from(pipe: Any, path: str, image: Any | None) -> Iterator[None]:
    """Inside the block, one path of the reference into ``pipe``'s D-UNet comes from ``image`` instead of each call's
    own reference; everything else (the other path, guidance, noise) is unchanged.

    Args:
        pipe: a :class:`~referencelcm.ReferenceLCMPipeline`.
        path: ``"image_embeds"``: the CLIP image embedding the D-UNet cross-attends to (the R-UNet still reads the
            call's own, so its tokens are unchanged); ``"reference_tokens"``: the R-UNet's tokens, computed from
            ``image`` as a call with ``image`` as reference would (its own embedding included).
        image: one reference in any form the pipeline takes (PIL, numpy ``(H, W, 3)`` uint8, torch ``(3, H, W)`` in
            ``[0, 1]``), used for every video of the call; ``None`` removes the path: a zero embedding, or no
            reference tokens (as the unconditional branch of classifier-free guidance has).

    Both paths from the same ``image`` give exactly the call with ``image`` as its reference (the blocks nest).
    ``pipe.encode_reference`` is restored on leaving, also after an error.
    """
    if path not in REFERENCE_PATHS:
        raise ValueError(f"`path` must be one of {REFERENCE_PATHS}, got {path!r}.")
    encode = pipe.encode_reference

    def encode_reference(reference, device, do_classifier_free_guidance, video_index=None):
        image_embeds, bank = encode(reference, device, do_classifier_free_guidance, video_index)
        videos = bank.batch_size // (2 if do_classifier_free_guidance else 1)
        if image is None:
            if path == "image_embeds":
                return torch.zeros_like(image_embeds), bank
            return image_embeds, bank.with_drop(torch.ones(bank.batch_size, dtype=torch.bool))
        other = resize(reference_to_tensor(image, "image")[None], *reference.shape[-2:]).to(reference)
        other_embeds, other_bank = encode(other, device, do_classifier_free_guidance,
                                          torch.zeros(videos, dtype=torch.long))
        return (other_embeds, bank) if path == "image_embeds" else (image_embeds, other_bank)

    pipe.encode_reference = encode_reference
    try:
        yield
    finally:
        if pipe.encode_reference is encode_reference:
            del pipe.encode_reference  # the instance attribute hid the class's method
        else:
            pipe.encode_reference = encode
