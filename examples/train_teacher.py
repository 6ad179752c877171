#!/usr/bin/env python
"""Train or fine-tune a ReferenceNet teacher (Champ's recipe): VAE, then image stage, then motion stage.

Every stage writes a complete teacher ``ReferenceLCMPipeline`` folder (DDIM, v-prediction, zero terminal SNR, trailing
timesteps; sample with ~20 steps and ``guidance_scale`` 3.5) that the next stage, ``train_cosec_lcd.py`` and
``ReferenceLCMPipeline.from_pretrained`` take:

    # from scratch on SynthDance (``referencelcm synth``), with component sizes from a JSON/YAML file:
    # examples/configs/default.json (the bundled model's sizes) or tiny.json (the tests' sizes)
    python examples/train_teacher.py --stage vae --model_config examples/configs/default.json --train_data_dir DATA \\
        --output_dir out/vae
    python examples/train_teacher.py --stage image --pretrained_model out/vae --train_data_dir DATA \\
        --output_dir out/image
    python examples/train_teacher.py --stage video --pretrained_model out/image --train_data_dir DATA \\
        --output_dir out/teacher --num_frames 16 --model_config examples/configs/default.json  # motion_* sizes
    # from SD1.5-style weights (Champ's starting point)
    accelerate launch examples/train_teacher.py --stage image --pretrained_unet_path SD15 --pretrained_vae_path VAE \\
        --image_encoder_path CLIP_IMAGE_ENCODER --train_data_dir DATA --output_dir out/image --resolution 512

``vae``: trains the pipeline's ``AutoencoderKL`` on the dataset's frames (reconstruction + KL), then sets its
``scaling_factor``. ``image``: single frames; D-UNet, R-UNet (less its unread layers) and guidance encoder.
``video``: clips; the D-UNet is inflated to a ``UNetMotionModel`` with a new (zero-initialised) or loaded
``MotionAdapter`` and only the motion modules train.
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, set_seed
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from einops import rearrange
from PIL import Image
from tqdm.auto import tqdm
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from referencelcm import MultiGuidanceEncoder, ReferenceLCMPipeline
from referencelcm.arguments import check_output_folder
from referencelcm.data.layout import MASK_FOLDER, list_videos
from referencelcm.models.guidance_encoder import check_guidance_type_dropout
from referencelcm.pipelines import factory
from referencelcm.pipelines.loading import check_pipeline_argument, load_pipeline
from referencelcm.training.checkpointing import (
    check_finite_loss,
    resolve_resume_checkpoint,
    resume,
    save_checkpoint,
    step_generator,
)
from referencelcm.training.data import ReferenceVideoDataset
from referencelcm.training.export import (
    portable_name,
    push_folder_to_hub,
    run_validation,
    save_student_pipeline,
    validation_samples,
)
from referencelcm.training.script_support import (
    build_lr_scheduler,
    check_data_root,
    check_model_folder,
    check_numbers,
    training_dataloader,
)
from referencelcm.training.teacher import (
    ReferenceNet,
    TeacherConfig,
    TeacherModels,
    TeacherTrainingStep,
    set_trainable,
)
from referencelcm.training.tracking import trackers
from referencelcm.training.unets import motion_unet_with_spatial_weights, spatial_unet_from_motion
from referencelcm.training.vae import VAEReconstruction, latent_scaling_factor, person_crops, vae_loss

logger = get_logger(__name__)
STAGES = ("vae", "image", "video")
STAGE_DEFAULTS = {
    "vae": dict(learning_rate=1e-4, max_train_steps=20000, num_frames=1),
    "image": dict(learning_rate=1e-5, max_train_steps=30000, num_frames=1),
    "video": dict(learning_rate=1e-5, max_train_steps=10000, num_frames=16),
}
# --model_config keys: build_components' arguments. The stage decides these three (2-D or motion D-UNet, DDIM, no
# guidance-scale embedding for a teacher); a config may name them, they are then overruled with a warning.
STAGE_DECIDED_KEYS = ("motion", "scheduler", "time_cond_proj_dim")
MODEL_CONFIG_KEYS = tuple(inspect.signature(factory.build_components).parameters)
# Components holding trained parameters per stage (which of their parameters: teacher.set_trainable).
TRAINED_COMPONENTS = {
    "vae": ("vae",),
    "image": ("denoising_unet", "reference_unet", "guidance_encoder"),
    "video": ("denoising_unet",),
}
CHAMP_GUIDANCE_WIDTHS = (16, 32, 96, 256)
TEACHER_TAGS = ("referencelcm", "human-animation", "reference-net", "teacher")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--stage", choices=STAGES, required=True)
    add("--model_config", default=None, help="JSON/YAML of component sizes (build_components' arguments), e.g. "
        "examples/configs/default.json; with --pretrained_model only its motion_* keys apply (a new motion adapter).")
    add("--pretrained_model", default=None, help="Pipeline folder or Hub id to start from (previous stage).")
    add("--pretrained_unet_path", default=None, help="SD1.5-style folder (or its unet/) for both UNets.")
    add("--pretrained_vae_path", default=None, help="AutoencoderKL folder (or a folder with vae/).")
    add("--image_encoder_path", default=None, help="CLIPVisionModelWithProjection folder (or with image_encoder/).")
    add("--motion_adapter_path", default=None, help="Stage video: MotionAdapter folder; default a new one.")
    add("--train_data_dir", required=True, help="Champ-layout root (e.g. `referencelcm synth`).")
    add("--output_dir", default="teacher-output")
    add("--resolution", type=int, default=512)
    add("--num_frames", type=int, default=None, help="Frames per item: default 1 (vae, image; frames train "
        "independently), 16 (video).")
    add("--frame_stride", type=int, default=1)
    add("--uncond_ratio", type=float, default=0.1, help="Per-sample dropout of image embeds and reference.")
    add("--guidance_type_dropout", type=float, default=None, help="Stages image, video: drop each guidance type "
        "per sample with this probability (its features zeroed), so the model animates from any non-empty subset of "
        "its types (e.g. a skeleton alone); recorded in the guidance encoder's config. Default: the starting "
        "model's (0 for new components).")
    add("--snr_gamma", type=float, default=5.0, help="Min-SNR-γ; 0 turns the weighting off.")
    add("--noise_offset", type=float, default=0.05)
    add("--kl_weight", type=float, default=1e-6, help="Stage vae: weight of the KL term.")
    add("--train_image_encoder", action="store_true", help="Stage image: train the CLIP image encoder with the "
        "UNets (for models trained from scratch; Champ keeps its pretrained CLIP frozen).")
    add("--vae_crop_size", type=int, default=0, help="Stage vae: train on square crops of this size, centred on the "
        "person (mask/ folder) 3 times in 4; 0 trains on whole frames.")
    add("--vae_person_weight", type=float, default=0.0, help="Stage vae: person pixels (mask/ folder) count 1 + this "
        "many times in the reconstruction loss.")
    add("--learning_rate", type=float, default=None, help="Default 1e-4 (vae), 1e-5 (image, video).")
    add("--lr_scheduler", default="constant")
    add("--lr_warmup_steps", type=int, default=0)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--max_grad_norm", type=float, default=1.0)
    add("--train_batch_size", type=int, default=4)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--max_train_steps", type=int, default=None)
    add("--dataloader_num_workers", type=int, default=0)
    add("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    add("--gradient_checkpointing", action="store_true")
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder.")
    add("--validation_steps", type=int, default=None, help="Write validation videos every N steps.")
    add("--num_validation_videos", type=int, default=1)
    add("--validation_num_frames", type=int, default=4)
    add("--validation_inference_steps", type=int, default=20)
    add("--validation_guidance_scale", type=float, default=3.5)
    add("--report_to", default="tensorboard", help="Trackers, comma-separated, or 'none'; logs/metrics.jsonl "
        "is always written.")
    add("--logging_dir", default="logs")
    add("--seed", type=int, default=0)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None)
    add("--hub_token", default=None)
    args = parser.parse_args(argv)
    for name, value in STAGE_DEFAULTS[args.stage].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.stage == "video" and args.num_frames < 2:
        parser.error(f"--stage video needs --num_frames >= 2, got {args.num_frames}.")
    if args.motion_adapter_path is not None and args.stage != "video":
        parser.error("--motion_adapter_path is for --stage video.")
    if args.vae_crop_size < 0 or args.vae_person_weight < 0:
        parser.error(f"--vae_crop_size and --vae_person_weight must be >= 0, got {args.vae_crop_size} and "
                     f"{args.vae_person_weight}.")
    if (args.vae_crop_size or args.vae_person_weight) and args.stage != "vae":
        parser.error("--vae_crop_size and --vae_person_weight are for --stage vae.")
    if args.train_image_encoder and args.stage != "image":
        parser.error("--train_image_encoder is for --stage image.")
    if args.guidance_type_dropout is not None and args.stage == "vae":
        parser.error("--guidance_type_dropout is for --stage image and video (the VAE reads no guidance).")
    if args.vae_crop_size > args.resolution:
        parser.error(f"--vae_crop_size {args.vae_crop_size} exceeds --resolution {args.resolution}.")
    return args


def check_arguments(args) -> None:
    """Every number and path, before anything is loaded or written to ``--output_dir``."""
    check_numbers(args, at_least_one=("resolution", "num_frames", "frame_stride", "train_batch_size",
                                      "gradient_accumulation_steps", "max_train_steps", "checkpointing_steps",
                                      "checkpoints_total_limit", "validation_steps", "num_validation_videos",
                                      "validation_num_frames", "validation_inference_steps"),
                  non_negative=("learning_rate", "lr_warmup_steps", "dataloader_num_workers", "snr_gamma",
                                "kl_weight", "max_grad_norm"))
    if not 0 <= args.uncond_ratio <= 1:
        raise ValueError(f"--uncond_ratio must be in [0, 1], got {args.uncond_ratio}.")
    if args.guidance_type_dropout is not None:
        check_guidance_type_dropout("--guidance_type_dropout", args.guidance_type_dropout)
    check_output_folder("--output_dir", args.output_dir)
    if args.pretrained_model is not None:
        check_pipeline_argument(args.pretrained_model, "--pretrained_model")
    for flag, path, subfolder in (("--pretrained_unet_path", args.pretrained_unet_path, "unet"),
                                  ("--pretrained_vae_path", args.pretrained_vae_path, "vae"),
                                  ("--image_encoder_path", args.image_encoder_path, "image_encoder"),
                                  ("--motion_adapter_path", args.motion_adapter_path, None)):
        if path is not None:
            check_model_folder(flag, path, subfolder)
    if args.model_config is not None:
        load_model_config(args.model_config)
    check_data_root("--train_data_dir", args.train_data_dir)
    resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)


# -- starting point ----------------------------------------------------------------------------------------------------


def load_model_config(path: str | os.PathLike) -> dict:
    """Component sizes from a JSON or YAML file: keys are ``build_components`` arguments (see MODEL_CONFIG_KEYS)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`--model_config` {str(path)!r} is not a file.")
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        sizes = yaml.safe_load(text)
    else:
        sizes = json.loads(text)
    if not isinstance(sizes, dict):
        raise ValueError(f"`--model_config` {str(path)!r} must hold a mapping, got {type(sizes).__name__}.")
    unknown = sorted(set(sizes) - set(MODEL_CONFIG_KEYS))
    if unknown:
        raise ValueError(f"`--model_config` has unknown keys {unknown}; known: {list(MODEL_CONFIG_KEYS)}.")
    overruled = sorted(set(sizes) & set(STAGE_DECIDED_KEYS))
    if overruled:
        logger.warning(f"--model_config: {overruled} are decided by --stage (2-D or motion D-UNet, DDIM); ignored.")
    return {key: value for key, value in sizes.items() if key not in STAGE_DECIDED_KEYS}


