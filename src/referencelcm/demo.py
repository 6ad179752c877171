"""``referencelcm demo``: a Gradio app that animates a reference image in the browser.

    pip install -e ".[demo]" && referencelcm demo [--model DIR] [--teacher DIR] [--host 127.0.0.1] [--port 7860]

The app's logic is in plain functions that the tests call directly: :func:`generate` (one animation: video, grid,
time and D-UNet evaluations per frame), :func:`load_guidance` (the bundled demo video or a SynthDance motion rendered
on the spot), :func:`sampling_defaults` and :func:`cached_pipeline` (each model is loaded once per process).
:func:`build_app` only lays them out. Bad input raises the package's one-line ``ValueError`` / ``FileNotFoundError``,
which the app shows as that message (``gr.Error``), not a traceback. Gradio is imported only by :func:`build_app`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import PIL.Image
import torch
from diffusers import LCMScheduler
from einops import rearrange

from .animate import (
    BUNDLED_MODELS, REPOSITORY_ROOT, bundled, default_demo_video, default_sampling, load_pipeline, write_outputs,
)
from .data.layout import IMAGE_FOLDER, SEMANTIC_FOLDER, apply_mask, list_frames, read_guidance_folder
from .data.synthdance import render_video, sample_video_spec
from .pipelines.inputs import reference_to_tensor

# The student ships inside a wheel too; the teacher only in a source tree.
BUNDLED_MODEL = bundled(BUNDLED_MODELS, "model_index.json") or BUNDLED_MODELS[-1]
BUNDLED_TEACHER = REPOSITORY_ROOT / "models" / "teacher"
DEMO_VIDEO = "bundled demo video"
SYNTHDANCE = "SynthDance motion"
MODEL_KINDS = ("student", "teacher")
MAX_LCM_STEPS, MAX_STEPS = 8, 50  # slider ranges: an LCM student takes 1-8 steps, a DDIM teacher up to 50
DEFAULT_SYNTHDANCE_FRAMES, MAX_SYNTHDANCE_FRAMES = 16, 48
DEFAULT_MOTION_SEED = 1  # seed 0 draws the bundled demo video again (SynthDance test video 0 of seed 0)
MAX_SEED = 2**32 - 1
FPS = 12
ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True)
class Guidance:
    """Guidance maps ``{type: [PIL RGB] * F}`` and the guidance video's own first frame (the default reference)."""

    maps: dict[str, list[PIL.Image.Image]]
    reference: PIL.Image.Image


@dataclass(frozen=True)
class SamplingDefaults:
    """What the app offers for a model: default steps and CFG scale, and the largest step count."""

    steps: int
    guidance_scale: float
    max_steps: int


@dataclass(frozen=True)
class DemoResult:
    """One generation: the written videos, what ran, and how long the pipeline call took."""

    video_path: Path
    grid_path: Path
    model_kind: str
    num_frames: int
    steps: int
    guidance_scale: float
    seconds: float
    evaluations_per_frame: float

    @property
    def summary(self) -> str:
        """One line for the page: frames, time, sampling and D-UNet evaluations per frame."""
        return (
            f"{self.num_frames} frames in {self.seconds:.2f} s with the {self.model_kind} ({self.steps} steps, "
            f"CFG scale {self.guidance_scale:g}): {self.evaluations_per_frame:g} D-UNet evaluations per frame"
        )


@dataclass(frozen=True)
class DemoModels:
    """The pipeline folders behind the app's ``student`` and ``teacher`` choices."""

    student: str = str(BUNDLED_MODEL)
    teacher: str = str(BUNDLED_TEACHER)

    def path(self, model_kind: str) -> str:
        if model_kind not in MODEL_KINDS:
            raise ValueError(f"`model` must be one of {MODEL_KINDS}, got {model_kind!r}.")
        return getattr(self, model_kind)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.lru_cache(maxsize=None)
def cached_pipeline(model: str, device: str):
    """The pipeline at ``model`` on ``device``, loaded once per process (fp32; the bundled models are tiny)."""
    return load_pipeline(model, device, torch.float32)


