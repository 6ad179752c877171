"""``referencelcm animate``: animate a reference image along a Champ-layout guidance folder, or along a video of a
person (``--video``: its skeletons are extracted first, :mod:`referencelcm.extract`), and write an mp4.

Also the engine of ``examples/inference.py``. With no ``--model`` it uses the bundled default model: the installed
package's copy (``referencelcm/bundled/student``, put there by ``pip install .``) or the checkout's ``models/student``;
with neither, a freshly initialised tiny pipeline (random weights: the video shows the plumbing works, not a trained
character). With no ``--reference`` / ``--guidance`` it animates the bundled demo (``bundled/demo`` or
``assets/demo``), or renders a SynthDance test video to animate. Every argument is checked before the model loads, and
nothing is written unless the video is.
"""

from __future__ import annotations

import argparse
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import LCMScheduler
from diffusers.utils import export_to_video

from .arguments import (
    atomic_output,
    check_at_least,
    check_finite,
    check_output_file,
    missing_parents,
    naming,
    read_image,
    resolve_device,
)
from .data.layout import IMAGE_FOLDER, list_frames, read_guidance_frames, validate_video_dir

PACKAGE_DATA = Path(__file__).resolve().parent / "bundled"  # filled from the source tree when a wheel is built
REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODELS = (PACKAGE_DATA / "student", REPOSITORY_ROOT / "models" / "student")
BUNDLED_DEMOS = (PACKAGE_DATA / "demo", REPOSITORY_ROOT / "assets" / "demo")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".avi")  # containers ffmpeg writes with the H.264 codec export_to_video uses
STUDENT_STEPS, STUDENT_GUIDANCE_SCALE = 4, 1.0
TEACHER_STEPS, TEACHER_GUIDANCE_SCALE = 20, 3.5  # Champ's sampling: 20 DDIM steps with CFG 3.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="pipeline folder or Hub repo id (default: the bundled model, else a tiny random one)")
    parser.add_argument("--reference", help="reference image (default: first frame of the demo video)")
    parser.add_argument("--guidance", help="one video in Champ's layout: depth/ normal/ semantic_map/ dwpose/ [mask/]")
    parser.add_argument("--video", help="instead of --guidance: a video of a person; its poses are extracted offline "
                        "(dwpose skeletons, aligned to the --reference person) for a model that takes dwpose alone "
                        "(trained with --guidance_type_dropout); --fps resamples it")
    parser.add_argument("--output", default="outputs/demo.mp4",
                        help=f"video to write, one of {', '.join(VIDEO_SUFFIXES)} (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 4 for an LCM, 20 for a teacher)")
    parser.add_argument("--timesteps", type=int, nargs="+",
                        help="custom LCM timesteps, strictly decreasing, instead of --steps (e.g. 999 499 299 139)")
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (default: 1.0 for an LCM, 3.5 for a teacher)")
    parser.add_argument("--height", type=int, help="output height (default: the guidance frames')")
    parser.add_argument("--width", type=int, help="output width (default: the guidance frames')")
    parser.add_argument("--frames", default=None, help="frame range START:END[:STEP] of the guidance (default: all)")
    parser.add_argument("--fps", type=int, default=12, help="frames per second of the video (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="also write OUTPUT_grid.mp4: reference | guidance | result (default: on)")


def parse_frame_range(text: str | None) -> slice | None:
    """``"START:END[:STEP]"`` → ``slice``; empty fields keep their defaults (``":48"``); STEP must be >= 1."""
    if text is None:
        return None
    parts = text.split(":")
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"`--frames` must look like START:END or START:END:STEP, got {text!r}.")
    try:
        frame_range = slice(*(int(part) if part else None for part in parts))
    except ValueError:
        raise ValueError(f"`--frames` must hold integers, got {text!r}.") from None
    if frame_range.step is not None and frame_range.step < 1:
        raise ValueError(f"`--frames` {text}: STEP must be >= 1, got {frame_range.step}.")
    return frame_range


def bundled(locations: tuple[Path, ...], marker: str) -> Path | None:
    """The first of ``locations`` holding ``marker`` (a file or folder), or ``None``."""
    return next((path for path in locations if (path / marker).exists()), None)


