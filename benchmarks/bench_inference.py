"""Inference speed: teacher mode (DDIM, 20 steps, CFG 3.5) against the student (LCM, 4 and 2 steps), same model.

    python benchmarks/bench_inference.py                       # tiny random configs, CPU, < 1 min
    python benchmarks/bench_inference.py --size sd15 --frames 24 --resolution 512     # SD1.5-sized, fp16 on GPU
    python benchmarks/bench_inference.py --model out/teacher   # a saved pipeline folder
    python benchmarks/bench_inference.py --compile             # + a row with torch.compile(pipe.denoising_unet)

Teacher and student are one set of weights with the scheduler swapped (``DDIMScheduler.from_config`` ↔
``LCMScheduler.from_config``), so the difference is the sampling recipe alone. The first table gives, per mode, the
median end-to-end seconds of ``--repeats`` calls (after one warm-up call), the time ratio teacher / mode, D-UNet
evaluations per frame (calls × frames in the batch ÷ video frames: CFG counts twice, overlapping context windows count
every time), the summed forward time of the models (VAE encode/decode, CLIP, R-UNet, guidance encoder, D-UNet; timed
by wrapping their ``forward``/``encode``/``decode``, with CUDA synchronised around each) and the pipeline's overhead
over that sum. The second table gives peak memory of one call per setting (one step: the per-step batch, CFG doubling
included, is what sets the peak), each in a fresh subprocess: CUDA
``max_memory_allocated`` on GPU; on CPU the process's peak resident set size (``resource.getrusage`` ``ru_maxrss``,
which includes Python, torch and the weights) and its increase during the call over the RSS just before it.
``--compile`` adds a row: the 4-step student with ``pipe.denoising_unet = torch.compile(pipe.denoising_unet)``
(diffusers' documented speed-up; default backend, inductor), its compilation (the first call) timed apart, and its
output's largest difference from the eager row's. Random weights: speed only, the images are noise. Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, LCMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from referencelcm import MultiGuidanceEncoder, ReferenceLCMPipeline

TEACHER_STEPS, TEACHER_GUIDANCE_SCALE = 20, 3.5
STUDENT_STEPS = (4, 2)
GUIDANCE_TYPES = ("depth", "normal", "semantic_map", "dwpose")
NOISE_SCHEDULE = dict(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=False,
)
DEFAULT_RESOLUTION = {"tiny": 32, "sd15": 512}
MEMORY_MARKER = "MEMORY_PROBE "

# (UNet blocks, layers per block, head dim, norm groups, cross-attention dim, VAE blocks, CLIP vision, guidance blocks)
SIZES = {
    "tiny": dict(
        unet_channels=(8, 16), layers_per_block=1, attention_head_dim=2, norm_groups=2, cross_attention_dim=16,
        motion_heads=2, vae_channels=(8, 8, 16, 16),
        clip=dict(hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32,
                  image_size=32, patch_size=8),
        guidance_channels=(8, 16, 16, 32), guidance_heads=4,
    ),
    "sd15": dict(
        unet_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8, norm_groups=32,
        cross_attention_dim=768, motion_heads=8, vae_channels=(128, 256, 512, 512),
        clip=dict(hidden_size=1024, projection_dim=768, num_hidden_layers=24, num_attention_heads=16,
                  intermediate_size=4096, image_size=224, patch_size=14),
        guidance_channels=(16, 32, 96, 256), guidance_heads=8,
    ),
}


# ----------------------------------------------------------------------------------------------------------
# Models


def build_random_pipeline(size: str, seed: int) -> ReferenceLCMPipeline:
    """A pipeline of the given size from configs with random weights (nothing downloaded), LCM scheduler."""
    spec = SIZES[size]
    torch.manual_seed(seed)
    channels = spec["unet_channels"]
    down = ("CrossAttnDownBlock2D",) * (len(channels) - 1) + ("DownBlock2D",)
    up = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (len(channels) - 1)
    unet_config = dict(
        in_channels=4, out_channels=4, block_out_channels=channels, layers_per_block=spec["layers_per_block"],
        down_block_types=down, up_block_types=up, cross_attention_dim=spec["cross_attention_dim"],
        attention_head_dim=spec["attention_head_dim"], norm_num_groups=spec["norm_groups"],
    )
    vae_channels = spec["vae_channels"]
    vae = AutoencoderKL(
        block_out_channels=vae_channels, down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels), latent_channels=4,
        norm_num_groups=spec["norm_groups"], layers_per_block=spec["layers_per_block"],
    )
    clip = spec["clip"]
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**clip))
    crop = clip["image_size"]
    feature_extractor = CLIPImageProcessor(crop_size=crop, size={"shortest_edge": crop})
    adapter = MotionAdapter(
        block_out_channels=channels, motion_layers_per_block=spec["layers_per_block"],
        motion_norm_num_groups=spec["norm_groups"], motion_num_attention_heads=spec["motion_heads"],
        motion_max_seq_length=32,
    )
    denoising_unet = UNetMotionModel.from_unet2d(UNet2DConditionModel(**unet_config), adapter)
    guidance_encoder = MultiGuidanceEncoder(
        GUIDANCE_TYPES, guidance_input_channels=3, block_out_channels=spec["guidance_channels"],
        guidance_embedding_channels=channels[0], attention_num_heads=spec["guidance_heads"],
    )
    components = dict(
        vae=vae, image_encoder=image_encoder, feature_extractor=feature_extractor,
        reference_unet=UNet2DConditionModel(**unet_config), denoising_unet=denoising_unet,
        guidance_encoder=guidance_encoder, scheduler=LCMScheduler(**NOISE_SCHEDULE),
    )
    for name, component in components.items():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return ReferenceLCMPipeline(**components)


def load_pipeline(args: argparse.Namespace) -> ReferenceLCMPipeline:
    device = torch.device(args.device)
    dtype = torch.float16 if device.type == "cuda" and not args.fp32 else torch.float32
    if args.model:
        pipe = ReferenceLCMPipeline.from_pretrained(args.model)
    else:
        pipe = build_random_pipeline(args.size, args.seed)
    pipe = pipe.to(device) if dtype == torch.float32 else pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def set_mode(pipe: ReferenceLCMPipeline, mode: str) -> None:
    """Swap the scheduler in place: ``"teacher"`` → DDIM, ``"student"`` → LCM, both from the saved config."""
    scheduler_class = DDIMScheduler if mode == "teacher" else LCMScheduler
    if not isinstance(pipe.scheduler, scheduler_class):
        pipe.scheduler = scheduler_class.from_config(pipe.scheduler.config)


def make_inputs(pipe: ReferenceLCMPipeline, num_frames: int, resolution: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    reference = torch.rand(3, resolution, resolution, generator=generator)
    shape = (num_frames, 3, resolution, resolution)
    guidance = {name: torch.rand(shape, generator=generator) for name in pipe.guidance_types}
    return dict(reference_image=reference, guidance=guidance)


# ----------------------------------------------------------------------------------------------------------
# Instrumentation


@dataclass
class ForwardLog:
    """Seconds spent in each model's forward and the D-UNet's (calls, batch frames) during one pipeline call."""

    seconds: dict
    denoising_calls: int = 0
    denoising_frames: int = 0

    @classmethod
    def empty(cls) -> "ForwardLog":
        return cls(seconds=defaultdict(float))


class ForwardTimer:
    """Wraps the components' ``forward`` (VAE: ``encode``/``decode``) to time them and count D-UNet evaluations."""

    def __init__(self, pipe: ReferenceLCMPipeline):
        self.device = pipe._execution_device
        self.log = ForwardLog.empty()
        self.wrapped: list[tuple[torch.nn.Module, str]] = []
        targets = [
            (pipe.image_encoder, "forward", "image_encoder"),
            (pipe.reference_unet, "forward", "reference_unet"),
            (pipe.guidance_encoder, "forward", "guidance_encoder"),
            (pipe.denoising_unet, "forward", "denoising_unet"),
            (pipe.vae, "encode", "vae_encode"),
            (pipe.vae, "decode", "vae_decode"),
        ]
        for module, method, label in targets:
            self.watch(module, method, label)

    def watch(self, module: torch.nn.Module, method: str, label: str) -> None:
        setattr(module, method, self._wrap(getattr(module, method), label))
        self.wrapped.append((module, method))

    def unwatch(self, module: torch.nn.Module) -> None:
        """Give ``module`` its own methods back (e.g. before ``torch.compile`` traces it)."""
        for method in [method for watched, method in self.wrapped if watched is module]:
            delattr(module, method)
        self.wrapped = [(watched, method) for watched, method in self.wrapped if watched is not module]

    def _synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _wrap(self, function, label: str):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            self._synchronize()
            start = time.perf_counter()
            output = function(*args, **kwargs)
            self._synchronize()
            self.log.seconds[label] += time.perf_counter() - start
            if label == "denoising_unet":
                sample = args[0] if args else kwargs["sample"]
                self.log.denoising_calls += 1
                # UNetMotionModel: (B, C, F, h, w); a 2-D UNet folds frames into the batch: (B·F, C, h, w).
                self.log.denoising_frames += sample.shape[0] * (sample.shape[2] if sample.ndim == 5 else 1)
            return output

        return timed

    def reset(self) -> ForwardLog:
        log, self.log = self.log, ForwardLog.empty()
        return log


