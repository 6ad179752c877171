"""The person detector: MediaPipe Pose (``model_complexity=1``) with its person segmentation, fully offline.

``mediapipe==0.10.21`` ships the models this uses (pose detection, the full pose landmark model, segmentation) inside
its wheel, so nothing is downloaded at run time. Its package metadata pins ``numpy<2`` and pulls ``jax``, neither of
which the pose solution needs, so it is installed without its dependencies, next to the ones it does need
(:data:`INSTALL_COMMAND`; ``setup.py``'s ``extract`` extra lists the same).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..arguments import MissingDependencyError
from .keypoints import MEDIAPIPE_LANDMARKS, mediapipe_to_openpose

MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.21"
MEDIAPIPE_DEPENDENCIES = ("opencv-python-headless", "absl-py", "attrs", "flatbuffers", "protobuf<5")
INSTALL_COMMAND = (f"pip install {' '.join(repr(name) if '<' in name else name for name in MEDIAPIPE_DEPENDENCIES)}"
                   f" && pip install --no-deps {MEDIAPIPE_REQUIREMENT}").replace("'", '"')
MODEL_COMPLEXITY = 1  # the landmark model inside the wheel (0 and 2 are downloaded on first use)
_WARM_UP_SIZE = 64
PERSON_THRESHOLD = 0.5  # segmentation probability from which a pixel is the person
# MediaPipe's native start-up notices (TensorFlow Lite's delegate, absl's pre-init INFO / WARNING lines): nothing a user
# can act on. Errors (absl's E / F lines) and anything else are passed on.
_NATIVE_NOTICE = re.compile(r"^(INFO: |WARNING: All log messages before absl::InitializeLog|[IW]\d{4} \d\d:\d\d:)")


def import_mediapipe():
    """The ``mediapipe`` module with its pose solution, or :class:`MissingDependencyError` saying what to install."""
    try:
        import mediapipe
        solutions = mediapipe.solutions
        solutions.pose, solutions.selfie_segmentation  # noqa: B018  (present in the wheels that ship the models)
    except (ImportError, AttributeError) as error:
        raise MissingDependencyError(
            f"extracting guidance from a video needs {MEDIAPIPE_REQUIREMENT} (its pose and segmentation models come "
            f"inside the wheel: nothing is downloaded at run time); install it with: {INSTALL_COMMAND}  "
            f"({type(error).__name__}: {error})") from error
    return mediapipe


@dataclass(frozen=True)
class PoseDetection:
    """One person found in one frame ``(H, W, 3)``.

    Attributes:
        keypoints: ``(18, 2)`` OpenPose keypoints (x, y) in the frame's pixels, pixel centres at ``+0.5``.
        visible: ``(18,)`` bool.
        mask: ``(H, W)`` float32 in ``[0, 1]``: the probability that a pixel belongs to the person.
    """

    keypoints: np.ndarray
    visible: np.ndarray
    mask: np.ndarray


class PoseDetector:
    """MediaPipe Pose on RGB frames; a context manager (closes the graph).

    Args:
        video: frames of one video, in order (MediaPipe tracks the person from frame to frame and smooths the
            landmarks and the mask); ``False`` treats every call as an unrelated photograph.
    """

    def __init__(self, video: bool):
        mediapipe = import_mediapipe()
        with quiet_native_logs():
            self._pose = mediapipe.solutions.pose.Pose(
                static_image_mode=not video, model_complexity=MODEL_COMPLEXITY, enable_segmentation=True,
                smooth_landmarks=video, smooth_segmentation=video,
            )
            # The graph loads its models in its own threads once started; one empty frame waits for that here.
            self._pose.process(np.zeros((_WARM_UP_SIZE, _WARM_UP_SIZE, 3), np.uint8))

    def __enter__(self) -> "PoseDetector":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        with quiet_native_logs():
            self._pose.close()

    def __call__(self, frame: np.ndarray) -> PoseDetection | None:
        """The person in ``frame`` ``(H, W, 3)`` uint8 RGB, or ``None`` when no person is found."""
        height, width = frame.shape[:2]
        with quiet_native_logs():
            result = self._pose.process(np.ascontiguousarray(frame))
        if result.pose_landmarks is None:
            return None
        landmarks = result.pose_landmarks.landmark
        if len(landmarks) != len(MEDIAPIPE_LANDMARKS):
            raise ValueError(f"MediaPipe returned {len(landmarks)} pose landmarks, expected "
                             f"{len(MEDIAPIPE_LANDMARKS)}.")
        positions = np.array([(point.x * width, point.y * height) for point in landmarks])  # normalised → pixels
        keypoints, visible = mediapipe_to_openpose(positions, np.array([point.visibility for point in landmarks]))
        mask = result.segmentation_mask
        mask = np.zeros((height, width), np.float32) if mask is None else np.asarray(mask, dtype=np.float32)
        return PoseDetection(keypoints=keypoints, visible=visible, mask=mask)


@contextlib.contextmanager
def quiet_native_logs() -> Iterator[None]:
    """Hold back MediaPipe's native start-up notices, which its C++ threads write straight to file descriptor 2.

    While the block runs, descriptor 2 points at a temporary file; afterwards every captured line but the notices
    (:data:`_NATIVE_NOTICE`) is written to stderr, so real errors still show. Without a real descriptor 2 (an
    embedding host) the block runs as it is.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [line for line in captured.read().decode(errors="replace").splitlines()
                    if not _NATIVE_NOTICE.match(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr)

