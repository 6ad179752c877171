"""Key mapping from Champ's checkpoint files to this package's components (pure functions over state dicts).

Facts from Champ's public code (github.com/fudan-generative-vision/champ) that this file relies on:

- ``guidance_encoder_<type>.pth`` is ``GuidanceEncoder.state_dict()`` (``models/guidance_encoder.py``, saved by
  ``train_s1.py``): ``conv_in``, ``blocks.0..5``, ``attentions.0..5``, ``guidance_attention``, ``conv_out``. The
  forward runs ``conv_in``, every block, then **only** ``attentions[-1]``, then ``conv_out``.
- ``motion_module.pth`` is the D-UNet's state dict filtered on ``"motion_module"`` (``train_s2.py``): AnimateDiff-v2
  ``VanillaTemporalModule`` keys (``models/motion_module.py``), e.g.
  ``down_blocks.0.motion_modules.1.temporal_transformer.transformer_blocks.0.attention_blocks.0.to_q.weight``.
  Their ``GroupNorm`` always has 32 groups.
- ``denoising_unet.pth`` / ``reference_unet.pth`` use diffusers' ``UNet2DConditionModel`` names. Champ's reference UNet
  (``models/unet_2d_condition.py``) builds no output head (``conv_norm_out`` is set to ``None``, ``conv_out`` is
  commented out), so its file has no such keys.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch

CHAMP_GUIDANCE_TYPES = ("depth", "normal", "semantic_map", "dwpose")
# Champ's TemporalTransformer3DModel never passes its `norm_num_groups`, so the default (32) is what was trained.
CHAMP_MOTION_NORM_GROUPS = 32

REASON_UNUSED_GUIDANCE_ATTENTION = (
    "built by Champ's GuidanceEncoder but never run: its forward uses only attentions[-1] (kept as `attention`)"
)
REASON_UNUSED_GUIDANCE_GLOBAL_ATTENTION = "Champ's GuidanceEncoder.guidance_attention is built but never run"
REASON_DUPLICATE_POSITION_TABLE = (
    "identical copy of attention_blocks.0.pos_encoder.pe (checked); diffusers keeps one table per transformer block"
)
REASON_REFERENCE_HEAD = (
    "Champ's reference UNet has no output head (its output is never used): GroupNorm set to identity, conv_out to zero"
)
REASON_POSITION_TABLE_ABSENT = (
    "no pos_encoder.pe in the file: diffusers' sinusoidal table is used, the same formula as AnimateDiff's "
    "PositionalEncoding, so nothing changes"
)
# Champ's configs/*.yaml: temporal_position_encoding_max_len: 32 (used when the file has no table to read it from).
CHAMP_MOTION_MAX_SEQ_LENGTH = 32


@dataclass(frozen=True)
class AllowedMissing:
    """Parameters a component may lack in Champ's files, why, and their value (``None``: keep the freshly built,
    deterministic value). Anything else missing is an error, or, when the SD1.5 UNet weights are at hand, filled
    from them exactly as Champ's own loader does."""

    pattern: str  # a regular expression matched against the whole key
    reason: str
    fill: float | None


REFERENCE_UNET_ALLOWED_MISSING = (
    AllowedMissing(r"conv_norm_out\.weight", REASON_REFERENCE_HEAD, 1.0),
    AllowedMissing(r"conv_norm_out\.bias", REASON_REFERENCE_HEAD, 0.0),
    AllowedMissing(r"conv_out\.(weight|bias)", REASON_REFERENCE_HEAD, 0.0),
)
MOTION_ALLOWED_MISSING = (AllowedMissing(r".*\.pos_embed\.pe", REASON_POSITION_TABLE_ABSENT, None),)

