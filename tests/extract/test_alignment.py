"""The pose alignment transform on known poses."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from referencelcm.data.synthdance.openpose import KEYPOINT_NAMES
from referencelcm.extract.alignment import fit_pose_alignment

INDEX = {name: index for index, name in enumerate(KEYPOINT_NAMES)}


def standing_pose(width: float = 40.0, height: float = 120.0, neck=(100.0, 50.0)) -> tuple[np.ndarray, np.ndarray]:
    """A frontal stick figure ``(18, 2)``: shoulders ``width`` apart, ankles ``height`` below the neck."""
    x, y = neck
    points = {
        "nose": (x, y - 0.2 * height), "neck": (x, y),
        "right_shoulder": (x - width / 2, y), "left_shoulder": (x + width / 2, y),
        "right_elbow": (x - width / 2, y + 0.25 * height), "left_elbow": (x + width / 2, y + 0.25 * height),
        "right_wrist": (x - width / 2, y + 0.45 * height), "left_wrist": (x + width / 2, y + 0.45 * height),
        "right_hip": (x - width / 4, y + 0.45 * height), "left_hip": (x + width / 4, y + 0.45 * height),
        "right_knee": (x - width / 4, y + 0.72 * height), "left_knee": (x + width / 4, y + 0.72 * height),
        "right_ankle": (x - width / 4, y + height), "left_ankle": (x + width / 4, y + height),
        "right_eye": (x - 3, y - 0.22 * height), "left_eye": (x + 3, y - 0.22 * height),
        "right_ear": (x - 6, y - 0.2 * height), "left_ear": (x + 6, y - 0.2 * height),
    }  # fmt: skip
    return np.array([points[name] for name in KEYPOINT_NAMES]), np.ones(len(KEYPOINT_NAMES), dtype=bool)


def test_a_scaled_and_moved_copy_is_mapped_back_exactly():
    reference, seen = standing_pose()
    driving = (reference - [100, 50]) * 0.5 + [30, 80]  # half the size, elsewhere
    alignment = fit_pose_alignment(reference, seen, driving[None], seen[None])
    assert alignment.scale == pytest.approx((2.0, 2.0)) and alignment.body_height["to"] == "ankles"
    assert np.allclose(alignment.apply(driving), reference)
    assert alignment.to_json()["scale"] == pytest.approx([2.0, 2.0]) and alignment.driving_frame == 0


def test_width_and_height_scale_separately_and_the_neck_lands_on_the_reference_neck():
    reference, seen = standing_pose(width=60, height=150, neck=(200, 40))
    driving, _ = standing_pose(width=30, height=100, neck=(50, 70))
    alignment = fit_pose_alignment(reference, seen, driving[None], seen[None])
    assert alignment.scale == pytest.approx((2.0, 1.5))
    aligned = alignment.apply(driving)
    assert np.allclose(aligned[INDEX["neck"]], reference[INDEX["neck"]])
    for name in ("left_shoulder", "right_ankle", "left_ankle"):
        assert np.allclose(aligned[INDEX[name]], reference[INDEX[name]]), name


def test_motion_is_kept_one_transform_for_all_frames():
    reference, seen = standing_pose()
    first, _ = standing_pose(width=20, height=60, neck=(10, 10))
    frames = np.stack([first + [step * 5.0, 0] for step in range(4)])  # walking right, 5 px a frame
    alignment = fit_pose_alignment(reference, seen, frames, np.tile(seen, (4, 1)))
    aligned = alignment.apply(frames)
    assert np.allclose(np.diff(aligned[:, INDEX["neck"], 0]), 10.0)  # 5 px at scale 2


def test_body_height_falls_back_to_knees_hips_then_the_nose():
    reference, seen = standing_pose()
    driving = reference * 0.5
    for hidden, end in ((("right_ankle",), "knees"), (("left_ankle", "right_knee"), "hips"),
                        (("left_ankle", "right_knee", "left_hip"), "nose")):
        partial = seen.copy()
        partial[[INDEX[name] for name in hidden]] = False
        alignment = fit_pose_alignment(reference, seen, driving[None], partial[None])
        assert alignment.body_height["to"] == end and alignment.scale == pytest.approx((2.0, 2.0)), end
    nothing_below = seen.copy()
    nothing_below[[INDEX[name] for name in ("nose", "right_hip", "right_knee", "right_ankle")]] = False
    alignment = fit_pose_alignment(reference, seen, (reference * [0.5, 0.25])[None], nothing_below[None])
    assert alignment.body_height is None and alignment.scale == pytest.approx((2.0, 2.0))  # the width's scale


def test_the_first_frame_with_both_shoulders_is_measured():
    reference, seen = standing_pose()
    frames = np.stack([reference * 0.25, reference * 0.5])
    visible = np.tile(seen, (2, 1))
    visible[0, INDEX["left_shoulder"]] = False
    alignment = fit_pose_alignment(reference, seen, frames, visible)
    assert alignment.driving_frame == 1 and alignment.scale == pytest.approx((2.0, 2.0))


def test_missing_shoulders_are_clear_errors():
    reference, seen = standing_pose()
    no_shoulder = seen.copy()
    no_shoulder[INDEX["right_shoulder"]] = False
    with pytest.raises(ValueError, match="reference person's shoulders"):
        fit_pose_alignment(reference, no_shoulder, reference[None], seen[None])
    with pytest.raises(ValueError, match="none of the 2 driving frames shows both shoulders"):
        fit_pose_alignment(reference, seen, np.stack([reference] * 2), np.stack([no_shoulder] * 2))


def test_the_inverse_affine_warps_a_map_with_the_skeleton():
    """PIL's AFFINE coefficients move a map as the transform moves the keypoints (the mask follows the skeleton)."""
    reference, seen = standing_pose(width=40, height=80, neck=(60, 30))
    driving, _ = standing_pose(width=20, height=40, neck=(20, 20))
    alignment = fit_pose_alignment(reference, seen, driving[None], seen[None])
    square = np.zeros((128, 128), np.uint8)
    square[18:23, 18:23] = 255  # around the driving neck (20, 20): pixels 18..22
    warped = np.asarray(Image.fromarray(square).transform((128, 128), Image.Transform.AFFINE,
                                                          alignment.inverse_affine(), Image.Resampling.NEAREST))
    rows, columns = np.nonzero(warped)
    centre = np.array([columns.mean() + 0.5, rows.mean() + 0.5])  # pixel centres at +0.5
    expected = alignment.apply(np.array([20.5, 20.5]))
    assert np.abs(centre - expected).max() <= 1.0
