"""One CoSeC-LCD distillation step on tiny seeded components: call counts, groups, CFG branch, terms, gradients."""

from __future__ import annotations

import copy

import pytest
import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.models.injection import install_guidance_injection
from referencelcm.models.reference_attention import ReferenceBank, install_reference_attention
from referencelcm.training.consistency import DDIMSolver
from referencelcm.training.distill import (
    ConsistencyDistillationStep,
    DistillationConfig,
    DistillationModels,
)
from referencelcm.training.unets import motion_unet_with_spatial_weights, spatial_unet_from_motion

from ..conftest import GUIDANCE_TYPES, IMAGE_SIZE, build_components, randomize_guidance_encoder

BATCH_SIZE, NUM_REFERENCES = 2, 2


def make_batch(num_frames: int = 1, batch_size: int = BATCH_SIZE, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    size = IMAGE_SIZE
    return {
        "target": torch.rand(batch_size, 3, num_frames, size, size, generator=generator) * 2 - 1,
        "guidance": {
            name: torch.rand(batch_size, 3, num_frames, size, size, generator=generator) for name in GUIDANCE_TYPES
        },
        "references": torch.rand(batch_size, NUM_REFERENCES, 3, size, size, generator=generator) * 2 - 1,
        "reference_clip_pixels": torch.randn(batch_size, NUM_REFERENCES, 3, size, size, generator=generator),
        "source_id": torch.arange(batch_size),
    }


def prepared(unet: torch.nn.Module) -> torch.nn.Module:
    install_reference_attention(unet, "read")
    install_guidance_injection(unet)
    return unet


def make_step(phase: str = "spatial", time_cond_proj_dim: int | None = None, **config) -> ConsistencyDistillationStep:
    components = build_components(motion=True, scheduler="ddim")
    randomize_guidance_encoder(components["guidance_encoder"])
    pipe = ReferenceLCMPipeline(**components)  # installs reference processors and guidance injection
    teacher = pipe.denoising_unet
    if phase == "spatial":
        teacher = prepared(spatial_unet_from_motion(teacher))
    student = copy.deepcopy(teacher)
    if time_cond_proj_dim is not None:
        student = build_components(motion=False, time_cond_proj_dim=time_cond_proj_dim)["denoising_unet"]
        student = prepared(student)
        student.load_state_dict(teacher.state_dict(), strict=False)
    student.train()
    target = copy.deepcopy(student).requires_grad_(False)
    for model in (pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.guidance_encoder, teacher):
        model.requires_grad_(False)
    models = DistillationModels(
        pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.guidance_encoder, teacher, target, student
    )
    solver = DDIMSolver.from_scheduler(pipe.scheduler, num_ddim_timesteps=50)
    return ConsistencyDistillationStep(
        models, solver, pipe.scheduler.config.prediction_type, DistillationConfig(phase=phase, **config)
    )


def count_calls(module: torch.nn.Module, calls: list) -> None:
    module.register_forward_hook(lambda _module, args, kwargs, _output: calls.append((args, kwargs)), with_kwargs=True)


def test_reference_unet_runs_once_per_sample_and_every_d_unet_runs():
    step = make_step()
    calls = {name: [] for name in ("reference", "teacher", "target", "student", "guidance")}
    count_calls(step.models.reference_unet, calls["reference"])
    count_calls(step.models.teacher_unet, calls["teacher"])
    count_calls(step.models.target_unet, calls["target"])
    count_calls(step.models.student_unet, calls["student"])
    count_calls(step.models.guidance_encoder, calls["guidance"])
    step.step(make_batch(), torch.Generator().manual_seed(0))
    assert {name: len(value) for name, value in calls.items()} == dict.fromkeys(calls, 1)
    reference_args, _ = calls["reference"][0]
    assert reference_args[0].shape[0] == BATCH_SIZE * NUM_REFERENCES  # one R-UNet pass over all N samples
    teacher_args, _ = calls["teacher"][0]
    assert teacher_args[0].shape[0] == 2 * BATCH_SIZE * NUM_REFERENCES  # cond + uncond in one call


def test_teacher_uncond_branch_has_zero_embeds_and_dropped_bank():
    step = make_step()
    calls = []
    count_calls(step.models.teacher_unet, calls)
    step.step(make_batch(), torch.Generator().manual_seed(0))
    _, kwargs = calls[0]
    embeds = kwargs["encoder_hidden_states"]
    bank: ReferenceBank = kwargs["cross_attention_kwargs"]["reference_bank"]
    samples = BATCH_SIZE * NUM_REFERENCES
    assert torch.count_nonzero(embeds[samples:]) == 0 and torch.count_nonzero(embeds[:samples]) > 0
    assert bank.drop_mask().tolist() == [False] * samples + [True] * samples


def test_equivalent_group_members_share_noise_timestep_and_target():
    step = make_step()
    output = step.step(make_batch(), torch.Generator().manual_seed(0))
    assert output.group_ids.tolist() == [0, 0, 1, 1]
    assert output.source_ids.tolist() == [0, 0, 1, 1]
    for first in (0, 2):
        assert torch.equal(output.noisy_latents[first], output.noisy_latents[first + 1])
        assert output.start_timesteps[first] == output.start_timesteps[first + 1]
        assert output.guidance_scale[first] == output.guidance_scale[first + 1]
    # The references differ, so the student's predictions within a group differ (ETA has something to pull together).
    assert not torch.allclose(output.student_denoised[0], output.student_denoised[1])


def test_terms_are_separate_and_finite_and_only_the_student_gets_gradients():
    step = make_step()
    output = step.step(make_batch(), torch.Generator().manual_seed(0))
    assert set(output.terms) == {"loss", "consistency", "eta", "cons", "spatial_regulariser"}
    assert all(torch.isfinite(torch.tensor(value)) for value in output.terms.values())
    expected = output.terms["consistency"] + 0.1 * output.terms["eta"] - 0.02 * output.terms["cons"]
    assert output.terms["loss"] == pytest.approx(expected, rel=1e-5)
    output.loss.backward()
    assert all(parameter.grad is None for parameter in step.models.target_unet.parameters())
    assert all(parameter.grad is None for parameter in step.models.teacher_unet.parameters())
    assert any(parameter.grad is not None and parameter.grad.abs().sum() > 0
               for parameter in step.models.student_unet.parameters())


def test_zero_weights_give_the_consistency_loss_alone():
    step = make_step(eta_weight=0.0, cons_weight=0.0)
    output = step.step(make_batch(), torch.Generator().manual_seed(0))
    assert output.terms["spatial_regulariser"] == 0.0
    assert output.loss.item() == pytest.approx(output.terms["consistency"], rel=0, abs=0)


def test_same_generator_gives_the_same_loss():
    step = make_step()
    first = step.step(make_batch(), torch.Generator().manual_seed(3)).loss.item()
    second = step.step(make_batch(), torch.Generator().manual_seed(3)).loss.item()
    assert first == second


def test_temporal_phase_with_motion_unet():
    step = make_step(phase="temporal", guidance_scale=1.5, temporal_eta_weight=0.05)
    output = step.step(make_batch(num_frames=3), torch.Generator().manual_seed(0))
    assert set(output.terms) == {"loss", "consistency", "temporal_regulariser"}
    assert output.student_denoised.shape[2] == 3
    assert all(torch.isfinite(torch.tensor(value)) for value in output.terms.values())


def test_guidance_scale_range_and_embedding_student():
    step = make_step(time_cond_proj_dim=8, w_min=1.0, w_max=3.0)
    calls = []
    count_calls(step.models.student_unet, calls)
    output = step.step(make_batch(), torch.Generator().manual_seed(0))
    scales = output.guidance_scale
    assert ((scales >= 1.0) & (scales <= 3.0)).all() and scales[0] != scales[2]
    assert calls[0][1]["timestep_cond"].shape == (BATCH_SIZE * NUM_REFERENCES, 8)


def test_spatial_and_motion_unets_round_trip():
    motion = build_components(motion=True)["denoising_unet"]
    spatial = spatial_unet_from_motion(motion)
    with torch.no_grad():
        for parameter in spatial.parameters():
            parameter.add_(0.5)
    merged = motion_unet_with_spatial_weights(motion, spatial)
    for key, value in merged.state_dict().items():
        expected = motion.state_dict()[key] if ".motion_modules." in key else spatial.state_dict()[key]
        assert torch.equal(value, expected), key


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="phase"):
        DistillationConfig(phase="both")
    with pytest.raises(ValueError, match="w_min"):
        DistillationConfig(w_min=1.0)


def test_the_teachers_guidance_type_dropout_is_kept_per_item():
    """With a teacher trained with guidance-type dropout, every item's types are dropped as in its training, once per
    item (an equivalent group shares its guidance), for teacher, target and student alike."""
    step = make_step()
    plain = step.step(make_batch(), torch.Generator().manual_seed(0))
    assert "guidance_type_drop_fraction" not in plain.terms
    step.models.guidance_encoder.register_to_config(guidance_type_dropout=0.5)
    masks = []
    step.models.guidance_encoder.register_forward_hook(
        lambda _module, _args, kwargs, _output: masks.append(kwargs["drop_mask"]), with_kwargs=True)
    first = step.step(make_batch(), torch.Generator().manual_seed(0))
    again = step.step(make_batch(), torch.Generator().manual_seed(0))
    assert masks[0].shape == (BATCH_SIZE, len(GUIDANCE_TYPES)) and torch.equal(masks[0], masks[1])
    assert first.terms["guidance_type_drop_fraction"] == masks[0].float().mean().item()
    torch.testing.assert_close(first.loss, again.loss)