def sampling_defaults(pipe) -> SamplingDefaults:
    """4 steps without CFG (at most 8) for an LCM student; 20 steps with CFG 3.5 (at most 50) for a teacher."""
    steps, guidance_scale = default_sampling(pipe)
    max_steps = MAX_LCM_STEPS if isinstance(pipe.scheduler, LCMScheduler) else MAX_STEPS
    return SamplingDefaults(steps, guidance_scale, max_steps)


def _check_integer(name: str, value: object, low: int, high: int, where: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(value) or value != int(value) or not low <= value <= high:
        raise ValueError(f"`{name}` must be an integer from {low} to {high}{where}, got {value!r}.")
    return int(value)


# -- guidance sources ------------------------------------------------------------------------------------------------

demo_video = functools.cache(default_demo_video)  # rendered once per process when the checkout has no bundled demo


def demo_video_frames() -> int:
    """Number of frames of the bundled demo video."""
    return len(list_frames(demo_video()))


def demo_reference_path() -> Path:
    """The bundled demo's reference: its video's first frame."""
    video = demo_video()
    return video / IMAGE_FOLDER / list_frames(video)[0]


def demo_video_guidance(guidance_types: tuple[str, ...], num_frames: int, motion_seed: int, resolution: int
                        ) -> Guidance:
    """The first ``num_frames`` frames of the bundled demo video (``motion_seed`` and ``resolution`` are unused)."""
    available = demo_video_frames()
    _check_integer("frames", num_frames, 1, available, f" for the {DEMO_VIDEO}")
    with PIL.Image.open(demo_reference_path()) as image:
        reference = image.convert("RGB")
    return Guidance(read_guidance_folder(demo_video(), guidance_types, slice(0, num_frames)), reference)


def synthdance_guidance(guidance_types: tuple[str, ...], num_frames: int, motion_seed: int, resolution: int
                        ) -> Guidance:
    """A SynthDance test video rendered in memory: video 0 of the test split drawn with ``motion_seed``."""
    _check_integer("frames", num_frames, 1, MAX_SYNTHDANCE_FRAMES, f" for a {SYNTHDANCE}")
    _check_integer("motion seed", motion_seed, 0, MAX_SEED)
    maps = render_video(sample_video_spec(int(motion_seed), 0, int(num_frames), resolution, split="test"))
    maps[SEMANTIC_FOLDER] = apply_mask(maps[SEMANTIC_FOLDER], maps["mask"][..., 0])  # as reading the folder does
    missing = [name for name in guidance_types if name not in maps]
    if missing:
        raise ValueError(f"the model needs guidance types {missing} that SynthDance does not render.")
    frames = {name: [PIL.Image.fromarray(frame) for frame in maps[name]] for name in guidance_types}
    return Guidance(frames, PIL.Image.fromarray(maps[IMAGE_FOLDER][0]))


# name -> function(guidance_types, num_frames, motion_seed, resolution) -> Guidance. An uploaded driving video becomes a
# third source once `referencelcm extract-guidance` exists: an entry here and a video input in build_app.
GUIDANCE_SOURCES: dict[str, Callable[..., Guidance]] = {
    DEMO_VIDEO: demo_video_guidance,
    SYNTHDANCE: synthdance_guidance,
}


def frame_limits(source: str) -> tuple[int, int]:
    """``(default, maximum)`` frame counts the app offers for a guidance source."""
    if source == DEMO_VIDEO:
        return demo_video_frames(), demo_video_frames()
    return DEFAULT_SYNTHDANCE_FRAMES, MAX_SYNTHDANCE_FRAMES


def load_guidance(source: str, guidance_types: tuple[str, ...], num_frames: int,
                  motion_seed: int = DEFAULT_MOTION_SEED, resolution: int = 64) -> Guidance:
    """The guidance of ``source`` (one of :data:`GUIDANCE_SOURCES`) for ``guidance_types``."""
    if source not in GUIDANCE_SOURCES:
        raise ValueError(f"`guidance` must be one of {list(GUIDANCE_SOURCES)}, got {source!r}.")
    return GUIDANCE_SOURCES[source](tuple(guidance_types), num_frames, motion_seed, resolution)


# -- generation ------------------------------------------------------------------------------------------------------


def as_rgb_image(image: PIL.Image.Image | np.ndarray | torch.Tensor) -> PIL.Image.Image:
    """A reference image in any form the pipeline takes, as an RGB PIL image (checked by the pipeline's own rules)."""
    if isinstance(image, PIL.Image.Image):
        return image.convert("RGB")
    pixels = rearrange(reference_to_tensor(image), "c h w -> h w c")
    return PIL.Image.fromarray((pixels.numpy() * 255).round().astype(np.uint8))


@contextlib.contextmanager
def count_denoising_evaluations(unet: torch.nn.Module) -> Iterator[list[int]]:
    """Counts the frames ``unet`` denoises while the block runs (a CFG pair counts twice), in ``counter[0]``."""
    counter = [0]

    def count(_module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        # UNetMotionModel: (B, C, F, h, w); a 2-D UNet folds frames into the batch: (B·F, C, h, w).
        counter[0] += sample.shape[0] * (sample.shape[2] if sample.ndim == 5 else 1)

    handle = unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield counter
    finally:
        handle.remove()


def generate(
    models: DemoModels,
    reference_image: PIL.Image.Image | np.ndarray | None,
    guidance_source: str = DEMO_VIDEO,
    num_frames: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    model_kind: str = "student",
    guidance_scale: float | None = None,
    motion_seed: int = DEFAULT_MOTION_SEED,
    output_dir: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
    device: str | None = None,
) -> DemoResult:
    """Animates ``reference_image`` (``None``: the guidance video's own first frame) and writes the video and the grid.

    ``num_frames`` defaults to :func:`frame_limits` of the guidance source (all of the demo video's frames);
    ``steps`` / ``guidance_scale`` default to :func:`sampling_defaults` of the chosen model; ``progress(fraction,
    text)`` is called after every denoising step. Files go to ``output_dir`` (default: a new temporary folder).
    Raises ``ValueError`` / ``FileNotFoundError`` with one line naming the input.
    """
    # 1. Model and sampling settings
    pipe = cached_pipeline(models.path(model_kind), device or default_device())
    defaults = sampling_defaults(pipe)
    steps = _check_integer("steps", defaults.steps if steps is None else steps, 1, defaults.max_steps,
                           f" for the {model_kind}")
    seed = _check_integer("seed", seed, 0, MAX_SEED)
    guidance_scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
    if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or \
            not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"`CFG scale` must be a number >= 0, got {guidance_scale!r}.")

    # 2. Guidance and reference
    if num_frames is None and guidance_source in GUIDANCE_SOURCES:
        num_frames = frame_limits(guidance_source)[0]
    guidance = load_guidance(guidance_source, pipe.guidance_types, num_frames, motion_seed, pipe.vae.config.sample_size)
    reference = guidance.reference if reference_image is None else as_rgb_image(reference_image)

    # 3. Animate, counting D-UNet evaluations and reporting each step
    def on_step_end(_pipe, step_index, _timestep, _tensors):
        if progress is not None:
            progress((step_index + 1) / steps, f"denoising step {step_index + 1} of {steps}")
        return {}

    with count_denoising_evaluations(pipe.denoising_unet) as evaluations:
        start = time.perf_counter()
        video = pipe(
            reference, guidance.maps, num_inference_steps=steps, guidance_scale=float(guidance_scale),
            generator=torch.Generator(device="cpu").manual_seed(seed), output_type="np",
            callback_on_step_end=on_step_end,
        ).frames[0]
        seconds = time.perf_counter() - start

    # 4. Write the video and the side-by-side grid
    output_dir = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="referencelcm-demo-"))
    name = f"referencelcm_{model_kind}_{steps}steps_seed{seed}.mp4"
    video_path, grid_path = write_outputs(reference, guidance.maps, video, output_dir / name, FPS)
    return DemoResult(video_path, grid_path, model_kind, len(video), steps, float(guidance_scale), seconds,
                      evaluations[0] / len(video))


