"""SynthDance videos: deterministic specs, in-memory rendering, and a writer for Champ's on-disk layout.

``ROOT/<video_id>/{images,depth,normal,semantic_map,dwpose,mask}/0000.png …``, ``ROOT/<video_id>/meta.json`` and
``ROOT/index.json``.

The ``reenact`` split (:func:`sample_reenact_spec`) pairs the test identities of a seed for cross-identity
reenactment: pair ``i`` is motion video ``A = test i`` animated in the appearance of identity ``B = test (i + 1) mod N``.
Its ``images`` are the ground truth (A's motion on A's body, in B's outfit, textures, skin, hair, light and
background), the guidance maps and ``mask`` are A's (they do not depend on appearance), ``reference/`` holds B's own
video frames (where references come from) and ``original/`` A's own frames (what the output would be if it ignored
the reference). Every video is written into a hidden temporary folder and renamed into place once complete (its
``meta.json`` included), so an interrupted run never leaves a half-written video that looks complete; re-running the
same command skips the videos already complete and identical.

``dances > 1`` (train and test splits) makes each video a compilation: the identity dances ``dances`` different
motions in a row, in the same scene, cut between them (:func:`dance_specs`; ``meta.json`` ``dances`` lists where each
starts). Intra-source references then often show the person in another dance than the target, as a user's reference
photo does; image-stage training only, since a clip would cross the cut (the training dataset refuses such videos
for clips).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, replace
from itertools import chain
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ...arguments import write_text_atomically
from ..layout import DANCES_KEY, INDEX_FILE, META_FILE
from .appearance import SPLITS, Appearance, Background, Identity, Lighting, clothing_pairs
from .body import BodyPoses, BodyShape, forward_kinematics
from .motion import Motion
from .renderer import FRAMINGS, MAP_NAMES, SynthDanceRenderer

FORMAT_VERSION = 2  # what new datasets are written as; every version in FORMAT_VERSIONS stays reproducible
FORMAT_VERSIONS = tuple(sorted(FRAMINGS))
DEFAULT_FPS = 24
PNG_COMPRESS_LEVEL = 1  # fast; PNG stays lossless and byte-deterministic
_SPLIT_CODES = {"train": 0, "test": 1}
_TEMPORARY_PREFIX = ".tmp-"
REENACT_SPLIT = "reenact"
DATASET_SPLITS = (*SPLITS, REENACT_SPLIT)
REFERENCE_FOLDER = "reference"  # reenact: B's own video frames, where references are taken from
ORIGINAL_FOLDER = "original"  # reenact: A's own video frames (A's appearance)
_REENACT_IDENTITY_SPLIT = "test"  # reenactment pairs identities unseen in training
DANCE_SEED_STRIDE = 7919  # motion seed of dance d of a compilation: the video's own motion seed + d × this


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
    version: int = FORMAT_VERSION

    def to_json(self) -> dict:
        """``meta.json`` content (identity, motion seed, fps, scene and frame count)."""
        return {
            "generator": "synthdance",
            "format_version": self.version,
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


def _check_version(version: int) -> int:
    if isinstance(version, bool) or version not in FORMAT_VERSIONS:
        raise ValueError(f"`version` must be one of {FORMAT_VERSIONS} (the SynthDance format), got {version!r}.")
    return version


def _check_split(split: str, allowed: tuple[str, ...] = SPLITS) -> str:
    if split not in allowed:
        raise ValueError(f"`split` must be one of {allowed}, got {split!r}.")
    return split


def sample_video_spec(
    seed: int,
    index: int,
    num_frames: int,
    resolution: int,
    split: str = "train",
    fps: int = DEFAULT_FPS,
    version: int = FORMAT_VERSION,
) -> VideoSpec:
    """The spec of video ``index`` of the dataset drawn with ``seed`` for ``split`` (pure function of its arguments).

    Outfit colours: the split's (shirt, pants) pairs in an order shuffled by ``seed``, one pair per video, so the videos
    of one dataset (up to the number of pairs, 120) all wear different outfits. ``version`` (one of
    ``FORMAT_VERSIONS``) only sets the camera's framing: the same arguments draw the same identities and motions.
    """
    _check_split(split)
    _check_version(version)
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
        version=version,
    )


@dataclass(frozen=True)
class ReenactSpec:
    """One cross-identity reenactment pair: ``motion`` (video A) animated in the look of ``appearance`` (video B).

    ``ground_truth`` is the video A's motion and body make in B's appearance, light and background; its ``video_id``
    is ``pair_id``.
    """

    pair_id: str
    index: int
    motion: VideoSpec
    appearance: VideoSpec

    @property
    def ground_truth(self) -> VideoSpec:
        """A's motion, body shape, camera path and frame count; B's appearance, background and lighting."""
        motion, appearance = self.motion, self.appearance
        identity = Identity(
            identity_id=appearance.identity.identity_id,
            shape=motion.identity.shape,
            appearance=appearance.identity.appearance,
        )
        return replace(
            motion, video_id=self.pair_id, split=REENACT_SPLIT, identity=identity,
            background=appearance.background, lighting=appearance.lighting,
        )

    def to_json(self) -> dict:
        """``meta.json`` content: the ground truth's spec plus the pairing (``reenact``)."""
        return {
            **self.ground_truth.to_json(),
            "reenact": {
                "motion_video": self.motion.video_id,
                "motion_identity_id": self.motion.identity.identity_id,
                "appearance_video": self.appearance.video_id,
                "appearance_identity_id": self.appearance.identity.identity_id,
                "identity_split": _REENACT_IDENTITY_SPLIT,
                "reference_folder": REFERENCE_FOLDER,
                "original_folder": ORIGINAL_FOLDER,
            },
        }


