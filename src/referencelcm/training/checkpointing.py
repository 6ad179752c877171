"""Training-state checkpoints shared by the training scripts: atomic folders, EMA hooks, resume, NaN guard.

A checkpoint is ``OUTPUT/checkpoint-<step>/``, written by ``accelerator.save_state`` (student weights as safetensors,
optimiser, LR scheduler, RNG states) into a hidden temporary folder that is renamed into place only when complete,
so a run killed mid-write leaves the previous checkpoints intact. Extra modules (the EMA target) are saved by
:class:`ModuleCheckpointHooks` as safetensors next to accelerate's files. The step is the folder's name; the data order
is a pure function of ``(seed, step)`` in the scripts, so nothing else needs saving.
"""

from __future__ import annotations

import math
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

CHECKPOINT_PATTERN = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``[(step, folder)]`` of complete checkpoints in ``output_dir``, oldest first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [(int(match.group(1)), entry) for entry in output_dir.iterdir()
             if entry.is_dir() and (match := CHECKPOINT_PATTERN.match(entry.name))]
    return sorted(found)


def resolve_resume_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> tuple[Path, int] | None:
    """``(folder, step)`` to resume from: ``"latest"`` (None when there is none yet) or a checkpoint folder path."""
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return (checkpoints[-1][1], checkpoints[-1][0]) if checkpoints else None
    path = Path(resume_from_checkpoint)
    match = CHECKPOINT_PATTERN.match(path.name)
    if not path.is_dir() or match is None:
        raise FileNotFoundError(
            f"`--resume_from_checkpoint` must be 'latest' or an existing 'checkpoint-<step>' folder, got {str(path)!r}."
        )
    return path, int(match.group(1))


def resume(accelerator, output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> int:
    """Load the checkpoint ``--resume_from_checkpoint`` names (see :func:`resolve_resume_checkpoint`) into
    ``accelerator``; returns its step (0 when there is nothing to resume).

    accelerate reads the optimiser, scheduler and RNG files with ``torch.load(weights_only=True)``; a file that holds
    more than tensors is refused with a ``ValueError`` naming the flag and the folder (the pickle error as its cause).
    """
    found = resolve_resume_checkpoint(output_dir, resume_from_checkpoint)
    if found is None:
        return 0
    folder, step = found
    try:
        accelerator.load_state(str(folder))
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"--resume_from_checkpoint {folder}: a file in it holds more than tensors, and weights_only loading "
            f"refuses to unpickle it ({str(error).splitlines()[0]})."
        ) from error
    return step


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None) -> Path:
    """``accelerator.save_state`` into ``output_dir/checkpoint-<step>`` atomically; keep at most ``total_limit``.

    Every process writes (accelerate saves one RNG file per process) into ``.tmp-checkpoint-<step>``; the main
    process renames it once all are done, after pruning the oldest checkpoints.
    """
    output_dir = Path(output_dir)
    final, temporary = output_dir / f"checkpoint-{step}", output_dir / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(temporary, ignore_errors=True)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if total_limit is not None:
            existing = [folder for _, folder in list_checkpoints(output_dir) if folder != final]
            for old in existing[: max(0, len(existing) - total_limit + 1)]:
                shutil.rmtree(old)
        if final.exists():
            shutil.rmtree(final)
        os.replace(temporary, final)
    accelerator.wait_for_everyone()
    return final


class ModuleCheckpointHooks:
    """Save/load extra modules (e.g. the EMA target) as ``<name>.safetensors`` inside accelerate's state folders.

    Register with ``accelerator.register_save_state_pre_hook(hooks.save)`` and
    ``accelerator.register_load_state_pre_hook(hooks.load)``.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules

    def save(self, models, weights, output_dir: str) -> None:
        for name, module in self.modules.items():
            state = {key: value.detach().contiguous().cpu() for key, value in module.state_dict().items()}
            save_file(state, os.path.join(output_dir, f"{name}.safetensors"))

    def load(self, models, input_dir: str) -> None:
        for name, module in self.modules.items():
            path = os.path.join(input_dir, f"{name}.safetensors")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Checkpoint {input_dir!r} has no {name}.safetensors (expected from training).")
            module.load_state_dict(load_file(path), strict=True)


def step_generator(seed: int, process_index: int, micro_step: int) -> torch.Generator:
    """The random source of micro-batch ``micro_step`` (noise, timesteps, dropout): a pure function of the seed, so
    resuming from a checkpoint continues exactly."""
    state = np.random.SeedSequence([seed, process_index, micro_step]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def check_finite_loss(loss: torch.Tensor | float, step: int, terms: dict[str, float] | None = None) -> None:
    """Raise ``FloatingPointError`` naming the step (and every term) when the loss is NaN or infinite."""
    value = float(loss)
    if not math.isfinite(value):
        detail = "" if terms is None else " (" + ", ".join(f"{key}={val:.4g}" for key, val in terms.items()) + ")"
        raise FloatingPointError(
            f"Loss became {value} at step {step}{detail}; stopping before the update. Checkpoints on disk are from "
            "earlier steps and intact: lower --learning_rate or check the data, then --resume_from_checkpoint latest."
        )
