"""Teacher training step: min-SNR weights, noise offset, condition dropout, unread R-UNet layers, stage freezing."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler

from referencelcm import ReferenceLCMPipeline
from referencelcm.models.reference_attention import ReferenceBank
from referencelcm.pipelines import factory
from referencelcm.pipelines.factory import TEACHER_SCHEDULER_CONFIG
from referencelcm.training.teacher import (
    TeacherConfig,
    TeacherModels,
    TeacherTrainingStep,
    drop_conditions,
    min_snr_weights,
    offset_noise,
    person_weights,
    sample_drop_mask,
    set_trainable,
    signal_to_noise_ratio,
    training_target,
    unread_reference_parameters,
)
from referencelcm.training.vae import latent_scaling_factor, person_crops, vae_loss

from ..conftest import CROSS_ATTENTION_DIM, GUIDANCE_TYPES, IMAGE_SIZE, build_components, randomize_guidance_encoder

BATCH_SIZE = 2


def make_batch(num_frames: int = 1, batch_size: int = BATCH_SIZE, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    size = IMAGE_SIZE
    return {
        "target": torch.rand(batch_size, 3, num_frames, size, size, generator=generator) * 2 - 1,
        "guidance": {
            name: torch.rand(batch_size, 3, num_frames, size, size, generator=generator) for name in GUIDANCE_TYPES
        },
        "references": torch.rand(batch_size, 1, 3, size, size, generator=generator) * 2 - 1,
        "reference_clip_pixels": torch.randn(batch_size, 1, 3, size, size, generator=generator),
        "source_id": torch.arange(batch_size),
    }


def make_models(motion: bool = False) -> tuple[TeacherModels, DDIMScheduler]:
    components = build_components(motion=motion, scheduler="ddim")
    randomize_guidance_encoder(components["guidance_encoder"])
    pipe = ReferenceLCMPipeline(**components)  # installs reference processors and guidance injection
    models = TeacherModels(pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet,
                           pipe.guidance_encoder)
    return models, pipe.scheduler


@pytest.fixture(scope="module")
def schedule() -> torch.Tensor:
    return DDIMScheduler(**TEACHER_SCHEDULER_CONFIG).alphas_cumprod


# -- pure functions --------------------------------------------------------------------------------------------------


def test_snr_is_zero_at_the_terminal_step_and_weights_stay_finite(schedule):
    timesteps = torch.arange(1000)
    snr = signal_to_noise_ratio(schedule, timesteps)
    assert snr[-1] == 0 and bool((snr[:-1] > 0).all())
    for prediction_type in ("v_prediction", "epsilon", "sample"):
        weights = min_snr_weights(snr, 5.0, prediction_type)
        assert bool(torch.isfinite(weights).all()), prediction_type
        assert bool((weights >= 0).all())
    assert min_snr_weights(snr, 5.0, "v_prediction")[-1] == 0
    assert min_snr_weights(snr, 5.0, "epsilon")[-1] == 1


@pytest.mark.parametrize("snr_value", [0.01, 0.5, 4.0, 5.0, 20.0, 1e4])
def test_min_snr_weights_match_the_formula(snr_value):
    snr, gamma = torch.tensor([snr_value]), 5.0
    clipped = min(snr_value, gamma)
    torch.testing.assert_close(min_snr_weights(snr, gamma, "v_prediction"), torch.tensor([clipped / (snr_value + 1)]))
    torch.testing.assert_close(min_snr_weights(snr, gamma, "epsilon"), torch.tensor([clipped / snr_value]))
    torch.testing.assert_close(min_snr_weights(snr, gamma, "sample"), torch.tensor([clipped]))


def test_min_snr_rejects_bad_arguments():
    with pytest.raises(ValueError, match="prediction_type"):
        min_snr_weights(torch.ones(1), 5.0, "flow")
    with pytest.raises(ValueError, match="snr_gamma"):
        min_snr_weights(torch.ones(1), 0.0, "epsilon")


@pytest.mark.parametrize("shape", [(4, 4, 8, 8), (4, 4, 3, 8, 8)])
def test_noise_offset_is_one_shift_per_sample_and_channel(shape):
    plain = offset_noise(shape, 0.0, torch.Generator().manual_seed(0))
    shifted = offset_noise(shape, 0.5, torch.Generator().manual_seed(0))
    difference = (shifted - plain).flatten(2)  # the same ε first, then the offset
    assert bool((difference.std(dim=2) < 1e-6).all())  # constant over frames and pixels
    assert difference[:, :, 0].unique().numel() == shape[0] * shape[1]  # one value per (sample, channel)
    torch.testing.assert_close(difference[:, :, 0] / 0.5, torch.randn(
        shape[:2] + (1,) * (len(shape) - 2), generator=_after(shape)).flatten(1))


def _after(shape) -> torch.Generator:
    generator = torch.Generator().manual_seed(0)
    torch.randn(shape, generator=generator)
    return generator


def test_drop_mask_rate_and_determinism():
    mask = sample_drop_mask(10000, 0.1, torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and abs(mask.float().mean().item() - 0.1) < 0.02
    torch.testing.assert_close(mask, sample_drop_mask(10000, 0.1, torch.Generator().manual_seed(0)))
    assert not sample_drop_mask(16, 0.0).any() and sample_drop_mask(16, 1.0).all()
    with pytest.raises(ValueError, match="uncond_ratio"):
        sample_drop_mask(4, 1.5)


def test_drop_conditions_zeroes_embeds_and_drops_reference_per_sample():
    embeds = torch.randn(3, 1, 8)
    bank = ReferenceBank(tokens={"layer": torch.randn(3, 4, 8)})
    mask = torch.tensor([False, True, False])
    dropped_embeds, dropped_bank = drop_conditions(embeds, bank, mask)
    torch.testing.assert_close(dropped_embeds[0], embeds[0])
    assert bool((dropped_embeds[1] == 0).all())
    assert dropped_bank.drop_mask().tolist() == [False, True, False]
    assert dropped_bank.tokens["layer"] is bank.tokens["layer"]
    with pytest.raises(ValueError, match="drop_mask"):
        drop_conditions(embeds, bank, torch.zeros(2, dtype=torch.bool))


def test_v_prediction_target_is_the_schedulers_velocity(schedule):
    scheduler = DDIMScheduler(**TEACHER_SCHEDULER_CONFIG)
    latents, noise = torch.randn(3, 4, 2, 4, 4), torch.randn(3, 4, 2, 4, 4)
    timesteps = torch.tensor([0, 500, 999])
    target = training_target(scheduler, latents, noise, timesteps)
    alpha = schedule[timesteps].view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(target, alpha.sqrt() * noise - (1 - alpha).sqrt() * latents)
    torch.testing.assert_close(target[2], -latents[2])  # zero terminal SNR: v = −x_0


# -- which parameters train ------------------------------------------------------------------------------------------


def test_unread_reference_parameters_are_exactly_those_without_gradient():
    models, scheduler = make_models()
    unread = set(unread_reference_parameters(models.reference_unet))
    last = "up_blocks.1.attentions.1"
    assert {"conv_out.weight", "conv_norm_out.weight", f"{last}.proj_out.weight",
            f"{last}.transformer_blocks.0.attn1.to_q.weight", f"{last}.transformer_blocks.0.ff.net.2.bias"} <= unread
    assert f"{last}.transformer_blocks.0.norm1.weight" not in unread  # its output is the last written token set

    for model in (models.reference_unet, models.denoising_unet, models.guidance_encoder):
        model.requires_grad_(True)
    step = TeacherTrainingStep(models, scheduler, TeacherConfig(noise_offset=0.0, snr_gamma=None))
    output = step.step(make_batch(), torch.Generator().manual_seed(0), drop_mask=torch.zeros(BATCH_SIZE, dtype=bool))
    output.loss.backward()
    without_grad = {name for name, parameter in models.reference_unet.named_parameters() if parameter.grad is None}
    assert without_grad == unread
    assert all(parameter.grad is not None for parameter in models.guidance_encoder.parameters())
    assert all(parameter.grad is not None for parameter in models.denoising_unet.parameters())


def test_a_convolution_only_finest_level_leaves_the_reference_unets_top_unread_and_trains_the_rest():
    components = factory.build_components(
        image_size=IMAGE_SIZE, unet_block_out_channels=(8, 16, 16), unet_attention_levels=(False, True, False),
        vae_block_out_channels=(8, 16), cross_attention_dim=CROSS_ATTENTION_DIM, guidance_types=GUIDANCE_TYPES,
        motion=False, scheduler="ddim")
    randomize_guidance_encoder(components["guidance_encoder"])
    pipe = ReferenceLCMPipeline(**components)
    models = TeacherModels(pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet,
                           pipe.guidance_encoder)
    unread = set(unread_reference_parameters(models.reference_unet))
    assert {"up_blocks.2.resnets.0.conv1.weight", "conv_out.weight"} <= unread  # after the last attention
    assert "down_blocks.0.resnets.0.conv1.weight" not in unread  # feeds the attention levels below it
    for model in (models.reference_unet, models.denoising_unet, models.guidance_encoder):
        model.requires_grad_(True)
    step = TeacherTrainingStep(models, pipe.scheduler, TeacherConfig(noise_offset=0.0, snr_gamma=None))
    output = step.step(make_batch(), torch.Generator().manual_seed(0), drop_mask=torch.zeros(BATCH_SIZE, dtype=bool))
    output.loss.backward()
    without_grad = {name for name, parameter in models.reference_unet.named_parameters() if parameter.grad is None}
    assert without_grad == unread


def test_gradient_checkpointing_keeps_reference_gradients():
    """The bank's tokens leave checkpointed R-UNet blocks; gradients still reach the R-UNet, unchanged."""
    gradients = []
    for checkpointing in (False, True):
        models, scheduler = make_models()
        set_trainable(models, "image")
        if checkpointing:
            models.reference_unet.enable_gradient_checkpointing()
            models.denoising_unet.enable_gradient_checkpointing()
        for model in (models.reference_unet, models.denoising_unet):
            model.train()
        step = TeacherTrainingStep(models, scheduler, TeacherConfig())
        keep_all = torch.zeros(BATCH_SIZE, dtype=torch.bool)
        step.step(make_batch(), torch.Generator().manual_seed(0), drop_mask=keep_all).loss.backward()
        gradients.append({name: parameter.grad for name, parameter in models.reference_unet.named_parameters()
                          if parameter.grad is not None})
    assert gradients[0] and set(gradients[0]) == set(gradients[1])
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient)