def sample_reenact_spec(
    seed: int,
    index: int,
    num_pairs: int,
    num_frames: int,
    resolution: int,
    fps: int = DEFAULT_FPS,
    version: int = FORMAT_VERSION,
) -> ReenactSpec:
    """Pair ``index`` of the reenactment split of ``seed`` with ``num_pairs`` pairs (pure function of its arguments).

    Motion video ``A`` is test video ``index`` of ``seed`` (the same spec ``--split test --seed seed`` writes as
    ``test_<index>``), appearance ``B`` is test video ``(index + 1) mod num_pairs``: every identity of the first
    ``num_pairs`` test identities lends its appearance exactly once, never to its own motion.
    """
    num_pairs = _check_positive_int("num_pairs", num_pairs)
    if num_pairs < 2:
        raise ValueError(f"`num_pairs` must be at least 2 (each pair needs two identities), got {num_pairs}.")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < num_pairs:
        raise ValueError(f"`index` must be an integer in [0, {num_pairs}), got {index!r}.")
    motion = sample_video_spec(seed, index, num_frames, resolution, _REENACT_IDENTITY_SPLIT, fps, version)
    appearance = sample_video_spec(seed, (index + 1) % num_pairs, num_frames, resolution, _REENACT_IDENTITY_SPLIT, fps,
                                   version)
    return ReenactSpec(pair_id=f"{REENACT_SPLIT}_{int(index):05d}", index=int(index), motion=motion,
                       appearance=appearance)


def dance_specs(spec: VideoSpec, dances: int) -> list[VideoSpec]:
    """``spec`` and ``dances − 1`` other dances of the same identity in the same scene (other motion seeds)."""
    dances = _check_positive_int("dances", dances)
    return [replace(spec, motion_seed=spec.motion_seed + DANCE_SEED_STRIDE * dance) for dance in range(dances)]


def compilation_meta(specs: list[VideoSpec]) -> dict:
    """``meta.json`` of a compilation of ``specs`` (the first one's, with the total frame count and the dances)."""
    first_frames = np.cumsum([0] + [spec.num_frames for spec in specs])
    return {
        **specs[0].to_json(),
        "num_frames": int(first_frames[-1]),
        DANCES_KEY: [
            {"motion_seed": spec.motion_seed, "first_frame": int(first), "num_frames": spec.num_frames}
            for spec, first in zip(specs, first_frames)
        ],
    }


