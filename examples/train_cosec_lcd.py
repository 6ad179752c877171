#!/usr/bin/env python
"""CoSeC-LCD: distil a ReferenceLCMPipeline teacher (DDIM, CFG) into a 2–4 step latent consistency student.

Phase 1 (spatial) trains the 2-D part of the teacher's D-UNet on single frames with ``R_spt``; phase 2 (temporal)
trains the motion D-UNet (phase-1 spatial weights + the teacher's motion modules) on clips with ``λ·R_tmp``.

    accelerate launch examples/train_cosec_lcd.py --pretrained_teacher_model TEACHER --train_data_dir DATA \\
        --output_dir out/spatial --phase spatial --resolution 512
    accelerate launch examples/train_cosec_lcd.py --pretrained_teacher_model TEACHER \\
        --pretrained_student_model out/spatial --train_data_dir DATA --output_dir out/temporal --phase temporal \\
        --num_frames 16 --frame_stride 2

Runs with plain ``python`` too. The output folder is a complete pipeline (``ReferenceLCMPipeline.from_pretrained``).
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers import UNetMotionModel
from tqdm.auto import tqdm

from referencelcm import ReferenceLCMPipeline
from referencelcm.arguments import check_output_folder
from referencelcm.models.injection import install_guidance_injection
from referencelcm.models.motion import set_motion_norm_mode
from referencelcm.models.reference_attention import install_reference_attention
from referencelcm.pipelines.loading import check_pipeline_argument, load_pipeline
from referencelcm.training.checkpointing import (
    ModuleCheckpointHooks,
    check_finite_loss,
    resolve_resume_checkpoint,
    resume,
    save_checkpoint,
    step_generator,
)
from referencelcm.training.consistency import DDIMSolver
from referencelcm.training.distill import ConsistencyDistillationStep, DistillationConfig, DistillationModels
from referencelcm.training.ema import ema_update
from referencelcm.training.export import (
    LORA_TARGET_MODULES,
    LORA_WEIGHT_NAME,
    lora_state_dict,
    merge_lora,
    portable_name,
    push_folder_to_hub,
    run_validation,
    save_student_pipeline,
    student_pipeline,
    validation_samples,
)
from referencelcm.training.script_support import (
    build_lr_scheduler,
    check_data_root,
    check_numbers,
    training_dataloader,
)
from referencelcm.training.tracking import trackers
from referencelcm.training.unets import motion_unet_with_spatial_weights, spatial_unet_from_motion

logger = get_logger(__name__)
PHASE_DEFAULTS = {  # appendix C
    "spatial": dict(guidance_scale=2.5, cons_weight=0.02, max_train_steps=3000, num_frames=1),
    "temporal": dict(guidance_scale=1.5, cons_weight=0.0, max_train_steps=2000, num_frames=16),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--pretrained_teacher_model", required=True, help="ReferenceLCMPipeline folder or Hub id (DDIM scheduler).")
    add("--pretrained_student_model", default=None, help="Phase 2: the phase-1 output folder.")
    add("--train_data_dir", required=True, help="Champ-layout root (e.g. `referencelcm synth`).")
    add("--output_dir", default="cosec-lcd-output")
    add("--phase", choices=tuple(PHASE_DEFAULTS), default="spatial")
    add("--resolution", type=int, default=512)
    add("--num_frames", type=int, default=None, help="Frames per clip (default 1 spatial, 16 temporal).")
    add("--frame_stride", type=int, default=1)
    add("--num_equivalent_references", type=int, default=2, help="k references per item (ETA group size).")
    add("--guidance_scale", type=float, default=None, help="Teacher CFG ω (default 2.5 spatial, 1.5 temporal).")
    add("--w_min", type=float, default=None, help="With --w_max: draw ω uniformly per item.")
    add("--w_max", type=float, default=None)
    add("--eta_weight", type=float, default=0.1, help="φ1 (Eq. 4).")
    add("--cons_weight", type=float, default=None, help="φ2 (Eq. 4; default 0.02 spatial, 0 temporal).")
    add("--temporal_eta_weight", type=float, default=0.05, help="λ (Eq. 8).")
    add("--num_ddim_timesteps", type=int, default=50)
    add("--timestep_scaling_factor", type=float, default=10.0)
    add("--loss_type", choices=("huber", "l2"), default="huber")
    add("--huber_c", type=float, default=0.001)
    add("--ema_decay", type=float, default=0.95)
    add("--learning_rate", type=float, default=1e-6)
    add("--lr_scheduler", default="constant")
    add("--lr_warmup_steps", type=int, default=0)
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--adam_epsilon", type=float, default=1e-8)
    add("--max_grad_norm", type=float, default=1.0)
    add("--train_batch_size", type=int, default=4, help="Dataset items per device (each gives k samples).")
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--max_train_steps", type=int, default=None, help="Default 3000 spatial, 2000 temporal.")
    add("--dataloader_num_workers", type=int, default=0)
    add("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    add("--gradient_checkpointing", action="store_true")
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder.")
    add("--validation_steps", type=int, default=None, help="Write validation videos every N steps.")
    add("--num_validation_videos", type=int, default=2)
    add("--validation_num_frames", type=int, default=8)
    add("--report_to", default="tensorboard")
    add("--logging_dir", default="logs")
    add("--seed", type=int, default=0)
    add("--use_lora", action="store_true", help="Train LoRA adapters on the attention projections only.")
    add("--lora_rank", type=int, default=64)
    add("--lora_alpha", type=int, default=64)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None)
    add("--hub_token", default=None)
    args = parser.parse_args(argv)
    for name, value in PHASE_DEFAULTS[args.phase].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.phase == "temporal" and args.num_frames < 2:
        parser.error(f"--phase temporal needs --num_frames >= 2, got {args.num_frames}.")
    if (args.w_min is None) != (args.w_max is None):
        parser.error("--w_min and --w_max go together.")
    return args


def check_arguments(args) -> None:
    """Every number and path, before anything is loaded or written to ``--output_dir``."""
    check_numbers(args, at_least_one=("resolution", "num_frames", "frame_stride", "num_equivalent_references",
                                      "num_ddim_timesteps", "train_batch_size", "gradient_accumulation_steps",
                                      "max_train_steps", "checkpointing_steps", "checkpoints_total_limit",
                                      "validation_steps", "num_validation_videos", "validation_num_frames",
                                      "lora_rank", "lora_alpha"),
                  non_negative=("learning_rate", "lr_warmup_steps", "dataloader_num_workers", "huber_c",
                                "max_grad_norm"))
    if not 0 <= args.ema_decay <= 1:
        raise ValueError(f"--ema_decay must be in [0, 1], got {args.ema_decay}.")
    check_output_folder("--output_dir", args.output_dir)
    check_pipeline_argument(args.pretrained_teacher_model, "--pretrained_teacher_model")
    if args.pretrained_student_model is not None:
        check_pipeline_argument(args.pretrained_student_model, "--pretrained_student_model")
    check_data_root("--train_data_dir", args.train_data_dir)
    resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)


def build_unets(args, teacher: ReferenceLCMPipeline) -> tuple[torch.nn.Module, torch.nn.Module]:
    """``(teacher D-UNet, student D-UNet)`` for the phase, both with reference processors and guidance injection."""
    teacher_unet = teacher.denoising_unet
    student_source = None
    if args.pretrained_student_model is not None:
        student_source = load_pipeline(args.pretrained_student_model, "--pretrained_student_model").denoising_unet
    if args.phase == "spatial":
        if isinstance(teacher_unet, UNetMotionModel):
            teacher_unet = spatial_unet_from_motion(teacher_unet)
        student = student_source or copy.deepcopy(teacher_unet)
    else:
        if not isinstance(teacher_unet, UNetMotionModel):
            raise ValueError("--phase temporal needs a teacher whose denoising_unet is a UNetMotionModel.")
        if student_source is None or isinstance(student_source, UNetMotionModel):
            student = student_source or copy.deepcopy(teacher_unet)
        else:  # phase-1 spatial weights + the teacher's motion modules
            student = motion_unet_with_spatial_weights(teacher_unet, student_source)
    for unet in (teacher_unet, student):
        install_reference_attention(unet, "read")
        install_guidance_injection(unet)
        set_motion_norm_mode(unet, teacher.config.motion_norm_mode)
    return teacher_unet, student


def add_lora(args, student: torch.nn.Module) -> None:
    from peft import LoraConfig

    student.requires_grad_(False)
    student.add_adapter(LoraConfig(r=args.lora_rank, lora_alpha=args.lora_alpha, init_lora_weights="gaussian",
                                   target_modules=list(LORA_TARGET_MODULES)))


def make_optimizer(args, parameters: list[torch.nn.Parameter], num_processes: int):
    """AdamW and the LR schedule (counted as accelerate steps it: :func:`build_lr_scheduler`)."""
    optimizer = torch.optim.AdamW(parameters, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                  weight_decay=args.adam_weight_decay, eps=args.adam_epsilon)
    schedule = build_lr_scheduler(args.lr_scheduler, optimizer, args.lr_warmup_steps, args.max_train_steps,
                                  num_processes)
    return optimizer, schedule


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_arguments(args)

    # 1. Accelerator, logging, seed (nothing is written to --output_dir before step 6)
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers(args.report_to, logging_dir, "cosec-lcd"),
        project_config=ProjectConfiguration(args.output_dir, logging_dir=logging_dir),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)

    # 2. Teacher pipeline (frozen), teacher / student / EMA-target D-UNets
    teacher = load_pipeline(args.pretrained_teacher_model, "--pretrained_teacher_model")
    teacher_unet, student = build_unets(args, teacher)
    if args.use_lora:
        add_lora(args, student)
    target = copy.deepcopy(student).requires_grad_(False)
    frozen = (teacher.vae, teacher.image_encoder, teacher.reference_unet, teacher.guidance_encoder, teacher_unet)
    for model in frozen:
        model.requires_grad_(False).eval().to(accelerator.device, weight_dtype)
    target.to(accelerator.device).train()
    student.train()
    if args.gradient_checkpointing:
        student.enable_gradient_checkpointing()

    # 3. Data: RAS references per item, multi-source batches, order a pure function of (seed, epoch)
    dataset, sampler, dataloader = training_dataloader(args, teacher, args.num_equivalent_references)

    # 4. Optimiser, LR schedule, accelerate; the EMA target is saved with every checkpoint
    parameters = [parameter for parameter in student.parameters() if parameter.requires_grad]
    optimizer, lr_scheduler = make_optimizer(args, parameters, accelerator.num_processes)
    student, optimizer, lr_scheduler, dataloader = accelerator.prepare(student, optimizer, lr_scheduler, dataloader)
    hooks = ModuleCheckpointHooks({"ema_target_unet": target})
    accelerator.register_save_state_pre_hook(hooks.save)
    accelerator.register_load_state_pre_hook(hooks.load)

    # 5. The distillation step
    solver = DDIMSolver.from_scheduler(teacher.scheduler, args.num_ddim_timesteps)
    config = DistillationConfig(
        phase=args.phase, guidance_scale=args.guidance_scale, w_min=args.w_min, w_max=args.w_max,
        eta_weight=args.eta_weight, cons_weight=args.cons_weight, temporal_eta_weight=args.temporal_eta_weight,
        loss_type=args.loss_type, huber_c=args.huber_c, timestep_scaling=args.timestep_scaling_factor,
    )
    models = DistillationModels(teacher.vae, teacher.image_encoder, teacher.reference_unet, teacher.guidance_encoder,
                                teacher_unet, target, student)
    distill = ConsistencyDistillationStep(models, solver, teacher.scheduler.config.prediction_type, config)

    # 6. Resume, output folder, trackers
    global_step = resume(accelerator, args.output_dir, args.resume_from_checkpoint)
    if global_step:
        logger.info(f"Resumed from {args.resume_from_checkpoint} at step {global_step}.")
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        accelerator.init_trackers("cosec-lcd", config={k: v for k, v in vars(args).items()
                                                       if isinstance(v, (int, float, str, bool))})
    validation = []
    if args.validation_steps and accelerator.is_main_process:
        validation = validation_samples(args.train_data_dir, args.resolution, args.validation_num_frames,
                                        args.num_validation_videos, teacher.guidance_types, teacher.feature_extractor,
                                        args.seed)

    # 7. Training loop
    micro_step = global_step * args.gradient_accumulation_steps
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    while global_step < args.max_train_steps:
        epoch, skip = divmod(micro_step, len(dataloader))
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(dataloader, skip) if skip else dataloader:
            with accelerator.accumulate(student), accelerator.autocast():
                output = distill.step(batch, step_generator(args.seed, accelerator.process_index, micro_step))
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
            ema_update(target.parameters(), accelerator.unwrap_model(student).parameters(), args.ema_decay)
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{output.terms['loss']:.4g}")
            accelerator.log({**output.terms, "lr": lr_scheduler.get_last_lr()[0]}, step=global_step)
            if global_step % args.checkpointing_steps == 0:
                save_checkpoint(accelerator, args.output_dir, global_step, args.checkpoints_total_limit)
            if validation and global_step % args.validation_steps == 0:
                run_validation(student_pipeline(teacher, accelerator.unwrap_model(student), args.num_ddim_timesteps),
                               validation, args.output_dir, global_step, accelerator, seed=args.seed)
            if global_step >= args.max_train_steps:
                break

    # 8. Save the student pipeline (and LoRA weights), push
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        save_output(args, accelerator.unwrap_model(student))
    accelerator.end_training()


def save_output(args, student: torch.nn.Module) -> None:
    """A complete student pipeline from fresh (fp32) teacher components; with LoRA also the adapter weights."""
    from safetensors.torch import save_file

    teacher = load_pipeline(args.pretrained_teacher_model, "--pretrained_teacher_model")
    extra_files = {}
    if args.use_lora:
        lora_path = os.path.join(args.output_dir, f".{LORA_WEIGHT_NAME}")
        save_file(lora_state_dict(student), lora_path)
        extra_files[LORA_WEIGHT_NAME] = lora_path
        student = merge_lora(student)
    pipe = student_pipeline(teacher, student.float(), args.num_ddim_timesteps, args.timestep_scaling_factor)
    teacher_name = portable_name(args.pretrained_teacher_model)
    description = (f"CoSeC-LCD {args.phase} student of `{teacher_name}`: {args.max_train_steps} steps,"
                   f" ω={args.guidance_scale}, k={args.num_equivalent_references}.\n\n```python\n"
                   "from referencelcm import ReferenceLCMPipeline\n"
                   "pipe = ReferenceLCMPipeline.from_pretrained(PATH)\n"
                   "video = pipe(reference_image, guidance, num_inference_steps=4, guidance_scale=1.0).frames[0]\n```")
    save_student_pipeline(pipe, args.output_dir, base_model=args.pretrained_teacher_model, description=description,
                          extra_files=extra_files, hub_model_id=args.hub_model_id if args.push_to_hub else None,
                          hub_token=args.hub_token)
    if args.push_to_hub:
        push_folder_to_hub(args.output_dir, args.hub_model_id, args.hub_token,
                           ignore_patterns=("checkpoint-*", ".*", f"{args.logging_dir}/*", "validation/*"))


if __name__ == "__main__":
    try:
        main()
    except (ValueError, FileNotFoundError, FloatingPointError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
