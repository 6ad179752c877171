"""Champ-layout training data with intra-source (RAS) references and multi-source (ERS) batches.

``ReferenceVideoDataset`` reads any Champ-layout root (SynthDance, or Champ's preprocessed TikTok / UBC-Fashion):
``ROOT/<video>/{images,depth,normal,semantic_map,dwpose[,mask]}/<frame>.png``.

Items. Item ``i`` is one ``(video, start frame)`` pair: for every video ``v`` (in ``dataset.video_ids`` order) and every
start ``s`` with a full clip inside the video (``0 <= s <= num_frames_v − ((num_frames − 1) · frame_stride + 1)``),
in that order, so one pass over the indices (one epoch) uses every possible clip of every video once. ``source_id`` is
the video's position in ``dataset.video_ids``.

- Image (spatial) phase: ``num_frames=1``, one target frame per item.
- Video (temporal) phase: ``num_frames > 1``, frames ``s, s + frame_stride, …``.

Each item carries ``k = num_references`` reference frames of the *same* video (RAS, paper §2.2.1), each at least
``min_reference_gap`` frames away from every target frame where the video allows it: the members of an ETA equivalent
group. ``MultiSourceBatchSampler`` puts several videos into every batch, and ``source_id`` in the batch tells which
samples are inter-source (ERS) pairs for CoNS.

A compilation video (several dances of one identity cut together, SynthDance ``dances``; ``meta.json`` ``dances``)
gives the image phase references in another pose than the target; the video phase refuses it (a clip would cross the
cut).
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch.utils.data import Dataset, Sampler

from ..data.layout import (
    CHAMP_GUIDANCE_TYPES,
    DANCES_KEY,
    IMAGE_FOLDER,
    ChampVideo,
    list_videos,
    read_guidance_frames,
    read_image_array,
    validate_video_dir,
    video_dances,
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
ON_INVALID = ("raise", "skip")


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _scale_range(name: str, value: Any) -> tuple[float, float]:
    if len(value) != 2 or not 0.0 < float(value[0]) <= float(value[1]) <= 1.0:
        raise ValueError(f"`{name}` must be (low, high) with 0 < low <= high <= 1, got {value!r}.")
    return float(value[0]), float(value[1])


def _size_pair(resolution: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(resolution, (int, np.integer)) and not isinstance(resolution, bool):
        resolution = (resolution, resolution)
    if (
        not isinstance(resolution, (tuple, list))
        or len(resolution) != 2
        or not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 8
                   for value in resolution)
    ):
        raise ValueError(f"`resolution` must be an int or a (height, width) pair of ints >= 8, got {resolution!r}.")
    return int(resolution[0]), int(resolution[1])


class ReferenceVideoDataset(Dataset):
    """Targets, pose guidance and RAS references from a Champ-layout root.

    Args:
        root: dataset root (video folders; an ``index.json`` ``videos`` list, when present, fixes set and order).
        resolution: output size, an int (square) or ``(height, width)``.
        num_frames: ``F`` frames per item (1: image phase; > 1: video phase).
        frame_stride: step between the frames of a clip.
        num_references: ``k`` intra-source reference frames per item; 0 reads none (stages that train on the targets
            alone, such as the VAE's, skip reading references and making their CLIP inputs).
        guidance_types: guidance folders to load; ``None`` means ``CHAMP_GUIDANCE_TYPES``.
        min_reference_gap: references are at least this many frames from every target frame where possible.
        crop_scale: ``(low, high)`` side fraction of the largest crop with the output's aspect ratio; one random crop
            per item is applied to target, guidance and references alike, then resized to ``resolution``.
        reference_crop_scale: ``None`` (default): the references share the item's crop, so the person stands at the
            same place and size in reference and target, as within one clip. ``(low, high)``: the references draw a
            crop of their own with this scale range, so the person moves and changes size between reference and
            target, as when a reference animates another video's motion (reenactment). Only with ``random_crop``.
        reference_crop_probability: the share of items whose references get a crop of their own (with
            ``reference_crop_scale``); the others share the target's, so the model learns both to copy the reference
            where it stands and to find the person where it moved.
        random_crop: ``False`` takes the centred largest crop (evaluation).
        clip_image_processor: a ``transformers.CLIPImageProcessor`` for ``reference_clip_pixels``; ``None`` uses the
            built-in equivalent (shortest side to ``clip_resolution``, bicubic, centre crop, CLIP mean/std).
        clip_resolution: CLIP input size for the built-in processing.
        on_invalid: ``"raise"`` (default) fails on the first broken video with a message naming the video, folder and
            file; ``"skip"`` warns, records it in ``skipped`` and goes on.
        seed: ``None`` draws crops and references from torch's global RNG (seeded per DataLoader worker); an int makes
            item ``i`` of epoch ``e`` (``set_epoch``) a pure function of ``(seed, e, i)``.
        cache_images: keep every decoded frame and guidance map in memory after its first read (about
            ``H · W · 3`` bytes per file, per DataLoader worker). On a small dataset PNG decoding is a large share of
            a small model's step (measured at 128 px: ~45 % of an item's 5 ms); items are unchanged.

    Items (dict): ``target`` ``(3, F, H, W)`` in [-1, 1]; ``guidance`` ``{type: (3, F, H, W)}`` in [0, 1];
    ``references`` ``(k, 3, H, W)`` in [-1, 1]; ``reference_clip_pixels`` ``(k, 3, C, C)`` CLIP-normalised;
    ``source_id`` int; ``frame_indices`` ``(F,)`` and ``reference_indices`` ``(k,)`` long; ``video_id`` str.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        resolution: int | Sequence[int],
        num_frames: int = 1,
        frame_stride: int = 1,
        num_references: int = 2,
        guidance_types: Sequence[str] | None = None,
        min_reference_gap: int = 4,
        crop_scale: tuple[float, float] = (0.85, 1.0),
        reference_crop_scale: tuple[float, float] | None = None,
        reference_crop_probability: float = 1.0,
        random_crop: bool = True,
        clip_image_processor: Any | None = None,
        clip_resolution: int = 224,
        on_invalid: str = "raise",
        seed: int | None = None,
        cache_images: bool = False,
    ):
        self.resolution = _size_pair(resolution)
        self.num_frames = _positive_int("num_frames", num_frames)
        self.frame_stride = _positive_int("frame_stride", frame_stride)
        self.num_references = _positive_int("num_references", num_references, minimum=0)
        self.min_reference_gap = _positive_int("min_reference_gap", min_reference_gap, minimum=0)
        self.clip_resolution = _positive_int("clip_resolution", clip_resolution)
        self.guidance_types = self._check_guidance_types(guidance_types)
        self.crop_scale = _scale_range("crop_scale", crop_scale)
        self.reference_crop_scale = (
            None if reference_crop_scale is None else _scale_range("reference_crop_scale", reference_crop_scale)
        )
        if not 0.0 <= reference_crop_probability <= 1.0:
            raise ValueError(f"`reference_crop_probability` must be in [0, 1], got {reference_crop_probability!r}.")
        self.reference_crop_probability = float(reference_crop_probability)
        self.random_crop = bool(random_crop)
        if on_invalid not in ON_INVALID:
            raise ValueError(f"`on_invalid` must be one of {ON_INVALID}, got {on_invalid!r}.")
        if seed is not None:
            _positive_int("seed", seed, minimum=0)
        self.seed = seed
        self.epoch = 0
        self.clip_image_processor = clip_image_processor
        self.root = root
        self.skipped: list[tuple[str, str]] = []
        self._image_cache: dict[tuple[Path, str], np.ndarray] | None = {} if cache_images else None
        self.videos: list[ChampVideo] = self._load_videos(root, on_invalid)
        clip_span = (self.num_frames - 1) * self.frame_stride + 1
        counts = np.array([video.num_frames - clip_span + 1 for video in self.videos])
        self._item_offsets = np.concatenate([[0], np.cumsum(counts)])
        self.item_source_ids = np.repeat(np.arange(len(self.videos)), counts)  # (N,) source of every item

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_guidance_types(guidance_types: Sequence[str] | None) -> tuple[str, ...]:
        if guidance_types is None:
            return CHAMP_GUIDANCE_TYPES
        if isinstance(guidance_types, str) or not all(isinstance(name, str) for name in guidance_types):
            raise ValueError(f"`guidance_types` must be a sequence of folder names, got {guidance_types!r}.")
        names = tuple(guidance_types)
        if not names or len(set(names)) != len(names) or IMAGE_FOLDER in names:
            raise ValueError(
                f"`guidance_types` must be distinct guidance folder names (not {IMAGE_FOLDER!r}), got {names!r}."
            )
        return names

    def _load_videos(self, root: str | os.PathLike, on_invalid: str) -> list[ChampVideo]:
        clip_span = (self.num_frames - 1) * self.frame_stride + 1
        videos = []
        for video_dir in list_videos(root):
            try:
                video = validate_video_dir(video_dir, self.guidance_types, require_images=True)
                compilation = self.num_frames > 1 and bool(video_dances(video_dir))
            except (FileNotFoundError, ValueError) as error:
                if on_invalid == "raise":
                    raise
                warnings.warn(f"skipping invalid video: {error}", stacklevel=3)
                self.skipped.append((str(video_dir), str(error)))
                continue
            if compilation:
                raise ValueError(
                    f"video {str(video_dir)!r} is a compilation of several dances (meta.json {DANCES_KEY!r}): a clip "
                    f"of num_frames={self.num_frames} would cross the cut between them. Train clips on single-dance "
                    "videos; compilations are for the image stage (num_frames=1)."
                )
            if video.num_frames < clip_span:
                reason = (f"video {str(video_dir)!r} has {video.num_frames} frames, fewer than a clip of "
                          f"num_frames={self.num_frames} at frame_stride={self.frame_stride} needs ({clip_span}).")
                warnings.warn(f"skipping short video: {reason}", stacklevel=3)
                self.skipped.append((str(video_dir), reason))
                continue
            videos.append(video)
        if not videos:
            raise ValueError(f"`root` {str(root)!r} holds no usable Champ-layout video (skipped: {self.skipped}).")
        return videos

    # ------------------------------------------------------------------ indexing
    @property
    def video_ids(self) -> list[str]:
        """Folder names of the videos; ``source_id`` indexes this list."""
        return [video.path.name for video in self.videos]

    @property
    def num_sources(self) -> int:
        """Number of usable videos."""
        return len(self.videos)

    def __len__(self) -> int:
        return int(self._item_offsets[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """Item ``index`` → ``(source_id, first frame)``."""
        if not 0 <= index < len(self):
            raise IndexError(f"item index {index} out of range for a dataset of {len(self)} items.")
        source = int(np.searchsorted(self._item_offsets, index, side="right") - 1)
        return source, int(index - self._item_offsets[source])

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose crops and references a seeded dataset draws."""
        self.epoch = int(epoch)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch, index]))

    def sample_reference_indices(
        self, rng: np.random.Generator, num_video_frames: int, frame_indices: np.ndarray
    ) -> np.ndarray:
        """``k`` RAS reference frame numbers ``(k,)`` of a video with ``num_video_frames`` frames.

        Frames at least ``min_reference_gap`` away from every target frame in ``frame_indices`` ``(F,)`` come first,
        in random order; when there are fewer than ``k`` of them the farthest other frames fill up; a video with fewer
        than ``k`` frames repeats frames.
        """
        candidates = rng.permutation(num_video_frames)
        distance = np.abs(candidates[:, None] - frame_indices[None, :]).min(axis=1)
        ordered = candidates[np.argsort(-np.minimum(distance, self.min_reference_gap), kind="stable")]
        return np.resize(ordered, self.num_references)

    # ------------------------------------------------------------------ loading
    def _crop_box(
        self, rng: np.random.Generator, height: int, width: int, crop_scale: tuple[float, float] | None = None
    ) -> tuple[int, int, int, int]:
        """``(top, left, crop_height, crop_width)`` with the output aspect ratio, its side ``crop_scale`` (default
        the dataset's) of the largest such crop."""
        out_height, out_width = self.resolution
        aspect = out_width / out_height
        full_height, full_width = (height, height * aspect) if width / height > aspect else (width / aspect, width)
        scale = rng.uniform(*(crop_scale or self.crop_scale)) if self.random_crop else 1.0
        crop_height = max(1, min(height, round(full_height * scale)))
        crop_width = max(1, min(width, round(full_width * scale)))
        if self.random_crop:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
        else:
            top, left = (height - crop_height) // 2, (width - crop_width) // 2
        return top, left, crop_height, crop_width

    def _crop_resize(self, frames: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """``(N, H, W, 3)`` uint8 → cropped, resized ``(N, 3, h, w)`` float in [0, 1]."""
        top, left, crop_height, crop_width = box
        tensor = torch.from_numpy(np.ascontiguousarray(frames[:, top : top + crop_height, left : left + crop_width]))
        tensor = rearrange(tensor, "n h w c -> n c h w").float() / 255.0
        if (crop_height, crop_width) != self.resolution:
            tensor = F.interpolate(tensor, size=self.resolution, mode="bilinear", align_corners=False, antialias=True)
        return tensor.clamp(0.0, 1.0)

    def _clip_pixels(self, references: np.ndarray, box: tuple[int, int, int, int]) -> torch.Tensor:
        """Cropped references ``(k, H, W, 3)`` uint8 → CLIP inputs ``(k, 3, C, C)``."""
        if len(references) == 0:
            crop = getattr(self.clip_image_processor, "crop_size", None) or {}
            return torch.empty(0, 3, crop.get("height", self.clip_resolution), crop.get("width", self.clip_resolution))
        top, left, crop_height, crop_width = box
        crops = np.ascontiguousarray(references[:, top : top + crop_height, left : left + crop_width])
        if self.clip_image_processor is not None:
            pixels = self.clip_image_processor(images=list(crops), return_tensors="pt")["pixel_values"]
            return pixels.float()
        size = self.clip_resolution
        tensor = rearrange(torch.from_numpy(crops), "k h w c -> k c h w").float() / 255.0
        scale = size / min(crop_height, crop_width)
        resized = (max(size, round(crop_height * scale)), max(size, round(crop_width * scale)))
        tensor = F.interpolate(tensor, size=resized, mode="bicubic", align_corners=False, antialias=True)
        top, left = (resized[0] - size) // 2, (resized[1] - size) // 2
        tensor = tensor[:, :, top : top + size, left : left + size].clamp(0.0, 1.0)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        return (tensor - mean) / std

    def _read(self, path: Path, mode: str = "RGB") -> np.ndarray:
        """``path`` as a uint8 array in ``mode`` (``"RGB"`` or ``"L"``), from the cache when ``cache_images``
        (read-only: callers copy)."""
        if self._image_cache is None:
            return read_image_array(path, mode)
        array = self._image_cache.get((path, mode))
        if array is None:
            array = read_image_array(path, mode)
            array.flags.writeable = False
            self._image_cache[(path, mode)] = array
        return array

    def _read_images(self, video: ChampVideo, frames: np.ndarray, expected: tuple[int, ...] | None) -> np.ndarray:
        if len(frames) == 0:
            return np.empty((0, *expected), dtype=np.uint8)
        arrays = []
        for frame in frames:
            array = self._read(video.frame_path(IMAGE_FOLDER, int(frame)))
            if expected is not None and array.shape != expected:
                raise ValueError(
                    f"video {str(video.path)!r}: {IMAGE_FOLDER}/{video.files[IMAGE_FOLDER][int(frame)]} is "
                    f"{array.shape[1]}x{array.shape[0]} (WxH) but the video's frames are {expected[1]}x{expected[0]}."
                )
            expected = array.shape
            arrays.append(array)
        return np.stack(arrays)

    def __getitem__(self, index: int) -> dict[str, Any]:
        source, start = self.locate(int(index))
        video = self.videos[source]
        rng = self._rng(int(index))
        frame_indices = start + self.frame_stride * np.arange(self.num_frames)
        reference_indices = self.sample_reference_indices(rng, video.num_frames, frame_indices)

        targets = self._read_images(video, frame_indices, None)  # (F, H, W, 3)
        references = self._read_images(video, reference_indices, targets.shape[1:])  # (k, H, W, 3)
        guidance = read_guidance_frames(video, self.guidance_types, [int(frame) for frame in frame_indices],
                                        read=self._read)
        for name, maps in guidance.items():
            if maps.shape[1:3] != targets.shape[1:3]:
                raise ValueError(
                    f"video {str(video.path)!r}: {name} maps are {maps.shape[2]}x{maps.shape[1]} (WxH) but "
                    f"{IMAGE_FOLDER} frames are {targets.shape[2]}x{targets.shape[1]}."
                )

        box = self._crop_box(rng, *targets.shape[1:3])
        reference_box = box
        if self.reference_crop_scale is not None and self.random_crop and self.num_references:
            # drawn after the target's box, so that the option leaves targets and guidance as they were
            own_box = self._crop_box(rng, *targets.shape[1:3], self.reference_crop_scale)
            if rng.random() < self.reference_crop_probability:
                reference_box = own_box
        # One crop and one resize for the targets and all their guidance maps: (F + F·G, 3, h, w).
        frames = self._crop_resize(np.concatenate([targets, *guidance.values()]), box)
        target, guidance_frames = frames.split([self.num_frames, self.num_frames * len(guidance)])
        reference_frames = self._crop_resize(references, reference_box)
        return {
            "target": rearrange(target * 2.0 - 1.0, "f c h w -> c f h w"),
            "guidance": {
                name: rearrange(maps, "f c h w -> c f h w")
                for name, maps in zip(guidance, guidance_frames.split(self.num_frames))
            },
            "references": reference_frames * 2.0 - 1.0,
            "reference_clip_pixels": self._clip_pixels(references, reference_box),
            "source_id": source,
            "frame_indices": torch.as_tensor(frame_indices, dtype=torch.long),
            "reference_indices": torch.as_tensor(reference_indices, dtype=torch.long),
            "video_id": video.path.name,
        }


def _stack(items: Sequence[dict[str, Any]], key: str, values: list[torch.Tensor]) -> torch.Tensor:
    shapes = {tuple(value.shape) for value in values}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch `{key}`: items have different shapes {sorted(shapes)}.")
    return torch.stack(values)


def collate_reference_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stacks dataset items into a batch.

    Returns:
        ``target`` ``(B, 3, F, H, W)``; ``guidance`` ``{type: (B, 3, F, H, W)}``; ``references`` ``(B, k, 3, H, W)``;
        ``reference_clip_pixels`` ``(B, k, 3, C, C)``; ``source_id`` ``(B,)`` long (equal ids: intra-source, RAS;
        different ids: inter-source, ERS); ``frame_indices`` ``(B, F)`` and ``reference_indices`` ``(B, k)`` long;
        ``video_id`` list of B strings.
    """
    if not items:
        raise ValueError("`items` must hold at least one dataset item, got an empty sequence.")
    guidance_keys = set(items[0]["guidance"])
    for item in items[1:]:
        if set(item["guidance"]) != guidance_keys:
            raise ValueError(
                f"cannot batch `guidance`: items have types {sorted(guidance_keys)} and {sorted(item['guidance'])}."
            )
    batch: dict[str, Any] = {
        key: _stack(items, key, [item[key] for item in items])
        for key in ("target", "references", "reference_clip_pixels", "frame_indices", "reference_indices")
    }
    batch["guidance"] = {
        name: _stack(items, f"guidance[{name}]", [item["guidance"][name] for item in items])
        for name in items[0]["guidance"]
    }
    batch["source_id"] = torch.tensor([int(item["source_id"]) for item in items], dtype=torch.long)
    batch["video_id"] = [item["video_id"] for item in items]
    return batch


class MultiSourceBatchSampler(Sampler[list[int]]):
    """Batches of item indices that mix source videos, for inter-source (ERS) pairs.

    Every epoch covers each item exactly once (the last, smaller batch is dropped with ``drop_last``). Each batch
    draws distinct sources with probability proportional to their remaining items, one item each, so a batch holds
    ``min(batch_size, sources with items left)`` distinct sources; a batch left with a single source at the end of an
    epoch swaps an item with another batch. Hence every batch of at least 2 items has at least 2 distinct sources
    whenever the dataset has 2 or more videos (unless one video holds nearly all items). Deterministic for
    ``(seed, epoch)``; call ``set_epoch`` every epoch.

    Args:
        dataset: a ``ReferenceVideoDataset`` (anything with ``item_source_ids`` ``(N,)``).
        batch_size: items per batch.
        seed: base seed.
        drop_last: drop the last batch when it is smaller than ``batch_size``.
    """

    def __init__(self, dataset: Any, batch_size: int, seed: int = 0, drop_last: bool = False):
        source_ids = getattr(dataset, "item_source_ids", None)
        self.source_ids = np.asarray(source_ids if source_ids is not None else [])
        if self.source_ids.ndim != 1 or self.source_ids.size == 0:
            raise ValueError("`dataset` must expose a non-empty `item_source_ids` array (N,).")
        self.batch_size = _positive_int("batch_size", batch_size)
        self.seed = _positive_int("seed", seed, minimum=0)
        self.drop_last = bool(drop_last)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose batches ``__iter__`` yields."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        count = len(self.source_ids)
        return count // self.batch_size if self.drop_last else math.ceil(count / self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def _batches(self) -> list[list[int]]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, self.epoch]))
        sources = np.unique(self.source_ids)
        queues = [list(rng.permutation(np.flatnonzero(self.source_ids == source))) for source in sources]
        remaining = np.array([len(queue) for queue in queues], dtype=np.float64)
        batches: list[list[int]] = []
        while remaining.sum() > 0:
            size = int(min(self.batch_size, remaining.sum()))
            distinct = int(min(size, np.count_nonzero(remaining)))
            picks = list(rng.choice(len(sources), size=distinct, replace=False, p=remaining / remaining.sum()))
            for _ in range(size - distinct):
                remaining_after = remaining.copy()
                np.subtract.at(remaining_after, picks, 1)
                picks.append(int(rng.choice(len(sources), p=remaining_after / remaining_after.sum())))
            batch = []
            for pick in picks:
                batch.append(int(queues[pick].pop()))
                remaining[pick] -= 1
            batches.append(batch)
        self._mix_single_source_batches(batches)
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        order = rng.permutation(len(batches))
        return [batches[index] for index in order]

    def _mixed_without(self, batch: list[int], position: int, source: int) -> bool:
        """Whether ``batch`` without its item at ``position`` still holds an item of a source other than ``source``."""
        return any(self.source_ids[item] != source for index, item in enumerate(batch) if index != position)

    def _mix_single_source_batches(self, batches: list[list[int]]) -> None:
        """Swaps one item of every single-source batch (of 2+ items) with an item of another source from a batch that
        stays mixed (or holds a single item) after the swap."""
        source_of = self.source_ids
        for batch in batches:
            if len(batch) < 2 or len({source_of[item] for item in batch}) > 1:
                continue
            source = source_of[batch[0]]
            for other in batches:
                swap = next(
                    (
                        position
                        for position, item in enumerate(other)
                        if source_of[item] != source
                        and (len(other) < 2 or self._mixed_without(other, position, source))
                    ),
                    None,
                )
                if swap is not None:
                    batch[0], other[swap] = other[swap], batch[0]
                    break
