"""The ``dwpose`` guidance map: OpenPose's 18 body keypoints, taken from the 3-D body and drawn in OpenPose colours.

Keypoint order (OpenPose COCO-18): nose, neck, right shoulder/elbow/wrist, left shoulder/elbow/wrist, right
hip/knee/ankle, left hip/knee/ankle, right eye, left eye, right ear, left ear. Limbs are drawn at 60 % of their colour,
keypoints on top at full colour, as DWPose/OpenPose renderers do. Face keypoints a detector could not see (the nose and
eyes of a body seen from behind, the far ear of a profile) are left out, which keeps the front/back cue.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .body import JOINT_INDEX, BodyPoses, BodyShape

KEYPOINT_NAMES = (
    "nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow", "left_wrist",
    "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
    "right_eye", "left_eye", "right_ear", "left_ear",
)  # fmt: skip
LIMBS = (
    (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
    (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17),
)  # fmt: skip
# OpenPose's 18 hues, from red round the colour wheel to pink.
OPENPOSE_COLOURS = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
    (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
    (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
LIMB_BRIGHTNESS = 0.6
PIXELS_PER_LINE_WIDTH = 64  # limbs are 1 px wide per 64 px of the canvas's shorter side
PIXELS_PER_POINT_RADIUS = 128  # keypoints have a radius of 1 px per 128 px
_FACE_VISIBILITY = 0.15  # a face point shows when its outward direction faces the camera at least this much
_BODY_JOINTS = {
    "right_shoulder": "right_shoulder", "right_elbow": "right_elbow", "right_wrist": "right_wrist",
    "left_shoulder": "left_shoulder", "left_elbow": "left_elbow", "left_wrist": "left_wrist",
    "right_hip": "right_hip", "right_knee": "right_knee", "right_ankle": "right_ankle",
    "left_hip": "left_hip", "left_knee": "left_knee", "left_ankle": "left_ankle",
}  # fmt: skip


def openpose_keypoints(poses: BodyPoses, shape: BodyShape, head_center: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-D OpenPose keypoints of a posed body.

    Args:
        poses: world joint positions ``(T, J, 3)`` and rotations ``(T, J, 3, 3)``.
        shape: the body's proportions (head size).
        head_center: centre of the head ellipsoid in the head joint's frame ``(3,)``.

    Returns:
        ``points`` ``(T, 18, 3)`` in world metres and ``visible`` ``(T, 18)`` bool.
    """
    num_frames = poses.positions.shape[0]
    points = np.zeros((num_frames, len(KEYPOINT_NAMES), 3))
    visible = np.ones((num_frames, len(KEYPOINT_NAMES)), dtype=bool)
    for index, name in enumerate(KEYPOINT_NAMES):
        if name in _BODY_JOINTS:
            points[:, index] = poses.positions[:, JOINT_INDEX[_BODY_JOINTS[name]]]
    points[:, 1] = (points[:, 2] + points[:, 5]) / 2
    head_rotation = poses.rotations[:, JOINT_INDEX["head"]]
    center = poses.positions[:, JOINT_INDEX["head"]] + head_rotation @ head_center
    radii = shape.head_radii()
    # Face points on the unit head sphere (x = the person's left, y up, z forward), with their outward directions.
    face = {
        "nose": np.array([0.0, -0.15, 1.0]),
        "right_eye": np.array([-0.34, 0.08, 0.94]),
        "left_eye": np.array([0.34, 0.08, 0.94]),
        "right_ear": np.array([-1.0, 0.0, -0.1]),
        "left_ear": np.array([1.0, 0.0, -0.1]),
    }
    toward_camera = np.array([0.0, 0.0, 1.0])
    for name, unit_point in face.items():
        index = KEYPOINT_NAMES.index(name)
        direction = unit_point / np.linalg.norm(unit_point)
        points[:, index] = center + head_rotation @ (0.8 * direction * radii)
        facing = (head_rotation @ direction) @ toward_camera
        threshold = -0.35 if name.endswith("ear") else _FACE_VISIBILITY
        visible[:, index] = facing > threshold
    return points, visible


def stroke_sizes(height: int, width: int) -> tuple[int, int]:
    """``(line_width, point_radius)`` in pixels of the skeletons drawn on a ``height`` × ``width`` canvas (at least 1
    each): every ``dwpose`` map, SynthDance's or extracted from a video, uses these for its size."""
    size = min(height, width)
    return max(1, round(size / PIXELS_PER_LINE_WIDTH)), max(1, round(size / PIXELS_PER_POINT_RADIUS))


def draw_openpose(
    keypoints: np.ndarray, visible: np.ndarray, height: int, width: int, line_width: int, point_radius: int
) -> np.ndarray:
    """Draws one skeleton on black.

    Args:
        keypoints: ``(18, 2)`` pixel coordinates (x, y) with pixel centres at ``+0.5``.
        visible: ``(18,)`` bool; limbs need both ends visible.
        height, width: canvas size.
        line_width, point_radius: stroke sizes in pixels.

    Returns:
        ``(height, width, 3)`` uint8.
    """
    canvas = Image.new("RGB", (width, height))
    draw = ImageDraw.Draw(canvas)
    corners = keypoints - 0.5  # PIL addresses pixel centres by integers
    for limb_index, (start, end) in enumerate(LIMBS):
        if visible[start] and visible[end]:
            colour = tuple(int(channel * LIMB_BRIGHTNESS) for channel in OPENPOSE_COLOURS[limb_index])
            draw.line([tuple(corners[start]), tuple(corners[end])], fill=colour, width=line_width)
    for index, (x, y) in enumerate(corners):
        if visible[index]:
            draw.ellipse([x - point_radius, y - point_radius, x + point_radius, y + point_radius],
                         fill=OPENPOSE_COLOURS[index])
    return np.asarray(canvas)
