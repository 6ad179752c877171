"""Reference attention (ReferenceNet): the R-UNet writes, the D-UNets read, paired by module name.

Data flow, per docs/design.md §2: the R-UNet runs once on the clean reference latents at t = 0; each spatial
self-attention layer (``attn1``) stores its input — the output of ``norm1`` — in a :class:`ReferenceBank` under its
module name.
The same-named ``attn1`` of a D-UNet then attends with ``query = own tokens`` and ``key / value`` computed from
``[own tokens ; reference tokens]``; the reference tokens are broadcast to every frame.

The bank travels explicitly through ``cross_attention_kwargs={"reference_bank": bank}``; processors keep no state.
Every spatial attention of a UNet gets a processor from this module (``attn2`` a plain one), so diffusers never warns
about an unexpected keyword. Motion modules keep their stock processors: diffusers does not pass them the kwargs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention, XFormersAttnProcessor, AttnProcessor2_0
from diffusers.utils.import_utils import is_xformers_available
from torch import nn

ATTENTION_BACKENDS = ("sdpa", "xformers")
PROCESSOR_MODES = ("write", "read", "plain")


@dataclass
class ReferenceBank:
    """Reference tokens of one R-UNet pass, keyed by spatial ``attn1`` module name.

    Attributes:
        tokens: ``{name: (B, N, C)}``, ``N`` the layer's ``h * w``; written by the R-UNet's write processors.
        drop: optional ``(B,)`` bool; ``True`` marks a sample that gets no reference (the unconditional branch of
            classifier-free guidance, or training-time dropout). Such samples see plain self-attention.
    """

    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    drop: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return next(iter(self.tokens.values())).shape[0]

    def with_drop(self, drop: torch.Tensor | None) -> "ReferenceBank":
        """The same tokens with a new per-sample ``(B,)`` bool drop mask (no copy)."""
        if drop is not None and (drop.ndim != 1 or drop.shape[0] != self.batch_size):
            raise ValueError(f"`drop` must have shape ({self.batch_size},), got {tuple(drop.shape)}.")
        return replace(self, drop=None if drop is None else drop.to(torch.bool))

    def drop_mask(self) -> torch.Tensor:
        """``(B,)`` bool, all ``False`` when no mask was set."""
        if self.drop is not None:
            return self.drop
        return torch.zeros(self.batch_size, dtype=torch.bool, device=next(iter(self.tokens.values())).device)

    @classmethod
    def cat(cls, banks: Sequence["ReferenceBank"]) -> "ReferenceBank":
        """Concatenate banks along the batch axis, e.g. ``[conditional, unconditional]`` for batched CFG."""
        names = set(banks[0].tokens)
        if any(set(bank.tokens) != names for bank in banks):
            raise ValueError("Cannot concatenate reference banks written by different R-UNets (layer names differ).")
        tokens = {name: torch.cat([bank.tokens[name] for bank in banks]) for name in banks[0].tokens}
        drop = torch.cat([bank.drop_mask() for bank in banks])
        return cls(tokens=tokens, drop=drop)


def _attention(
    attn: Attention,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    backend: str,
) -> torch.Tensor:
    """Multi-head attention of projected ``(B, N, heads * d)`` query and ``(B, M, heads * d)`` key/value."""
    batch_size = query.shape[0]
    head_dim = key.shape[-1] // attn.heads
    query, key, value = (x.view(batch_size, -1, attn.heads, head_dim) for x in (query, key, value))
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    if backend == "xformers":
        import xformers.ops

        if attention_mask is not None:
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        hidden_states = xformers.ops.memory_efficient_attention(
            query, key, value, attn_bias=attention_mask, scale=attn.scale
        )
    else:
        if attention_mask is not None:
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        hidden_states = F.scaled_dot_product_attention(
            query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2), attn_mask=attention_mask, scale=attn.scale
        ).transpose(1, 2)
    return hidden_states.reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)


class ReferenceAttnProcessor:
    """Attention processor for the spatial attention layers of R-UNets and D-UNets.

    Args:
        name: the module name of the ``Attention`` this processor serves (its key in a :class:`ReferenceBank`).
        mode: ``"write"`` (R-UNet ``attn1``: store input tokens, then plain self-attention), ``"read"`` (D-UNet
            ``attn1``: attend to ``[own ; reference]``) or ``"plain"`` (any other attention: stock behaviour).
        backend: ``"sdpa"`` (PyTorch ``scaled_dot_product_attention``) or ``"xformers"``.

    Called by diffusers as ``processor(attn, hidden_states (B*F, N, C), encoder_hidden_states, attention_mask,
    temb, reference_bank=...)``.
    """

    def __init__(self, name: str, mode: str = "plain", backend: str = "sdpa") -> None:
        if mode not in PROCESSOR_MODES:
            raise ValueError(f"`mode` must be one of {PROCESSOR_MODES}, got {mode!r}.")
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"`backend` must be one of {ATTENTION_BACKENDS}, got {backend!r}.")
        self.name, self.mode, self.backend = name, mode, backend

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        reference_bank: ReferenceBank | None = None,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channels, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channels, height * width).transpose(1, 2)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        if self.mode == "write" and reference_bank is not None:
            reference_bank.tokens[self.name] = hidden_states
        if self.mode == "read" and reference_bank is not None:
            hidden_states = self._attend_with_reference(attn, hidden_states, reference_bank)
        else:
            hidden_states = self._attend(attn, hidden_states, encoder_hidden_states, attention_mask)

        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channels, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def _attend(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None,
        attention_mask: torch.Tensor | None,
    ) -> torch.Tensor:
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], hidden_states.shape[0])
        return _attention(
            attn, attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context), attention_mask, self.backend
        )

    def _attend_with_reference(
        self, attn: Attention, hidden_states: torch.Tensor, reference_bank: ReferenceBank
    ) -> torch.Tensor:
        if self.name not in reference_bank.tokens:
            raise ValueError(
                f"The reference bank has no tokens for D-UNet layer {self.name!r}; the R-UNet and the D-UNet must "
                f"share spatial attention layer names (bank holds {len(reference_bank.tokens)} layers)."
            )
        reference = reference_bank.tokens[self.name]
        if hidden_states.shape[0] % reference.shape[0] != 0:
            raise ValueError(
                f"Layer {self.name!r}: batch of {hidden_states.shape[0]} (batch x frames) is not a multiple of the "
                f"reference batch {reference.shape[0]}."
            )
        num_frames = hidden_states.shape[0] // reference.shape[0]
        keep = ~reference_bank.drop_mask().to(hidden_states.device).repeat_interleave(num_frames)
        if not bool(keep.any()):
            return self._attend(attn, hidden_states, None, None)

        # to_k / to_v are per-token maps, so the reference part is projected once per reference, not per frame.
        reference = reference.to(hidden_states.dtype)
        reference_key = attn.to_k(reference).repeat_interleave(num_frames, dim=0)
        reference_value = attn.to_v(reference).repeat_interleave(num_frames, dim=0)
        if bool(keep.all()):
            return self._attend_keys(attn, hidden_states, reference_key, reference_value)
        output = hidden_states.new_empty(hidden_states.shape[:2] + (attn.inner_dim,))
        output[keep] = self._attend_keys(attn, hidden_states[keep], reference_key[keep], reference_value[keep])
        output[~keep] = self._attend(attn, hidden_states[~keep], None, None)
        return output

    def _attend_keys(
        self, attn: Attention, hidden_states: torch.Tensor, reference_key: torch.Tensor, reference_value: torch.Tensor
    ) -> torch.Tensor:
        key = torch.cat([attn.to_k(hidden_states), reference_key], dim=1)
        value = torch.cat([attn.to_v(hidden_states), reference_value], dim=1)
        return _attention(attn, attn.to_q(hidden_states), key, value, None, self.backend)


def _is_motion_attention(processor_name: str) -> bool:
    return ".motion_modules." in f".{processor_name}"


def spatial_self_attention_names(unet: nn.Module) -> list[str]:
    """Module names of ``unet``'s spatial self-attention layers (``...transformer_blocks.N.attn1``), in order."""
    names = []
    for processor_name in unet.attn_processors:
        module_name = processor_name.removesuffix(".processor")
        if module_name.endswith(".attn1") and not _is_motion_attention(processor_name):
            names.append(module_name)
    return names


