"""Champ's on-disk layout: constants, validation and readers shared by the training dataset and ``animate``.

A video folder holds one sub-folder per map with the same frame files in each::

    <video>/images/0000.png        the RGB frames (training targets and references)
    <video>/depth/0000.png         guidance maps (CHAMP_GUIDANCE_TYPES), RGB
    <video>/normal/0000.png
    <video>/semantic_map/0000.png  multiplied by the mask when reading
    <video>/dwpose/0000.png
    <video>/mask/0000.png          the person in white (optional)

A dataset root holds video folders (hidden folders such as unfinished ``.tmp-*`` writes are ignored) and optionally an
``index.json`` whose ``videos`` list fixes the set and order of videos. Frames are matched across folders by file stem
(``images/0001.jpg`` ↔ ``depth/0001.png``) and ordered naturally (``2`` before ``10``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

CHAMP_GUIDANCE_TYPES = ("depth", "normal", "semantic_map", "dwpose")
IMAGE_FOLDER = "images"
MASK_FOLDER = "mask"
CHAMP_FOLDERS = (IMAGE_FOLDER, *CHAMP_GUIDANCE_TYPES, MASK_FOLDER)
SEMANTIC_FOLDER = "semantic_map"
INDEX_FILE = "index.json"
META_FILE = "meta.json"
# meta.json key of a compilation video (several dances of one identity, cut between them): where each dance starts,
# [{"first_frame", "num_frames", ...}, ...]. A clip must not cross a cut.
DANCES_KEY = "dances"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def natural_key(name: str) -> list:
    """Sort key ordering embedded numbers by value: ``frame2.png`` < ``frame10.png``."""
    return [int(chunk) if chunk.isdigit() else chunk.lower() for chunk in re.split(r"(\d+)", name)]


def _frame_files(video_dir: Path, folder: str) -> dict[str, str]:
    """``{stem: file name}`` of the image files of ``video_dir/folder``, in natural order."""
    path = video_dir / folder
    if not path.is_dir():
        raise FileNotFoundError(f"video {str(video_dir)!r}: folder {folder!r} is missing (expected {str(path)!r}).")
    files: dict[str, str] = {}
    for name in sorted(os.listdir(path), key=natural_key):
        stem, extension = os.path.splitext(name)
        if extension.lower() not in IMAGE_EXTENSIONS or name.startswith("."):
            continue
        if stem in files:
            raise ValueError(
                f"video {str(video_dir)!r}: folder {folder!r} has two files for frame {stem!r}: "
                f"{files[stem]!r} and {name!r}."
            )
        files[stem] = name
    if not files:
        raise FileNotFoundError(
            f"video {str(video_dir)!r}: folder {folder!r} contains no image frames ({str(path)!r})."
        )
    return files


@dataclass(frozen=True)
class ChampVideo:
    """A validated video folder: ``frames`` are the frame stems in order; ``files[folder][i]`` is frame ``i``'s file
    name in ``folder`` for every folder checked (images, guidance types, and the mask when present)."""

    path: Path
    frames: tuple[str, ...]
    files: dict[str, tuple[str, ...]]

    @property
    def num_frames(self) -> int:
        """Number of frames ``F``."""
        return len(self.frames)

    @property
    def has_mask(self) -> bool:
        """Whether the video has a (validated) mask folder."""
        return MASK_FOLDER in self.files

    def frame_path(self, folder: str, frame: int) -> Path:
        """Path of frame number ``frame`` (0-based) in ``folder``."""
        return self.path / folder / self.files[folder][frame]


def validate_video_dir(
    video_dir: str | os.PathLike,
    guidance_types: Sequence[str] | None = None,
    require_images: bool = True,
    require_mask: bool = False,
    check_sizes: bool = True,
) -> ChampVideo:
    """Checks one Champ-layout video folder and indexes its frames.

    Every required folder (``images`` when ``require_images``, the guidance types, and ``mask`` when required or
    present) must exist and hold the same frame stems; a frame found in most folders but not in one is reported as
    that folder's missing file. With ``check_sizes`` the first frame of every folder must have the same size as the
    first folder's.

    Args:
        video_dir: the video folder.
        guidance_types: guidance folders to require; ``None`` means ``CHAMP_GUIDANCE_TYPES``.
        require_images: require the ``images`` folder.
        require_mask: require the ``mask`` folder (otherwise used only when present).
        check_sizes: compare the first frame's size across folders.

    Raises:
        FileNotFoundError: naming the video, the folder and the missing file (or folder).
        ValueError: naming the video, the folder and the file that has no counterpart or a different size.
    """
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video directory {str(video_dir)!r} does not exist.")
    guidance_types = tuple(CHAMP_GUIDANCE_TYPES if guidance_types is None else guidance_types)
    folders = ([IMAGE_FOLDER] if require_images else []) + [name for name in guidance_types if name != IMAGE_FOLDER]
    if not folders:
        raise ValueError("`guidance_types` must name at least one folder when `require_images` is False.")
    if require_mask or (video_dir / MASK_FOLDER).is_dir():
        folders.append(MASK_FOLDER)
    listings = {folder: _frame_files(video_dir, folder) for folder in folders}
    _compare_listings(video_dir, listings)
    reference_folder = folders[0]
    reference = listings[reference_folder]
    frames = tuple(reference)
    files = {folder: tuple(listings[folder][stem] for stem in frames) for folder in folders}
    video = ChampVideo(path=video_dir, frames=frames, files=files)
    if check_sizes:
        expected = _image_size(video.frame_path(reference_folder, 0))
        for folder in folders[1:]:
            _check_size(video, folder, 0, expected, reference_folder)
    return video


def _compare_listings(video_dir: Path, listings: dict[str, dict[str, str]]) -> None:
    """Raises on the first frame (in natural order) whose files disagree across folders.

    A frame present in at least half of the folders is expected everywhere: the folders without it are missing a
    file (``FileNotFoundError``). A frame present in fewer than half is extra where it appears (``ValueError``).
    """
    folders = list(listings)
    stems = sorted({stem for listing in listings.values() for stem in listing}, key=natural_key)
    for stem in stems:
        having = [folder for folder in folders if stem in listings[folder]]
        if len(having) == len(folders):
            continue
        lacking = [folder for folder in folders if stem not in listings[folder]]
        if 2 * len(having) >= len(folders):
            folder = lacking[0]
            extension = Counter(os.path.splitext(name)[1] for name in listings[folder].values()).most_common(1)[0][0]
            name = f"{stem}{extension}"
            missing = [other for other in stems if other not in listings[folder]]
            raise FileNotFoundError(
                f"video {str(video_dir)!r}: folder {folder!r} is missing file {name!r} "
                f"({str(video_dir / folder / name)!r}), present in {having}; {len(missing)} frame(s) missing in "
                f"{folder!r}: {missing[:10]}."
            )
        folder = having[0]
        raise ValueError(
            f"video {str(video_dir)!r}: folder {folder!r} has file {listings[folder][stem]!r} with no counterpart in "
            f"{lacking} ({len(listings[folder])} files in {folder!r}, {len(listings[lacking[0]])} in {lacking[0]!r})."
        )


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports damaged files with all three
        raise _unreadable(path, error) from error


def _unreadable(path: str | os.PathLike, error: Exception) -> Exception:
    if isinstance(error, FileNotFoundError):
        return FileNotFoundError(f"{path}: no such file.")
    return ValueError(f"{path}: not a readable image ({error}).")


def _check_size(video: ChampVideo, folder: str, frame: int, expected: tuple[int, int], expected_from: str) -> None:
    size = _image_size(video.frame_path(folder, frame))
    if size != expected:
        raise ValueError(
            f"video {str(video.path)!r}: {folder}/{video.files[folder][frame]} is {size[0]}x{size[1]} (WxH) but "
            f"{expected_from}/{video.files[expected_from][frame]} is {expected[0]}x{expected[1]}."
        )


def list_frames(video_dir: str | os.PathLike) -> list[str]:
    """File names of a video's frames in natural order: from ``images`` if present, else from the first Champ guidance
    folder present. Raises ``FileNotFoundError`` naming the video when it has neither."""
    video_dir = Path(video_dir)
    if not video_dir.is_dir():
        raise FileNotFoundError(f"video directory {str(video_dir)!r} does not exist.")
    for folder in (IMAGE_FOLDER, *CHAMP_GUIDANCE_TYPES):
        if (video_dir / folder).is_dir():
            return list(_frame_files(video_dir, folder).values())
    raise FileNotFoundError(
        f"video {str(video_dir)!r} has none of the folders {(IMAGE_FOLDER, *CHAMP_GUIDANCE_TYPES)}."
    )


def video_dances(video_dir: str | os.PathLike) -> list[dict]:
    """The dances of a compilation video (``meta.json`` ``dances``), or ``[]`` for a single-dance video or one
    without ``meta.json``."""
    meta_path = Path(video_dir) / META_FILE
    if not meta_path.is_file():
        return []
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(meta_path)!r} is not valid JSON: {error}.") from error
    dances = meta.get(DANCES_KEY, []) if isinstance(meta, dict) else []
    return dances if len(dances) > 1 else []


def list_videos(root: str | os.PathLike) -> list[Path]:
    """Video folders of a dataset root: ``index.json``'s ``videos`` in order when present, else every non-hidden
    sub-folder in natural order. Raises ``FileNotFoundError`` for a missing root or an indexed video that is absent."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset root {str(root)!r} does not exist or is not a directory.")
    index_path = root / INDEX_FILE
    if index_path.is_file():
        entries = json.loads(index_path.read_text(encoding="utf-8")).get("videos")
        if entries is not None:
            names = [entry["video_id"] if isinstance(entry, dict) else str(entry) for entry in entries]
            for name in names:
                if not (root / name).is_dir():
                    raise FileNotFoundError(
                        f"dataset root {str(root)!r}: video {name!r} listed in {INDEX_FILE} is missing "
                        f"(expected {str(root / name)!r})."
                    )
            return [root / name for name in names]
    return [
        root / name
        for name in sorted(os.listdir(root), key=natural_key)
        if not name.startswith(".") and (root / name).is_dir()
    ]


