"""SynthDance: procedurally animated articulated bodies rendered to Champ's six maps.

Stand-in for TikTok / UBC-Fashion that can be generated, trained on and measured on one CPU. Modules, in data-flow
order: :mod:`.body` (skeleton, proportions, parts, kinematics), :mod:`.motion` (procedural dances),
:mod:`.appearance` (outfits, textures, backgrounds, light), :mod:`.openpose` (the skeleton map), :mod:`.renderer`
(numpy ray casting of all maps), :mod:`.writer` (specs, Champ-layout output) and :mod:`.cli` (``referencelcm synth``).
"""

from .renderer import MAP_NAMES, NUM_PARTS, SynthDanceRenderer, semantic_part_labels
from .writer import (
    DATASET_SPLITS,
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    ORIGINAL_FOLDER,
    REENACT_SPLIT,
    REFERENCE_FOLDER,
    ReenactSpec,
    VideoSpec,
    generate_dataset,
    pose_video,
    render_frames,
    render_video,
    sample_reenact_spec,
    sample_video_spec,
)

__all__ = [
    "DATASET_SPLITS",
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "MAP_NAMES",
    "NUM_PARTS",
    "ORIGINAL_FOLDER",
    "REENACT_SPLIT",
    "REFERENCE_FOLDER",
    "ReenactSpec",
    "SynthDanceRenderer",
    "VideoSpec",
    "generate_dataset",
    "pose_video",
    "render_frames",
    "render_video",
    "sample_reenact_spec",
    "sample_video_spec",
    "semantic_part_labels",
]
