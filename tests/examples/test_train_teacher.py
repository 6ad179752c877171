"""examples/train_teacher.py on tiny SynthDance: stages vae → image → video, each output a loadable DDIM teacher.

The VAE stage goes through ``python`` in a subprocess (the way users launch it, with a checkpoint and a validation
image); the image and video stages call ``main(argv)`` in-process to keep the suite fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel, UNetMotionModel
from PIL import Image
from safetensors.torch import load_file

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.layout import read_guidance_folder
from referencelcm.data.synthdance import generate_dataset
from referencelcm.pipelines import factory
from referencelcm.pipelines.factory import TEACHER_SCHEDULER_CONFIG
from referencelcm.training.teacher import unread_reference_parameters
from referencelcm.training.teacher_stages import inflate
from referencelcm.training.tracking import read_metrics
from referencelcm.training.unets import is_motion_key

from ..conftest import build_components
from . import load_example

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "train_teacher.py"
CONFIGS = REPO / "examples" / "configs"
TINY_CONFIG = CONFIGS / "tiny.json"  # the shipped tiny sizes


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("teacher")
    generate_dataset(root / "data", num_videos=3, num_frames=6, resolution=32, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def script():
    return load_example(SCRIPT)


def base_args(workspace: Path, stage: str, output: str, steps: int = 2) -> list[str]:
    return [
        "--stage", stage, "--train_data_dir", str(workspace / "data"), "--output_dir", str(workspace / output),
        "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", str(steps), "--report_to", "none",
        "--seed", "0",
    ]


def generate_in_teacher_mode(folder: Path) -> tuple[ReferenceLCMPipeline, torch.Tensor]:
    pipe = ReferenceLCMPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    guidance = {name: torch.rand(3, 3, 32, 32, generator=generator) for name in pipe.guidance_types}
    frames = pipe(torch.rand(3, 32, 32, generator=generator), guidance, num_inference_steps=2, guidance_scale=3.5,
                  generator=generator, output_type="pt").frames[0]
    return pipe, frames


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.clone() for key, value in module.state_dict().items()}


@pytest.fixture(scope="module")
def vae_output(workspace: Path) -> Path:
    args = base_args(workspace, "vae", "vae") + ["--model_config", str(TINY_CONFIG),
                                                 "--checkpointing_steps", "2", "--validation_steps", "2",
                                                 "--vae_crop_size", "16", "--vae_person_weight", "4"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                            env=environment, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return workspace / "vae"


@pytest.fixture(scope="module")
def image_output(workspace: Path, vae_output: Path, script) -> Path:
    script.main(base_args(workspace, "image", "image", steps=3) + [
        "--pretrained_model", str(vae_output), "--learning_rate", "1e-3", "--checkpointing_steps", "2",
        "--validation_steps", "2", "--validation_inference_steps", "2", "--validation_num_frames", "2"])
    return workspace / "image"


@pytest.fixture(scope="module")
def video_output(workspace: Path, image_output: Path, script) -> Path:
    script.main(base_args(workspace, "video", "video") + [
        "--pretrained_model", str(image_output), "--num_frames", "3", "--learning_rate", "1e-3",
        "--checkpointing_steps", "100", "--gradient_checkpointing"])
    return workspace / "video"


def test_vae_stage_writes_a_teacher_with_a_trained_vae(vae_output: Path):
    pipe, frames = generate_in_teacher_mode(vae_output)
    assert frames.shape == (3, 3, 32, 32) and bool(torch.isfinite(frames).all())
    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert {key: pipe.scheduler.config[key] for key in TEACHER_SCHEDULER_CONFIG} == TEACHER_SCHEDULER_CONFIG
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the data
    assert (vae_output / "checkpoint-2" / "model.safetensors").is_file()
    assert (vae_output / "validation" / "step-2" / "reconstruction.png").is_file()
    assert "teacher" in (vae_output / "README.md").read_text()
    logged = json.loads((vae_output / "logs" / "config.json").read_text())
    assert (logged["vae_crop_size"], logged["vae_person_weight"]) == (16, 4.0)  # person-centred crops, weighted


def test_vae_flags_are_checked(script, workspace: Path, capsys):
    for extra, message in ((["--vae_crop_size", "64"], "exceeds --resolution"),
                           (["--vae_person_weight", "-1"], "must be >= 0")):
        with pytest.raises(SystemExit):
            script.parse_args(base_args(workspace, "vae", "vae") + extra)
        assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(base_args(workspace, "image", "image") + ["--vae_person_weight", "2"])
    assert "are for --stage vae" in capsys.readouterr().err


@pytest.fixture(scope="module")
def subset_output(workspace: Path, vae_output: Path, script) -> Path:
    """An image-stage teacher trained a few steps with guidance-type dropout."""
    script.main(base_args(workspace, "image", "subset", steps=3) + [
        "--pretrained_model", str(vae_output), "--learning_rate", "1e-3", "--guidance_type_dropout", "0.5",
        "--checkpointing_steps", "100"])
    return workspace / "subset"


def test_a_model_trained_with_guidance_type_dropout_animates_from_a_skeleton_alone(
    workspace: Path, image_output: Path, subset_output: Path
):
    """The dropout is recorded with the model, its pipeline takes the skeleton alone (SynthDance dwpose maps), the
    distillation keeps it, and a model trained without it says how to get one that does."""
    assert "guidance_type_drop_fraction" in read_metrics(subset_output / "logs")[-1]
    pipe = ReferenceLCMPipeline.from_pretrained(subset_output)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.guidance_encoder.config.guidance_type_dropout == 0.5 and pipe.accepts_guidance_subsets
    assert "dwpose" in pipe.guidance_types and len(pipe.guidance_types) > 1
    video = workspace / "data" / sorted(path.name for path in (workspace / "data").iterdir() if path.is_dir())[0]
    skeletons = {"dwpose": read_guidance_folder(video, ["dwpose"], slice(0, 3))["dwpose"]}
    reference = Image.open(video / "images" / "0000.png")
    frames = pipe(reference, skeletons, num_inference_steps=2, guidance_scale=3.5,
                  generator=torch.Generator().manual_seed(0), output_type="pt").frames[0]
    assert frames.shape == (3, 3, 32, 32) and bool(torch.isfinite(frames).all())

    distilled = workspace / "subset-student"
    load_example(REPO / "examples" / "train_cosec_lcd.py").main([
        "--pretrained_teacher_model", str(subset_output), "--train_data_dir", str(workspace / "data"),
        "--output_dir", str(distilled), "--resolution", "32", "--train_batch_size", "2", "--max_train_steps", "1",
        "--report_to", "none", "--seed", "0"])
    student = ReferenceLCMPipeline.from_pretrained(distilled)
    student.set_progress_bar_config(disable=True)
    assert student.accepts_guidance_subsets and "guidance_type_drop_fraction" in read_metrics(distilled / "logs")[-1]
    frames = student(reference, skeletons, num_inference_steps=2, output_type="pt").frames[0]
    assert frames.shape == (3, 3, 32, 32) and bool(torch.isfinite(frames).all())

    full = ReferenceLCMPipeline.from_pretrained(image_output)
    assert not full.accepts_guidance_subsets
    with pytest.raises(ValueError, match="missing \\['depth'\\].*--guidance_type_dropout P"):
        full(reference, skeletons, num_inference_steps=2)


def test_guidance_type_dropout_is_checked(workspace: Path, script, capsys):
    with pytest.raises(SystemExit):
        script.parse_args(base_args(workspace, "vae", "vae") + ["--guidance_type_dropout", "0.5"])
    assert "--guidance_type_dropout is for --stage image and video" in capsys.readouterr().err
    with pytest.raises(ValueError, match="--guidance_type_dropout must be in \\[0, 1\\), got 1.0"):
        script.main(base_args(workspace, "image", "never") + ["--guidance_type_dropout", "1"])
    assert not (workspace / "never").exists()


def test_image_stage_trains_read_layers_only(vae_output: Path, image_output: Path):
    before = ReferenceLCMPipeline.from_pretrained(vae_output)
    pipe, frames = generate_in_teacher_mode(image_output)
    assert isinstance(pipe.denoising_unet, UNet2DConditionModel)
    assert frames.shape == (3, 3, 32, 32) and bool(torch.isfinite(frames).all())
    assert (image_output / "validation" / "step-2" / "sample-0.gif").is_file()
    assert [record["step"] for record in read_metrics(image_output / "logs")] == [1, 2, 3]
    unread = set(unread_reference_parameters(pipe.reference_unet))
    old, new = state(before.reference_unet), state(pipe.reference_unet)
    assert all(torch.equal(old[name], new[name]) for name in unread)
    assert any(not torch.equal(old[name], new[name]) for name in new if name not in unread)
    for name in ("vae", "image_encoder"):
        old, new = state(getattr(before, name)), state(getattr(pipe, name))
        assert all(torch.equal(old[key], new[key]) for key in old), name
    for name in ("denoising_unet", "guidance_encoder"):
        old, new = state(getattr(before, name)), state(getattr(pipe, name))
        assert any(not torch.equal(old[key], new[key]) for key in old), name


def test_image_stage_can_train_the_image_encoder(workspace: Path, vae_output: Path, script):
    script.main(base_args(workspace, "image", "image_clip", steps=1) + [
        "--pretrained_model", str(vae_output), "--learning_rate", "1e-3", "--train_image_encoder"])
    before = ReferenceLCMPipeline.from_pretrained(vae_output)
    after = ReferenceLCMPipeline.from_pretrained(workspace / "image_clip")
    old, new = state(before.image_encoder), state(after.image_encoder)
    assert any(not torch.equal(old[key], new[key]) for key in old)
    old, new = state(before.vae), state(after.vae)
    assert all(torch.equal(old[key], new[key]) for key in old)


@pytest.fixture(scope="module")
def image_encoder_output(workspace: Path, vae_output: Path, script) -> Path:
    script.main(base_args(workspace, "image_encoder", "image_encoder", steps=2) + [
        "--pretrained_model", str(vae_output), "--checkpointing_steps", "2", "--validation_steps", "2"])
    return workspace / "image_encoder"


def test_image_encoder_stage_trains_the_image_encoder_only(vae_output: Path, image_encoder_output: Path):
    before = ReferenceLCMPipeline.from_pretrained(vae_output)
    after = ReferenceLCMPipeline.from_pretrained(image_encoder_output)
    old, new = state(before.image_encoder), state(after.image_encoder)
    assert any(not torch.equal(old[key], new[key]) for key in old)
    for name in ("vae", "reference_unet", "denoising_unet", "guidance_encoder"):
        old, new = state(getattr(before, name)), state(getattr(after, name))
        assert all(torch.equal(old[key], new[key]) for key in old), name
    assert type(after.image_encoder).__name__ == "CLIPVisionModelWithProjection"  # the slot's class: no head shipped
    # the checkpoint holds the colour head too (a resumed run continues it); validation paints predicted colours
    checkpoint = load_file(image_encoder_output / "checkpoint-2" / "model.safetensors")
    assert "head.weight" in checkpoint and any(key.startswith("image_encoder.") for key in checkpoint)
    assert (image_encoder_output / "validation" / "step-2" / "colours.png").is_file()
    assert [row["step"] for row in read_metrics(image_encoder_output / "logs")] == [1, 2]


def test_image_encoder_stage_needs_synthdance_part_labels_at_their_size(workspace: Path, vae_output: Path, script,
                                                                        tmp_path: Path, capsys):
    data = tmp_path / "data"
    shutil.copytree(workspace / "data", data)
    args = base_args(workspace, "image_encoder", "refused") + ["--pretrained_model", str(vae_output),
                                                              "--train_data_dir", str(data)]
    with pytest.raises(ValueError, match=r"pass --resolution 32"):
        script.main(args + ["--resolution", "16"])
    video = sorted(path for path in data.iterdir() if path.is_dir())[1]
    (video / "meta.json").unlink()  # no longer recognisably SynthDance: its semantic colours are not our labels
    with pytest.raises(ValueError, match=rf"{video.name}'? of --train_data_dir is not a SynthDance video"):
        script.main(args)
    assert not (workspace / "refused").exists()
    for extra, message in ((["--num_frames", "2"], "--num_frames must be 1"),
                           (["--guidance_type_dropout", "0.5"], "stage image_encoder reads no guidance")):
        with pytest.raises(SystemExit):
            script.parse_args(args + extra)
        assert message in capsys.readouterr().err


def test_person_weighted_image_stage_reads_masks_beside_the_guidance(workspace: Path, vae_output: Path, script,
                                                                    capsys):
    script.main(base_args(workspace, "image", "image_person", steps=1) + [
        "--pretrained_model", str(vae_output), "--person_loss_weight", "4"])
    assert json.loads((workspace / "image_person" / "logs" / "config.json").read_text())["person_loss_weight"] == 4.0
    assert ReferenceLCMPipeline.from_pretrained(workspace / "image_person").guidance_types == tuple(
        json.loads(TINY_CONFIG.read_text())["guidance_types"])  # the mask stays a loss weight, not a guidance type
    for stage, extra, message in (("vae", ["--person_loss_weight", "2"], "is for --stage image and video"),
                                  ("image", ["--person_loss_weight", "-1"], "must be >= 0")):
        with pytest.raises(SystemExit):
            script.parse_args(base_args(workspace, stage, "unused") + extra)
        assert message in capsys.readouterr().err


def test_video_stage_trains_only_new_motion_modules(image_output: Path, video_output: Path):
    before = ReferenceLCMPipeline.from_pretrained(image_output)
    pipe, frames = generate_in_teacher_mode(video_output)
    assert isinstance(pipe.denoising_unet, UNetMotionModel)
    assert frames.shape == (3, 3, 32, 32) and bool(torch.isfinite(frames).all())
    spatial, motion = state(before.denoising_unet), state(pipe.denoising_unet)
    assert all(torch.equal(spatial[key], value) for key, value in motion.items() if not is_motion_key(key))
    assert any(not torch.equal(value, torch.zeros_like(value)) for key, value in motion.items()
               if is_motion_key(key) and "proj_out" in key)  # zero-initialised, then trained
    for name in ("reference_unet", "guidance_encoder", "vae"):
        old, new = state(getattr(before, name)), state(getattr(pipe, name))
        assert all(torch.equal(old[key], new[key]) for key in old), name
    assert (video_output / "motion_adapter" / "config.json").is_file()


def test_from_scratch_both_unets_start_equal(workspace: Path, script):
    """As Champ's two UNets both start from SD1.5, a from-scratch R-UNet starts as a copy of the D-UNet."""
    pipe = script.build_pipeline(script.parse_args(base_args(workspace, "vae", "unused") + [
        "--model_config", str(TINY_CONFIG)]))
    reference, denoising = state(pipe.reference_unet), state(pipe.denoising_unet)
    assert reference.keys() == denoising.keys()
    assert all(torch.equal(reference[key], denoising[key]) for key in reference)