def test_set_trainable_image_stage_excludes_unread_and_frozen_encoders():
    models, _ = make_models()
    parameters = {id(parameter) for parameter in set_trainable(models, "image")}
    unread = set(unread_reference_parameters(models.reference_unet))
    for name, parameter in models.reference_unet.named_parameters():
        assert (id(parameter) in parameters) == (name not in unread), name
    assert all(id(parameter) in parameters for parameter in models.denoising_unet.parameters())
    assert not any(parameter.requires_grad for parameter in models.vae.parameters())
    assert not any(parameter.requires_grad for parameter in models.image_encoder.parameters())


def test_the_image_encoder_trains_with_the_unets_when_asked():
    models, scheduler = make_models()
    parameters = {id(parameter) for parameter in set_trainable(models, "image", train_image_encoder=True)}
    assert all(id(parameter) in parameters for parameter in models.image_encoder.parameters())
    step = TeacherTrainingStep(models, scheduler, TeacherConfig())
    keep_all = torch.zeros(BATCH_SIZE, dtype=torch.bool)
    step.step(make_batch(), torch.Generator().manual_seed(0), drop_mask=keep_all).loss.backward()
    projection = models.image_encoder.visual_projection.weight
    assert projection.grad is not None and projection.grad.abs().sum() > 0  # via both UNets' cross-attention
    assert not any(parameter.requires_grad for parameter in models.vae.parameters())
    set_trainable(models, "image")  # the default keeps it frozen (Champ's pretrained CLIP)
    assert not any(parameter.requires_grad for parameter in models.image_encoder.parameters())


