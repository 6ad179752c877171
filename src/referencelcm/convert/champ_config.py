"""Champ's ``configs/inference/inference.yaml``: what ``convert-champ --champ-config`` takes from it.

Champ's ``inference.py`` builds its models from this file: the motion modules get
``unet_additional_kwargs.motion_module_kwargs.num_attention_heads`` heads, the sampler is
``DDIMScheduler(**noise_scheduler_kwargs)`` plus, with ``enable_zero_snr``, ``rescale_betas_zero_snr=True,
timestep_spacing="trailing", prediction_type="v_prediction"``, and ``guidance_types`` names the guidance encoders.
Head counts are not stored in Champ's weights, so they come from here or from the command line. The guidance encoders'
head count is not in Champ's file (its scripts build ``GuidanceEncoder`` with its default, 8); a config that has
``guidance_encoder_kwargs.attention_num_heads`` (a fork passing every key) gives it. The other
``guidance_encoder_kwargs`` (widths) are fixed by the weights and only checked against them.

Precedence: a command-line value, then the config, then Champ's defaults (8 heads, the ``scaled_linear`` schedule
Champ trained with).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from diffusers import DDIMScheduler

from ..pipelines.factory import TEACHER_SCHEDULER_CONFIG

CHAMP_ATTENTION_HEADS = 8  # Champ's GuidanceEncoder default and its motion modules' (inference.yaml)
BETA_SCHEDULES = ("scaled_linear", "linear")
MOTION_HEADS_KEY = "unet_additional_kwargs.motion_module_kwargs.num_attention_heads"
GUIDANCE_HEADS_KEY = "guidance_encoder_kwargs.attention_num_heads"
GUIDANCE_LAYOUT_KEYS = ("guidance_input_channels", "block_out_channels", "guidance_embedding_channels")
ZERO_SNR_SETTINGS = dict(rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")


@dataclass(frozen=True)
class ChampInferenceConfig:
    """The entries of a Champ inference config that a conversion uses (``None``: not in the file).

    Attributes:
        scheduler_kwargs: ``DDIMScheduler`` arguments exactly as Champ's ``inference.py`` builds them.
        guidance_layout: ``guidance_encoder_kwargs`` entries the weights determine too (checked, not used).
    """

    path: Path
    motion_attention_heads: int | None
    guidance_attention_heads: int | None
    guidance_types: tuple[str, ...] | None
    scheduler_kwargs: dict | None
    guidance_layout: dict = field(default_factory=dict)


@dataclass
class ConversionSettings:
    """What a conversion runs with, and a line per value taken from the config (``taken``) or defaulted."""

    guidance_types: tuple[str, ...] | None
    guidance_attention_heads: int
    motion_attention_heads: int
    scheduler: DDIMScheduler
    taken: list[str] = field(default_factory=list)


def read_champ_config(path: str | Path) -> ChampInferenceConfig:
    """Read Champ's ``inference.yaml`` (or any config of its structure); unknown sections are ignored."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--champ-config {path}: not a file (Champ's configs/inference/inference.yaml).")
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, Mapping):
        raise ValueError(f"--champ-config {path}: expected a YAML mapping, got {type(config).__name__}.")
    guidance_types = config.get("guidance_types")
    if guidance_types is not None and (
        not isinstance(guidance_types, Sequence) or isinstance(guidance_types, str) or not guidance_types
    ):
        raise ValueError(f"--champ-config {path}: `guidance_types` must be a non-empty list, got {guidance_types!r}.")
    guidance_kwargs = _mapping(config, "guidance_encoder_kwargs", path)
    return ChampInferenceConfig(
        path=path,
        motion_attention_heads=_heads(config, MOTION_HEADS_KEY, path),
        guidance_attention_heads=_heads(config, GUIDANCE_HEADS_KEY, path),
        guidance_types=None if guidance_types is None else tuple(str(name) for name in guidance_types),
        scheduler_kwargs=_scheduler_kwargs(config, path),
        guidance_layout={key: guidance_kwargs[key] for key in GUIDANCE_LAYOUT_KEYS if key in guidance_kwargs},
    )


def _mapping(config: Mapping, key: str, path: Path) -> Mapping:
    value = config.get(key) or {}
    if not isinstance(value, Mapping):
        raise ValueError(f"--champ-config {path}: `{key}` must be a mapping, got {type(value).__name__}.")
    return value


def _lookup(config: Mapping, dotted_key: str) -> Any:
    value: Any = config
    for part in dotted_key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _heads(config: Mapping, dotted_key: str, path: Path) -> int | None:
    value = _lookup(config, dotted_key)
    if value is not None and (type(value) is not int or value < 1):
        raise ValueError(f"--champ-config {path}: `{dotted_key}` must be a positive integer, got {value!r}.")
    return value