def test_shipped_default_config_has_the_bundled_teachers_sizes(script, tmp_path: Path):
    """examples/configs/default.json through the script (stage vae's new components, stage video's new motion
    adapter) gives every component of models/teacher its saved config; only trained values differ."""
    args = script.parse_args(["--stage", "vae", "--train_data_dir", str(tmp_path), "--model_config",
                              str(CONFIGS / "default.json")])
    pipe = inflate(script.build_pipeline(args), model_config=args.model_config)  # what stage video then does
    # guidance_type_dropout: set by the image stage's --guidance_type_dropout, not by the model config
    trained_or_metadata = {"scaling_factor", "architectures", "dtype", "transformers_version", "guidance_type_dropout"}
    for name, component in pipe.components.items():
        folder = REPO / "models" / "teacher" / name
        saved_file = next(folder / file for file in ("config.json", "scheduler_config.json", "preprocessor_config.json")
                          if (folder / file).is_file())
        saved = json.loads(saved_file.read_text())
        config = component if hasattr(component, "to_json_string") else component.config  # processor, transformers
        built = json.loads(config.to_json_string() if hasattr(config, "to_json_string") else json.dumps(dict(config)))
        differences = {key: (built[key], saved[key]) for key in saved.keys() & built.keys()
                       if not key.startswith("_") and key not in trained_or_metadata and built[key] != saved[key]}
        assert not differences, (name, differences)
    # and the pipeline's own settings (model_index.json), e.g. the reference locality prior it was trained with
    saved_index = json.loads((REPO / "models" / "teacher" / "model_index.json").read_text())
    assert pipe.settings == {name: saved_index.get(name) for name in pipe.settings}