def test_set_trainable_video_stage_trains_motion_modules_only():
    models, scheduler = make_models(motion=True)
    parameters = set_trainable(models, "video")
    names = {id(parameter): name for name, parameter in models.denoising_unet.named_parameters()}
    assert parameters and all(".motion_modules." in f".{names[id(parameter)]}" for parameter in parameters)
    step = TeacherTrainingStep(models, scheduler, TeacherConfig())
    step.step(make_batch(num_frames=3), torch.Generator().manual_seed(0)).loss.backward()
    assert all(parameter.grad is not None for parameter in parameters)
    assert all(parameter.grad is None for parameter in models.reference_unet.parameters())

    image_models, _ = make_models(motion=False)
    with pytest.raises(ValueError, match="UNetMotionModel"):
        set_trainable(image_models, "video")


# -- the step --------------------------------------------------------------------------------------------------------


def image_stage_step() -> tuple[TeacherTrainingStep, TeacherModels, DDIMScheduler]:
    """A stage-image step (unconditional dropout 0.5) on tiny models."""
    models, scheduler = make_models()
    set_trainable(models, "image")
    return TeacherTrainingStep(models, scheduler, TeacherConfig(uncond_ratio=0.5)), models, scheduler


def test_step_is_deterministic_and_dropout_changes_the_loss():
    step, _, scheduler = image_stage_step()
    batch = make_batch()
    with torch.no_grad():
        first = step.step(batch, torch.Generator().manual_seed(3))
        again = step.step(batch, torch.Generator().manual_seed(3))
        keep = step.step(batch, torch.Generator().manual_seed(3), drop_mask=torch.zeros(BATCH_SIZE, dtype=bool))
        drop = step.step(batch, torch.Generator().manual_seed(3), drop_mask=torch.ones(BATCH_SIZE, dtype=bool))
    torch.testing.assert_close(first.loss, again.loss)
    assert torch.equal(first.drop_mask, again.drop_mask)
    assert not torch.allclose(keep.per_sample_loss, drop.per_sample_loss)
    assert drop.terms["uncond_fraction"] == 1.0
    weights = min_snr_weights(signal_to_noise_ratio(scheduler.alphas_cumprod, first.timesteps), 5.0, "v_prediction")
    torch.testing.assert_close(first.loss, (weights * first.per_sample_loss).mean())