def timed_call(pipe: ReferenceLCMPipeline, inputs: dict, steps: int, guidance_scale: float, args) -> float:
    return timed_output(pipe, inputs, steps, guidance_scale, args)[0]


def timed_output(
    pipe: ReferenceLCMPipeline, inputs: dict, steps: int, guidance_scale: float, args
) -> tuple[float, torch.Tensor]:
    """Seconds of one call and its frames ``(1, F, 3, H, W)``."""
    device = pipe._execution_device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    frames = pipe(
        **inputs, num_inference_steps=steps, guidance_scale=guidance_scale, generator=torch.Generator().manual_seed(0),
        context_frames=args.context_frames, context_overlap=args.context_overlap, output_type="pt",
    ).frames
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, frames


# ----------------------------------------------------------------------------------------------------------
# Measurements


def modes() -> list[tuple[str, str, int, float]]:
    """(label, mode, steps, guidance scale): the teacher first, the ratio's numerator."""
    teacher_label = f"teacher DDIM {TEACHER_STEPS} + CFG {TEACHER_GUIDANCE_SCALE:g}"
    teacher = [(teacher_label, "teacher", TEACHER_STEPS, TEACHER_GUIDANCE_SCALE)]
    return teacher + [(f"student LCM {steps}", "student", steps, 1.0) for steps in STUDENT_STEPS]


