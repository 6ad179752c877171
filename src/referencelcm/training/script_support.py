"""What the training scripts (``examples/train_teacher.py``, ``examples/train_cosec_lcd.py``) share: their common
flags, the argument checks that run before anything is written to ``--output_dir``, the accelerator and the run's
start, the data loader, the LR schedule as accelerate steps it, and the pieces of the loop around the step.

Both scripts call :func:`check_numbers` and check every path (:func:`check_run_paths`,
:func:`~referencelcm.pipelines.loading.check_pipeline_argument`, :func:`check_model_folder`) first, so a mistake is
one clear error and ``--output_dir`` is not created. Each keeps its own ``main()``: numbered setup blocks and the loop
(:func:`training_batches`, the script's step, :func:`optimizer_step`, :func:`log_step`).
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler

from ..arguments import check_at_least, check_finite, check_output_folder, naming
from ..data.layout import list_videos
from ..pipelines.loading import check_component_folder
from .checkpointing import check_finite_loss, resolve_resume_checkpoint, resume, save_checkpoint
from .data import MultiSourceBatchSampler, ReferenceVideoDataset, collate_reference_batch
from .export import push_folder_to_hub, validation_samples
from .tracking import trackers

logger = get_logger(__name__)
# Flags of both scripts that must be >= 1 or >= 0 (each script adds its own to check_numbers).
RUN_AT_LEAST_ONE = ("resolution", "num_frames", "frame_stride", "train_batch_size", "gradient_accumulation_steps",
                    "max_train_steps", "checkpointing_steps", "checkpoints_total_limit", "validation_steps",
                    "num_validation_videos", "validation_num_frames")
RUN_NON_NEGATIVE = ("learning_rate", "lr_warmup_steps", "dataloader_num_workers", "max_grad_norm")
# What a pushed output folder leaves out: checkpoints, temporary files, logs and validation videos.
PUSH_IGNORE_PATTERNS = ("checkpoint-*", ".*", "{logging_dir}/*", "validation/*")


# -- flags -------------------------------------------------------------------------------------------------------------


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """``--train_data_dir``, ``--resolution``, ``--frame_stride``, ``--reference_crop_scale``,
    ``--reference_crop_probability``."""
    parser.add_argument("--train_data_dir", required=True, help="Champ-layout root (e.g. `referencelcm synth`).")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--frame_stride", type=int, default=1)
    parser.add_argument("--reference_crop_scale", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                        help="References get a random crop of their own (side LOW..HIGH of the largest), so the "
                        "person moves and changes size between reference and target, as in reenactment; default: "
                        "the target's crop.")
    parser.add_argument("--reference_crop_probability", type=float, default=1.0,
                        help="With --reference_crop_scale: the share of items whose references get their own crop.")


def add_run_arguments(
    parser: argparse.ArgumentParser, num_validation_videos: int, validation_num_frames: int
) -> None:
    """The optimiser, precision, checkpoint, validation, tracking and Hub flags both scripts take with the same
    meaning (the validation defaults are each script's)."""
    add = parser.add_argument
    add("--lr_scheduler", default="constant")
    add("--lr_warmup_steps", type=int, default=0)
    add("--adam_weight_decay", type=float, default=1e-2)
    add("--max_grad_norm", type=float, default=1.0)
    add("--gradient_accumulation_steps", type=int, default=1)
    add("--dataloader_num_workers", type=int, default=0)
    add("--cache_frames", action="store_true", help="Keep decoded frames and guidance maps in memory after their "
        "first read (H x W x 3 bytes per file, per data worker): faster on datasets that fit in RAM.")
    add("--mixed_precision", choices=("no", "fp16", "bf16"), default=None)
    add("--gradient_checkpointing", action="store_true")
    add("--checkpointing_steps", type=int, default=500)
    add("--checkpoints_total_limit", type=int, default=None)
    add("--resume_from_checkpoint", default=None, help="'latest' or a checkpoint-<step> folder.")
    add("--validation_steps", type=int, default=None, help="Write validation videos every N steps.")
    add("--num_validation_videos", type=int, default=num_validation_videos)
    add("--validation_num_frames", type=int, default=validation_num_frames)
    add("--report_to", default="tensorboard", help="Trackers, comma-separated, or 'none'; logs/metrics.jsonl "
        "is always written.")
    add("--logging_dir", default="logs")
    add("--seed", type=int, default=0)
    add("--push_to_hub", action="store_true")
    add("--hub_model_id", default=None)
    add("--hub_token", default=None)


def fill_defaults(args: argparse.Namespace, defaults: Mapping[str, Any]) -> argparse.Namespace:
    """Set every flag of ``defaults`` (a stage's or phase's) that was not given (``None``) to its default there."""
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def check_numbers(args: argparse.Namespace, at_least_one: Sequence[str], non_negative: Sequence[str] = ()) -> None:
    """Every float argument finite; those named in ``at_least_one`` >= 1 and in ``non_negative`` >= 0 (``None``, "not
    given", passes); ``--reference_crop_scale`` a scale range, ``--reference_crop_probability`` in [0, 1] and only
    with it. Errors name the flag (``--max_train_steps must be >= 1, got 0.``)."""
    for name, value in vars(args).items():
        if isinstance(value, float):
            check_finite(f"--{name}", value)
    scale = getattr(args, "reference_crop_scale", None)
    if scale is not None and not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"--reference_crop_scale must be LOW HIGH with 0 < LOW <= HIGH <= 1, got "
                         f"{' '.join(map(str, scale))}.")
    probability = getattr(args, "reference_crop_probability", 1.0)
    if not 0 <= probability <= 1:
        raise ValueError(f"--reference_crop_probability must be in [0, 1], got {probability}.")
    if probability != 1.0 and scale is None:
        raise ValueError("--reference_crop_probability needs --reference_crop_scale (the crops it chooses between).")
    for name in at_least_one:
        check_at_least(f"--{name}", getattr(args, name), 1)
    for name in non_negative:
        check_at_least(f"--{name}", getattr(args, name), 0)


