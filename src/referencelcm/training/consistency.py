"""Consistency-model math shared by training and inference (one copy only).

Notation follows the paper (CoSeC-LCD, §2.1 and appendix B) and diffusers' latent consistency distillation:

- ``alphas_cumprod`` (ᾱ) is the teacher's own noise schedule, read from its diffusers scheduler (so ``beta_schedule``,
  ``trained_betas`` and ``rescale_betas_zero_snr`` are already applied); ``x_t = sqrt(ᾱ_t)·x_0 + sqrt(1 − ᾱ_t)·ε``.
- The PF-ODE solver Ψ of Eq. 3 is DDIM on a grid of ``num_ddim_timesteps`` timesteps with skip
  ``k = num_train_timesteps // num_ddim_timesteps``: ``t_{n+k}`` is a grid timestep, ``t_n = t_{n+k} − k``
  (clamped at 0).
- The consistency function is Eq. 2, ``f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂_0``, with ``LCMScheduler``'s
  boundary scalings.

Classifier-free guidance convention (one for the whole package): the guidance scale ``ω`` (``guidance_scale``) is the
*standard* scale, ``ε̂ = ε̂_uncond + ω·(ε̂_cond − ε̂_uncond)``, so ``ω = 1`` is the conditional prediction alone and the
paper's ω = 2.5 (appendix C, phase 1) means a standard scale of 2.5. diffusers' LCD scripts write the same thing as
``cond + w·(cond − uncond)`` with ``w = ω − 1``, and their LCM pipeline embeds ``w = guidance_scale − 1``. A D-UNet with
``time_cond_proj_dim`` is therefore conditioned on ``guidance_condition(ω)`` = ``guidance_scale_embedding(ω − 1)``, in
training (the ω the teacher was guided with) and at inference alike.
"""

from __future__ import annotations


import torch
from diffusers import LCMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from ..models.guidance_scale import guidance_condition, guidance_scale_embedding  # noqa: F401  (one copy, below both)

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SIGMA_DATA = 0.5  # LCMScheduler's fixed σ_data for the boundary scalings.


def apply_classifier_free_guidance(
    conditional: torch.Tensor, unconditional: torch.Tensor, guidance_scale: torch.Tensor | float
) -> torch.Tensor:
    """Standard CFG ``uncond + ω·(cond − uncond)`` with per-sample ω ``(B,)`` (or one float).

    Apply it to the teacher's x̂_0 and ε̂ alike (on the LCM formulation, as diffusers' LCD does); ``conditional`` and
    ``unconditional`` are ``(B, ...)``. ω = 1 returns ``conditional``; ω = 0 returns ``unconditional``.
    """
    if conditional.shape != unconditional.shape:
        raise ValueError(
            f"`conditional` and `unconditional` must have the same shape, got {tuple(conditional.shape)} and "
            f"{tuple(unconditional.shape)}."
        )
    scale = _per_sample(guidance_scale, conditional)
    return unconditional + scale * (conditional - unconditional)


