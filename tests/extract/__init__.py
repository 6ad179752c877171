"""Tests of :mod:`referencelcm.extract`; helpers shared with the ``animate --video`` tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

requires_mediapipe = pytest.mark.skipif(
    importlib.util.find_spec("mediapipe") is None or importlib.util.find_spec("skimage") is None,
    reason="mediapipe or scikit-image is not installed: pip install -e \".[test]\" && pip install --no-deps "
           "mediapipe==0.10.21 (.ci/run installs both)",
)
DRIVING_SCALE = 0.8  # the astronaut's size in the driving frames, relative to the reference photograph
DRIVING_SHIFTS = (25, 50, 75)  # her left edge in the driving frames, px (she stands on the bottom edge)
BACKGROUND = 200
# Hand-placed boxes (x0, y0, x1, y1) in skimage.data.astronaut() (512 x 512): her face, and the region of her shoulders.
FACE_BOX = (170, 60, 280, 190)
SHOULDER_BOX = (40, 190, 360, 320)


def astronaut() -> np.ndarray:
    """``skimage.data.astronaut()``: a photograph of a person, ``(512, 512, 3)`` uint8."""
    from skimage.data import astronaut as photograph

    return photograph()


def driving_frame(shift: int, scale: float = DRIVING_SCALE) -> np.ndarray:
    """The astronaut scaled by ``scale`` on a grey 512 × 512 canvas, standing on its bottom edge, ``shift`` px from
    its left: ``(512, 512, 3)`` uint8."""
    photograph = astronaut()
    size = round(photograph.shape[0] * scale)
    small = np.asarray(Image.fromarray(photograph).resize((size, size), Image.Resampling.BICUBIC))
    canvas = np.full_like(photograph, BACKGROUND)
    canvas[canvas.shape[0] - size:, shift:shift + size] = small[:, :canvas.shape[1] - shift]
    return canvas


def to_driving(points: np.ndarray, shift: int, scale: float = DRIVING_SCALE) -> np.ndarray:
    """Pixel coordinates ``(..., 2)`` in the photograph → in :func:`driving_frame` ``(..., 2)``."""
    size = round(astronaut().shape[0] * scale)
    return np.asarray(points) * (size / astronaut().shape[0]) + np.array([shift, astronaut().shape[0] - size])


def write_driving_video(path: Path, shifts=DRIVING_SHIFTS, fps: int = 10, blank_at: int | None = None) -> Path:
    """An mp4 of :func:`driving_frame` per shift (a grey frame without a person inserted at ``blank_at``)."""
    import imageio

    frames = [driving_frame(shift) for shift in shifts]
    if blank_at is not None:
        frames.insert(blank_at, np.full_like(frames[0], BACKGROUND))
    with imageio.get_writer(path, fps=fps) as writer:
        for frame in frames:
            writer.append_data(frame)
    return path


def inside(point: np.ndarray, box: tuple[float, float, float, float]) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]
