"""``referencelcm convert-champ``: Champ checkpoints → a :class:`~referencelcm.ReferenceLCMPipeline` teacher folder.

Input is Champ's ``pretrained_models/`` layout (Champ's README and ``configs/inference/inference.yaml``)::

    pretrained_models/
      champ/{denoising_unet,reference_unet,motion_module,guidance_encoder_<type>}.pth
      stable-diffusion-v1-5/unet/config.json   (+ diffusion_pytorch_model.bin, optional here)
      sd-vae-ft-mse/                            AutoencoderKL
      image_encoder/                            CLIPVisionModelWithProjection (sd-image-variations)

Output is a diffusers pipeline folder (safetensors) whose D-UNet is a stock ``UNetMotionModel`` with Champ's motion
modules normalising per frame (``motion_norm_mode="frame"`` in ``model_index.json``) and whose scheduler is Champ's
DDIM (v-prediction, zero-terminal-SNR, trailing spacing). Every tensor of the Champ files either lands in the output
bit-exactly (checked) or is dropped for a reason listed in :mod:`referencelcm.convert.champ_keys`; anything else is an
error.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import diffusers
import torch
from diffusers import AutoencoderKL, MotionAdapter, UNet2DConditionModel, UNetMotionModel
from diffusers.utils import logging as diffusers_logging
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ..arguments import atomic_output_dir, check_at_least, check_new_folder
from ..models.guidance_encoder import MultiGuidanceEncoder
from ..models.motion import set_motion_norm_mode
from ..pipelines.loading import check_component_folder
from ..state_dicts import load_state_dict_file
from .champ_config import (
    BETA_SCHEDULES,
    CHAMP_ATTENTION_HEADS,
    check_guidance_layout,
    describe_scheduler,
    read_champ_config,
    resolve_settings,
)
from .champ_keys import (
    MOTION_ALLOWED_MISSING,
    REFERENCE_UNET_ALLOWED_MISSING,
    AllowedMissing,
    CHAMP_GUIDANCE_TYPES,
    CHAMP_MOTION_NORM_GROUPS,
    DroppedKeys,
    UnmappedKeysError,
    convert_guidance_state_dict,
    convert_motion_state_dict,
    guidance_encoder_layout,
    infer_motion_adapter_config,
    is_motion_key,
)

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
MOTION_NORM_MODE = "frame"  # Champ's motion modules normalise each frame on its own (see models/motion.py)
PIPELINE_CLASS_NAME = "ReferenceLCMPipeline"

Logger = Callable[[str], None]


# -- input files -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ChampPaths:
    """Where each input of a conversion lives (see :func:`resolve_champ_paths`)."""

    denoising_unet: Path
    reference_unet: Path
    motion_module: Path
    guidance_encoders: dict[str, Path]
    unet_config_dir: Path
    base_unet_weights: Path | None
    vae: Path
    image_encoder: Path


def resolve_champ_paths(
    champ_dir: str | Path,
    *,
    guidance_types: Sequence[str] | None = None,
    base_model: str | Path | None = None,
    vae: str | Path | None = None,
    image_encoder: str | Path | None = None,
    motion_module: str | Path | None = None,
) -> ChampPaths:
    """Find Champ's files under ``champ_dir`` (``pretrained_models/`` or its ``champ/`` folder).

    ``base_model`` (SD1.5 folder or its ``unet/``), ``vae``, ``image_encoder`` and ``motion_module`` override Champ's
    default locations. ``guidance_types=None`` takes every ``guidance_encoder_<type>.pth`` found (Champ's order first).
    """
    champ_dir = Path(champ_dir)
    if not champ_dir.is_dir():
        raise FileNotFoundError(f"--champ-dir {champ_dir}: not a directory.")
    if (champ_dir / "champ" / "denoising_unet.pth").is_file():
        checkpoints, root = champ_dir / "champ", champ_dir
    elif (champ_dir / "denoising_unet.pth").is_file():
        checkpoints, root = champ_dir, champ_dir.parent
    else:
        raise FileNotFoundError(
            f"--champ-dir {champ_dir}: expected Champ's layout with {champ_dir / 'champ' / 'denoising_unet.pth'} "
            f"(pretrained_models/) or {champ_dir / 'denoising_unet.pth'} (pretrained_models/champ/)."
        )
    unet_config_dir = _unet_config_dir(Path(base_model) if base_model else root / "stable-diffusion-v1-5")
    base_weights = [
        unet_config_dir / name for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
    ]
    return ChampPaths(
        denoising_unet=checkpoints / "denoising_unet.pth",
        reference_unet=_existing_file(checkpoints / "reference_unet.pth", "--champ-dir"),
        motion_module=_existing_file(
            Path(motion_module) if motion_module else checkpoints / "motion_module.pth", "--motion-module"
        ),
        guidance_encoders=_guidance_files(checkpoints, guidance_types),
        unet_config_dir=unet_config_dir,
        base_unet_weights=next((path for path in base_weights if path.is_file()), None),
        vae=_model_dir(Path(vae) if vae else root / "sd-vae-ft-mse", "--vae", "an AutoencoderKL (sd-vae-ft-mse)"),
        image_encoder=_model_dir(
            Path(image_encoder) if image_encoder else root / "image_encoder",
            "--image-encoder",
            "a CLIPVisionModelWithProjection (sd-image-variations' image_encoder)",
        ),
    )


def _existing_file(path: Path, argument: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{argument}: expected the file {path}; it does not exist.")
    return path


def _model_dir(path: Path, argument: str, what: str) -> Path:
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{argument} {path}: expected a folder with config.json holding {what}.")
    check_component_folder(path, f"{argument} {path}")
    return path


def _unet_config_dir(path: Path) -> Path:
    for candidate in (path / "unet", path):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(
        f"--base-model {path}: expected Stable Diffusion 1.5's UNet config at {path / 'unet' / 'config.json'} "
        f"(or {path / 'config.json'})."
    )


def _guidance_files(checkpoints: Path, guidance_types: Sequence[str] | None) -> dict[str, Path]:
    if guidance_types is None:
        found = sorted(
            path.name[len("guidance_encoder_") : -len(".pth")] for path in checkpoints.glob("guidance_encoder_*.pth")
        )
        guidance_types = [name for name in CHAMP_GUIDANCE_TYPES if name in found]
        guidance_types += [name for name in found if name not in CHAMP_GUIDANCE_TYPES]
        if not guidance_types:
            raise FileNotFoundError(f"--champ-dir: no guidance_encoder_<type>.pth in {checkpoints}.")
    if len(guidance_types) == 0 or len(set(guidance_types)) != len(guidance_types):
        raise ValueError(f"--guidance-types must name distinct guidance types, got {list(guidance_types)}.")
    return {
        name: _existing_file(checkpoints / f"guidance_encoder_{name}.pth", "--guidance-types")
        for name in guidance_types
    }


def load_champ_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a Champ ``.pth`` state dict safely (``weights_only=True``, memory-mapped when the format allows)."""
    return load_state_dict_file(path, "--champ-dir")


# -- the report --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilledKeys:
    """Keys of a component that no Champ file holds, and where their values came from."""

    component: str
    keys: tuple[str, ...]
    how: str


@dataclass
class ConversionReport:
    """What a conversion did: tensors taken from each file, keys dropped (with reasons) and keys filled."""

    output: Path
    dtype: str
    scheduler: str  # describe_scheduler()
    converted: list[tuple[str, str, int]] = field(default_factory=list)  # (component, source file, tensors)
    dropped: list[DroppedKeys] = field(default_factory=list)
    filled: list[FilledKeys] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    champ_config: Path | None = None
    from_config: list[str] = field(default_factory=list)  # what came from --champ-config (or was defaulted)

    def format(self) -> str:
        """The report as printed by the CLI."""
        lines = [
            f"Converted Champ checkpoints into {self.output}",
            f"  dtype {self.dtype}; scheduler {self.scheduler}; motion_norm_mode={MOTION_NORM_MODE}",
        ]
        if self.champ_config is not None:
            lines.append(f"Settings from --champ-config {self.champ_config}:")
            lines += [f"  {line}" for line in self.from_config]
        lines.append("Tensors converted (component <- file):")
        lines += [f"  {component:<17} {count:>6}  <- {source}" for component, source, count in self.converted]
        reasons = list(dict.fromkeys(entry.reason for entry in self.dropped))
        lines.append("Dropped keys (no destination, nothing lost):" if self.dropped else "Dropped keys: none")
        width = max((len(entry.source) for entry in self.dropped), default=0)
        lines += [
            f"  {entry.source:<{width}} {len(entry.keys):>5}  {entry.pattern}  [{reasons.index(entry.reason) + 1}]"
            for entry in self.dropped
        ]
        lines += [f"  [{number}] {reason}" for number, reason in enumerate(reasons, start=1)]
        lines.append("Missing keys (not in the Champ files):" if self.filled else "Missing keys: none")
        lines += [
            f"  {entry.component}: {len(entry.keys)} keys: {_examples(entry.keys, 4)}\n      filled: {entry.how}"
            for entry in self.filled
        ]
        lines.append("Unexpected keys: none (every other key of the Champ files was converted)")
        lines += [f"Note: {note}" for note in self.notes]
        lines += [f"Warning: {warning}" for warning in self.warnings]
        return "\n".join(lines)


def _examples(keys: Sequence[str], count: int = 3) -> str:
    return ", ".join(keys[:count]) + (", ..." if len(keys) > count else "")


# -- loading with full accounting --------------------------------------------------------------------------------


class _BaseWeights:
    """SD1.5 UNet weights, read only when a Champ file lacks a key (Champ loads them first, then its files)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._state_dict: dict[str, torch.Tensor] | None = None

    def get(self) -> dict[str, torch.Tensor] | None:
        if self.path is not None and self._state_dict is None:
            self._state_dict = load_state_dict_file(self.path, "--base-model")
        return self._state_dict


def _load_accounted(
    module: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    component: str,
    source: str,
    report: ConversionReport,
    base: _BaseWeights | None = None,
    allowed_missing: Sequence[AllowedMissing] = (),
) -> None:
    """Load ``state_dict`` into ``module`` so that no tensor is dropped and no parameter is left untrained.

    Unexpected keys and shape mismatches raise. Missing keys are filled as ``allowed_missing`` documents, else from
    ``base`` (the SD1.5 UNet, exactly as Champ's loader does), else raise. Records what it did in ``report``.
    """
    expected = module.state_dict()
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise UnmappedKeysError(source, unexpected, f"the parameter names of {component} ({type(module).__name__})")
    mismatched = [
        f"{key} {tuple(tensor.shape)} (expected {tuple(expected[key].shape)})"
        for key, tensor in state_dict.items()
        if tensor.shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"{source}: {len(mismatched)} tensor(s) do not fit {component}'s config: {_examples(mismatched, 5)}. "
            "Check the UNet config / guidance layout against the one Champ was trained with."
        )
    full = dict(state_dict)
    remaining = []
    by_reason: dict[str, list[str]] = {}
    for key in sorted(set(expected) - set(state_dict)):
        rule = next((rule for rule in allowed_missing if re.fullmatch(rule.pattern, key)), None)
        if rule is None:
            remaining.append(key)
            continue
        full[key] = expected[key] if rule.fill is None else torch.full_like(expected[key], rule.fill)
        by_reason.setdefault(rule.reason, []).append(key)
    report.filled += [FilledKeys(component, tuple(keys), reason) for reason, keys in by_reason.items()]
    if remaining:
        full.update(_from_base(remaining, component, source, base))
        report.filled.append(FilledKeys(component, tuple(remaining), f"from {base.path}, as Champ's loader does"))
    module.load_state_dict(full, strict=True)
    report.converted.append((component, source, len(state_dict)))


def _from_base(keys: Sequence[str], component: str, source: str, base: _BaseWeights | None) -> dict:
    base_state_dict = base.get() if base is not None else None
    if base_state_dict is None or any(key not in base_state_dict for key in keys):
        hint = ""
        if base is not None:
            hint = (
                "; Champ fills such keys from the SD1.5 UNet weights (diffusion_pytorch_model.safetensors or .bin "
                "next to the UNet config; see --base-model), which "
                + ("were not found" if base_state_dict is None else "lack them too")
            )
        raise ValueError(
            f"{source}: {len(keys)} parameter(s) of {component} are missing, so they would keep random values: "
            f"{_examples(keys, 8)}{hint}."
        )
    return {key: base_state_dict[key] for key in keys}


def _check_copied(model: nn.Module, sources: Mapping[str, torch.Tensor], component: str) -> None:
    """Raise unless every tensor of ``model`` equals its source exactly (guards diffusers' 2D → motion copying)."""
    state_dict = model.state_dict()
    if set(state_dict) != set(sources):
        difference = sorted(set(state_dict) ^ set(sources))
        raise RuntimeError(f"{component}: converted keys differ from the loaded ones: {_examples(difference, 8)}.")
    changed = [key for key, tensor in state_dict.items() if not torch.equal(tensor, sources[key])]
    if changed:
        raise RuntimeError(f"{component}: tensors changed while building the model: {_examples(changed, 8)}.")


# -- components --------------------------------------------------------------------------------------------------


def build_reference_unet(
    unet_config: Mapping,
    state_dict: Mapping[str, torch.Tensor],
    source: str,
    report: ConversionReport,
    base: _BaseWeights | None = None,
) -> UNet2DConditionModel:
    """The R-UNet: an SD-config ``UNet2DConditionModel`` with ``reference_unet.pth``.

    Champ loads this file with ``strict=False``; here only its documented gap (the output head) may be missing.
    """
    unet = UNet2DConditionModel.from_config(unet_config)
    _load_accounted(unet, state_dict, "reference_unet", source, report, base, REFERENCE_UNET_ALLOWED_MISSING)
    return unet


def build_denoising_unet(
    unet_config: Mapping,
    state_dict: Mapping[str, torch.Tensor],
    motion_state_dict: Mapping[str, torch.Tensor],
    sources: tuple[str, str],
    report: ConversionReport,
    *,
    motion_num_attention_heads: int = CHAMP_ATTENTION_HEADS,
    base: _BaseWeights | None = None,
) -> UNetMotionModel:
    """The D-UNet: ``denoising_unet.pth`` in a 2D UNet plus ``motion_module.pth`` mapped onto a ``MotionAdapter``,
    joined by ``UNetMotionModel.from_unet2d`` (checked bit-exact) and set to normalise per frame."""
    unet_source, motion_source = sources
    spatial = {key: tensor for key, tensor in state_dict.items() if not is_motion_key(key)}
    overriding = {key: tensor for key, tensor in state_dict.items() if is_motion_key(key)}
    if overriding:  # Champ loads motion_module.pth first and denoising_unet.pth over it: the latter's keys win
        report.notes.append(f"{len(overriding)} motion keys of {unet_source} override those of {motion_source}")
    unet2d = UNet2DConditionModel.from_config(unet_config)
    _load_accounted(unet2d, spatial, "denoising_unet", unet_source, report, base)

    motion, dropped = convert_motion_state_dict({**motion_state_dict, **overriding}, motion_source)
    report.dropped += dropped
    # The group count is no weight; UNetMotionModel gives its motion modules the UNet's (checked below).
    adapter_config = infer_motion_adapter_config(
        motion,
        unet2d.config.block_out_channels,
        motion_num_attention_heads,
        motion_source,
        motion_norm_num_groups=unet2d.config.norm_num_groups,
    )
    _check_motion_fits(unet2d.config, adapter_config, motion_source, report)
    report.notes.append(f"motion adapter config read from {motion_source}: {adapter_config}")
    adapter = MotionAdapter(**adapter_config)
    _load_accounted(adapter, motion, "denoising_unet", motion_source, report, allowed_missing=MOTION_ALLOWED_MISSING)

    with _quiet_diffusers():  # from_unet2d's internal .to(dtype) warns about fp32 modules even when there are none
        denoising_unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    _check_copied(denoising_unet, {**unet2d.state_dict(), **adapter.state_dict()}, "denoising_unet")
    set_motion_norm_mode(denoising_unet, MOTION_NORM_MODE)
    return denoising_unet


@contextlib.contextmanager
def _quiet_diffusers() -> Iterator[None]:
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers_logging.set_verbosity(verbosity)


def _check_motion_fits(unet_config: Mapping, adapter_config: Mapping, source: str, report: ConversionReport) -> None:
    if unet_config["norm_num_groups"] != CHAMP_MOTION_NORM_GROUPS:
        # Not an error: the group count is no weight, and a UNet config other than SD1.5's (32) is not Champ's anyway.
        report.warnings.append(
            f"the UNet config has norm_num_groups={unet_config['norm_num_groups']}; diffusers' UNetMotionModel gives its "
            f"motion modules the UNet's group count, while Champ's motion modules always use "
            f"{CHAMP_MOTION_NORM_GROUPS}, so their normalisation differs from Champ's (SD1.5's config has 32)."
        )
    layers_per_block = unet_config["layers_per_block"]
    if isinstance(layers_per_block, int):
        layers_per_block = (layers_per_block,) * len(unet_config["block_out_channels"])
    if adapter_config["motion_layers_per_block"] != tuple(layers_per_block):
        raise ValueError(
            f"{source}: {adapter_config['motion_layers_per_block']} motion modules per down block, but the UNet config "
            f"has layers_per_block={unet_config['layers_per_block']}; Champ has one motion module per resnet."
        )


def build_guidance_encoder(
    state_dicts: Mapping[str, Mapping[str, torch.Tensor]],
    sources: Mapping[str, str],
    report: ConversionReport,
    *,
    attention_num_heads: int = CHAMP_ATTENTION_HEADS,
) -> MultiGuidanceEncoder:
    """One :class:`MultiGuidanceEncoder` from Champ's per-type ``GuidanceEncoder`` state dicts (one layout for all)."""
    layouts = {name: guidance_encoder_layout(state_dict, sources[name]) for name, state_dict in state_dicts.items()}
    if len({tuple(sorted(layout.items())) for layout in layouts.values()}) != 1:
        raise ValueError(f"Champ's guidance encoders must share one layout to form a MultiGuidanceEncoder: {layouts}.")
    layout = next(iter(layouts.values()))
    encoder = MultiGuidanceEncoder(guidance_types=tuple(state_dicts), attention_num_heads=attention_num_heads, **layout)
    for name, state_dict in state_dicts.items():
        converted, dropped = convert_guidance_state_dict(state_dict, sources[name])
        report.dropped += dropped
        _load_accounted(encoder.encoders[name], converted, "guidance_encoder", sources[name], report)
    return encoder


def build_feature_extractor(image_encoder_dir: Path, image_size: int) -> CLIPImageProcessor:
    """The image encoder folder's preprocessor if it has one, else CLIP's default at the encoder's resolution
    (224 for sd-image-variations: what Champ's ``CLIPImageProcessor()`` does)."""
    if (image_encoder_dir / "preprocessor_config.json").is_file():
        return CLIPImageProcessor.from_pretrained(image_encoder_dir)
    return CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size})


# -- the folder --------------------------------------------------------------------------------------------------

# model_index.json entries: (library, class) as DiffusionPipeline.save_pretrained records them; a class from a library
# diffusers does not know is recorded by its full module path, where the loader also finds ModelMixin.
_COMPONENT_CLASSES = {
    "vae": ("diffusers", "AutoencoderKL"),
    "image_encoder": ("transformers", "CLIPVisionModelWithProjection"),
    "feature_extractor": ("transformers", "CLIPImageProcessor"),
    "reference_unet": ("diffusers", "UNet2DConditionModel"),
    "denoising_unet": ("diffusers", "UNetMotionModel"),
    "guidance_encoder": (MultiGuidanceEncoder.__module__, MultiGuidanceEncoder.__name__),
    "scheduler": ("diffusers", "DDIMScheduler"),
}


def write_model_index(folder: Path) -> None:
    """Write ``model_index.json`` for a ``ReferenceLCMPipeline`` with Champ's frame-wise motion normalisation."""
    index = {"_class_name": PIPELINE_CLASS_NAME, "_diffusers_version": diffusers.__version__}
    index.update({name: list(entry) for name, entry in _COMPONENT_CLASSES.items()})
    index["motion_norm_mode"] = MOTION_NORM_MODE
    (folder / "model_index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _save(component: nn.Module, folder: Path, dtype: torch.dtype) -> None:
    # .half()/.float() rather than .to(dtype), which makes diffusers warn about fp32 modules even when there are none
    component = component.half() if dtype == torch.float16 else component.float()
    component.save_pretrained(folder, safe_serialization=True)


# -- the conversion ----------------------------------------------------------------------------------------------


def convert_champ(
    champ_dir: str | Path,
    output: str | Path,
    *,
    dtype: str = "fp32",
    beta_schedule: str | None = None,
    guidance_types: Sequence[str] | None = None,
    base_model: str | Path | None = None,
    vae: str | Path | None = None,
    image_encoder: str | Path | None = None,
    motion_module: str | Path | None = None,
    guidance_attention_heads: int | None = None,
    motion_attention_heads: int | None = None,
    champ_config: str | Path | None = None,
    overwrite: bool = False,
    log: Logger | None = print,
) -> ConversionReport:
    """Convert Champ's checkpoints into a ``ReferenceLCMPipeline`` folder at ``output`` (written atomically).

    Args:
        champ_dir: Champ's ``pretrained_models/`` (or its ``champ/`` subfolder).
        output: folder to create.
        dtype: ``"fp32"`` or ``"fp16"`` for every saved weight.
        beta_schedule: ``"scaled_linear"`` (Champ's training schedule) or ``"linear"`` (its inference yaml);
            ``None``: ``champ_config``'s, else ``"scaled_linear"``.
        guidance_types: guidance encoders to convert (any subset); ``None``: ``champ_config``'s ``guidance_types``,
            else every one found.
        base_model, vae, image_encoder, motion_module: override Champ's default locations.
        guidance_attention_heads, motion_attention_heads: head counts (not stored in the weights); ``None``:
            ``champ_config``'s, else Champ's 8.
        champ_config: Champ's ``configs/inference/inference.yaml``: head counts, scheduler settings and guidance
            types where the arguments above are ``None`` (see :mod:`referencelcm.convert.champ_config`); what it
            gave is listed in the report.
        overwrite: replace a non-empty ``output``.
        log: progress messages (``None`` for quiet).

    Returns:
        The :class:`ConversionReport` (what the CLI prints).
    """
    # 1. check the arguments and find the inputs before writing anything
    log = log or (lambda message: None)
    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {tuple(DTYPES)}, got {dtype!r}.")
    for flag, heads in (("--guidance-attention-heads", guidance_attention_heads),
                        ("--motion-attention-heads", motion_attention_heads)):
        if heads is not None:
            check_at_least(flag, heads, 1)
    config = None if champ_config is None else read_champ_config(champ_config)
    settings = resolve_settings(
        config,
        guidance_types=guidance_types,
        beta_schedule=beta_schedule,
        guidance_attention_heads=guidance_attention_heads,
        motion_attention_heads=motion_attention_heads,
    )
    scheduler = settings.scheduler
    output = Path(output)
    check_new_folder("--output", output, overwrite)
    paths = resolve_champ_paths(
        champ_dir,
        guidance_types=settings.guidance_types,
        base_model=base_model,
        vae=vae,
        image_encoder=image_encoder,
        motion_module=motion_module,
    )
    unet_config = dict(UNet2DConditionModel.load_config(paths.unet_config_dir))
    report = ConversionReport(
        output=output, dtype=dtype, scheduler=describe_scheduler(scheduler),
        champ_config=None if config is None else config.path, from_config=settings.taken,
    )
    torch_dtype = DTYPES[dtype]
    base = _BaseWeights(paths.base_unet_weights)

    with atomic_output_dir("--output", output, overwrite) as staging:
        # 2. scheduler, image encoder + feature extractor, VAE: Champ uses them as they are
        scheduler.save_pretrained(staging / "scheduler")
        log(f"image encoder, VAE <- {paths.image_encoder}, {paths.vae}")
        vae_factor = _write_image_models(paths, unet_config, staging, torch_dtype)
        # 3. guidance encoders: one MultiGuidanceEncoder holding every requested type
        log(f"guidance encoders <- {', '.join(path.name for path in paths.guidance_encoders.values())}")
        state_dicts = {name: load_champ_checkpoint(path) for name, path in paths.guidance_encoders.items()}
        sources = {name: path.name for name, path in paths.guidance_encoders.items()}
        encoder = build_guidance_encoder(
            state_dicts, sources, report, attention_num_heads=settings.guidance_attention_heads
        )
        checked = check_guidance_layout(config, encoder.config)
        report.from_config += [checked] if checked else []
        _check_guidance_fits(encoder, unet_config, vae_factor)
        _save(encoder, staging / "guidance_encoder", torch_dtype)
        del encoder, state_dicts
        # 4. R-UNet
        log(f"reference UNet <- {paths.reference_unet}")
        state_dict = load_champ_checkpoint(paths.reference_unet)
        unet = build_reference_unet(unet_config, state_dict, paths.reference_unet.name, report, base)
        _save(unet, staging / "reference_unet", torch_dtype)
        del unet, state_dict
        # 5. D-UNet with motion modules
        log(f"denoising UNet <- {paths.denoising_unet}, {paths.motion_module}")
        unet = build_denoising_unet(
            unet_config,
            load_champ_checkpoint(paths.denoising_unet),
            load_champ_checkpoint(paths.motion_module),
            (paths.denoising_unet.name, paths.motion_module.name),
            report,
            motion_num_attention_heads=settings.motion_attention_heads,
            base=base,
        )
        _save(unet, staging / "denoising_unet", torch_dtype)
        del unet
        # 6. the pipeline's index; leaving the block renames the staging folder to `output`
        write_model_index(staging)
    log(f"wrote {output}")
    return report


def _write_image_models(paths: ChampPaths, unet_config: Mapping, staging: Path, dtype: torch.dtype) -> int:
    """Copy the image encoder (+ feature extractor) and the VAE; return the VAE's downsampling factor."""
    clip = CLIPVisionModelWithProjection.from_pretrained(paths.image_encoder)
    if clip.config.projection_dim != unet_config["cross_attention_dim"]:
        raise ValueError(
            f"--image-encoder {paths.image_encoder}: projection_dim {clip.config.projection_dim} must equal the "
            f"UNet's cross_attention_dim {unet_config['cross_attention_dim']} (Champ feeds image_embeds as tokens)."
        )
    build_feature_extractor(paths.image_encoder, clip.config.image_size).save_pretrained(staging / "feature_extractor")
    _save(clip, staging / "image_encoder", dtype)
    vae = AutoencoderKL.from_pretrained(paths.vae)
    _save(vae, staging / "vae", dtype)
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _check_guidance_fits(encoder: MultiGuidanceEncoder, unet_config: Mapping, vae_factor: int) -> None:
    width = unet_config["block_out_channels"][0]
    if encoder.config.guidance_embedding_channels != width:
        raise ValueError(
            f"Champ's guidance encoders output {encoder.config.guidance_embedding_channels} channels, but the UNet's "
            f"first block has {width} (check --base-model)."
        )
    if encoder.downsample_factor != vae_factor:
        raise ValueError(
            f"Champ's guidance encoders downsample by {encoder.downsample_factor}, the VAE by {vae_factor} "
            "(check --vae)."
        )


# -- CLI ---------------------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``referencelcm convert-champ``."""
    parser.add_argument(
        "--champ-dir", required=True, help="Champ's pretrained_models/ folder (or its champ/ subfolder)"
    )
    parser.add_argument("--output", required=True, help="pipeline folder to create")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default="fp32", help="dtype of the saved weights")
    parser.add_argument(
        "--beta-schedule",
        choices=BETA_SCHEDULES,
        default=None,
        help="DDIM beta schedule: scaled_linear (what Champ trained with; the default without --champ-config) or "
        "linear (Champ's inference yaml)",
    )
    parser.add_argument(
        "--guidance-types",
        nargs="+",
        default=None,
        help="guidance encoders to convert (default: --champ-config's guidance_types, else every one found)",
    )
    parser.add_argument(
        "--base-model",
        default=None,
        help="SD1.5 folder with unet/config.json (default: <champ-dir>/stable-diffusion-v1-5)",
    )
    parser.add_argument("--vae", default=None, help="AutoencoderKL folder (default: <champ-dir>/sd-vae-ft-mse)")
    parser.add_argument(
        "--image-encoder", default=None, help="CLIP image encoder folder (default: <champ-dir>/image_encoder)"
    )
    parser.add_argument("--motion-module", default=None, help="motion module file (default: <champ>/motion_module.pth)")
    parser.add_argument(
        "--champ-config",
        default=None,
        help="Champ's configs/inference/inference.yaml: head counts, scheduler settings and guidance types wherever "
        "--*-attention-heads, --beta-schedule, --guidance-types are not given (the report lists what was taken)",
    )
    parser.add_argument(
        "--guidance-attention-heads", type=int, default=None, help="default: --champ-config's, else Champ's 8"
    )
    parser.add_argument(
        "--motion-attention-heads", type=int, default=None, help="default: --champ-config's, else Champ's 8"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace a non-empty --output folder")


def run(args: argparse.Namespace) -> int:
    """Run the conversion and print its report."""
    report = convert_champ(
        args.champ_dir,
        args.output,
        dtype=args.dtype,
        beta_schedule=args.beta_schedule,
        guidance_types=args.guidance_types,
        base_model=args.base_model,
        vae=args.vae,
        image_encoder=args.image_encoder,
        motion_module=args.motion_module,
        guidance_attention_heads=args.guidance_attention_heads,
        motion_attention_heads=args.motion_attention_heads,
        champ_config=args.champ_config,
        overwrite=args.overwrite,
    )
    print(report.format())
    return 0
