"""Guidance from a video of a person: one video folder in Champ's layout, offline.

``OUTPUT/images/`` holds the driving frames (scaled to cover the output size and centre-cropped), ``dwpose/`` the
OpenPose-18 skeletons MediaPipe Pose finds in them, drawn exactly as SynthDance draws its ``dwpose`` maps,
``mask/`` the person (MediaPipe's segmentation, white on black), and ``meta.json`` where everything came from: the
source frame of every written frame, the frames without a person and what was done with them, the keypoints, and the
pose alignment to ``--reference`` when one was given (:mod:`.alignment`). The folder is written next to ``OUTPUT``
and renamed into place when complete, so a failed run leaves nothing.

Detection runs on the source frames at their own size (the keypoints and the mask are then mapped to the output
size), so a small output size does not cost detection quality. The reference image is stretched to the output size,
as the pipeline stretches it, and its keypoints with it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..arguments import atomic_output_dir, check_at_least, check_new_folder, read_image
from ..data.layout import IMAGE_EXTENSIONS, IMAGE_FOLDER, MASK_FOLDER, META_FILE, natural_key
from ..data.synthdance.openpose import KEYPOINT_NAMES
from ..data.synthdance.writer import PNG_COMPRESS_LEVEL, frame_file_name
from .alignment import PoseAlignment, fit_pose_alignment
from .detector import MEDIAPIPE_REQUIREMENT, MODEL_COMPLEXITY, PERSON_THRESHOLD, PoseDetector, import_mediapipe
from .keypoints import MIN_VISIBILITY, draw_skeleton

DWPOSE_FOLDER = "dwpose"
MISSING_POLICIES = ("skip", "keep-last")
GENERATOR = "referencelcm extract-guidance"


# -- sources ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FrameSource:
    """Where the driving frames come from: a video file (``fps`` its rate) or a folder of images (``fps`` ``None``).

    ``size`` is ``(width, height)`` of the (first) frame; ``num_frames`` the number of frames, or an estimate from the
    duration for a video whose container does not say.
    """

    path: Path
    flag: str
    size: tuple[int, int]
    num_frames: int | None
    fps: float | None = None
    files: tuple[str, ...] = ()

    def frames(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(source index, (H, W, 3) uint8 RGB)`` for every frame, in order."""
        if self.fps is None:
            for index, name in enumerate(self.files):
                yield index, np.asarray(read_image(self.flag, self.path / name))
            return
        import imageio.v3 as iio

        try:
            for index, frame in enumerate(iio.imiter(self.path, plugin="FFMPEG")):
                yield index, np.asarray(frame)[..., :3]
        except (OSError, RuntimeError, ValueError) as error:  # imageio / ffmpeg report a damaged stream so
            raise ValueError(f"{self.flag} {self.path}: could not read the video ({error}).") from error


def open_video(path: str | os.PathLike, flag: str = "--video") -> FrameSource:
    """A readable video file (any container ffmpeg reads): its size, rate and frame count, checked here."""
    import imageio.v3 as iio

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: no such file.")
    try:
        meta = iio.immeta(path, plugin="FFMPEG")
    except (OSError, RuntimeError, ValueError, IndexError) as error:
        raise ValueError(f"{flag} {path}: not a readable video ({error}).") from error
    fps, size = meta.get("fps"), meta.get("size")
    if not fps or not size or not all(size):
        raise ValueError(f"{flag} {path}: not a readable video (no frame rate or frame size: {meta}).")
    count = meta.get("nframes")
    if not isinstance(count, int) or count < 1:
        duration = meta.get("duration")
        count = max(1, round(duration * fps)) if duration and math.isfinite(duration) else None
    return FrameSource(path=path, flag=flag, size=(int(size[0]), int(size[1])), num_frames=count, fps=float(fps))


def open_frame_folder(path: str | os.PathLike, flag: str = "--frames") -> FrameSource:
    """A folder of image files (the frames, in natural order: ``2.png`` before ``10.png``)."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{flag} {path}: no such folder.")
    files = tuple(sorted((name for name in os.listdir(path)
                          if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS),
                         key=natural_key))
    if not files:
        raise FileNotFoundError(f"{flag} {path}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)}).")
    size = read_image(flag, path / files[0]).size
    return FrameSource(path=path, flag=flag, size=size, num_frames=len(files), files=files)


def sampled_frames(source: FrameSource, fps: float | None) -> Iterator[tuple[int, np.ndarray]]:
    """The source's frames resampled to ``fps`` (a video's frame ``i`` is kept when ``⌊i·fps / rate⌋`` moves on);
    every frame when ``fps`` is ``None`` or not below the video's rate."""
    keep_all = fps is None or source.fps is None or fps >= source.fps
    last_slot = -1
    for index, frame in source.frames():
        slot = index if keep_all else math.floor(index * fps / source.fps + 1e-9)
        if slot != last_slot:
            last_slot = slot
            yield index, frame


