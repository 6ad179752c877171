"""The web demo's functions, called directly (no browser, no Gradio server): generate, defaults, errors, caching."""

import math
import socket

import imageio.v3 as iio
import numpy as np
import pytest
from PIL import Image

from referencelcm import demo
from referencelcm.cli import build_parser, main
from referencelcm.data.layout import CHAMP_GUIDANCE_TYPES
from referencelcm.demo import DEMO_VIDEO, SYNTHDANCE, DemoModels, cached_pipeline, generate, load_guidance

MODELS = DemoModels()  # the bundled student and teacher
# The bundled demo video's frame size and count (the size the bundled models were trained at).
SIZE = Image.open(demo.demo_reference_path()).size[0]
FRAMES = demo.demo_video_frames()


def test_generate_with_the_defaults_writes_video_grid_time_and_evaluations(tmp_path):
    fractions = []
    result = generate(MODELS, None, DEMO_VIDEO, num_frames=3, output_dir=tmp_path,
                      progress=lambda fraction, text: fractions.append((fraction, text)))
    assert (result.model_kind, result.steps, result.guidance_scale, result.num_frames) == ("student", 4, 1.0, 3)
    assert result.evaluations_per_frame == 4 and result.seconds > 0
    assert [fraction for fraction, _ in fractions] == [0.25, 0.5, 0.75, 1.0]
    assert fractions[-1][1] == "denoising step 4 of 4"
    assert "3 frames in" in result.summary and "4 D-UNet evaluations per frame" in result.summary

    video, grid = iio.imread(result.video_path), iio.imread(result.grid_path)
    assert video.shape == (3, SIZE, SIZE, 3)
    assert grid.shape == (3, SIZE, SIZE * 6, 3)  # reference | depth | normal | semantic_map | dwpose | result
    # no reference given: the demo video's first frame is the reference
    reference = np.asarray(Image.open(demo.demo_reference_path()).convert("RGB"), dtype=np.float32)
    assert np.abs(grid[0, :, :SIZE].astype(np.float32) - reference).mean() < 12  # mp4 compression only


def test_uploaded_reference_and_seed_change_the_result(tmp_path):
    upload = np.zeros((80, 50, 3), dtype=np.uint8)
    upload[..., 0] = 255  # a red image of another size than the guidance
    first = generate(MODELS, upload, num_frames=2, steps=1, seed=0, output_dir=tmp_path / "a")
    grid = iio.imread(first.grid_path)
    assert grid[0, :, :SIZE, 0].mean() > 200 and grid[0, :, :SIZE, 1:].mean() < 40  # the upload is the reference panel
    again = generate(MODELS, Image.fromarray(upload), num_frames=2, steps=1, seed=0, output_dir=tmp_path / "b")
    other_seed = generate(MODELS, upload, num_frames=2, steps=1, seed=1, output_dir=tmp_path / "c")
    assert np.array_equal(iio.imread(first.video_path), iio.imread(again.video_path))
    assert not np.array_equal(iio.imread(first.video_path), iio.imread(other_seed.video_path))


def test_teacher_defaults_are_20_steps_with_cfg_3_5_and_cfg_counts_twice(tmp_path):
    student = demo.sampling_defaults(cached_pipeline(MODELS.student, demo.default_device()))
    teacher = demo.sampling_defaults(cached_pipeline(MODELS.teacher, demo.default_device()))
    assert (student.steps, student.guidance_scale, student.max_steps) == (4, 1.0, 8)
    assert (teacher.steps, teacher.guidance_scale, teacher.max_steps) == (20, 3.5, 50)
    result = generate(MODELS, None, num_frames=2, steps=1, model_kind="teacher", output_dir=tmp_path)
    assert (result.guidance_scale, result.evaluations_per_frame) == (3.5, 2)  # conditional + unconditional
    assert "with the teacher (1 steps, CFG scale 3.5): 2 D-UNet evaluations per frame" in result.summary


def test_synthdance_guidance_is_rendered_on_the_spot_and_follows_the_motion_seed():
    guidance = load_guidance(SYNTHDANCE, CHAMP_GUIDANCE_TYPES, num_frames=3, motion_seed=1, resolution=32)
    assert set(guidance.maps) == set(CHAMP_GUIDANCE_TYPES)
    assert all(len(frames) == 3 and frames[0].size == (32, 32) for frames in guidance.maps.values())
    assert guidance.reference.size == (32, 32)
    same = load_guidance(SYNTHDANCE, ("dwpose",), num_frames=3, motion_seed=1, resolution=32)
    other = load_guidance(SYNTHDANCE, ("dwpose",), num_frames=3, motion_seed=2, resolution=32)
    assert np.array_equal(np.asarray(same.maps["dwpose"][2]), np.asarray(guidance.maps["dwpose"][2]))
    assert not np.array_equal(np.asarray(other.maps["dwpose"][2]), np.asarray(guidance.maps["dwpose"][2]))
    semantic = np.asarray(guidance.maps["semantic_map"][0])
    assert semantic[0, 0].max() == 0  # multiplied by the mask, as reading a Champ folder does


