"""Reference attention (ReferenceNet): the R-UNet writes, the D-UNets read, paired by module name.

Data flow, per docs/design.md §2: the R-UNet runs once on the clean reference latents at t = 0; each spatial
self-attention layer (``attn1``) stores its input — the output of ``norm1`` — in a :class:`ReferenceBank` under its
module name.
The same-named ``attn1`` of a D-UNet then attends with ``query = own tokens`` and ``key / value`` computed from
``[own tokens ; reference tokens]``; the reference tokens are broadcast to every frame.

The bank travels explicitly through ``cross_attention_kwargs={"reference_bank": bank}``; nothing keeps state between
calls. The pathway is a forward pre-hook on each spatial attention module (:class:`ReferenceAttentionHook`), not an
attention processor: the UNets keep stock processors, so diffusers' ``set_default_attn_processor()``,
``set_attn_processor(...)``, attention slicing and xformers all work and keep the reference (the hook feeds the
reference tokens in as ``encoder_hidden_states``, exactly Champ's ``attn1(x, encoder_hidden_states=[x ; ref])``).
Every spatial attention gets a hook (``attn2`` a plain one that drops the keyword), so diffusers never warns about an
unexpected keyword. Motion modules keep theirs untouched: diffusers does not pass them the kwargs.

Optionally (``locality``, the pipeline's ``reference_locality``; off for Champ weights) the read hooks add a Gaussian
prior on *where* a D-UNet token looks in the reference: an additive attention bias that favours reference tokens
near the same place in the frame, with the reference tokens' total prior mass unchanged
(:func:`reference_locality_bias`). Plain reference attention learns no correspondence at the bundled model's scale
(docs/design.md): every token reads the same average of the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

HOOK_MODES = ("write", "read", "plain")


@dataclass
class ReferenceBank:
    """Reference tokens of one R-UNet pass, keyed by spatial ``attn1`` module name.

    Attributes:
        tokens: ``{name: (B, N, C)}``, ``N`` the layer's ``h * w``; written by the R-UNet's write hooks.
        drop: optional ``(B,)`` bool; ``True`` marks a sample that gets no reference (the unconditional branch of
            classifier-free guidance, or training-time dropout). Such samples see plain self-attention.
        latent_size: ``(h, w)`` of the R-UNet's input latents, recorded by the R-UNet (the token grids of a
            locality prior are derived from it).
        locality_biases: the locality priors ``(N, M)`` the reading layers computed, by grid, width and dtype: a bank
            lives for a whole pipeline call (every step, every layer of a level reads it), so each is computed once.
            Shared with the banks derived from this one (:meth:`with_drop`, :meth:`select`), which keep its grids.
        attention_masks: the additive masks ``(B*F*heads, N or 1, N + M)`` the reading layers hand their attention
            processor, by grid, frames and heads, computed once per bank like the priors. Not shared with derived
            banks: the mask depends on ``drop``.
    """

    tokens: dict[str, torch.Tensor] = field(default_factory=dict)
    drop: torch.Tensor | None = None
    latent_size: tuple[int, int] | None = None
    locality_biases: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    attention_masks: dict[tuple, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    @property
    def batch_size(self) -> int:
        return next(iter(self.tokens.values())).shape[0]

    def with_drop(self, drop: torch.Tensor | None) -> "ReferenceBank":
        """The same tokens with a new per-sample ``(B,)`` bool drop mask (no copy)."""
        if drop is not None and (drop.ndim != 1 or drop.shape[0] != self.batch_size):
            raise ValueError(f"`drop` must have shape ({self.batch_size},), got {tuple(drop.shape)}.")
        return replace(self, drop=None if drop is None else drop.to(torch.bool), attention_masks={})

    def drop_mask(self) -> torch.Tensor:
        """``(B,)`` bool, all ``False`` when no mask was set."""
        if self.drop is not None:
            return self.drop
        return torch.zeros(self.batch_size, dtype=torch.bool, device=next(iter(self.tokens.values())).device)

    def select(self, index: torch.Tensor) -> "ReferenceBank":
        """The samples ``index`` ``(V,)`` of the batch, repeats allowed: e.g. each video's row of a batch of videos."""
        tokens = {name: values.index_select(0, index.to(values.device)) for name, values in self.tokens.items()}
        drop = None if self.drop is None else self.drop[index.to(self.drop.device)]
        return replace(self, tokens=tokens, drop=drop, attention_masks={})

    @classmethod
    def cat(cls, banks: Sequence["ReferenceBank"]) -> "ReferenceBank":
        """Concatenate banks along the batch axis, e.g. ``[conditional, unconditional]`` for batched CFG."""
        names = set(banks[0].tokens)
        if any(set(bank.tokens) != names for bank in banks):
            raise ValueError("Cannot concatenate reference banks written by different R-UNets (layer names differ).")
        if len({bank.latent_size for bank in banks}) > 1:
            raise ValueError("Cannot concatenate reference banks of references of different sizes.")
        tokens = {name: torch.cat([bank.tokens[name] for bank in banks]) for name in banks[0].tokens}
        drop = torch.cat([bank.drop_mask() for bank in banks])
        return cls(tokens=tokens, drop=drop, latent_size=banks[0].latent_size)


