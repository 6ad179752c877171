"""One teacher training step (Champ's recipe, docs/design.md §4): the denoising loss of a ReferenceNet for one batch.

Stages (``examples/train_teacher.py``):

- ``image``: single frames; trains the 2-D D-UNet, the R-UNet (less the layers whose output is never read, see
  :func:`unread_reference_parameters`) and the guidance encoder. The VAE stays frozen; the CLIP image encoder too
  (Champ's), unless ``train_image_encoder`` (a model trained from scratch has no pretrained CLIP to keep).
- ``video``: clips; the D-UNet is a ``UNetMotionModel`` and only its motion modules train.

Objective for a batch of ``B`` items (``x_0`` the VAE latents of the target frames, ``(B, C, F, h, w)``):

1. ``ε ~ N(0, I)`` plus a noise offset ``offset · N(0, I)`` of shape ``(B, C, 1, 1, 1)`` (:func:`offset_noise`).
2. ``t ~ U{0, …, T − 1}`` per sample; ``x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε`` (the scheduler's ``add_noise``).
3. Per-sample unconditional dropout at ``uncond_ratio`` (:func:`sample_drop_mask`): a dropped sample gets zero image
   embeddings and no reference tokens; the pose guidance stays (the unconditional branch of CFG at inference). For a
   guidance encoder with ``guidance_type_dropout`` P > 0 (``train_teacher.py --guidance_type_dropout``), each guidance
   type of each sample is also dropped with P, its features zeroed
   (:meth:`~referencelcm.models.guidance_encoder.MultiGuidanceEncoder.sample_drop_mask`), so that the model learns to
   animate from any subset of its types. With ``image_embeds_dropout`` Q > 0 (``--image_embeds_dropout``) each
   sample's image embedding is also zeroed with Q for both UNets while its reference tokens stay: a sample without
   the global embedding must take the person's appearance from the R-UNet's tokens, which a model trained with the
   embedding always present leaves to the embedding (benchmarks/RESULTS.md: swapping the R-UNet's reference moved only
   the background; at 128 px without attention at the finest level Q = 0.5 did not change that).
4. Target per the scheduler's ``prediction_type``; for v-prediction ``v = sqrt(ᾱ_t)·ε − sqrt(1 − ᾱ_t)·x_0``
   (``scheduler.get_velocity``). Loss = mean over samples of ``w(t) · ‖output − target‖²`` with the min-SNR-γ weight
   ``w`` (:func:`min_snr_weights`; Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting").
   With ``person_weight`` ρ > 0 each latent pixel's squared error counts ``1 + ρ · a`` times, ``a`` the fraction of
   its area the person covers (the batch's ``mask`` maps), normalised to mean 1 per sample (:func:`person_weights`):
   the person, a few percent of a SynthDance frame, is what the reference must decide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from einops import rearrange
from torch import nn

from ..data.layout import MASK_FOLDER
from ..models.injection import is_motion_unet, run_denoising_unet
from ..models.reference_attention import ReferenceBank, spatial_self_attention_names
from ..pipelines.pipeline_referencelcm import _encode_latents
from .consistency import PREDICTION_TYPES

TEACHER_STAGES = ("image", "video")


# -- pure functions --------------------------------------------------------------------------------------------------


def signal_to_noise_ratio(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """``SNR(t) = ᾱ_t / (1 − ᾱ_t)`` ``(B,)`` float32; exactly 0 at the last step of a zero-terminal-SNR schedule."""
    alpha = alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)[timesteps]
    return alpha / (1.0 - alpha)


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weights ``(B,)`` of min-SNR-γ for a loss on the model output (Hang et al. 2023).

    The x_0-loss weight ``min(SNR, γ)`` expressed for the prediction target:

    - ``epsilon``: ``min(SNR, γ) / SNR`` — evaluated as ``1`` where ``SNR < γ``, so ``SNR = 0`` gives 1, not NaN;
    - ``v_prediction``: ``min(SNR, γ) / (SNR + 1)`` — 0 at ``SNR = 0`` (where ``v = −x_0``: nothing to learn about
      the data beyond its mean), finite everywhere;
    - ``sample``: ``min(SNR, γ)``.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")
    if gamma <= 0:
        raise ValueError(f"`snr_gamma` must be > 0, got {gamma}.")
    clipped = snr.clamp(max=gamma)
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    if prediction_type == "epsilon":
        return torch.where(snr < gamma, torch.ones_like(snr), gamma / snr.clamp(min=gamma))
    return clipped


def offset_noise(
    shape: tuple[int, ...],
    noise_offset: float,
    generator: torch.Generator | None = None,
    device: torch.device | None = None,
) -> torch.Tensor:
    """``ε + offset · ε'`` with ``ε ~ N(0, I)`` of ``shape`` ``(B, C, …)`` and ``ε'`` of shape ``(B, C, 1, …, 1)``.

    The offset is one value per sample and channel, shared by every frame and pixel (a shift of the mean colour), so
    the model learns to move the mean of its samples (Guttenberg's "noise offset", as in Champ).
    """
    noise = randn_tensor(shape, generator=generator, device=device, dtype=torch.float32)
    if noise_offset == 0:
        return noise
    offset_shape = tuple(shape[:2]) + (1,) * (len(shape) - 2)
    return noise + noise_offset * randn_tensor(offset_shape, generator=generator, device=device, dtype=torch.float32)


def sample_drop_mask(
    batch_size: int, uncond_ratio: float, generator: torch.Generator | None = None, device: torch.device | None = None
) -> torch.Tensor:
    """``(B,)`` bool: which samples train the unconditional branch; each independently with ``uncond_ratio``."""
    if not 0.0 <= uncond_ratio <= 1.0:
        raise ValueError(f"`uncond_ratio` must be in [0, 1], got {uncond_ratio}.")
    generator_device = generator.device if generator is not None else device
    return (torch.rand(batch_size, generator=generator, device=generator_device) < uncond_ratio).to(device)


def drop_image_embeds(image_embeds: torch.Tensor, drop_mask: torch.Tensor) -> torch.Tensor:
    """The image embeddings ``(B, 1, D)`` with those of the ``(B,)`` dropped samples zeroed."""
    if drop_mask.shape != (image_embeds.shape[0],):
        raise ValueError(f"`drop_mask` must have shape ({image_embeds.shape[0]},), got {tuple(drop_mask.shape)}.")
    keep = (~drop_mask.to(torch.bool)).to(image_embeds.device, image_embeds.dtype).view(-1, 1, 1)
    return image_embeds * keep


def drop_conditions(
    image_embeds: torch.Tensor, bank: ReferenceBank, drop_mask: torch.Tensor
) -> tuple[torch.Tensor, ReferenceBank]:
    """Zero the image embeddings ``(B, 1, D)`` of dropped samples and mark them "no reference" in the bank."""
    return drop_image_embeds(image_embeds, drop_mask), bank.with_drop(drop_mask.to(torch.bool))


def person_weights(masks: torch.Tensor, latent_size: tuple[int, int], person_weight: float) -> torch.Tensor:
    """Per-latent-pixel loss weights ``(B, 1, F, h, w)`` from person ``masks`` ``(B, F, H, W)`` in [0, 1]: ``1 + ρ·a``
    with ``a`` the person's share of each latent pixel's area, divided by each sample's mean (so the loss keeps its
    scale and ``ρ = 0`` gives ones)."""
    if masks.ndim != 4:
        raise ValueError(f"`masks` must be (B, F, H, W), got shape {tuple(masks.shape)}.")
    if person_weight < 0:
        raise ValueError(f"`person_weight` must be >= 0, got {person_weight}.")
    area = F.adaptive_avg_pool2d(masks.float(), latent_size)  # (B, F, h, w)
    weights = 1.0 + person_weight * area
    return (weights / weights.flatten(1).mean(1).view(-1, 1, 1, 1)).unsqueeze(1)


def training_target(
    scheduler: SchedulerMixin, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor
) -> torch.Tensor:
    """What the D-UNet learns to output at ``x_t``: ``v`` (``scheduler.get_velocity``), ``ε`` or ``x_0``."""
    prediction_type = scheduler.config.prediction_type
    if prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "sample":
        return latents
    raise ValueError(f"The scheduler's `prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


# -- which parameters train ------------------------------------------------------------------------------------------


@torch.no_grad()
def unread_reference_parameters(reference_unet: nn.Module) -> list[str]:
    """Names of the R-UNet parameters that cannot influence any reference token (so never get a gradient).

    The R-UNet's output sample is unused; what the D-UNet reads is the input of every spatial ``attn1``. Whatever
    runs after the *last* such input is formed (that ``attn1`` itself, the rest of its transformer block, the block's
    ``proj_out``, any later layers, ``conv_norm_out``, ``conv_out``) is unread. The execution order is traced with
    forward pre-hooks on one small forward pass, so it holds for any block layout.
    """
    writers = spatial_self_attention_names(reference_unet)
    if not writers:
        raise ValueError("`reference_unet` has no spatial self-attention layers: nothing of it would be read.")
    order: list[str] = []
    handles = [
        module.register_forward_pre_hook(lambda _module, _args, name=name: order.append(name))
        for name, module in reference_unet.named_modules()
        if any(True for _ in module.parameters(recurse=False)) or name in writers
    ]
    try:
        reference_unet(*_dummy_unet_inputs(reference_unet), return_dict=False)
    finally:
        for handle in handles:
            handle.remove()
    last_read = max(index for index, name in enumerate(order) if name in writers)
    read_modules = set(order[:last_read])
    unread = []
    for module_name, module in reference_unet.named_modules():
        if module_name in read_modules:
            continue
        prefix = f"{module_name}." if module_name else ""
        unread += [prefix + name for name, _ in module.named_parameters(recurse=False)]
    return sorted(unread)


def _dummy_unet_inputs(unet: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The smallest valid ``(sample, timestep, encoder_hidden_states)`` for a ``UNet2DConditionModel``."""
    config = unet.config
    size = 2 ** (len(config.block_out_channels) - 1)
    cross_attention_dim = config.cross_attention_dim
    if isinstance(cross_attention_dim, (list, tuple)):
        cross_attention_dim = cross_attention_dim[0]
    sample = torch.zeros(1, config.in_channels, size, size, device=unet.device, dtype=unet.dtype)
    timestep = torch.zeros(1, device=unet.device, dtype=torch.long)
    encoder_hidden_states = torch.zeros(1, 1, cross_attention_dim, device=unet.device, dtype=unet.dtype)
    return sample, timestep, encoder_hidden_states


