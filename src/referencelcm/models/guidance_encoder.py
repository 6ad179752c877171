"""Pose-guidance encoders (Champ's layout): one small conv + attention stack per guidance type.

Each encoder maps RGB guidance maps in ``[0, 1]`` to features at latent resolution (``/ 2 ** (len(block_out_channels)
- 1)``) with the D-UNet's first block width. The features of all types are summed and added to the D-UNet's
``conv_in`` output (see :mod:`referencelcm.models.injection`).

A model trained with per-sample guidance-type dropout (``train_teacher.py --guidance_type_dropout P``, recorded as
``guidance_type_dropout`` in the encoder's config) takes any non-empty subset of its types: a missing type adds no
features, exactly as a dropped type did in training. A model trained without it needs every type.
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models import Transformer2DModel
from diffusers.models.modeling_utils import ModelMixin
from einops import rearrange
from torch import nn


def _attention_norm_groups(channels: int, preferred: int = 32) -> int:
    # Champ uses 32 groups; tiny test widths (e.g. 8) cannot, so fall back to the largest divisor of `channels`.
    return math.gcd(channels, preferred)


class GuidanceEncoder(nn.Module):
    """One guidance type's encoder, with Champ's module names (``conv_in``, ``blocks.*``, ``conv_out``).

    Champ builds an attention block after every conv but only runs the last one; here only that one exists, as
    ``attention`` (Champ's ``attentions.<last>``). The converter maps Champ's keys onto these names.

    Args:
        guidance_input_channels: channels of the guidance maps (3 for RGB renders).
        block_out_channels: widths of the conv stack; ``len - 1`` stride-2 convs downsample the input.
        guidance_embedding_channels: output width, the D-UNet's ``block_out_channels[0]``.
        attention_num_heads: heads of the spatial self-attention on the last features.
        add_attention: ``False`` leaves that attention out (``attention`` is ``None``): convolutions only.
    """

    def __init__(
        self,
        guidance_input_channels: int,
        block_out_channels: Sequence[int],
        guidance_embedding_channels: int,
        attention_num_heads: int,
        add_attention: bool = True,
    ) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(guidance_input_channels, block_out_channels[0], kernel_size=3, padding=1)
        self.blocks = nn.ModuleList()
        for channels_in, channels_out in zip(block_out_channels[:-1], block_out_channels[1:]):
            self.blocks.append(nn.Conv2d(channels_in, channels_in, kernel_size=3, padding=1))
            self.blocks.append(nn.Conv2d(channels_in, channels_out, kernel_size=3, padding=1, stride=2))
        last_channels = block_out_channels[-1]
        self.attention = Transformer2DModel(
            num_attention_heads=attention_num_heads,
            attention_head_dim=last_channels // attention_num_heads,
            in_channels=last_channels,
            norm_num_groups=_attention_norm_groups(last_channels),
        ) if add_attention else None
        self.conv_out = nn.Conv2d(last_channels, guidance_embedding_channels, kernel_size=3, padding=1)
        # Zero-initialised so that an untrained encoder leaves the D-UNet exactly as it was.
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, guidance: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, H, W)`` in ``[0, 1]`` → ``(N, guidance_embedding_channels, H / s, W / s)``."""
        hidden_states = F.silu(self.conv_in(guidance))
        for block in self.blocks:
            hidden_states = F.silu(block(hidden_states))
        if self.attention is not None:
            hidden_states = self.attention(hidden_states, return_dict=False)[0]
        return self.conv_out(hidden_states)


class MultiGuidanceEncoder(ModelMixin, ConfigMixin):
    r"""One :class:`GuidanceEncoder` per guidance type; their outputs are summed (the paper's Eq. 1 fusion).

    Args:
        guidance_types: names of the guidance maps, e.g. ``("depth", "normal", "semantic_map", "dwpose")``.
        guidance_input_channels: channels of every guidance map.
        block_out_channels: conv widths; the encoder downsamples by ``2 ** (len(block_out_channels) - 1)``, which
            must equal the VAE's downsampling factor.
        guidance_embedding_channels: output width; must equal ``denoising_unet.config.block_out_channels[0]``.
        attention_num_heads: heads of each encoder's attention block.
        add_attention: ``False`` builds the encoders without their attention block (Champ has it). At small sizes it
            is most of their cost: at 128 px, 16 frames, widths (8, 16, 32), 0.039 of an encoder's 0.054 s, on
            32 x 32 tokens; the four encoders together cost more than a 32 x 32 D-UNet step.
        guidance_type_dropout: the probability with which training dropped each guidance type per sample (its
            features zeroed); 0 for a model trained on every type at once. Above 0 the model accepts any non-empty
            subset of ``guidance_types``.
    """

    @register_to_config
    def __init__(
        self,
        guidance_types: Sequence[str] = ("depth", "normal", "semantic_map", "dwpose"),
        guidance_input_channels: int = 3,
        block_out_channels: Sequence[int] = (16, 32, 96, 256),
        guidance_embedding_channels: int = 320,
        attention_num_heads: int = 8,
        guidance_type_dropout: float = 0.0,
        add_attention: bool = True,
    ) -> None:
        super().__init__()
        if len(guidance_types) == 0:
            raise ValueError("`guidance_types` must name at least one guidance type, got an empty sequence.")
        if len(set(guidance_types)) != len(guidance_types):
            raise ValueError(f"`guidance_types` must be unique, got {list(guidance_types)}.")
        check_guidance_type_dropout("`guidance_type_dropout`", guidance_type_dropout)
        if block_out_channels[-1] % attention_num_heads != 0:
            raise ValueError(
                f"`block_out_channels[-1]` ({block_out_channels[-1]}) must be divisible by `attention_num_heads` "
                f"({attention_num_heads})."
            )
        self.encoders = nn.ModuleDict(
            {
                guidance_type: GuidanceEncoder(
                    guidance_input_channels, block_out_channels, guidance_embedding_channels, attention_num_heads,
                    add_attention,
                )
                for guidance_type in guidance_types
            }
        )

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.block_out_channels) - 1)

    @property
    def accepts_subsets(self) -> bool:
        """Whether any non-empty subset of the guidance types will do (trained with guidance-type dropout)."""
        return self.config.guidance_type_dropout > 0

    def check_guidance_types(self, given: Iterable[str], name: str = "guidance") -> None:
        """Raise a ``ValueError`` naming ``name`` unless the types ``given`` are ones this model reads: all of
        :attr:`config.guidance_types`, or, for a model trained with guidance-type dropout, any non-empty subset."""
        expected, given = list(self.config.guidance_types), set(given)
        missing, unknown = [type_ for type_ in expected if type_ not in given], sorted(given - set(expected))
        if self.accepts_subsets and given and not unknown:
            return
        if self.accepts_subsets:
            raise ValueError(f"`{name}` must hold a non-empty subset of the guidance types {expected} this model was "
                             f"trained with; got {sorted(given)}, unknown {unknown}.")
        if missing or unknown:
            hint = (" To animate from a subset of them, use a model trained with `examples/train_teacher.py "
                    "--guidance_type_dropout P` (and distilled from such a teacher), which takes any non-empty "
                    "subset." if missing else "")
            raise ValueError(f"`{name}` must hold exactly the guidance types {expected} this model was trained "
                             f"with; missing {missing}, unknown {unknown}.{hint}")

    def sample_drop_mask(
        self, batch_size: int, generator: torch.Generator | None = None, device: torch.device | None = None
    ) -> torch.Tensor | None:
        """Training's per-sample guidance-type dropout: ``(B, T)`` bool over :attr:`config.guidance_types`, each
        entry ``True`` (dropped) independently with ``guidance_type_dropout``; ``None`` when that is 0 (and then no
        random number is drawn, so a run without dropout draws exactly what it drew before)."""
        probability = self.config.guidance_type_dropout
        if probability == 0:
            return None
        num_types = len(self.config.guidance_types)
        generator_device = generator.device if generator is not None else device
        uniform = torch.rand(batch_size, num_types, generator=generator, device=generator_device)
        return (uniform < probability).to(device)

    def check_guidance(self, guidance: Mapping[str, torch.Tensor]) -> None:
        """Raise a ``ValueError`` unless ``guidance`` holds types this encoder reads (:meth:`check_guidance_types`)
        with matching shapes."""
        self.check_guidance_types(guidance)
        shapes = {name: tuple(maps.shape) for name, maps in guidance.items()}
        if len(set(shapes.values())) != 1:
            raise ValueError(f"Every guidance type must have the same shape (frames, size), got {shapes}.")
        maps = next(iter(guidance.values()))
        if maps.ndim not in (4, 5) or maps.shape[1] != self.config.guidance_input_channels:
            raise ValueError(
                f"Guidance maps must be (B, {self.config.guidance_input_channels}, H, W) or "
                f"(B, {self.config.guidance_input_channels}, F, H, W), got {tuple(maps.shape)}."
            )

    def forward(
        self, guidance: Mapping[str, torch.Tensor], chunk_size: int = 16, drop_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode and sum the guidance types given.

        Args:
            guidance: ``{type: (B, C_in, F, H, W)}`` or ``{type: (B, C_in, H, W)}``, values in ``[0, 1]``: every
                type, or (for a model trained with guidance-type dropout) any non-empty subset; a missing type adds
                nothing.
            chunk_size: frames encoded at once; frames are independent, so this bounds memory without changing
                the result.
            drop_mask: ``(B, T)`` bool over :attr:`config.guidance_types` (training's guidance-type dropout, see
                :meth:`sample_drop_mask`; a fixed mask is the deterministic override for tests): ``True`` zeroes
                that type's features for that sample.

        Returns:
            ``(B, guidance_embedding_channels, F, H / s, W / s)`` (or without ``F`` for 4-D input), ``s`` being
            :attr:`downsample_factor`.
        """
        self.check_guidance(guidance)
        if chunk_size < 1:
            raise ValueError(f"`chunk_size` must be >= 1, got {chunk_size}.")
        first = next(iter(guidance.values()))
        is_video = first.ndim == 5
        batch_size = first.shape[0]
        if drop_mask is not None and tuple(drop_mask.shape) != (batch_size, len(self.encoders)):
            raise ValueError(f"`drop_mask` must have shape ({batch_size}, {len(self.encoders)}) (batch, guidance "
                             f"types), got {tuple(drop_mask.shape)}.")
        parameter = next(self.parameters())  # read once: ModelMixin.device / .dtype walk every submodule
        features = None
        for index, (guidance_type, encoder) in enumerate(self.encoders.items()):
            if guidance_type not in guidance:
                continue
            maps = guidance[guidance_type].to(device=parameter.device, dtype=parameter.dtype)
            if is_video:
                maps = rearrange(maps, "b c f h w -> (b f) c h w")
            encoded = torch.cat([encoder(chunk) for chunk in maps.split(chunk_size)])
            if drop_mask is not None:
                keep = (~drop_mask[:, index].to(device=encoded.device, dtype=torch.bool)).to(encoded.dtype)  # (B,)
                encoded = encoded * keep.repeat_interleave(encoded.shape[0] // batch_size).view(-1, 1, 1, 1)
            features = encoded if features is None else features + encoded
        if is_video:
            features = rearrange(features, "(b f) c h w -> b c f h w", b=batch_size)
        return features


def check_guidance_type_dropout(name: str, probability: float) -> float:
    """A per-sample guidance-type dropout probability in ``[0, 1)`` (1 would drop every type, always)."""
    if not 0.0 <= probability < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {probability}.")
    return float(probability)