def predicted_origin(
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """x̂_0 from a model output at ``x_t``; ``model_output``, ``sample`` ``(B, ...)``, ``timesteps`` ``(B,)`` long.

    ``v_prediction``: ``sqrt(ᾱ)·x_t − sqrt(1 − ᾱ)·v`` (no division, safe at zero terminal SNR);
    ``epsilon``: ``(x_t − sqrt(1 − ᾱ)·ε) / sqrt(ᾱ)`` (ill-posed where ᾱ = 0, i.e. the last timestep of a
    zero-terminal-SNR schedule); ``sample``: the output itself.
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "sample":
        return model_output
    alpha = _gather(alphas_cumprod, timesteps, sample)
    if prediction_type == "v_prediction":
        return alpha.sqrt() * sample - (1.0 - alpha).sqrt() * model_output
    return (sample - (1.0 - alpha).sqrt() * model_output) / alpha.sqrt()


def predicted_noise(
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
) -> torch.Tensor:
    """ε̂ from a model output at ``x_t``; shapes as ``predicted_origin``.

    ``v_prediction``: ``sqrt(ᾱ)·v + sqrt(1 − ᾱ)·x_t``; ``epsilon``: the output itself;
    ``sample``: ``(x_t − sqrt(ᾱ)·x̂_0) / sqrt(1 − ᾱ)`` (1 − ᾱ ≥ β_0 > 0, never zero).
    """
    _check_prediction_type(prediction_type)
    if prediction_type == "epsilon":
        return model_output
    alpha = _gather(alphas_cumprod, timesteps, sample)
    if prediction_type == "v_prediction":
        return alpha.sqrt() * model_output + (1.0 - alpha).sqrt() * sample
    return (sample - alpha.sqrt() * model_output) / (1.0 - alpha).sqrt()


def boundary_scalings(
    timesteps: torch.Tensor, timestep_scaling: float = 10.0, sigma_data: float = SIGMA_DATA
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(c_skip, c_out)``, each ``(B,)`` float32, for discrete timesteps ``(B,)`` (Eq. 2).

    ``LCMScheduler.get_scalings_for_boundary_condition_discrete`` vectorised (tested equal on every training
    timestep): with ``s = t·timestep_scaling``, ``c_skip = σ²/(s² + σ²)`` and ``c_out = s/sqrt(s² + σ²)``, so
    ``c_skip(0) = 1`` and ``c_out(0) = 0``. Pass ``timestep_scaling`` from the student's ``LCMScheduler`` config.
    """
    scaled = timesteps.to(torch.float32) * timestep_scaling
    denominator = scaled**2 + sigma_data**2
    return sigma_data**2 / denominator, scaled / denominator.sqrt()


def consistency_output(
    model_output: torch.Tensor,
    timesteps: torch.Tensor | int,
    sample: torch.Tensor,
    prediction_type: str,
    alphas_cumprod: torch.Tensor,
    timestep_scaling: float = 10.0,
) -> torch.Tensor:
    """The consistency function ``f(x_t, t) = c_skip(t)·x_t + c_out(t)·x̂_0`` (Eq. 2), ``(B, ...)``.

    Equals ``LCMScheduler.step(...).denoised`` for the same output, timestep and schedule (no clipping).
    """
    timesteps = _per_sample_timesteps(timesteps, sample)
    pred_original = predicted_origin(model_output, timesteps, sample, prediction_type, alphas_cumprod)
    c_skip, c_out = boundary_scalings(timesteps, timestep_scaling)
    return _per_sample(c_skip, sample) * sample + _per_sample(c_out, sample) * pred_original


class DDIMSolver:
    """The PF-ODE solver Ψ of Eq. 3: one deterministic DDIM step ``x_{t_{n+k}} → x̂_{t_n}`` on the teacher's schedule.

    The grid is ``timesteps[i] = (i + 1)·k − 1`` for ``i < num_ddim_timesteps`` (ascending), the same grid as
    ``LCMScheduler``'s ``original_inference_steps`` schedule and DDIM's ``"trailing"`` spacing;
    ``previous_timesteps[i] = timesteps[i] − k`` clamped at 0.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50):
        if alphas_cumprod.shape != (num_train_timesteps,):
            raise ValueError(
                f"`alphas_cumprod` must have shape ({num_train_timesteps},) for `num_train_timesteps`="
                f"{num_train_timesteps}, got {tuple(alphas_cumprod.shape)}."
            )
        if not 1 <= num_ddim_timesteps <= num_train_timesteps:
            raise ValueError(
                f"`num_ddim_timesteps` must be in [1, {num_train_timesteps}], got {num_ddim_timesteps}."
            )
        self.num_train_timesteps = num_train_timesteps
        self.num_ddim_timesteps = num_ddim_timesteps
        self.step_ratio = num_train_timesteps // num_ddim_timesteps  # the skip k
        self.alphas_cumprod = alphas_cumprod.detach().to(device="cpu", dtype=torch.float32).clone()
        self.timesteps = torch.arange(1, num_ddim_timesteps + 1, dtype=torch.long) * self.step_ratio - 1
        self.previous_timesteps = (self.timesteps - self.step_ratio).clamp_min(0)
        self.alphas_cumprod_previous = self.alphas_cumprod[self.previous_timesteps]

    @classmethod
    def from_scheduler(cls, scheduler: SchedulerMixin, num_ddim_timesteps: int = 50) -> "DDIMSolver":
        """The solver over a diffusers scheduler's ``alphas_cumprod`` (the teacher's saved schedule)."""
        return cls(scheduler.alphas_cumprod, scheduler.config.num_train_timesteps, num_ddim_timesteps)

    def ddim_step(
        self, pred_original: torch.Tensor, pred_noise: torch.Tensor, timestep_index: torch.Tensor
    ) -> torch.Tensor:
        """``x̂_{t_n} = sqrt(ᾱ_{t_n})·x̂_0 + sqrt(1 − ᾱ_{t_n})·ε̂`` (DDIM, η = 0), ``(B, ...)``.

        ``timestep_index`` ``(B,)`` indexes the grid: x̂_0 and ε̂ were predicted at ``timesteps[timestep_index]``.
        """
        alpha_previous = _per_sample(
            self.alphas_cumprod_previous.to(timestep_index.device)[timestep_index], pred_original
        )
        return alpha_previous.sqrt() * pred_original + (1.0 - alpha_previous).sqrt() * pred_noise


def sample_timesteps(
    batch_size: int,
    solver: DDIMSolver,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uniform grid indices and their timesteps for one distillation step, each ``(B,)`` long.

    Returns ``(timestep_index, start_timesteps, target_timesteps)``: ``t_{n+k} = timesteps[index]`` (student, teacher)
    and ``t_n = t_{n+k} − k`` clamped at 0 (EMA target). ``generator`` must live on ``device``.
    """
    timestep_index = torch.randint(
        0, solver.num_ddim_timesteps, (batch_size,), generator=generator, device=device, dtype=torch.long
    )
    start_timesteps = solver.timesteps.to(timestep_index.device)[timestep_index]
    target_timesteps = solver.previous_timesteps.to(timestep_index.device)[timestep_index]
    return timestep_index, start_timesteps, target_timesteps


