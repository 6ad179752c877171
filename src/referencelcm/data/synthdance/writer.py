"""SynthDance videos: deterministic specs, in-memory rendering, and a writer for Champ's on-disk layout.

``ROOT/<video_id>/{images,depth,normal,semantic_map,dwpose,mask}/0000.png …``, ``ROOT/<video_id>/meta.json`` and
``ROOT/index.json``. Every video is written into a hidden temporary folder and renamed into place once complete (its
``meta.json`` included), so an interrupted run never leaves a half-written video that looks complete; re-running the
same command skips the videos already complete and identical.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..layout import INDEX_FILE, META_FILE
from .appearance import SPLITS, Appearance, Background, Identity, Lighting, clothing_pairs
from .body import BodyPoses, BodyShape, forward_kinematics
from .motion import Motion
from .renderer import MAP_NAMES, SynthDanceRenderer

FORMAT_VERSION = 1
DEFAULT_FPS = 24
PNG_COMPRESS_LEVEL = 1  # fast; PNG stays lossless and byte-deterministic
_SPLIT_CODES = {"train": 0, "test": 1}
_TEMPORARY_PREFIX = ".tmp-"


@dataclass(frozen=True)
class VideoSpec:
    """Everything that determines one SynthDance video; ``meta.json`` is its JSON form."""

    video_id: str
    split: str
    index: int
    dataset_seed: int
    identity: Identity
    identity_seed: int
    motion_seed: int
    background: Background
    lighting: Lighting
    num_frames: int
    resolution: int
    fps: int

    def to_json(self) -> dict:
        """``meta.json`` content (identity, motion seed, fps, scene and frame count)."""
        return {
            "generator": "synthdance",
            "format_version": FORMAT_VERSION,
            "video_id": self.video_id,
            "split": self.split,
            "index": self.index,
            "dataset_seed": self.dataset_seed,
            "identity": self.identity.to_json(),
            "identity_seed": self.identity_seed,
            "motion_seed": self.motion_seed,
            "motion": Motion.sample(self.motion_seed).summary,
            "background": asdict(self.background),
            "lighting": asdict(self.lighting),
            "num_frames": self.num_frames,
            "resolution": self.resolution,
            "fps": self.fps,
        }


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}.")
    return int(value)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    return split


def sample_video_spec(
    seed: int, index: int, num_frames: int, resolution: int, split: str = "train", fps: int = DEFAULT_FPS
) -> VideoSpec:
    """The spec of video ``index`` of the dataset drawn with ``seed`` for ``split`` (pure function of its arguments).

    Outfit colours: the split's (shirt, pants) pairs in an order shuffled by ``seed``, one pair per video, so the videos
    of one dataset (up to the number of pairs, 120) all wear different outfits.
    """
    _check_split(split)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"`seed` must be a non-negative integer, got {seed!r}.")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
        raise ValueError(f"`index` must be a non-negative integer, got {index!r}.")
    num_frames, resolution, fps = (_check_positive_int(name, value) for name, value in
                                   (("num_frames", num_frames), ("resolution", resolution), ("fps", fps)))
    pairs = clothing_pairs(split)
    order = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split]])).permutation(len(pairs))
    shirt, pants = pairs[order[index % len(pairs)]]
    identity_seed, motion_seed, scene_seed = (
        int(state) for state in np.random.SeedSequence([seed, _SPLIT_CODES[split], index]).generate_state(3)
    )
    identity_rng = np.random.default_rng(identity_seed)
    identity = Identity(
        identity_id=f"{split}-{seed}-{index}",
        shape=BodyShape.sample(identity_rng),
        appearance=Appearance.sample(identity_rng, shirt, pants),
    )
    scene_rng = np.random.default_rng(scene_seed)
    return VideoSpec(
        video_id=f"{split}_{index:05d}",
        split=split,
        index=int(index),
        dataset_seed=int(seed),
        identity=identity,
        identity_seed=identity_seed,
        motion_seed=motion_seed,
        background=Background.sample(scene_rng),
        lighting=Lighting.sample(scene_rng),
        num_frames=num_frames,
        resolution=resolution,
        fps=fps,
    )


def pose_video(spec: VideoSpec) -> tuple[BodyPoses, np.ndarray, np.ndarray]:
    """The body's world pose per frame and the camera path: ``(poses (T, J, ...), zoom (T,), pan (T,))``."""
    motion = Motion.sample(spec.motion_seed)
    frames = motion.evaluate(np.arange(spec.num_frames) / spec.fps)
    poses = forward_kinematics(spec.identity.shape, frames.local_rotations, frames.root_rotation, frames.root_position)
    return poses, frames.zoom, frames.pan


