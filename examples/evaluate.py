"""Evaluate a distilled student (and optionally its teacher) on a Champ-layout test set: the paper's Table 3.

    python examples/evaluate.py --model out/student --teacher out/teacher --data data/synthdance_test \\
        --steps 1 2 4 8 --teacher_steps 2 4 8 20 --output_dir eval/

Writes ``report.json``, ``table.md`` (method × steps × SSIM / PSNR / L1 / flicker [/ LPIPS / FID / FVD] + seconds per
frame), ``quality_vs_steps.png`` and side-by-side samples (reference | ground truth | generated) under ``samples/``.
With ``--teacher``, the speed-up of the student over the teacher's most-steps setting is also timed side by side
(``--speed_repeats`` interleaved calls on the first test video, medians) rather than from the two separate passes,
and every student row is compared with the teacher at the same steps and at its most steps video by video (SSIM
difference ± standard error, videos on which the student is better).
The student runs with an LCMScheduler and ``--guidance_scale`` (1: no CFG); the teacher with its own scheduler (DDIM)
and ``--teacher_guidance_scale`` (3.5). LPIPS / FID / FVD run only when their local weight files are given.

On SynthDance data the table also measures appearance (person-region SSIM / L1, per-part and background ΔE, identity
retrieval), headed by calibration rows (the ground truth, the student's VAE reconstruction, a model that ignores the
reference, one that copies the reference frame), and the student's VAE is put through the autoencoder gate
(``evaluation.autoencoder_gate``: person MAE and per-part colour error of its reconstruction). ``--reenact_data`` (``referencelcm synth --split reenact``) scores the
same methods on cross-identity pairs as well, with the reference swap ratio and the output's spread over
``--reference_frames`` reference frames; comparisons are then made for SSIM, person L1 and part ΔE on each split.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import LCMScheduler

from referencelcm import ReferenceLCMPipeline
from referencelcm.evaluation import (
    COMPARED_METRICS,
    QualityMetrics,
    SpeedRun,
    autoencoder_gate,
    calibration_rows,
    evaluate_model,
    load_test_videos,
    teacher_student_comparisons,
    time_side_by_side,
    write_plot,
    write_report,
)
from referencelcm.metrics import FrechetDistance, LearnedPerceptualDistance
from referencelcm.training.consistency import student_lcm_scheduler_from_teacher


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="student pipeline folder (or Hub id)")
    parser.add_argument("--teacher", default=None, help="teacher pipeline folder, evaluated with its own scheduler")
    parser.add_argument("--data", required=True, help="Champ-layout test set root")
    parser.add_argument("--reenact_data", default=None,
                        help="a SynthDance reenactment split (referencelcm synth --split reenact) to score as well")
    parser.add_argument("--reference_frames", type=int, default=3,
                        help="reenactment pairs: references per pair for the reference-frame spread (1: skip)")
    parser.add_argument("--steps", type=int, nargs="+", default=None, help="the student's steps (default: 1 2 4 8)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=None,
                        help="custom LCM timesteps for the student, strictly decreasing, instead of --steps")
    parser.add_argument("--teacher_steps", type=int, nargs="+", default=None, help="default: --steps plus 20")
    parser.add_argument("--guidance_scale", type=float, default=1.0, help="student CFG scale (1 = off)")
    parser.add_argument("--teacher_guidance_scale", type=float, default=3.5)
    parser.add_argument("--output_dir", default="evaluation")
    parser.add_argument("--num_videos", type=int, default=None, help="first N test videos (default: all)")
    parser.add_argument("--max_frames", type=int, default=None, help="generated frames per video (default: all)")
    parser.add_argument("--resolution", type=int, default=None, help="resize frames to R x R (default: file size)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--speed_repeats", type=int, default=5,
                        help="with --teacher: interleaved timed calls per setting for the speed-up table (0: skip)")
    parser.add_argument("--context_frames", type=int, default=24)
    parser.add_argument("--context_overlap", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    parser.add_argument("--lpips_linear_weights", default=None, help="lpips weights/v0.1/<net>.pth (local)")
    parser.add_argument("--lpips_backbone_weights", default=None, help="torchvision backbone state dict (local)")
    parser.add_argument("--lpips_net", default="alex", choices=("alex", "vgg", "squeeze"))
    parser.add_argument("--fid_feature_network", default=None, help="image feature network file (TorchScript/pt2)")
    parser.add_argument("--fvd_feature_network", default=None, help="video feature network file (TorchScript/pt2)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if args.timesteps is not None and args.steps is not None:
        parser.error("pass either --steps or --timesteps, not both.")
    args.steps = [len(args.timesteps)] if args.timesteps else args.steps or [1, 2, 4, 8]
    if args.reference_frames < 1:
        parser.error(f"--reference_frames must be at least 1, got {args.reference_frames}.")
    return args


def load_pipeline(path: str, device: str, dtype: torch.dtype) -> ReferenceLCMPipeline:
    dtype_kwargs = {} if dtype == torch.float32 else {"torch_dtype": dtype}
    pipe = ReferenceLCMPipeline.from_pretrained(path, **dtype_kwargs).to(device)
    pipe.set_progress_bar_config(disable=True, leave=False)
    return pipe


def build_metrics(args: argparse.Namespace) -> QualityMetrics:
    metrics = QualityMetrics()
    if args.lpips_linear_weights or args.lpips_backbone_weights:
        metrics.lpips = LearnedPerceptualDistance(
            args.lpips_linear_weights, args.lpips_backbone_weights, net=args.lpips_net
        )
    if args.fid_feature_network:
        metrics.fid = FrechetDistance(args.fid_feature_network)
    if args.fvd_feature_network:
        metrics.fvd = FrechetDistance(args.fvd_feature_network)
    return metrics


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    progress = not args.no_progress
    output_dir = Path(args.output_dir)

    # 1. Models: the student always samples with an LCMScheduler on its own noise schedule
    student = load_pipeline(args.model, args.device, dtype)
    if not isinstance(student.scheduler, LCMScheduler):
        print(f"--model has a {type(student.scheduler).__name__}; sampling the student with an LCMScheduler instead.")
        student.scheduler = student_lcm_scheduler_from_teacher(student.scheduler)
    teacher = load_pipeline(args.teacher, args.device, dtype) if args.teacher else None

    # 2. Test sets and optional learned metrics, read once and shared by both models
    if teacher is not None and set(teacher.guidance_types) != set(student.guidance_types):
        raise ValueError(
            f"--teacher uses guidance types {list(teacher.guidance_types)} but --model {list(student.guidance_types)}."
        )
    splits = {"self": (args.data, 1)}
    if args.reenact_data:
        splits["reenact"] = (args.reenact_data, args.reference_frames)
    metrics = build_metrics(args)

    # 3. Evaluate every split: calibration rows (SynthDance only), the teacher, the student
    rows, first_videos, gate = [], None, None
    teacher_steps = args.teacher_steps or sorted(set(args.steps) | {20})
    for split, (data_dir, reference_frames) in splits.items():
        videos = load_test_videos(data_dir, student.guidance_types, args.num_videos, args.max_frames, args.resolution)
        first_videos = first_videos or videos
        if all(video.labels is not None for video in videos):
            rows += calibration_rows(videos, student.vae)
            if split == "self":  # the VAE alone: is the person's appearance still there before any diffusion?
                gate = autoencoder_gate(student.vae, videos)
        common = dict(
            videos=videos, seed=args.seed, context_frames=args.context_frames, context_overlap=args.context_overlap,
            sample_dir=output_dir / "samples" / split, metrics=metrics, progress=progress,
            reference_frames=reference_frames,
        )
        if teacher is not None:
            rows += evaluate_model(teacher, None, teacher_steps, args.teacher_guidance_scale, "teacher", **common)
        rows += evaluate_model(
            student, None, args.steps, args.guidance_scale, "student", timesteps=args.timesteps, **common
        )
    speed = None
    if teacher is not None and args.speed_repeats > 0:
        runs = [SpeedRun("teacher", teacher, max(teacher_steps), args.teacher_guidance_scale)]
        runs += [SpeedRun(f"student {steps}", student, steps, args.guidance_scale) for steps in args.steps]
        speed = time_side_by_side(runs, first_videos[0], args.speed_repeats, args.seed,
                                  context_frames=args.context_frames, context_overlap=args.context_overlap)

    # 4. Report
    settings = {key: value for key, value in vars(args).items() if key not in ("no_progress", "threads")}
    comparisons = [item for key in COMPARED_METRICS for item in teacher_student_comparisons(rows, key)]
    paths = write_report(rows, output_dir, settings, speed, comparisons, gate)
    plot = write_plot(rows, output_dir / "quality_vs_steps.png")
    print(paths["table"].read_text(encoding="utf-8"))
    if args.timesteps:
        note = f" (the speed table times {len(args.timesteps)} steps of the default spacing: the same cost)"
        print(f"the student sampled at timesteps {args.timesteps}" + (note if speed else ""))
    print(f"wrote {paths['report']}, {paths['table']}" + (f", {plot}" if plot else "") + f", {output_dir / 'samples'}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError, ImportError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