def measure_speed(pipe: ReferenceLCMPipeline, args: argparse.Namespace) -> list[dict]:
    resolution = args.resolution or DEFAULT_RESOLUTION[args.size]
    inputs = make_inputs(pipe, args.frames, resolution, args.seed)
    timer = ForwardTimer(pipe)
    rows = []
    for label, mode, steps, guidance_scale in modes():
        set_mode(pipe, mode)
        timed_call(pipe, inputs, steps, guidance_scale, args)  # warm-up
        rows.append(measure_mode(pipe, timer, inputs, label, steps, guidance_scale, args))
    if args.compile:
        rows.append(measure_compiled(pipe, timer, inputs, args))
    return rows


def measure_mode(pipe, timer: ForwardTimer, inputs: dict, label: str, steps: int, guidance_scale: float, args) -> dict:
    """The median of ``--repeats`` calls (after the caller's warm-up) and its model forward times."""
    timer.reset()
    seconds, logs = [], []
    for _ in range(args.repeats):
        seconds.append(timed_call(pipe, inputs, steps, guidance_scale, args))
        logs.append(timer.reset())
    median_index = sorted(range(len(seconds)), key=seconds.__getitem__)[len(seconds) // 2]
    log = logs[median_index]
    model_seconds = sum(log.seconds.values())
    return dict(
        label=label, seconds=seconds[median_index], unet_per_frame=log.denoising_frames / args.frames,
        model_seconds=model_seconds, overhead_seconds=seconds[median_index] - model_seconds,
        denoising_seconds=log.seconds["denoising_unet"],
    )


def measure_compiled(pipe: ReferenceLCMPipeline, timer: ForwardTimer, inputs: dict, args) -> dict:
    """The 4-step student with ``pipe.denoising_unet = torch.compile(pipe.denoising_unet)`` (reference and guidance
    hooks inside the compiled graph); the first call (compilation) is timed apart and its output compared."""
    set_mode(pipe, "student")
    steps = STUDENT_STEPS[0]
    _, eager = timed_output(pipe, inputs, steps, 1.0, args)
    timer.unwatch(pipe.denoising_unet)  # compile the UNet's own forward, then time the compiled module's
    pipe.denoising_unet = torch.compile(pipe.denoising_unet)
    timer.watch(pipe.denoising_unet, "forward", "denoising_unet")
    compile_seconds, compiled = timed_output(pipe, inputs, steps, 1.0, args)
    row = measure_mode(pipe, timer, inputs, f"student LCM {steps} + compile", steps, 1.0, args)
    difference = (compiled.float() - eager.float()).abs().max().item()
    row["note"] = f"first call (compilation) {compile_seconds:.1f} s; max |compiled - eager| = {difference:.1e}"
    return row


def current_rss() -> int:
    """This process's resident set size in bytes (psutil if installed, else Linux ``/proc/self/statm``, else 0)."""
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * resource.getpagesize()
        except OSError:
            return 0


def memory_probe(args: argparse.Namespace) -> None:
    """Run one call in this (fresh) process and print its peak memory as a JSON line."""
    pipe = load_pipeline(args)
    mode = "teacher" if args.probe_mode == "teacher" else "student"
    steps, guidance_scale = (TEACHER_STEPS, TEACHER_GUIDANCE_SCALE) if mode == "teacher" else (STUDENT_STEPS[0], 1.0)
    set_mode(pipe, mode)
    inputs = make_inputs(pipe, args.frames, args.resolution or DEFAULT_RESOLUTION[args.size], args.seed)
    # One step: every step runs the same D-UNet batch (CFG doubles it), so the peak does not grow with the step count.
    steps = 1
    device = pipe._execution_device
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = current_rss()
    timed_call(pipe, inputs, steps, guidance_scale, args)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    print(MEMORY_MARKER + json.dumps({"peak_bytes": peak, "before_bytes": before}))


def _probe_command(args: argparse.Namespace, mode: str, frames: int) -> list[str]:
    command = [sys.executable, __file__, "--probe_mode", mode, "--frames", str(frames), "--size", args.size,
               "--device", args.device, "--seed", str(args.seed), "--context_frames", str(args.context_frames),
               "--context_overlap", str(args.context_overlap), "--threads", str(args.threads)]
    command += ["--model", args.model] if args.model else []
    command += ["--resolution", str(args.resolution)] if args.resolution else []
    return command + (["--fp32"] if args.fp32 else [])


def _run_probe(command: list[str]) -> dict:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MEMORY_MARKER)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"memory probe {' '.join(command[2:])} failed:\n{result.stderr[-2000:]}")
    return json.loads(lines[-1][len(MEMORY_MARKER):])