def check_run_paths(args: argparse.Namespace) -> None:
    """``--output_dir`` can be made (:func:`~referencelcm.arguments.check_output_folder`), ``--train_data_dir`` holds
    videos (:func:`check_data_root`) and ``--resume_from_checkpoint`` names a checkpoint in it (or ``latest``)."""
    check_output_folder("--output_dir", args.output_dir)
    check_data_root("--train_data_dir", args.train_data_dir)
    resolve_resume_checkpoint(args.output_dir, args.resume_from_checkpoint)


def check_data_root(flag: str, root: str | os.PathLike) -> None:
    """A Champ-layout dataset root with at least one video folder (the videos themselves are checked on loading)."""
    with naming(flag, root):
        if not list_videos(root):
            raise FileNotFoundError("holds no video folders (expected ROOT/<video>/{images,depth,...}/0000.png).")


def check_model_folder(flag: str, path: str | os.PathLike, subfolder: str | None = None) -> Path:
    """A single-model folder (``config.json`` + weights), itself or its ``subfolder`` (an SD1.5-style folder's
    ``unet/``); returns the folder that holds the model."""
    path = Path(path)
    folder = path / subfolder if subfolder is not None and (path / subfolder / "config.json").is_file() else path
    if not (folder / "config.json").is_file():
        inside = f", neither itself nor in {subfolder}/" if subfolder else ""
        raise FileNotFoundError(f"`{flag}` {str(path)!r} holds no config.json{inside}.")
    check_component_folder(folder, f"{flag} {path}")
    return folder


def training_dataloader(
    args: argparse.Namespace, pipe, num_references: int, guidance_types=None, random_crop: bool = True
):
    """``(dataset, batch sampler, dataloader)`` over ``--train_data_dir`` reading ``guidance_types`` (default
    ``pipe``'s guidance types) beside the frames, randomly cropped and resized back (``random_crop``) or whole: items of
    ``--num_frames`` frames with ``num_references`` references of their own video (RAS), batches of
    ``--train_batch_size`` mixing videos (ERS), the order a pure function of ``(--seed, epoch)``.

    Raises ``ValueError`` / ``FileNotFoundError`` naming ``--train_data_dir`` for a damaged video folder, and naming
    ``--train_batch_size`` when not one full batch fits in the data.
    """
    with naming("--train_data_dir", args.train_data_dir):
        dataset = ReferenceVideoDataset(
            args.train_data_dir, args.resolution, num_frames=args.num_frames, frame_stride=args.frame_stride,
            num_references=num_references, guidance_types=guidance_types or pipe.guidance_types,
            clip_image_processor=pipe.feature_extractor, seed=args.seed, random_crop=random_crop,
            reference_crop_scale=args.reference_crop_scale,
            reference_crop_probability=args.reference_crop_probability, cache_images=args.cache_frames,
        )
    sampler = MultiSourceBatchSampler(dataset, args.train_batch_size, seed=args.seed, drop_last=True)
    dataloader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_reference_batch,
                                             num_workers=args.dataloader_num_workers)
    if len(dataloader) == 0:
        raise ValueError(f"--train_batch_size {args.train_batch_size} exceeds the {len(dataset)} training items of "
                         f"--train_data_dir {args.train_data_dir}.")
    return dataset, sampler, dataloader


def build_lr_scheduler(
    name: str, optimizer: torch.optim.Optimizer, warmup_steps: int, max_train_steps: int, num_processes: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """diffusers' ``get_scheduler`` with warm-up and training steps counted as accelerate counts them.

    A scheduler passed through ``accelerator.prepare`` advances ``num_processes`` times per optimiser step, so both
    lengths are multiplied by ``num_processes``: the LR at step ``n`` is then the same for any number of processes.
    """
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps * num_processes,
                         num_training_steps=max_train_steps * num_processes)