def install_reference_attention(unet: nn.Module, mode: str, backend: str = "sdpa") -> list[str]:
    """Install reference processors on ``unet``: ``mode="write"`` for an R-UNet, ``"read"`` for a D-UNet.

    Spatial ``attn1`` layers get ``mode``; other spatial attentions get ``"plain"``; motion modules get the stock
    processor of ``backend``. Works for ``UNet2DConditionModel`` and ``UNetMotionModel``; idempotent.

    Returns:
        The module names of the spatial ``attn1`` layers that write or read.
    """
    if mode not in ("write", "read"):
        raise ValueError(f"`mode` must be 'write' or 'read', got {mode!r}.")
    if backend not in ATTENTION_BACKENDS:
        raise ValueError(f"`backend` must be one of {ATTENTION_BACKENDS}, got {backend!r}.")
    if backend == "xformers" and not is_xformers_available():
        raise ValueError("`backend='xformers'` needs the xformers package: pip install 'referencelcm[xformers]'.")
    reference_layers = set(spatial_self_attention_names(unet))
    processors = {}
    for processor_name in unet.attn_processors:
        module_name = processor_name.removesuffix(".processor")
        if _is_motion_attention(processor_name):
            processors[processor_name] = XFormersAttnProcessor() if backend == "xformers" else AttnProcessor2_0()
        else:
            layer_mode = mode if module_name in reference_layers else "plain"
            processors[processor_name] = ReferenceAttnProcessor(module_name, layer_mode, backend)
    unet.set_attn_processor(processors)
    return sorted(reference_layers)


@torch.no_grad()
def check_reference_pairing(reference_unet: nn.Module, denoising_unet: nn.Module) -> None:
    """Raise a ``ValueError`` unless every spatial ``attn1`` of the D-UNet has a same-named, same-width R-UNet layer."""
    writers = {name: unet_module_width(reference_unet, name) for name in spatial_self_attention_names(reference_unet)}
    readers = {name: unet_module_width(denoising_unet, name) for name in spatial_self_attention_names(denoising_unet)}
    missing = sorted(set(readers) - set(writers))
    if missing:
        raise ValueError(f"`reference_unet` has no spatial attention layers named {missing[:4]} (of {len(missing)}).")
    mismatched = sorted(name for name in readers if readers[name] != writers[name])
    if mismatched:
        raise ValueError(
            f"`reference_unet` and `denoising_unet` widths differ at {mismatched[0]!r}: "
            f"{writers[mismatched[0]]} vs {readers[mismatched[0]]}."
        )


def unet_module_width(unet: nn.Module, module_name: str) -> int:
    """The input width (``query_dim``) of the attention module ``module_name``."""
    return unet.get_submodule(module_name).to_q.in_features
