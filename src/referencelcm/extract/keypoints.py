"""MediaPipe Pose's 33 landmarks → OpenPose's 18 body keypoints, drawn as SynthDance draws its ``dwpose`` maps.

OpenPose-18 order (:data:`~referencelcm.data.synthdance.openpose.KEYPOINT_NAMES`): nose, neck, right shoulder / elbow /
wrist, left shoulder / elbow / wrist, right hip / knee / ankle, left hip / knee / ankle, right eye, left eye, right
ear, left ear; "right" is the person's right. MediaPipe has every one of them but the neck, which OpenPose defines as
the midpoint of the shoulders (visible when both are). A keypoint is drawn when MediaPipe's visibility is at least
:data:`MIN_VISIBILITY`.
"""

from __future__ import annotations

import numpy as np

from ..data.synthdance.openpose import KEYPOINT_NAMES, draw_openpose, stroke_sizes

MEDIAPIPE_LANDMARKS = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_pinky", "right_pinky", "left_index", "right_index",
    "left_thumb", "right_thumb", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip
NECK = KEYPOINT_NAMES.index("neck")
SHOULDERS = (KEYPOINT_NAMES.index("right_shoulder"), KEYPOINT_NAMES.index("left_shoulder"))
# For each OpenPose keypoint, the MediaPipe landmark of the same name (the neck has none: -1).
OPENPOSE_FROM_MEDIAPIPE = np.array(
    [MEDIAPIPE_LANDMARKS.index(name) if name in MEDIAPIPE_LANDMARKS else -1 for name in KEYPOINT_NAMES]
)
MIN_VISIBILITY = 0.5  # MediaPipe's visibility: the likelihood that the landmark is in the frame and not occluded


def mediapipe_to_openpose(
    landmarks: np.ndarray, visibility: np.ndarray, min_visibility: float = MIN_VISIBILITY
) -> tuple[np.ndarray, np.ndarray]:
    """OpenPose-18 keypoints from MediaPipe Pose landmarks.

    Args:
        landmarks: ``(..., 33, 2)`` landmark positions (x, y), in any unit (pixels, or MediaPipe's normalised
            coordinates); the keypoints come out in the same unit.
        visibility: ``(..., 33)`` MediaPipe's visibility scores in ``[0, 1]``.
        min_visibility: the score from which a landmark counts as seen.

    Returns:
        ``keypoints`` ``(..., 18, 2)`` and ``visible`` ``(..., 18)`` bool; the neck is the shoulders' midpoint,
        visible when both shoulders are.
    """
    landmarks, visibility = np.asarray(landmarks, dtype=np.float64), np.asarray(visibility, dtype=np.float64)
    if landmarks.shape[-2:] != (len(MEDIAPIPE_LANDMARKS), 2) or visibility.shape != landmarks.shape[:-1]:
        raise ValueError(f"`landmarks` must be (..., {len(MEDIAPIPE_LANDMARKS)}, 2) and `visibility` (..., "
                         f"{len(MEDIAPIPE_LANDMARKS)}), got {landmarks.shape} and {visibility.shape}.")
    source = np.where(OPENPOSE_FROM_MEDIAPIPE < 0, 0, OPENPOSE_FROM_MEDIAPIPE)
    keypoints = landmarks[..., source, :].copy()
    visible = visibility[..., source] >= min_visibility
    keypoints[..., NECK, :] = keypoints[..., SHOULDERS, :].mean(axis=-2)
    visible[..., NECK] = visible[..., SHOULDERS].all(axis=-1)
    return keypoints, visible


def draw_skeleton(keypoints: np.ndarray, visible: np.ndarray, height: int, width: int) -> np.ndarray:
    """One ``dwpose`` map: the skeleton ``(18, 2)`` pixel keypoints (pixel centres at ``+0.5``) with ``visible``
    ``(18,)`` on black, in SynthDance's colours, limb widths and keypoint sizes for this canvas →
    ``(height, width, 3)`` uint8."""
    return draw_openpose(np.asarray(keypoints), np.asarray(visible), height, width, *stroke_sizes(height, width))
