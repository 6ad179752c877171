"""examples/train_cosec_lcd.py on a tiny teacher and a tiny SynthDance set: both phases, LoRA, exact resume.

The teacher folder holds a motion D-UNet (as a converted Champ teacher does); phase 1 distils its 2-D part, phase 2
starts from the phase-1 output plus the teacher's motion modules. One run goes through ``python`` in a subprocess (the
way users launch it); the others call ``main(argv)`` in-process to keep the suite fast.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import LCMScheduler, UNet2DConditionModel, UNetMotionModel
from safetensors.torch import load_file

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import generate_dataset
from referencelcm.models.injection import install_guidance_injection
from referencelcm.models.reference_attention import install_reference_attention
from referencelcm.training.checkpointing import check_finite_loss
from referencelcm.training.export import load_lora_into_pipeline
from referencelcm.training.tracking import read_metrics
from referencelcm.training.unets import spatial_unet_from_motion

from ..conftest import build_components, make_inputs
from . import load_example

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_cosec_lcd.py"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cosec")
    ReferenceLCMPipeline(**build_components(motion=True, scheduler="ddim")).save_pretrained(root / "teacher")
    generate_dataset(root / "data", num_videos=3, num_frames=8, resolution=32, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def script():
    return load_example(SCRIPT)


def base_args(workspace: Path, output: str, steps: int) -> list[str]:
    return [
        "--pretrained_teacher_model", str(workspace / "teacher"), "--train_data_dir", str(workspace / "data"),
        "--output_dir", str(workspace / output), "--resolution", "32", "--train_batch_size", "2",
        "--max_train_steps", str(steps), "--report_to", "none", "--seed", "0",
    ]


def prepared(unet: torch.nn.Module) -> torch.nn.Module:
    install_reference_attention(unet, "read")
    install_guidance_injection(unet)
    return unet


def generate_two_frames(folder: Path) -> np.ndarray:
    pipe = ReferenceLCMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    inputs = make_inputs(num_frames=2)
    frames = pipe(**inputs, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np")
    return frames.frames[0]


@pytest.fixture(scope="module")
def spatial_output(workspace: Path) -> Path:
    """Phase 1 through ``python`` in a subprocess, with a checkpoint and validation videos at step 2."""
    args = base_args(workspace, "spatial", 2) + ["--checkpointing_steps", "2", "--validation_steps", "2",
                                                  "--validation_num_frames", "2", "--num_validation_videos", "1"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                            env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / "spatial"


def test_spatial_phase_writes_a_complete_student_pipeline(spatial_output: Path):
    pipe = ReferenceLCMPipeline.from_pretrained(spatial_output)
    assert isinstance(pipe.denoising_unet, UNet2DConditionModel)
    assert isinstance(pipe.scheduler, LCMScheduler) and pipe.scheduler.config.prediction_type == "v_prediction"
    assert (spatial_output / "README.md").read_text().count("cosec-lcd") >= 1
    assert (spatial_output / "checkpoint-2" / "ema_target_unet.safetensors").is_file()
    assert (spatial_output / "validation" / "step-2" / "sample-0.gif").is_file()
    assert not [entry for entry in os.listdir(spatial_output) if entry.startswith(".tmp")]
    # --report_to none still leaves every loss term in logs/metrics.jsonl (the shared metrics-file tracker).
    records = read_metrics(spatial_output / "logs")
    assert [record["step"] for record in records] == [1, 2]
    assert {"consistency", "eta", "cons", "spatial_regulariser"} <= set(records[0])
    frames = generate_two_frames(spatial_output)
    assert frames.shape == (2, 32, 32, 3) and np.isfinite(frames).all()


def test_temporal_phase_combines_phase_one_weights_with_teacher_motion_modules(workspace, spatial_output, script):
    script.main(base_args(workspace, "temporal", 1) + [
        "--phase", "temporal", "--num_frames", "4", "--pretrained_student_model", str(spatial_output),
        "--learning_rate", "0", "--checkpointing_steps", "100",
    ])
    student = ReferenceLCMPipeline.from_pretrained(workspace / "temporal").denoising_unet
    teacher = ReferenceLCMPipeline.from_pretrained(workspace / "teacher").denoising_unet
    phase_one = ReferenceLCMPipeline.from_pretrained(spatial_output).denoising_unet
    assert isinstance(student, UNetMotionModel)
    # With a zero learning rate the weights are exactly the starting point: phase-1 spatial + teacher motion.
    spatial_state, teacher_state = phase_one.state_dict(), teacher.state_dict()
    for key, value in student.state_dict().items():
        expected = teacher_state[key] if ".motion_modules." in key else spatial_state[key]
        assert torch.equal(value, expected), key
    frames = generate_two_frames(workspace / "temporal")
    assert frames.shape == (2, 32, 32, 3) and np.isfinite(frames).all()


def test_lora_mode_saves_adapter_and_merged_pipeline(workspace, script):
    script.main(base_args(workspace, "lora", 1) + ["--use_lora", "--lora_rank", "4", "--lora_alpha", "4",
                                                   "--learning_rate", "1e-2", "--checkpointing_steps", "100"])
    output = workspace / "lora"
    merged = ReferenceLCMPipeline.from_pretrained(output)
    teacher = ReferenceLCMPipeline.from_pretrained(workspace / "teacher")
    # The adapter, loaded onto the teacher's (2-D part of the) D-UNet, reproduces the merged student.
    teacher.register_modules(denoising_unet=prepared(spatial_unet_from_motion(teacher.denoising_unet)))
    load_lora_into_pipeline(teacher, output)
    attn1 = teacher.denoising_unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1
    assert [type(hook).__name__ for hook in attn1._forward_pre_hooks.values()] == ["ReferenceAttentionHook"]
    generator = torch.Generator().manual_seed(0)
    sample, timestep, embeds = torch.randn(1, 4, 4, 4, generator=generator), torch.tensor([500]), torch.randn(1, 1, 16)
    with torch.no_grad():
        expected = merged.denoising_unet(sample, timestep, embeds).sample
        adapted = teacher.denoising_unet(sample, timestep, embeds).sample
        base = spatial_unet_from_motion(ReferenceLCMPipeline.from_pretrained(workspace / "teacher").denoising_unet)
        untouched = base(sample, timestep, embeds).sample
    assert torch.allclose(adapted, expected, atol=1e-5)
    assert not torch.allclose(untouched, expected, atol=1e-5)  # the adapter did change something
    assert set(load_file(output / "pytorch_lora_weights.safetensors")) and all(
        key.startswith("unet.") for key in load_file(output / "pytorch_lora_weights.safetensors")
    )


def test_resume_reaches_the_same_weights_as_an_uninterrupted_run(workspace, script):
    common = ["--checkpointing_steps", "2", "--learning_rate", "1e-3"]
    script.main(base_args(workspace, "uninterrupted", 4) + common)
    # "Killed" after the checkpoint at step 2: resume a second run from that checkpoint and finish it.
    checkpoint = workspace / "uninterrupted" / "checkpoint-2"
    script.main(base_args(workspace, "resumed", 4) + common + ["--resume_from_checkpoint", str(checkpoint)])
    weights = "denoising_unet/diffusion_pytorch_model.safetensors"
    uninterrupted = load_file(workspace / "uninterrupted" / weights)
    resumed = load_file(workspace / "resumed" / weights)
    at_checkpoint = load_file(checkpoint / "model.safetensors")
    assert all(torch.equal(uninterrupted[key], resumed[key]) for key in uninterrupted)
    assert any(not torch.equal(uninterrupted[key], at_checkpoint[key]) for key in uninterrupted)


def test_bad_resume_path_is_a_clear_error(workspace, script):
    with pytest.raises(FileNotFoundError, match="resume_from_checkpoint"):
        script.main(base_args(workspace, "bad", 1) + ["--resume_from_checkpoint", str(workspace / "nowhere")])


def test_non_finite_loss_names_the_step():
    with pytest.raises(FloatingPointError, match="step 7"):
        check_finite_loss(torch.tensor(float("nan")), 7, {"consistency": float("nan")})
    check_finite_loss(torch.tensor(0.5), 7)


def test_diverging_run_stops_with_the_step_and_leaves_only_complete_checkpoints(workspace, script):
    args = base_args(workspace, "diverging", 3) + ["--checkpointing_steps", "1", "--learning_rate", "1e30"]
    with pytest.raises(FloatingPointError, match="at step 2"):
        script.main(args)
    output = workspace / "diverging"
    # no temporary folders, no half-written pipeline; the metrics log keeps the steps that ran
    assert sorted(os.listdir(output)) == ["checkpoint-1", "logs"]
    assert [record["step"] for record in read_metrics(output / "logs")] == [1]
