"""Pose alignment (as MusePose's ``pose_align``): fit the driving skeleton to the person in the reference image.

The driving skeletons are scaled and moved by one transform for the whole video, ``p' = scale ⊙ p + offset`` (pixel
coordinates of the output frames), measured on the first driving frame that shows both shoulders:

- horizontal scale: the reference's shoulder width over the driving person's;
- vertical scale: the reference's body height over the driving person's, body height being the distance from the
  neck to the midpoint of the lowest pair of joints seen in both skeletons (ankles, else knees, else hips), or to the
  nose when no such pair is seen (a half-body photograph); when neither is seen the horizontal scale is used;
- offset: the driving neck lands on the reference's neck.

So the motion (steps, jumps, turns) is kept, in the reference person's size and place.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..data.synthdance.openpose import KEYPOINT_NAMES
from .keypoints import NECK, SHOULDERS

# Where body height ends, tried in order: (name, OpenPose keypoint indices averaged).
HEIGHT_ENDS = (
    ("ankles", (KEYPOINT_NAMES.index("right_ankle"), KEYPOINT_NAMES.index("left_ankle"))),
    ("knees", (KEYPOINT_NAMES.index("right_knee"), KEYPOINT_NAMES.index("left_knee"))),
    ("hips", (KEYPOINT_NAMES.index("right_hip"), KEYPOINT_NAMES.index("left_hip"))),
    ("nose", (KEYPOINT_NAMES.index("nose"),)),
)
MIN_MEASURE = 1e-6  # pixels: a shoulder width or body height below this cannot be scaled from


@dataclass(frozen=True)
class PoseAlignment:
    """``p' = scale ⊙ p + offset`` in output pixels, and what it was measured from.

    Attributes:
        scale: ``(s_x, s_y)``.
        offset: ``(t_x, t_y)`` in pixels.
        driving_frame: the index (among the driving frames given) that was measured.
        shoulder_width: ``{"reference": w_r, "driving": w_d}`` in pixels.
        body_height: ``{"reference": h_r, "driving": h_d, "to": "ankles" | "knees" | "hips" | "nose"}`` (neck to
            there), or ``None`` when the two skeletons share none of those points.
    """

    scale: tuple[float, float]
    offset: tuple[float, float]
    driving_frame: int
    shoulder_width: dict
    body_height: dict | None

    def apply(self, keypoints: np.ndarray) -> np.ndarray:
        """Transform keypoints ``(..., 2)`` (x, y) → ``(..., 2)``."""
        return np.asarray(keypoints, dtype=np.float64) * np.asarray(self.scale) + np.asarray(self.offset)

    def inverse_affine(self) -> tuple[float, float, float, float, float, float]:
        """PIL's ``Image.AFFINE`` coefficients ``(a, b, c, d, e, f)``: output pixel ``(x, y)`` samples the input at
        ``(a·x + b·y + c, d·x + e·y + f)``, i.e. the inverse transform, for warping maps (the masks)."""
        (scale_x, scale_y), (offset_x, offset_y) = self.scale, self.offset
        return (1 / scale_x, 0.0, -offset_x / scale_x, 0.0, 1 / scale_y, -offset_y / scale_y)

    def to_json(self) -> dict:
        """The ``alignment`` entry of ``meta.json``."""
        return {
            "transform": "x' = scale[0] * x + offset[0], y' = scale[1] * y + offset[1] (output pixels)",
            "scale": list(self.scale),
            "offset": list(self.offset),
            "driving_frame": self.driving_frame,
            "shoulder_width": self.shoulder_width,
            "body_height": self.body_height,
        }


def fit_pose_alignment(
    reference_keypoints: np.ndarray,
    reference_visible: np.ndarray,
    driving_keypoints: np.ndarray,
    driving_visible: np.ndarray,
) -> PoseAlignment:
    """The transform that puts the driving person in the reference person's size and place (module docstring).

    Args:
        reference_keypoints: ``(18, 2)`` the reference person's OpenPose keypoints, in output pixels.
        reference_visible: ``(18,)`` bool.
        driving_keypoints: ``(F, 18, 2)`` the driving video's keypoints, in output pixels.
        driving_visible: ``(F, 18)`` bool.

    Raises:
        ValueError: the reference does not show both shoulders, or no driving frame does.
    """
    reference_keypoints, driving_keypoints = np.asarray(reference_keypoints), np.asarray(driving_keypoints)
    reference_visible, driving_visible = np.asarray(reference_visible, bool), np.asarray(driving_visible, bool)
    if not reference_visible[list(SHOULDERS)].all():
        raise ValueError("the reference person's shoulders must both be visible to align the pose to them.")
    with_shoulders = np.flatnonzero(driving_visible[:, list(SHOULDERS)].all(axis=1))
    if len(with_shoulders) == 0:
        raise ValueError(f"none of the {len(driving_keypoints)} driving frames shows both shoulders, so the pose "
                         "cannot be aligned.")
    frame = int(with_shoulders[0])
    driving, seen = driving_keypoints[frame], driving_visible[frame]

    widths = [_distance(points[SHOULDERS[0]], points[SHOULDERS[1]]) for points in (reference_keypoints, driving)]
    if min(widths) < MIN_MEASURE:
        raise ValueError(f"the shoulders are {widths[0]:.3g} px apart in the reference and {widths[1]:.3g} px in "
                         f"driving frame {frame}: too close to scale from.")
    scale_x = widths[0] / widths[1]
    body_height = _body_height(reference_keypoints, reference_visible, driving, seen)
    scale_y = scale_x if body_height is None else body_height["reference"] / body_height["driving"]
    scale = np.array([scale_x, scale_y])
    offset = reference_keypoints[NECK] - scale * driving[NECK]
    return PoseAlignment(
        scale=(float(scale[0]), float(scale[1])),
        offset=(float(offset[0]), float(offset[1])),
        driving_frame=frame,
        shoulder_width={"reference": widths[0], "driving": widths[1]},
        body_height=body_height,
    )


def _distance(first: np.ndarray, second: np.ndarray) -> float:
    return float(np.linalg.norm(np.asarray(first, dtype=np.float64) - second))


def _body_height(
    reference: np.ndarray, reference_visible: np.ndarray, driving: np.ndarray, driving_visible: np.ndarray
) -> dict | None:
    """Neck → the lowest end of :data:`HEIGHT_ENDS` seen in both skeletons ``(18, 2)``, in each; ``None`` if none."""
    for name, indices in HEIGHT_ENDS:
        if reference_visible[list(indices)].all() and driving_visible[list(indices)].all():
            heights = [_distance(points[NECK], points[list(indices)].mean(axis=0)) for points in (reference, driving)]
            if min(heights) >= MIN_MEASURE:
                return {"reference": heights[0], "driving": heights[1], "to": name}
    return None
