"""``referencelcm animate``: animate a reference image along a Champ-layout guidance folder, write an mp4.

Also the engine of ``examples/inference.py``. With no ``--model`` it uses the bundled default model when the
checkout has one (``models/student``), else a freshly initialised tiny pipeline (random weights: the video shows the
plumbing works, not a trained character). With no ``--reference`` / ``--guidance`` it animates the bundled demo
(``assets/demo``), or renders a SynthDance test video to animate.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import torch
from diffusers import LCMScheduler
from diffusers.utils import export_to_video

from .data.layout import IMAGE_FOLDER, list_frames, read_guidance_folder

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]
BUNDLED_MODEL = REPOSITORY_ROOT / "models" / "student"
BUNDLED_DEMO = REPOSITORY_ROOT / "assets" / "demo"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
STUDENT_STEPS, STUDENT_GUIDANCE_SCALE = 4, 1.0
TEACHER_STEPS, TEACHER_GUIDANCE_SCALE = 20, 3.5  # Champ's sampling: 20 DDIM steps with CFG 3.5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="pipeline folder or Hub repo id (default: the bundled model, else a tiny random one)")
    parser.add_argument("--reference", help="reference image (default: first frame of the demo video)")
    parser.add_argument("--guidance", help="one video in Champ's layout: depth/ normal/ semantic_map/ dwpose/ [mask/]")
    parser.add_argument("--output", default="outputs/demo.mp4", help="mp4 to write (default: %(default)s)")
    parser.add_argument("--steps", type=int, help="denoising steps (default: 4 for an LCM, 20 for a teacher)")
    parser.add_argument("--timesteps", type=int, nargs="+",
                        help="custom LCM timesteps, strictly decreasing, instead of --steps (e.g. 999 499 299 139)")
    parser.add_argument("--guidance-scale", type=float, help="CFG scale (default: 1.0 for an LCM, 3.5 for a teacher)")
    parser.add_argument("--height", type=int, help="output height (default: the guidance frames')")
    parser.add_argument("--width", type=int, help="output width (default: the guidance frames')")
    parser.add_argument("--frames", default=None, help="frame range START:END[:STEP] of the guidance (default: all)")
    parser.add_argument("--fps", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--grid", action=argparse.BooleanOptionalAction, default=True,
                        help="also write OUTPUT_grid.mp4: reference | guidance | result (default: on)")


def parse_frame_range(text: str | None) -> slice | None:
    """``"START:END[:STEP]"`` → ``slice``; empty fields keep their defaults (``":48"``)."""
    if text is None:
        return None
    parts = text.split(":")
    if not 2 <= len(parts) <= 3:
        raise ValueError(f"`--frames` must look like START:END or START:END:STEP, got {text!r}.")
    try:
        return slice(*(int(part) if part else None for part in parts))
    except ValueError:
        raise ValueError(f"`--frames` must hold integers, got {text!r}.") from None


def load_pipeline(model: str | None, device: str, dtype: torch.dtype):
    """The pipeline at ``model``; else the bundled model; else a tiny random pipeline (with a notice)."""
    from .pipelines import ReferenceLCMPipeline

    if model is None and (BUNDLED_MODEL / "model_index.json").is_file():
        model = str(BUNDLED_MODEL)
    if model is None:
        from .pipelines.factory import build_components

        print("referencelcm: no bundled model in this checkout yet; using a freshly initialised tiny pipeline "
              "(random weights: the output shows the pipeline runs, not a trained animation).")
        pipe = ReferenceLCMPipeline(**build_components(image_size=64))
    else:
        pipe = ReferenceLCMPipeline.from_pretrained(model, dtype=dtype)
    return pipe.to(device=device, dtype=dtype)


def default_demo_video() -> Path:
    """The bundled demo video folder, or a SynthDance test video rendered into a temporary folder."""
    if (BUNDLED_DEMO / IMAGE_FOLDER).is_dir():
        return BUNDLED_DEMO
    from .data.synthdance import generate_dataset

    root = generate_dataset(
        Path(tempfile.mkdtemp(prefix="referencelcm-demo-")), num_videos=1, num_frames=16, resolution=64, seed=0,
        split="test", progress=False,
    )
    return next(path for path in sorted(Path(root).iterdir()) if path.is_dir())


def write_video(frames: list[np.ndarray] | list[PIL.Image.Image], path: str | os.PathLike, fps: int) -> Path:
    """Write an mp4 atomically (temporary file in the same folder, then rename); returns the path.

    ``frames`` are PIL images, float ``(H, W, 3)`` arrays in ``[0, 1]`` or uint8 ``(H, W, 3)`` arrays.
    """
    if isinstance(frames[0], np.ndarray) and frames[0].dtype == np.uint8:
        frames = [PIL.Image.fromarray(frame) for frame in frames]  # export_to_video scales arrays by 255
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(suffix=path.suffix or ".mp4", dir=path.parent, prefix=".tmp-")
    os.close(handle)
    try:
        export_to_video(frames, temporary, fps=fps)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
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


def run(args: argparse.Namespace) -> int:
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    frame_range = parse_frame_range(args.frames)
    pipe = load_pipeline(args.model, device, DTYPES[args.dtype])

    if args.guidance is None:
        args.guidance = str(default_demo_video())
        print(f"referencelcm: animating the demo video {args.guidance}")
    guidance = read_guidance_folder(args.guidance, pipe.guidance_types, frame_range)
    if args.reference is None:
        image_dir = Path(args.guidance) / IMAGE_FOLDER
        if not image_dir.is_dir():
            raise ValueError(f"`--reference` is required: {str(args.guidance)!r} has no {IMAGE_FOLDER}/ folder to take it from.")
        args.reference = str(image_dir / list_frames(args.guidance)[0])
    if not os.path.isfile(args.reference):
        raise FileNotFoundError(f"`--reference` {args.reference!r} is not a file.")
    with PIL.Image.open(args.reference) as image:
        reference = image.convert("RGB")

    if args.timesteps is not None and args.steps is not None:
        raise ValueError("pass either `--steps` or `--timesteps`, not both.")
    default_steps, default_guidance_scale = default_sampling(pipe)
    steps = len(args.timesteps) if args.timesteps else args.steps or default_steps
    guidance_scale = args.guidance_scale if args.guidance_scale is not None else default_guidance_scale
    generator = torch.Generator(device="cpu").manual_seed(args.seed)
    video = pipe(
        reference, guidance, num_inference_steps=steps, timesteps=args.timesteps, guidance_scale=guidance_scale,
        height=args.height, width=args.width, generator=generator, output_type="np",
    ).frames[0]
    path, grid_path = write_outputs(reference, guidance, video, args.output, args.fps, args.grid)
    schedule = f"timesteps {args.timesteps}" if args.timesteps else f"{steps} steps"
    print(f"referencelcm: wrote {len(video)} frames ({schedule}, guidance scale {guidance_scale}) to {path}")
    if grid_path is not None:
        print(f"referencelcm: wrote the side-by-side grid to {grid_path}")
    return 0