def load_pipeline(model: str | None, device: torch.device, dtype: torch.dtype):
    """The pipeline at ``model``; else the bundled model; else a tiny random pipeline (with a notice)."""
    from .pipelines import ReferenceLCMPipeline
    from .pipelines.loading import load_pipeline as load_pipeline_folder

    if model is None:
        model = bundled(BUNDLED_MODELS, "model_index.json")
        if model is not None:
            print(f"referencelcm: using the bundled model {model}")
    if model is None:
        from .pipelines.factory import build_components

        print("referencelcm: no bundled model found (looked in "
              f"{', '.join(str(path) for path in BUNDLED_MODELS)}); using a freshly initialised tiny pipeline (random "
              "weights: the output shows the pipeline runs, not a trained animation). Install from a source tree that "
              "has models/student (`pip install .`), or pass --model DIR.")
        pipe = ReferenceLCMPipeline(**build_components(image_size=64))
        if dtype != torch.float32:
            pipe = pipe.to(dtype=dtype)
    else:
        pipe = load_pipeline_folder(model, "--model", dtype=dtype)
    return pipe.to(device)


def default_demo_video() -> Path:
    """The bundled demo video folder, or a SynthDance test video rendered into a temporary folder."""
    demo = bundled(BUNDLED_DEMOS, IMAGE_FOLDER)
    if demo is not None:
        return demo
    from .data.synthdance import generate_dataset

    temporary = tempfile.mkdtemp(prefix="referencelcm-demo-")
    atexit.register(shutil.rmtree, temporary, ignore_errors=True)  # read into memory before use; not left behind
    root = generate_dataset(temporary, num_videos=1, num_frames=16, resolution=64, seed=0, split="test", progress=False)
    return next(path for path in sorted(Path(root).iterdir()) if path.is_dir())


def write_video(frames: list[np.ndarray] | list[PIL.Image.Image], path: str | os.PathLike, fps: int) -> Path:
    """Write a video atomically (temporary file in the same folder, then rename); returns the path.

    ``frames`` are PIL images, float ``(H, W, 3)`` arrays in ``[0, 1]`` or uint8 ``(H, W, 3)`` arrays. On failure
    nothing is left: neither the temporary file nor the folders created for it. Errors name the file the caller
    asked for, never the temporary one.
    """
    if isinstance(frames[0], np.ndarray) and frames[0].dtype == np.uint8:
        frames = [PIL.Image.fromarray(frame) for frame in frames]  # export_to_video scales arrays by 255
    path = Path(path)
    created = missing_parents(path)
    temporary = None
    try:
        with atomic_output(path, path.suffix or ".mp4") as temporary:
            export_to_video(frames, temporary, fps=fps)
    except (OSError, ValueError, RuntimeError) as error:  # imageio / ffmpeg report a failed write with all three
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        # Name the user's file, not the temporary one.
        detail = str(error) if temporary is None else str(error).replace(temporary, str(path))
        raise ValueError(f"--output {path}: could not write the video ({detail}).") from error
    return path


def default_sampling(pipe) -> tuple[int, float]:
    """``(steps, guidance scale)`` for ``pipe``: 4 steps without CFG for an LCM student, else 20 steps with CFG 3.5."""
    if isinstance(pipe.scheduler, LCMScheduler):
        return STUDENT_STEPS, STUDENT_GUIDANCE_SCALE
    return TEACHER_STEPS, TEACHER_GUIDANCE_SCALE


def side_by_side(reference: PIL.Image.Image, guidance: dict[str, list[PIL.Image.Image]], video: np.ndarray) -> list[np.ndarray]:
    """Frames of ``reference | guidance maps | result``; ``video`` is ``(F, H, W, 3)`` in ``[0, 1]``."""
    height, width = video.shape[1:3]
    reference_array = np.asarray(reference.convert("RGB").resize((width, height)), dtype=np.float32) / 255.0
    rows = []
    for index, frame in enumerate(video):
        maps = [np.asarray(frames[index].resize((width, height)), dtype=np.float32) / 255.0 for frames in guidance.values()]
        rows.append((np.concatenate([reference_array, *maps, frame], axis=1) * 255).round().astype(np.uint8))
    return rows