def load_component(cls, path: str, subfolder: str, argument: str):
    """``cls`` from ``path/subfolder`` (an SD1.5-style model folder) or from ``path`` itself."""
    return cls.from_pretrained(check_model_folder(argument, path, subfolder))


def matching_guidance_encoder(guidance_types, denoising_unet, vae) -> MultiGuidanceEncoder:
    """A new guidance encoder for these UNet widths and VAE factor (Champ's widths for a 4-level VAE)."""
    vae_depth = len(vae.config.block_out_channels)
    first_width = denoising_unet.config.block_out_channels[0]
    widths = CHAMP_GUIDANCE_WIDTHS if vae_depth == len(CHAMP_GUIDANCE_WIDTHS) and first_width >= 64 else (
        (first_width,) + (2 * first_width,) * (vae_depth - 2) + (4 * first_width,))
    return MultiGuidanceEncoder(tuple(guidance_types), block_out_channels=widths,
                                guidance_embedding_channels=first_width,
                                attention_num_heads=8 if first_width >= 64 else 4)


def build_pipeline(args) -> ReferenceLCMPipeline:
    """The starting teacher: ``--pretrained_model``, or new components sized by ``--model_config``; SD1.5-style
    folders then replace UNets, VAE and image encoder. The scheduler becomes DDIM on the saved (or Champ's) schedule."""
    if args.pretrained_model is not None:
        pipe = load_pipeline(args.pretrained_model, "--pretrained_model")
        components, motion_norm_mode = dict(pipe.components), pipe.config.motion_norm_mode
        unused = [key for key in (load_model_config(args.model_config) if args.model_config else {})
                  if not key.startswith("motion_")]
        if unused:
            logger.warning(f"--pretrained_model gives the components; --model_config keys {unused} are not used "
                           "(only motion_* keys apply, to a new motion adapter in stage video).")
    else:
        sizes = load_model_config(args.model_config) if args.model_config else {}
        sizes.setdefault("seed", args.seed)
        components = factory.build_components(**sizes, motion=False, scheduler="ddim")
        # Champ starts both UNets from the same SD1.5 weights, so from step 0 the D-UNet's attention reads reference
        # tokens from its own feature space. From scratch, start them equal too (measured on the bundled build: with
        # independent inits the teacher learnt pose but hardly any appearance from the reference).
        components["reference_unet"].load_state_dict(components["denoising_unet"].state_dict())
        motion_norm_mode = "video"
    replaced = False
    if args.pretrained_unet_path is not None:
        for name in ("reference_unet", "denoising_unet"):
            components[name] = load_component(UNet2DConditionModel, args.pretrained_unet_path, "unet",
                                              "--pretrained_unet_path")
        replaced = True
    if args.pretrained_vae_path is not None:
        components["vae"] = load_component(AutoencoderKL, args.pretrained_vae_path, "vae", "--pretrained_vae_path")
        replaced = True
    if args.image_encoder_path is not None:
        components["image_encoder"] = load_component(CLIPVisionModelWithProjection, args.image_encoder_path,
                                                     "image_encoder", "--image_encoder_path")
        folder = Path(args.image_encoder_path)
        for candidate in (folder, folder.parent / "feature_extractor", folder / "feature_extractor"):
            if (candidate / "preprocessor_config.json").is_file():
                components["feature_extractor"] = CLIPImageProcessor.from_pretrained(candidate)
                break
    guidance_encoder = components["guidance_encoder"]
    if replaced and (
        guidance_encoder.config.guidance_embedding_channels != components["denoising_unet"].config.block_out_channels[0]
        or guidance_encoder.downsample_factor != 2 ** (len(components["vae"].config.block_out_channels) - 1)
    ):
        components["guidance_encoder"] = matching_guidance_encoder(
            guidance_encoder.config.guidance_types, components["denoising_unet"], components["vae"])
    embedding_dim = components["image_encoder"].config.projection_dim
    if embedding_dim != components["denoising_unet"].config.cross_attention_dim:
        raise ValueError(
            f"The image encoder's projection_dim ({embedding_dim}) must equal the UNets' cross_attention_dim "
            f"({components['denoising_unet'].config.cross_attention_dim}); give a matching --image_encoder_path "
            "(e.g. SD image variations' image_encoder for SD1.5 UNets)."
        )
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config)
    if args.pretrained_model is None and args.pretrained_vae_path is None and args.stage != "vae":
        logger.warning("No trained VAE given (--pretrained_vae_path or a --pretrained_model folder): the teacher "
                       "trains on a randomly initialised one. Run --stage vae first for a useful latent space.")
    return ReferenceLCMPipeline(**components, motion_norm_mode=motion_norm_mode)