def set_trainable(models: "TeacherModels", stage: str, train_image_encoder: bool = False) -> list[nn.Parameter]:
    """Freeze / unfreeze for ``stage`` and return the parameters the optimiser gets.

    ``image``: D-UNet, guidance encoder and the read part of the R-UNet (and the image encoder with
    ``train_image_encoder``). ``video``: the D-UNet's motion modules only. The VAE is frozen in both.
    """
    if stage not in TEACHER_STAGES:
        raise ValueError(f"`stage` must be one of {TEACHER_STAGES}, got {stage!r}.")
    for model in (models.vae, models.image_encoder, models.reference_unet, models.guidance_encoder):
        model.requires_grad_(False)
    if stage == "video":
        if not is_motion_unet(models.denoising_unet):
            raise ValueError("Stage 'video' needs a UNetMotionModel D-UNet; inflate it first (see train_teacher.py).")
        models.denoising_unet.requires_grad_(False)
        for name, parameter in models.denoising_unet.named_parameters():
            parameter.requires_grad_(".motion_modules." in f".{name}")
        return [parameter for parameter in models.denoising_unet.parameters() if parameter.requires_grad]
    models.denoising_unet.requires_grad_(True)
    models.guidance_encoder.requires_grad_(True)
    models.image_encoder.requires_grad_(train_image_encoder)
    unread = set(unread_reference_parameters(models.reference_unet))
    for name, parameter in models.reference_unet.named_parameters():
        parameter.requires_grad_(name not in unread)
    return [
        parameter
        for model in (models.denoising_unet, models.reference_unet, models.guidance_encoder, models.image_encoder)
        for parameter in model.parameters()
        if parameter.requires_grad
    ]


