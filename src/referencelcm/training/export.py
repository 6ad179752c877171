"""Turning a trained D-UNet into artefacts: the student pipeline folder, LoRA weights, model card, validation videos."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..arguments import save_image_atomically
from ..pipelines.loading import looks_like_local_path
from ..pipelines.pipeline_referencelcm import ReferenceLCMPipeline
from .consistency import student_lcm_scheduler_from_teacher

LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_PREFIX = "unet"
LORA_TARGET_MODULES = ("to_q", "to_k", "to_v", "to_out.0")


def student_pipeline(
    teacher: ReferenceLCMPipeline, student_unet: nn.Module, num_ddim_timesteps: int = 50, timestep_scaling: float = 10.0
) -> ReferenceLCMPipeline:
    """The teacher's frozen components + ``student_unet`` + an ``LCMScheduler`` on the teacher's schedule."""
    pipe = ReferenceLCMPipeline(
        vae=teacher.vae,
        image_encoder=teacher.image_encoder,
        feature_extractor=teacher.feature_extractor,
        reference_unet=teacher.reference_unet,
        denoising_unet=student_unet,
        guidance_encoder=teacher.guidance_encoder,
        scheduler=student_lcm_scheduler_from_teacher(teacher.scheduler, num_ddim_timesteps, timestep_scaling),
        **teacher.settings,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_student_pipeline(
    pipe: ReferenceLCMPipeline,
    output_dir: str | os.PathLike,
    base_model: str | None = None,
    description: str | None = None,
    tags: Sequence[str] = ("referencelcm", "cosec-lcd", "latent-consistency-model", "human-animation"),
    extra_files: dict[str, Path] | None = None,
    hub_model_id: str | None = None,
    hub_token: str | None = None,
) -> None:
    """Write ``pipe`` with a model card (``README.md``) to ``output_dir`` atomically (temp folder + rename).

    ``extra_files`` ``{name: path}`` are moved into the folder too (e.g. LoRA weights). Checkpoint folders already in
    ``output_dir`` are kept: the pipeline goes to ``output_dir`` entries one by one, ``model_index.json`` last, so a
    folder with ``model_index.json`` always holds a complete pipeline. The card comes from diffusers'
    ``load_or_create_model_card`` for ``hub_model_id`` (an existing Hub card is kept) or, with no Hub id, from the same
    template offline (asking the Hub about a local folder name would only time out).
    """
    from diffusers.utils.hub_utils import populate_model_card

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "model_index.json").unlink(missing_ok=True)
    temporary = output_dir / f".tmp-pipeline-{uuid.uuid4().hex[:8]}"
    try:
        pipe.save_pretrained(temporary)
        strip_local_paths(temporary)
        card = _model_card(hub_model_id, hub_token, base_model, description)
        populate_model_card(card, tags=list(tags)).save(temporary / "README.md")
        for name, path in (extra_files or {}).items():
            os.replace(path, temporary / name)
        for entry in sorted(temporary.iterdir(), key=lambda entry: entry.name == "model_index.json"):
            destination = output_dir / entry.name
            if destination.is_dir():
                shutil.rmtree(destination)
            os.replace(entry, destination)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def strip_local_paths(folder: str | os.PathLike) -> None:
    """Remove ``_name_or_path`` (where diffusers records the folder a model was loaded from: an absolute path on the
    build machine) from every JSON config under ``folder``, so a saved pipeline carries no paths of this machine."""
    for path in sorted(Path(folder).rglob("*.json")):
        config = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(config, dict) and "_name_or_path" in config:
            del config["_name_or_path"]
            path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def portable_name(model: str | os.PathLike | None) -> str | None:
    """How a model card names a starting point: a local path by its last part only (never this machine's absolute
    path), a Hub repo id as it is."""
    if model is None:
        return None
    model = os.fspath(model)
    return Path(model).name if looks_like_local_path(model) else model


def _model_card(hub_model_id: str | None, token: str | None, base_model: str | None, description: str | None):
    from diffusers.utils.hub_utils import MODEL_CARD_TEMPLATE_PATH, load_or_create_model_card
    from huggingface_hub import ModelCard, ModelCardData

    base_model = base_model if base_model is not None and not os.path.isdir(base_model) else None
    if hub_model_id is not None:
        return load_or_create_model_card(hub_model_id, token=token, is_pipeline=True, from_training=True,
                                         base_model=base_model, model_description=description, license="apache-2.0")
    card_data = ModelCardData(license="apache-2.0", library_name="diffusers", base_model=base_model)
    return ModelCard.from_template(card_data, template_path=MODEL_CARD_TEMPLATE_PATH, model_description=description)


def lora_state_dict(unet: nn.Module) -> dict[str, torch.Tensor]:
    """The student's LoRA weights in diffusers' format, keys prefixed ``unet.`` (as diffusers' LoRA loaders save)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    state = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    return {f"{LORA_PREFIX}.{key}": value.detach().contiguous().cpu() for key, value in state.items()}


def merge_lora(unet: nn.Module) -> nn.Module:
    """Fuse the LoRA layers into the base weights and remove them (in place); returns ``unet``."""
    unet.fuse_lora()
    unet.unload_lora()
    return unet


def load_lora_into_pipeline(pipe: ReferenceLCMPipeline, lora_dir: str | os.PathLike) -> ReferenceLCMPipeline:
    """Load ``pytorch_lora_weights.safetensors`` from ``lora_dir`` onto ``pipe.denoising_unet`` (the teacher's).

    ``load_lora_adapter`` wraps the projection layers; the reference hooks stay on the attention modules. Swap the
    scheduler for ``student_lcm_scheduler_from_teacher`` as well.
    """
    pipe.denoising_unet.load_lora_adapter(str(lora_dir), weight_name=LORA_WEIGHT_NAME, prefix=LORA_PREFIX)
    return pipe


def save_video_frames(frames: np.ndarray, path: str | os.PathLike, fps: int = 8) -> Path:
    """Write ``(F, H, W, 3)`` floats in [0, 1] as an animated GIF (Pillow only; no ffmpeg needed)."""
    images = [Image.fromarray((np.clip(frame, 0, 1) * 255).round().astype(np.uint8)) for frame in frames]
    return save_image_atomically(images[0], path, format="GIF", save_all=True, append_images=images[1:],
                                 duration=int(1000 / fps), loop=0)


@torch.no_grad()
def run_validation(
    pipe: ReferenceLCMPipeline,
    samples: Sequence[dict[str, Any]],
    output_dir: str | os.PathLike,
    step: int,
    accelerator=None,
    num_inference_steps: int = 4,
    seed: int = 0,
    guidance_scale: float = 1.0,
) -> list[np.ndarray]:
    """Generate one video per sample (``{"reference_image": (3,H,W) [0,1], "guidance": {type: (F,3,H,W)}}``) in
    ``num_inference_steps`` steps of the pipeline's scheduler (``guidance_scale`` > 1: CFG, e.g. a DDIM teacher), save
    GIFs to ``output_dir/validation/step-<step>/`` and log to trackers."""
    videos = []
    for index, sample in enumerate(samples):
        generator = torch.Generator().manual_seed(seed + index)
        frames = pipe(sample["reference_image"], sample["guidance"], num_inference_steps=num_inference_steps,
                      guidance_scale=guidance_scale, generator=generator, output_type="np").frames[0]
        save_video_frames(frames, Path(output_dir) / "validation" / f"step-{step}" / f"sample-{index}.gif")
        videos.append(frames)
    if accelerator is not None:
        _log_videos(accelerator, videos, step)
    return videos


def validation_samples(
    data_dir: str | os.PathLike,
    resolution: int,
    num_frames: int,
    num_videos: int,
    guidance_types: Sequence[str],
    feature_extractor: Any = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """The first clip of each of the first ``num_videos`` videos of a Champ-layout root, centre-cropped, as
    :func:`run_validation` samples: ``reference_image`` ``(3, H, W)`` in [0, 1], ``guidance``
    ``{type: (F, 3, H, W)}``."""
    from .data import ReferenceVideoDataset

    dataset = ReferenceVideoDataset(
        data_dir, resolution, num_frames=num_frames, num_references=1, guidance_types=guidance_types,
        random_crop=False, clip_image_processor=feature_extractor, seed=seed,
    )
    firsts = [int(np.flatnonzero(dataset.item_source_ids == source)[0]) for source in range(dataset.num_sources)]
    samples = []
    for index in firsts[:num_videos]:
        item = dataset[index]
        guidance = {name: maps.permute(1, 0, 2, 3) for name, maps in item["guidance"].items()}  # (F, 3, H, W)
        samples.append({"reference_image": (item["references"][0] + 1) / 2, "guidance": guidance})
    return samples


def push_folder_to_hub(
    output_dir: str | os.PathLike, hub_model_id: str | None = None, hub_token: str | None = None,
    ignore_patterns: Sequence[str] = ("checkpoint-*", ".*", "logs/*", "validation/*"),
) -> str:
    """Upload a finished output folder (not its checkpoints, logs or validation videos); returns the repo id."""
    from huggingface_hub import create_repo, upload_folder

    repo_id = create_repo(hub_model_id or Path(output_dir).name, exist_ok=True, token=hub_token).repo_id
    upload_folder(repo_id=repo_id, folder_path=str(output_dir), token=hub_token, ignore_patterns=list(ignore_patterns))
    return repo_id


def _log_videos(accelerator, videos: list[np.ndarray], step: int) -> None:
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            for index, frames in enumerate(videos):
                tracker.writer.add_images(f"validation/sample-{index}", frames, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [
                wandb.Video((np.clip(frames, 0, 1) * 255).astype(np.uint8).transpose(0, 3, 1, 2), fps=8)
                for frames in videos
            ]}, step=step)
