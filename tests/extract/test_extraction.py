"""``referencelcm extract-guidance`` on a real photograph (``skimage.data.astronaut()``) and short driving videos made
from it; the frame sampling and geometry; errors, and nothing left behind on failure."""

from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

import imageio
import numpy as np
import pytest
from PIL import Image

from referencelcm.cli import main
from referencelcm.data.layout import validate_video_dir
from referencelcm.data.synthdance.openpose import KEYPOINT_NAMES, OPENPOSE_COLOURS
from referencelcm.extract.extraction import CoverCrop, extract_guidance, open_video, read_keypoints, sampled_frames

from . import (
    BACKGROUND,
    DRIVING_SCALE,
    DRIVING_SHIFTS,
    FACE_BOX,
    SHOULDER_BOX,
    astronaut,
    driving_frame,
    inside,
    requires_mediapipe,
    to_driving,
    write_driving_video,
)

NOSE, NECK = KEYPOINT_NAMES.index("nose"), KEYPOINT_NAMES.index("neck")
SHOULDERS = (KEYPOINT_NAMES.index("right_shoulder"), KEYPOINT_NAMES.index("left_shoulder"))
SIZE = 256  # output frames, half the photograph's size


def measures(keypoints: np.ndarray) -> np.ndarray:
    """Shoulder width and neck–nose distance of skeletons ``(..., 18, 2)`` → ``(..., 2)``."""
    width = np.linalg.norm(keypoints[..., SHOULDERS[0], :] - keypoints[..., SHOULDERS[1], :], axis=-1)
    height = np.linalg.norm(keypoints[..., NECK, :] - keypoints[..., NOSE, :], axis=-1)
    return np.stack([width, height], axis=-1)


def read_map(folder: Path, name: str, index: int) -> np.ndarray:
    return np.asarray(Image.open(sorted((folder / name).iterdir())[index]).convert("RGB"))


def write_frames(folder: Path, frames: list[np.ndarray]) -> Path:
    folder.mkdir(parents=True)
    for index, frame in enumerate(frames):
        Image.fromarray(frame).save(folder / f"frame{index}.png")
    return folder