def _scheduler_kwargs(config: Mapping, path: Path) -> dict | None:
    if "noise_scheduler_kwargs" not in config:
        return None
    kwargs = dict(_mapping(config, "noise_scheduler_kwargs", path))
    accepted = set(inspect.signature(DDIMScheduler.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"--champ-config {path}: `noise_scheduler_kwargs` has {unknown}, which DDIMScheduler does not "
                         "take.")
    if config.get("enable_zero_snr"):
        kwargs.update(ZERO_SNR_SETTINGS)
    return kwargs


def resolve_settings(
    config: ChampInferenceConfig | None,
    *,
    guidance_types: Sequence[str] | None = None,
    beta_schedule: str | None = None,
    guidance_attention_heads: int | None = None,
    motion_attention_heads: int | None = None,
) -> ConversionSettings:
    """Command-line values (not ``None``) first, then ``config``, then Champ's defaults."""
    if beta_schedule is not None and beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"`beta_schedule` must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
    taken: list[str] = []

    def pick(name: str, given: Any, from_config: Any, key: str, default: Any, default_reason: str) -> Any:
        if given is not None:
            if config is not None and from_config is not None and from_config != given:
                taken.append(f"{name}: {given!r} from the command line (the config's `{key}` says {from_config!r})")
            return given
        if from_config is not None:
            taken.append(f"{name}: {from_config!r} (`{key}`)")
            return from_config
        if config is not None:
            shown = default_reason if default is None else f"{default!r}, {default_reason}"
            taken.append(f"{name}: {shown} (no `{key}` in the config)")
        return default

    from_config = config or ChampInferenceConfig(Path(), None, None, None, None)
    guidance_types = pick("guidance types", None if guidance_types is None else tuple(guidance_types),
                          from_config.guidance_types, "guidance_types", None, "every guidance_encoder_<type>.pth found")
    guidance_attention_heads = pick("guidance encoder heads", guidance_attention_heads,
                                    from_config.guidance_attention_heads, GUIDANCE_HEADS_KEY, CHAMP_ATTENTION_HEADS,
                                    "Champ's GuidanceEncoder default")
    motion_attention_heads = pick("motion module heads", motion_attention_heads, from_config.motion_attention_heads,
                                  MOTION_HEADS_KEY, CHAMP_ATTENTION_HEADS, "Champ's")
    scheduler_kwargs = from_config.scheduler_kwargs
    if scheduler_kwargs is None:
        if config is not None:
            taken.append("scheduler: Champ's training schedule (no `noise_scheduler_kwargs` in the config)")
        scheduler = champ_scheduler(beta_schedule or "scaled_linear")
    else:
        described = ", ".join(f"{key}={value!r}" for key, value in scheduler_kwargs.items())
        taken.append(f"scheduler: DDIMScheduler({described}) (`noise_scheduler_kwargs`, `enable_zero_snr`)")
        if beta_schedule is not None and beta_schedule != scheduler_kwargs.get("beta_schedule"):
            taken.append(f"beta_schedule: {beta_schedule!r} from the command line instead")
        scheduler = DDIMScheduler(**{**scheduler_kwargs, **({"beta_schedule": beta_schedule} if beta_schedule else {})})
    return ConversionSettings(guidance_types, guidance_attention_heads, motion_attention_heads, scheduler, taken)


def champ_scheduler(beta_schedule: str = "scaled_linear") -> DDIMScheduler:
    """Champ's sampler: DDIM with v-prediction, zero-terminal-SNR betas and trailing timesteps.

    Champ trains both stages with ``beta_schedule="scaled_linear"`` (``train_s1.py``/``train_s2.py`` override the yaml
    value before building the training scheduler), while ``configs/inference/inference.yaml`` and the validation
    scheduler say ``"linear"`` (``inference.py`` switches to scaled_linear only after building its scheduler, so the
    switch has no effect). The default here is the schedule the weights were trained with; ``"linear"`` reproduces
    Champ's released inference script. ``set_alpha_to_one`` keeps diffusers' default (True), as Champ does.
    """
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"`beta_schedule` must be one of {BETA_SCHEDULES}, got {beta_schedule!r}.")
    return DDIMScheduler(**{**TEACHER_SCHEDULER_CONFIG, "beta_schedule": beta_schedule})


def describe_scheduler(scheduler: DDIMScheduler) -> str:
    """One line for the conversion report, e.g. ``DDIM, beta_schedule=linear, v_prediction, zero-terminal-SNR, ...``."""
    config = scheduler.config
    zero_snr = "zero-terminal-SNR, " if config.rescale_betas_zero_snr else ""
    return (f"DDIM, beta_schedule={config.beta_schedule}, {config.prediction_type}, {zero_snr}"
            f"{config.timestep_spacing} spacing, betas {config.beta_start}-{config.beta_end}")


def check_guidance_layout(config: ChampInferenceConfig | None, weights_layout: Mapping[str, Any]) -> str | None:
    """Raise a ``ValueError`` if the config's ``guidance_encoder_kwargs`` widths differ from the weights'; else a
    report line naming the entries checked (``None`` if there were none)."""
    if config is None or not config.guidance_layout:
        return None
    for key, value in config.guidance_layout.items():
        expected = list(value) if isinstance(value, (list, tuple)) else value
        found = list(weights_layout[key]) if isinstance(weights_layout[key], (list, tuple)) else weights_layout[key]
        if expected != found:
            raise ValueError(
                f"--champ-config {config.path}: `guidance_encoder_kwargs.{key}` is {value!r}, but Champ's guidance "
                f"encoder weights have {weights_layout[key]!r}: the config does not describe these checkpoints."
            )
    return f"guidance_encoder_kwargs {sorted(config.guidance_layout)}: equal to the weights' (checked, not taken)"
