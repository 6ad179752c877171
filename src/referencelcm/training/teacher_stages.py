"""The teacher's stages around the training step (``examples/train_teacher.py``, docs/design.md §4): the starting
pipeline in each stage's form, what trains, the VAE stage's loss and validation, and the finished teacher.

- ``vae``: the pipeline's ``AutoencoderKL`` trains on the frames (:mod:`.vae`), then gets its ``scaling_factor``.
- ``image_encoder``: the CLIP image encoder learns to carry a frame's region colours (:mod:`.image_encoder`;
  SynthDance data only: it needs the part labels).
- ``image``: single frames; D-UNet, R-UNet (less its unread layers) and guidance encoder (:mod:`.teacher`). From a
  motion D-UNet only its 2-D part trains; the motion modules are put back on save.
- ``video``: clips; the D-UNet is inflated to a ``UNetMotionModel`` (:func:`inflate`) and only its motion modules
  train.

Errors name the script's flags (``--pretrained_model``, ``--model_config`` …), as the script checks them first.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from diffusers import AutoencoderKL, DDIMScheduler, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from einops import rearrange
from PIL import Image
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ..arguments import save_image_atomically
from ..data.layout import MASK_FOLDER, META_FILE, SEMANTIC_FOLDER, list_frames, list_videos, open_image
from ..metrics import paint_regions
from ..pipelines import factory
from ..pipelines.loading import load_pipeline
from ..pipelines.pipeline_referencelcm import ReferenceLCMPipeline
from .image_encoder import RegionColourModel, clip_inputs, part_labels, region_colour_loss, region_colour_targets
from .script_support import check_model_folder
from .teacher import ReferenceNet, TeacherModels, set_trainable
from .unets import motion_unet_with_spatial_weights, spatial_unet_from_motion
from .vae import VAEReconstruction, latent_scaling_factor, person_crops, vae_loss

logger = logging.getLogger(__name__)
STAGES = ("vae", "image_encoder", "image", "video")
# --model_config keys the stage decides (2-D or motion D-UNet, DDIM, no guidance-scale embedding for a teacher); a
# config may name them, they are then overruled with a warning.
STAGE_DECIDED_KEYS = ("motion", "scheduler", "time_cond_proj_dim")
# Components holding trained parameters per stage (which of their parameters: teacher.set_trainable).
TRAINED_COMPONENTS = {
    "vae": ("vae",),
    "image_encoder": ("image_encoder",),
    "image": ("denoising_unet", "reference_unet", "guidance_encoder"),
    "video": ("denoising_unet",),
}
TEACHER_TAGS = ("referencelcm", "human-animation", "reference-net", "teacher")


# -- starting point ----------------------------------------------------------------------------------------------------


def stage_model_config(path: str | os.PathLike | None) -> dict:
    """``--model_config``'s sizes (:func:`~referencelcm.pipelines.factory.load_model_config`; ``{}`` for ``None``)
    without the keys the stage decides (:data:`STAGE_DECIDED_KEYS`, warned about)."""
    if path is None:
        return {}
    sizes = factory.load_model_config(path, "--model_config")
    overruled = sorted(set(sizes) & set(STAGE_DECIDED_KEYS))
    if overruled:
        logger.warning(f"--model_config: {overruled} are decided by --stage (2-D or motion D-UNet, DDIM); ignored.")
    return {key: value for key, value in sizes.items() if key not in STAGE_DECIDED_KEYS}


def load_component(cls, path: str | os.PathLike, subfolder: str, argument: str):
    """``cls`` from ``path/subfolder`` (an SD1.5-style model folder) or from ``path`` itself."""
    return cls.from_pretrained(check_model_folder(argument, path, subfolder))


def new_teacher_components(sizes: dict, seed: int = 0) -> dict:
    """Fresh components for a teacher (2-D D-UNet, DDIM) sized by ``sizes`` (its ``seed`` key, else ``seed``).

    Champ starts both UNets from the same SD1.5 weights, so from step 0 the D-UNet's attention reads reference tokens
    from its own feature space. From scratch both start equal too: the R-UNet is a copy of the D-UNet (measured on the
    bundled build: with independent inits the teacher learnt pose but hardly any appearance from the reference).
    """
    components = factory.build_components(**{"seed": seed, **sizes}, motion=False, scheduler="ddim")
    components["reference_unet"].load_state_dict(components["denoising_unet"].state_dict())
    return components


def replace_from_folders(
    components: dict,
    unet_path: str | os.PathLike | None = None,
    vae_path: str | os.PathLike | None = None,
    image_encoder_path: str | os.PathLike | None = None,
) -> dict:
    """``components`` with both UNets, the VAE and the image encoder (and its feature extractor, when one lies beside
    it) read from SD1.5-style folders where given (``--pretrained_unet_path``, ``--pretrained_vae_path``,
    ``--image_encoder_path``); a guidance encoder that no longer fits the D-UNet or the VAE is rebuilt to fit
    (:func:`~referencelcm.pipelines.factory.matching_guidance_encoder`). Raises ``ValueError`` naming
    ``--image_encoder_path`` when the image embeddings do not fit the UNets' cross-attention."""
    components = dict(components)
    if unet_path is not None:
        for name in ("reference_unet", "denoising_unet"):
            components[name] = load_component(UNet2DConditionModel, unet_path, "unet", "--pretrained_unet_path")
    if vae_path is not None:
        components["vae"] = load_component(AutoencoderKL, vae_path, "vae", "--pretrained_vae_path")
    if image_encoder_path is not None:
        components["image_encoder"] = load_component(CLIPVisionModelWithProjection, image_encoder_path,
                                                     "image_encoder", "--image_encoder_path")
        folder = Path(image_encoder_path)
        for candidate in (folder, folder.parent / "feature_extractor", folder / "feature_extractor"):
            if (candidate / "preprocessor_config.json").is_file():
                components["feature_extractor"] = CLIPImageProcessor.from_pretrained(candidate)
                break
    guidance_encoder, unet, vae = components["guidance_encoder"], components["denoising_unet"], components["vae"]
    if (unet_path is not None or vae_path is not None) and not factory.guidance_encoder_fits(guidance_encoder, unet, vae):
        components["guidance_encoder"] = factory.matching_guidance_encoder(
            guidance_encoder.config.guidance_types, unet, vae, guidance_encoder.config.add_attention)
    embedding_dim = components["image_encoder"].config.projection_dim
    if embedding_dim != unet.config.cross_attention_dim:
        raise ValueError(
            f"The image encoder's projection_dim ({embedding_dim}) must equal the UNets' cross_attention_dim "
            f"({unet.config.cross_attention_dim}); give a matching --image_encoder_path "
            "(e.g. SD image variations' image_encoder for SD1.5 UNets)."
        )
    return components


