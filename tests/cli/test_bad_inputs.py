"""Bad inputs to ``referencelcm animate / synth / convert-champ``, one case each: the error type, a message that names
the flag (and the file), and nothing left at the output path.

Each case runs the sub-command's ``run`` in-process (so the exception itself is checked); ``main`` turns the same
exceptions into one line on stderr and exit status 2, checked at the end for a few cases, once through ``python -m``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest
import torch

from referencelcm.cli import build_parser, main

from ..conftest import build_components
from ..test_state_dicts import Payload
from .test_animate import model_dir, video_dir  # noqa: F401  (the same tiny model and video, as fixtures)

def run_command(argv: list[str]) -> None:
    """What ``main`` runs, without its error printing: the exception reaches the test."""
    args = build_parser().parse_args(argv)
    args._run(args)


def truncate(path: Path, size: int = 200) -> Path:
    path.write_bytes(path.read_bytes()[:size])
    return path


def copy(source: Path, destination: Path) -> Path:
    shutil.copytree(source, destination)
    return destination


# -- animate -----------------------------------------------------------------------------------------------------------
# Each case: (flags it changes, given tmp_path / the video / the model, expected error, texts its message holds).
# The base command is `animate --model MODEL --guidance VIDEO --output TMP/out/result.mp4 --steps 1 --no-grid`.


def _text_reference(tmp, video, model):
    (tmp / "notes.txt").write_text("not an image\n")
    return {"--reference": tmp / "notes.txt"}


def _truncated_reference(tmp, video, model):
    return {"--reference": truncate(Path(shutil.copy(video / "images" / "0000.png", tmp / "reference.png")))}


def damaged(flag: str, damage: Callable[[Path], object]) -> Callable:
    """A case that copies the video (``--guidance``) or the model (``--model``) and damages the copy."""

    def changes(tmp, video, model):
        broken = copy(video if flag == "--guidance" else model, tmp / "broken")
        damage(broken)
        return {flag: broken}

    return changes


def edited_index(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def damage(folder: Path) -> None:
        index = json.loads((folder / "model_index.json").read_text())
        edit(index)
        (folder / "model_index.json").write_text(json.dumps(index))

    return damage


def cut_end(path: Path, count: int = 100) -> Path:
    return truncate(path, path.stat().st_size - count)


def _video_folder_as_model(tmp, video, model):
    return {"--model": video}


def _output_not_a_video(tmp, video, model):
    return {"--output": tmp / "out" / "video.txt"}


def _output_is_a_folder(tmp, video, model):
    (tmp / "out" / "result.mp4").mkdir(parents=True)
    return {}


def _output_under_a_file(tmp, video, model):
    (tmp / "notes.txt").write_text("a file")
    return {"--output": tmp / "notes.txt" / "result.mp4"}


ANIMATE_CASES: dict[str, tuple[dict | Callable, type, tuple[str, ...]]] = {
    "reference is a text file": (_text_reference, ValueError, ("--reference", "notes.txt", "not a readable image")),
    "reference PNG truncated": (_truncated_reference, ValueError, ("--reference", "reference.png", "truncated")),
    "reference missing": ({"--reference": "missing.png"}, FileNotFoundError, ("--reference", "missing.png")),
    "guidance frame truncated": (damaged("--guidance", lambda video: truncate(video / "normal" / "0002.png")),
                                 ValueError, ("--guidance", "normal/0002.png", "truncated")),
    "guidance frame is text": (damaged("--guidance", lambda video: (video / "depth" / "0000.png").write_text("hi")),
                               ValueError, ("--guidance", "depth/0000.png", "not a readable")),
    "guidance frame missing": (damaged("--guidance", lambda video: (video / "dwpose" / "0001.png").unlink()),
                               FileNotFoundError, ("--guidance", "dwpose", "0001.png")),
    "guidance type missing": (damaged("--guidance", lambda video: shutil.rmtree(video / "semantic_map")),
                              FileNotFoundError, ("--guidance", "semantic_map")),
    "guidance folder missing": ({"--guidance": "nowhere"}, FileNotFoundError, ("--guidance", "nowhere")),
    "no images and no reference": (damaged("--guidance", lambda video: shutil.rmtree(video / "images")), ValueError,
                                   ("--reference", "images/")),
    "model_index.json not JSON": (damaged("--model", lambda model: (model / "model_index.json").write_text("{x")),
                                  ValueError, ("--model", "model_index.json", "not valid JSON")),
    "model_index.json unknown class": (
        damaged("--model", edited_index(lambda index: index.update(vae=["diffusers", "AutoencoderThatDoesNotExist"]))),
        ValueError, ("--model", "component 'vae'", "AutoencoderThatDoesNotExist")),
    "model_index.json lacks a component": (
        damaged("--model", edited_index(lambda index: index.pop("guidance_encoder"))), ValueError,
        ("--model", "component 'guidance_encoder'", "model_index.json")),
    "weights truncated": (
        damaged("--model", lambda model: cut_end(model / "reference_unet" / "diffusion_pytorch_model.safetensors")),
        ValueError, ("--model", "component 'reference_unet'", "diffusion_pytorch_model.safetensors", "truncated")),
    "weights cut inside the header": (
        damaged("--model", lambda model: truncate(model / "vae" / "diffusion_pytorch_model.safetensors", 300)),
        ValueError, ("--model", "component 'vae'", "truncated")),
    "weights missing": (damaged("--model", lambda model: (model / "image_encoder" / "model.safetensors").unlink()),
                        FileNotFoundError, ("--model", "component 'image_encoder'", "no weights")),
    "component folder missing": (damaged("--model", lambda model: shutil.rmtree(model / "denoising_unet")),
                                 FileNotFoundError, ("--model", "component 'denoising_unet'", "missing")),
    "component config missing": (damaged("--model", lambda model: (model / "vae" / "config.json").unlink()),
                                 FileNotFoundError, ("--model", "component 'vae'", "config.json")),
    "scheduler config not JSON": (
        damaged("--model", lambda model: (model / "scheduler" / "scheduler_config.json").write_text("[1, 2")),
        ValueError, ("--model", "scheduler_config.json")),
    "model is a video folder": (_video_folder_as_model, FileNotFoundError, ("--model", "model_index.json")),
    "model path missing": ({"--model": "./no-such-model"}, FileNotFoundError, ("--model", "no-such-model")),
    "steps 0": ({"--steps": 0}, ValueError, ("--steps", "got 0")),
    "width 0": ({"--width": 0}, ValueError, ("--width", "got 0")),
    "height negative": ({"--height": -32}, ValueError, ("--height", "got -32")),
    "height not a multiple": ({"--height": 40}, ValueError, ("--height", "multiple of 16", "40")),
    "fps 0": ({"--fps": 0}, ValueError, ("--fps", "got 0")),
    "guidance scale nan": ({"--guidance-scale": "nan"}, ValueError, ("--guidance-scale", "finite", "nan")),
    "guidance scale inf": ({"--guidance-scale": "inf"}, ValueError, ("--guidance-scale", "finite", "inf")),
    "device unknown": ({"--device": "banana"}, ValueError, ("--device", "banana")),
    "device index out of range": ({"--device": "cuda:99"}, ValueError, ("--device", "cuda:99")),
    "frames select nothing": ({"--frames": "6:2"}, ValueError, ("--frames 6:2", "selects none")),
    "frames step 0": ({"--frames": "0:4:0"}, ValueError, ("--frames", "STEP")),
    "frames not integers": ({"--frames": "a:b"}, ValueError, ("--frames", "a:b")),
    "steps and timesteps": ({"--timesteps": [999, 499]}, ValueError, ("--steps", "--timesteps")),
    "timesteps increasing": ({"--steps": None, "--timesteps": [499, 999]}, ValueError, ("--timesteps", "decreasing")),
    "output not a video": (_output_not_a_video, ValueError, ("--output", "video.txt", ".mp4")),
    "output is a folder": (_output_is_a_folder, ValueError, ("--output", "result.mp4", "is a folder")),
    "output under a file": (_output_under_a_file, ValueError, ("--output", "notes.txt", "is a file")),
}


def animate_argv(tmp_path: Path, video_dir: Path, model_dir: Path, changes: dict) -> list[str]:
    flags = {"--model": model_dir, "--guidance": video_dir, "--output": tmp_path / "out" / "result.mp4",
             "--steps": 1, **changes}
    argv = ["animate", "--no-grid"]
    for flag, value in flags.items():
        if value is not None:
            argv += [flag, *map(str, value)] if isinstance(value, list) else [flag, str(value)]
    return argv


def listing(folder: Path) -> list[Path] | None:
    return sorted(folder.rglob("*")) if folder.exists() else None


@pytest.mark.parametrize("case", list(ANIMATE_CASES))
def test_animate_bad_input(case, tmp_path, video_dir, model_dir):
    changes, error, texts = ANIMATE_CASES[case]
    changes = changes(tmp_path, video_dir, model_dir) if callable(changes) else changes
    before = listing(tmp_path / "out")
    with pytest.raises(error) as raised:
        run_command(animate_argv(tmp_path, video_dir, model_dir, changes))
    assert type(raised.value) is error
    message = str(raised.value)
    assert all(text in message for text in texts), message
    assert listing(tmp_path / "out") == before  # nothing written, no folder created


def test_animate_cuda_without_cuda(tmp_path, video_dir, model_dir):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match=r"--device cuda: no cuda device is available .*use --device cpu"):
        run_command(animate_argv(tmp_path, video_dir, model_dir, {"--device": "cuda"}))
    assert not (tmp_path / "out").exists()


def test_animate_width_zero_is_not_taken_as_unset(tmp_path, video_dir, model_dir):
    """Regression: 0 used to mean "the frames' size" (and `--steps 0` the default 4 steps)."""
    for flag in ("--width", "--height", "--steps"):
        with pytest.raises(ValueError, match=f"{flag} must be >= 1"):
            run_command(animate_argv(tmp_path, video_dir, model_dir, {flag: 0}))


# -- synth -------------------------------------------------------------------------------------------------------------


def _synth_output_is_a_file(tmp):
    (tmp / "out").write_text("a file")
    return {}


def _synth_output_under_a_file(tmp):
    (tmp / "notes.txt").write_text("a file")
    return {"--output": tmp / "notes.txt" / "data"}


SYNTH_CASES = {
    "output is a file": (_synth_output_is_a_file, ValueError, ("--output", "is a file")),
    "output under a file": (_synth_output_under_a_file, ValueError, ("--output", "notes.txt")),
    "num-videos 0": ({"--num-videos": 0}, ValueError, ("--num-videos", "got 0")),
    "num-frames 0": ({"--num-frames": 0}, ValueError, ("--num-frames", "got 0")),
    "resolution too small": ({"--resolution": 8}, ValueError, ("--resolution", ">= 16", "got 8")),
    "fps 0": ({"--fps": 0}, ValueError, ("--fps", "got 0")),
    "seed negative": ({"--seed": -1}, ValueError, ("--seed", "got -1")),
}


@pytest.mark.parametrize("case", list(SYNTH_CASES))
def test_synth_bad_input(case, tmp_path):
    changes, error, texts = SYNTH_CASES[case]
    changes = changes(tmp_path) if callable(changes) else changes
    flags = {"--output": tmp_path / "out", "--num-videos": 1, "--num-frames": 1, "--resolution": 16, **changes}
    argv = ["synth", "--no-progress", *[str(part) for flag, value in flags.items() for part in (flag, value)]]
    with pytest.raises(error) as raised:
        run_command(argv)
    assert all(text in str(raised.value) for text in texts), str(raised.value)
    assert not (tmp_path / "out").is_dir() and not (tmp_path / "notes.txt" / "data").exists()


# -- convert-champ -----------------------------------------------------------------------------------------------------


def champ_layout(root: Path, malicious_marker: Path) -> Path:
    """A Champ ``pretrained_models/`` folder whose guidance encoder (the first ``.pth`` converted) is a malicious
    pickle; the VAE, image encoder and UNet config are real, tiny ones."""
    components = build_components(motion=False)
    components["vae"].save_pretrained(root / "sd-vae-ft-mse")
    components["image_encoder"].save_pretrained(root / "image_encoder")
    components["reference_unet"].save_config(root / "stable-diffusion-v1-5" / "unet")
    (root / "champ").mkdir()
    for name in ("denoising_unet", "reference_unet", "motion_module"):
        torch.save({}, root / "champ" / f"{name}.pth")
    torch.save({"conv_in.weight": Payload(malicious_marker)}, root / "champ" / "guidance_encoder_depth.pth")
    return root


def _empty_champ_dir(tmp):
    (tmp / "champ").mkdir()
    return {"--champ-dir": tmp / "champ"}


def _champ_output_is_a_file(tmp):
    (tmp / "out").write_text("a file")
    return {}


def _champ_output_not_empty(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return {}


def _champ_output_under_a_file(tmp):
    (tmp / "notes.txt").write_text("a file")
    return {"--output": tmp / "notes.txt" / "teacher"}


def _malicious_champ_file(tmp):
    return {"--champ-dir": champ_layout(tmp / "pretrained_models", tmp / "code-ran")}


CONVERT_CASES = {
    "champ dir missing": ({"--champ-dir": "no-such-dir"}, FileNotFoundError, ("--champ-dir", "no-such-dir")),
    "champ dir without Champ's files": (_empty_champ_dir, FileNotFoundError, ("--champ-dir", "denoising_unet.pth")),
    "output is a file": (_champ_output_is_a_file, ValueError, ("--output", "a file is in the way")),
    "output not empty": (_champ_output_not_empty, ValueError, ("--output", "--overwrite")),
    "output under a file": (_champ_output_under_a_file, ValueError, ("--output", "notes.txt")),
    "attention heads 0": ({"--guidance-attention-heads": 0}, ValueError, ("--guidance-attention-heads", "got 0")),
    "malicious .pth": (_malicious_champ_file, ValueError, ("--champ-dir", "guidance_encoder_depth.pth",
                                                           "weights_only=True")),
}


@pytest.mark.parametrize("case", list(CONVERT_CASES))
def test_convert_champ_bad_input(case, tmp_path):
    changes, error, texts = CONVERT_CASES[case]
    changes = changes(tmp_path) if callable(changes) else changes
    flags = {"--champ-dir": tmp_path, "--output": tmp_path / "out", **changes}
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(error) as raised:
        run_command(["convert-champ", *[str(part) for flag, value in flags.items() for part in (flag, value)]])
    assert all(text in str(raised.value) for text in texts), str(raised.value)
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, no staging folder left
    assert not (tmp_path / "code-ran").exists()


# -- the console -------------------------------------------------------------------------------------------------------


def test_main_prints_one_line_and_exits_2(tmp_path, video_dir, model_dir, capsys):
    for changes in ({"--steps": 0}, ANIMATE_CASES["weights truncated"][0](tmp_path, video_dir, model_dir)):
        assert main(animate_argv(tmp_path, video_dir, model_dir, changes)) == 2
        error = capsys.readouterr().err.strip()
        assert error.startswith("referencelcm animate: error: ") and "\n" not in error and "--" in error
    assert main(["synth", "--output", str(tmp_path / "data"), "--num-videos", "0"]) == 2
    assert capsys.readouterr().err.startswith("referencelcm synth: error: --num-videos")


def test_console_error_has_no_traceback(tmp_path, video_dir, model_dir):
    changes = _truncated_reference(tmp_path, video_dir, model_dir)
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-m", "referencelcm.cli",
                             *animate_argv(tmp_path, video_dir, model_dir, changes)],
                            capture_output=True, text=True, timeout=300, env=environment)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "--reference" in result.stderr and "truncated" in result.stderr
    assert "torchvision" not in result.stderr  # no warnings the user cannot act on
    assert not (tmp_path / "out").exists()