_MOTION_KEY = re.compile(r"^(?P<location>down_blocks\.\d+|up_blocks\.\d+|mid_block)\.motion_modules\.(?P<index>\d+)\.")
_ATTENTION_KEY = re.compile(r"^attentions\.(?P<index>\d+)\.(?P<rest>.+)$")
_BLOCK_WEIGHT_KEY = re.compile(r"^blocks\.(?P<index>\d+)\.weight$")
# AnimateDiff-v2 names (after `temporal_transformer.`) -> diffusers' AnimateDiffTransformer3D names, as diffusers'
# scripts/convert_animatediff_motion_module_to_diffusers.py renames them (norms.i -> norm{i+1}, ff_norm -> norm3,
# attention_blocks.i -> attn{i+1}, temporal_transformer dropped).
_BLOCK = r"^transformer_blocks\.(?P<block>\d+)\."
_MOTION_RULES = (
    (re.compile(r"^(?P<name>norm|proj_in|proj_out)\.(?P<param>weight|bias)$"), "{name}.{param}"),
    (
        re.compile(_BLOCK + r"attention_blocks\.(?P<slot>[01])\.(?P<rest>to_[qkv]\.weight|to_out\.0\.(weight|bias))$"),
        "transformer_blocks.{block}.attn{slot1}.{rest}",
    ),
    (
        re.compile(_BLOCK + r"norms\.(?P<slot>[01])\.(?P<param>weight|bias)$"),
        "transformer_blocks.{block}.norm{slot1}.{param}",
    ),
    (re.compile(_BLOCK + r"ff_norm\.(?P<param>weight|bias)$"), "transformer_blocks.{block}.norm3.{param}"),
    (
        re.compile(_BLOCK + r"ff\.(?P<rest>net\.0\.proj\.(weight|bias)|net\.2\.(weight|bias))$"),
        "transformer_blocks.{block}.ff.{rest}",
    ),
)
_POSITION_KEY = re.compile(_BLOCK + r"attention_blocks\.(?P<slot>\d+)\.pos_encoder\.pe$")


@dataclass(frozen=True)
class DroppedKeys:
    """Keys of a Champ file that get no destination, and the documented reason why that loses nothing."""

    source: str
    keys: tuple[str, ...]
    reason: str
    pattern: str  # the keys in one line, e.g. ``attentions.0-4.*``


class UnmappedKeysError(ValueError):
    """Keys of a Champ file that have no destination and no documented reason to be dropped."""

    def __init__(self, source: str, keys: Sequence[str], expected: str) -> None:
        self.source = source
        self.keys = tuple(sorted(keys))
        shown = ", ".join(self.keys[:20]) + (f", ... ({len(self.keys)} in all)" if len(self.keys) > 20 else "")
        super().__init__(
            f"{source}: {len(self.keys)} key(s) have no destination and converting would drop trained weights: "
            f"{shown}. Expected {expected}."
        )


def is_motion_key(key: str) -> bool:
    """Whether ``key`` belongs to a motion module (``<block>.motion_modules.<i>.``)."""
    return _MOTION_KEY.match(key) is not None


# -- guidance encoders -------------------------------------------------------------------------------------------


def guidance_encoder_layout(state_dict: Mapping[str, torch.Tensor], source: str) -> dict:
    """Read a Champ guidance encoder's widths from its weights.

    Returns ``{"guidance_input_channels", "block_out_channels", "guidance_embedding_channels"}`` (the
    :class:`~referencelcm.MultiGuidanceEncoder` arguments that the weights determine).
    """
    for required in ("conv_in.weight", "conv_out.weight"):
        if required not in state_dict:
            raise ValueError(f"{source}: expected a Champ GuidanceEncoder state dict with `{required}`; it is missing.")
    block_indices = sorted(int(match["index"]) for key in state_dict if (match := _BLOCK_WEIGHT_KEY.match(key)))
    if not block_indices or block_indices != list(range(len(block_indices))) or len(block_indices) % 2:
        raise ValueError(
            f"{source}: expected conv blocks `blocks.0` .. `blocks.<2n-1>` (two convs per width step), got indices "
            f"{block_indices}."
        )
    block_out_channels = [state_dict["conv_in.weight"].shape[0]]
    for index in range(1, len(block_indices), 2):
        block_out_channels.append(state_dict[f"blocks.{index}.weight"].shape[0])
    return {
        "guidance_input_channels": int(state_dict["conv_in.weight"].shape[1]),
        "block_out_channels": tuple(int(width) for width in block_out_channels),
        "guidance_embedding_channels": int(state_dict["conv_out.weight"].shape[0]),
    }