def test_generate_along_a_synthdance_motion(tmp_path):
    result = generate(MODELS, None, SYNTHDANCE, num_frames=2, steps=1, motion_seed=4, output_dir=tmp_path)
    assert iio.imread(result.video_path).shape == (2, SIZE, SIZE, 3)


def test_the_frame_count_defaults_to_the_whole_demo_video(tmp_path):
    assert demo.frame_limits(DEMO_VIDEO) == (FRAMES, FRAMES) and demo.frame_limits(SYNTHDANCE) == (16, 48)
    result = generate(MODELS, None, steps=1, output_dir=tmp_path)
    assert result.num_frames == FRAMES == iio.imread(result.video_path).shape[0]


@pytest.mark.parametrize("arguments, message", [
    (dict(steps=0), "`steps` must be an integer from 1 to 8 for the student, got 0."),
    (dict(steps=9), "`steps` must be an integer from 1 to 8 for the student, got 9."),
    (dict(steps=2.5), "`steps` must be an integer"),
    (dict(steps=51, model_kind="teacher"), "`steps` must be an integer from 1 to 50 for the teacher, got 51."),
    (dict(num_frames=FRAMES + 1),
     f"`frames` must be an integer from 1 to {FRAMES} for the bundled demo video, got {FRAMES + 1}."),
    (dict(num_frames=0), f"`frames` must be an integer from 1 to {FRAMES}"),
    (dict(num_frames=49, guidance_source=SYNTHDANCE), "`frames` must be an integer from 1 to 48 for a SynthDance"),
    (dict(guidance_source=SYNTHDANCE, motion_seed=-1), "`motion seed` must be an integer from 0"),
    (dict(seed=-1), "`seed` must be an integer from 0 to 4294967295, got -1."),
    (dict(seed=None), "`seed` must be an integer"),
    (dict(guidance_scale=-1.0), "`CFG scale` must be a number >= 0, got -1.0."),
    (dict(guidance_scale=math.nan), "`CFG scale` must be a number >= 0"),
    (dict(model_kind="expert"), "`model` must be one of ('student', 'teacher'), got 'expert'."),
    (dict(guidance_source="my video"), "`guidance` must be one of ['bundled demo video', 'SynthDance motion']"),
])
def test_bad_input_is_one_line_naming_the_input(tmp_path, arguments, message):
    with pytest.raises(ValueError) as error:
        generate(MODELS, None, **{"num_frames": 2, "output_dir": tmp_path, **arguments})
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert not list(tmp_path.iterdir())  # nothing written


def test_the_pipeline_error_of_a_bad_reference_reaches_the_user(tmp_path):
    with pytest.raises(ValueError, match="`reference_image` arrays must be"):
        generate(MODELS, np.zeros((4, 4, 3, 1), dtype=np.uint8), num_frames=2, steps=1, output_dir=tmp_path)


def test_each_model_is_loaded_once_per_process(monkeypatch, tmp_path):
    loads = []
    real_load = demo.load_pipeline
    monkeypatch.setattr(demo, "load_pipeline", lambda *args: loads.append(args) or real_load(*args))
    cached_pipeline.cache_clear()
    try:
        for seed in (0, 1):
            generate(MODELS, None, num_frames=1, steps=1, seed=seed, output_dir=tmp_path / str(seed))
        assert len(loads) == 1
        device = demo.default_device()
        assert cached_pipeline(MODELS.student, device) is cached_pipeline(MODELS.student, device)
    finally:
        cached_pipeline.cache_clear()  # drop the pipeline loaded through the patched function


def test_command_line_defaults_and_a_missing_model(tmp_path, capsys):
    args = build_parser().parse_args(["demo"])
    assert (args.host, args.port, args.model, args.teacher) == ("127.0.0.1", 7860, MODELS.student, MODELS.teacher)
    assert main(["demo", "--model", str(tmp_path / "missing")]) == 2
    error = capsys.readouterr().err
    assert "--model" in error and "missing" in error and "Traceback" not in error


def test_a_taken_port_is_one_line(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["demo", "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert f"cannot serve on `--host` 127.0.0.1 `--port` {port}" in error and "Traceback" not in error
