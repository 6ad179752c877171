"""Which path carries the reference's appearance: the CLIP image embedding or the reference UNet's tokens.

    python benchmarks/bench_reference_paths.py --model models/teacher --data build/default-model/data/test \
        [--num_videos 12] [--num_frames 4] [--steps 20] [--guidance_scale 3.5]

Every video is generated five times with the same noise: unchanged; with the image embedding, or the R-UNet's tokens,
of the next video's reference (another identity); with a zero embedding; with no reference tokens
(:func:`referencelcm.diagnostics.reference_path_from`). Each call is scored by the per-part colour error (ΔE*ab of
each region's mean colour against the ground truth, SynthDance regions) in three groups of parts and the background,
and by its part error ÷ that of a model that paints each part in the split's average colour. The last column is the
part error's difference to the unchanged call, paired video by video ± standard error: a path whose swap changes the
person by nothing is a path the model does not read the person from.
"""

from __future__ import annotations

import argparse

import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance.body import PART_NAMES
from referencelcm.diagnostics import reference_path_from
from referencelcm.evaluation import (
    format_difference,
    generate_video,
    load_test_videos,
    paired_difference,
    split_mean_colours,
)
from referencelcm.metrics import paint_regions, part_colour_errors

GROUPS = {
    "legs, pelvis": ("pelvis", "left_thigh", "right_thigh", "left_shin", "right_shin"),
    "torso, arms": ("abdomen", "chest", "left_upper_arm", "right_upper_arm", "left_forearm", "right_forearm"),
    "head, neck, hands, feet": ("head", "neck", "left_hand", "right_hand", "left_foot", "right_foot"),
}
CALLS = (  # (row label, path, from the next video's reference: True; removed: False)
    ("unchanged", None, False),
    ("image embedding of another identity", "image_embeds", True),
    ("R-UNet tokens of another identity", "reference_tokens", True),
    ("zero image embedding", "image_embeds", False),
    ("no R-UNet tokens", "reference_tokens", False),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="pipeline folder (a teacher or a student)")
    parser.add_argument("--data", required=True, help="SynthDance test split (Champ layout with semantic maps)")
    parser.add_argument("--num_videos", type=int, default=12)
    parser.add_argument("--num_frames", type=int, default=4, help="generated frames per video (after frame 0)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--guidance_scale", type=float, default=3.5)
    parser.add_argument("--seed", type=int, default=0, help="the noise of every call")
    args = parser.parse_args(argv)
    if args.num_videos < 2:
        parser.error(f"--num_videos must be >= 2 (a video's swap comes from another one), got {args.num_videos}.")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pipe = ReferenceLCMPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    videos = load_test_videos(args.data, pipe.guidance_types, num_videos=args.num_videos, max_frames=args.num_frames)
    if any(video.labels is None for video in videos):
        raise SystemExit(f"--data {args.data!r} has no semantic maps: the part errors need SynthDance regions.")
    average = split_mean_colours(videos)
    errors = {label: [] for label, _, _ in CALLS}  # label → per video (regions,) mean over frames
    ignoring = []
    for index, video in enumerate(videos):
        other = videos[(index + 1) % len(videos)].reference
        for label, path, from_other in CALLS:
            if path is None:
                frames, _ = generate_video(pipe, video, args.steps, args.guidance_scale, args.seed)
            else:
                with reference_path_from(pipe, path, other if from_other else None):
                    frames, _ = generate_video(pipe, video, args.steps, args.guidance_scale, args.seed)
            errors[label].append(part_colour_errors(frames, video.ground_truth, video.labels, len(PART_NAMES))
                                 ["regions"].nanmean(0))
        painted = paint_regions(video.labels, average).float()
        ignoring.append(part_colour_errors(painted, video.ground_truth, video.labels, len(PART_NAMES))["regions"]
                        .nanmean(0))
    print(format_table({label: torch.stack(rows) for label, rows in errors.items()}, torch.stack(ignoring), args))
    return 0


def format_table(errors: dict[str, torch.Tensor], ignoring: torch.Tensor, args: argparse.Namespace) -> str:
    """Markdown table: one row per call, from per-video region errors ``(V, P + 1)`` (row P the background)."""
    parts = len(PART_NAMES)
    baseline = ignoring[:, :parts].nanmean(1).mean().item()

    def row(label: str, regions: torch.Tensor) -> dict:  # a row as evaluate_model's, for paired_difference
        return {"method": label, "steps": None, "per_video": {"part_delta_e": regions[:, :parts].nanmean(1).tolist()}}

    unchanged = row(CALLS[0][0], errors[CALLS[0][0]])
    header = ["call", *GROUPS, "background", "parts (÷ ignoring)", "− unchanged (± SE)"]
    lines = [f"{args.model}, {len(ignoring)} videos of {args.data}, {args.steps} steps, CFG {args.guidance_scale}",
             "", "| " + " | ".join(header) + " |", "|---" + "|---:" * (len(header) - 1) + "|"]
    for label, regions in [*errors.items(), ("ignores the reference", ignoring)]:
        per_video = regions[:, :parts].nanmean(1)
        cells = [f"{regions[:, [PART_NAMES.index(name) for name in names]].nanmean(1).nanmean().item():.1f}"
                 for names in GROUPS.values()]
        paired = "" if label == CALLS[0][0] else format_difference(
            paired_difference(row(label, regions), unchanged, "part_delta_e"))
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {regions[:, parts].nanmean().item():.1f} | "
                     f"{per_video.mean().item():.2f} ({per_video.mean().item() / baseline:.3f}) | {paired} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
