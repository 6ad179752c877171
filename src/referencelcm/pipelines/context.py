"""Context windows for long videos: overlapping frame windows whose predictions are averaged per frame."""

from __future__ import annotations


def context_windows(num_frames: int, context_frames: int, context_overlap: int) -> list[list[int]]:
    """Split ``range(num_frames)`` into windows of ``context_frames`` frames overlapping by ``context_overlap``.

    Windows start every ``context_frames - context_overlap`` frames; the last one is shifted back to end at the last
    frame, so every window is full length (when the video is at least that long) and every frame is covered.

    Returns:
        A list of frame-index lists; a single window ``[0, ..., num_frames - 1]`` when the video fits in one.
    """
    if num_frames < 1:
        raise ValueError(f"`num_frames` must be >= 1, got {num_frames}.")
    if context_frames < 1:
        raise ValueError(f"`context_frames` must be >= 1, got {context_frames}.")
    if not 0 <= context_overlap < context_frames:
        raise ValueError(
            f"`context_overlap` must be in [0, context_frames={context_frames}), got {context_overlap}."
        )
    if num_frames <= context_frames:
        return [list(range(num_frames))]
    stride = context_frames - context_overlap
    starts = list(range(0, num_frames - context_frames, stride)) + [num_frames - context_frames]
    return [list(range(start, start + context_frames)) for start in starts]
