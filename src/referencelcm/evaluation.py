"""Quality and speed of a pipeline on a Champ-layout test set: the paper's Table 3 (method × steps).

Every test video is generated from its first ``images`` frame (the reference) and the guidance maps of the remaining
frames, and scored against those remaining ``images`` frames. On a SynthDance reenactment split (``referencelcm synth
--split reenact``) the reference is frame 0 of the pair's ``reference/`` folder (identity B's own video) and the ground
truth shows A's motion in B's appearance. SynthDance videos are also scored for appearance (:mod:`referencelcm.metrics`):
person-region SSIM / PSNR / L1, per-part and background colour error (ΔE*ab), identity retrieval over the split, and
on reenactment pairs the reference swap (error to B's appearance over error to A's own) and the spread of the output
over several reference frames. ``calibration_rows`` scores the ground truth itself, the VAE's reconstruction, a
model that ignores the reference and one that ignores the pose, so every table shows what its numbers can reach.
``evaluate_model`` returns one row per number of steps;
``write_report``, ``format_table`` and ``write_plot`` turn rows into ``report.json``, a Markdown table and a PNG;
``paired_difference`` compares two rows video by video (mean difference, its standard error, videos won);
``time_side_by_side`` times several pipelines interleaved on one video, for speed ratios that one busy moment of a
shared machine cannot skew.

    rows = evaluate_model(pipe, "data/test", steps=[1, 2, 4], method="student")
    print(format_table(rows))
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .arguments import atomic_output, write_text_atomically
from .data.layout import (
    IMAGE_FOLDER,
    MASK_FOLDER,
    META_FILE,
    SEMANTIC_FOLDER,
    list_videos,
    read_guidance_frames,
    read_rgb,
    validate_video_dir,
)
from .data.synthdance import NUM_PARTS, ORIGINAL_FOLDER, REENACT_SPLIT, REFERENCE_FOLDER, semantic_part_labels
from .metrics import (
    FrechetDistance,
    LearnedPerceptualDistance,
    appearance_signature,
    identity_retrieval,
    paint_regions,
    part_colour_errors,
    person_region_metrics,
    reference_spread,
    region_mean_colours,
    video_metrics,
)

# Column key, header, and whether higher is better (None: no direction, shown beside the ground truth's value).
QUALITY_COLUMNS = (
    ("ssim", "SSIM ↑", True),
    ("psnr", "PSNR ↑", True),
    ("l1", "L1 ↓", False),
    ("lpips", "LPIPS ↓", False),
    ("fid", "FID ↓", False),
    ("fvd", "FVD ↓", False),
    ("flicker", "Flicker (GT)", None),
)
# The appearance table (SynthDance only): does the generated person wear the reference?
APPEARANCE_COLUMNS = (
    ("person_ssim", "person SSIM ↑", True),
    ("person_l1", "person L1 ↓", False),
    ("part_delta_e", "part ΔE ↓", False),
    ("part_ratio", "part ΔE ÷ ignoring ↓", False),
    ("background_delta_e", "bg ΔE ↓", False),
    ("retrieval", "retrieval (chance) ↑", True),
    ("swap_ratio", "swap ΔE new ÷ orig ↓", False),
    ("reference_spread", "ref. spread ↓", False),
)
SPEED_COLUMN = ("seconds_per_frame", "s / frame ↓", False)
METRIC_COLUMNS = (*QUALITY_COLUMNS, *APPEARANCE_COLUMNS, SPEED_COLUMN)
SELF_SPLIT = "self"
# The metrics a student row is compared on with its teacher, video by video (:func:`teacher_student_comparisons`).
COMPARED_METRICS = ("ssim", "person_l1", "part_delta_e")
# Calibration rows (:func:`calibration_rows`): what the metrics give for the truth, the VAE alone, no reference and no
# pose.
GROUND_TRUTH = "ground truth"
VAE_RECONSTRUCTION = "VAE reconstruction"
IGNORES_REFERENCE = "ignores the reference"
COPIES_REFERENCE = "copies the reference frame"
PLOTTED_METRICS = ("ssim", "psnr", "l1", "lpips", "fid", "fvd", "flicker", "person_l1", "part_delta_e",
                   "seconds_per_frame")
SAMPLE_FPS = 8


@dataclass
class TestVideo:
    """One test video: ``reference`` ``(H, W, 3)`` uint8 (frame 0), ``guidance`` ``{type: (F, H, W, 3)}`` uint8 and
    ``ground_truth`` ``(F, 3, H, W)`` float in [0, 1] for frames 1 … F.

    SynthDance videos also carry the ground truth's regions for the appearance metrics: ``labels`` ``(F, H, W)`` long
    (parts ``0 … NUM_PARTS-1``, background ``-1``) and ``mask`` ``(F, H, W)`` bool. Reenactment pairs
    (``split == "reenact"``) add ``original`` ``(F, 3, H, W)``, the motion video's own frames (A's appearance), and
    ``reference_frames`` ``(K, H, W, 3)`` uint8, every frame of identity B's own video (``reference`` is the first).
    """

    video_id: str
    reference: np.ndarray
    guidance: dict[str, np.ndarray]
    ground_truth: torch.Tensor
    labels: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    original: torch.Tensor | None = None
    reference_frames: np.ndarray | None = None
    split: str = SELF_SPLIT

    @property
    def num_frames(self) -> int:
        return self.ground_truth.shape[0]


@dataclass
class QualityMetrics:
    """Optional learned metrics, each run only when given (they need local weights: :mod:`referencelcm.metrics`)."""

    lpips: LearnedPerceptualDistance | None = None
    fid: FrechetDistance | None = None
    fvd: FrechetDistance | None = None


# ----------------------------------------------------------------------------------------------------------
# Data


def _resize_stack(frames: np.ndarray, resolution: int | None, resample: int = Image.BILINEAR) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 → square ``resolution`` px (bilinear, or ``resample``), unchanged when None."""
    if resolution is None or frames.shape[-3:-1] == (resolution, resolution):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    resized = [np.asarray(Image.fromarray(frame).resize((resolution, resolution), resample)) for frame in flat]
    return np.stack(resized).reshape(*frames.shape[:-3], resolution, resolution, 3)