def convert_guidance_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[DroppedKeys]]:
    """Map one Champ ``GuidanceEncoder`` state dict onto :class:`~referencelcm.models.guidance_encoder.GuidanceEncoder`.

    ``attentions.<last>.*`` becomes ``attention.*``; ``attentions.<earlier>.*`` and ``guidance_attention.*`` (never
    run by Champ) are dropped and returned as :class:`DroppedKeys`; every other key keeps its name.
    """
    attention_indices = {int(match["index"]) for key in state_dict if (match := _ATTENTION_KEY.match(key))}
    last = max(attention_indices, default=None)
    converted: dict[str, torch.Tensor] = {}
    unused_attentions: list[str] = []
    unused_global: list[str] = []
    for key, tensor in state_dict.items():
        match = _ATTENTION_KEY.match(key)
        if match is not None and int(match["index"]) == last:
            converted[f"attention.{match['rest']}"] = tensor
        elif match is not None:
            unused_attentions.append(key)
        elif key.startswith("guidance_attention."):
            unused_global.append(key)
        else:
            converted[key] = tensor
    dropped = []
    if unused_attentions:
        indices = sorted({int(_ATTENTION_KEY.match(key)["index"]) for key in unused_attentions})
        pattern = f"attentions.{_index_range(indices)}.*"
        dropped.append(DroppedKeys(source, tuple(unused_attentions), REASON_UNUSED_GUIDANCE_ATTENTION, pattern))
    if unused_global:
        dropped.append(
            DroppedKeys(source, tuple(unused_global), REASON_UNUSED_GUIDANCE_GLOBAL_ATTENTION, "guidance_attention.*")
        )
    return converted, dropped


# -- motion modules ----------------------------------------------------------------------------------------------


def convert_motion_state_dict(
    state_dict: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], list[DroppedKeys]]:
    """Map AnimateDiff-v2 / Champ motion-module keys onto diffusers' ``MotionAdapter`` keys.

    Names are renamed as diffusers' AnimateDiff converter renames them. Unlike that converter, the sinusoidal
    position table (``attention_blocks.0.pos_encoder.pe``) is kept, as ``transformer_blocks.<i>.pos_embed.pe``, so the
    converted model uses exactly the trained table; ``attention_blocks.1``'s copy must be identical and is dropped.

    Raises:
        UnmappedKeysError: a key is not a motion-module key or has no diffusers counterpart (e.g. a third attention
            block, or cross-frame attention).
        ValueError: the position tables of one transformer block differ.
    """
    converted: dict[str, torch.Tensor] = {}
    tables: dict[str, dict[int, tuple[str, torch.Tensor]]] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        match = _MOTION_KEY.match(key)
        prefix = match.group(0) if match else ""
        rest = key[len(prefix) :]
        if match is None or not rest.startswith("temporal_transformer."):
            unmapped.append(key)
            continue
        rest = rest[len("temporal_transformer.") :]
        position = _POSITION_KEY.match(rest)
        if position is not None:
            destination = f"{prefix}transformer_blocks.{position['block']}.pos_embed.pe"
            tables.setdefault(destination, {})[int(position["slot"])] = (key, tensor)
            continue
        renamed = _rename_motion_parameter(rest)
        if renamed is None:
            unmapped.append(key)
        else:
            converted[prefix + renamed] = tensor
    if unmapped:
        raise UnmappedKeysError(
            source, unmapped, "AnimateDiff-v2 motion-module keys `<block>.motion_modules.<i>.temporal_transformer.*`"
        )
    dropped_duplicates: list[str] = []
    for destination, slots in tables.items():
        first_key, first = slots[min(slots)]
        for slot, (key, table) in sorted(slots.items())[1:]:
            if table.shape != first.shape or not torch.equal(table, first):
                raise ValueError(
                    f"{source}: position tables `{first_key}` and `{key}` differ; diffusers' motion modules hold one "
                    f"table per transformer block, so this file cannot be converted without changing its outputs."
                )
            dropped_duplicates.append(key)
        converted[destination] = first
    dropped = []
    if dropped_duplicates:
        pattern = "*.motion_modules.*.attention_blocks.1.pos_encoder.pe"
        dropped.append(DroppedKeys(source, tuple(dropped_duplicates), REASON_DUPLICATE_POSITION_TABLE, pattern))
    return converted, dropped