def teacher_pipeline(
    stage: str,
    pretrained_model: str | None = None,
    model_config: str | os.PathLike | None = None,
    seed: int = 0,
    pretrained_unet_path: str | os.PathLike | None = None,
    pretrained_vae_path: str | os.PathLike | None = None,
    image_encoder_path: str | os.PathLike | None = None,
) -> ReferenceLCMPipeline:
    """The starting teacher: ``pretrained_model`` (a pipeline folder or Hub id), or new components sized by
    ``model_config`` (:func:`new_teacher_components`); SD1.5-style folders then replace UNets, VAE and image encoder
    (:func:`replace_from_folders`). The scheduler becomes DDIM on the saved (or Champ's) schedule."""
    if pretrained_model is not None:
        pipe = load_pipeline(pretrained_model, "--pretrained_model")
        components, settings = dict(pipe.components), pipe.settings
        unused = [key for key in stage_model_config(model_config) if not key.startswith("motion_")]
        if unused:
            logger.warning(f"--pretrained_model gives the components; --model_config keys {unused} are not used "
                           "(only motion_* keys apply, to a new motion adapter in stage video).")
    else:
        sizes = stage_model_config(model_config)
        settings = {"motion_norm_mode": "video", "reference_locality": sizes.pop("reference_locality", None)}
        components = new_teacher_components(sizes, seed)
    components = replace_from_folders(components, pretrained_unet_path, pretrained_vae_path, image_encoder_path)
    components["scheduler"] = DDIMScheduler.from_config(components["scheduler"].config)
    if pretrained_model is None and pretrained_vae_path is None and stage != "vae":
        logger.warning("No trained VAE given (--pretrained_vae_path or a --pretrained_model folder): the teacher "
                       "trains on a randomly initialised one. Run --stage vae first for a useful latent space.")
    return ReferenceLCMPipeline(**components, **settings)