# -- the run -----------------------------------------------------------------------------------------------------------


def make_accelerator(args: argparse.Namespace, run_name: str, **kwargs) -> tuple[Accelerator, torch.dtype]:
    """The run's ``Accelerator`` (``--gradient_accumulation_steps``, ``--mixed_precision``, the ``--report_to``
    trackers under ``--output_dir/--logging_dir``; ``kwargs`` passed on), INFO logging, every RNG seeded with
    ``--seed``. Returns it and the dtype of the frozen models under mixed precision. Writes nothing yet."""
    logging_dir = os.path.join(args.output_dir, args.logging_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=trackers(args.report_to, logging_dir, run_name),
        project_config=ProjectConfiguration(args.output_dir, logging_dir=logging_dir),
        **kwargs,
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    set_seed(args.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    return accelerator, weight_dtype


def start_run(
    accelerator: Accelerator, args: argparse.Namespace, run_name: str, pipe, guidance_types: Sequence[str] | None = None
) -> tuple[int, list[dict]]:
    """Resume from ``--resume_from_checkpoint``, then make ``--output_dir`` and start the trackers (logging every
    number, string and flag of ``args``), then read ``--num_validation_videos`` validation samples with the maps
    ``guidance_types`` (default ``pipe``'s) when ``--validation_steps`` is given (main process only). Returns the step
    to continue from and the samples."""
    global_step = resume(accelerator, args.output_dir, args.resume_from_checkpoint)
    if global_step:
        logger.info(f"Resumed from {args.resume_from_checkpoint} at step {global_step}.")
    if accelerator.is_main_process:
        os.makedirs(args.output_dir, exist_ok=True)
        accelerator.init_trackers(run_name, config={
            key: value for key, value in vars(args).items() if isinstance(value, (int, float, str, bool))})
    validation = []
    if args.validation_steps and accelerator.is_main_process:
        validation = validation_samples(args.train_data_dir, args.resolution, args.validation_num_frames,
                                        args.num_validation_videos, guidance_types or pipe.guidance_types,
                                        pipe.feature_extractor, args.seed)
    return global_step, validation


def training_batches(
    accelerator: Accelerator, dataloader, dataset: ReferenceVideoDataset, sampler: MultiSourceBatchSampler,
    micro_step: int,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(micro_step, batch)`` from ``micro_step`` on, epoch after epoch, without end. Each epoch's order is set on
    ``dataset`` and ``sampler`` (a pure function of ``(seed, epoch)``) only when its first batch is asked for, and
    the batches a resumed run already trained on in its epoch are skipped: a resumed run sees what an uninterrupted
    one would."""
    while True:
        epoch, skip = divmod(micro_step, len(dataloader))
        dataset.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in accelerator.skip_first_batches(dataloader, skip) if skip else dataloader:
            yield micro_step, batch
            micro_step += 1


def optimizer_step(
    accelerator: Accelerator, output, step: int, parameters: Sequence[torch.nn.Parameter], optimizer, lr_scheduler,
    max_grad_norm: float,
) -> None:
    """One micro-step's update, inside ``accelerator.accumulate``: stop on a NaN / inf loss naming ``step``
    (``output.loss`` and ``output.terms``), backward, clip the gradients when they sync, step the optimiser and the
    LR schedule."""
    check_finite_loss(output.loss.detach(), step, output.terms)
    accelerator.backward(output.loss)
    if accelerator.sync_gradients:
        accelerator.clip_grad_norm_(parameters, max_grad_norm)
    optimizer.step()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def log_step(accelerator: Accelerator, args: argparse.Namespace, progress, output, lr_scheduler, step: int) -> None:
    """After optimiser step ``step``: the progress bar, every loss term and the LR to the trackers, and a checkpoint
    every ``--checkpointing_steps`` (keeping ``--checkpoints_total_limit``)."""
    progress.update(1)
    progress.set_postfix(loss=f"{output.terms['loss']:.4g}")
    accelerator.log({**output.terms, "lr": lr_scheduler.get_last_lr()[0]}, step=step)
    if step % args.checkpointing_steps == 0:
        save_checkpoint(accelerator, args.output_dir, step, args.checkpoints_total_limit)


def push_output(args: argparse.Namespace) -> None:
    """Upload ``--output_dir`` to ``--hub_model_id`` without checkpoints, logs and validation videos."""
    ignore = tuple(pattern.format(logging_dir=args.logging_dir) for pattern in PUSH_IGNORE_PATTERNS)
    push_folder_to_hub(args.output_dir, args.hub_model_id, args.hub_token, ignore_patterns=ignore)