# -- the step --------------------------------------------------------------------------------------------------------


@dataclass
class TeacherConfig:
    """Hyper-parameters of one step (Champ's defaults): ``snr_gamma`` ``None`` turns min-SNR weighting off."""

    uncond_ratio: float = 0.1
    snr_gamma: float | None = 5.0
    noise_offset: float = 0.05
    person_weight: float = 0.0  # > 0 needs the batch's mask maps (:func:`person_weights`)
    image_embeds_dropout: float = 0.0  # zero the image embedding only, keeping the reference tokens

    def __post_init__(self) -> None:
        if not 0.0 <= self.uncond_ratio <= 1.0:
            raise ValueError(f"`uncond_ratio` must be in [0, 1], got {self.uncond_ratio}.")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"`snr_gamma` must be > 0 or None, got {self.snr_gamma}.")
        if self.noise_offset < 0:
            raise ValueError(f"`noise_offset` must be >= 0, got {self.noise_offset}.")
        if self.person_weight < 0:
            raise ValueError(f"`person_weight` must be >= 0, got {self.person_weight}.")
        if not 0.0 <= self.image_embeds_dropout <= 1.0:
            raise ValueError(f"`image_embeds_dropout` must be in [0, 1], got {self.image_embeds_dropout}.")


@dataclass
class TeacherModels:
    """The networks of a teacher: a frozen ``vae``; the others trained per stage (:func:`set_trainable`)."""

    vae: nn.Module
    image_encoder: nn.Module
    reference_unet: nn.Module
    denoising_unet: nn.Module
    guidance_encoder: nn.Module


