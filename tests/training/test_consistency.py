"""Consistency math against diffusers' own DDIMScheduler / LCMScheduler on the same numbers."""

import pytest
import torch
from diffusers import DDIMScheduler, LCMScheduler

from referencelcm.training.consistency import (
    DDIMSolver,
    apply_classifier_free_guidance,
    boundary_scalings,
    consistency_output,
    guidance_condition,
    guidance_scale_embedding,
    predicted_noise,
    predicted_origin,
    sample_timesteps,
    student_lcm_scheduler_from_teacher,
)

NUM_DDIM_TIMESTEPS = 50


def champ_like_teacher(**overrides) -> DDIMScheduler:
    """The teacher's schedule: v-prediction, zero terminal SNR, trailing spacing."""
    config = dict(
        beta_schedule="scaled_linear",
        prediction_type="v_prediction",
        rescale_betas_zero_snr=True,
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
    )
    config.update(overrides)
    scheduler = DDIMScheduler(**config)
    scheduler.set_timesteps(NUM_DDIM_TIMESTEPS)
    return scheduler


def test_solver_grid_matches_lcm_schedule_and_trailing_ddim():
    teacher = champ_like_teacher()
    solver = DDIMSolver.from_scheduler(teacher, NUM_DDIM_TIMESTEPS)
    assert solver.step_ratio == 20
    assert torch.equal(solver.timesteps, torch.arange(19, 1000, 20))
    assert torch.equal(solver.timesteps.flip(0), teacher.timesteps)
    assert torch.equal(solver.previous_timesteps[1:], solver.timesteps[:-1])
    assert solver.previous_timesteps[0] == 0
    student = student_lcm_scheduler_from_teacher(teacher, NUM_DDIM_TIMESTEPS)
    for steps in (1, 2, 4, 8):
        student.set_timesteps(steps)
        assert set(student.timesteps.tolist()) <= set(solver.timesteps.tolist())


def test_solver_grid_with_uneven_skip():
    solver = DDIMSolver(torch.linspace(0.99, 0.01, 1000), num_train_timesteps=1000, num_ddim_timesteps=30)
    assert solver.step_ratio == 33
    assert torch.equal(solver.timesteps, torch.arange(1, 31) * 33 - 1)
    with pytest.raises(ValueError, match="num_ddim_timesteps"):
        DDIMSolver(torch.ones(10), num_train_timesteps=10, num_ddim_timesteps=11)


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # v-prediction, zero SNR, trailing, scaled_linear (the teacher)
        {"beta_schedule": "linear"},
        {"prediction_type": "epsilon", "rescale_betas_zero_snr": False},
        {"prediction_type": "sample", "rescale_betas_zero_snr": False},
    ],
)
def test_ddim_step_equals_ddim_scheduler_on_every_grid_step(overrides):
    teacher = champ_like_teacher(**overrides)
    prediction_type = teacher.config.prediction_type
    solver = DDIMSolver.from_scheduler(teacher, NUM_DDIM_TIMESTEPS)
    generator = torch.Generator().manual_seed(0)
    # one batch with every grid step, per-sample timesteps, video latents (B, C, F, H, W)
    index = torch.arange(NUM_DDIM_TIMESTEPS)
    timesteps = solver.timesteps[index]
    sample = torch.randn(NUM_DDIM_TIMESTEPS, 4, 2, 3, 3, generator=generator)
    model_output = torch.randn(sample.shape, generator=generator)

    pred_original = predicted_origin(model_output, timesteps, sample, prediction_type, solver.alphas_cumprod)
    pred_noise = predicted_noise(model_output, timesteps, sample, prediction_type, solver.alphas_cumprod)
    previous = solver.ddim_step(pred_original, pred_noise, index)

    for i, timestep in enumerate(timesteps.tolist()):
        expected = teacher.step(model_output[i], timestep, sample[i], eta=0.0)
        torch.testing.assert_close(pred_original[i], expected.pred_original_sample)
        torch.testing.assert_close(previous[i], expected.prev_sample)


def test_v_prediction_is_finite_at_zero_terminal_snr():
    teacher = champ_like_teacher()
    assert teacher.alphas_cumprod[-1] < 1e-6
    sample, output = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    timesteps = torch.tensor([999, 999])
    pred_original = predicted_origin(output, timesteps, sample, "v_prediction", teacher.alphas_cumprod)
    pred_noise = predicted_noise(output, timesteps, sample, "v_prediction", teacher.alphas_cumprod)
    assert torch.isfinite(pred_original).all() and torch.isfinite(pred_noise).all()
    torch.testing.assert_close(pred_original, -output, atol=1e-3, rtol=0)  # ᾱ = 0: x̂_0 = −v, ε̂ = x_t
    torch.testing.assert_close(pred_noise, sample, atol=1e-3, rtol=0)