def load_test_videos(
    data_dir: str | os.PathLike,
    guidance_types: Sequence[str],
    num_videos: int | None = None,
    max_frames: int | None = None,
    resolution: int | None = None,
) -> list[TestVideo]:
    """Read a Champ-layout test set: reference = frame 0 of ``images``, guidance and ground truth = frames 1 ….

    Args:
        data_dir: dataset root (``ROOT/<video>/{images, <guidance types>}``), ``index.json`` order when present.
        guidance_types: the folders the model needs.
        num_videos: evaluate only the first ``num_videos`` videos (None: all).
        max_frames: generate at most this many frames per video (after the reference frame).
        resolution: resize every frame to ``resolution`` × ``resolution`` (None: keep the files' size).

    Raises:
        FileNotFoundError: a missing root, video folder or frame folder (naming it).
        ValueError: a video with fewer than 3 frames (flicker needs ≥ 2 generated frames) or bad arguments.
    """
    for name, value in (("num_videos", num_videos), ("max_frames", max_frames), ("resolution", resolution)):
        if value is not None and value < 1:
            raise ValueError(f"`{name}` must be >= 1 or None, got {value}.")
    if max_frames is not None and max_frames < 2:
        raise ValueError(f"`max_frames` must be >= 2 (flicker compares consecutive frames), got {max_frames}.")
    video_dirs = list_videos(data_dir)
    if not video_dirs:
        raise FileNotFoundError(f"`data_dir` {str(data_dir)!r} contains no video folders.")
    videos = []
    for video_dir in video_dirs[:num_videos]:
        video = validate_video_dir(video_dir, guidance_types, require_images=True)
        if video.num_frames < 3:
            raise ValueError(
                f"video {str(video_dir)!r} has {video.num_frames} frames; evaluation needs >= 3 "
                "(1 reference + >= 2 generated)."
            )
        frames = list(range(1, video.num_frames))[:max_frames]
        images = np.stack([read_rgb(video.frame_path(IMAGE_FOLDER, index)) for index in [0, *frames]])
        images = _resize_stack(images, resolution)
        guidance = {
            name: _resize_stack(stack, resolution)
            for name, stack in read_guidance_frames(video, guidance_types, frames).items()
        }
        ground_truth = _to_tensor(images[1:])
        test_video = TestVideo(video_dir.name, images[0], guidance, ground_truth)
        _add_synthdance_regions(test_video, video, frames, resolution)
        videos.append(test_video)
    return videos