@dataclass
class TeacherOutput:
    """``loss`` (0-d), ``terms`` (floats for logging) and detached per-sample ``(B,)`` tensors for inspection."""

    loss: torch.Tensor
    terms: dict[str, float]
    per_sample_loss: torch.Tensor
    timesteps: torch.Tensor
    weights: torch.Tensor
    drop_mask: torch.Tensor


class ReferenceNet(nn.Module):
    """The networks of a teacher in one ``forward``: image encoder, R-UNet → bank, guidance encoder, D-UNet.

    One module, so one ``DistributedDataParallel`` wrapper sees every trained parameter used by the one output it
    returns (the bank's tokens travel from R-UNet to D-UNet inside ``forward``). Submodules keep their pipeline names,
    so its state dict is the four components' with prefixes; frozen ones run without gradients. The models need
    reference hooks and guidance injection installed (``ReferenceLCMPipeline`` does both).
    """

    def __init__(
        self,
        reference_unet: nn.Module,
        denoising_unet: nn.Module,
        guidance_encoder: nn.Module,
        image_encoder: nn.Module,
    ):
        super().__init__()
        self.reference_unet = reference_unet
        self.denoising_unet = denoising_unet
        self.guidance_encoder = guidance_encoder
        self.image_encoder = image_encoder

    def forward(
        self,
        noisy_latents: torch.Tensor,
        timesteps: torch.Tensor,
        reference_latents: torch.Tensor,
        clip_pixels: torch.Tensor,
        guidance: Mapping[str, torch.Tensor],
        drop_mask: torch.Tensor,
        guidance_drop_mask: torch.Tensor | None = None,
        embeds_drop_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """D-UNet output ``(B, C, F, h, w)`` for ``x_t`` ``(B, C, F, h, w)``, reference latents ``(B, C, h, w)``,
        the reference's CLIP pixel values ``(B, 3, S, S)``, guidance ``{type: (B, 3, F, H, W)}``, the ``(B,)``
        dropout mask, the ``(B, T)`` guidance-type dropout mask (``None``: every type kept) and the ``(B,)``
        image-embedding dropout mask (zeroed for both UNets, reference tokens kept; ``None``: none dropped)."""
        image_encoder, reference_unet = self.image_encoder, self.reference_unet
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable(image_encoder)):
            image_embeds = image_encoder(clip_pixels.to(image_encoder.dtype)).image_embeds.unsqueeze(1)  # (B, 1, D)
        if embeds_drop_mask is not None:
            image_embeds = drop_image_embeds(image_embeds, embeds_drop_mask)
        bank = ReferenceBank()
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable(reference_unet)):
            reference_unet(  # t = 0 on the clean reference; its output sample is unused
                reference_latents.to(reference_unet.dtype),
                torch.zeros(reference_latents.shape[0], device=reference_latents.device, dtype=torch.long),
                encoder_hidden_states=image_embeds.to(reference_unet.dtype),
                cross_attention_kwargs={"reference_bank": bank},
                return_dict=False,
            )
        image_embeds, bank = drop_conditions(image_embeds, bank, drop_mask)
        with torch.set_grad_enabled(torch.is_grad_enabled() and _has_trainable(self.guidance_encoder)):
            guidance_features = self.guidance_encoder(guidance, drop_mask=guidance_drop_mask)
        return run_denoising_unet(self.denoising_unet, noisy_latents, timesteps, image_embeds, bank, guidance_features)