class ReferenceAttentionHook:
    """Forward pre-hook of one spatial ``Attention`` module of a UNet: the reference pathway, for any processor.

    Registered by :func:`install_reference_attention` (``register_forward_pre_hook(hook, with_kwargs=True)``). It takes
    ``reference_bank`` out of the call's keyword arguments (so the attention processor never sees it) and, by mode:

    - ``"write"`` (R-UNet ``attn1``): stores the layer's input ``(B, N, C)`` (the output of ``norm1``) in the bank.
    - ``"read"`` (D-UNet ``attn1``): passes ``encoder_hidden_states = [own ; reference]`` ``(B*F, N + M, C)``, the
      reference tokens broadcast to every frame, so the processor's ``to_k`` / ``to_v`` see both; samples the bank
      drops get an additive mask of ``-inf`` on the reference part: plain self-attention. With ``locality`` the mask
      carries :func:`reference_locality_bias` on the reference part. The mask comes with one row per attention
      batch entry and head, ``(B*F*heads, N or 1, N + M)``, so that processors use it as it is instead of repeating
      it per head; without dropped samples it is a view of one ``(N, N + M)`` mask (no copy).
    - ``"plain"`` (every other spatial attention): only removes the keyword.

    The attention itself stays with whatever processor the module holds (``AttnProcessor2_0``, the default
    ``AttnProcessor`` of ``set_default_attn_processor()``, sliced, xformers, ...), so those calls keep the pathway.
    """

    def __init__(self, name: str, mode: str = "plain", locality: float | None = None) -> None:
        if mode not in HOOK_MODES:
            raise ValueError(f"`mode` must be one of {HOOK_MODES}, got {mode!r}.")
        self.name, self.mode, self.locality = name, mode, _check_sigma(locality)

    def __call__(self, module: Attention, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        kwargs = dict(kwargs)
        reference_bank = kwargs.pop("reference_bank", None)
        if reference_bank is None or self.mode == "plain":
            return args, kwargs
        hidden_states = args[0] if args else kwargs["hidden_states"]
        if self.mode == "write":
            reference_bank.tokens[self.name] = hidden_states
            return args, kwargs
        if kwargs.get("encoder_hidden_states") is not None or kwargs.get("attention_mask") is not None:
            raise ValueError(
                f"Layer {self.name!r} reads reference tokens as its keys and values; it cannot also take "
                "`encoder_hidden_states` or an `attention_mask` (got one)."
            )
        kwargs["encoder_hidden_states"], kwargs["attention_mask"] = self._reference_context(
            hidden_states, reference_bank, module.heads
        )
        return args, kwargs

    def _reference_context(
        self, hidden_states: torch.Tensor, reference_bank: ReferenceBank, heads: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``[own ; reference]`` ``(B*F, N + M, C)`` and the additive mask ``(B*F*heads, N or 1, N + M)`` for its
        attention (``None`` without a prior or a dropped reference)."""
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
        reference = reference.to(hidden_states.dtype).repeat_interleave(num_frames, dim=0)
        context = torch.cat([hidden_states, reference], dim=1)
        if reference_bank.drop is None and self.locality is None:
            return context, None
        key = (reference_bank.latent_size, reference_bank.batch_size, hidden_states.shape[1], reference.shape[1],
               self.locality, hidden_states.device, hidden_states.dtype, num_frames * heads)
        mask = reference_bank.attention_masks.get(key)
        if mask is None:
            mask = self._attention_mask(reference_bank, hidden_states, reference.shape[1], num_frames * heads)
            reference_bank.attention_masks[key] = mask
        return context, mask

    def _attention_mask(
        self, reference_bank: ReferenceBank, hidden_states: torch.Tensor, num_reference: int, rows_per_sample: int
    ) -> torch.Tensor:
        """The mask of :meth:`_reference_context`: ``rows_per_sample`` (frames x heads) rows per bank sample."""
        num_tokens = hidden_states.shape[1]
        if self.locality is None:
            reference_bias = hidden_states.new_zeros(1, num_reference)
        else:
            reference_bias = self._locality_bias(reference_bank, num_tokens, num_reference, hidden_states)
        mask = torch.cat([hidden_states.new_zeros(reference_bias.shape[0], num_tokens), reference_bias], dim=-1)
        if reference_bank.drop is None:
            # Measured at the bundled model's 16 x 16 level: repeating and copying the mask per frame and head took
            # longer than the attention itself; a stride-0 view costs nothing and gives the same result.
            return mask.expand(reference_bank.batch_size * rows_per_sample, -1, -1)
        is_reference = torch.arange(mask.shape[-1], device=mask.device) >= num_tokens
        dropped = reference_bank.drop.to(mask.device).view(-1, 1, 1) & is_reference
        return torch.where(dropped, float("-inf"), mask).repeat_interleave(rows_per_sample, dim=0)

    def _locality_bias(
        self, reference_bank: ReferenceBank, num_tokens: int, num_reference: int, hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """:func:`reference_locality_bias` ``(N, M)`` in ``hidden_states``' dtype, from the bank's cache."""
        key = (reference_bank.latent_size, num_tokens, num_reference, self.locality, hidden_states.device,
               hidden_states.dtype)
        bias = reference_bank.locality_biases.get(key)
        if bias is None:
            bias = reference_locality_bias(
                token_grid(reference_bank.latent_size, num_tokens, self.name),
                token_grid(reference_bank.latent_size, num_reference, self.name),
                self.locality, hidden_states.device,
            ).to(hidden_states.dtype)
            reference_bank.locality_biases[key] = bias
        return bias


# Optional, not `| None`, inside the mapping: diffusers' load-time type check of pipeline configs unpacks only
# typing.Union there (ReferenceLCMPipeline annotates `reference_locality` with this).
Locality = float | dict[str, Optional[float]] | None


def check_locality(locality: Locality) -> Locality:
    """``locality`` validated: ``None``, a positive finite number (every reading layer), or a mapping from module-name
    prefixes (``"down_blocks.1"``, ``"mid_block"``) to a positive number or ``None`` (per layer: the longest matching
    prefix wins, a layer that no prefix matches gets no prior; :func:`layer_locality`). A ``ValueError`` otherwise."""
    if isinstance(locality, dict):
        return {_check_prefix(prefix): _check_sigma(value) for prefix, value in locality.items()}
    return _check_sigma(locality)


def _check_sigma(locality) -> float | None:
    if locality is None:
        return None
    if isinstance(locality, bool) or not isinstance(locality, (int, float)) or not 0 < locality < math.inf:
        raise ValueError(f"`reference_locality` must be None, a positive number (a fraction of the frame height) or "
                         f"a mapping from layer-name prefixes to those, got {locality!r}.")
    return float(locality)


def _check_prefix(prefix) -> str:
    if not isinstance(prefix, str) or not prefix or prefix.startswith(".") or prefix.endswith("."):
        raise ValueError(f"`reference_locality` keys must be module-name prefixes such as 'down_blocks.1', "
                         f"got {prefix!r}.")
    return prefix


def layer_locality(locality: Locality, name: str) -> float | None:
    """The prior's σ for the reading layer ``name`` under a :func:`check_locality` setting: the number itself, or for a
    mapping the value of the longest key that is ``name`` or a dotted prefix of it (``None`` if no key is)."""
    if not isinstance(locality, dict):
        return locality
    matches = [prefix for prefix in locality if _prefix_matches(prefix, name)]
    return locality[max(matches, key=len)] if matches else None


def _prefix_matches(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def token_grid(latent_size: tuple[int, int] | None, num_tokens: int, name: str) -> tuple[int, int]:
    """The ``(h, w)`` token grid of ``num_tokens`` tokens of a UNet level whose input latents were ``latent_size``:
    the UNet halves both sides per level, so ``h = H / f`` and ``w = W / f`` for one integer factor ``f``."""
    if latent_size is None:
        raise ValueError(f"Layer {name!r} has a reference locality prior but the reference bank has no `latent_size`; "
                         "it is recorded by an R-UNet hooked by `install_reference_attention(unet, 'write')`.")
    height, width = latent_size
    factor = round(math.sqrt(height * width / num_tokens))
    if factor < 1 or height % factor or width % factor or (height // factor) * (width // factor) != num_tokens:
        raise ValueError(
            f"Layer {name!r}: {num_tokens} tokens are no downsampled grid of the {height}x{width} reference latents; "
            "a reference locality prior needs the reference at the output's size."
        )
    return height // factor, width // factor


def reference_locality_bias(
    query_grid: tuple[int, int], reference_grid: tuple[int, int], sigma: float, device: torch.device
) -> torch.Tensor:
    """Additive attention bias ``(N, M)`` (float32) of ``N = h * w`` query tokens over ``M`` reference tokens: the log
    of a Gaussian kernel of standard deviation ``sigma`` (a fraction of the frame height) on the distance between
    token centres, normalised per query so that ``sum_j exp(bias_ij) = M``. Uniform logits then keep the reference's
    total attention mass (as without the bias) and only move it to the same place in the frame; ``sigma → ∞`` is
    plain attention. The read hooks keep it on the :class:`ReferenceBank`, so a call computes it once per level."""
    def centres(grid: tuple[int, int]) -> torch.Tensor:
        rows, columns = grid
        y = (torch.arange(rows, device=device, dtype=torch.float32) + 0.5) / rows
        x = (torch.arange(columns, device=device, dtype=torch.float32) + 0.5) / rows  # in frame heights, as y
        return torch.stack(torch.meshgrid(y, x, indexing="ij"), dim=-1).reshape(-1, 2)

    squared = torch.cdist(centres(query_grid), centres(reference_grid)).square()
    log_kernel = -squared / (2 * sigma**2)
    return log_kernel.log_softmax(dim=-1) + math.log(log_kernel.shape[-1])


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


def record_latent_size(unet: nn.Module, args: tuple, kwargs: dict) -> None:
    """Forward pre-hook of an R-UNet: the bank it writes learns the ``(h, w)`` of its input latents."""
    bank = (kwargs.get("cross_attention_kwargs") or {}).get("reference_bank")
    if bank is not None:
        sample = args[0] if args else kwargs["sample"]
        bank.latent_size = tuple(sample.shape[-2:])


def _remove_hooks(module: nn.Module, is_ours) -> None:
    for key, hook in list(module._forward_pre_hooks.items()):
        if is_ours(hook):
            del module._forward_pre_hooks[key]
            module._forward_pre_hooks_with_kwargs.pop(key, None)


def install_reference_attention(unet: nn.Module, mode: str, locality: Locality = None) -> list[str]:
    """Hook the reference pathway into ``unet``: ``mode="write"`` for an R-UNet, ``"read"`` for a D-UNet.

    Spatial ``attn1`` layers get a :class:`ReferenceAttentionHook` of ``mode``, other spatial attentions a ``"plain"``
    one; motion modules are left alone (diffusers does not pass them ``cross_attention_kwargs``). Attention
    processors are not touched: ``set_attn_processor`` / ``set_default_attn_processor()`` / attention slicing /
    xformers change how attention is computed, not what it attends to. Works for ``UNet2DConditionModel`` and
    ``UNetMotionModel``; idempotent (earlier hooks of this kind are replaced). An R-UNet also records its input's
    size in the bank (:func:`record_latent_size`).

    Args:
        locality: ``"read"`` only: the standard deviation, as a fraction of the frame height, of the Gaussian prior
            on where each token looks in the reference (:func:`reference_locality_bias`); ``None``: none (Champ);
            or per layer, a mapping from module-name prefixes to those (:func:`layer_locality`; each key must match
            a reading layer). It costs an attention mask of ``(B*F*heads, N, 2N)`` per level and call (a view of
            one ``(N, 2N)`` mask when no sample's reference is dropped).

    Returns:
        The module names of the spatial ``attn1`` layers that write or read.
    """
    if mode not in ("write", "read"):
        raise ValueError(f"`mode` must be 'write' or 'read', got {mode!r}.")
    if mode == "write" and locality is not None:
        raise ValueError("`locality` is a setting of the reading (D-UNet) side; an R-UNet only writes.")
    locality = check_locality(locality)
    reference_layers = set(spatial_self_attention_names(unet))
    prefixes = locality if isinstance(locality, dict) else {}
    unmatched = [key for key in prefixes if not any(_prefix_matches(key, name) for name in reference_layers)]
    if unmatched:
        raise ValueError(f"`reference_locality` keys {unmatched} match no spatial self-attention layer of the D-UNet "
                         f"(its layers: {sorted(reference_layers)}).")
    _remove_hooks(unet, lambda hook: hook is record_latent_size)
    if mode == "write":
        unet.register_forward_pre_hook(record_latent_size, with_kwargs=True)
    for processor_name in unet.attn_processors:
        if _is_motion_attention(processor_name):
            continue
        module_name = processor_name.removesuffix(".processor")
        module = unet.get_submodule(module_name)
        _remove_hooks(module, lambda hook: isinstance(hook, ReferenceAttentionHook))
        reads = mode == "read" and module_name in reference_layers
        hook = ReferenceAttentionHook(module_name, mode if module_name in reference_layers else "plain",
                                      layer_locality(locality, module_name) if reads else None)
        module.register_forward_pre_hook(hook, with_kwargs=True)
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
