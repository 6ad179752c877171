"""One CoSeC-LCD distillation step (paper §2.1–2.2, Eqs. 3–8; docs/design.md §4): the loss for one batch.

Data flow for a batch of ``B`` dataset items with ``k`` references each (``N = B·k`` samples):

1. Frozen encoders, once per batch: target frames → VAE latents ``x_0`` ``(B, C, F, h, w)``; pose guidance →
   guidance features ``(B, C_0, F, h, w)``; the ``N`` references → CLIP ``image_embeds`` ``(N, 1, D)`` and **one**
   R-UNet pass (t = 0) → a :class:`ReferenceBank` of batch ``N``, shared by teacher, EMA target and student.
2. Equivalent groups (ETA): item ``i`` becomes samples ``i·k … i·k + k − 1`` (``group_ids = i``) that share ``x_0``,
   the guidance, the noise ε, the timestep ``t_{n+k}`` and ω, and differ only in the reference. ``source_ids`` (the
   reference's video) come from the batch, so different items of different videos are CoNS pairs (ERS).
3. ``x_{t_{n+k}} = sqrt(ᾱ)·x_0 + sqrt(1 − ᾱ)·ε``; student ``f_θ(x_{t_{n+k}}, t_{n+k})`` (Eq. 2).
4. Teacher with CFG ω (uncond = zero image embeds + bank with every sample dropped; guidance kept; cond and uncond in
   one call) → x̂_0, ε̂ → DDIM solver step to ``x̂_{t_n}`` (Ψ of Eq. 3); EMA target ``f_θ⁻(x̂_{t_n}, t_n)``.
5. ``L_CD`` = mean ``D(f_θ, f_θ⁻)`` (Eq. 3); spatial phase adds ``R_spt = φ1·ETA − φ2·CoNS`` on the student's x̂_0
   (Eqs. 4–5), temporal phase adds ``λ·R_tmp`` (Eqs. 7–8). No condition dropout: the student learns the guided ODE.
   The one exception is the teacher's guidance-type dropout (its guidance encoder's ``guidance_type_dropout`` P > 0):
   each item's guidance types are dropped with P, as in the teacher's training, for teacher, EMA target and student
   alike, so the student too animates from any subset of the types.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from torch import nn

from ..models.injection import run_denoising_unet
from ..models.reference_attention import ReferenceBank
from ..pipelines.pipeline_referencelcm import _encode_latents
from .consistency import (
    DDIMSolver,
    apply_classifier_free_guidance,
    consistency_output,
    guidance_condition,
    predicted_noise,
    predicted_origin,
    sample_timesteps,
)
from .cosec import (
    LOSS_TYPES,
    contrastive_negative_sampling,
    equivalent_target_aggregation,
    sample_distance,
    spatial_regulariser,
    temporal_regulariser,
)

PHASES = ("spatial", "temporal")


@dataclass
class DistillationConfig:
    """Hyper-parameters of one step (appendix C defaults for phase 1).

    ``guidance_scale`` is the teacher's CFG scale ω (standard convention, see ``consistency``); with ``w_min`` and
    ``w_max`` ω is drawn uniformly per dataset item instead. ``eta_weight`` φ1, ``cons_weight`` φ2 (spatial phase),
    ``temporal_eta_weight`` λ (temporal phase). ``timestep_scaling`` comes from the student's ``LCMScheduler``.
    """

    phase: str = "spatial"
    guidance_scale: float = 2.5
    w_min: float | None = None
    w_max: float | None = None
    eta_weight: float = 0.1
    cons_weight: float = 0.02
    temporal_eta_weight: float = 0.05
    loss_type: str = "huber"
    huber_c: float = 0.001
    timestep_scaling: float = 10.0

    def __post_init__(self) -> None:
        if self.phase not in PHASES:
            raise ValueError(f"`phase` must be one of {PHASES}, got {self.phase!r}.")
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"`loss_type` must be one of {LOSS_TYPES}, got {self.loss_type!r}.")
        if (self.w_min is None) != (self.w_max is None):
            raise ValueError(f"`w_min` and `w_max` go together, got w_min={self.w_min}, w_max={self.w_max}.")
        if self.w_min is not None and not self.w_min <= self.w_max:
            raise ValueError(f"`w_min` must be <= `w_max`, got {self.w_min} and {self.w_max}.")


@dataclass
class DistillationModels:
    """The networks of one step: frozen encoders and teacher, the EMA target (no grads) and the trainable student."""

    vae: nn.Module
    image_encoder: nn.Module
    reference_unet: nn.Module
    guidance_encoder: nn.Module
    teacher_unet: nn.Module
    target_unet: nn.Module
    student_unet: nn.Module


@dataclass
class DistillationOutput:
    """``loss`` (0-d, with grad to the student only) and ``terms`` (detached floats for logging).

    The other fields are detached per-sample tensors ``(N, ...)`` for inspection: ``group_ids``, ``source_ids``,
    ``noisy_latents`` ``x_{t_{n+k}}``, ``start_timesteps`` ``t_{n+k}``, ``guidance_scale`` ω, ``target``
    ``f_θ⁻(x̂_{t_n}, t_n)`` and ``student_denoised`` ``f_θ(x_{t_{n+k}}, t_{n+k})``.
    """

    loss: torch.Tensor
    terms: dict[str, float]
    group_ids: torch.Tensor
    source_ids: torch.Tensor
    noisy_latents: torch.Tensor
    start_timesteps: torch.Tensor
    guidance_scale: torch.Tensor
    target: torch.Tensor
    student_denoised: torch.Tensor


@dataclass
class EncodedBatch:
    """Frozen-encoder outputs, already expanded to ``N = B·k`` samples (item-major: sample ``i·k + j``)."""

    latents: torch.Tensor  # (N, C, F, h, w), x_0; identical within a group
    guidance_features: torch.Tensor  # (N, C_0, F, h, w)
    image_embeds: torch.Tensor  # (N, 1, D)
    reference_bank: ReferenceBank  # batch N
    group_ids: torch.Tensor  # (N,)
    source_ids: torch.Tensor  # (N,)
    num_references: int = field(default=1)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside distributed / compile wrappers (``.module``, ``._orig_mod``), for its config and device."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


class ConsistencyDistillationStep:
    """Computes the CoSeC-LCD loss of one batch; the caller owns backward, the optimiser and the EMA update.

    Args:
        models: see :class:`DistillationModels`; every model but the student must be frozen by the caller.
        solver: the DDIM solver Ψ on the teacher's schedule (``DDIMSolver.from_scheduler(teacher_scheduler)``).
        prediction_type: the teacher scheduler's ``prediction_type`` (student and target share it).
        config: :class:`DistillationConfig`.

    ``step(batch, generator)`` takes a ``collate_reference_batch`` batch (``target`` ``(B, 3, F, H, W)``,
    ``guidance`` ``{type: (B, 3, F, H, W)}``, ``references`` ``(B, k, 3, H, W)``, ``reference_clip_pixels``
    ``(B, k, 3, C, C)``, ``source_id`` ``(B,)``) and a CPU ``torch.Generator`` for noise, timesteps and ω.
    """

    def __init__(self, models: DistillationModels, solver: DDIMSolver, prediction_type: str, config: DistillationConfig):
        self.models, self.solver, self.prediction_type, self.config = models, solver, prediction_type, config
        self.alphas_cumprod = solver.alphas_cumprod

    # -- stages -----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_batch(
        self, batch: Mapping[str, Any], device: torch.device, guidance_drop_mask: torch.Tensor | None = None
    ) -> EncodedBatch:
        """VAE latents and guidance features once per item, CLIP embeds and the R-UNet bank once per sample;
        ``guidance_drop_mask`` ``(B, T)`` zeroes the features of the dropped guidance types of each item."""
        models = self.models
        batch_size, num_references = batch["references"].shape[:2]
        target = batch["target"].to(device)
        frames = rearrange(target, "b c f h w -> (b f) c h w").to(models.vae.dtype)
        latents = rearrange(_encode_latents(models.vae, frames).float(), "(b f) c h w -> b c f h w", b=batch_size)
        guidance = {name: maps.to(device, models.guidance_encoder.dtype) for name, maps in batch["guidance"].items()}
        guidance_features = models.guidance_encoder(guidance, drop_mask=guidance_drop_mask).float()

        references = rearrange(batch["references"].to(device), "b k c h w -> (b k) c h w")
        clip_pixels = rearrange(batch["reference_clip_pixels"].to(device), "b k c h w -> (b k) c h w")
        image_embeds = models.image_encoder(clip_pixels.to(models.image_encoder.dtype)).image_embeds.unsqueeze(1)
        reference_latents = _encode_latents(models.vae, references.to(models.vae.dtype))
        bank = ReferenceBank()
        models.reference_unet(
            reference_latents.to(models.reference_unet.dtype),
            torch.zeros(reference_latents.shape[0], device=device, dtype=torch.long),
            encoder_hidden_states=image_embeds.to(models.reference_unet.dtype),
            cross_attention_kwargs={"reference_bank": bank},
            return_dict=False,
        )
        return EncodedBatch(
            latents=latents.repeat_interleave(num_references, dim=0),
            guidance_features=guidance_features.repeat_interleave(num_references, dim=0),
            image_embeds=image_embeds,
            reference_bank=bank,
            group_ids=torch.arange(batch_size, device=device).repeat_interleave(num_references),
            source_ids=batch["source_id"].to(device).repeat_interleave(num_references),
            num_references=num_references,
        )

    def sample_conditions(
        self, batch_size: int, num_references: int, generator: torch.Generator | None, like: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-item noise ε, grid index, ``t_{n+k}``, ``t_n`` and ω, repeated ``k`` times so groups share them."""
        device = like.device
        shape = (batch_size, *like.shape[1:])
        noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
        generator_device = generator.device if generator is not None else None
        index, start, previous = (
            values.to(device) for values in sample_timesteps(batch_size, self.solver, generator, generator_device)
        )
        config = self.config
        if config.w_min is not None:
            uniform = torch.rand(batch_size, generator=generator, device=generator_device).to(device)
            guidance_scale = config.w_min + (config.w_max - config.w_min) * uniform
        else:
            guidance_scale = torch.full((batch_size,), float(config.guidance_scale), device=device)
        per_item = (noise, index, start, previous, guidance_scale)
        return tuple(values.repeat_interleave(num_references, dim=0) for values in per_item)

    @torch.no_grad()
    def teacher_solver_step(
        self,
        encoded: EncodedBatch,
        noisy_latents: torch.Tensor,
        timestep_index: torch.Tensor,
        start_timesteps: torch.Tensor,
        guidance_scale: torch.Tensor,
    ) -> torch.Tensor:
        """``x̂_{t_n} = Ψ(x_{t_{n+k}}, t_{n+k}, t_n)`` with the teacher under CFG ω (Eq. 3), ``(N, C, F, h, w)``."""
        teacher = self.models.teacher_unet
        teacher_config = unwrap_model(teacher).config
        with_uncond = not bool((guidance_scale == 1).all())
        repeats = 2 if with_uncond else 1
        image_embeds, bank = encoded.image_embeds, encoded.reference_bank
        if with_uncond:  # unconditional branch: zero image embeds and no reference tokens; guidance kept
            image_embeds = torch.cat([image_embeds, torch.zeros_like(image_embeds)])
            bank = ReferenceBank.cat([bank, bank.with_drop(torch.ones(bank.batch_size, dtype=torch.bool))])
        timestep_cond = None
        if teacher_config.get("time_cond_proj_dim") is not None:
            timestep_cond = guidance_condition(guidance_scale, teacher_config.time_cond_proj_dim).repeat(repeats, 1)
        output = run_denoising_unet(
            teacher,
            noisy_latents.repeat(repeats, 1, 1, 1, 1),
            start_timesteps.repeat(repeats),
            image_embeds,
            bank,
            encoded.guidance_features.repeat(repeats, 1, 1, 1, 1),
            timestep_cond,
        ).float()
        sample, timesteps = noisy_latents.repeat(repeats, 1, 1, 1, 1), start_timesteps.repeat(repeats)
        origin = predicted_origin(output, timesteps, sample, self.prediction_type, self.alphas_cumprod)
        noise = predicted_noise(output, timesteps, sample, self.prediction_type, self.alphas_cumprod)
        if with_uncond:
            origin = apply_classifier_free_guidance(*origin.chunk(2), guidance_scale)
            noise = apply_classifier_free_guidance(*noise.chunk(2), guidance_scale)
        return self.solver.ddim_step(origin, noise, timestep_index)

    def consistency_function(
        self,
        unet: nn.Module,
        encoded: EncodedBatch,
        sample: torch.Tensor,
        timesteps: torch.Tensor,
        guidance_scale: torch.Tensor,
    ) -> torch.Tensor:
        """``f(x_t, t) = c_skip·x_t + c_out·x̂_0`` (Eq. 2) of the student or EMA target D-UNet, float32."""
        timestep_cond, config = None, unwrap_model(unet).config
        if config.get("time_cond_proj_dim") is not None:
            timestep_cond = guidance_condition(guidance_scale, config.time_cond_proj_dim)
        output = run_denoising_unet(
            unet, sample, timesteps, encoded.image_embeds, encoded.reference_bank, encoded.guidance_features,
            timestep_cond,
        ).float()
        return consistency_output(
            output, timesteps, sample, self.prediction_type, self.alphas_cumprod, self.config.timestep_scaling
        )

    def regularise(self, denoised: torch.Tensor, encoded: EncodedBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """The phase's CoSeC term on the student's x̂_0 ``(N, C, F, h, w)``: ``R_spt`` (Eq. 4) or ``λ·R_tmp`` (Eq. 8)."""
        config, distance = self.config, dict(loss_type=self.config.loss_type, huber_c=self.config.huber_c)
        if config.phase == "temporal":
            regulariser = config.temporal_eta_weight * temporal_regulariser(denoised, encoded.group_ids, **distance)
            return regulariser, {"temporal_regulariser": regulariser.item()}
        regulariser = spatial_regulariser(
            denoised, encoded.group_ids, encoded.source_ids, config.eta_weight, config.cons_weight, **distance
        )
        with torch.no_grad():
            eta = equivalent_target_aggregation(denoised, encoded.group_ids, **distance)
            cons = contrastive_negative_sampling(denoised, encoded.source_ids, **distance)
        return regulariser, {"eta": eta.item(), "cons": cons.item(), "spatial_regulariser": regulariser.item()}

    # -- step -------------------------------------------------------------------------------------------------------

    def step(self, batch: Mapping[str, Any], generator: torch.Generator | None = None) -> DistillationOutput:
        """The loss ``L_CD + R_spt`` (phase 1, Eq. 5) or ``L_CD + λ·R_tmp`` (phase 2, Eq. 8) of one batch."""
        device = unwrap_model(self.models.student_unet).device
        guidance_drop_mask = unwrap_model(self.models.guidance_encoder).sample_drop_mask(  # None without dropout
            batch["references"].shape[0], generator, device)
        encoded = self.encode_batch(batch, device, guidance_drop_mask)
        batch_size = encoded.latents.shape[0] // encoded.num_references
        noise, index, start, previous, guidance_scale = self.sample_conditions(
            batch_size, encoded.num_references, generator, encoded.latents
        )
        alpha = self.alphas_cumprod.to(device)[start].view(-1, 1, 1, 1, 1)
        noisy_latents = alpha.sqrt() * encoded.latents + (1.0 - alpha).sqrt() * noise  # x_{t_{n+k}}

        student = self.consistency_function(self.models.student_unet, encoded, noisy_latents, start, guidance_scale)
        solver_latents = self.teacher_solver_step(encoded, noisy_latents, index, start, guidance_scale)
        with torch.no_grad():
            target = self.consistency_function(self.models.target_unet, encoded, solver_latents, previous,
                                               guidance_scale)

        consistency = sample_distance(student, target, self.config.loss_type, self.config.huber_c).mean()  # Eq. 3
        regulariser, terms = self.regularise(student, encoded)
        loss = consistency + regulariser
        terms = {"loss": loss.item(), "consistency": consistency.item(), **terms}
        if guidance_drop_mask is not None:
            terms["guidance_type_drop_fraction"] = guidance_drop_mask.float().mean().item()
        return DistillationOutput(
            loss=loss,
            terms=terms,
            group_ids=encoded.group_ids,
            source_ids=encoded.source_ids,
            noisy_latents=noisy_latents.detach(),
            start_timesteps=start,
            guidance_scale=guidance_scale,
            target=target.detach(),
            student_denoised=student.detach(),
        )