class TeacherTrainingStep:
    """Computes the teacher loss of one batch; the caller owns backward and the optimiser.

    Args:
        models: :class:`TeacherModels` with reference hooks and guidance injection installed (a
            ``ReferenceLCMPipeline`` does both; see ``train_teacher.py``).
        noise_scheduler: the teacher's scheduler (its ``alphas_cumprod``, ``prediction_type``, ``add_noise``).
        config: :class:`TeacherConfig`.
        network: the :class:`ReferenceNet` of ``models`` to call, e.g. as wrapped by ``accelerator.prepare``;
            default: a new one.

    ``step(batch, generator, drop_mask=None, guidance_drop_mask=None)`` takes a ``collate_reference_batch`` batch
    with one reference per item (``references`` ``(B, 1, 3, H, W)``; the first is used when there are more) and a
    ``torch.Generator`` for noise, timesteps and dropout; ``drop_mask`` ``(B,)`` bool overrides the random
    unconditional dropout and ``guidance_drop_mask`` ``(B, T)`` bool the guidance-type dropout (tests).
    """

    def __init__(
        self,
        models: TeacherModels,
        noise_scheduler: SchedulerMixin,
        config: TeacherConfig,
        network: nn.Module | None = None,
    ):
        self.models, self.noise_scheduler, self.config = models, noise_scheduler, config
        self.network = network if network is not None else ReferenceNet(
            models.reference_unet, models.denoising_unet, models.guidance_encoder, models.image_encoder)
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps

    @torch.no_grad()
    def encode_batch(
        self, batch: Mapping[str, Any], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The frozen VAE: target latents ``x_0`` ``(B, C, F, h, w)`` and reference latents ``(B, C, h, w)``; and
        the CLIP pixel values ``(B, 3, S, S)`` of the first reference of every item."""
        vae = self.models.vae
        target = batch["target"].to(device)
        frames = rearrange(target, "b c f h w -> (b f) c h w").to(vae.dtype)
        latents = rearrange(_encode_latents(vae, frames).float(), "(b f) c h w -> b c f h w", b=target.shape[0])
        reference_latents = _encode_latents(vae, batch["references"][:, 0].to(device, vae.dtype))
        clip_pixels = batch["reference_clip_pixels"][:, 0].to(device)
        return latents, reference_latents, clip_pixels

    def step(
        self,
        batch: Mapping[str, Any],
        generator: torch.Generator | None = None,
        drop_mask: torch.Tensor | None = None,
        guidance_drop_mask: torch.Tensor | None = None,
    ) -> TeacherOutput:
        """The min-SNR-weighted denoising loss of one batch."""
        config, scheduler = self.config, self.noise_scheduler
        device = self.models.denoising_unet.device
        latents, reference_latents, clip_pixels = self.encode_batch(batch, device)
        batch_size = latents.shape[0]
        generator_device = generator.device if generator is not None else device

        # 1–2. noise (with offset), timesteps, x_t
        noise = offset_noise(tuple(latents.shape), config.noise_offset, generator, generator_device).to(device)
        timesteps = torch.randint(
            0, self.num_train_timesteps, (batch_size,), generator=generator, device=generator_device
        ).to(device)
        noisy_latents = scheduler.add_noise(latents, noise, timesteps)

        # 3. per-sample dropout of image embeddings and reference (inside the network)
        if drop_mask is None:
            drop_mask = sample_drop_mask(batch_size, config.uncond_ratio, generator, device)
        drop_mask = drop_mask.to(device=device, dtype=torch.bool)
        # the person masks weight the loss (person_weight); the guidance encoder never sees them
        guidance = {name: maps.to(device) for name, maps in batch["guidance"].items() if name != MASK_FOLDER}
        if guidance_drop_mask is None:  # None without guidance-type dropout (and then nothing is drawn)
            guidance_drop_mask = self.models.guidance_encoder.sample_drop_mask(batch_size, generator, device)
        embeds_drop_mask = None  # drawn last, and only when on, so that runs without it keep their random stream
        if config.image_embeds_dropout > 0:
            embeds_drop_mask = sample_drop_mask(batch_size, config.image_embeds_dropout, generator, device)

        # 4. prediction, target, weighted loss
        output = self.network(noisy_latents, timesteps, reference_latents, clip_pixels, guidance, drop_mask,
                              guidance_drop_mask, embeds_drop_mask).float()
        target = training_target(scheduler, latents, noise, timesteps)
        squared = (output - target).pow(2)
        if config.person_weight > 0:
            if MASK_FOLDER not in batch["guidance"]:
                raise ValueError(f"`person_weight` {config.person_weight} needs the batch's {MASK_FOLDER!r} maps: read "
                                 f"the {MASK_FOLDER}/ folder with the guidance (train_teacher.py does so).")
            masks = batch["guidance"][MASK_FOLDER][:, 0].to(device)  # (B, F, H, W)
            squared = squared * person_weights(masks, tuple(squared.shape[-2:]), config.person_weight)
        per_sample = squared.flatten(1).mean(1)
        weights = torch.ones_like(per_sample)
        if config.snr_gamma is not None:
            snr = signal_to_noise_ratio(scheduler.alphas_cumprod, timesteps)
            weights = min_snr_weights(snr, config.snr_gamma, scheduler.config.prediction_type)
        loss = (weights * per_sample).mean()
        terms = {"loss": loss.item(), "mse": per_sample.detach().mean().item(),
                 "uncond_fraction": drop_mask.float().mean().item()}
        if guidance_drop_mask is not None:
            terms["guidance_type_drop_fraction"] = guidance_drop_mask.float().mean().item()
        if embeds_drop_mask is not None:
            terms["image_embeds_drop_fraction"] = embeds_drop_mask.float().mean().item()
        return TeacherOutput(loss, terms, per_sample.detach(), timesteps, weights.detach(), drop_mask)


def _has_trainable(module: nn.Module) -> bool:
    return any(parameter.requires_grad for parameter in module.parameters())
