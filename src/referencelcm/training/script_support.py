"""Setup shared by the training scripts: argument checks that run before anything is written to ``--output_dir``,
and the LR schedule as accelerate steps it.

Both scripts call :func:`check_numbers` and check every path (:func:`check_data_root`,
:func:`~referencelcm.pipelines.loading.check_pipeline_argument`, :func:`check_model_folder`) first, so a mistake is
one clear error and ``--output_dir`` is not created.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import torch
from diffusers.optimization import get_scheduler

from ..arguments import check_at_least, check_finite, naming
from ..data.layout import list_videos
from ..pipelines.loading import check_component_folder
from .data import MultiSourceBatchSampler, ReferenceVideoDataset, collate_reference_batch


def check_numbers(args: argparse.Namespace, at_least_one: Sequence[str], non_negative: Sequence[str] = ()) -> None:
    """Every float argument finite; those named in ``at_least_one`` >= 1 and in ``non_negative`` >= 0 (``None``, "not
    given", passes). Errors name the flag (``--max_train_steps must be >= 1, got 0.``)."""
    for name, value in vars(args).items():
        if isinstance(value, float):
            check_finite(f"--{name}", value)
    for name in at_least_one:
        check_at_least(f"--{name}", getattr(args, name), 1)
    for name in non_negative:
        check_at_least(f"--{name}", getattr(args, name), 0)


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
