#!/usr/bin/env python
"""Train or fine-tune a ReferenceNet teacher (Champ's recipe): VAE, image encoder, then image stage, then motion stage.

Every stage writes a complete teacher ``ReferenceLCMPipeline`` folder (DDIM, v-prediction, zero terminal SNR, trailing
timesteps; sample with ~20 steps and ``guidance_scale`` 3.5) that the next stage, ``train_cosec_lcd.py`` and
``ReferenceLCMPipeline.from_pretrained`` take:

    # from scratch on SynthDance (``referencelcm synth``), with component sizes from a JSON/YAML file:
    # examples/configs/default.json (the bundled model's sizes) or tiny.json (the tests' sizes)
    python examples/train_teacher.py --stage vae --model_config examples/configs/default.json --train_data_dir DATA \\
        --output_dir out/vae
    python examples/train_teacher.py --stage image_encoder --pretrained_model out/vae --train_data_dir DATA \\
        --output_dir out/image_encoder
    python examples/train_teacher.py --stage image --pretrained_model out/image_encoder --train_data_dir DATA \\
        --output_dir out/image
    python examples/train_teacher.py --stage video --pretrained_model out/image --train_data_dir DATA \\
        --output_dir out/teacher --num_frames 16 --model_config examples/configs/default.json  # motion_* sizes
    # from SD1.5-style weights (Champ's starting point)
    accelerate launch examples/train_teacher.py --stage image --pretrained_unet_path SD15 --pretrained_vae_path VAE \\
        --image_encoder_path CLIP_IMAGE_ENCODER --train_data_dir DATA --output_dir out/image --resolution 512

``vae``: trains the pipeline's ``AutoencoderKL`` on the dataset's frames (reconstruction + KL), then sets its
``scaling_factor``. ``image_encoder``: trains the CLIP image encoder to predict, from a frame, every body part's
colour in it (SynthDance data only; a pretrained CLIP needs no such stage). ``image``: single frames; D-UNet, R-UNet
(less its unread layers) and guidance encoder. ``video``: clips; the D-UNet is inflated to a ``UNetMotionModel`` with a new (zero-initialised) or loaded
``MotionAdapter`` and only the motion modules train.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from accelerate.utils import DistributedDataParallelKwargs
from tqdm.auto import tqdm

from referencelcm import ReferenceLCMPipeline
from referencelcm.arguments import run_main
from referencelcm.models.guidance_encoder import check_guidance_type_dropout
from referencelcm.pipelines.loading import check_pipeline_argument
from referencelcm.training.checkpointing import step_generator
from referencelcm.training.export import portable_name, run_validation, save_student_pipeline
from referencelcm.training.script_support import (
    RUN_AT_LEAST_ONE,
    RUN_NON_NEGATIVE,
    add_data_arguments,
    add_run_arguments,
    build_lr_scheduler,
    check_model_folder,
    check_numbers,
    check_run_paths,
    fill_defaults,
    log_step,
    make_accelerator,
    optimizer_step,
    push_output,
    start_run,
    training_batches,
    training_dataloader,
)
from referencelcm.training.teacher import TeacherConfig, TeacherModels, TeacherTrainingStep
from referencelcm.training.teacher_stages import (
    STAGES,
    TEACHER_TAGS,
    check_image_encoder_data,
    finished_teacher,
    image_encoder_stage_loss,
    save_colour_predictions,
    save_reconstructions,
    stage_maps,
    stage_model_config,
    stage_pipeline,
    teacher_description,
    teacher_pipeline,
    trainable_network,
    vae_stage_loss,
)

STAGE_DEFAULTS = {
    "vae": dict(learning_rate=1e-4, max_train_steps=20000, num_frames=1, train_batch_size=4),
    # 64 frames a step: a colour head on a small encoder learns from many identities at once (RESULTS.md)
    "image_encoder": dict(learning_rate=1e-3, max_train_steps=3000, num_frames=1, train_batch_size=64),
    "image": dict(learning_rate=1e-5, max_train_steps=30000, num_frames=1, train_batch_size=4),
    "video": dict(learning_rate=1e-5, max_train_steps=10000, num_frames=16, train_batch_size=4),
}


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
    add_data_arguments(parser)
    add("--output_dir", default="teacher-output")
    add("--num_frames", type=int, default=None, help="Frames per item: default 1 (vae, image_encoder, image; "
        "frames train independently), 16 (video).")
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
    add("--person_loss_weight", type=float, default=0.0, help="Stages image, video: the denoising loss counts each "
        "latent pixel 1 + this times the person's share of it (mask/ folder) as often.")
    add("--image_embeds_dropout", type=float, default=0.0, help="Stages image, video: zero each sample's image "
        "embedding (for both UNets) with this probability while keeping its reference tokens, so that the person's "
        "appearance must also come through the reference UNet.")
    add("--learning_rate", type=float, default=None, help="Default 1e-4 (vae), 1e-3 (image_encoder), 1e-5 (image, "
        "video).")
    add("--train_batch_size", type=int, default=None, help="Default 64 (image_encoder), 4 (other stages).")
    add("--max_train_steps", type=int, default=None)
    add_run_arguments(parser, num_validation_videos=1, validation_num_frames=4)
    add("--validation_inference_steps", type=int, default=20)
    add("--validation_guidance_scale", type=float, default=3.5)
    args = parser.parse_args(argv)
    fill_defaults(args, STAGE_DEFAULTS[args.stage])
    if args.stage == "video" and args.num_frames < 2:
        parser.error(f"--stage video needs --num_frames >= 2, got {args.num_frames}.")
    if args.stage == "image_encoder" and args.num_frames != 1:
        parser.error(f"--stage image_encoder trains on single frames: --num_frames must be 1, got {args.num_frames}.")
    if args.motion_adapter_path is not None and args.stage != "video":
        parser.error("--motion_adapter_path is for --stage video.")
    if args.vae_crop_size < 0 or args.vae_person_weight < 0:
        parser.error(f"--vae_crop_size and --vae_person_weight must be >= 0, got {args.vae_crop_size} and "
                     f"{args.vae_person_weight}.")
    if (args.vae_crop_size or args.vae_person_weight) and args.stage != "vae":
        parser.error("--vae_crop_size and --vae_person_weight are for --stage vae.")
    if args.person_loss_weight < 0:
        parser.error(f"--person_loss_weight must be >= 0, got {args.person_loss_weight}.")
    if not 0 <= args.image_embeds_dropout <= 1:
        parser.error(f"--image_embeds_dropout must be in [0, 1], got {args.image_embeds_dropout}.")
    if args.image_embeds_dropout and args.stage not in ("image", "video"):
        parser.error("--image_embeds_dropout is for --stage image and video.")
    if args.person_loss_weight and args.stage not in ("image", "video"):
        parser.error("--person_loss_weight is for --stage image and video (--vae_person_weight for stage vae).")
    if args.train_image_encoder and args.stage != "image":
        parser.error("--train_image_encoder is for --stage image.")
    if args.guidance_type_dropout is not None and args.stage in ("vae", "image_encoder"):
        parser.error(f"--guidance_type_dropout is for --stage image and video (stage {args.stage} reads no guidance).")
    if args.vae_crop_size > args.resolution:
        parser.error(f"--vae_crop_size {args.vae_crop_size} exceeds --resolution {args.resolution}.")
    return args


def check_arguments(args) -> None:
    """Every number and path, before anything is loaded or written to ``--output_dir``."""
    check_numbers(args, at_least_one=(*RUN_AT_LEAST_ONE, "validation_inference_steps"),
                  non_negative=(*RUN_NON_NEGATIVE, "snr_gamma", "kl_weight"))
    if not 0 <= args.uncond_ratio <= 1:
        raise ValueError(f"--uncond_ratio must be in [0, 1], got {args.uncond_ratio}.")
    if args.guidance_type_dropout is not None:
        check_guidance_type_dropout("--guidance_type_dropout", args.guidance_type_dropout)
    check_run_paths(args)
    if args.pretrained_model is not None:
        check_pipeline_argument(args.pretrained_model, "--pretrained_model")
    for flag, path, subfolder in (("--pretrained_unet_path", args.pretrained_unet_path, "unet"),
                                  ("--pretrained_vae_path", args.pretrained_vae_path, "vae"),
                                  ("--image_encoder_path", args.image_encoder_path, "image_encoder"),
                                  ("--motion_adapter_path", args.motion_adapter_path, None)):
        if path is not None:
            check_model_folder(flag, path, subfolder)
    stage_model_config(args.model_config)
    if args.stage == "image_encoder":
        check_image_encoder_data(args.train_data_dir, args.resolution)


def build_pipeline(args) -> ReferenceLCMPipeline:
    """The starting teacher from the flags (:func:`~referencelcm.training.teacher_stages.teacher_pipeline`)."""
    return teacher_pipeline(args.stage, args.pretrained_model, args.model_config, args.seed,
                            args.pretrained_unet_path, args.pretrained_vae_path, args.image_encoder_path)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_arguments(args)

    # 1. Accelerator, logging, seed (nothing is written to --output_dir before step 6); stage image: a batch whose
    # samples all drop the reference leaves the R-UNet without gradients
    accelerator, weight_dtype = make_accelerator(args, f"referencelcm-teacher-{args.stage}", kwargs_handlers=[
        DistributedDataParallelKwargs(find_unused_parameters=args.stage == "image")])

    # 2. Models: the starting point in the stage's form, and what trains
    pipe, motion_source = stage_pipeline(build_pipeline(args), args.stage, args.guidance_type_dropout,
                                         args.motion_adapter_path, args.model_config)
    network = trainable_network(pipe, args.stage, accelerator.device, weight_dtype, args.train_image_encoder,
                                args.gradient_checkpointing)
    parameters = [parameter for parameter in network.parameters() if parameter.requires_grad]

    # 3. Data: single frames (vae, image_encoder, image) or clips (video), order a pure function of (seed, epoch)
    # Stage vae sees frames at their own size: a random crop resized back would blur what it must learn to keep.
    # Stage image_encoder reads part labels from the semantic maps, which a resize would blur. Neither reads a
    # reference: reading one and making its CLIP input was ~70 ms of a ~150 ms image_encoder step.
    maps = stage_maps(args.stage, pipe.guidance_types, args.train_data_dir,
                      args.vae_person_weight if args.stage == "vae" else args.person_loss_weight)
    frames_only = args.stage in ("vae", "image_encoder")
    dataset, sampler, dataloader = training_dataloader(args, pipe, num_references=0 if frames_only else 1,
                                                       guidance_types=maps, random_crop=not frames_only)

    # 4. Optimiser, LR schedule, accelerate
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, weight_decay=args.adam_weight_decay)
    lr_scheduler = build_lr_scheduler(args.lr_scheduler, optimizer, args.lr_warmup_steps, args.max_train_steps,
                                      accelerator.num_processes)
    network, optimizer, lr_scheduler, dataloader = accelerator.prepare(network, optimizer, lr_scheduler, dataloader)

    # 5. The step: VAE reconstruction, region colours from the image embedding, or the teacher's min-SNR v-prediction
    # loss
    if args.stage == "vae":
        compute_loss = vae_stage_loss(pipe.vae, network, args.kl_weight, args.vae_crop_size, args.vae_person_weight)
    elif args.stage == "image_encoder":
        compute_loss = image_encoder_stage_loss(network, pipe.feature_extractor)
    else:
        config = TeacherConfig(uncond_ratio=args.uncond_ratio, snr_gamma=args.snr_gamma or None,
                               noise_offset=args.noise_offset, person_weight=args.person_loss_weight,
                               image_embeds_dropout=args.image_embeds_dropout)
        models = TeacherModels(pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet,
                               pipe.guidance_encoder)
        compute_loss = TeacherTrainingStep(models, pipe.scheduler, config, network).step

    # 6. Resume, output folder, trackers, validation samples
    global_step, validation = start_run(accelerator, args, f"referencelcm-teacher-{args.stage}", pipe,
                                        maps if args.stage == "image_encoder" else None)

    # 7. Training loop
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc=f"{args.stage} steps",
                    disable=not accelerator.is_local_main_process)
    batches = training_batches(accelerator, dataloader, dataset, sampler,
                               global_step * args.gradient_accumulation_steps)
    while global_step < args.max_train_steps:
        micro_step, batch = next(batches)
        with accelerator.accumulate(network), accelerator.autocast():
            output = compute_loss(batch, step_generator(args.seed, accelerator.process_index, micro_step))
            optimizer_step(accelerator, output, global_step + 1, parameters, optimizer, lr_scheduler,
                           args.max_grad_norm)
        if accelerator.sync_gradients:
            global_step += 1
            log_step(accelerator, args, progress, output, lr_scheduler, global_step)
            if validation and global_step % args.validation_steps == 0:
                validate(args, pipe, validation, global_step, accelerator, network)

    # 8. Save the teacher pipeline, push
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_output(args, pipe, dataset, motion_source)
    accelerator.end_training()


def validate(args, pipe: ReferenceLCMPipeline, samples: list[dict], step: int, accelerator, network) -> None:
    """Reconstructions (stage vae), region colours predicted from each reference (stage image_encoder) or
    teacher-mode videos: DDIM, CFG ``--validation_guidance_scale``."""
    if args.stage == "vae":
        save_reconstructions(pipe.vae, samples, args.output_dir, step)
        return
    if args.stage == "image_encoder":
        model = accelerator.unwrap_model(network)
        model.eval()
        save_colour_predictions(model, pipe.feature_extractor, samples, args.output_dir, step)
        model.train()
        return
    run_validation(pipe, samples, args.output_dir, step, accelerator,
                   num_inference_steps=args.validation_inference_steps, seed=args.seed,
                   guidance_scale=args.validation_guidance_scale)


def save_output(args, pipe: ReferenceLCMPipeline, dataset, motion_source=None) -> None:
    """The whole teacher in float32 (stage vae: with ``scaling_factor`` measured on the data; stage image from a
    motion D-UNet: the trained 2-D weights back in it; stage video: its motion adapter too), model card, push."""
    pipe = finished_teacher(pipe, args.stage, dataset, motion_source)
    extra_files = {}
    if args.stage == "video":
        adapter_dir = Path(args.output_dir) / ".motion_adapter"
        pipe.denoising_unet.save_motion_modules(str(adapter_dir))
        extra_files["motion_adapter"] = adapter_dir
    start = portable_name(args.pretrained_model or args.model_config) or "new components"
    description = teacher_description(pipe, args.stage, args.max_train_steps, args.train_data_dir, args.resolution,
                                      start)
    save_student_pipeline(pipe, args.output_dir, base_model=args.pretrained_model, description=description,
                          tags=TEACHER_TAGS + (f"stage-{args.stage}",), extra_files=extra_files)
    if args.push_to_hub:
        push_output(args)


if __name__ == "__main__":
    run_main(main)
