"""``referencelcm synth``: generate a SynthDance dataset in Champ's layout."""

from __future__ import annotations

import argparse

from ...arguments import check_at_least, check_output_folder
from .writer import DATASET_SPLITS, DEFAULT_FPS, FORMAT_VERSION, FORMAT_VERSIONS, generate_dataset


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--output --num-videos --num-frames --resolution --seed --split --fps --format-version --dances
    --no-progress``."""
    parser.add_argument("--output", required=True, help="dataset root to write (created if needed)")
    parser.add_argument("--num-videos", type=int, default=8, help="number of videos, one identity each (default 8)")
    parser.add_argument("--num-frames", type=int, default=48, help="frames per video (default 48)")
    parser.add_argument("--resolution", type=int, default=128, help="square frame size in pixels (default 128)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed; same seed, same bytes (default 0)")
    parser.add_argument("--split", choices=DATASET_SPLITS, default="train",
                        help="train or test (disjoint identities), or reenact: --num-videos cross-identity pairs of "
                             "the seed's test identities, A's motion in B's appearance (default train)")
    parser.add_argument("--fps", type=int, default=DEFAULT_FPS, help=f"motion frame rate (default {DEFAULT_FPS})")
    parser.add_argument("--format-version", type=int, choices=FORMAT_VERSIONS, default=FORMAT_VERSION,
                        help=f"SynthDance format: 2 frames the body larger than 1; 1 reproduces datasets made before "
                             f"(default {FORMAT_VERSION})")
    parser.add_argument("--dances", type=int, default=1,
                        help="train/test: each video is a compilation of this many dances of its identity, "
                             "--num-frames each, cut between them (references in another pose than the target; "
                             "image-stage training only) (default 1)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Writes the dataset; bad values raise ``ValueError`` naming the command-line argument."""
    for flag, value, minimum in (
        ("--num-videos", args.num_videos, 1),
        ("--num-frames", args.num_frames, 1),
        ("--resolution", args.resolution, 16),
        ("--fps", args.fps, 1),
        ("--seed", args.seed, 0),
        ("--dances", args.dances, 1),
    ):
        check_at_least(flag, value, minimum)
    if args.split == "reenact" and args.dances != 1:
        raise ValueError(f"--dances must be 1 for --split reenact (its pairs are single dances), got {args.dances}.")
    if args.split == "reenact" and args.num_videos < 2:
        raise ValueError(f"--num-videos must be at least 2 for --split reenact (pairs of identities), got "
                         f"{args.num_videos}.")
    check_output_folder("--output", args.output)
    root = generate_dataset(
        args.output,
        num_videos=args.num_videos,
        num_frames=args.num_frames,
        resolution=args.resolution,
        seed=args.seed,
        split=args.split,
        progress=not args.no_progress,
        fps=args.fps,
        version=args.format_version,
        dances=args.dances,
    )
    dances = f" x {args.dances} dances" if args.dances > 1 else ""
    print(f"wrote {args.num_videos} {args.split} video(s){dances} x {args.num_frames} frame(s) at "
          f"{args.resolution}x{args.resolution} (format {args.format_version}) to {root}")
    return 0