def test_predictions_round_trip_through_forward_process():
    teacher = champ_like_teacher(prediction_type="epsilon", rescale_betas_zero_snr=False)
    generator = torch.Generator().manual_seed(1)
    original, noise = torch.randn(6, 4, 8, 8, generator=generator), torch.randn(6, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([0, 1, 250, 500, 900, 999])
    noisy = teacher.add_noise(original, noise, timesteps)
    velocity = teacher.get_velocity(original, noise, timesteps)
    for prediction_type, output in (("epsilon", noise), ("v_prediction", velocity), ("sample", original)):
        args = (output, timesteps, noisy, prediction_type, teacher.alphas_cumprod)
        torch.testing.assert_close(predicted_origin(*args), original, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(predicted_noise(*args), noise, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="prediction_type"):
        predicted_origin(noise, timesteps, noisy, "flow", teacher.alphas_cumprod)


@pytest.mark.parametrize("timestep_scaling", [1.0, 10.0, 100.0])
def test_boundary_scalings_equal_lcm_scheduler_on_every_timestep(timestep_scaling):
    scheduler = LCMScheduler(timestep_scaling=timestep_scaling)
    timesteps = torch.arange(1000)
    c_skip, c_out = boundary_scalings(timesteps, timestep_scaling)
    expected = [scheduler.get_scalings_for_boundary_condition_discrete(t) for t in range(1000)]
    torch.testing.assert_close(c_skip, torch.tensor([e[0] for e in expected], dtype=torch.float32))
    torch.testing.assert_close(c_out, torch.tensor([e[1] for e in expected], dtype=torch.float32))
    assert c_skip[0] == 1 and c_out[0] == 0  # the boundary condition f(x, 0) = x


@pytest.mark.parametrize(
    "overrides", [{}, {"prediction_type": "epsilon", "rescale_betas_zero_snr": False, "beta_schedule": "linear"}]
)
def test_consistency_output_equals_one_step_lcm_scheduler(overrides):
    teacher = champ_like_teacher(**overrides)
    student = student_lcm_scheduler_from_teacher(teacher, NUM_DDIM_TIMESTEPS)
    generator = torch.Generator().manual_seed(2)
    for timestep in (999, 499, 99, 19):
        sample = torch.randn(2, 4, 3, 8, 8, generator=generator)
        output = torch.randn(sample.shape, generator=generator)
        student.set_timesteps(timesteps=[timestep])
        expected = student.step(output, student.timesteps[0], sample).denoised
        denoised = consistency_output(
            output,
            torch.full((2,), timestep),
            sample,
            student.config.prediction_type,
            student.alphas_cumprod,
            student.config.timestep_scaling,
        )
        torch.testing.assert_close(denoised, expected)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"beta_schedule": "linear", "rescale_betas_zero_snr": False, "prediction_type": "epsilon"},
        {"trained_betas": torch.linspace(1e-4, 2e-2, 1000).tolist()},
    ],
)
def test_student_scheduler_shares_the_teacher_schedule(overrides):
    teacher = champ_like_teacher(**overrides)
    student = student_lcm_scheduler_from_teacher(teacher, num_ddim_timesteps=25, timestep_scaling=5.0)
    assert isinstance(student, LCMScheduler)
    torch.testing.assert_close(student.alphas_cumprod, teacher.alphas_cumprod, rtol=0, atol=0)
    assert student.config.prediction_type == teacher.config.prediction_type
    assert student.config.rescale_betas_zero_snr == teacher.config.rescale_betas_zero_snr
    assert student.config.original_inference_steps == 25
    assert student.config.timestep_scaling == 5.0
    assert not student.config.clip_sample


def test_sample_timesteps_pairs_start_and_previous_grid_timestep():
    solver = DDIMSolver.from_scheduler(champ_like_teacher(), NUM_DDIM_TIMESTEPS)
    index, start, target = sample_timesteps(4096, solver, generator=torch.Generator().manual_seed(3))
    assert index.shape == start.shape == target.shape == (4096,)
    assert index.dtype == start.dtype == target.dtype == torch.long
    assert set(index.tolist()) == set(range(NUM_DDIM_TIMESTEPS))
    torch.testing.assert_close(start, solver.timesteps[index])
    torch.testing.assert_close(target, (start - solver.step_ratio).clamp_min(0))


def test_classifier_free_guidance_standard_scale_per_sample():
    conditional, unconditional = torch.randn(3, 4, 2, 2), torch.randn(3, 4, 2, 2)
    guided = apply_classifier_free_guidance(conditional, unconditional, torch.tensor([1.0, 0.0, 2.5]))
    torch.testing.assert_close(guided[0], conditional[0])
    torch.testing.assert_close(guided[1], unconditional[1])
    torch.testing.assert_close(guided[2], unconditional[2] + 2.5 * (conditional[2] - unconditional[2]))
    # diffusers' LCD writes the same guidance as cond + w (cond − uncond) with w = ω − 1
    torch.testing.assert_close(guided[2], conditional[2] + 1.5 * (conditional[2] - unconditional[2]))
    torch.testing.assert_close(apply_classifier_free_guidance(conditional, unconditional, 1.0), conditional)


def test_guidance_condition_is_what_diffusers_lcm_pipeline_embeds():
    from diffusers import LatentConsistencyModelPipeline

    guidance_scale = 2.5  # the paper's ω in phase 1, a standard CFG scale
    expected = LatentConsistencyModelPipeline.get_guidance_scale_embedding(
        None, torch.tensor(guidance_scale - 1).repeat(3), embedding_dim=32
    )
    condition = guidance_condition(torch.full((3,), guidance_scale), embedding_dim=32)
    torch.testing.assert_close(condition, expected)
    torch.testing.assert_close(condition, guidance_scale_embedding(torch.full((3,), 1.5), embedding_dim=32))
