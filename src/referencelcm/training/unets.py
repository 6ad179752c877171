"""Moving D-UNet weights between the 2-D (spatial phase) and motion (temporal phase) forms, without forking classes.

A ``UNetMotionModel`` and the ``UNet2DConditionModel`` it was built from (``UNetMotionModel.from_unet2d``) share every
non-motion state-dict key; the motion modules live under ``*.motion_modules.*``. Phase 1 trains the 2-D part of the
teacher's motion D-UNet; phase 2 puts the phase-1 weights back into a copy of the teacher's motion D-UNet.
"""

from __future__ import annotations

import copy

import torch
from diffusers import UNet2DConditionModel, UNetMotionModel

_BLOCK_TYPES_2D = {
    "CrossAttnDownBlockMotion": "CrossAttnDownBlock2D",
    "DownBlockMotion": "DownBlock2D",
    "CrossAttnUpBlockMotion": "CrossAttnUpBlock2D",
    "UpBlockMotion": "UpBlock2D",
}
# UNet2DConditionModel config keys a UNetMotionModel config carries under the same name and meaning.
_SHARED_CONFIG_KEYS = (
    "sample_size", "in_channels", "out_channels", "block_out_channels", "layers_per_block", "downsample_padding",
    "mid_block_scale_factor", "act_fn", "norm_num_groups", "norm_eps", "cross_attention_dim",
    "transformer_layers_per_block", "reverse_transformer_layers_per_block", "use_linear_projection",
    "encoder_hid_dim", "encoder_hid_dim_type", "addition_embed_type", "addition_time_embed_dim",
    "projection_class_embeddings_input_dim", "time_cond_proj_dim",
)


def is_motion_key(key: str) -> bool:
    """Whether a D-UNet state-dict key belongs to a motion module."""
    return ".motion_modules." in f".{key}"


def spatial_unet_from_motion(motion_unet: UNetMotionModel) -> UNet2DConditionModel:
    """The 2-D D-UNet of a motion D-UNet: same spatial weights (copied, in float32), no motion modules."""
    config = motion_unet.config
    block_types = [*config.down_block_types, *config.up_block_types]
    unknown = sorted({name for name in block_types if name not in _BLOCK_TYPES_2D})
    if unknown:
        raise ValueError(f"`motion_unet` has block types {unknown} with no 2-D counterpart.")
    spatial = UNet2DConditionModel(
        **{key: config[key] for key in _SHARED_CONFIG_KEYS if key in config},
        down_block_types=tuple(_BLOCK_TYPES_2D[name] for name in config.down_block_types),
        up_block_types=tuple(_BLOCK_TYPES_2D[name] for name in config.up_block_types),
        attention_head_dim=config.num_attention_heads,  # UNet2DConditionModel's legacy name for the head count
    )
    state = {key: value for key, value in motion_unet.state_dict().items() if not is_motion_key(key)}
    spatial.load_state_dict(state, strict=True)
    return spatial.to(motion_unet.device)


@torch.no_grad()
def motion_unet_with_spatial_weights(
    motion_unet: UNetMotionModel, spatial_unet: UNet2DConditionModel
) -> UNetMotionModel:
    """A copy of ``motion_unet`` (its motion modules) whose every non-motion weight comes from ``spatial_unet``.

    Raises ``ValueError`` unless the two cover exactly the same non-motion keys with the same shapes.
    """
    merged = copy.deepcopy(motion_unet)
    spatial_state = spatial_unet.state_dict()
    merged_keys = {key for key in merged.state_dict() if not is_motion_key(key)}
    if merged_keys != set(spatial_state):
        missing, extra = sorted(merged_keys - set(spatial_state)), sorted(set(spatial_state) - merged_keys)
        raise ValueError(
            f"`spatial_unet` does not match the spatial part of `motion_unet`: missing {missing[:3]}, extra {extra[:3]}."
        )
    result = merged.load_state_dict(spatial_state, strict=False)
    if result.unexpected_keys or any(not is_motion_key(key) for key in result.missing_keys):
        raise ValueError(f"Could not load the spatial weights: {result}.")
    return merged
