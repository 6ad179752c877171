import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import imageio
import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from referencelcm import ReferenceLCMPipeline
from referencelcm.animate import parse_frame_range, video_guidance_size, write_video
from referencelcm.cli import main
from referencelcm.data.synthdance import generate_dataset

from ..conftest import build_components
from ..extract import astronaut, requires_mediapipe, write_driving_video

REPOSITORY = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def video_dir(tmp_path_factory) -> Path:
    root = generate_dataset(tmp_path_factory.mktemp("synth"), 1, 4, 32, seed=3, split="test", progress=False)
    return next(path for path in sorted(Path(root).iterdir()) if path.is_dir())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model")
    types = ("depth", "normal", "semantic_map", "dwpose")
    ReferenceLCMPipeline(**build_components(guidance_types=types)).save_pretrained(path)
    return path


def test_animate_writes_video_and_grid(tmp_path, video_dir, model_dir):
    output = tmp_path / "out" / "result.mp4"
    code = main([
        "animate", "--model", str(model_dir), "--reference", str(video_dir / "images" / "0000.png"),
        "--guidance", str(video_dir), "--output", str(output), "--frames", "1:4", "--steps", "2",
    ])
    assert code == 0
    frames = iio.imread(output)
    assert frames.shape[0] == 3 and frames.shape[-1] == 3
    grid = iio.imread(output.with_name("result_grid.mp4"))
    assert grid.shape[0] == 3 and grid.shape[2] > frames.shape[2] * 5  # reference | 4 maps | result
    assert not [p for p in output.parent.iterdir() if p.name.startswith(".tmp-")]


def test_write_video_keeps_the_colours_of_uint8_frames(tmp_path):
    """The grid's frames are uint8: written as they are, not scaled by 255 again (which inverted them)."""
    frames = [np.full((16, 16, 3), 200, dtype=np.uint8)] * 2
    assert abs(float(iio.imread(write_video(frames, tmp_path / "grey.mp4", fps=12)).mean()) - 200) < 3


def test_written_videos_get_the_mode_of_any_new_file(tmp_path):
    """The atomic write's temporary file is created owner-only; the video renamed from it is not."""
    umask = os.umask(0o022)
    try:
        path = write_video([np.zeros((16, 16, 3), dtype=np.uint8)] * 2, tmp_path / "out.mp4", fps=12)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_missing_guidance_type_is_named(tmp_path, video_dir, model_dir, capsys):
    broken = tmp_path / "video"
    broken.mkdir()
    for name in ("images", "depth", "normal", "semantic_map"):
        (broken / name).symlink_to(video_dir / name)
    code = main(["animate", "--model", str(model_dir), "--guidance", str(broken), "--output", str(tmp_path / "o.mp4")])
    assert code == 2
    assert "dwpose" in capsys.readouterr().err


@pytest.mark.parametrize("text, expected", [("2:10", slice(2, 10)), (":8", slice(None, 8)), ("0:9:2", slice(0, 9, 2)), (None, None)])
def test_frame_range(text, expected):
    assert parse_frame_range(text) == expected


@pytest.mark.parametrize("text", ["5", "a:b", "1:2:3:4"])
def test_bad_frame_range(text):
    with pytest.raises(ValueError, match="--frames"):
        parse_frame_range(text)