def measure_memory(args: argparse.Namespace) -> list[dict]:
    """One fresh process per (mode, frames); ``--memory_jobs`` of them at once (memory does not depend on speed)."""
    settings = [(mode, frames) for mode in args.memory_modes for frames in args.memory_frames]
    # On a GPU one at a time: max_memory_allocated is per process, but the card's memory is shared.
    jobs = 1 if torch.device(args.device).type == "cuda" else args.memory_jobs
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        probes = list(pool.map(lambda setting: _run_probe(_probe_command(args, *setting)), settings))
    return [dict(mode=mode, frames=frames, **probe) for (mode, frames), probe in zip(settings, probes)]


# ----------------------------------------------------------------------------------------------------------
# Output


def print_speed_table(rows: list[dict], args: argparse.Namespace, device: torch.device, dtype: torch.dtype) -> None:
    teacher_seconds = rows[0]["seconds"]
    source = args.model or f"random {args.size} configs"
    resolution = args.resolution or DEFAULT_RESOLUTION[args.size]
    print(f"# Inference: {source}, {args.frames} frames at {resolution}x{resolution}, device {device.type}, {dtype}, "
          f"context {args.context_frames}/{args.context_overlap}, median of {args.repeats} after a warm-up")
    print(f"| {'mode':<27} | {'seconds':>9} | {'teacher / mode':>14} | {'UNet evals / frame':>18} | "
          f"{'model fwd s':>11} | {'D-UNet s':>9} | {'overhead s':>10} | {'overhead %':>10} |")
    print("|" + "|".join("-" * width for width in (29, 11, 16, 20, 13, 11, 12, 12)) + "|")
    for row in rows:
        ratio = teacher_seconds / row["seconds"]
        overhead_percent = 100 * row["overhead_seconds"] / row["seconds"]
        print(f"| {row['label']:<27} | {row['seconds']:>9.4f} | {ratio:>14.2f} | {row['unet_per_frame']:>18.2f} | "
              f"{row['model_seconds']:>11.4f} | {row['denoising_seconds']:>9.4f} | {row['overhead_seconds']:>10.4f} | "
              f"{overhead_percent:>10.1f} |")
    for row in rows:
        if "note" in row:
            print(f"{row['label']}: {row['note']}")