def test_teacher_config_validates():
    with pytest.raises(ValueError, match="uncond_ratio"):
        TeacherConfig(uncond_ratio=-0.1)
    with pytest.raises(ValueError, match="snr_gamma"):
        TeacherConfig(snr_gamma=0)
    with pytest.raises(ValueError, match="noise_offset"):
        TeacherConfig(noise_offset=-1)
    with pytest.raises(ValueError, match="person_weight"):
        TeacherConfig(person_weight=-1)


def test_person_weights_are_the_persons_area_share_normalised_to_mean_one():
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, :2, :2] = 1  # sample 0: the person fills latent pixel (0, 0) of a 4 x 4 latent
    masks[0, 0, 2, 2] = 1  # and a quarter of pixel (1, 1)
    weights = person_weights(masks, (4, 4), person_weight=4.0)
    assert weights.shape == (2, 1, 1, 4, 4)
    torch.testing.assert_close(weights.flatten(1).mean(1), torch.ones(2))
    raw = torch.ones(4, 4)
    raw[0, 0], raw[1, 1] = 5.0, 2.0
    torch.testing.assert_close(weights[0, 0, 0], raw / raw.mean())
    torch.testing.assert_close(weights[1], torch.ones(1, 1, 4, 4))  # no person: every pixel counts once
    with pytest.raises(ValueError, match="masks"):
        person_weights(masks[:, 0], (4, 4), 1.0)