def test_the_default_config_builds_32_by_32_latents_and_a_convolution_only_top_level(script, tmp_path: Path):
    """examples/configs/default.json (the bundled model's sizes): the sizes its measurements were taken at."""
    args = script.parse_args(["--stage", "vae", "--train_data_dir", str(tmp_path), "--model_config",
                              str(CONFIGS / "default.json")])
    pipe = script.build_pipeline(args)
    assert pipe.vae.config.latent_channels == 16 and pipe.vae.config.sample_size == 128
    assert 128 // 2 ** (len(pipe.vae.config.block_out_channels) - 1) == 32
    for unet in (pipe.reference_unet, pipe.denoising_unet):
        assert list(unet.config.block_out_channels) == [32, 48, 96, 96]
        assert [hasattr(block, "attentions") for block in unet.down_blocks] == [False, True, True, False]
    assert pipe.image_encoder.config.projection_dim == pipe.denoising_unet.config.cross_attention_dim == 32


def test_model_config_errors_name_the_argument(workspace: Path, script, tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("unet_block_out_channels: [8, 16]\nwidth: 3\n")
    with pytest.raises(ValueError, match="--model_config.*width"):
        script.main(base_args(workspace, "image", "bad") + ["--model_config", str(bad)])
    with pytest.raises(FileNotFoundError, match="--model_config"):
        script.main(base_args(workspace, "image", "bad") + ["--model_config", str(tmp_path / "missing.json")])


def test_image_stage_resumes_exactly(workspace: Path, vae_output: Path, image_output: Path, script):
    resumed = workspace / "image-resumed"
    shutil.copytree(image_output / "checkpoint-2", resumed / "checkpoint-2")
    script.main(base_args(workspace, "image", "image-resumed", steps=3) + [
        "--pretrained_model", str(vae_output), "--learning_rate", "1e-3", "--resume_from_checkpoint", "latest"])
    expected = ReferenceLCMPipeline.from_pretrained(image_output)
    actual = ReferenceLCMPipeline.from_pretrained(resumed)
    for name in ("denoising_unet", "reference_unet", "guidance_encoder"):
        old, new = state(getattr(expected, name)), state(getattr(actual, name))
        assert all(torch.equal(old[key], new[key]) for key in old), name


def test_image_stage_from_a_motion_teacher_keeps_its_motion_modules(workspace: Path, script):
    source = workspace / "motion-teacher"
    components = build_components(motion=True, scheduler="ddim")
    ReferenceLCMPipeline(**components, motion_norm_mode="frame").save_pretrained(source)
    script.main(base_args(workspace, "image", "from-motion", steps=1) + [
        "--pretrained_model", str(source), "--learning_rate", "1e-3", "--checkpointing_steps", "100"])
    pipe, frames = generate_in_teacher_mode(workspace / "from-motion")
    assert isinstance(pipe.denoising_unet, UNetMotionModel) and pipe.config.motion_norm_mode == "frame"
    old, new = state(components["denoising_unet"]), state(pipe.denoising_unet)
    assert all(torch.equal(old[key], new[key]) for key in old if is_motion_key(key))
    assert any(not torch.equal(old[key], new[key]) for key in old if not is_motion_key(key))


def test_sd15_style_folders_replace_components(workspace: Path, script, tmp_path: Path):
    base = build_components(motion=False, scheduler="ddim")
    wider = UNet2DConditionModel(**factory.unet_2d_config(8, block_out_channels=(16, 32), cross_attention_dim=16))
    wider.save_pretrained(tmp_path / "sd" / "unet")
    base["vae"].save_pretrained(tmp_path / "sd" / "vae")
    base["image_encoder"].save_pretrained(tmp_path / "clip" / "image_encoder")
    base["feature_extractor"].save_pretrained(tmp_path / "clip" / "feature_extractor")
    args = script.parse_args(base_args(workspace, "image", "unused") + [
        "--pretrained_unet_path", str(tmp_path / "sd"), "--pretrained_vae_path", str(tmp_path / "sd"),
        "--image_encoder_path", str(tmp_path / "clip" / "image_encoder")])
    pipe = script.build_pipeline(args)
    assert tuple(pipe.denoising_unet.config.block_out_channels) == (16, 32)
    assert tuple(pipe.reference_unet.config.block_out_channels) == (16, 32)
    assert pipe.guidance_encoder.config.guidance_embedding_channels == 16  # rebuilt to match
    assert isinstance(pipe.scheduler, DDIMScheduler)
    UNet2DConditionModel(**factory.unet_2d_config(8, cross_attention_dim=32)).save_pretrained(tmp_path / "unet-32")
    with pytest.raises(ValueError, match="--image_encoder_path"):
        script.build_pipeline(script.parse_args(base_args(workspace, "image", "unused") + [
            "--pretrained_unet_path", str(tmp_path / "unet-32")]))
    with pytest.raises(FileNotFoundError, match="--pretrained_vae_path"):
        script.build_pipeline(script.parse_args(base_args(workspace, "image", "unused") + [
            "--pretrained_vae_path", str(tmp_path / "clip")]))


def test_lr_schedule_is_the_same_with_two_processes(workspace: Path, tmp_path: Path):
    """accelerate steps a prepared LR scheduler once per process: warm-up and decay must not run twice as fast."""
    arguments = [*base_args(workspace, "vae", "unused", steps=4), "--model_config", str(TINY_CONFIG),
                 "--train_batch_size", "1", "--lr_scheduler", "linear", "--lr_warmup_steps", "2",
                 "--checkpointing_steps", "100"]
    environment = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1"}  # gloo on the CPU
    learning_rates = {}
    for processes in (1, 2):
        output = tmp_path / f"processes-{processes}"
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
        result = subprocess.run([*launcher, str(SCRIPT), *arguments, "--output_dir", str(output)], cwd=REPO,
                                env=environment, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        records = read_metrics(output / "logs")
        assert [record["step"] for record in records] == [1, 2, 3, 4]  # logged once: the processes form one run
        learning_rates[processes] = [record["lr"] for record in records]
    assert learning_rates[1] == pytest.approx([5e-5, 1e-4, 5e-5, 0.0])
    assert learning_rates[2] == learning_rates[1]
