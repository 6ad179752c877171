"""The bundled default (``models/``, ``assets/demo``, built by examples/build_default_model.py) works out of the box."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler, UNetMotionModel

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import generate_dataset
from referencelcm.evaluation import autoencoder_gate, generate_video, load_test_videos, score_video

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
ASSETS = REPO / "assets"
GUIDANCE_TYPES = {"depth", "normal", "semantic_map", "dwpose"}
# Measured on the shipped 128 px student (4 steps, seed 0, the demo's 8 generated frames): person-region SSIM 0.479
# (flat grey 0.080, the mean colour 0.082; whole-frame SSIM cannot tell), flicker 0.033 (ground truth 0.007, uniform
# noise 0.33). The floor sits above the constant videos with a margin for other CPUs and library versions.
PERSON_SSIM_FLOOR = 0.3
# The demo's part ΔE with its own reference ÷ the mean with the references of OTHER_IDENTITIES other test identities
# (SynthDance test split, seed 1): measured 0.240 (14.2 against 74.6, 44.3, 58.5) on the shipped student (0.231 on
# the one before it, 0.248 on an earlier one, whose teachers also read the reference with the locality prior); 0.375
# on one that took the person from the CLIP embedding alone; a model that ignores the reference scores about 1. The
# ceiling fails that earlier model.
OTHER_IDENTITIES = 3
APPEARANCE_RATIO_CEILING = 0.35
NOISE_FLICKER = 0.1
# The autoencoder gate (issue 26's bounds, the package defaults: part ΔE ≤ 0.15 × ignoring the reference, person MAE
# ≤ 10 RGB units) on a held-out split drawn here: 24 test identities × 3 frames, seed 11. Measured on the shipped VAE:
# ratio 0.107, MAE 8.3 (seed 21: 0.118, 9.5; the build's seed-0 split, 24 × 9 frames: 0.094, 8.6).
GATE_SPLIT = {"num_videos": 24, "num_frames": 3, "seed": 11}


@pytest.fixture(scope="module")
def demo():
    return load_test_videos(ASSETS, sorted(GUIDANCE_TYPES))[0]


@pytest.fixture(scope="module")
def student() -> ReferenceLCMPipeline:
    pipe = ReferenceLCMPipeline.from_pretrained(MODELS / "student")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_bundled_folders_are_a_teacher_and_its_student(student):
    teacher = ReferenceLCMPipeline.from_pretrained(MODELS / "teacher")
    assert isinstance(teacher.scheduler, DDIMScheduler) and isinstance(student.scheduler, LCMScheduler)
    assert teacher.scheduler.config.prediction_type == student.scheduler.config.prediction_type == "v_prediction"
    assert isinstance(student.denoising_unet, UNetMotionModel) and isinstance(teacher.denoising_unet, UNetMotionModel)
    assert set(student.guidance_types) == set(teacher.guidance_types) == GUIDANCE_TYPES


@pytest.fixture(scope="module")
def demo_output(student, demo) -> torch.Tensor:
    """The student's 4-step video of the demo from its own reference, seed 0 ``(F, 3, H, W)``: generated once."""
    return generate_video(student, demo, num_inference_steps=4, guidance_scale=1.0, seed=0)[0]


def test_bundled_student_animates_the_demo(demo_output, demo):
    video = demo_output
    scores = score_video(video, demo)
    assert scores["person_ssim"] > PERSON_SSIM_FLOOR, scores
    # Not constant: the frames have contrast and follow the dance (consecutive frames differ) ...
    assert video.std() > 0.05 and scores["flicker"] > 0.1 * scores["flicker_ground_truth"], scores
    # ... and not noise: frame-to-frame change far below uniform noise's.
    assert scores["flicker"] < NOISE_FLICKER, scores


@pytest.fixture(scope="module")
def other_references(demo, tmp_path_factory) -> list:
    """Frame 0 of SynthDance test identities other than the demo's, at the demo's size: references to swap in."""
    root = generate_dataset(tmp_path_factory.mktemp("others"), num_videos=OTHER_IDENTITIES, num_frames=3,
                            resolution=demo.reference.shape[0], seed=1, split="test", progress=False)
    return [video.reference for video in load_test_videos(root, sorted(GUIDANCE_TYPES))]


def test_bundled_student_wears_the_reference(student, demo, demo_output, other_references):
    """The demo's own reference brings the output's part colours much closer to the truth than other identities'
    references do (same guidance, same noise): the student wears the reference it is given."""
    def part_error(reference) -> float:
        video, _ = generate_video(student, demo, num_inference_steps=4, guidance_scale=1.0, seed=0, reference=reference)
        return score_video(video, demo)["part_delta_e"]

    own = score_video(demo_output, demo)["part_delta_e"]
    others = [part_error(reference) for reference in other_references]
    assert own < APPEARANCE_RATIO_CEILING * sum(others) / len(others), (own, others)


def test_bundled_vae_carries_the_appearance(student, demo, tmp_path):
    """Encode → decode alone (no diffusion) keeps the person's part colours: the shipped VAE passes the autoencoder
    gate on SynthDance test identities it never saw, at the bundled resolution."""
    root = generate_dataset(tmp_path, resolution=demo.reference.shape[0], split="test", progress=False, **GATE_SPLIT)
    gate = autoencoder_gate(student.vae, load_test_videos(root, sorted(GUIDANCE_TYPES)))
    assert gate["passed"], gate["message"]
    # The student decodes with the teacher's autoencoder (distillation never trains it).
    weights = "vae/diffusion_pytorch_model.safetensors"
    assert (MODELS / "teacher" / weights).read_bytes() == (MODELS / "student" / weights).read_bytes()
