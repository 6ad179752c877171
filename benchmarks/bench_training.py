"""Distillation speed: seconds per CoSeC-LCD step, model passes per step and peak memory, per phase.

    python benchmarks/bench_training.py                        # tiny random configs, CPU
    python benchmarks/bench_training.py --size sd15 --resolution 256 --frames 8     # SD1.5-sized on GPU (fp32)

One step = ``ConsistencyDistillationStep.step`` (frozen encoders, one shared R-UNet pass, teacher with CFG, EMA
target, student) + backward + AdamW + EMA update. Phase ``spatial`` uses the 2-D D-UNet on single frames, ``temporal``
the motion D-UNet on ``--frames``-frame clips. Each phase runs in a fresh process; after ``--warmup`` untimed steps
the median of ``--steps`` timed steps is printed. Passes are counted with forward hooks: calls and samples (batch
rows; a 2-D UNet's rows are frames). Peak memory: CUDA ``max_memory_allocated`` on GPU; on CPU the process's peak RSS
(``ru_maxrss``, including Python, torch and the weights) and its increase over the RSS before the first step. Random
weights, speed only. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from diffusers import DDIMScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the sibling benchmark's model configs, so both measure the same networks
from bench_inference import SIZES, build_random_pipeline, current_rss  # noqa: E402

from referencelcm import ReferenceLCMPipeline  # noqa: E402
from referencelcm.training.consistency import DDIMSolver  # noqa: E402
from referencelcm.training.distill import (  # noqa: E402
    ConsistencyDistillationStep,
    DistillationConfig,
    DistillationModels,
)
from referencelcm.training.ema import ema_update  # noqa: E402
from referencelcm.training.unets import spatial_unet_from_motion  # noqa: E402

PHASES = ("spatial", "temporal")
MARKER = "TRAINING_PROBE "
LEARNING_RATE, EMA_DECAY = 1e-6, 0.95  # appendix C
TRAINING_RESOLUTION = {"tiny": 32, "sd15": 256}


def build_step(
    args: argparse.Namespace, phase: str, device: torch.device
) -> tuple[ConsistencyDistillationStep, torch.optim.Optimizer]:
    """Teacher, EMA target and student from one random pipeline; 2-D D-UNets for the spatial phase."""
    pipe = build_random_pipeline(args.size, args.seed)
    teacher_scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    teacher = pipe.denoising_unet
    if phase == "spatial":
        teacher = spatial_unet_from_motion(teacher)
        # a new pipeline installs reference read processors and guidance injection on the 2-D D-UNet
        pipe = ReferenceLCMPipeline(**{**pipe.components, "denoising_unet": teacher}, **pipe.settings)
    pipe.to(device)
    student = copy.deepcopy(teacher).train().requires_grad_(True)
    target = copy.deepcopy(student).requires_grad_(False)
    for model in (pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.guidance_encoder, teacher):
        model.requires_grad_(False)
    models = DistillationModels(
        pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.guidance_encoder, teacher, target, student
    )
    solver = DDIMSolver.from_scheduler(teacher_scheduler, num_ddim_timesteps=50)
    config = DistillationConfig(phase=phase, guidance_scale=2.5 if phase == "spatial" else 1.5)
    step = ConsistencyDistillationStep(models, solver, teacher_scheduler.config.prediction_type, config)
    return step, torch.optim.AdamW(student.parameters(), lr=LEARNING_RATE)


def make_batch(args: argparse.Namespace, phase: str, guidance_types, device: torch.device) -> dict:
    generator = torch.Generator().manual_seed(args.seed)
    frames = 1 if phase == "spatial" else args.frames
    size, clip_size = args.resolution, SIZES[args.size]["clip"]["image_size"]
    shape = (args.batch_size, 3, frames, size, size)
    batch = {
        "target": torch.rand(shape, generator=generator) * 2 - 1,
        "guidance": {name: torch.rand(shape, generator=generator) for name in guidance_types},
        "references": torch.rand(args.batch_size, args.references, 3, size, size, generator=generator) * 2 - 1,
        "reference_clip_pixels": torch.randn(
            args.batch_size, args.references, 3, clip_size, clip_size, generator=generator
        ),
        "source_id": torch.arange(args.batch_size),
    }
    return {key: value if isinstance(value, dict) else value.to(device) for key, value in batch.items()}


def count_passes(models: DistillationModels, counts: Counter) -> None:
    """Forward hooks adding calls and sample rows per network (a 2-D UNet's rows are frames)."""
    for name in ("reference_unet", "teacher_unet", "target_unet", "student_unet"):
        def hook(_module, args, kwargs, _output, name=name):
            sample = args[0] if args else kwargs["sample"]
            counts[f"{name}_calls"] += 1
            counts[f"{name}_samples"] += sample.shape[0]

        getattr(models, name).register_forward_hook(hook, with_kwargs=True)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def probe(args: argparse.Namespace) -> None:
    """Measure one phase in this process and print a JSON line."""
    device = torch.device(args.device)
    step, optimizer = build_step(args, args.phase, device)
    batch = make_batch(args, args.phase, step.models.guidance_encoder.config.guidance_types, device)
    counts: Counter = Counter()
    count_passes(step.models, counts)
    before = torch.cuda.memory_allocated(device) if device.type == "cuda" else current_rss()
    generator = torch.Generator().manual_seed(args.seed)
    seconds = []
    for index in range(args.warmup + args.steps):
        synchronize(device)
        start = time.perf_counter()
        output = step.step(batch, generator)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_update(step.models.target_unet.parameters(), step.models.student_unet.parameters(), EMA_DECAY)
        synchronize(device)
        if index >= args.warmup:
            seconds.append(time.perf_counter() - start)
    total_steps = args.warmup + args.steps
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    result = {
        "seconds": statistics.median(seconds),
        "passes": {key: value / total_steps for key, value in counts.items()},
        "peak_bytes": peak,
        "before_bytes": before,
        "loss": output.terms["loss"],
    }
    print(MARKER + json.dumps(result))


def run_phase(args: argparse.Namespace, phase: str) -> dict:
    command = [sys.executable, __file__, "--probe_phase", phase] + [
        token for key, value in vars(args).items() if key not in ("phases", "probe_phase")
        for token in (f"--{key}", str(value))
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith(MARKER)]
    if result.returncode != 0 or not lines:
        raise RuntimeError(f"phase {phase} failed:\n{result.stderr[-3000:]}")
    return json.loads(lines[-1][len(MARKER):])


def print_table(rows: dict[str, dict], args: argparse.Namespace) -> None:
    memory = "CUDA max_memory_allocated" if args.device.startswith("cuda") else "peak RSS (ru_maxrss)"
    print(f"# Distillation step: random {args.size} configs, batch {args.batch_size} x {args.references} references, "
          f"{args.resolution}x{args.resolution}, temporal clips of {args.frames} frames, device {args.device}, "
          f"median of {args.steps} after {args.warmup} warm-up; memory: {memory}")
    print("| phase    | s / step | R-UNet calls | R-UNet samples | teacher samples | target samples | student samples "
          "| peak MiB | increase MiB |")
    print("|----------|----------|--------------|----------------|-----------------|----------------|-----------------"
          "|----------|--------------|")
    for phase, row in rows.items():
        passes = row["passes"]
        increase = max(0, row["peak_bytes"] - row["before_bytes"]) / 2**20
        print(f"| {phase:<8} | {row['seconds']:>8.4f} | {passes.get('reference_unet_calls', 0):>12.2f} | "
              f"{passes.get('reference_unet_samples', 0):>14.2f} | {passes.get('teacher_unet_samples', 0):>15.2f} | "
              f"{passes.get('target_unet_samples', 0):>14.2f} | {passes.get('student_unet_samples', 0):>15.2f} | "
              f"{row['peak_bytes'] / 2**20:>8.1f} | {increase:>12.1f} |")
    print("(samples = batch rows per step: N = batch x references; the teacher's CFG doubles its rows; a 2-D UNet's "
          "rows are frames)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(SIZES), default="tiny")
    parser.add_argument("--resolution", type=int, default=None, help="default: 32 (tiny) / 256 (sd15)")
    parser.add_argument("--frames", type=int, default=8, help="clip length of the temporal phase")
    parser.add_argument("--batch_size", type=int, default=2, help="dataset items per step")
    parser.add_argument("--references", type=int, default=2, help="references per item (equivalent group size k)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--phases", nargs="+", choices=PHASES, default=list(PHASES))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--probe_phase", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("frames", "batch_size", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.resolution = args.resolution or TRAINING_RESOLUTION[args.size]
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.probe_phase:
        args.phase = args.probe_phase
        probe(args)
        return
    print_table({phase: run_phase(args, phase) for phase in args.phases}, args)


if __name__ == "__main__":
    main()
