"""Bad inputs to examples/train_teacher.py and examples/train_cosec_lcd.py: the error type, a message naming the flag
(and the file), and an ``--output_dir`` that was never created: every path is checked before anything is written."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import generate_dataset

from ..conftest import build_components
from ..test_state_dicts import Payload
from . import load_example
from .test_train_teacher import TINY_CONFIG

TINY_SIZES = json.loads(TINY_CONFIG.read_text())

REPO = Path(__file__).resolve().parents[2]
TEACHER_SCRIPT = REPO / "examples" / "train_teacher.py"
COSEC_SCRIPT = REPO / "examples" / "train_cosec_lcd.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-training")
    ReferenceLCMPipeline(**build_components(motion=True, scheduler="ddim")).save_pretrained(root / "teacher")
    generate_dataset(root / "data", num_videos=2, num_frames=3, resolution=32, seed=0, progress=False)
    (root / "tiny.json").write_text(json.dumps(TINY_SIZES))
    return root


@pytest.fixture(scope="module")
def scripts() -> dict:
    """Both scripts as modules, by file name (``main(argv)`` runs in-process)."""
    return {path.name: load_example(path) for path in (TEACHER_SCRIPT, COSEC_SCRIPT)}


def argv(flags: dict) -> list[str]:
    return [str(part) for flag, value in flags.items() if value is not None
            for part in (flag, *(value if isinstance(value, tuple) else (value,)))]


def copy(source: Path, destination: Path) -> Path:
    return Path(shutil.copytree(source, destination))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-64])


# Each case: (flags it changes, given tmp_path and the workspace; expected error; texts its message holds).


def _empty_data(tmp, ws):
    (tmp / "empty").mkdir()
    return {"--train_data_dir": tmp / "empty"}


def _damaged_video(tmp, ws):
    data = copy(ws / "data", tmp / "data")
    video = next(path for path in sorted(data.iterdir()) if path.is_dir())
    (video / "dwpose" / "0001.png").unlink()
    return {"--train_data_dir": data}


def _corrupt_frame(tmp, ws):
    data = copy(ws / "data", tmp / "data")
    video = next(path for path in sorted(data.iterdir()) if path.is_dir())
    (video / "depth" / "0000.png").write_text("not a png")
    return {"--train_data_dir": data}


def _corrupt_teacher(tmp, ws):
    teacher = copy(ws / "teacher", tmp / "teacher")
    (teacher / "model_index.json").write_text("{")
    return {"--pretrained_teacher_model": teacher}


def _truncated_teacher(tmp, ws):
    teacher = copy(ws / "teacher", tmp / "teacher")
    truncate(teacher / "denoising_unet" / "diffusion_pytorch_model.safetensors")
    return {"--pretrained_teacher_model": teacher}


def _output_dir_is_a_file(tmp, ws):
    (tmp / "out").write_text("a file")
    return {}


COSEC_CASES = {
    "data dir missing": ({"--train_data_dir": "no-such-data"}, FileNotFoundError, ("--train_data_dir", "no-such-data")),
    "data dir empty": (_empty_data, FileNotFoundError, ("--train_data_dir", "no video folders")),
    "video lacks a frame": (_damaged_video, FileNotFoundError, ("--train_data_dir", "dwpose", "0001.png")),
    "frame not an image": (_corrupt_frame, ValueError, ("--train_data_dir", "depth/0000.png", "not a readable image")),
    "teacher missing": ({"--pretrained_teacher_model": "./no-such-teacher"}, FileNotFoundError,
                        ("--pretrained_teacher_model", "no-such-teacher")),
    "teacher index not JSON": (_corrupt_teacher, ValueError, ("--pretrained_teacher_model", "model_index.json")),
    "teacher weights truncated": (_truncated_teacher, ValueError,
                                  ("--pretrained_teacher_model", "component 'denoising_unet'", "truncated")),
    "student missing": ({"--pretrained_student_model": "./no-such-student"}, FileNotFoundError,
                        ("--pretrained_student_model",)),
    "max_train_steps 0": ({"--max_train_steps": 0}, ValueError, ("--max_train_steps", "got 0")),
    "learning_rate nan": ({"--learning_rate": "nan"}, ValueError, ("--learning_rate", "finite")),
    "ema_decay above 1": ({"--ema_decay": 2}, ValueError, ("--ema_decay", "2.0")),
    "reference crop scale reversed": ({"--reference_crop_scale": (0.9, 0.5)}, ValueError,
                                      ("--reference_crop_scale", "0.9 0.5")),
    "reference crop probability above 1": ({"--reference_crop_scale": (0.7, 1), "--reference_crop_probability": 2},
                                           ValueError, ("--reference_crop_probability", "[0, 1]", "2.0")),
    "k of 0 references": ({"--num_equivalent_references": 0}, ValueError, ("--num_equivalent_references", "got 0")),
    "resume folder missing": ({"--resume_from_checkpoint": "checkpoint-7"}, FileNotFoundError,
                              ("--resume_from_checkpoint", "checkpoint-7")),
    "output_dir is a file": (_output_dir_is_a_file, ValueError, ("--output_dir", "is a file")),
    "batch larger than the data": ({"--train_batch_size": 100}, ValueError, ("--train_batch_size 100", "6 training")),
}


def cosec_flags(tmp: Path, workspace: Path) -> dict:
    return {"--pretrained_teacher_model": workspace / "teacher", "--train_data_dir": workspace / "data",
            "--output_dir": tmp / "out", "--resolution": 32, "--train_batch_size": 2, "--max_train_steps": 1,
            "--report_to": "none"}


def _missing_config(tmp, ws):
    return {"--model_config": tmp / "sizes.json"}


def _unknown_config_key(tmp, ws):
    (tmp / "sizes.json").write_text(json.dumps({**TINY_SIZES, "width": 3}))
    return {"--model_config": tmp / "sizes.json"}


def _vae_folder_without_config(tmp, ws):
    (tmp / "vae").mkdir()
    return {"--pretrained_vae_path": tmp / "vae"}


def _truncated_unet(tmp, ws):
    unet = copy(ws / "teacher" / "reference_unet", tmp / "sd" / "unet")
    truncate(unet / "diffusion_pytorch_model.safetensors")
    return {"--pretrained_unet_path": tmp / "sd"}


def _corrupt_pretrained_model(tmp, ws):
    teacher = copy(ws / "teacher", tmp / "teacher")
    (teacher / "vae" / "config.json").write_text("[")
    return {"--pretrained_model": teacher, "--model_config": None}


def _output_dir_under_a_file(tmp, ws):
    (tmp / "notes.txt").write_text("a file")
    return {"--output_dir": tmp / "notes.txt" / "out"}


TEACHER_CASES = {
    "model_config missing": (_missing_config, FileNotFoundError, ("--model_config", "sizes.json")),
    "model_config unknown key": (_unknown_config_key, ValueError, ("--model_config", "width")),
    "vae folder without config": (_vae_folder_without_config, FileNotFoundError, ("--pretrained_vae_path", "config")),
    "unet weights truncated": (_truncated_unet, ValueError, ("--pretrained_unet_path", "truncated")),
    "pretrained_model config not JSON": (_corrupt_pretrained_model, ValueError,
                                         ("--pretrained_model", "component 'vae'", "config.json")),
    "data dir missing": ({"--train_data_dir": "no-such-data"}, FileNotFoundError, ("--train_data_dir",)),
    "resolution 0": ({"--resolution": 0}, ValueError, ("--resolution", "got 0")),
    "uncond_ratio above 1": ({"--uncond_ratio": 2}, ValueError, ("--uncond_ratio", "[0, 1]")),
    "reference crop scale above 1": ({"--reference_crop_scale": (0.5, 1.5)}, ValueError,
                                     ("--reference_crop_scale", "0.5 1.5")),
    "reference crop probability without a scale": ({"--reference_crop_probability": 0.5}, ValueError,
                                                   ("--reference_crop_probability", "--reference_crop_scale")),
    "kl_weight inf": ({"--kl_weight": "inf"}, ValueError, ("--kl_weight", "finite")),
    "checkpoints_total_limit 0": ({"--checkpoints_total_limit": 0}, ValueError, ("--checkpoints_total_limit",)),
    "output_dir under a file": (_output_dir_under_a_file, ValueError, ("--output_dir", "notes.txt")),
    "batch larger than the data": ({"--train_batch_size": 100}, ValueError, ("--train_batch_size 100",)),
}


def teacher_flags(tmp: Path, workspace: Path) -> dict:
    return {"--stage": "vae", "--model_config": workspace / "tiny.json", "--train_data_dir": workspace / "data",
            "--output_dir": tmp / "out", "--resolution": 32, "--train_batch_size": 2, "--max_train_steps": 1,
            "--report_to": "none"}


SCRIPTS = {"train_cosec_lcd.py": (cosec_flags, COSEC_CASES), "train_teacher.py": (teacher_flags, TEACHER_CASES)}
SCRIPT_CASES = [(name, case) for name, (_, cases) in SCRIPTS.items() for case in cases]


@pytest.mark.parametrize("script_name, case", SCRIPT_CASES)
def test_training_script_bad_input(script_name, case, tmp_path, workspace, scripts):
    flags, cases = SCRIPTS[script_name]
    changes, error, texts = cases[case]
    changes = changes(tmp_path, workspace) if callable(changes) else changes
    flags = {**flags(tmp_path, workspace), **changes}
    output_existed = Path(flags["--output_dir"]).exists()
    with pytest.raises(error) as raised:
        scripts[script_name].main(argv(flags))
    assert all(text in str(raised.value) for text in texts), str(raised.value)
    output = Path(flags["--output_dir"])
    assert output.exists() == output_existed and not (output / "logs").exists()  # nothing created in it


@pytest.mark.parametrize("script_name", list(SCRIPTS))
def test_scripts_report_argument_errors_without_traceback(script_name, tmp_path, workspace, scripts, capsys):
    """Through argparse (SystemExit 2) and through ``python script.py`` (one line, exit status 1)."""
    flags = SCRIPTS[script_name][0](tmp_path, workspace)
    with pytest.raises(SystemExit) as raised:
        scripts[script_name].main(argv({**flags, "--train_batch_size": "two"}))
    assert raised.value.code == 2 and "--train_batch_size" in capsys.readouterr().err
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    flags["--train_data_dir"] = tmp_path / "no"
    command = [sys.executable, str(REPO / "examples" / script_name), *argv(flags)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, env=environment, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: --train_data_dir")
    assert not (tmp_path / "out").exists()


def test_resume_refuses_a_pickled_payload(tmp_path, workspace, scripts):
    """accelerate reads the optimiser state with weights_only=True; a payload in it is refused, naming the flag."""
    flags = {**teacher_flags(tmp_path, workspace), "--checkpointing_steps": 1}
    scripts["train_teacher.py"].main(argv(flags))
    checkpoint = tmp_path / "out" / "checkpoint-1"
    marker = tmp_path / "code-ran"
    torch.save({"state": Payload(marker)}, checkpoint / "optimizer.bin")
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint .*checkpoint-1: .*weights_only") as raised:
        scripts["train_teacher.py"].main(argv({**flags, "--max_train_steps": 2, "--resume_from_checkpoint": "latest"}))
    assert raised.value.__cause__ is not None and not marker.exists()