def test_person_weighted_step_needs_masks_and_weighs_the_person():
    models, scheduler = make_models()
    set_trainable(models, "image")
    batch = make_batch()
    batch["guidance"]["mask"] = torch.zeros(BATCH_SIZE, 3, 1, IMAGE_SIZE, IMAGE_SIZE)
    keep = torch.zeros(BATCH_SIZE, dtype=bool)

    def loss(person_weight: float, masks: torch.Tensor | None = None) -> torch.Tensor:
        if masks is not None:
            batch["guidance"]["mask"] = masks
        step = TeacherTrainingStep(models, scheduler, TeacherConfig(person_weight=person_weight))
        with torch.no_grad():  # the mask is not a guidance type: the guidance encoder never receives it
            return step.step(batch, torch.Generator().manual_seed(3), drop_mask=keep).per_sample_loss

    plain = loss(0.0)
    torch.testing.assert_close(loss(8.0), plain)  # nobody in the masks: every weight is 1
    person = torch.zeros(BATCH_SIZE, 3, 1, IMAGE_SIZE, IMAGE_SIZE)
    person[..., : IMAGE_SIZE // 2, : IMAGE_SIZE // 2] = 1
    assert not torch.allclose(loss(8.0, person), plain)
    del batch["guidance"]["mask"]
    with pytest.raises(ValueError, match="needs the batch's 'mask' maps"):
        loss(8.0)


# -- VAE -------------------------------------------------------------------------------------------------------------


def test_vae_loss_trains_and_scaling_factor_normalises_latents():
    vae = build_components()["vae"].train()
    pixels = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    output = vae_loss(vae, pixels, generator=torch.Generator().manual_seed(0))
    output.loss.backward()
    assert output.reconstruction.shape == pixels.shape
    assert set(output.terms) == {"loss", "l1", "mse", "kl"}
    assert all(parameter.grad is not None for parameter in vae.encoder.parameters())
    posterior = vae.encode(pixels).latent_dist
    assert output.terms["kl"] == pytest.approx(posterior.kl().mean().item(), rel=1e-5)
    factor = latent_scaling_factor(vae.eval(), [pixels])
    latents = vae.encode(pixels).latent_dist.mode() * factor
    assert abs(latents.std().item() - 1.0) < 1e-3
    with pytest.raises(ValueError, match="pixels"):
        vae_loss(vae, pixels[0])


def test_person_weight_counts_person_pixels_more_and_keeps_the_scale():
    vae = build_components()["vae"].train()
    pixels = torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    masks = torch.zeros(2, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.bool)
    masks[:, 8:24, 12:20] = True

    def loss(**kwargs):
        return vae_loss(vae, pixels, generator=torch.Generator().manual_seed(0), **kwargs)

    plain, unweighted = loss(), loss(masks=masks, person_weight=0.0)
    assert unweighted.terms["l1"] == pytest.approx(plain.terms["l1"], rel=1e-6)
    weighted = loss(masks=masks, person_weight=4.0)
    error = (weighted.reconstruction - pixels).abs().mean(dim=1)  # (B, H, W), same noise: same reconstruction
    weights = 1 + 4.0 * masks.float()
    expected = ((error * weights).flatten(1).mean(1) / weights.flatten(1).mean(1)).mean()
    assert weighted.terms["l1"] == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="masks"):
        loss(masks=masks[:, :8], person_weight=1.0)
    with pytest.raises(ValueError, match="person_weight"):
        loss(masks=masks, person_weight=-1.0)


def test_person_crops_centre_on_the_person_or_fall_back_to_anywhere():
    pixels = torch.arange(2 * 1 * 32 * 32, dtype=torch.float32).reshape(2, 1, 32, 32)
    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 20:24, 25:27] = True  # frame 1 shows no person
    crops, crop_masks = person_crops(pixels, masks, 8, torch.Generator().manual_seed(0), person_probability=1.0)
    assert crops.shape == (2, 1, 8, 8) and crop_masks.shape == (2, 8, 8)
    assert crop_masks[0].any() and not crop_masks[1].any()
    top, left = divmod(int(crops[0, 0, 0, 0].item()), 32)  # pixel values are their flat index
    assert torch.equal(crops[0], pixels[0, :, top : top + 8, left : left + 8])
    assert torch.equal(crop_masks[0], masks[0, top : top + 8, left : left + 8])
    shares = []
    for seed in range(40):  # with probability 0.5, about half the crops of frame 0 hold the person
        _, drawn = person_crops(pixels, masks, 8, torch.Generator().manual_seed(seed), person_probability=0.5)
        shares.append(bool(drawn[0].any()))
    assert 0.3 < sum(shares) / len(shares) < 0.95
    with pytest.raises(ValueError, match="size"):
        person_crops(pixels, masks, 33)
    with pytest.raises(ValueError, match="agree"):
        person_crops(pixels, masks[:1], 8)