def test_example_script_animates_the_bundled_demo_with_the_bundled_student(tmp_path):
    """The README's first command: no arguments but the output path (kept out of the checkout here)."""
    output = tmp_path / "demo.mp4"
    result = subprocess.run(
        [sys.executable, str(REPOSITORY / "examples" / "inference.py"), "--output", str(output)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "freshly initialised" not in result.stdout
    assert str(REPOSITORY / "assets" / "demo") in result.stdout and "(4 steps, guidance scale 1.0)" in result.stdout
    frames = iio.imread(output)
    assert frames.shape[0] == len(list((REPOSITORY / "assets" / "demo" / "images").glob("*.png")))
    assert iio.imread(output.with_name("demo_grid.mp4")).shape[0] == frames.shape[0]  # the grid is on by default


def test_no_grid_writes_only_the_video(tmp_path, video_dir, model_dir):
    output = tmp_path / "result.mp4"
    code = main(["animate", "--model", str(model_dir), "--guidance", str(video_dir), "--output", str(output),
                 "--steps", "1", "--no-grid"])
    assert code == 0 and output.is_file() and not output.with_name("result_grid.mp4").exists()


def test_custom_timesteps(tmp_path, video_dir, model_dir, capsys):
    output = tmp_path / "result.mp4"
    common = ["animate", "--model", str(model_dir), "--guidance", str(video_dir), "--output", str(output), "--no-grid"]
    assert main([*common, "--timesteps", "999", "499", "139"]) == 0
    assert "(timesteps [999, 499, 139], guidance scale 1.0)" in capsys.readouterr().out
    assert iio.imread(output).shape[0] == 4
    assert main([*common, "--timesteps", "499", "999"]) == 2
    assert "--timesteps must be strictly decreasing integers >= 0" in capsys.readouterr().err
    assert main([*common, "--timesteps", "999", "--steps", "2"]) == 2
    assert "either `--steps` or `--timesteps`" in capsys.readouterr().err


def test_module_entry_point_prints_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "referencelcm.cli", "animate", "--model", str(tmp_path / "missing"), "--guidance", str(tmp_path)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "Traceback" not in result.stderr


# -- a model that takes any subset of its guidance types, and --video ---------------------------------------------


@pytest.fixture(scope="module")
def subset_model_dir(tmp_path_factory) -> Path:
    """A tiny model whose guidance encoder records guidance-type dropout: it takes `dwpose` alone."""
    path = tmp_path_factory.mktemp("subset-model")
    components = build_components(guidance_types=("depth", "normal", "semantic_map", "dwpose"))
    components["guidance_encoder"].register_to_config(guidance_type_dropout=0.5)
    ReferenceLCMPipeline(**components).save_pretrained(path)
    return path


def test_a_subset_model_animates_the_guidance_folders_present(tmp_path, video_dir, subset_model_dir, capsys):
    skeleton_only = tmp_path / "video"
    skeleton_only.mkdir()
    for name in ("images", "dwpose"):
        (skeleton_only / name).symlink_to(video_dir / name)
    output = tmp_path / "result.mp4"
    assert main(["animate", "--model", str(subset_model_dir), "--guidance", str(skeleton_only), "--output",
                 str(output), "--steps", "1"]) == 0
    assert iio.imread(output).shape[0] == 4
    assert iio.imread(output.with_name("result_grid.mp4")).shape[2] == 3 * 32  # reference | dwpose | result
    (skeleton_only / "dwpose").unlink()
    assert main(["animate", "--model", str(subset_model_dir), "--guidance", str(skeleton_only), "--output",
                 str(tmp_path / "none.mp4")]) == 2
    assert "has none of the folders ['depth', 'normal', 'semantic_map', 'dwpose']" in capsys.readouterr().err


@requires_mediapipe
def test_animate_from_a_video_extracts_aligns_and_animates(tmp_path, subset_model_dir, monkeypatch, capsys):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the extracted guidance goes for the run
    video = write_driving_video(tmp_path / "driving.mp4")
    reference = tmp_path / "astronaut.png"
    Image.fromarray(astronaut()).save(reference)
    output = tmp_path / "out" / "result.mp4"
    assert main(["animate", "--model", str(subset_model_dir), "--video", str(video), "--reference", str(reference),
                 "--output", str(output), "--steps", "1", "--fps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 2 frames at 5 fps" in printed and "pose aligned to the reference: scale" in printed
    frames = iio.imread(output)
    assert frames.shape == (2, 32, 32, 3)  # the model's 32 px on the shorter side; --fps 5 of the video's 10
    assert iio.imread(output.with_name("result_grid.mp4")).shape[2] == 3 * 32
    assert not list(scratch.iterdir())  # the extracted guidance is gone


@requires_mediapipe
def test_animate_from_a_video_with_a_model_that_needs_every_type(tmp_path, model_dir, capsys):
    video = write_driving_video(tmp_path / "driving.mp4", shifts=(25,))
    assert main(["animate", "--model", str(model_dir), "--video", str(video), "--output",
                 str(tmp_path / "out.mp4")]) == 2
    error = capsys.readouterr().err
    assert "--video" in error and "gives `dwpose` skeletons only, which this model cannot take alone" in error
    assert "--guidance_type_dropout P" in error
    assert not (tmp_path / "out.mp4").exists()


def test_video_arguments_are_checked_before_the_model_loads(tmp_path, video_dir, monkeypatch, capsys):
    missing_model = str(tmp_path / "no-model")  # never reached: each error comes first
    not_a_video = tmp_path / "notes.mp4"
    not_a_video.write_text("not a video")
    common = ["animate", "--model", missing_model, "--output", str(tmp_path / "o.mp4")]
    assert main([*common, "--video", str(not_a_video), "--guidance", str(video_dir)]) == 2
    assert "either `--guidance`" in capsys.readouterr().err
    assert main([*common, "--video", str(not_a_video)]) == 2
    assert "--video" in capsys.readouterr().err
    driving = tmp_path / "driving.mp4"
    with imageio.get_writer(driving, fps=10) as writer:
        writer.append_data(np.zeros((16, 16, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    assert main([*common, "--video", str(driving)]) == 2
    assert "pip install --no-deps mediapipe==0.10.21" in capsys.readouterr().err


def test_video_guidance_size_follows_the_model_and_the_video(pipe):
    """Without --width / --height the model's trained size (32 px here) on the shorter side, the other side from the
    video's aspect ratio, rounded to the model's spatial multiple."""
    multiple = pipe.spatial_multiple
    assert video_guidance_size(pipe, (1920, 1080), None, None) == (round(32 * 16 / 9 / multiple) * multiple, 32)
    assert video_guidance_size(pipe, (1080, 1920), None, None)[0] == 32
    assert video_guidance_size(pipe, (640, 480), 64, None) == (64, round(48 / multiple) * multiple)
    assert video_guidance_size(pipe, (640, 480), 96, 32) == (96, 32)