def with_denoising_unet(pipe: ReferenceLCMPipeline, unet: torch.nn.Module) -> ReferenceLCMPipeline:
    """The same components with another D-UNet (reference hooks and guidance injection installed anew)."""
    components = dict(pipe.components, denoising_unet=unet)
    return ReferenceLCMPipeline(**components, **pipe.settings)


def inflate(
    pipe: ReferenceLCMPipeline,
    motion_adapter_path: str | os.PathLike | None = None,
    model_config: str | os.PathLike | None = None,
) -> ReferenceLCMPipeline:
    """Stage video: the D-UNet as a ``UNetMotionModel``, with the adapter at ``motion_adapter_path``, else its
    existing motion modules, else a new zero-initialised adapter sized by ``model_config``'s ``motion_*`` keys (so it
    first computes what the 2-D D-UNet computes frame by frame)."""
    unet = pipe.denoising_unet
    if isinstance(unet, UNetMotionModel) and motion_adapter_path is None:
        return pipe  # continue training its motion modules
    spatial = spatial_unet_from_motion(unet) if isinstance(unet, UNetMotionModel) else unet
    if motion_adapter_path is not None:
        adapter = MotionAdapter.from_pretrained(check_model_folder("--motion_adapter_path", motion_adapter_path))
    else:
        sizes = stage_model_config(model_config)
        adapter = factory.build_motion_adapter(spatial, **{key: value for key, value in sizes.items()
                                                           if key.startswith("motion_")})
    return with_denoising_unet(pipe, UNetMotionModel.from_unet2d(spatial, adapter))


def stage_pipeline(
    pipe: ReferenceLCMPipeline,
    stage: str,
    guidance_type_dropout: float | None = None,
    motion_adapter_path: str | os.PathLike | None = None,
    model_config: str | os.PathLike | None = None,
) -> tuple[ReferenceLCMPipeline, UNetMotionModel | None]:
    """``pipe`` in the stage's form: stage video inflates the D-UNet (:func:`inflate`); stage image trains the 2-D
    part of a motion D-UNet, which is returned too so its motion modules can be put back on save
    (:func:`finished_teacher`). ``guidance_type_dropout`` goes into the guidance encoder's config, where the training
    step (and later the distillation) reads it."""
    if guidance_type_dropout is not None:
        pipe.guidance_encoder.register_to_config(guidance_type_dropout=guidance_type_dropout)
    if stage == "video":
        return inflate(pipe, motion_adapter_path, model_config), None
    if stage == "image" and isinstance(pipe.denoising_unet, UNetMotionModel):
        return with_denoising_unet(pipe, spatial_unet_from_motion(pipe.denoising_unet)), pipe.denoising_unet
    return pipe, None


# -- what trains -------------------------------------------------------------------------------------------------------