def open_image(path: str | os.PathLike, mode: str = "RGB") -> Image.Image:
    """An image file fully decoded (a truncated file fails here, not later) and converted to ``mode``.

    Raises ``FileNotFoundError`` / ``ValueError`` naming the file when it is missing or not a readable image; PIL's
    error is kept as the cause.
    """
    try:
        with Image.open(path) as image:
            return image.convert(mode)
    except (OSError, SyntaxError, ValueError) as error:  # PIL reports damaged files with all three
        raise _unreadable(path, error) from error


def read_image_array(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """An image file as a uint8 array in ``mode``: ``(H, W, 3)`` for ``"RGB"``, ``(H, W)`` for ``"L"`` (errors as
    :func:`open_image`)."""
    return np.asarray(open_image(path, mode))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as ``(H, W, 3)`` uint8 RGB (errors as :func:`open_image`)."""
    return read_image_array(path)


def apply_mask(semantic_map: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``semantic_map`` ``(..., H, W, 3)`` uint8 times ``mask`` ``(..., H, W)`` uint8 (255 = person) → uint8."""
    product = semantic_map.astype(np.uint32) * mask[..., None].astype(np.uint32)
    return ((product + 127) // 255).astype(np.uint8)


def read_guidance_frames(
    video: ChampVideo,
    guidance_types: Sequence[str],
    frames: Sequence[int],
    read: Callable[[Path, str], np.ndarray] = read_image_array,
) -> dict[str, np.ndarray]:
    """Guidance maps of frames ``frames`` (0-based numbers) of a validated video: ``{type: (F, H, W, 3) uint8}``,
    every file (maps, and masks) read with ``read(path, mode)`` (default :func:`read_image_array`; a caching reader
    keeps decoded files between calls).

    ``semantic_map`` is multiplied by the mask when the video has one. Raises ``ValueError`` naming the file whose size
    differs from the first guidance map's.
    """
    result: dict[str, np.ndarray] = {}
    expected: tuple[int, int] | None = None
    for guidance_type in guidance_types:
        stack = []
        for frame in frames:
            array = read(video.frame_path(guidance_type, frame), "RGB")
            if expected is None:
                expected, expected_name = array.shape[:2], f"{guidance_type}/{video.files[guidance_type][frame]}"
            elif array.shape[:2] != expected:
                raise ValueError(
                    f"video {str(video.path)!r}: {guidance_type}/{video.files[guidance_type][frame]} is "
                    f"{array.shape[1]}x{array.shape[0]} (WxH) but {expected_name} is {expected[1]}x{expected[0]}."
                )
            stack.append(array)
        result[guidance_type] = np.stack(stack)
    if SEMANTIC_FOLDER in result and video.has_mask:
        masks = []
        for frame in frames:
            mask = read(video.frame_path(MASK_FOLDER, frame), "L")
            if mask.shape != expected:
                raise ValueError(
                    f"video {str(video.path)!r}: {MASK_FOLDER}/{video.files[MASK_FOLDER][frame]} is "
                    f"{mask.shape[1]}x{mask.shape[0]} (WxH) but the guidance maps are {expected[1]}x{expected[0]}."
                )
            masks.append(mask)
        result[SEMANTIC_FOLDER] = apply_mask(result[SEMANTIC_FOLDER], np.stack(masks))
    return result


def read_guidance_folder(
    video_dir: str | os.PathLike, guidance_types: Sequence[str] | None = None, frame_range: slice | None = None
) -> dict[str, list[Image.Image]]:
    """Reads one Champ-layout video's guidance maps as RGB PIL images (for ``referencelcm animate --guidance``).

    Args:
        video_dir: a folder with one sub-folder per guidance type (``images`` is not needed).
        guidance_types: the folders to read; ``None`` means the ``CHAMP_GUIDANCE_TYPES`` present (at least one).
        frame_range: a slice of the frame list (natural order), e.g. ``slice(0, 48, 2)``; ``None`` reads all.

    Returns:
        ``{type: [PIL.Image RGB] * F}``, ``semantic_map`` multiplied by ``mask`` when a mask folder exists.

    Raises:
        FileNotFoundError / ValueError naming the video, folder and file missing or mismatched.
    """
    video_dir = Path(video_dir)
    if guidance_types is None:
        if not video_dir.is_dir():
            raise FileNotFoundError(f"guidance directory {str(video_dir)!r} does not exist.")
        guidance_types = [name for name in CHAMP_GUIDANCE_TYPES if (video_dir / name).is_dir()]
        if not guidance_types:
            raise FileNotFoundError(
                f"guidance directory {str(video_dir)!r} has none of the folders {CHAMP_GUIDANCE_TYPES}."
            )
    if isinstance(guidance_types, str):
        raise ValueError(f"`guidance_types` must be a sequence of folder names, got the string {guidance_types!r}.")
    video = validate_video_dir(video_dir, guidance_types, require_images=False)
    frames = list(range(video.num_frames))
    if frame_range is not None:
        if not isinstance(frame_range, slice):
            raise ValueError(f"`frame_range` must be a slice or None, got {type(frame_range).__name__}.")
        frames = frames[frame_range]
        if not frames:
            raise ValueError(
                f"`frame_range` {frame_range} selects no frame of the {video.num_frames} in {str(video_dir)!r}."
            )
    arrays = read_guidance_frames(video, guidance_types, frames)
    return {name: [Image.fromarray(frame) for frame in stack] for name, stack in arrays.items()}
