"""Quality and speed of a pipeline on a Champ-layout test set: the paper's Table 3 (method × steps).

Every test video is generated from its first ``images`` frame (the reference) and the guidance maps of the remaining
frames, and scored against those remaining ``images`` frames. ``evaluate_model`` returns one row per number of steps;
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
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .data.layout import IMAGE_FOLDER, list_videos, read_guidance_frames, read_rgb, validate_video_dir
from .metrics import FrechetDistance, LearnedPerceptualDistance, video_metrics

# Column key, header, and whether higher is better (None: no direction, shown beside the ground truth's value).
METRIC_COLUMNS = (
    ("ssim", "SSIM ↑", True),
    ("psnr", "PSNR ↑", True),
    ("l1", "L1 ↓", False),
    ("lpips", "LPIPS ↓", False),
    ("fid", "FID ↓", False),
    ("fvd", "FVD ↓", False),
    ("flicker", "Flicker (GT)", None),
    ("seconds_per_frame", "s / frame ↓", False),
)
PLOTTED_METRICS = ("ssim", "psnr", "l1", "lpips", "fid", "fvd", "flicker", "seconds_per_frame")
SAMPLE_FPS = 8


@dataclass
class TestVideo:
    """One test video: ``reference`` ``(H, W, 3)`` uint8 (frame 0), ``guidance`` ``{type: (F, H, W, 3)}`` uint8 and
    ``ground_truth`` ``(F, 3, H, W)`` float in [0, 1] for frames 1 … F."""

    video_id: str
    reference: np.ndarray
    guidance: dict[str, np.ndarray]
    ground_truth: torch.Tensor

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


def _resize_stack(frames: np.ndarray, resolution: int | None) -> np.ndarray:
    """``(..., H, W, 3)`` uint8 → square ``resolution`` px (bilinear), unchanged when ``resolution`` is None."""
    if resolution is None or frames.shape[-3:-1] == (resolution, resolution):
        return frames
    flat = frames.reshape(-1, *frames.shape[-3:])
    resized = [np.asarray(Image.fromarray(frame).resize((resolution, resolution), Image.BILINEAR)) for frame in flat]
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
        ground_truth = torch.from_numpy(images[1:]).permute(0, 3, 1, 2).float() / 255.0
        videos.append(TestVideo(video_dir.name, images[0], guidance, ground_truth))
    return videos


# ----------------------------------------------------------------------------------------------------------
# Generation and scoring


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate_video(
    pipe: Any, video: TestVideo, num_inference_steps: int, guidance_scale: float, seed: int, **call_kwargs: Any
) -> tuple[torch.Tensor, float]:
    """Generate one test video with a fixed seed: ``(F, 3, H, W)`` in [0, 1] on CPU, and the wall-clock seconds."""
    device = pipe._execution_device
    generator = torch.Generator(device="cpu").manual_seed(seed)
    height, width = video.ground_truth.shape[-2:]
    _synchronize(device)
    start = time.perf_counter()
    output = pipe(
        video.reference, video.guidance, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
        height=height, width=width, generator=generator, output_type="pt", **call_kwargs,
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
        lines.append(
            f"| {item['method']} {item['steps']} steps | {item['baseline_method']} {item['baseline_steps']} steps | "
            f"{headers[item['metric']]} | {format_difference(item)} | {item['better']} of {item['num_videos']} videos |"
        )
    return "\n".join(lines) + "\n"


def teacher_student_comparisons(
    rows: Sequence[dict[str, Any]], key: str = "ssim", teacher: str = "teacher"
) -> list[dict[str, Any]]:
    """Every ``"student"`` row against the ``teacher`` row of the same steps and the teacher's most-steps row.

    ``teacher`` is the method label of the baseline rows, e.g. a second teacher pass at another CFG scale.
    """
    teachers = {row["steps"]: row for row in rows if row["method"] == teacher}
    if not teachers:
        return []
    most_steps = max(teachers)
    comparisons = []
    for row in rows:
        if row["method"] != "student":
            continue
        for steps in dict.fromkeys((row["steps"], most_steps)):
            if steps in teachers:
                comparisons.append(paired_difference(row, teachers[steps], key))
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

    Returns:
        One dict per entry of ``steps``: ``method``, ``steps``, ``guidance_scale``, ``num_videos``, ``num_frames``,
        the means over videos of ``ssim``, ``psnr``, ``l1``, ``flicker``, ``flicker_ground_truth`` (and ``lpips``),
        ``fid`` / ``fvd`` over all frames / videos when given, ``seconds_per_frame``, ``sample_video`` and
        ``per_video``: ``{metric: [one value per video, in videos order]}``.
    """
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
        for index, video in enumerate(videos):
            generated, seconds = generate_video(pipe, video, num_steps, guidance_scale, seed + index, **call_kwargs)
            total_seconds += seconds
            total_frames += video.num_frames
            scores.append(_score(generated, video.ground_truth, metrics))
            if sample_dir is not None and index == 0:
                sample_video = str(write_side_by_side(
                    Path(sample_dir) / f"{method}_{num_steps}steps_{video.video_id}.mp4", video, generated
                ))
            bar.update()
        row = {
            "method": method,
            "steps": int(num_steps),
            "guidance_scale": float(guidance_scale),
            "num_videos": len(videos),
            "num_frames": total_frames,
            **{key: float(np.mean([score[key] for score in scores])) for key in scores[0]},
            "seconds_per_frame": total_seconds / total_frames,
            "sample_video": sample_video,
            # in ``videos`` order, for comparisons paired video by video (:func:`paired_difference`)
            "per_video": {key: [float(score[key]) for score in scores] for key in scores[0]},
        }
        if timesteps is not None:
            row["timesteps"] = list(timesteps)
        row.update(_frechet_scores(metrics))
        rows.append(row)
    bar.close()
    return rows