def trainable_network(
    pipe: ReferenceLCMPipeline,
    stage: str,
    device: torch.device,
    weight_dtype: torch.dtype = torch.float32,
    train_image_encoder: bool = False,
    gradient_checkpointing: bool = False,
) -> torch.nn.Module:
    """Freeze what the stage does not train (:func:`~referencelcm.training.teacher.set_trainable`), move every model
    to ``device`` (frozen ones in ``weight_dtype``), turn on gradient checkpointing; returns the one module whose
    ``forward`` uses every trained parameter (:class:`VAEReconstruction`, :class:`RegionColourModel` with a new colour
    head, or :class:`ReferenceNet`), for ``accelerator.prepare``."""
    pipe.set_progress_bar_config(disable=True)
    models = TeacherModels(pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet,
                           pipe.guidance_encoder)
    if stage in ("vae", "image_encoder"):
        trained_model = pipe.vae if stage == "vae" else pipe.image_encoder
        for model in (pipe.vae, pipe.image_encoder, pipe.reference_unet, pipe.denoising_unet, pipe.guidance_encoder):
            model.requires_grad_(model is trained_model)
    else:
        set_trainable(models, stage, train_image_encoder=train_image_encoder)
    trained = TRAINED_COMPONENTS[stage] + (("image_encoder",) if train_image_encoder else ())
    for name, model in pipe.components.items():
        if isinstance(model, torch.nn.Module):
            model.to(device)
            if name not in trained and weight_dtype != torch.float32:
                model.to(dtype=weight_dtype)
            model.train(name in trained)
            if gradient_checkpointing and name in trained and model._supports_gradient_checkpointing:
                model.enable_gradient_checkpointing()
    if stage == "vae":
        return VAEReconstruction(pipe.vae)
    if stage == "image_encoder":
        return RegionColourModel(pipe.image_encoder).to(device)
    return ReferenceNet(pipe.reference_unet, pipe.denoising_unet, pipe.guidance_encoder, pipe.image_encoder)


def stage_maps(
    stage: str, guidance_types: Sequence[str], train_data_dir: str | os.PathLike, person_weight: float = 0.0
) -> tuple[str, ...]:
    """The maps a stage reads beside the frames: the guidance types, plus the person masks for a ``person_weight``
    (``--person_loss_weight``); for stage vae only the masks (when every video of ``train_data_dir`` has them; its
    ``person_weight``, ``--vae_person_weight``, needs them); for stage image_encoder the semantic maps (whose data
    :func:`check_image_encoder_data` checks)."""
    if stage == "image_encoder":
        return (SEMANTIC_FOLDER,)
    has_masks = all((video / MASK_FOLDER).is_dir() for video in list_videos(train_data_dir))
    if person_weight and not has_masks:
        flag = "--vae_person_weight" if stage == "vae" else "--person_loss_weight"
        raise FileNotFoundError(f"`{flag}` needs a {MASK_FOLDER}/ folder in every video of `--train_data_dir` "
                                f"{str(train_data_dir)!r}.")
    if stage != "vae":
        return (*guidance_types, MASK_FOLDER) if person_weight else tuple(guidance_types)
    return (MASK_FOLDER,) if has_masks else tuple(guidance_types)


def check_image_encoder_data(train_data_dir: str | os.PathLike, resolution: int | None = None) -> None:
    """Stage image_encoder's labels are SynthDance's part colours, read at the frames' own size: every video of
    ``train_data_dir`` must be SynthDance's, with semantic maps, and its frames ``resolution`` pixels square (a resize
    would blend neighbouring parts' colours into wrong labels). Raises ``ValueError`` naming the flags."""
    for video in list_videos(train_data_dir):
        if not (video / SEMANTIC_FOLDER).is_dir() or not _is_synthdance(video):
            raise ValueError(
                f"--stage image_encoder learns each body part's colour from SynthDance's part labels, but video "
                f"{str(video)!r} of --train_data_dir is not a SynthDance video with a {SEMANTIC_FOLDER}/ folder "
                "(`referencelcm synth` makes them). For other data start from a pretrained image encoder "
                "(--image_encoder_path) instead.")
        size = open_image(video / SEMANTIC_FOLDER / list_frames(video)[0]).size
        if resolution is not None and size != (resolution, resolution):
            raise ValueError(
                f"--stage image_encoder reads part labels at the frames' own size, but video {str(video)!r} has "
                f"{size[0]}x{size[1]} frames and --resolution is {resolution}: pass --resolution {size[0]} (or "
                "generate the data at that size).")