def _to_tensor(frames: np.ndarray) -> torch.Tensor:
    """``(F, H, W, 3)`` uint8 → ``(F, 3, H, W)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 255.0


def _read_folder(video_dir: Path, folder: str, frames: Sequence[int] | None, resolution: int | None,
                 resample: int = Image.BILINEAR) -> np.ndarray:
    """Frames (0-based numbers; None: all) of ``video_dir/folder`` as ``(F, H, W, 3)`` uint8, naturally ordered."""
    files = sorted((video_dir / folder).glob("*.png"), key=lambda path: int(path.stem) if path.stem.isdigit() else 0)
    if not files:
        raise FileNotFoundError(f"video {str(video_dir)!r}: folder {folder!r} is missing or holds no PNG frames.")
    chosen = files if frames is None else [files[index] for index in frames]
    return _resize_stack(np.stack([read_rgb(path) for path in chosen]), resolution, resample)


def _add_synthdance_regions(test_video: TestVideo, video: Any, frames: list[int], resolution: int | None) -> None:
    """Fill ``labels`` / ``mask`` (and a reenactment pair's ``original`` / ``reference_frames``) from a SynthDance
    video's ``semantic_map`` and ``mask`` folders and ``meta.json``; other videos are left without them."""
    meta_path = video.path / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8")) if meta_path.is_file() else {}
    except json.JSONDecodeError as error:
        raise ValueError(f"video {str(video.path)!r}: {META_FILE} is not valid JSON ({error}).") from error
    if meta.get("generator") != "synthdance" or not (video.path / SEMANTIC_FOLDER).is_dir():
        return
    semantic = _read_folder(video.path, SEMANTIC_FOLDER, frames, resolution, Image.NEAREST)
    test_video.labels = torch.from_numpy(semantic_part_labels(semantic).astype(np.int64))
    if (video.path / MASK_FOLDER).is_dir():
        mask = _read_folder(video.path, MASK_FOLDER, frames, resolution, Image.NEAREST)
        test_video.mask = torch.from_numpy(mask[..., 0] > 127)
    else:
        test_video.mask = test_video.labels >= 0
    if "reenact" in meta:
        pairing = meta["reenact"]
        references = _read_folder(video.path, pairing.get("reference_folder", REFERENCE_FOLDER), None, resolution)
        test_video.reference_frames = references
        test_video.reference = references[0]
        original_folder = pairing.get("original_folder", ORIGINAL_FOLDER)
        test_video.original = _to_tensor(_read_folder(video.path, original_folder, frames, resolution))
        test_video.split = REENACT_SPLIT


# ----------------------------------------------------------------------------------------------------------
# Generation and scoring


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_video(
    pipe: Any,
    video: TestVideo,
    num_inference_steps: int,
    guidance_scale: float,
    seed: int,
    reference: np.ndarray | None = None,
    **call_kwargs: Any,
) -> tuple[torch.Tensor, float]:
    """Generate one test video with a fixed seed: ``(F, 3, H, W)`` in [0, 1] on CPU, and the wall-clock seconds.

    ``reference`` ``(H, W, 3)`` uint8 replaces the video's own reference (same guidance, same noise).
    """
    device = pipe._execution_device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    height, width = video.ground_truth.shape[-2:]
    _synchronize(device)
    start = time.perf_counter()
    output = pipe(
        video.reference if reference is None else reference, video.guidance, num_inference_steps=num_inference_steps,
        guidance_scale=guidance_scale, height=height, width=width, generator=generator, output_type="pt",
        **call_kwargs,
    )
    _synchronize(device)
    seconds = time.perf_counter() - start
    return output.frames[0].float().clamp(0, 1).cpu(), seconds


@dataclass(frozen=True)
class SpeedRun:
    """One contender of :func:`time_side_by_side`: a pipeline and how it samples (``label`` names its row)."""

    label: str
    pipe: Any
    num_inference_steps: int
    guidance_scale: float = 1.0


def time_side_by_side(
    runs: Sequence[SpeedRun], video: TestVideo, repeats: int = 5, seed: int = 0, **call_kwargs: Any
) -> list[dict[str, Any]]:
    """End-to-end seconds per frame of several pipelines on one test video, measured interleaved.

    :func:`evaluate_model` times each method in its own pass, minutes apart, so a ratio of its ``seconds_per_frame``
    also measures how busy the machine was in each pass. Here every run is warmed up once, then each of ``repeats``
    rounds calls every run once, in an order rotated by one per round, and each run keeps the median of its rounds.

    Args:
        runs: the contenders; the first is the baseline of ``speedup`` (e.g. the teacher at 20 steps with CFG).
        video: the test video every call generates (``video.num_frames`` frames, same seed for every call).
        repeats: timed calls per run.
        call_kwargs: passed to every pipeline call (``context_frames``, ``decode_chunk_size``, …).

    Returns:
        One dict per run, in order: ``method`` (its label), ``steps``, ``guidance_scale``, ``repeats``,
        ``seconds_per_frame`` (the median), ``samples`` (every round's seconds per frame) and ``speedup``
        (the baseline's median over this run's).
    """
    if not runs:
        raise ValueError("`runs` must name at least one pipeline to time.")
    labels = [run.label for run in runs]
    if len(set(labels)) != len(labels):
        raise ValueError(f"`runs` must have unique labels, got {labels}.")
    if repeats < 1:
        raise ValueError(f"`repeats` must be >= 1, got {repeats}.")

    def seconds_per_frame(run: SpeedRun) -> float:
        _, seconds = generate_video(run.pipe, video, run.num_inference_steps, run.guidance_scale, seed, **call_kwargs)
        return seconds / video.num_frames

    for run in runs:
        seconds_per_frame(run)  # warm-up, untimed
    samples: dict[str, list[float]] = {label: [] for label in labels}
    for round_index in range(repeats):
        shift = round_index % len(runs)
        for run in [*runs[shift:], *runs[:shift]]:
            samples[run.label].append(seconds_per_frame(run))
    baseline = float(np.median(samples[labels[0]]))
    rows = []
    for run in runs:
        median = float(np.median(samples[run.label]))
        rows.append({
            "method": run.label,
            "steps": int(run.num_inference_steps),
            "guidance_scale": float(run.guidance_scale),
            "repeats": repeats,
            "seconds_per_frame": median,
            "samples": samples[run.label],
            "speedup": baseline / median,
        })
    return rows


def format_speed_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`time_side_by_side` rows: median seconds per frame and the speed-up over the first."""
    if not rows:
        raise ValueError("`rows` is empty: nothing to tabulate.")
    lines = [
        f"| Method | Steps | CFG | median s / frame ({rows[0]['repeats']} interleaved calls) ↓ | "
        f"speed-up over {rows[0]['method']} ↑ |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['method']} | {row['steps']} | {row['guidance_scale']:g} | "
            f"{_format_value(row['seconds_per_frame'], 'seconds_per_frame')} | {row['speedup']:.2f}× |"
        )
    return "\n".join(lines) + "\n"


def paired_difference(row: dict[str, Any], baseline: dict[str, Any], key: str = "ssim") -> dict[str, Any]:
    """``row − baseline`` in metric ``key``, video by video: both rows must come from the same test videos.

    On a small test split the mean of one method moves with the split far more than the difference between two
    methods on the same videos does, so a comparison is reported as the mean of the per-video differences with
    its standard error, and the number of videos on which ``row`` is better.

    Args:
        row, baseline: :func:`evaluate_model` rows (with ``per_video``), e.g. the student and the teacher at 4 steps.
        key: a per-video metric (``"ssim"``, ``"psnr"``, ``"l1"``, ``"lpips"``).

    Returns:
        ``method``, ``steps``, ``baseline_method``, ``baseline_steps``, ``metric``, ``difference`` (mean of
        ``row − baseline``), ``standard_error`` (of that mean; NaN for one video), ``better`` (videos where ``row``
        is better, in the metric's direction) and ``num_videos``.
    """
    directions = {column: higher for column, _, higher in METRIC_COLUMNS}
    if directions.get(key) is None:
        choices = [column for column, higher in directions.items() if higher is not None]
        raise ValueError(f"`key` must be a metric with a direction, one of {choices}; got {key!r}.")
    values = []
    for name, source in (("row", row), ("baseline", baseline)):
        per_video = source.get("per_video", {}).get(key)
        if per_video is None:
            raise ValueError(
                f"`{name}` ({source.get('method')!r}) has no per-video {key!r} scores; pass rows of evaluate_model."
            )
        values.append(np.asarray(per_video, dtype=np.float64))
    if values[0].shape != values[1].shape:
        raise ValueError(
            f"`row` and `baseline` must score the same videos; got {values[0].size} and {values[1].size} videos."
        )
    differences = values[0] - values[1]
    standard_error = float(differences.std(ddof=1) / math.sqrt(differences.size)) if differences.size > 1 else math.nan
    better = differences > 0 if directions[key] else differences < 0
    return {
        "method": row["method"],
        "steps": row["steps"],
        "baseline_method": baseline["method"],
        "baseline_steps": baseline["steps"],
        "metric": key,
        "difference": float(differences.mean()),
        "standard_error": standard_error,
        "better": int(better.sum()),
        "num_videos": int(differences.size),
    }


def format_difference(comparison: dict[str, Any]) -> str:
    """One :func:`paired_difference` result as ``"+0.0064 ± 0.0082"`` (no ``±`` part for a single video)."""
    key = comparison["metric"]
    sign = "+" if comparison["difference"] >= 0 else ""
    text = sign + _format_value(comparison["difference"], key)
    if not math.isnan(comparison["standard_error"]):
        text += f" ± {_format_value(comparison['standard_error'], key)}"
    return text


def format_comparison_table(comparisons: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`paired_difference` results: difference ± standard error, videos won."""
    if not comparisons:
        raise ValueError("`comparisons` is empty: nothing to tabulate.")
    headers = {key: header for key, header, _ in METRIC_COLUMNS}
    lines = [
        "| Method | vs | metric | difference ± standard error | better on |",
        "|---|---|---|---:|---:|",
    ]
    for item in comparisons:
        split = f" ({item['split']})" if item.get("split", SELF_SPLIT) != SELF_SPLIT else ""
        lines.append(
            f"| {item['method']} {item['steps']} steps{split} | {item['baseline_method']} {item['baseline_steps']} steps | "
            f"{headers[item['metric']]} | {format_difference(item)} | {item['better']} of {item['num_videos']} videos |"
        )
    return "\n".join(lines) + "\n"


def teacher_student_comparisons(
    rows: Sequence[dict[str, Any]], key: str = "ssim", teacher: str = "teacher"
) -> list[dict[str, Any]]:
    """Every ``"student"`` row against the ``teacher`` row of the same steps and split, and the teacher's most-steps
    row of that split (rows without ``key`` per video are skipped).

    ``teacher`` is the method label of the baseline rows, e.g. a second teacher pass at another CFG scale.
    """
    comparisons = []
    for split in dict.fromkeys(row.get("split", SELF_SPLIT) for row in rows):
        in_split = [row for row in rows if row.get("split", SELF_SPLIT) == split and key in row.get("per_video", {})]
        teachers = {row["steps"]: row for row in in_split if row["method"] == teacher}
        if not teachers:
            continue
        most_steps = max(teachers)
        for row in in_split:
            if row["method"] != "student":
                continue
            for steps in dict.fromkeys((row["steps"], most_steps)):
                if steps in teachers:
                    comparisons.append({**paired_difference(row, teachers[steps], key), "split": split})
    return comparisons


def evaluate_model(
    pipe: Any,
    data_dir: str | os.PathLike | None,
    steps: Sequence[int],
    guidance_scale: float = 1.0,
    method: str = "student",
    *,
    videos: list[TestVideo] | None = None,
    num_videos: int | None = None,
    max_frames: int | None = None,
    resolution: int | None = None,
    seed: int = 0,
    context_frames: int = 24,
    context_overlap: int = 4,
    decode_chunk_size: int = 8,
    sample_dir: str | os.PathLike | None = None,
    metrics: QualityMetrics | None = None,
    warmup: bool = True,
    progress: bool = True,
    timesteps: Sequence[int] | None = None,
    reference_frames: int = 1,
) -> list[dict[str, Any]]:
    """Generate every test video at every number of steps and score it against the ground truth.

    Video ``i`` always starts from the noise of ``seed + i``, so methods and step counts see the same inputs.

    Args:
        pipe: a :class:`~referencelcm.ReferenceLCMPipeline` with the scheduler to evaluate (DDIM teacher, LCM student).
        data_dir: Champ-layout test set (ignored when ``videos`` is given, e.g. to share one read between methods).
        steps: numbers of inference steps, one row each.
        guidance_scale: CFG scale (> 1 turns CFG on: teacher mode); 1 for a distilled student.
        method: the row label (``"teacher"``, ``"student"``, …).
        num_videos, max_frames, resolution: see :func:`load_test_videos`.
        sample_dir: when given, the first video of each row is written there side by side
            (reference | ground truth | generated) as ``<method>_<steps>steps_<video>.mp4``.
        metrics: optional LPIPS / FID / FVD.
        warmup: generate the first video once, untimed, before measuring (first calls pay for allocation and kernels).
        timesteps: custom timesteps for every call (an ``LCMScheduler`` takes them); ``steps`` must then be
            ``[len(timesteps)]``. The row records them as ``timesteps``.
        reference_frames: K ≥ 2 also generates every reenactment pair from K frames of identity B's own video
            (evenly spaced, the first being the usual reference; same guidance and noise) and records their
            :func:`~referencelcm.metrics.reference_spread` (K - 1 extra generations per pair and row).

    Returns:
        One dict per entry of ``steps``: ``method``, ``steps``, ``guidance_scale``, ``num_videos``, ``num_frames``,
        the means over videos of ``ssim``, ``psnr``, ``l1``, ``flicker``, ``flicker_ground_truth`` (and ``lpips``),
        ``fid`` / ``fvd`` over all frames / videos when given, ``seconds_per_frame``, ``sample_video`` and
        ``per_video``: ``{metric: [one value per video, in videos order]}``. SynthDance videos add the appearance
        scores (:func:`score_video`) and ``retrieval`` (the share of videos whose colour signature is nearest to their
        own ground truth's among the split's, with ``retrieval_chance``); rows carry the ``split`` of their videos.
    """
    if reference_frames < 1:
        raise ValueError(f"`reference_frames` must be >= 1, got {reference_frames}.")
    if not steps:
        raise ValueError("`steps` must name at least one number of inference steps.")
    if videos is None:
        if data_dir is None:
            raise ValueError("either `data_dir` or `videos` must be given.")
        videos = load_test_videos(data_dir, pipe.guidance_types, num_videos, max_frames, resolution)
    metrics = metrics or QualityMetrics()
    call_kwargs = dict(
        context_frames=context_frames, context_overlap=context_overlap, decode_chunk_size=decode_chunk_size
    )
    if timesteps is not None:
        if list(steps) != [len(timesteps)]:
            raise ValueError(
                f"with `timesteps` {list(timesteps)}, `steps` must be [{len(timesteps)}]; got {list(steps)}."
            )
        call_kwargs["timesteps"] = list(timesteps)
    if warmup:
        generate_video(pipe, videos[0], steps[0], guidance_scale, seed, **call_kwargs)
    rows = []
    bar = tqdm(total=len(steps) * len(videos), desc=f"evaluate {method}", unit="video", disable=not progress)
    for num_steps in steps:
        scores: list[dict[str, float]] = []
        total_seconds, total_frames, sample_video = 0.0, 0, None
        for distance in (metrics.fid, metrics.fvd):
            if distance is not None:
                distance.reset()
        signatures = []
        for index, video in enumerate(videos):
            generated, seconds = generate_video(pipe, video, num_steps, guidance_scale, seed + index, **call_kwargs)
            total_seconds += seconds
            total_frames += video.num_frames
            score = score_video(generated, video, metrics)
            if reference_frames > 1 and video.reference_frames is not None:
                outputs = [generated]
                for reference in _spread_references(video, reference_frames)[1:]:
                    outputs.append(generate_video(
                        pipe, video, num_steps, guidance_scale, seed + index, reference=reference, **call_kwargs
                    )[0])
                score["reference_spread"] = reference_spread(torch.stack(outputs)).item()
            scores.append(score)
            signatures.append(_signature(generated, video))
            if sample_dir is not None and index == 0:
                sample_video = str(write_side_by_side(
                    Path(sample_dir) / f"{method}_{num_steps}steps_{video.video_id}.mp4", video, generated
                ))
            bar.update()
        row = _row(method, num_steps, guidance_scale, videos, scores, signatures)
        row.update({"seconds_per_frame": total_seconds / total_frames, "sample_video": sample_video})
        if timesteps is not None:
            row["timesteps"] = list(timesteps)
        row.update(_frechet_scores(metrics))
        rows.append(row)
    bar.close()
    return rows


def score_video(generated: torch.Tensor, video: TestVideo, metrics: QualityMetrics | None = None) -> dict[str, float]:
    """Scores of one generated video ``(F, 3, H, W)`` in [0, 1] against ``video``'s ground truth.

    Always ``ssim``, ``psnr``, ``l1``, ``flicker``, ``flicker_ground_truth`` (and ``lpips`` when given); FID / FVD
    features are accumulated in ``metrics`` and computed per row. With the ground truth's regions (SynthDance):
    ``person_ssim`` / ``person_psnr`` / ``person_l1`` (inside the person mask dilated by 2 px), ``part_delta_e``,
    ``background_delta_e`` and ``appearance_delta_e`` (mean ΔE*ab of the region colours: the person's parts, the
    background, all regions), each averaged over frames. A reenactment pair adds ``original_delta_e`` (the same error
    measured against A's own appearance) and ``swap_ratio`` = ``appearance_delta_e / original_delta_e``: below 1 the
    output wears the reference it was given rather than the motion video's own look.
    """
    metrics = metrics or QualityMetrics()
    ground_truth = video.ground_truth
    scores = video_metrics(generated, ground_truth)
    if metrics.lpips is not None:
        scores["lpips"] = metrics.lpips(generated, ground_truth).mean().item()
    if metrics.fid is not None:
        metrics.fid.update(ground_truth, real=True)
        metrics.fid.update(generated, real=False)
    if metrics.fvd is not None:
        metrics.fvd.update(ground_truth.permute(1, 0, 2, 3)[None], real=True)
        metrics.fvd.update(generated.permute(1, 0, 2, 3)[None], real=False)
    if video.labels is None:
        return scores
    for key, values in person_region_metrics(generated, ground_truth, video.mask).items():
        if key.startswith("person_"):
            scores[key] = _nanmean(values)
    errors = part_colour_errors(generated, ground_truth, video.labels, NUM_PARTS)
    scores.update(
        part_delta_e=_nanmean(errors["part"]), background_delta_e=_nanmean(errors["background"]),
        appearance_delta_e=_nanmean(errors["all"]),
    )
    if video.original is not None:
        original = _nanmean(part_colour_errors(generated, video.original, video.labels, NUM_PARTS)["all"])
        appearance = scores["appearance_delta_e"]
        scores.update(original_delta_e=original, swap_ratio=_swap(appearance, original))
    return scores


def _swap(appearance: float, original: float) -> float:
    return appearance / original if original > 0 else (math.inf if appearance > 0 else math.nan)


def swap_ratio(per_video: Mapping[str, Sequence[float]]) -> float:
    """A reenactment row's reference swap: the mean over its videos of the error to the reference's appearance
    (``appearance_delta_e``) over the mean of the error to the motion video's own (``original_delta_e``), a ratio
    of means (one hard video cannot dominate it as a mean of per-video ratios can). NaN without both lists."""
    if "appearance_delta_e" not in per_video or "original_delta_e" not in per_video:
        return math.nan
    return _swap(float(np.nanmean(per_video["appearance_delta_e"])), float(np.nanmean(per_video["original_delta_e"])))


def per_video_means(per_video: Mapping[str, Sequence[float]]) -> dict[str, float]:
    """A row's scores from its ``per_video`` lists: each one's mean over the videos (NaN where every video's is NaN),
    except the reference swap, a ratio of means (:func:`swap_ratio`). Rows pooled over splits use it too."""
    means = {key: float(np.nanmean(values)) if not all(map(math.isnan, values)) else math.nan
             for key, values in per_video.items()}
    if "swap_ratio" in means:
        means["swap_ratio"] = swap_ratio(per_video)
    return means


def _nanmean(values: torch.Tensor) -> float:
    finite = values[~values.isnan()]
    return finite.mean().item() if finite.numel() else math.nan


def _signature(generated: torch.Tensor, video: TestVideo) -> torch.Tensor | None:
    """The generated video's colour signature ``(NUM_PARTS + 1, 3)`` on the ground truth's regions (None without)."""
    return None if video.labels is None else appearance_signature(generated, video.labels, NUM_PARTS)


def _spread_references(video: TestVideo, count: int) -> list[np.ndarray]:
    """``count`` evenly spaced frames of the reenactment pair's ``reference_frames``, the first being frame 0."""
    positions = np.unique(np.linspace(0, len(video.reference_frames) - 1, count).round().astype(int))
    return [video.reference_frames[position] for position in positions]


def _row(
    method: str,
    steps: int | None,
    guidance_scale: float | None,
    videos: Sequence[TestVideo],
    scores: Sequence[dict[str, float]],
    signatures: Sequence[torch.Tensor | None],
) -> dict[str, Any]:
    """One table row: means over videos of every score, ``per_video`` lists and, when every video has its regions,
    identity ``retrieval`` against the ground-truth signatures of the same videos."""
    keys = [key for key in scores[0] if all(key in score for score in scores)]
    per_video = {key: [float(score[key]) for score in scores] for key in keys}
    row = {
        "method": method,
        "steps": None if steps is None else int(steps),
        "guidance_scale": None if guidance_scale is None else float(guidance_scale),
        "split": videos[0].split if len({video.split for video in videos}) == 1 else "mixed",
        "num_videos": len(videos),
        "num_frames": sum(video.num_frames for video in videos),
        **per_video_means(per_video),
    }
    if len(videos) > 1 and all(signature is not None for signature in signatures):
        gallery = torch.stack([_ground_truth_signature(video) for video in videos])
        retrieval = identity_retrieval(torch.stack(list(signatures)), gallery, torch.arange(len(videos)))
        per_video["retrieval"] = retrieval["correct"].double().tolist()
        row.update(retrieval=retrieval["accuracy"], retrieval_chance=retrieval["chance"])
    row["per_video"] = per_video  # in ``videos`` order, for comparisons paired video by video (paired_difference)
    return row


def _ground_truth_signature(video: TestVideo) -> torch.Tensor:
    return appearance_signature(video.ground_truth, video.labels, NUM_PARTS)


def split_mean_colours(videos: Sequence[TestVideo]) -> torch.Tensor:
    """The split's average colour of every region: the mean over videos of each video's mean RGB colour of that
    region (over the frames showing it), ``(NUM_PARTS + 1, 3)`` in [0, 1] (grey where no video shows a region)."""
    per_video = [region_mean_colours(video.ground_truth, video.labels, NUM_PARTS).nanmean(dim=0) for video in videos]
    colours = torch.stack(per_video).nanmean(dim=0)
    return torch.nan_to_num(colours, nan=0.5)


@torch.no_grad()
def reconstruct_with_vae(vae: Any, frames: torch.Tensor, chunk_size: int = 8) -> torch.Tensor:
    """Encode → decode ``frames`` ``(F, 3, H, W)`` in [0, 1] through an autoencoder (the latent distribution's mode
    for an ``AutoencoderKL``), in chunks; ``(F, 3, H, W)`` in [0, 1] on CPU. No diffusion: the VAE's ceiling."""
    parameter = next(vae.parameters())
    outputs = []
    for chunk in frames.split(chunk_size):
        pixels = (chunk * 2 - 1).to(parameter.device, parameter.dtype)
        encoded = vae.encode(pixels)
        latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
        decoded = vae.decode(latents).sample
        outputs.append(((decoded.float() + 1) / 2).clamp(0, 1).cpu())
    return torch.cat(outputs)


def calibration_rows(videos: Sequence[TestVideo], vae: Any | None = None) -> list[dict[str, Any]]:
    """The rows every appearance table needs to be read: what its metrics give for

    * ``ground truth``: the true frames themselves (ΔE 0, retrieval 100 %);
    * ``VAE reconstruction``: the true frames through ``vae`` alone (the ceiling of any model using that VAE);
    * ``ignores the reference``: every region of the true frames painted in the split's average colour of that region
      (:func:`split_mean_colours`): a model that gets pose and body right but ignores the reference (chance retrieval).
    * ``copies the reference frame``: the reference image as every output frame, a model that ignores the pose. Where
      the person moves little its colour errors are small: only the person-region metrics tell it from a model.

    Only for videos with regions (SynthDance). A reenactment split's ``swap_ratio`` is scored as for a model.
    """
    if not videos or any(video.labels is None for video in videos):
        raise ValueError("`videos` must be SynthDance test videos with semantic maps (the regions the metrics use).")
    colours = split_mean_colours(videos)
    candidates = [(GROUND_TRUTH, lambda video: video.ground_truth)]
    if vae is not None:
        candidates.append((VAE_RECONSTRUCTION, lambda video: reconstruct_with_vae(vae, video.ground_truth)))
    candidates.append((IGNORES_REFERENCE, lambda video: paint_regions(video.labels, colours).float()))
    candidates.append((COPIES_REFERENCE, lambda video: _to_tensor(video.reference[None]).expand_as(video.ground_truth)))
    rows = []
    for label, produce in candidates:
        outputs = [produce(video) for video in videos]
        scores = [score_video(output, video) for output, video in zip(outputs, videos)]
        signatures = [_signature(output, video) for output, video in zip(outputs, videos)]
        rows.append(_row(label, None, None, videos, scores, signatures))
    return rows


# The autoencoder gate (:func:`autoencoder_gate`): a VAE must keep the person's colours before a teacher trains on it.
GATE_MAX_PART_RATIO = 0.15
GATE_MAX_PERSON_MAE = 10.0


def autoencoder_gate(
    vae: Any,
    videos: Sequence[TestVideo],
    max_part_ratio: float = GATE_MAX_PART_RATIO,
    max_person_mae: float = GATE_MAX_PERSON_MAE,
) -> dict[str, Any]:
    """Does an autoencoder carry the person's appearance? Encode → decode every ground-truth frame of ``videos``
    (SynthDance, with regions; no diffusion) and compare with the truth and with a model that ignores the reference.

    Measured over all frames of all videos:

    * ``person_mae``: mean absolute error inside the true person mask (not dilated), in RGB units 0–255;
    * ``part_delta_e`` / ``baseline_part_delta_e``: mean per-part ΔE*ab of the reconstruction / of every part painted
      in the split's mean colour (:func:`split_mean_colours`), and their ratio ``part_ratio``;
    * ``part_rgb_ratio``: the same ratio with Euclidean distances of 0–255 RGB means instead of ΔE.

    ``passed`` is True when both ratios are at most ``max_part_ratio`` and ``person_mae`` at most ``max_person_mae``;
    ``message`` says so in one line, naming what missed.
    """
    if not videos or any(video.labels is None for video in videos):
        raise ValueError("`videos` must be SynthDance test videos with semantic maps (the regions the gate uses).")
    colours = split_mean_colours(videos)
    absolute, parts = [], {"lab": ([], []), "rgb": ([], [])}
    for video in videos:
        reconstruction = reconstruct_with_vae(vae, video.ground_truth)
        baseline = paint_regions(video.labels, colours).float()
        person = person_region_metrics(reconstruction, video.ground_truth, video.mask, dilation=0)["person_l1"]
        absolute.append(person[~person.isnan()] * 255)
        for space, (produced, ignored) in parts.items():
            produced.append(part_colour_errors(reconstruction, video.ground_truth, video.labels, NUM_PARTS,
                                               colour_space=space)["part"])
            ignored.append(part_colour_errors(baseline, video.ground_truth, video.labels, NUM_PARTS,
                                              colour_space=space)["part"])
    means = {space: [_nanmean(torch.cat(values)) for values in pair] for space, pair in parts.items()}
    result = {
        "person_mae": _nanmean(torch.cat(absolute)),
        "part_delta_e": means["lab"][0],
        "baseline_part_delta_e": means["lab"][1],
        "part_ratio": means["lab"][0] / means["lab"][1],
        "part_rgb_ratio": means["rgb"][0] / means["rgb"][1],
        "max_part_ratio": max_part_ratio,
        "max_person_mae": max_person_mae,
        "num_videos": len(videos),
    }
    misses = [f"{name} {result[key]:.3f} > {limit:g}" for name, key, limit in (
        ("part ΔE ratio", "part_ratio", max_part_ratio), ("part RGB ratio", "part_rgb_ratio", max_part_ratio),
        ("person MAE", "person_mae", max_person_mae)) if not result[key] <= limit]
    result["passed"] = not misses
    summary = (f"person MAE {result['person_mae']:.1f} (≤ {max_person_mae:g}), part ΔE {result['part_delta_e']:.2f} "
               f"= {result['part_ratio']:.3f} × ignoring the reference (RGB: {result['part_rgb_ratio']:.3f}; "
               f"≤ {max_part_ratio:g}) on {len(videos)} videos")
    result["message"] = ("autoencoder gate passed: " if not misses else
                         f"autoencoder gate failed ({'; '.join(misses)}): ") + summary
    return result


# The image-encoder probe (:func:`image_encoder_probe`): at 128 px a random tiny CLIP scores 1.00–1.06, one from
# `train_teacher.py --stage image_encoder` on 512 identities 0.58–0.60 (benchmarks/RESULTS.md).
PROBE_MAX_RATIO = 0.8


@torch.no_grad()
def image_embeddings(image_encoder: Any, feature_extractor: Any, frames: torch.Tensor,
                     chunk_size: int = 64) -> torch.Tensor:
    """``image_embeds`` ``(F, D)`` float32 on CPU of ``frames`` ``(F, 3, H, W)`` in [0, 1], preprocessed by
    ``feature_extractor`` (a ``CLIPImageProcessor``) exactly as the pipeline preprocesses a reference image."""
    parameter = next(image_encoder.parameters())
    images = (frames.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    embeds = []
    for start in range(0, len(images), chunk_size):
        pixels = feature_extractor(images=list(images[start : start + chunk_size]), return_tensors="pt").pixel_values
        embeds.append(image_encoder(pixels.to(parameter.device, parameter.dtype)).image_embeds.float().cpu())
    return torch.cat(embeds)


def _embeddings_and_part_colours(
    image_encoder: Any, feature_extractor: Any, videos: Sequence[TestVideo]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ground-truth frame's embedding ``(N, D)`` and part colours ``(N, NUM_PARTS, 3)`` (NaN where absent)."""
    if not videos or any(video.labels is None for video in videos):
        raise ValueError("the probe needs SynthDance videos with semantic maps (the parts whose colours it predicts).")
    embeds = torch.cat([image_embeddings(image_encoder, feature_extractor, video.ground_truth) for video in videos])
    colours = torch.cat([region_mean_colours(video.ground_truth, video.labels, NUM_PARTS)[:, :NUM_PARTS]
                         for video in videos])
    return embeds.double(), colours


def _ridge_predict(features: torch.Tensor, targets: torch.Tensor, queries: torch.Tensor, ridge: float) -> torch.Tensor:
    """Ridge regression (standardised features plus a bias) of each target column ``targets`` ``(N, K)`` on
    ``features`` ``(N, D)``, fit on the rows where that column is not NaN; predictions ``(M, K)`` for ``queries``
    (NaN for a column with no such row)."""
    mean, std = features.mean(0), features.std(0) + 1e-6
    design = torch.cat([(features - mean) / std, torch.ones(len(features), 1, dtype=features.dtype)], 1)
    query = torch.cat([(queries - mean) / std, torch.ones(len(queries), 1, dtype=queries.dtype)], 1)
    penalty = ridge * torch.eye(design.shape[1], dtype=design.dtype)
    penalty[-1, -1] = 0  # the bias is not shrunk: with uninformative features the probe predicts the mean
    columns = []
    for column in targets.T:
        present = ~column.isnan()
        if not present.any():
            columns.append(torch.full((len(queries),), math.nan, dtype=query.dtype))
            continue
        rows = design[present]
        weights = torch.linalg.solve(rows.T @ rows + penalty * int(present.sum()), rows.T @ column[present])
        columns.append(query @ weights)
    return torch.stack(columns, 1)


def image_encoder_probe(
    image_encoder: Any,
    feature_extractor: Any,
    fit_videos: Sequence[TestVideo],
    test_videos: Sequence[TestVideo],
    max_ratio: float = PROBE_MAX_RATIO,
    ridge: float = 1e-2,
) -> dict[str, Any]:
    """Does an image encoder's embedding carry the person's colours? A linear probe: ridge regression from the
    ``image_embeds`` of a frame to the mean RGB colour of each body part in it, fit on ``fit_videos`` and scored on
    ``test_videos`` (SynthDance videos with regions; use identities the encoder never saw).

    The cross-attention reading ``image_embeds`` is linear in them, so colours a linear probe cannot recover from the
    embedding are colours the UNets cannot read from it either.

    Returns ``probe_error`` (mean Euclidean distance, RGB 0–255, over every part present in every test frame and in
    some fit frame), ``baseline_error`` (predicting the fit frames' mean colour of each part: what an embedding that
    carries nothing gives), ``ratio`` (probe ÷ baseline), ``passed`` (``ratio <= max_ratio``) and a one-line
    ``message``.
    """
    fit_embeds, fit_colours = _embeddings_and_part_colours(image_encoder, feature_extractor, fit_videos)
    test_embeds, test_colours = _embeddings_and_part_colours(image_encoder, feature_extractor, test_videos)
    targets = fit_colours.flatten(1)  # (N, NUM_PARTS * 3)
    predicted = _ridge_predict(fit_embeds, targets, test_embeds, ridge).view_as(test_colours)
    mean_colours = torch.nanmean(fit_colours, dim=0, keepdim=True).expand_as(test_colours)
    present = ~test_colours.isnan().any(-1) & ~mean_colours.isnan().any(-1)  # parts shown in both sets

    def error(colours: torch.Tensor) -> float:
        return float(((colours - test_colours).norm(dim=-1)[present] * 255).mean())

    result = {"probe_error": error(predicted), "baseline_error": error(mean_colours), "max_ratio": max_ratio,
              "num_fit_videos": len(fit_videos), "num_test_videos": len(test_videos)}
    result["ratio"] = result["probe_error"] / result["baseline_error"]
    result["passed"] = result["ratio"] <= max_ratio
    result["message"] = (
        f"image encoder probe {'passed' if result['passed'] else 'failed'}: part colours from the embedding "
        f"{result['probe_error']:.1f} RGB = {result['ratio']:.3f} × the mean-colour guess ({result['baseline_error']:.1f};"
        f" ≤ {max_ratio:g}), fit on {len(fit_videos)} videos, scored on {len(test_videos)}")
    return result


def _frechet_scores(metrics: QualityMetrics) -> dict[str, float]:
    scores = {}
    for key, distance in (("fid", metrics.fid), ("fvd", metrics.fvd)):
        if distance is None:
            continue
        try:
            scores[key] = distance.compute()
        except ValueError as error:  # e.g. FVD over a single video
            warnings.warn(f"{key.upper()} not computed: {error}")
    return scores


# ----------------------------------------------------------------------------------------------------------
# Outputs


def write_side_by_side(
    path: str | os.PathLike, video: TestVideo, generated: torch.Tensor, fps: int = SAMPLE_FPS
) -> Path:
    """Write ``reference | ground truth | generated`` as an mp4 (a GIF if ffmpeg is unavailable), atomically.

    Returns the path written (its suffix is ``.gif`` after the fallback).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    reference = np.broadcast_to(video.reference, (video.num_frames, *video.reference.shape))
    ground_truth = (video.ground_truth.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    generated = (generated.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    frames = np.concatenate([reference, ground_truth, generated], axis=2)
    try:
        from diffusers.utils import export_to_video

        with atomic_output(path) as temporary:
            export_to_video([frame.astype(np.float32) / 255.0 for frame in frames], temporary, fps=fps)
    except Exception as error:  # no ffmpeg backend: fall back to an animated GIF
        warnings.warn(f"mp4 export failed ({error}); writing a GIF instead.")
        path = path.with_suffix(".gif")
        images = [Image.fromarray(frame) for frame in frames]
        with atomic_output(path) as temporary:
            images[0].save(
                temporary, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0
            )
    return path


def _format_value(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key == "retrieval":
        return f"{100 * value:.1f}%"
    if key in ("psnr", "fid", "fvd", "part_delta_e", "background_delta_e"):
        return f"{value:.2f}"
    if key == "seconds_per_frame":
        return f"{value:.4g}"
    return f"{value:.4f}"


def baseline_ratio(rows: Sequence[dict[str, Any]], row: dict[str, Any], key: str = "part_delta_e") -> float:
    """``row[key]`` over the :data:`IGNORES_REFERENCE` calibration row's of the same split: how much of the error of
    a model that ignores the reference is left (1: no better than ignoring it, 0: perfect). NaN without that row."""
    split = row.get("split", SELF_SPLIT)
    baselines = [
        other for other in rows if other["method"] == IGNORES_REFERENCE and other.get("split", SELF_SPLIT) == split
    ]
    value, baseline = row.get(key), baselines[0].get(key) if baselines else None
    if value is None or baseline is None or not baseline > 0:
        return math.nan
    return float(value) / float(baseline)


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, bool | None]]) -> str:
    """One Markdown table of ``rows`` with the ``columns`` any row has (a Split column when rows span splits)."""
    columns = [(key, header) for key, header, _ in columns if any(row.get(key) is not None for row in rows)]
    show_split = any(row.get("split", SELF_SPLIT) != SELF_SPLIT for row in rows)
    lines = [
        "| Method | " + ("Split | " if show_split else "") + "Steps | CFG | "
        + " | ".join(header for _, header in columns) + " |",
        "|---|" + ("---|" if show_split else "") + "---:|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = []
        for key, _ in columns:
            cell = _format_value(row.get(key), key)
            if key == "flicker" and row.get("flicker_ground_truth") is not None:
                cell += f" ({_format_value(row['flicker_ground_truth'], key)})"
            if key == "retrieval" and row.get("retrieval_chance") is not None:
                cell += f" ({_format_value(row['retrieval_chance'], key)})"
            cells.append(cell)
        steps = "–" if row.get("steps") is None else row["steps"]
        scale = row.get("guidance_scale", 1.0)
        prefix = f"| {row['method']} | " + (f"{row.get('split', SELF_SPLIT)} | " if show_split else "")
        prefix += f"{steps} | {'–' if scale is None else format(scale, 'g')} | "
        lines.append(prefix + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """The quality table (the paper's Table-3 form): one Markdown row per :func:`evaluate_model` row (and per
    calibration row), whole-frame SSIM / PSNR / L1 / flicker (LPIPS, FID, FVD when measured) and seconds per frame."""
    if not rows:
        raise ValueError("`rows` is empty: nothing to tabulate.")
    return _table(rows, (*QUALITY_COLUMNS, SPEED_COLUMN))


def format_appearance_table(rows: Sequence[dict[str, Any]]) -> str | None:
    """The appearance table: the rows with appearance scores (SynthDance data), calibration rows first, with the part
    error as a share of the ignores-the-reference row's (:func:`baseline_ratio`). None when no row has them."""
    rows = [row for row in rows if row.get("part_delta_e") is not None]
    if not rows:
        return None
    rows = [{**row, "part_ratio": baseline_ratio(rows, row)} for row in rows]
    rows.sort(key=lambda row: row["steps"] is not None)  # calibration rows (no steps) first, stable otherwise
    return _table(rows, APPEARANCE_COLUMNS)


def write_marked_section(path: str | os.PathLike, section: str, begin: str, end: str) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the text between those markers
    in ``path``, keeping the rest of the file; appended when the markers are absent. Atomic.

    Several scripts share ``benchmarks/RESULTS.md`` this way, each regenerating only its own section.
    """
    if not section.lstrip().startswith(begin) or end not in section:
        raise ValueError("`section` must start with the `begin` marker and contain the `end` marker.")
    path = Path(path)
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmark results\n\n"
    if begin in text and end in text.split(begin, 1)[1]:
        head, rest = text.split(begin, 1)
        text = head + section.rstrip("\n") + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text_atomically(path, text)


def write_report(
    rows: Sequence[dict[str, Any]],
    output_dir: str | os.PathLike,
    settings: dict[str, Any] | None = None,
    speed: Sequence[dict[str, Any]] | None = None,
    comparisons: Sequence[dict[str, Any]] | None = None,
    gate: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write ``report.json`` (settings, rows, :func:`paired_difference` ``comparisons``, the
    :func:`time_side_by_side` ``speed`` rows and the :func:`autoencoder_gate` result ``gate``) and ``table.md``
    (quality, appearance, comparison and speed tables, the gate's line).

    Rows with appearance scores gain ``part_ratio`` (:func:`baseline_ratio`) in the report.
    """
    output_dir = Path(output_dir)
    rows = [
        {**row, "part_ratio": baseline_ratio(rows, row)} if row.get("part_delta_e") is not None else row
        for row in rows
    ]
    report = {"settings": settings or {}, "rows": rows}
    table = format_table(rows)
    appearance = format_appearance_table(rows)
    if appearance:
        table += "\n" + appearance
    if comparisons:
        report["comparisons"] = list(comparisons)
        table += "\n" + format_comparison_table(comparisons)
    if speed:
        report["speed"] = list(speed)
        table += "\n" + format_speed_table(speed)
    if gate:
        report["autoencoder_gate"] = dict(gate)
        table += f"\n{gate['message']}.\n"
    paths = {"report": output_dir / "report.json", "table": output_dir / "table.md"}
    write_text_atomically(paths["report"], json.dumps(report, indent=2, allow_nan=True) + "\n")
    write_text_atomically(paths["table"], table)
    return paths


def write_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path | None:
    """Quality vs steps, one panel per metric present and one line per method (PNG). ``None`` without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the quality-vs-steps plot (pip install matplotlib).")
        return None
    keys = [key for key in PLOTTED_METRICS if any(row.get(key) is not None for row in rows)]
    headers = {key: header for key, header, _ in METRIC_COLUMNS}
    show_split = any(row.get("split", SELF_SPLIT) != SELF_SPLIT for row in rows)

    def label(row: dict[str, Any]) -> str:
        return row["method"] + (f" ({row.get('split', SELF_SPLIT)})" if show_split else "")

    models = [row for row in rows if row.get("steps") is not None]
    calibration = [row for row in rows if row.get("steps") is None]  # no steps: a horizontal line
    all_steps = sorted({row["steps"] for row in models})
    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for name in dict.fromkeys(map(label, models)):
            points = sorted((row["steps"], row[key]) for row in models if label(row) == name and row.get(key) is not None)
            if points:
                axis.plot(*zip(*points), marker="o", label=name)
        for row in calibration:
            if row.get(key) is not None and math.isfinite(row[key]):
                axis.axhline(row[key], linestyle="--", linewidth=1, color="grey")
                axis.annotate(label(row), (0.01, row[key]), xycoords=("axes fraction", "data"), fontsize=6)
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_steps, [str(steps) for steps in all_steps])
        axis.minorticks_off()
        axis.set_xlabel("steps")
        axis.set_title(headers[key])
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    try:
        with atomic_output(path) as temporary:
            figure.savefig(temporary, format="png", dpi=100)
    finally:
        plt.close(figure)
    return Path(path)