# -- geometry --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoverCrop:
    """Scale a ``source`` ``(W, H)`` frame to cover ``target`` ``(W, H)``, keeping its aspect ratio, then centre-crop:
    the resized size is ``resized`` and the crop's top-left corner ``(left, top)``."""

    source: tuple[int, int]
    target: tuple[int, int]

    @property
    def resized(self) -> tuple[int, int]:
        scale = max(self.target[0] / self.source[0], self.target[1] / self.source[1])
        return (max(self.target[0], round(self.source[0] * scale)), max(self.target[1], round(self.source[1] * scale)))

    @property
    def corner(self) -> tuple[int, int]:
        resized = self.resized
        return (resized[0] - self.target[0]) // 2, (resized[1] - self.target[1]) // 2

    def image(self, image: Image.Image, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
        """The frame (or map) resized and cropped to ``target``."""
        if self.source == self.target:
            return image
        left, top = self.corner
        resized = image.resize(self.resized, resample)
        return resized.crop((left, top, left + self.target[0], top + self.target[1]))

    def points(self, points: np.ndarray) -> np.ndarray:
        """Pixel coordinates ``(..., 2)`` in the source frame → in the output frame."""
        factor = np.array(self.resized, dtype=np.float64) / np.array(self.source, dtype=np.float64)
        return np.asarray(points, dtype=np.float64) * factor - np.array(self.corner, dtype=np.float64)


def person_mask(detection_mask: np.ndarray, crop: CoverCrop) -> np.ndarray:
    """MediaPipe's person probability ``(H_s, W_s)`` → the output ``mask`` map ``(H, W)`` uint8 (255 = person)."""
    probability = crop.image(Image.fromarray(detection_mask.astype(np.float32), mode="F"), Image.Resampling.BILINEAR)
    return np.where(np.asarray(probability) >= PERSON_THRESHOLD, 255, 0).astype(np.uint8)


# -- extraction ------------------------------------------------------------------------------------------------------


@dataclass
class ExtractionResult:
    """What :func:`extract_guidance` wrote.

    Attributes:
        output: the video folder.
        num_frames: frames written.
        source_frames: the source index of every written frame ``(num_frames,)``.
        no_person: source indices of the frames (after ``fps`` resampling) in which no person was found.
        kept_last: those of them written with the last pose found before them (``missing="keep-last"``).
        skipped: those of them left out (``missing="skip"``, or ``keep-last`` before any pose was found).
        fps: the written frames' rate (``None`` for a folder of frames).
        alignment: the pose alignment to the reference, or ``None``.
    """

    output: Path
    num_frames: int
    source_frames: list[int]
    no_person: list[int]
    kept_last: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    fps: float | None = None
    alignment: PoseAlignment | None = None

    def report(self) -> list[str]:
        """Lines for the user: what was written, and every frame without a person, by source index."""
        rate = f" at {self.fps:g} fps" if self.fps else ""
        lines = [f"wrote {self.num_frames} frames{rate} to {self.output}"]
        if self.kept_last:
            lines.append(f"no person found in {len(self.kept_last)} frame(s), which keep the last pose found: source "
                         f"frames {self.kept_last}")
        if self.skipped:
            lines.append(f"no person found in {len(self.skipped)} frame(s), left out: source frames {self.skipped}")
        if self.alignment is not None:
            scale, offset = self.alignment.scale, self.alignment.offset
            lines.append(f"pose aligned to the reference: scale ({scale[0]:.3f}, {scale[1]:.3f}), offset "
                         f"({offset[0]:.1f}, {offset[1]:.1f}) px")
        return lines


@dataclass
class _Track:
    """The running state of pass 1: the keypoints ``(18, 2)`` / visibility ``(18,)`` of every written frame."""

    keypoints: list[np.ndarray] = field(default_factory=list)
    visible: list[np.ndarray] = field(default_factory=list)
    source_frames: list[int] = field(default_factory=list)
    no_person: list[int] = field(default_factory=list)
    kept_last: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    last: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # keypoints, visible, mask


def check_extraction_arguments(
    video: str | os.PathLike | None, frames: str | os.PathLike | None, fps: float | None,
    size: Sequence[int] | None, missing: str,
) -> FrameSource:
    """Every check that reads no model: exactly one source, readable; ``--fps`` only for a video; a positive
    ``--size``; a known ``--missing``. Returns the opened source."""
    if (video is None) == (frames is None):
        raise ValueError("pass exactly one of --video (a video file) and --frames (a folder of frames).")
    if fps is not None:
        if frames is not None:
            raise ValueError("--fps resamples a --video; the frames of a --frames folder are taken as they are.")
        check_at_least("--fps", fps, 1)
    if size is not None:
        if len(size) != 2:
            raise ValueError(f"--size takes two numbers, W H; got {list(size)}.")
        for value in size:
            check_at_least("--size", value, 1)
    if missing not in MISSING_POLICIES:
        raise ValueError(f"--missing must be one of {MISSING_POLICIES}, got {missing!r}.")
    return open_video(video) if video is not None else open_frame_folder(frames)


def extract_guidance(
    output: str | os.PathLike,
    *,
    video: str | os.PathLike | None = None,
    frames: str | os.PathLike | None = None,
    reference: str | os.PathLike | None = None,
    fps: float | None = None,
    size: Sequence[int] | None = None,
    missing: str = "keep-last",
    overwrite: bool = False,
    progress: bool = True,
) -> ExtractionResult:
    """Write the guidance folder ``output`` for a video of a person (module docstring).

    Args:
        output: the video folder to create (Champ's layout: ``images/``, ``dwpose/``, ``mask/``, ``meta.json``).
        video: a video file (mp4, mov, …), or
        frames: a folder of image frames.
        reference: an image of the person to animate: the driving pose is aligned to theirs (:mod:`.alignment`).
        fps: resample ``video`` to this rate (default: every frame).
        size: ``(W, H)`` of the written frames (default: the source frames' size).
        missing: a frame without a person is left out (``"skip"``) or keeps the last pose found (``"keep-last"``;
            frames before the first pose are left out); either way it is reported and listed in ``meta.json``.
        overwrite: replace a non-empty ``output``.
        progress: show a progress bar over the frames.

    Errors name the command-line flags (``--video``, ``--frames``, ``--reference``, ``--output``, ...); nothing is
    written unless the whole folder is. Without MediaPipe a :class:`~referencelcm.arguments.MissingDependencyError`
    says what to install.
    """
    source = check_extraction_arguments(video, frames, fps, size, missing)
    output = check_new_folder("--output", output, overwrite)
    reference_image = read_image("--reference", reference) if reference is not None else None
    import_mediapipe()
    target = tuple(int(value) for value in size) if size is not None else source.size
    reference_pose = None if reference_image is None else detect_reference(reference_image, target, reference)

    with atomic_output_dir("--output", output, overwrite) as staging:
        for folder in (IMAGE_FOLDER, DWPOSE_FOLDER, MASK_FOLDER):
            (staging / folder).mkdir()
        track = _detect_frames(source, fps, target, missing, staging, progress)
        if not track.source_frames:
            raise ValueError(f"{source.flag} {source.path}: no person found in any of its "
                             f"{len(track.no_person)} frame(s).")
        keypoints, visible = np.stack(track.keypoints), np.stack(track.visible)
        alignment = None
        if reference_pose is not None:
            try:
                alignment = fit_pose_alignment(*reference_pose, keypoints, visible)
            except ValueError as error:
                raise ValueError(f"--reference {reference}: {error}") from error
            keypoints = alignment.apply(keypoints)
        _draw_skeletons(keypoints, visible, target, staging, alignment)
        rate = None if source.fps is None else min(float(fps or source.fps), source.fps)
        result = ExtractionResult(output=output, num_frames=len(track.source_frames),
                                  source_frames=track.source_frames, no_person=track.no_person,
                                  kept_last=track.kept_last, skipped=track.skipped, fps=rate, alignment=alignment)
        meta = _meta(source, result, target, missing, reference, keypoints, visible)
        (staging / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return result


def detect_reference(
    image: Image.Image, target: tuple[int, int], path: str | os.PathLike | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The reference person's keypoints ``(18, 2)`` in output pixels (the image stretched to ``target`` ``(W, H)``,
    as the pipeline stretches it) and their visibility ``(18,)``; an error naming ``--reference`` without a person."""
    with PoseDetector(video=False) as detector:
        detection = detector(np.asarray(image.convert("RGB")))
    if detection is None:
        raise ValueError(f"--reference {path}: no person found in the image.")
    stretch = np.array(target, dtype=np.float64) / np.array(image.size, dtype=np.float64)
    return detection.keypoints * stretch, detection.visible


def _detect_frames(
    source: FrameSource, fps: float | None, target: tuple[int, int], missing: str, staging: Path, progress: bool
) -> _Track:
    """Pass 1: every sampled frame → ``images/`` and ``mask/`` (or left out), its keypoints kept in memory."""
    track = _Track()
    expected = source.num_frames
    if expected is not None and fps is not None and source.fps is not None and fps < source.fps:
        expected = math.ceil(expected * fps / source.fps)
    with PoseDetector(video=True) as detector, tqdm(total=expected, unit="frame", desc="extract-guidance",
                                                    disable=not progress) as bar:
        for index, frame in sampled_frames(source, fps):
            crop = CoverCrop((frame.shape[1], frame.shape[0]), target)
            detection = detector(frame)
            if detection is None:
                track.no_person.append(index)
                if missing == "skip" or track.last is None:
                    track.skipped.append(index)
                    bar.update(1)
                    continue
                track.kept_last.append(index)
                keypoints, visible, mask = track.last
            else:
                keypoints, visible, mask = crop.points(detection.keypoints), detection.visible, person_mask(
                    detection.mask, crop)
                track.last = keypoints, visible, mask
            name = frame_file_name(len(track.source_frames), max(expected or 0, len(track.source_frames) + 1))
            _save_png(np.asarray(crop.image(Image.fromarray(frame))), staging / IMAGE_FOLDER / name)
            _save_png(mask, staging / MASK_FOLDER / name)
            track.keypoints.append(keypoints)
            track.visible.append(visible)
            track.source_frames.append(index)
            bar.update(1)
    return track


def _draw_skeletons(
    keypoints: np.ndarray, visible: np.ndarray, target: tuple[int, int], staging: Path,
    alignment: PoseAlignment | None,
) -> None:
    """Pass 2: the skeletons ``(F, 18, 2)`` into ``dwpose/``; with an alignment the masks follow the skeletons."""
    width, height = target
    for name, frame_keypoints, frame_visible in zip(sorted(os.listdir(staging / IMAGE_FOLDER), key=natural_key),
                                                    keypoints, visible):
        _save_png(draw_skeleton(frame_keypoints, frame_visible, height, width), staging / DWPOSE_FOLDER / name)
        if alignment is not None:
            mask = Image.open(staging / MASK_FOLDER / name)
            mask.load()
            _save_png(np.asarray(mask.transform(mask.size, Image.Transform.AFFINE, alignment.inverse_affine(),
                                                Image.Resampling.NEAREST)), staging / MASK_FOLDER / name)


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def _meta(
    source: FrameSource, result: ExtractionResult, target: tuple[int, int], missing: str,
    reference: str | os.PathLike | None, keypoints: np.ndarray, visible: np.ndarray,
) -> dict:
    """``meta.json``: the source, every written frame's source index, the frames without a person, the keypoints
    (after alignment) and the alignment."""
    return {
        "generator": GENERATOR,
        "source": {"video" if source.fps is not None else "frames": str(source.path), "size": list(source.size),
                   "fps": source.fps},
        "size": list(target),
        "fps": result.fps,
        "num_frames": result.num_frames,
        "source_frames": result.source_frames,
        "missing": {"policy": missing, "no_person": result.no_person, "kept_last": result.kept_last,
                    "skipped": result.skipped},
        "detector": {"model": f"{MEDIAPIPE_REQUIREMENT} pose, model_complexity {MODEL_COMPLEXITY}",
                     "min_visibility": MIN_VISIBILITY, "person_threshold": PERSON_THRESHOLD},
        "reference": None if reference is None else str(reference),
        "alignment": None if result.alignment is None else result.alignment.to_json(),
        "openpose_keypoints": {
            "format": "per written frame, 18 OpenPose keypoints [x, y, visible] in output pixels",
            "frames": [[[round(float(x), 2), round(float(y), 2), int(seen)] for (x, y), seen in zip(points, flags)]
                       for points, flags in zip(keypoints, visible)],
        },
    }


def read_keypoints(meta: dict) -> tuple[np.ndarray, np.ndarray]:
    """The keypoints ``(F, 18, 2)`` and visibility ``(F, 18)`` bool stored in an extracted folder's ``meta.json``."""
    frames = np.asarray(meta["openpose_keypoints"]["frames"], dtype=np.float64).reshape(-1, len(KEYPOINT_NAMES), 3)
    return frames[..., :2], frames[..., 2] > 0