def check_arguments(args: argparse.Namespace) -> slice | None:
    """Every check that needs no model, before anything is loaded or written; returns the parsed ``--frames``."""
    for flag, value in (("--steps", args.steps), ("--height", args.height), ("--width", args.width),
                        ("--fps", args.fps)):
        check_at_least(flag, value, 1)
    check_finite("--guidance-scale", args.guidance_scale)
    if args.timesteps is not None and args.steps is not None:
        raise ValueError("pass either `--steps` or `--timesteps`, not both.")
    decreasing = args.timesteps is None or sorted(set(args.timesteps), reverse=True) == args.timesteps
    if not decreasing or min(args.timesteps or [0]) < 0:
        raise ValueError(f"--timesteps must be strictly decreasing integers >= 0 (e.g. 999 499 299 139), got "
                         f"{' '.join(map(str, args.timesteps))}.")
    check_output_file("--output", args.output, VIDEO_SUFFIXES)
    for flag, path in (("--guidance", args.guidance), ("--reference", args.reference)):
        if path is not None and not os.path.exists(path):
            raise FileNotFoundError(f"{flag} {path}: no such file or folder.")
    if args.video is not None:
        from .extract.detector import import_mediapipe
        from .extract.extraction import open_video

        if args.guidance is not None:
            raise ValueError("pass either `--guidance` (a guidance folder) or `--video` (a video to extract it from), "
                             "not both.")
        open_video(args.video)  # readable, with a size and a frame rate
        import_mediapipe()  # or a MissingDependencyError saying what to install
    return parse_frame_range(args.frames)


def write_outputs(
    reference: PIL.Image.Image, guidance: dict[str, list[PIL.Image.Image]], video: np.ndarray,
    output: str | os.PathLike, fps: int, grid: bool = True,
) -> tuple[Path, Path | None]:
    """Writes ``output`` (the video ``(F, H, W, 3)`` in ``[0, 1]``) and, with ``grid``, ``<output>_grid.mp4``
    (reference | guidance maps | result); returns both paths (the grid's is ``None`` without ``grid``)."""
    path = write_video(list(video), output, fps)
    if not grid:
        return path, None
    return path, write_video(side_by_side(reference, guidance, video), path.with_name(f"{path.stem}_grid.mp4"), fps)


def guidance_types_to_read(pipe, guidance_dir: str) -> tuple[str, ...]:
    """The model's guidance types, or for a model that takes any subset of them those ``--guidance`` holds."""
    if not pipe.accepts_guidance_subsets:
        return pipe.guidance_types
    present = tuple(name for name in pipe.guidance_types if (Path(guidance_dir) / name).is_dir())
    if not present:
        raise FileNotFoundError(f"--guidance {guidance_dir}: has none of the folders {list(pipe.guidance_types)} this "
                                "model reads (any non-empty subset of them will do).")
    return present


def video_guidance_size(pipe, source_size: tuple[int, int], width: int | None, height: int | None) -> tuple[int, int]:
    """``(W, H)`` to extract ``--video`` at: ``--width`` / ``--height`` when given, the other side from the video's
    aspect ratio; without either, the model's trained size (the D-UNet's ``sample_size`` times the VAE factor) on the
    shorter side. Derived sides are rounded to the model's :attr:`spatial_multiple`."""
    multiple = pipe.spatial_multiple
    aspect = source_size[0] / source_size[1]

    def rounded(value: float) -> int:
        return max(multiple, round(value / multiple) * multiple)

    if width is None and height is None:
        sample_size = pipe.denoising_unet.config.sample_size
        shorter = min(sample_size) if isinstance(sample_size, (list, tuple)) else sample_size
        shorter *= pipe.vae_scale_factor
        width, height = (shorter, None) if aspect <= 1 else (None, shorter)
    if height is None:
        return width, rounded(width / aspect)
    return (rounded(height * aspect) if width is None else width), height


