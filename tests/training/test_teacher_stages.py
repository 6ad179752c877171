"""The teacher's stages around the training step (training/teacher_stages.py), on tiny components: no script runs."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNetMotionModel

from referencelcm import ReferenceLCMPipeline
from referencelcm.models.injection import run_denoising_unet
from referencelcm.training.teacher_stages import (
    STAGE_DECIDED_KEYS,
    finished_teacher,
    inflate,
    new_teacher_components,
    stage_maps,
    stage_model_config,
    stage_pipeline,
    teacher_description,
    teacher_pipeline,
    trainable_network,
)
from referencelcm.training.export import student_pipeline
from referencelcm.training.teacher import ReferenceNet
from referencelcm.training.unets import is_motion_key
from referencelcm.training.vae import VAEReconstruction

from ..conftest import build_components

TINY_CONFIG = Path(__file__).resolve().parents[2] / "examples" / "configs" / "tiny.json"


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


def test_stage_model_config_drops_what_the_stage_decides(tmp_path, caplog):
    assert stage_model_config(None) == {}
    sizes = json.loads(TINY_CONFIG.read_text())
    (tmp_path / "sizes.json").write_text(json.dumps({**sizes, "motion": True, "scheduler": "lcm"}))
    with caplog.at_level(logging.WARNING):
        assert stage_model_config(tmp_path / "sizes.json") == sizes
    assert "['motion', 'scheduler'] are decided by --stage" in caplog.text
    assert set(STAGE_DECIDED_KEYS) >= {"motion", "scheduler"}


def test_a_new_teacher_starts_with_equal_unets_a_2d_denoising_unet_and_ddim():
    components = new_teacher_components(json.loads(TINY_CONFIG.read_text()), seed=3)
    reference, denoising = state(components["reference_unet"]), state(components["denoising_unet"])
    assert reference.keys() == denoising.keys() and all(torch.equal(reference[key], denoising[key]) for key in reference)
    assert isinstance(components["denoising_unet"], UNet2DConditionModel)
    pipe = teacher_pipeline("vae", model_config=TINY_CONFIG, seed=3)
    assert isinstance(pipe.scheduler, DDIMScheduler) and pipe.config.motion_norm_mode == "video"
    assert all(torch.equal(value, state(pipe.denoising_unet)[key]) for key, value in denoising.items())


def test_reference_locality_comes_from_the_model_config_and_stays_through_the_stages(tmp_path):
    sizes = json.loads(TINY_CONFIG.read_text())
    (tmp_path / "local.json").write_text(json.dumps({**sizes, "reference_locality": 0.2}))
    pipe = teacher_pipeline("vae", model_config=tmp_path / "local.json")
    assert pipe.config.reference_locality == 0.2
    pipe.save_pretrained(tmp_path / "vae")
    image = teacher_pipeline("image", pretrained_model=str(tmp_path / "vae"))
    video, _ = stage_pipeline(image, "video")
    student = student_pipeline(video, video.denoising_unet)
    assert image.config.reference_locality == video.config.reference_locality == 0.2
    assert student.settings == video.settings == {"motion_norm_mode": "video", "reference_locality": 0.2}
    assert teacher_pipeline("vae", model_config=TINY_CONFIG).config.reference_locality is None


def test_new_motion_adapter_starts_as_the_image_model():
    pipe = ReferenceLCMPipeline(**build_components(motion=False, scheduler="ddim"))
    inflated = inflate(pipe)  # stage video without --motion_adapter_path or --model_config
    assert isinstance(inflated.denoising_unet, UNetMotionModel)
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, 3, 8, 8, generator=generator)
    image_embeds = torch.randn(1, 1, 16, generator=generator)
    outputs = [run_denoising_unet(unet, latents, torch.tensor([500]), image_embeds, None)
               for unet in (pipe.denoising_unet, inflated.denoising_unet)]
    torch.testing.assert_close(outputs[0], outputs[1])


def test_stage_pipeline_puts_the_pipeline_in_each_stages_form():
    motion = ReferenceLCMPipeline(**build_components(motion=True, scheduler="ddim"), motion_norm_mode="frame")
    image, source = stage_pipeline(motion, "image", guidance_type_dropout=0.25)
    assert isinstance(image.denoising_unet, UNet2DConditionModel) and source is motion.denoising_unet
    assert image.config.motion_norm_mode == "frame" and image.guidance_encoder.config.guidance_type_dropout == 0.25
    video, source = stage_pipeline(motion, "video")
    assert video.denoising_unet is motion.denoising_unet and source is None  # its motion modules train on
    two_d = ReferenceLCMPipeline(**build_components(motion=False, scheduler="ddim"))
    assert stage_pipeline(two_d, "vae") == (two_d, None)
    assert isinstance(stage_pipeline(two_d, "video")[0].denoising_unet, UNetMotionModel)


def test_trainable_network_trains_only_the_stages_components():
    pipe = ReferenceLCMPipeline(**build_components(motion=False, scheduler="ddim"))
    network = trainable_network(pipe, "vae", torch.device("cpu"))
    assert isinstance(network, VAEReconstruction) and pipe.vae.training
    trained = {name for name, model in pipe.components.items() if isinstance(model, torch.nn.Module)
               and any(parameter.requires_grad for parameter in model.parameters())}
    assert trained == {"vae"}
    network = trainable_network(pipe, "image", torch.device("cpu"), torch.bfloat16)
    assert isinstance(network, ReferenceNet) and not pipe.vae.training and pipe.denoising_unet.training
    assert pipe.vae.dtype == torch.bfloat16 and pipe.denoising_unet.dtype == torch.float32  # frozen ones cast
    assert not any(parameter.requires_grad for parameter in pipe.vae.parameters())
    assert all(parameter.requires_grad for parameter in pipe.guidance_encoder.parameters())


def test_stage_maps_read_masks_for_the_vae_and_a_person_weighted_loss(tmp_path):
    for video in ("a", "b"):
        (tmp_path / "data" / video / "images").mkdir(parents=True)
    data = tmp_path / "data"
    assert stage_maps("image", ["depth", "dwpose"], data) == ("depth", "dwpose")
    assert stage_maps("vae", ["depth"], data) == ("depth",)  # no masks: the frames alone
    assert stage_maps("image_encoder", ["depth"], data) == ("semantic_map",)
    with pytest.raises(FileNotFoundError, match="`--vae_person_weight` needs a mask/ folder.*--train_data_dir"):
        stage_maps("vae", ["depth"], data, person_weight=2.0)
    with pytest.raises(FileNotFoundError, match="`--person_loss_weight` needs a mask/ folder.*--train_data_dir"):
        stage_maps("image", ["depth"], data, person_weight=2.0)
    for video in ("a", "b"):
        (data / video / "mask").mkdir()
    assert stage_maps("vae", ["depth"], data, person_weight=2.0) == ("mask",)
    assert stage_maps("image", ["depth"], data) == ("depth",)
    assert stage_maps("video", ["depth"], data, person_weight=2.0) == ("depth", "mask")


def test_finished_teacher_measures_the_scaling_factor_and_restores_motion_modules():
    pipe = ReferenceLCMPipeline(**build_components(motion=False, scheduler="ddim"))
    pipe.vae.to(torch.bfloat16).train()
    generator = torch.Generator().manual_seed(0)
    dataset = [{"target": torch.rand(3, 1, 32, 32, generator=generator) * 2 - 1} for _ in range(3)]
    finished = finished_teacher(pipe, "vae", dataset)
    assert finished.vae.dtype == torch.float32 and not finished.vae.training
    assert finished.vae.config.scaling_factor != build_components()["vae"].config.scaling_factor

    motion = build_components(motion=True, scheduler="ddim")
    before = state(motion["denoising_unet"])
    image, source = stage_pipeline(ReferenceLCMPipeline(**motion), "image")
    with torch.no_grad():
        for parameter in image.denoising_unet.parameters():
            parameter.add_(1.0)  # "trained" 2-D weights
    restored = finished_teacher(image, "image", dataset, source).denoising_unet
    assert isinstance(restored, UNetMotionModel)
    after = state(restored)
    assert all(torch.equal(before[key], after[key]) for key in before if is_motion_key(key))
    assert all(not torch.equal(before[key], after[key]) for key in before if not is_motion_key(key))


def test_teacher_description_says_the_stage_the_start_and_the_subsets():
    pipe = ReferenceLCMPipeline(**build_components(motion=False, scheduler="ddim"))
    text = teacher_description(pipe, "image", 30, "/data/synth_train", 64, "out/vae")
    assert "stage `image` of examples/train_teacher.py: 30 steps on `synth_train` at 64 px" in text
    assert "started from `out/vae`" in text and "subset" not in text
    pipe.guidance_encoder.register_to_config(guidance_type_dropout=0.5)
    assert "takes any non-empty subset of ['depth', 'dwpose']" in teacher_description(pipe, "image", 30, "d", 64, "x")