def student_lcm_scheduler_from_teacher(
    teacher_scheduler: SchedulerMixin, num_ddim_timesteps: int = 50, timestep_scaling: float = 10.0
) -> LCMScheduler:
    """An ``LCMScheduler`` on the teacher's noise schedule, for the distilled student.

    Copies ``num_train_timesteps``, ``beta_start``/``beta_end``/``beta_schedule``/``trained_betas``,
    ``prediction_type`` and ``rescale_betas_zero_snr``; ``original_inference_steps = num_ddim_timesteps`` so its
    inference timesteps lie on the distillation grid. No clipping or thresholding, as in training.
    Raises ``ValueError`` if the result's ``alphas_cumprod`` do not match the teacher's.
    """
    config = teacher_scheduler.config
    student = LCMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_start=config.get("beta_start", 0.00085),
        beta_end=config.get("beta_end", 0.012),
        beta_schedule=config.get("beta_schedule", "scaled_linear"),
        trained_betas=config.get("trained_betas", None),
        prediction_type=config.get("prediction_type", "epsilon"),
        rescale_betas_zero_snr=config.get("rescale_betas_zero_snr", False),
        original_inference_steps=num_ddim_timesteps,
        timestep_scaling=timestep_scaling,
        clip_sample=False,
        thresholding=False,
    )
    # diffusers' Euler-type schedulers clamp a zero terminal ᾱ to 2**-24; anything beyond that is a different schedule.
    if not torch.allclose(student.alphas_cumprod, teacher_scheduler.alphas_cumprod.float().cpu(), rtol=0, atol=1e-6):
        raise ValueError(
            f"`teacher_scheduler` ({type(teacher_scheduler).__name__}) has a noise schedule that LCMScheduler cannot "
            "reproduce from its config (expected alphas_cumprod to match)."
        )
    return student


def _check_prediction_type(prediction_type: str) -> None:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"`prediction_type` must be one of {PREDICTION_TYPES}, got {prediction_type!r}.")


def _per_sample_timesteps(timesteps: torch.Tensor | int, sample: torch.Tensor) -> torch.Tensor:
    """Timesteps as ``(B,)`` long on ``sample``'s device; a single int or 0-d tensor is repeated."""
    timesteps = torch.as_tensor(timesteps, device=sample.device).long()
    if timesteps.ndim == 0:
        timesteps = timesteps.expand(sample.shape[0])
    if timesteps.shape != (sample.shape[0],):
        raise ValueError(
            f"`timesteps` must have shape ({sample.shape[0]},) to match the batch, got {tuple(timesteps.shape)}."
        )
    return timesteps


def _gather(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor | int, sample: torch.Tensor) -> torch.Tensor:
    """ᾱ at per-sample timesteps, float32, shaped ``(B, 1, ..., 1)`` to broadcast over ``sample``."""
    timesteps = _per_sample_timesteps(timesteps, sample)
    alpha = alphas_cumprod.to(device=sample.device, dtype=torch.float32)[timesteps]
    return _per_sample(alpha, sample)


def _per_sample(values: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """A float or ``(B,)`` tensor reshaped to ``(B, 1, ..., 1)`` to broadcast over ``like`` ``(B, ...)``."""
    if not isinstance(values, torch.Tensor):
        return torch.tensor(values, dtype=torch.float32, device=like.device)
    values = values.to(like.device)
    if values.ndim == 0:
        return values
    if values.shape != (like.shape[0],):
        raise ValueError(f"Per-sample values must have shape ({like.shape[0]},), got {tuple(values.shape)}.")
    return values.reshape(-1, *([1] * (like.ndim - 1)))