# -- the Gradio app --------------------------------------------------------------------------------------------------


def build_app(models: DemoModels, device: str | None = None):
    """The Gradio ``Blocks`` app over :func:`generate` (imports gradio, with its analytics and version check off)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import gradio as gr

    device = device or default_device()
    student = sampling_defaults(cached_pipeline(models.student, device))
    default_frames, max_frames = frame_limits(DEMO_VIDEO)

    def update_model(model_kind: str):
        defaults = sampling_defaults(cached_pipeline(models.path(model_kind), device))
        return gr.Slider(maximum=defaults.max_steps, value=defaults.steps), gr.Number(value=defaults.guidance_scale)

    def update_source(source: str):
        default, maximum = frame_limits(source)
        return gr.Slider(maximum=maximum, value=default), gr.Number(visible=source == SYNTHDANCE)

    def run(reference, source, motion_seed, model_kind, steps, guidance_scale, num_frames, seed,
            progress=gr.Progress()):
        try:
            result = generate(models, reference, source, num_frames, steps, seed, model_kind, guidance_scale,
                              motion_seed, progress=lambda fraction, text: progress(fraction, desc=text),
                              device=device)
        except (ValueError, FileNotFoundError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        files = [str(result.video_path), str(result.grid_path)]
        return *files, result.summary, files

    with gr.Blocks(title="referencelcm demo", analytics_enabled=False) as app:
        gr.Markdown("## referencelcm: animate a reference image along a pose-guidance video")
        with gr.Row():
            with gr.Column():
                reference = gr.Image(str(demo_reference_path()), type="pil", sources=["upload"], height=200,
                                     label="reference image (empty: the guidance video's first frame)",
                                     elem_id="reference")
                source = gr.Radio(list(GUIDANCE_SOURCES), value=DEMO_VIDEO, label="guidance", elem_id="guidance")
                motion_seed = gr.Number(DEFAULT_MOTION_SEED, precision=0, label="SynthDance motion seed", visible=False)
                model_kind = gr.Radio(list(MODEL_KINDS), value="student", label="model", elem_id="model")
                steps = gr.Slider(1, student.max_steps, value=student.steps, step=1, label="steps", elem_id="steps")
                guidance_scale = gr.Number(student.guidance_scale, label="CFG scale (1: off)", elem_id="cfg")
                num_frames = gr.Slider(1, max_frames, value=default_frames, step=1, label="frames", elem_id="frames")
                seed = gr.Number(0, precision=0, label="seed", elem_id="seed")
                button = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column():
                video = gr.Video(label="result", buttons=["download"], autoplay=True, loop=True, height=320,
                                 elem_id="result")
                grid = gr.Video(label="reference | guidance | result", buttons=["download"], loop=True, elem_id="grid")
                summary = gr.Markdown(elem_id="summary")
                files = gr.File(label="download", file_count="multiple", elem_id="files")
        model_kind.change(update_model, model_kind, [steps, guidance_scale])
        source.change(update_source, source, [num_frames, motion_seed])
        button.click(run, [reference, source, motion_seed, model_kind, steps, guidance_scale, num_frames, seed],
                     [video, grid, summary, files])
    return app


# -- command line ----------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=str(BUNDLED_MODEL), help="student pipeline folder (default: %(default)s)")
    parser.add_argument("--teacher", default=str(BUNDLED_TEACHER),
                        help="teacher pipeline folder (default: %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to serve on (default: %(default)s)")
    parser.add_argument("--port", type=int, default=7860, help="port to serve on (default: %(default)s)")


def run(args: argparse.Namespace) -> int:
    models = DemoModels(args.model, args.teacher)
    for option, folder in (("--model", models.student), ("--teacher", models.teacher)):
        if not Path(folder).is_dir():
            raise FileNotFoundError(f"`{option}` {folder!r} is not a folder.")
    try:
        import gradio  # noqa: F401
    except ImportError:
        print('referencelcm demo: error: the demo needs gradio: pip install -e ".[demo]"', file=sys.stderr)
        return 2
    app = build_app(models)  # loads the student: a bad folder fails here, before serving
    try:
        app.launch(server_name=args.host, server_port=args.port)
    except OSError as error:  # the port is taken, or the host cannot be bound
        reason = str(error).split(". ")[0]  # gradio's first sentence, without its advice on launch()
        raise ValueError(f"cannot serve on `--host` {args.host} `--port` {args.port}: {reason}") from None
    return 0
