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
import os

import torch
from diffusers import UNetMotionModel
from tqdm.auto import tqdm

from referencelcm import ReferenceLCMPipeline
from referencelcm.arguments import run_main
from referencelcm.pipelines.loading import check_pipeline_argument, load_pipeline
from referencelcm.training.checkpointing import ModuleCheckpointHooks, step_generator
from referencelcm.training.consistency import DDIMSolver
from referencelcm.training.distill import ConsistencyDistillationStep, DistillationConfig, DistillationModels
from referencelcm.training.ema import ema_update
from referencelcm.training.export import (
    LORA_TARGET_MODULES,
    LORA_WEIGHT_NAME,
    lora_state_dict,
    merge_lora,
    portable_name,
    run_validation,
    save_student_pipeline,
    student_pipeline,
)
from referencelcm.training.script_support import (
    RUN_AT_LEAST_ONE,
    RUN_NON_NEGATIVE,
    add_data_arguments,
    add_run_arguments,
    build_lr_scheduler,
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
from referencelcm.training.unets import motion_unet_with_spatial_weights, spatial_unet_from_motion

PHASE_DEFAULTS = {  # appendix C
    "spatial": dict(guidance_scale=2.5, cons_weight=0.02, max_train_steps=3000, num_frames=1),
    "temporal": dict(guidance_scale=1.5, cons_weight=0.0, max_train_steps=2000, num_frames=16),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--pretrained_teacher_model", required=True, help="ReferenceLCMPipeline folder or Hub id (DDIM scheduler).")
    add("--pretrained_student_model", default=None, help="Phase 2: the phase-1 output folder.")
    add_data_arguments(parser)
    add("--output_dir", default="cosec-lcd-output")
    add("--phase", choices=tuple(PHASE_DEFAULTS), default="spatial")
    add("--num_frames", type=int, default=None, help="Frames per clip (default 1 spatial, 16 temporal).")
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
    add("--adam_beta1", type=float, default=0.9)
    add("--adam_beta2", type=float, default=0.999)
    add("--adam_epsilon", type=float, default=1e-8)
    add("--train_batch_size", type=int, default=4, help="Dataset items per device (each gives k samples).")
    add("--max_train_steps", type=int, default=None, help="Default 3000 spatial, 2000 temporal.")
    add_run_arguments(parser, num_validation_videos=2, validation_num_frames=8)
    add("--use_lora", action="store_true", help="Train LoRA adapters on the attention projections only.")
    add("--lora_rank", type=int, default=64)
    add("--lora_alpha", type=int, default=64)
    args = parser.parse_args(argv)
    fill_defaults(args, PHASE_DEFAULTS[args.phase])
    if args.phase == "temporal" and args.num_frames < 2:
        parser.error(f"--phase temporal needs --num_frames >= 2, got {args.num_frames}.")
    if (args.w_min is None) != (args.w_max is None):
        parser.error("--w_min and --w_max go together.")
    return args


def check_arguments(args) -> None:
    """Every number and path, before anything is loaded or written to ``--output_dir``."""
    check_numbers(args, at_least_one=(*RUN_AT_LEAST_ONE, "num_equivalent_references", "num_ddim_timesteps",
                                      "lora_rank", "lora_alpha"),
                  non_negative=(*RUN_NON_NEGATIVE, "huber_c"))
    if not 0 <= args.ema_decay <= 1:
        raise ValueError(f"--ema_decay must be in [0, 1], got {args.ema_decay}.")
    check_run_paths(args)
    check_pipeline_argument(args.pretrained_teacher_model, "--pretrained_teacher_model")
    if args.pretrained_student_model is not None:
        check_pipeline_argument(args.pretrained_student_model, "--pretrained_student_model")


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
        teacher.hook_denoising_unet(unet)
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
    accelerator, weight_dtype = make_accelerator(args, "cosec-lcd")

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

    # 6. Resume, output folder, trackers, validation samples
    global_step, validation = start_run(accelerator, args, "cosec-lcd", teacher)

    # 7. Training loop; the EMA target follows the student whenever gradients sync
    progress = tqdm(range(args.max_train_steps), initial=global_step, desc="steps",
                    disable=not accelerator.is_local_main_process)
    batches = training_batches(accelerator, dataloader, dataset, sampler,
                               global_step * args.gradient_accumulation_steps)
    while global_step < args.max_train_steps:
        micro_step, batch = next(batches)
        with accelerator.accumulate(student), accelerator.autocast():
            output = distill.step(batch, step_generator(args.seed, accelerator.process_index, micro_step))
            optimizer_step(accelerator, output, global_step + 1, parameters, optimizer, lr_scheduler,
                           args.max_grad_norm)
        if accelerator.sync_gradients:
            ema_update(target.parameters(), accelerator.unwrap_model(student).parameters(), args.ema_decay)
            global_step += 1
            log_step(accelerator, args, progress, output, lr_scheduler, global_step)
            if validation and global_step % args.validation_steps == 0:
                run_validation(student_pipeline(teacher, accelerator.unwrap_model(student), args.num_ddim_timesteps),
                               validation, args.output_dir, global_step, accelerator, seed=args.seed)

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
        push_output(args)


if __name__ == "__main__":
    run_main(main)