def with_denoising_unet(pipe: ReferenceLCMPipeline, unet: torch.nn.Module) -> ReferenceLCMPipeline:
    """The same components with another D-UNet (reference hooks and guidance injection installed anew)."""
    components = dict(pipe.components, denoising_unet=unet)
    return ReferenceLCMPipeline(**components, motion_norm_mode=pipe.config.motion_norm_mode)


def stage_pipeline(args) -> tuple[ReferenceLCMPipeline, UNetMotionModel | None]:
    """The starting point in the stage's form: stage video inflates the D-UNet; stage image trains the 2-D part of a
    motion D-UNet, which is returned too so its motion modules can be put back on save. ``--guidance_type_dropout``
    goes into the guidance encoder's config, where the training step (and later the distillation) reads it."""
    pipe = build_pipeline(args)
    if args.guidance_type_dropout is not None:
        pipe.guidance_encoder.register_to_config(guidance_type_dropout=args.guidance_type_dropout)
    if args.stage == "video":
        return inflate(pipe, args), None
    if args.stage == "image" and isinstance(pipe.denoising_unet, UNetMotionModel):
        return with_denoising_unet(pipe, spatial_unet_from_motion(pipe.denoising_unet)), pipe.denoising_unet
    return pipe, None


def inflate(pipe: ReferenceLCMPipeline, args) -> ReferenceLCMPipeline:
    """Stage video: the D-UNet as a ``UNetMotionModel`` (loaded adapter, the existing motion modules, or a new
    zero-initialised adapter sized by ``--model_config``'s ``motion_*`` keys)."""
    unet = pipe.denoising_unet
    if isinstance(unet, UNetMotionModel) and args.motion_adapter_path is None:
        return pipe  # continue training its motion modules
    spatial = spatial_unet_from_motion(unet) if isinstance(unet, UNetMotionModel) else unet
    if args.motion_adapter_path is not None:
        adapter = MotionAdapter.from_pretrained(check_model_folder("--motion_adapter_path", args.motion_adapter_path))
    else:
        sizes = load_model_config(args.model_config) if args.model_config else {}
        adapter = factory.build_motion_adapter(spatial, **{key: value for key, value in sizes.items()
                                                           if key.startswith("motion_")})
    return with_denoising_unet(pipe, UNetMotionModel.from_unet2d(spatial, adapter))