def _is_synthdance(video: Path) -> bool:
    """Whether a video's ``meta.json`` names SynthDance as its generator (False without a readable one)."""
    try:
        meta = json.loads((video / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("generator") == "synthdance"


# -- stage vae ---------------------------------------------------------------------------------------------------------


def vae_stage_loss(
    vae: AutoencoderKL, network: torch.nn.Module, kl_weight: float, crop_size: int = 0, person_weight: float = 0.0
) -> Callable[[dict[str, Any], torch.Generator], Any]:
    """Stage vae's step, ``(batch, generator) → VAELossOutput``: frames (or person-centred crops of ``crop_size``)
    through the VAE, person pixels weighted by ``person_weight`` (masks from the batch's ``mask`` maps when the dataset
    reads them; :func:`~referencelcm.training.vae.vae_loss`)."""
    def compute(batch, generator):
        pixels = rearrange(batch["target"], "b c f h w -> (b f) c h w").to(vae.device)
        masks = torch.zeros(pixels.shape[0], *pixels.shape[2:], dtype=torch.bool, device=pixels.device)
        if MASK_FOLDER in batch["guidance"]:
            masks = rearrange(batch["guidance"][MASK_FOLDER][:, 0] > 0.5, "b f h w -> (b f) h w").to(pixels.device)
        if crop_size:
            pixels, masks = person_crops(pixels, masks, crop_size, generator)
        return vae_loss(vae, pixels, kl_weight, generator, reconstruction_model=network, masks=masks,
                        person_weight=person_weight)
    return compute


@torch.no_grad()
def save_reconstructions(vae: AutoencoderKL, samples: list[dict], output_dir: str | os.PathLike, step: int) -> Path:
    """Stage vae's validation: the validation references (``reference_image`` ``(3, H, W)`` in [0, 1]) above their
    reconstructions in one PNG, ``output_dir/validation/step-<step>/reconstruction.png``."""
    references = torch.stack([sample["reference_image"] for sample in samples]).to(vae.device, vae.dtype) * 2 - 1
    reconstructions = vae.decode(vae.encode(references).latent_dist.mode()).sample
    grid = torch.cat([torch.cat(list(references), dim=2), torch.cat(list(reconstructions), dim=2)], dim=1)
    array = ((grid.float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return save_image_atomically(Image.fromarray(array),
                                 Path(output_dir) / "validation" / f"step-{step}" / "reconstruction.png")


# -- stage image_encoder -----------------------------------------------------------------------------------------------


def image_encoder_stage_loss(
    network: torch.nn.Module, feature_extractor: CLIPImageProcessor
) -> Callable[[dict[str, Any], torch.Generator], Any]:
    """Stage image_encoder's step, ``(batch, generator) → ColourLossOutput``: each item's frame, randomly cropped into
    the encoder's input (:func:`~referencelcm.training.image_encoder.clip_inputs`, crops drawn from ``generator``),
    through the encoder and colour head (``network``, a :class:`RegionColourModel`, maybe wrapped), against the
    frame's region colours (:func:`~referencelcm.training.image_encoder.region_colour_targets`)."""
    def compute(batch, generator):
        frames = (batch["target"][:, :, 0] + 1) / 2  # (B, 3, H, W) in [0, 1]
        targets = region_colour_targets(frames, batch["guidance"][SEMANTIC_FOLDER][:, :, 0])
        prediction = network(clip_inputs(frames, feature_extractor, generator))
        return region_colour_loss(prediction, targets.to(prediction.device))
    return compute


@torch.no_grad()
def save_colour_predictions(
    model: RegionColourModel, feature_extractor: CLIPImageProcessor, samples: list[dict], output_dir: str | os.PathLike,
    step: int,
) -> Path | None:
    """Stage image_encoder's validation: each validation reference (``reference_image`` ``(3, H, W)`` in [0, 1])
    above the parts of its first guidance frame painted in the colours predicted from that reference, in one PNG,
    ``output_dir/validation/step-<step>/colours.png``. None (nothing written) when the samples hold no semantic maps."""
    if not samples or any(SEMANTIC_FOLDER not in sample["guidance"] for sample in samples):
        logger.warning(f"Validation samples hold no {SEMANTIC_FOLDER} maps; no colour predictions written.")
        return None
    references = torch.stack([sample["reference_image"] for sample in samples]).float()
    images = (references * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    device = next(model.parameters()).device
    pixels = feature_extractor(images=list(images), return_tensors="pt").pixel_values.to(device)
    colours = model(pixels).float().clamp(0, 1).cpu()  # (V, R, 3)
    labels = part_labels(torch.stack([sample["guidance"][SEMANTIC_FOLDER][0] for sample in samples]))
    painted = torch.cat([paint_regions(label[None], colour) for label, colour in zip(labels, colours)]).float()
    grid = torch.cat([torch.cat(list(references), dim=2), torch.cat(list(painted), dim=2)], dim=1)
    return save_image_atomically(Image.fromarray((grid.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()),
                                 Path(output_dir) / "validation" / f"step-{step}" / "colours.png")


# -- the finished teacher ----------------------------------------------------------------------------------------------


def finished_teacher(
    pipe: ReferenceLCMPipeline,
    stage: str,
    dataset: torch.utils.data.Dataset,
    motion_source: UNetMotionModel | None = None,
) -> ReferenceLCMPipeline:
    """The whole teacher in float32 and eval mode; stage vae: the VAE's ``scaling_factor`` measured on up to 16
    evenly spaced items of ``dataset``; stage image from a motion D-UNet (``motion_source``): the trained 2-D weights
    back in it."""
    for model in pipe.components.values():
        if isinstance(model, torch.nn.Module):
            if model.dtype != torch.float32:
                model.to(dtype=torch.float32)
            model.eval()
    if stage == "vae":
        batches = [dataset[index]["target"][:, 0][None] for index in range(0, len(dataset), max(1, len(dataset) // 16))]
        scaling_factor = latent_scaling_factor(pipe.vae, batches)
        pipe.vae.register_to_config(scaling_factor=scaling_factor)
        logger.info(f"VAE latent scaling_factor set to {scaling_factor:.4f}.")
    if motion_source is not None:
        pipe = with_denoising_unet(pipe, motion_unet_with_spatial_weights(motion_source, pipe.denoising_unet))
    return pipe


def teacher_description(
    pipe: ReferenceLCMPipeline, stage: str, max_train_steps: int, train_data_dir: str | os.PathLike, resolution: int,
    start: str,
) -> str:
    """The model card's description of a teacher stage's output, started from ``start`` (a portable name)."""
    description = (
        f"ReferenceNet teacher, stage `{stage}` of examples/train_teacher.py: {max_train_steps} steps on "
        f"`{Path(train_data_dir).name}` at {resolution} px, started from `{start}`. Sample with DDIM "
        f"(~20 steps) and guidance_scale 3.5; distil with examples/train_cosec_lcd.py."
    )
    if pipe.guidance_encoder.accepts_subsets:
        description += (f" Trained with guidance-type dropout {pipe.guidance_encoder.config.guidance_type_dropout}: "
                        f"takes any non-empty subset of {list(pipe.guidance_types)}.")
    return description
