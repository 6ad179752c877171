import pytest

from referencelcm.pipelines.context import context_windows


@pytest.mark.parametrize("num_frames", [1, 2, 5, 8, 9, 24, 25, 50, 97])
@pytest.mark.parametrize("context_frames, context_overlap", [(8, 0), (8, 2), (8, 7), (24, 4), (1, 0)])
def test_windows_cover_every_frame_with_full_length(num_frames, context_frames, context_overlap):
    windows = context_windows(num_frames, context_frames, context_overlap)
    covered = sorted({frame for window in windows for frame in window})
    assert covered == list(range(num_frames))
    assert all(len(window) == min(num_frames, context_frames) for window in windows)
    assert all(window == list(range(window[0], window[0] + len(window))) for window in windows)
    starts = [window[0] for window in windows]
    assert starts == sorted(set(starts))
    # consecutive windows overlap by at least `context_overlap` frames
    assert all(b[0] <= a[-1] + 1 - context_overlap for a, b in zip(windows, windows[1:]))


def test_short_video_is_one_window():
    assert context_windows(3, 24, 4) == [[0, 1, 2]]


@pytest.mark.parametrize(
    "args, message",
    [((0, 8, 2), "num_frames"), ((10, 0, 0), "context_frames"), ((10, 8, 8), "context_overlap"), ((10, 8, -1), "context_overlap")],
)
def test_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        context_windows(*args)