def render_frames(spec: VideoSpec) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{map name: (H, W, 3) uint8}`` for each of the spec's frames, for all six ``MAP_NAMES``."""
    poses, zoom, pan = pose_video(spec)
    renderer = SynthDanceRenderer(spec.identity, spec.background, spec.lighting, spec.resolution)
    yield from renderer.render(poses, zoom, pan)


def render_video(spec: VideoSpec) -> dict[str, np.ndarray]:
    """Renders a whole video in memory: ``{map name: (F, H, W, 3) uint8}``."""
    frames = list(render_frames(spec))
    return {name: np.stack([frame[name] for frame in frames]) for name in MAP_NAMES}


def frame_file_name(frame: int, num_frames: int) -> str:
    """``0000.png`` style names, zero-padded to at least 4 digits (more when ``num_frames`` needs it)."""
    return f"{frame:0{max(4, len(str(num_frames - 1)))}d}.png"


def _write_json(path: Path, content: dict) -> None:
    temporary = path.with_name(f"{_TEMPORARY_PREFIX}{path.name}")
    temporary.write_text(json.dumps(content, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temporary, path)


def _is_complete(video_dir: Path, meta: dict) -> bool:
    meta_path = video_dir / META_FILE
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")) == json.loads(json.dumps(meta))
    except (OSError, json.JSONDecodeError):
        return False


def write_video(spec: VideoSpec, root: Path, progress_bar: tqdm | None = None) -> Path:
    """Renders ``spec`` into ``root/<video_id>`` through a temporary folder renamed into place when complete."""
    final = root / spec.video_id
    temporary = root / f"{_TEMPORARY_PREFIX}{spec.video_id}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    for name in MAP_NAMES:
        (temporary / name).mkdir(parents=True)
    for frame, maps in enumerate(render_frames(spec)):
        file_name = frame_file_name(frame, spec.num_frames)
        for name in MAP_NAMES:
            Image.fromarray(maps[name]).save(temporary / name / file_name, format="PNG",
                                             compress_level=PNG_COMPRESS_LEVEL)
        if progress_bar is not None:
            progress_bar.update(1)
    _write_json(temporary / META_FILE, spec.to_json())
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for stale in root.glob(f"{_TEMPORARY_PREFIX}{spec.video_id}-*"):  # left by interrupted runs
        shutil.rmtree(stale, ignore_errors=True)
    return final


def generate_dataset(
    output_dir: str | os.PathLike,
    num_videos: int,
    num_frames: int,
    resolution: int,
    seed: int,
    split: str = "train",
    progress: bool = True,
    fps: int = DEFAULT_FPS,
) -> Path:
    """Writes a SynthDance dataset in Champ's layout and returns its root.

    Args:
        output_dir: the root; created if needed. Videos already there with identical ``meta.json`` are kept.
        num_videos: number of videos, ``ROOT/<split>_00000`` … (one identity each).
        num_frames: frames per video.
        resolution: square frame size in pixels.
        seed: dataset seed; the same arguments give byte-identical files.
        split: ``"train"`` or ``"test"``; the two draw disjoint identities (outfits).
        progress: show a tqdm bar over frames.
        fps: frame rate of the motion (frames per second of simulated time), stored in ``meta.json``.

    Returns:
        The root ``Path``, containing ``index.json``.
    """
    num_videos = _check_positive_int("num_videos", num_videos)
    num_frames = _check_positive_int("num_frames", num_frames)
    resolution = _check_positive_int("resolution", resolution)
    if resolution < 16:
        raise ValueError(f"`resolution` must be at least 16 pixels, got {resolution}.")
    _check_split(split)
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"`output_dir` must be a directory, got the file {str(root)!r}.")
    root.mkdir(parents=True, exist_ok=True)
    specs = [sample_video_spec(seed, index, num_frames, resolution, split, fps) for index in range(num_videos)]
    with tqdm(total=num_videos * num_frames, unit="frame", desc=f"synthdance {split}", disable=not progress) as bar:
        for spec in specs:
            if _is_complete(root / spec.video_id, spec.to_json()):
                bar.update(num_frames)
                continue
            write_video(spec, root, bar)
    index = {
        "generator": "synthdance",
        "format_version": FORMAT_VERSION,
        "split": split,
        "seed": int(seed),
        "num_frames": num_frames,
        "resolution": resolution,
        "fps": fps,
        "folders": list(MAP_NAMES),
        "videos": [
            {"video_id": spec.video_id, "identity_id": spec.identity.identity_id, "num_frames": num_frames}
            for spec in specs
        ],
    }
    _write_json(root / INDEX_FILE, index)
    return root