def extract_video_guidance(args: argparse.Namespace, pipe, folder: Path) -> str:
    """``--video``'s skeletons (aligned to ``--reference`` when given) written to ``folder``; the extraction report
    printed; ``--fps`` lowered to the video's own rate when that is lower. Returns the folder."""
    from .extract.extraction import DWPOSE_FOLDER, extract_guidance, open_video

    try:
        pipe.guidance_encoder.check_guidance_types((DWPOSE_FOLDER,), "guidance")
    except ValueError as error:
        raise ValueError(f"--video {args.video}: a video gives `{DWPOSE_FOLDER}` skeletons only, which this model "
                         f"cannot take alone: {error}") from error
    size = video_guidance_size(pipe, open_video(args.video).size, args.width, args.height)
    result = extract_guidance(folder, video=args.video, reference=args.reference, fps=args.fps, size=size)
    for line in result.report():
        print(f"referencelcm: {line}")
    args.fps = min(args.fps, result.fps)
    return str(folder)


def read_guidance(
    guidance_dir: str, guidance_types: tuple[str, ...], frame_range: slice | None, frames_text: str | None
) -> dict[str, list[PIL.Image.Image]]:
    """``--guidance``'s maps ``{type: [PIL RGB] * F}`` for ``--frames``; errors name the flag."""
    with naming("--guidance", guidance_dir):
        video = validate_video_dir(guidance_dir, guidance_types, require_images=False)
    frames = list(range(video.num_frames))[frame_range or slice(None)]
    if not frames:
        raise ValueError(f"--frames {frames_text} selects none of the {video.num_frames} frames of {guidance_dir}.")
    with naming("--guidance", guidance_dir):
        arrays = read_guidance_frames(video, guidance_types, frames)
    return {name: [PIL.Image.fromarray(frame) for frame in stack] for name, stack in arrays.items()}


def run(args: argparse.Namespace) -> int:
    """Animate and write ``--output`` (and its grid); bad arguments raise ``ValueError`` / ``FileNotFoundError``."""
    # 1. arguments, then the model, then what depends on both: nothing is written before the video is ready
    frame_range = check_arguments(args)
    device = resolve_device("--device", args.device)
    pipe = load_pipeline(args.model, device, DTYPES[args.dtype])
    for flag, value in (("--height", args.height), ("--width", args.width)):
        if value is not None and value % pipe.spatial_multiple:
            raise ValueError(f"{flag} must be a multiple of {pipe.spatial_multiple} for this model, got {value}.")

    # 2. guidance (extracted from --video into a scratch folder first) and reference, read into memory
    with tempfile.TemporaryDirectory(prefix="referencelcm-video-") as scratch:
        if args.video is not None:
            args.guidance = extract_video_guidance(args, pipe, Path(scratch) / "guidance")
        elif args.guidance is None:
            args.guidance = str(default_demo_video())
            print(f"referencelcm: animating the demo video {args.guidance}")
        guidance_types = guidance_types_to_read(pipe, args.guidance)
        guidance = read_guidance(args.guidance, guidance_types, frame_range, args.frames)
        if args.reference is None:
            image_dir = Path(args.guidance) / IMAGE_FOLDER
            if not image_dir.is_dir():
                raise ValueError(f"`--reference` is required: {str(args.guidance)!r} has no {IMAGE_FOLDER}/ folder to "
                                 "take it from.")
            args.reference = str(image_dir / list_frames(args.guidance)[0])
        reference = read_image("--reference", args.reference)

    # 3. animate
    default_steps, default_guidance_scale = default_sampling(pipe)
    steps = len(args.timesteps) if args.timesteps else (default_steps if args.steps is None else args.steps)
    guidance_scale = args.guidance_scale if args.guidance_scale is not None else default_guidance_scale
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    video = pipe(
        reference, guidance, num_inference_steps=steps, timesteps=args.timesteps, guidance_scale=guidance_scale,
        height=args.height, width=args.width, generator=generator, output_type="np",
    ).frames[0]

    # 4. write
    path, grid_path = write_outputs(reference, guidance, video, args.output, args.fps, args.grid)
    schedule = f"timesteps {args.timesteps}" if args.timesteps else f"{steps} steps"
    print(f"referencelcm: wrote {len(video)} frames ({schedule}, guidance scale {guidance_scale}) to {path}")
    if grid_path is not None:
        print(f"referencelcm: wrote the side-by-side grid to {grid_path}")
    return 0