def print_memory_table(rows: list[dict], device: torch.device) -> None:
    what = "CUDA max_memory_allocated" if device.type == "cuda" else "peak RSS (getrusage ru_maxrss)"
    print(f"\n# Peak memory, one fresh process per setting: {what}; 'increase' = peak - value before the call")
    print(f"| {'mode':<8} | {'frames':>6} | {'peak MiB':>9} | {'increase MiB':>12} |")
    print("|----------|--------|-----------|--------------|")
    for row in rows:
        peak, increase = row["peak_bytes"] / 2**20, max(0, row["peak_bytes"] - row["before_bytes"]) / 2**20
        print(f"| {row['mode']:<8} | {row['frames']:>6} | {peak:>9.1f} | {increase:>12.1f} |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="pipeline folder; default: random --size configs")
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--frames", type=int, default=24, help="video frames in the timed runs")
    parser.add_argument("--resolution", type=int, default=None, help="default: 32 (tiny) / 512 (sd15)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--context_frames", type=int, default=24)
    parser.add_argument("--context_overlap", type=int, default=4)
    parser.add_argument("--memory_frames", type=int, nargs="*", default=[24, 96], help="none: skip memory")
    parser.add_argument("--memory_modes", nargs="+", choices=("teacher", "student"), default=["teacher", "student"])
    parser.add_argument("--memory_jobs", type=int, default=4, help="memory probes run at once (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--fp32", action="store_true", help="float32 on GPU too (default there: float16)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default); on a shared "
                        "CPU more threads than free cores make spin-waiting kernels many times slower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compile", action="store_true", help="add a row with torch.compile(pipe.denoising_unet) "
                        "(compilation takes minutes on a CPU)")
    parser.add_argument("--probe_mode", default=None, help=argparse.SUPPRESS)  # internal: one memory measurement
    args = parser.parse_args(argv)
    for name in ("frames", "repeats", "context_frames"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.probe_mode:
        memory_probe(args)
        return
    pipe = load_pipeline(args)
    device, dtype = pipe._execution_device, pipe.denoising_unet.dtype
    speed_rows = measure_speed(pipe, args)
    print_speed_table(speed_rows, args, device, dtype)
    if args.memory_frames:
        del pipe
        print_memory_table(measure_memory(args), device)


if __name__ == "__main__":
    main()