def trainable_network(args, pipe: ReferenceLCMPipeline, device: torch.device, weight_dtype: torch.dtype):
    """Freeze what the stage does not train (:func:`set_trainable`), move every model to ``device`` (frozen ones in
    ``weight_dtype``), turn on gradient checkpointing; returns the one module whose ``forward`` uses every trained
    parameter (:class:`VAEReconstruction` or :class:`ReferenceNet`), for ``accelerator.prepare``."""
    pipe.set_progress_bar_config(disable=True)
    models = TeacherModels(pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet,
                           pipe.guidance_encoder)
    if args.stage == "vae":
        for model in (pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet, pipe.guidance_encoder):
            model.requires_grad_(False)
        pipe.vae.requires_grad_(True)
    else:
        set_trainable(models, args.stage, train_image_encoder=args.train_image_encoder)
    trained = TRAINED_COMPONENTS[args.stage] + (("image_encoder",) if args.train_image_encoder else ())
    for name, model in pipe.components.items():
        if isinstance(model, torch.nn.Module):
            model.to(device)
            if name not in trained and weight_dtype != torch.float32:
                model.to(dtype=weight_dtype)
            model.train(name in trained)
            if args.gradient_checkpointing and name in trained and model._supports_gradient_checkpointing:
                model.enable_gradient_checkpointing()
    if args.stage == "vae":
        return VAEReconstruction(pipe.vae)
    return ReferenceNet(pipe.reference_unet, pipe.denoising_unet, pipe.guidance_encoder, pipe.image_encoder)