def _score(generated: torch.Tensor, ground_truth: torch.Tensor, metrics: QualityMetrics) -> dict[str, float]:
    """Per-video scores; FID/FVD features are accumulated in ``metrics`` and computed per row."""
    scores = video_metrics(generated, ground_truth)
    if metrics.lpips is not None:
        scores["lpips"] = metrics.lpips(generated, ground_truth).mean().item()
    if metrics.fid is not None:
        metrics.fid.update(ground_truth, real=True)
        metrics.fid.update(generated, real=False)
    if metrics.fvd is not None:
        metrics.fvd.update(ground_truth.permute(1, 0, 2, 3)[None], real=True)
        metrics.fvd.update(generated.permute(1, 0, 2, 3)[None], real=False)
    return scores


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
    descriptor, temporary = tempfile.mkstemp(suffix=path.suffix, prefix=".tmp-", dir=path.parent)
    os.close(descriptor)
    try:
        try:
            from diffusers.utils import export_to_video

            export_to_video([frame.astype(np.float32) / 255.0 for frame in frames], temporary, fps=fps)
        except Exception as error:  # no ffmpeg backend: fall back to an animated GIF
            warnings.warn(f"mp4 export failed ({error}); writing a GIF instead.")
            path = path.with_suffix(".gif")
            images = [Image.fromarray(frame) for frame in frames]
            images[0].save(
                temporary, format="GIF", save_all=True, append_images=images[1:], duration=1000 // fps, loop=0
            )
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def _format_value(value: Any, key: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if key in ("psnr", "fid", "fvd"):
        return f"{value:.2f}"
    if key == "seconds_per_frame":
        return f"{value:.4g}"
    return f"{value:.4f}"


def format_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table in the form of the paper's Table 3: one line per (method, steps), a column per metric present.

    Flicker is shown with the ground truth's own flicker in brackets (generated videos should match it, not beat it).
    """
    if not rows:
        raise ValueError("`rows` is empty: nothing to tabulate.")
    columns = [(key, header) for key, header, _ in METRIC_COLUMNS if any(row.get(key) is not None for row in rows)]
    lines = [
        "| Method | Steps | CFG | " + " | ".join(header for _, header in columns) + " |",
        "|---|---:|---:|" + "---:|" * len(columns),
    ]
    for row in rows:
        cells = []
        for key, _ in columns:
            cell = _format_value(row.get(key), key)
            if key == "flicker" and row.get("flicker_ground_truth") is not None:
                cell += f" ({_format_value(row['flicker_ground_truth'], key)})"
            cells.append(cell)
        prefix = f"| {row['method']} | {row['steps']} | {row.get('guidance_scale', 1.0):g} | "
        lines.append(prefix + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_text_atomically(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to a hidden sibling, then rename it over ``path``: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


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
) -> dict[str, Path]:
    """Write ``report.json`` (settings, rows, :func:`paired_difference` ``comparisons`` and the
    :func:`time_side_by_side` ``speed`` rows) and ``table.md``."""
    output_dir = Path(output_dir)
    report = {"settings": settings or {}, "rows": list(rows)}
    table = format_table(rows)
    if comparisons:
        report["comparisons"] = list(comparisons)
        table += "\n" + format_comparison_table(comparisons)
    if speed:
        report["speed"] = list(speed)
        table += "\n" + format_speed_table(speed)
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
    methods = list(dict.fromkeys(row["method"] for row in rows))
    all_steps = sorted({row["steps"] for row in rows})
    figure, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0), squeeze=False)
    for axis, key in zip(axes[0], keys):
        for method in methods:
            points = sorted(
                (row["steps"], row[key]) for row in rows if row["method"] == method and row.get(key) is not None
            )
            if points:
                axis.plot(*zip(*points), marker="o", label=method)
        axis.set_xscale("log", base=2)
        axis.set_xticks(all_steps, [str(steps) for steps in all_steps])
        axis.minorticks_off()
        axis.set_xlabel("steps")
        axis.set_title(headers[key])
        axis.grid(alpha=0.3)
    axes[0][0].legend()
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{path.name}")
    figure.savefig(temporary, format="png", dpi=100)
    plt.close(figure)
    os.replace(temporary, path)
    return path