def pose_video(spec: VideoSpec) -> tuple[BodyPoses, np.ndarray, np.ndarray]:
    """The body's world pose per frame and the camera path: ``(poses (T, J, ...), zoom (T,), pan (T,))``."""
    motion = Motion.sample(spec.motion_seed)
    frames = motion.evaluate(np.arange(spec.num_frames) / spec.fps)
    poses = forward_kinematics(spec.identity.shape, frames.local_rotations, frames.root_rotation, frames.root_position)
    return poses, frames.zoom, frames.pan


def render_frames(spec: VideoSpec) -> Iterator[dict[str, np.ndarray]]:
    """Yields ``{map name: (H, W, 3) uint8}`` for each of the spec's frames, for all six ``MAP_NAMES``."""
    poses, zoom, pan = pose_video(spec)
    renderer = SynthDanceRenderer(spec.identity, spec.background, spec.lighting, spec.resolution, spec.version)
    yield from renderer.render(poses, zoom, pan)


def render_video(spec: VideoSpec) -> dict[str, np.ndarray]:
    """Renders a whole video in memory: ``{map name: (F, H, W, 3) uint8}``."""
    frames = list(render_frames(spec))
    return {name: np.stack([frame[name] for frame in frames]) for name in MAP_NAMES}


def frame_file_name(frame: int, num_frames: int) -> str:
    """``0000.png`` style names, zero-padded to at least 4 digits (more when ``num_frames`` needs it)."""
    return f"{frame:0{max(4, len(str(num_frames - 1)))}d}.png"


