"""Guidance from your own video, offline: MediaPipe Pose skeletons in SynthDance's ``dwpose`` style, person masks, and
pose alignment to a reference image (``referencelcm extract-guidance``, ``referencelcm animate --video``).

Modules: :mod:`.keypoints` (MediaPipe's 33 landmarks → OpenPose 18, the skeleton drawing), :mod:`.alignment` (the
driving pose fitted to the reference person), :mod:`.detector` (MediaPipe, imported only when used),
:mod:`.extraction` (the folder writer), :mod:`.cli`.
"""

from .alignment import PoseAlignment, fit_pose_alignment
from .extraction import ExtractionResult, extract_guidance
from .keypoints import draw_skeleton, mediapipe_to_openpose

__all__ = [
    "ExtractionResult",
    "PoseAlignment",
    "draw_skeleton",
    "extract_guidance",
    "fit_pose_alignment",
    "mediapipe_to_openpose",
]
