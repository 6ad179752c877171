"""MediaPipe's 33 landmarks → OpenPose 18, and the skeleton drawing against SynthDance's own ``dwpose`` maps."""

from __future__ import annotations

import numpy as np
import pytest

from referencelcm.data.synthdance import pose_video, render_video, sample_video_spec
from referencelcm.data.synthdance.body import PART_NAMES, build_parts
from referencelcm.data.synthdance.openpose import KEYPOINT_NAMES, openpose_keypoints
from referencelcm.data.synthdance.renderer import FRAMINGS, Camera
from referencelcm.extract.keypoints import (
    MEDIAPIPE_LANDMARKS,
    OPENPOSE_FROM_MEDIAPIPE,
    draw_skeleton,
    mediapipe_to_openpose,
)

# OpenPose-18 ← MediaPipe index, written out by hand from both documentations (-1: the neck, which MediaPipe lacks).
EXPECTED_SOURCES = [0, -1, 12, 14, 16, 11, 13, 15, 24, 26, 28, 23, 25, 27, 5, 2, 8, 7]


def synthdance_skeletons(resolution: int, num_frames: int = 6, seed: int = 0):
    """SynthDance's OpenPose keypoints of one test video in pixels ``(F, 18, 2)``, their visibility ``(F, 18)`` and
    the ``dwpose`` maps its renderer draws from them ``(F, H, W, 3)``."""
    spec = sample_video_spec(seed, 0, num_frames, resolution, split="test")
    poses, zoom, pan = pose_video(spec)
    head = build_parts(spec.identity.shape)[PART_NAMES.index("head")]
    points, visible = openpose_keypoints(poses, spec.identity.shape, np.asarray(head.center))
    keypoints = Camera(resolution, **FRAMINGS[spec.version]).to_pixels(points, zoom, pan)[..., :2]
    return keypoints, visible, render_video(spec)["dwpose"]


def mediapipe_landmarks_from(keypoints: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A MediaPipe landmark set ``(33, 2)`` / visibility ``(33,)`` holding these OpenPose keypoints where MediaPipe has
    them, and far-away unseen points elsewhere."""
    landmarks = np.full((len(MEDIAPIPE_LANDMARKS), 2), -1000.0)
    visibility = np.zeros(len(MEDIAPIPE_LANDMARKS))
    for openpose_index, source in enumerate(EXPECTED_SOURCES):
        if source >= 0:
            landmarks[source], visibility[source] = keypoints[openpose_index], 0.9 if visible[openpose_index] else 0.1
    return landmarks, visibility


def test_the_mapping_is_the_documented_one():
    assert OPENPOSE_FROM_MEDIAPIPE.tolist() == EXPECTED_SOURCES
    for openpose_index, source in enumerate(EXPECTED_SOURCES):
        if source >= 0:
            assert MEDIAPIPE_LANDMARKS[source] == KEYPOINT_NAMES[openpose_index]


def test_a_known_landmark_set():
    """MediaPipe's landmarks of the astronaut photograph (rounded pixels): each OpenPose point is its namesake, the
    neck the shoulders' midpoint, and only landmarks seen enough are visible."""
    landmarks = np.array([
        (223, 128), (241, 111), (249, 112), (256, 114), (214, 106), (205, 103), (197, 102), (268, 123), (190, 107),
        (234, 154), (206, 148), (306, 257), (113, 240), (323, 375), (65, 414), (326, 461), (135, 477), (331, 496),
        (159, 524), (325, 485), (173, 504), (318, 471), (170, 487), (242, 502), (128, 531), (245, 739), (130, 742),
        (237, 919), (127, 924), (237, 946), (122, 953), (222, 985), (144, 982),
    ], dtype=float)  # fmt: skip
    visibility = np.array([1.0] * 13 + [0.33, 0.76, 0.13, 0.32] + [0.2] * 16)
    keypoints, visible = mediapipe_to_openpose(landmarks, visibility)
    named = dict(zip(KEYPOINT_NAMES, keypoints.tolist()))
    assert named["nose"] == [223, 128] and named["right_shoulder"] == [113, 240]
    assert named["left_shoulder"] == [306, 257]
    assert named["neck"] == [209.5, 248.5] and named["right_eye"] == [205, 103] and named["left_ear"] == [268, 123]
    assert named["right_elbow"] == [65, 414] and named["left_ankle"] == [237, 919]
    assert [name for name, seen in zip(KEYPOINT_NAMES, visible) if seen] == [
        "nose", "neck", "right_shoulder", "right_elbow", "left_shoulder", "right_eye", "left_eye", "right_ear",
        "left_ear"]


def test_the_neck_needs_both_shoulders_and_batches_map_alike():
    landmarks = np.random.default_rng(0).uniform(0, 100, (3, len(MEDIAPIPE_LANDMARKS), 2))
    visibility = np.ones((3, len(MEDIAPIPE_LANDMARKS)))
    visibility[1, MEDIAPIPE_LANDMARKS.index("left_shoulder")] = 0.2
    keypoints, visible = mediapipe_to_openpose(landmarks, visibility)
    assert keypoints.shape == (3, 18, 2) and visible.shape == (3, 18)
    neck = KEYPOINT_NAMES.index("neck")
    assert visible[0, neck] and not visible[1, neck]
    for frame in range(3):
        single = mediapipe_to_openpose(landmarks[frame], visibility[frame])
        assert np.array_equal(single[0], keypoints[frame]) and np.array_equal(single[1], visible[frame])
    with pytest.raises(ValueError, match="\\(\\.\\.\\., 33, 2\\)"):
        mediapipe_to_openpose(landmarks[..., :17, :], visibility[..., :17])


@pytest.mark.parametrize("resolution", [48, 64, 200])
def test_skeletons_are_drawn_exactly_as_synthdance_draws_them(resolution):
    """The same keypoints give pixel-equal maps, through the MediaPipe mapping too (SynthDance's neck is also the
    shoulders' midpoint), at sizes with different line widths."""
    keypoints, visible, dwpose = synthdance_skeletons(resolution)
    for frame in range(len(dwpose)):
        assert np.array_equal(draw_skeleton(keypoints[frame], visible[frame], resolution, resolution), dwpose[frame])
        mapped = mediapipe_to_openpose(*mediapipe_landmarks_from(keypoints[frame], visible[frame]))
        assert np.allclose(mapped[0][visible[frame]], keypoints[frame][visible[frame]])
        assert np.array_equal(mapped[1], visible[frame])
        assert np.array_equal(draw_skeleton(*mapped, resolution, resolution), dwpose[frame])


def test_a_frontal_synthdance_body_has_its_right_side_on_the_image_left():
    """Side conventions agree: MediaPipe's "right" is the person's right, which a person facing the camera shows on
    the image's left, as SynthDance's first frame (facing the camera) does."""
    keypoints, visible, _ = synthdance_skeletons(64, num_frames=1)
    right, left = KEYPOINT_NAMES.index("right_shoulder"), KEYPOINT_NAMES.index("left_shoulder")
    assert visible[0, KEYPOINT_NAMES.index("nose")] and keypoints[0, right, 0] < keypoints[0, left, 0]