def _write_json(path: Path, content: dict) -> None:
    write_text_atomically(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def _is_complete(video_dir: Path, meta: dict) -> bool:
    meta_path = video_dir / META_FILE
    if not meta_path.is_file():
        return False
    try:
        return json.loads(meta_path.read_text(encoding="utf-8")) == json.loads(json.dumps(meta))
    except (OSError, json.JSONDecodeError):
        return False


def write_video(
    spec: VideoSpec,
    root: Path,
    progress_bar: tqdm | None = None,
    extra_images: dict[str, VideoSpec] | None = None,
    meta: dict | None = None,
    continued_by: Sequence[VideoSpec] = (),
) -> Path:
    """Renders ``spec`` into ``root/<video_id>`` through a temporary folder renamed into place when complete.

    ``extra_images`` adds folders holding only the ``images`` of other specs (a reenactment pair's ``reference/``
    and ``original/``); ``meta`` replaces ``spec.to_json()`` as ``meta.json``; ``continued_by`` appends the frames of
    further specs after ``spec``'s (a compilation's other dances, :func:`dance_specs`).
    """
    final = root / spec.video_id
    temporary = root / f"{_TEMPORARY_PREFIX}{spec.video_id}-{os.getpid()}"
    if temporary.exists():
        shutil.rmtree(temporary)
    for name in MAP_NAMES:
        (temporary / name).mkdir(parents=True)
    total_frames = spec.num_frames + sum(other.num_frames for other in continued_by)
    for frame, maps in enumerate(chain.from_iterable(render_frames(part) for part in (spec, *continued_by))):
        file_name = frame_file_name(frame, total_frames)
        for name in MAP_NAMES:
            _save_png(maps[name], temporary / name / file_name)
        if progress_bar is not None:
            progress_bar.update(1)
    for folder, other in (extra_images or {}).items():
        (temporary / folder).mkdir()
        for frame, maps in enumerate(render_frames(other)):
            _save_png(maps["images"], temporary / folder / frame_file_name(frame, other.num_frames))
    _write_json(temporary / META_FILE, spec.to_json() if meta is None else meta)
    if final.exists():
        shutil.rmtree(final)
    os.replace(temporary, final)
    for stale in root.glob(f"{_TEMPORARY_PREFIX}{spec.video_id}-*"):  # left by interrupted runs
        shutil.rmtree(stale, ignore_errors=True)
    return final


def _save_png(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def generate_dataset(
    output_dir: str | os.PathLike,
    num_videos: int,
    num_frames: int,
    resolution: int,
    seed: int,
    split: str = "train",
    progress: bool = True,
    fps: int = DEFAULT_FPS,
    version: int = FORMAT_VERSION,
    dances: int = 1,
) -> Path:
    """Writes a SynthDance dataset in Champ's layout and returns its root.

    Args:
        output_dir: the root; created if needed. Videos already there with identical ``meta.json`` are kept.
        num_videos: number of videos, ``ROOT/<split>_00000`` … (one identity each).
        num_frames: frames per video.
        resolution: square frame size in pixels.
        seed: dataset seed; the same arguments give byte-identical files.
        split: ``"train"`` or ``"test"`` (the two draw disjoint identities, i.e. outfits), or ``"reenact"``:
            ``num_videos`` cross-identity pairs of the seed's test identities (:func:`sample_reenact_spec`), with
            ``reference/`` and ``original/`` folders and the pairing in ``meta.json`` and ``index.json``.
        progress: show a tqdm bar over frames.
        fps: frame rate of the motion (frames per second of simulated time), stored in ``meta.json``.
        version: the SynthDance format (``FORMAT_VERSIONS``): 2 frames the body larger than 1 (see
            ``renderer.FRAMINGS``); identities and motions are the same. Datasets made before keep their version.
        dances: train and test splits: each video is a compilation of this many dances of its identity, each
            ``num_frames`` long, cut between them (:func:`dance_specs`); 1 (default): one dance.

    Returns:
        The root ``Path``, containing ``index.json``.
    """
    num_videos = _check_positive_int("num_videos", num_videos)
    num_frames = _check_positive_int("num_frames", num_frames)
    resolution = _check_positive_int("resolution", resolution)
    if resolution < 16:
        raise ValueError(f"`resolution` must be at least 16 pixels, got {resolution}.")
    _check_split(split, DATASET_SPLITS)
    _check_version(version)
    dances = _check_positive_int("dances", dances)
    if split == REENACT_SPLIT and dances > 1:
        raise ValueError(f"`dances` must be 1 for the reenact split (its pairs are single dances), got {dances}.")
    if split == REENACT_SPLIT and num_videos < 2:
        raise ValueError(f"`num_videos` must be at least 2 for the reenact split (pairs of identities), got {num_videos}.")
    root = Path(output_dir)
    if root.exists() and not root.is_dir():
        raise ValueError(f"`output_dir` must be a directory, got the file {str(root)!r}.")
    root.mkdir(parents=True, exist_ok=True)
    if split == REENACT_SPLIT:
        pairs = [sample_reenact_spec(seed, index, num_videos, num_frames, resolution, fps, version)
                 for index in range(num_videos)]
        jobs = [
            (pair.ground_truth, {REFERENCE_FOLDER: pair.appearance, ORIGINAL_FOLDER: pair.motion}, pair.to_json(), ())
            for pair in pairs
        ]
        entries = [
            {"video_id": pair.pair_id, "identity_id": pair.appearance.identity.identity_id, "num_frames": num_frames,
             **pair.to_json()["reenact"]}
            for pair in pairs
        ]
    else:
        specs = [dance_specs(sample_video_spec(seed, index, num_frames, resolution, split, fps, version), dances)
                 for index in range(num_videos)]
        jobs = [(parts[0], None, parts[0].to_json() if dances == 1 else compilation_meta(parts), parts[1:])
                for parts in specs]
        entries = [
            {"video_id": parts[0].video_id, "identity_id": parts[0].identity.identity_id,
             "num_frames": num_frames * dances}
            for parts in specs
        ]
    frames_per_job = num_frames * (3 if split == REENACT_SPLIT else dances)
    with tqdm(total=num_videos * frames_per_job, unit="frame", desc=f"synthdance {split}", disable=not progress) as bar:
        for spec, extra_images, meta, continued_by in jobs:
            if _is_complete(root / spec.video_id, meta):
                bar.update(frames_per_job)
                continue
            write_video(spec, root, bar, extra_images, meta, continued_by)
            bar.update(frames_per_job - num_frames * len((spec, *continued_by)))
    folders = list(MAP_NAMES) + ([REFERENCE_FOLDER, ORIGINAL_FOLDER] if split == REENACT_SPLIT else [])
    index = {
        "generator": "synthdance",
        "format_version": version,
        "split": split,
        "seed": int(seed),
        "num_frames": num_frames * dances,
        "resolution": resolution,
        "fps": fps,
        **({DANCES_KEY: dances} if dances > 1 else {}),
        "folders": folders,
        "videos": entries,
    }
    _write_json(root / INDEX_FILE, index)
    return root