def test_guidance_type_dropout_zeroes_a_type_like_leaving_it_out():
    """A dropped guidance type trains exactly what a call without that type computes; without dropout nothing more is
    drawn from the generator (runs reproduce what they did before the option existed)."""
    step, models, _ = image_stage_step()
    batch = make_batch()
    with torch.no_grad():
        plain = step.step(batch, torch.Generator().manual_seed(3))
        assert "guidance_type_drop_fraction" not in plain.terms
        models.guidance_encoder.register_to_config(guidance_type_dropout=0.5)
        drop_depth = torch.tensor([[True, False]] * BATCH_SIZE)  # GUIDANCE_TYPES order: depth, dwpose
        dropped = step.step(batch, torch.Generator().manual_seed(3), guidance_drop_mask=drop_depth)
        without_depth = {**batch, "guidance": {"dwpose": batch["guidance"]["dwpose"]}}
        left_out = step.step(without_depth, torch.Generator().manual_seed(3),
                             guidance_drop_mask=torch.zeros(BATCH_SIZE, 2, dtype=torch.bool))
        sampled = step.step(batch, torch.Generator().manual_seed(3))
    assert GUIDANCE_TYPES == ("depth", "dwpose")
    torch.testing.assert_close(dropped.per_sample_loss, left_out.per_sample_loss)
    assert not torch.allclose(dropped.per_sample_loss, plain.per_sample_loss)
    assert dropped.terms["guidance_type_drop_fraction"] == 0.5
    # the random mask is drawn after everything else: same noise, timesteps and unconditional dropout as before
    assert torch.equal(sampled.timesteps, plain.timesteps) and torch.equal(sampled.drop_mask, plain.drop_mask)
    assert "guidance_type_drop_fraction" in sampled.terms


def test_image_embeds_dropout_zeroes_the_embedding_for_both_unets_and_keeps_the_reference_tokens():
    """A sample whose image embedding is dropped trains exactly what an image encoder giving zeros computes (the
    R-UNet and the D-UNet both read zeros) with its reference tokens still there; the mask is drawn last."""
    models, scheduler = make_models()
    set_trainable(models, "image")
    batch = make_batch()
    keep = torch.zeros(BATCH_SIZE, dtype=bool)

    def run(dropout: float, drop_mask: torch.Tensor | None = keep):
        step = TeacherTrainingStep(models, scheduler, TeacherConfig(image_embeds_dropout=dropout))
        with torch.no_grad():
            return step.step(batch, torch.Generator().manual_seed(3), drop_mask=drop_mask)

    plain, dropped = run(0.0), run(1.0)
    assert "image_embeds_drop_fraction" not in plain.terms and dropped.terms["image_embeds_drop_fraction"] == 1.0
    projection = models.image_encoder.visual_projection.weight
    saved = projection.detach().clone()
    with torch.no_grad():
        projection.zero_()
    try:
        zero_embeds = run(0.0)
    finally:
        with torch.no_grad():
            projection.copy_(saved)
    torch.testing.assert_close(dropped.per_sample_loss, zero_embeds.per_sample_loss)
    assert not torch.allclose(dropped.per_sample_loss, plain.per_sample_loss)
    unconditional = run(0.0, torch.ones(BATCH_SIZE, dtype=bool))  # no embedding and no reference tokens
    assert not torch.allclose(dropped.per_sample_loss, unconditional.per_sample_loss)
    sampled_plain, sampled = run(0.0, None), run(0.5, None)
    assert torch.equal(sampled.timesteps, sampled_plain.timesteps)
    assert torch.equal(sampled.drop_mask, sampled_plain.drop_mask)
    with pytest.raises(ValueError, match="image_embeds_dropout"):
        TeacherConfig(image_embeds_dropout=1.5)