def _index_range(indices: Sequence[int]) -> str:
    """``[0, 1, 2, 3, 4]`` -> ``"0-4"``; anything not contiguous is listed."""
    if len(indices) > 1 and list(indices) == list(range(indices[0], indices[-1] + 1)):
        return f"{indices[0]}-{indices[-1]}"
    return ",".join(str(index) for index in indices)


def _rename_motion_parameter(name: str) -> str | None:
    for pattern, template in _MOTION_RULES:
        match = pattern.match(name)
        if match is not None:
            groups = match.groupdict()
            if "slot" in groups:
                groups["slot1"] = int(groups["slot"]) + 1
            return template.format(**groups)
    return None


def infer_motion_adapter_config(
    motion_state_dict: Mapping[str, torch.Tensor],
    block_out_channels: Sequence[int],
    motion_num_attention_heads: int,
    source: str,
    motion_norm_num_groups: int = CHAMP_MOTION_NORM_GROUPS,
) -> dict:
    """Read a ``MotionAdapter`` config from converted motion weights (see :func:`convert_motion_state_dict`).

    Layers per block, transformer layers per motion module, the mid-block module and ``motion_max_seq_length`` (from
    the position table's length) come from the keys; widths are checked against ``block_out_channels``.
    """
    modules: dict[str, set[int]] = {}
    layers: dict[str, set[int]] = {}
    for key in motion_state_dict:
        match = _MOTION_KEY.match(key)
        location, index = match["location"], int(match["index"])
        modules.setdefault(location, set()).add(index)
        block_match = re.match(r"transformer_blocks\.(\d+)\.", key[match.end() :])
        if block_match:
            layers.setdefault(location, set()).add(int(block_match.group(1)))
        if key[match.end() :] == "norm.weight":
            width = block_out_channels[-1] if location == "mid_block" else _location_width(location, block_out_channels)
            if motion_state_dict[key].shape[0] != width:
                raise ValueError(
                    f"{source}: motion module `{location}.motion_modules.{index}` has width "
                    f"{motion_state_dict[key].shape[0]}, but the UNet block there has {width} channels."
                )
    num_blocks = len(block_out_channels)
    expected_locations = {f"down_blocks.{i}" for i in range(num_blocks)} | {f"up_blocks.{i}" for i in range(num_blocks)}
    missing_locations = sorted(expected_locations - set(modules))
    if missing_locations:
        raise ValueError(
            f"{source}: diffusers' UNetMotionModel needs motion modules in every down and up block; none found in "
            f"{missing_locations}."
        )
    down_counts = [len(modules[f"down_blocks.{i}"]) for i in range(num_blocks)]
    up_counts = [len(modules[f"up_blocks.{i}"]) for i in range(num_blocks)]
    if up_counts != [count + 1 for count in reversed(down_counts)]:
        raise ValueError(
            f"{source}: expected one more motion module per up block than per mirrored down block; got down "
            f"{down_counts}, up {up_counts}."
        )
    transformer_layers = {len(indices) for indices in layers.values()}
    if len(transformer_layers) != 1:
        raise ValueError(f"{source}: motion modules have differing transformer depths {sorted(transformer_layers)}.")
    tables = [tensor for key, tensor in motion_state_dict.items() if key.endswith(".pos_embed.pe")]
    return {
        "block_out_channels": tuple(block_out_channels),
        "motion_layers_per_block": tuple(down_counts),
        "motion_transformer_layers_per_block": transformer_layers.pop(),
        "motion_mid_block_layers_per_block": max(len(modules.get("mid_block", ())), 1),
        "motion_num_attention_heads": motion_num_attention_heads,
        "motion_norm_num_groups": motion_norm_num_groups,
        "motion_max_seq_length": int(tables[0].shape[1]) if tables else CHAMP_MOTION_MAX_SEQ_LENGTH,
        "use_motion_mid_block": "mid_block" in modules,
    }


def _location_width(location: str, block_out_channels: Sequence[int]) -> int:
    kind, index = location.split(".")
    index = int(index)
    return block_out_channels[index] if kind == "down_blocks" else list(reversed(block_out_channels))[index]