def stage_maps(args, pipe: ReferenceLCMPipeline) -> tuple[str, ...]:
    """The maps a stage reads beside the frames: the guidance types, or for stage vae only the person masks (when
    every video has them; --vae_person_weight needs them)."""
    if args.stage != "vae":
        return pipe.guidance_types
    if all((video / MASK_FOLDER).is_dir() for video in list_videos(args.train_data_dir)):
        return (MASK_FOLDER,)
    if args.vae_person_weight:
        raise FileNotFoundError(f"`--vae_person_weight` needs a {MASK_FOLDER}/ folder in every video of "
                                f"`--train_data_dir` {args.train_data_dir!r}.")
    return pipe.guidance_types


# -- losses and validation per stage -----------------------------------------------------------------------------------


def vae_stage_loss(vae, network, args):
    """Stage vae's step: frames (or person-centred crops of ``--vae_crop_size``) through the VAE, person pixels
    weighted by ``--vae_person_weight`` (masks from the batch's ``mask`` maps when the dataset reads them)."""
    def compute(batch, generator):
        pixels = rearrange(batch["target"], "b c f h w -> (b f) c h w").to(vae.device)
        masks = torch.zeros(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        if MASK_FOLDER in batch["guidance"]:
            masks = rearrange(batch["guidance"][MASK_FOLDER][:, 0] > 0.5, "b f h w -> (b f) h w").to(pixels.device)
        if args.vae_crop_size:
            pixels, masks = person_crops(pixels, masks, args.vae_crop_size, generator)
        return vae_loss(vae, pixels, args.kl_weight, generator, reconstruction_model=network, masks=masks,
                        person_weight=args.vae_person_weight)
    return compute


@torch.no_grad()
def save_reconstructions(vae, samples: list[dict], output_dir: str, step: int) -> Path:
    """Stage vae validation: validation references and their reconstructions side by side in one PNG."""
    references = torch.stack([sample["reference_image"] for sample in samples]).to(vae.device, vae.dtype) * 2 - 1
    reconstructions = vae.decode(vae.encode(references).latent_dist.mode()).sample
    grid = torch.cat([torch.cat(list(references), dim=2), torch.cat(list(reconstructions), dim=2)], dim=1)
    path = Path(output_dir) / "validation" / f"step-{step}" / "reconstruction.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    array = ((grid.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    Image.fromarray(array).save(path)
    return path


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_arguments(args)

    # 1. Accelerator, logging, seed (nothing is written to --output_dir before step 6)
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        # stage image: a batch whose samples all drop the reference leaves the R-UNet without gradients
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=args.stage == "image")],
        log_with=trackers(args.report_to, logging_dir, f"referencelcm-teacher-{args.stage}"),
        project_config=ProjectConfiguration(args.output_dir, logging_dir=logging_dir),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 2. Models: the starting point in the stage's form, and what trains
    pipe, motion_source = stage_pipeline(args)
    network = trainable_network(args, pipe, accelerator.device, weight_dtype)
    parameters = [parameter for parameter in network.parameters() if parameter.requires_grad]

    # 3. Data: single frames (vae, image) or clips (video), order a pure function of (seed, epoch)
    # Stage vae sees frames at their own size: a random crop resized back would blur what it must learn to keep.
    dataset, sampler, dataloader = training_dataloader(args, pipe, num_references=1,
                                                       guidance_types=stage_maps(args, pipe),
                                                       random_crop=args.stage != "vae")

    # 4. Optimiser, LR schedule, accelerate
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = build_lr_scheduler(args.lr_scheduler, optimizer, args.lr_warmup_steps, args.max_train_steps,
                                      accelerator.num_processes)
    network, optimizer, lr_scheduler, dataloader = accelerator.prepare(network, optimizer, lr_scheduler, dataloader)

    # 5. The step: VAE reconstruction, or the teacher's min-SNR v-prediction loss
    if args.stage == "vae":
        compute_loss = vae_stage_loss(pipe.vae, network, args)
    else:
        config = TeacherConfig(uncond_ratio=args.uncond_ratio, snr_gamma=args.snr_gamma or None,
                               noise_offset=args.noise_offset)
        models = TeacherModels(pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet,
                               pipe.guidance_encoder)
        compute_loss = TeacherTrainingStep(models, pipe.scheduler, config, network).step

    # 6. Resume, output folder, trackers, validation samples
    global_step = resume(accelerator, args.output_dir, args.resume_from_checkpoint)
    if global_step:
        logger.info(f"Resumed from {args.resume_from_checkpoint} at step {global_step}.")
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        accelerator.init_trackers(f"referencelcm-teacher-{args.stage}", config={
            key: value for key, value in vars(args).items() if isinstance(value, (int, float, str, bool))})
    validation = []
    if args.validation_steps and accelerator.is_main_process:
        validation = validation_samples(args.train_data_dir, args.resolution, args.validation_num_frames,
                                        args.num_validation_videos, pipe.guidance_types, pipe.feature_extractor,
                                        args.seed)

    # 7. Training loop
    micro_step = global_step * args.gradient_accumulation_steps
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc=f"{args.stage} steps",
                    disable=not accelerator.is_local_main_process)
    while global_step < args.max_train_steps:
        epoch, skip = divmod(micro_step, len(dataloader))
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(dataloader, skip) if skip else dataloader:
            with accelerator.accumulate(network), accelerator.autocast():
                output = compute_loss(batch, step_generator(args.seed, accelerator.process_index, micro_step))
                check_finite_loss(output.loss.detach(), global_step + 1, output.terms)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(parameters, args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            micro_step += 1
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{output.terms['loss']:.4g}")
            accelerator.log({**output.terms, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
            if validation and global_step % args.validation_steps == 0:
                validate(args, pipe, validation, global_step, accelerator)
            if global_step >= args.max_train_steps:
                break

    # 8. Save the teacher pipeline, push
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_output(args, pipe, dataset, motion_source)
    accelerator.end_training()


def validate(args, pipe: ReferenceLCMPipeline, samples: list[dict], step: int, accelerator) -> None:
    """Reconstructions (stage vae) or teacher-mode videos: DDIM, CFG ``--validation_guidance_scale``."""
    if args.stage == "vae":
        save_reconstructions(pipe.vae, samples, args.output_dir, step)
        return
    run_validation(pipe, samples, args.output_dir, step, accelerator,
                   num_inference_steps=args.validation_inference_steps, seed=args.seed,
                   guidance_scale=args.validation_guidance_scale)


def save_output(
    args, pipe: ReferenceLCMPipeline, dataset: ReferenceVideoDataset, motion_source: UNetMotionModel | None = None
) -> None:
    """The whole teacher in float32 (stage vae: with ``scaling_factor`` measured on the data; stage image from a
    motion D-UNet: the trained 2-D weights back in it), model card, push."""
    for model in pipe.components.values():
        if isinstance(model, torch.nn.Module):
            if model.dtype != torch.float32:
                model.to(dtype=torch.float32)
            model.eval()
    if args.stage == "vae":
        batches = [dataset[index]["target"][:, 0][None] for index in range(0, len(dataset), max(1, len(dataset) // 16))]
        scaling_factor = latent_scaling_factor(pipe.vae, batches)
        pipe.vae.register_to_config(scaling_factor=scaling_factor)
        logger.info(f"VAE latent scaling_factor set to {scaling_factor:.4f}.")
    if motion_source is not None:
        pipe = with_denoising_unet(pipe, motion_unet_with_spatial_weights(motion_source, pipe.denoising_unet))
    extra_files = {}
    if args.stage == "video":
        adapter_dir = Path(args.output_dir) / ".motion_adapter"
        pipe.denoising_unet.save_motion_modules(str(adapter_dir))
        extra_files["motion_adapter"] = adapter_dir
    start = portable_name(args.pretrained_model or args.model_config) or "new components"
    description = (
        f"ReferenceNet teacher, stage `{args.stage}` of examples/train_teacher.py: {args.max_train_steps} steps on "
        f"`{Path(args.train_data_dir).name}` at {args.resolution} px, started from `{start}`. Sample with DDIM "
        f"(~20 steps) and guidance_scale 3.5; distil with examples/train_cosec_lcd.py."
    )
    if pipe.guidance_encoder.accepts_subsets:
        description += (f" Trained with guidance-type dropout {pipe.guidance_encoder.config.guidance_type_dropout}: "
                        f"takes any non-empty subset of {list(pipe.guidance_types)}.")
    save_student_pipeline(pipe, args.output_dir, base_model=args.pretrained_model, description=description,
                          tags=TEACHER_TAGS + (f"stage-{args.stage}",), extra_files=extra_files)
    if args.push_to_hub:
        push_folder_to_hub(args.output_dir, args.hub_model_id, args.hub_token,
                           ignore_patterns=("checkpoint-*", ".*", f"{args.logging_dir}/*", "validation/*"))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