@pytest.fixture(scope="module")
def reference_png(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("reference") / "astronaut.png"
    Image.fromarray(astronaut()).save(path)
    return path


@pytest.fixture(scope="module")
def driving_mp4(tmp_path_factory) -> Path:
    return write_driving_video(tmp_path_factory.mktemp("driving") / "driving.mp4")


# -- real input ------------------------------------------------------------------------------------------------------


@requires_mediapipe
def test_the_person_is_found_and_shoulders_and_head_land_on_her():
    from referencelcm.extract.detector import PoseDetector

    with PoseDetector(video=False) as detector:
        detection = detector(astronaut())
    assert detection is not None and detection.visible[[NOSE, NECK, *SHOULDERS]].all()
    nose, (right, left) = detection.keypoints[NOSE], detection.keypoints[list(SHOULDERS)]
    assert inside(nose, FACE_BOX) and inside(right, SHOULDER_BOX) and inside(left, SHOULDER_BOX)
    assert right[0] < nose[0] < left[0]  # facing the camera: her right shoulder on the image's left
    for x, y in (nose, right, left):
        assert detection.mask[int(y), int(x)] > 0.5  # on the person, by her segmentation


@requires_mediapipe
def test_a_video_of_her_gives_skeletons_and_masks_on_her(tmp_path, driving_mp4):
    result = extract_guidance(tmp_path / "video", video=driving_mp4, size=(SIZE, SIZE), progress=False)
    assert result.num_frames == len(DRIVING_SHIFTS) and result.no_person == [] and result.fps == 10
    video = validate_video_dir(tmp_path / "video", ["dwpose"], require_mask=True)
    assert video.num_frames == len(DRIVING_SHIFTS)
    meta = json.loads((tmp_path / "video" / "meta.json").read_text())
    assert meta["size"] == [SIZE, SIZE] and meta["alignment"] is None and meta["source_frames"] == [0, 1, 2]
    keypoints, visible = read_keypoints(meta)
    to_output = SIZE / astronaut().shape[0]
    for frame, shift in enumerate(DRIVING_SHIFTS):
        assert visible[frame, [NOSE, NECK, *SHOULDERS]].all()
        face = np.concatenate([to_driving(FACE_BOX[:2], shift), to_driving(FACE_BOX[2:], shift)]) * to_output
        torso = np.concatenate([to_driving(SHOULDER_BOX[:2], shift), to_driving(SHOULDER_BOX[2:], shift)]) * to_output
        assert inside(keypoints[frame, NOSE], face), frame
        assert all(inside(keypoints[frame, index], torso) for index in SHOULDERS), frame
        mask = read_map(tmp_path / "video", "mask", frame)
        for x, y in keypoints[frame, [NOSE, *SHOULDERS]]:
            assert mask[int(y), int(x)].tolist() == [255, 255, 255]
        neck = keypoints[frame, NECK].astype(int)  # the skeleton is drawn there, in the neck's OpenPose colour
        assert read_map(tmp_path / "video", "dwpose", frame)[neck[1], neck[0]].tolist() == list(OPENPOSE_COLOURS[NECK])


@requires_mediapipe
def test_the_driving_pose_is_aligned_to_the_reference(tmp_path, driving_mp4, reference_png):
    """The astronaut at 0.8 of her size, walking right, aligned to the photograph: the transform undoes the scaling,
    every aligned skeleton has the reference's shoulder width and head size within 10 %, and the walk is kept."""
    from referencelcm.extract.extraction import detect_reference

    result = extract_guidance(tmp_path / "aligned", video=driving_mp4, reference=reference_png, size=(SIZE, SIZE),
                              progress=False)
    meta = json.loads((tmp_path / "aligned" / "meta.json").read_text())
    alignment = meta["alignment"]
    assert alignment == json.loads(json.dumps(result.alignment.to_json()))
    assert np.allclose(alignment["scale"], 1 / DRIVING_SCALE, rtol=0.1)
    reference_keypoints, _ = detect_reference(Image.open(reference_png), (SIZE, SIZE))
    keypoints, _ = read_keypoints(meta)
    assert np.allclose(measures(keypoints), measures(reference_keypoints), rtol=0.1)
    assert np.allclose(keypoints[0, NECK], reference_keypoints[NECK], atol=0.01)
    walked = np.diff(keypoints[:, NECK, 0])  # 25 px a frame in the driving video, at 0.5 (output) x 1 / 0.8 (scale)
    assert np.allclose(walked, 25 * SIZE / 512 * alignment["scale"][0], rtol=0.25)
    mask = read_map(tmp_path / "aligned", "mask", 0)  # the mask moved with the skeleton: on the aligned nose
    nose = keypoints[0, NOSE].astype(int)
    assert mask[nose[1], nose[0]].tolist() == [255, 255, 255]


@requires_mediapipe
@pytest.mark.parametrize("missing, kept_last, skipped, written", [
    ("keep-last", [2], [0], [1, 2, 3]), ("skip", [], [0, 2], [1, 3])])
def test_frames_without_a_person_are_reported_and_handled(tmp_path, capsys, missing, kept_last, skipped, written):
    blank = np.full_like(astronaut(), BACKGROUND)
    frames = write_frames(tmp_path / "frames", [blank, driving_frame(25), blank, driving_frame(50)])
    output = tmp_path / "out"
    assert main(["extract-guidance", "--frames", str(frames), "--output", str(output), "--size", "128", "128",
                 "--missing", missing, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    meta = json.loads((output / "meta.json").read_text())
    assert meta["missing"] == {"policy": missing, "no_person": [0, 2], "kept_last": kept_last, "skipped": skipped}
    assert meta["source_frames"] == written and validate_video_dir(output, ["dwpose"]).num_frames == len(written)
    assert f"left out: source frames {skipped}" in printed
    if kept_last:
        assert "keep the last pose found: source frames [2]" in printed
        assert np.array_equal(read_map(output, "dwpose", 1), read_map(output, "dwpose", 0))  # frame 2 keeps frame 1's
        assert not np.array_equal(read_map(output, "images", 1), read_map(output, "images", 0))


@requires_mediapipe
def test_errors_name_the_argument_and_leave_nothing(tmp_path, reference_png, capsys):
    blank = np.full_like(astronaut(), BACKGROUND)
    empty = write_frames(tmp_path / "empty", [blank, blank])
    output = tmp_path / "new" / "out"
    cases = (
        (["--frames", str(empty)], "--frames .*empty: no person found in any of its 2 frame"),
        (["--frames", str(write_frames(tmp_path / "one", [driving_frame(25)])), "--reference",
          str(write_frames(tmp_path / "blank", [blank]) / "frame0.png")], "--reference .*: no person found"),
    )
    for arguments, message in cases:
        assert main(["extract-guidance", *arguments, "--output", str(output), "--no-progress"]) == 2
        assert re.search(message, capsys.readouterr().err), message
        assert not (tmp_path / "new").exists()
    damaged = write_frames(tmp_path / "damaged", [driving_frame(25), driving_frame(50), driving_frame(75)])
    (damaged / "frame2.png").write_bytes((damaged / "frame2.png").read_bytes()[:200])  # truncated
    with pytest.raises(ValueError, match="--frames .*frame2.png: not a readable image"):
        extract_guidance(output, frames=damaged, progress=False)
    assert not (tmp_path / "new").exists()  # written through a staging folder: nothing half-written


# -- without mediapipe -----------------------------------------------------------------------------------------------


def test_without_mediapipe_the_command_says_what_to_install(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # `import mediapipe` now raises ImportError
    frames = write_frames(tmp_path / "frames", [np.zeros((16, 16, 3), np.uint8)])
    assert main(["extract-guidance", "--frames", str(frames), "--output", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert 'pip install opencv-python-headless absl-py attrs flatbuffers "protobuf<5" && pip install --no-deps ' \
           "mediapipe==0.10.21" in error and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_named_before_anything_runs(tmp_path, capsys):
    frames = write_frames(tmp_path / "frames", [np.zeros((16, 16, 3), np.uint8)])
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file.txt").write_text("keep me")
    cases = (
        (["--frames", str(frames), "--fps", "5"], "--fps resamples a --video"),
        (["--frames", str(frames), "--size", "0", "16"], "--size must be >= 1, got 0"),
        (["--video", str(tmp_path / "missing.mp4")], "--video .*missing.mp4: no such file"),
        (["--video", str(not_a_video)], "--video .*notes.mp4: not a readable video"),
        (["--frames", str(tmp_path / "nowhere")], "--frames .*nowhere: no such folder"),
        (["--frames", str(tmp_path / "full")], "--frames .*full: the folder holds no image files"),
        (["--frames", str(frames), "--reference", str(tmp_path / "missing.png")], "--reference .*missing.png"),
    )
    for arguments, message in cases:
        assert main(["extract-guidance", *arguments, "--output", str(tmp_path / "out")]) == 2, arguments
        assert re.search(message, capsys.readouterr().err), message
        assert not (tmp_path / "out").exists()
    assert main(["extract-guidance", "--frames", str(frames), "--output", str(tmp_path / "full")]) == 2
    assert "not empty; pass --overwrite" in capsys.readouterr().err
    assert (tmp_path / "full" / "file.txt").read_text() == "keep me"


# -- sampling and geometry -------------------------------------------------------------------------------------------


def test_fps_keeps_the_frames_nearest_below_each_new_time(tmp_path):
    path = tmp_path / "clock.mp4"
    with imageio.get_writer(path, fps=30) as writer:
        for index in range(30):
            writer.append_data(np.full((16, 16, 3), index * 8, np.uint8))
    source = open_video(path)
    assert (source.fps, source.size, source.num_frames) == (30.0, (16, 16), 30)
    assert [index for index, _ in sampled_frames(source, 12)] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23, 25, 28]
    assert [index for index, _ in sampled_frames(source, 10)] == list(range(0, 30, 3))
    assert len(list(sampled_frames(source, 60))) == len(list(sampled_frames(source, None))) == 30


@pytest.mark.parametrize("source, target", [((640, 360), (256, 256)), ((300, 500), (128, 64)), ((64, 64), (64, 64))])
def test_cover_crop_moves_points_with_the_image(source, target):
    crop = CoverCrop(source, target)
    image = np.zeros((source[1], source[0]), np.uint8)
    point = np.array([source[0] * 0.55, source[1] * 0.45])
    image[int(point[1]) - 2:int(point[1]) + 3, int(point[0]) - 2:int(point[0]) + 3] = 255
    cropped = np.asarray(crop.image(Image.fromarray(image), Image.Resampling.NEAREST))
    assert cropped.shape == (target[1], target[0])
    rows, columns = np.nonzero(cropped > 127)
    centre = np.array([columns.mean() + 0.5, rows.mean() + 0.5])
    assert np.abs(centre - crop.points(np.floor(point) + 0.5)).max() <= 1.0


def test_the_install_command_matches_setup_py_readme_and_ci():
    """The error's install command, setup.py's ``extract`` extra, the README and .ci/run name the same packages."""
    from referencelcm.extract.detector import INSTALL_COMMAND, MEDIAPIPE_DEPENDENCIES, MEDIAPIPE_REQUIREMENT

    repository = Path(__file__).resolve().parents[2]
    setup = ast.parse((repository / "setup.py").read_text())
    assigned = {node.targets[0].id: node.value for node in setup.body
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)}
    assert ast.literal_eval(assigned["EXTRACT_REQUIREMENTS"]) == list(MEDIAPIPE_DEPENDENCIES)
    assert f"pip install --no-deps {MEDIAPIPE_REQUIREMENT}" in INSTALL_COMMAND
    assert f'pip install -e ".[extract]" && pip install --no-deps {MEDIAPIPE_REQUIREMENT}' in \
        (repository / "README.md").read_text()
    assert MEDIAPIPE_REQUIREMENT in (repository / "setup.py").read_text()  # what .ci/run installs, read from there
    assert "pip install --no-deps \"$mediapipe\"" in (repository / ".ci" / "run").read_text()
