"""``referencelcm extract-guidance``: a guidance folder (skeletons, masks) from a video of a person, offline."""

from __future__ import annotations

import argparse

from .extraction import MISSING_POLICIES, extract_guidance


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``--video | --frames``, ``--output``, ``--reference``, ``--fps``, ``--size``, ``--missing``,
    ``--overwrite``, ``--no-progress``."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--video", help="the driving video (mp4, mov, mkv, ...: any file ffmpeg reads)")
    source.add_argument("--frames", help="a folder of the driving video's frames (images, in natural order)")
    parser.add_argument("--output", required=True,
                        help="video folder to write: images/ dwpose/ mask/ meta.json (Champ's layout)")
    parser.add_argument("--reference", help="image of the person to animate: the driving pose is scaled and moved "
                        "to their body height, shoulder width and position (the transform goes to meta.json)")
    parser.add_argument("--fps", type=float, help="resample --video to this frame rate (default: every frame)")
    parser.add_argument("--size", type=int, nargs=2, metavar=("W", "H"),
                        help="size of the written frames: scaled to cover it, centre-cropped (default: the source's)")
    parser.add_argument("--missing", choices=MISSING_POLICIES, default="keep-last",
                        help="a frame without a person is left out (skip) or keeps the last pose found (keep-last); "
                             "either way it is reported by index (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Extract and report; bad arguments raise ``ValueError`` / ``FileNotFoundError`` naming the flag."""
    result = extract_guidance(
        args.output, video=args.video, frames=args.frames, reference=args.reference, fps=args.fps, size=args.size,
        missing=args.missing, overwrite=args.overwrite, progress=not args.no_progress,
    )
    for line in result.report():
        print(f"referencelcm extract-guidance: {line}")
    return 0
