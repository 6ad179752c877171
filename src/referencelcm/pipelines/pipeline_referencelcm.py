"""ReferenceLCMPipeline: reference image + pose guidance → video, in 2–4 LCM steps (or teacher mode with CFG)."""

from __future__ import annotations

import inspect
import math
import numbers
import operator
import os
from typing import Any, Callable, Mapping, Sequence

import torch
from diffusers import AutoencoderKL, DiffusionPipeline, LCMScheduler, UNet2DConditionModel
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import retrieve_timesteps
from diffusers.schedulers import SchedulerMixin
from diffusers.utils.import_utils import is_xformers_available
from diffusers.utils.torch_utils import randn_tensor
from diffusers.video_processor import VideoProcessor
from einops import rearrange
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from ..models.guidance_encoder import MultiGuidanceEncoder
from ..models.guidance_scale import guidance_condition
from ..models.injection import install_guidance_injection, run_denoising_unet
from ..models.motion import set_motion_norm_mode
from ..models.reference_attention import (
    Locality,
    ReferenceBank,
    check_locality,
    check_reference_pairing,
    install_reference_attention,
)
from .context import context_windows
from .inputs import FramesInput, ImageInput, batch_items, guidance_to_tensors, reference_to_tensor, resize
from .loading import check_pipeline_folder, loaded_components, looks_like_local_path
from .pipeline_output import ReferenceLCMPipelineOutput

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# ``__init__`` arguments that are settings, not components (``model_index.json`` keeps them; see ``settings``).
PIPELINE_SETTINGS = ("motion_norm_mode", "reference_locality")


class ReferenceLCMPipeline(DiffusionPipeline):
    r"""Pose-guided human animation with a ReferenceNet (R-UNet + D-UNet) and a latent consistency D-UNet.

    Components (docs/design.md §3): ``vae`` (``AutoencoderKL`` / ``AutoencoderTiny``), ``image_encoder``
    (``CLIPVisionModelWithProjection``), ``feature_extractor`` (``CLIPImageProcessor``), ``reference_unet``
    (``UNet2DConditionModel``), ``denoising_unet`` (``UNet2DConditionModel`` for images, ``UNetMotionModel`` for
    video), ``guidance_encoder`` (:class:`MultiGuidanceEncoder`), ``scheduler`` (``LCMScheduler`` for a distilled
    student; any diffusers scheduler, e.g. DDIM, for a teacher).

    Args:
        motion_norm_mode: how the D-UNet's motion modules normalise: ``"video"`` (diffusers) or ``"frame"``
            (Champ / AnimateDiff v1-v2 weights). Stored in ``model_index.json`` and re-applied on load.
        reference_locality: ``None`` (Champ) or the standard deviation, as a fraction of the frame height, of a
            Gaussian prior on where each D-UNet token looks in the reference (an attention bias towards the same
            place in the frame; ``models.reference_attention.reference_locality_bias``), or per reading layer a
            mapping from module-name prefixes to those, e.g. ``{"down_blocks.1": 0.08, "up_blocks.2": 0.08}`` (the
            longest matching prefix wins; other layers read without the prior). A model trained with it needs it
            at inference: stored in ``model_index.json`` and re-applied on load.
    """

    model_cpu_offload_seq = "image_encoder->reference_unet->guidance_encoder->denoising_unet->vae"
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        vae: AutoencoderKL,
        image_encoder: CLIPVisionModelWithProjection,
        feature_extractor: CLIPImageProcessor,
        reference_unet: UNet2DConditionModel,
        denoising_unet: torch.nn.Module,
        guidance_encoder: MultiGuidanceEncoder,
        scheduler: SchedulerMixin,
        motion_norm_mode: str = "video",
        reference_locality: Locality = None,
    ) -> None:
        super().__init__()
        self.register_modules(
            vae=vae,
            image_encoder=image_encoder,
            feature_extractor=feature_extractor,
            reference_unet=reference_unet,
            denoising_unet=denoising_unet,
            guidance_encoder=guidance_encoder,
            scheduler=scheduler,
        )
        self.register_to_config(
            motion_norm_mode=motion_norm_mode, reference_locality=check_locality(reference_locality)
        )
        self.vae_scale_factor = 2 ** (len(_vae_block_channels(vae)) - 1)
        self.video_processor = VideoProcessor(vae_scale_factor=self.vae_scale_factor)
        self._check_components()
        self._install_hooks()

    # -- setup ---------------------------------------------------------------------------------------------------

    def _check_components(self) -> None:
        embedding_channels = self.guidance_encoder.config.guidance_embedding_channels
        if embedding_channels != self.denoising_unet.config.block_out_channels[0]:
            raise ValueError(
                f"`guidance_encoder.config.guidance_embedding_channels` ({embedding_channels}) must equal "
                f"`denoising_unet.config.block_out_channels[0]` ({self.denoising_unet.config.block_out_channels[0]})."
            )
        if self.guidance_encoder.downsample_factor != self.vae_scale_factor:
            raise ValueError(
                f"The guidance encoder downsamples by {self.guidance_encoder.downsample_factor} but the VAE by "
                f"{self.vae_scale_factor}; `guidance_encoder.config.block_out_channels` needs "
                f"{self.vae_scale_factor.bit_length()} entries."
            )
        check_reference_pairing(self.reference_unet, self.denoising_unet)

    def _install_hooks(self) -> None:
        # Idempotent: re-run after anything that replaces modules or the motion norm mode. Attention processors are
        # not part of it: the reference pathway is a module hook that any processor keeps (reference_attention.py).
        install_reference_attention(self.reference_unet, "write")
        self.hook_denoising_unet(self.denoising_unet)

    def hook_denoising_unet(self, unet: torch.nn.Module) -> torch.nn.Module:
        """Make ``unet`` a D-UNet of this pipeline's kind: reference reading (with ``reference_locality``), guidance
        injection and ``motion_norm_mode``. For D-UNets that live outside the pipeline, e.g. a student in training."""
        install_reference_attention(unet, "read", self.config.reference_locality)
        install_guidance_injection(unet)
        set_motion_norm_mode(unet, self.config.motion_norm_mode)
        return unet

    @property
    def settings(self) -> dict[str, Any]:
        """The pipeline's own settings (``model_index.json`` entries that are not components), as ``__init__`` takes
        them: a pipeline rebuilt from other components keeps them (``ReferenceLCMPipeline(**c, **pipe.settings)``)."""
        return {name: self.config[name] for name in PIPELINE_SETTINGS}

    def enable_xformers_memory_efficient_attention(self, attention_op: Callable | None = None) -> None:
        """diffusers' xformers attention (``pip install 'referencelcm[xformers]'``); the reference pathway stays."""
        if not is_xformers_available():
            raise ValueError("xformers attention needs the xformers package: pip install 'referencelcm[xformers]'.")
        super().enable_xformers_memory_efficient_attention(attention_op)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> "ReferenceLCMPipeline":
        """Load from a local folder or a Hub repo id.

        diffusers refuses third-party component classes from the Hub, so a repo id is first downloaded with
        ``huggingface_hub.snapshot_download`` (honouring ``revision``, ``token``, ``cache_dir``,
        ``local_files_only``, ``force_download``) and then loaded as a local folder.
        """
        path = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            if looks_like_local_path(path):
                raise FileNotFoundError(f"`pretrained_model_name_or_path` {path!r} is not a pipeline folder.")
            from huggingface_hub import snapshot_download

            download_keys = ("revision", "token", "cache_dir", "local_files_only", "force_download")
            path = snapshot_download(path, **{key: kwargs.pop(key) for key in download_keys if key in kwargs})
        # A broken folder is reported by component and file, before diffusers' less specific errors.
        check_pipeline_folder(path, "`pretrained_model_name_or_path`", loaded_components(cls, kwargs))
        pipeline = super().from_pretrained(path, **kwargs)
        for component in pipeline.components.values():
            if isinstance(component, torch.nn.Module):
                _own_aligned_storage(component)
        return pipeline

    # -- properties ----------------------------------------------------------------------------------------------

    @property
    def guidance_types(self) -> tuple[str, ...]:
        """The guidance types the model was trained with: the keys ``guidance`` holds (all of them, or any non-empty
        subset when :attr:`accepts_guidance_subsets`)."""
        return tuple(self.guidance_encoder.config.guidance_types)

    @property
    def accepts_guidance_subsets(self) -> bool:
        """Whether ``guidance`` may hold any non-empty subset of :attr:`guidance_types` (a model trained with
        ``train_teacher.py --guidance_type_dropout``); missing types contribute zero features."""
        return self.guidance_encoder.accepts_subsets

    @property
    def guidance_scale(self) -> float:
        """The current call's guidance scale (a step-end callback may change it for the following steps' CFG)."""
        return self._guidance_scale

    @property
    def num_timesteps(self) -> int:
        """The current (or last) call's number of denoising steps."""
        return self._num_timesteps

    @property
    def spatial_multiple(self) -> int:
        """Height and width must be multiples of this: VAE factor × the D-UNet's downsampling."""
        return self.vae_scale_factor * 2 ** (len(self.denoising_unet.config.block_out_channels) - 1)

    # -- stages --------------------------------------------------------------------------------------------------

    def check_inputs(
        self,
        guidance: Mapping[str, torch.Tensor] | Sequence[Mapping[str, torch.Tensor]],
        num_inference_steps: int,
        height: int,
        width: int,
        context_frames: int,
        context_overlap: int,
        output_type: str,
        decode_chunk_size: int,
        callback_on_step_end_tensor_inputs: list[str] | None,
        timesteps: list[int] | None = None,
        num_references: int = 1,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        guidance_scale: float = 1.0,
        latents: torch.Tensor | None = None,
    ) -> None:
        """Raise a ``ValueError`` naming the argument for any input the models cannot run on.

        ``guidance`` is one video's ``{type: (F, 3, H, W)}`` or a list of them (a batch); ``num_references`` is the
        number of reference images given; a list ``generator`` holds one generator per video made; ``latents``
        (``(B, C, F, h, w)``, or ``None``) must be finite.
        """
        guidance_batch = [guidance] if isinstance(guidance, Mapping) else list(guidance)
        for index, maps in enumerate(guidance_batch):
            name = "guidance" if isinstance(guidance, Mapping) else f"guidance[{index}]"
            self.guidance_encoder.check_guidance_types(maps, name)
            if set(maps) != set(guidance_batch[0]):
                raise ValueError(f"Every video of a batch must have the same guidance types; `guidance[0]` has "
                                 f"{sorted(guidance_batch[0])}, `{name}` {sorted(maps)}.")
        self._check_batch(guidance_batch, num_references, num_videos_per_prompt, generator)
        for name, size in (("height", height), ("width", width)):
            if size < self.spatial_multiple or size % self.spatial_multiple != 0:
                raise ValueError(f"`{name}` must be a positive multiple of {self.spatial_multiple}, got {size}.")
        if timesteps is not None:
            self._check_timesteps(timesteps)
        elif not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1, got {num_inference_steps!r}.")
        maximum_steps = self.scheduler.config.num_train_timesteps
        if isinstance(self.scheduler, LCMScheduler):
            maximum_steps = self.scheduler.config.original_inference_steps
        if timesteps is None and num_inference_steps > maximum_steps:
            raise ValueError(
                f"`num_inference_steps` must be <= {maximum_steps} for {type(self.scheduler).__name__}, "
                f"got {num_inference_steps}."
            )
        if context_frames < 1 or not 0 <= context_overlap < context_frames:
            raise ValueError(
                f"`context_overlap` must be in [0, context_frames) with `context_frames` >= 1, got "
                f"context_frames={context_frames}, context_overlap={context_overlap}."
            )
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"`output_type` must be one of {OUTPUT_TYPES}, got {output_type!r}.")
        if decode_chunk_size < 1:
            raise ValueError(f"`decode_chunk_size` must be >= 1, got {decode_chunk_size}.")
        unknown = set(callback_on_step_end_tensor_inputs or []) - set(self._callback_tensor_inputs)
        if unknown:
            raise ValueError(
                f"`callback_on_step_end_tensor_inputs` may only name {self._callback_tensor_inputs}, got {sorted(unknown)}."
            )
        if not isinstance(guidance_scale, numbers.Real) or not math.isfinite(guidance_scale):
            raise ValueError(f"`guidance_scale` must be a finite number, got {guidance_scale!r}.")
        if isinstance(latents, torch.Tensor) and not bool(torch.isfinite(latents).all()):
            raise ValueError("`latents` must hold finite values, got NaN or infinite values.")

    def _check_batch(
        self,
        guidance_batch: list[Mapping[str, torch.Tensor]],
        num_references: int,
        num_videos_per_prompt: int,
        generator: torch.Generator | list[torch.Generator] | None,
    ) -> None:
        num_guidance = len(guidance_batch)
        if num_references != num_guidance and 1 not in (num_references, num_guidance):
            raise ValueError(
                f"`reference_image` holds {num_references} images and `guidance` {num_guidance} videos' guidance: give "
                "one of each per video, or a single one of either to share it across the batch."
            )
        frame_counts = [next(iter(maps.values())).shape[0] for maps in guidance_batch]
        if len(set(frame_counts)) > 1:
            raise ValueError(
                f"Every video of a batch must have the same number of frames; `guidance` has {frame_counts}."
            )
        if type(num_videos_per_prompt) is not int or num_videos_per_prompt < 1:
            raise ValueError(f"`num_videos_per_prompt` must be an integer >= 1, got {num_videos_per_prompt!r}.")
        num_videos = max(num_references, num_guidance) * num_videos_per_prompt
        if isinstance(generator, list) and len(generator) != num_videos:
            raise ValueError(
                f"`generator` is a list of {len(generator)} generators, but the call makes {num_videos} videos "
                f"({max(num_references, num_guidance)} x num_videos_per_prompt={num_videos_per_prompt}): pass one "
                "generator per video, or a single one."
            )

    def _check_timesteps(self, timesteps: list[int]) -> None:
        if "timesteps" not in inspect.signature(self.scheduler.set_timesteps).parameters:
            raise ValueError(
                f"`timesteps` needs a scheduler that takes custom timesteps (e.g. LCMScheduler); "
                f"{type(self.scheduler).__name__} does not: pass `num_inference_steps` instead."
            )
        limit = self.scheduler.config.num_train_timesteps
        try:  # Python, numpy and 0-d torch integers; not floats or bools
            values = [operator.index(value) for value in timesteps if not isinstance(value, bool)]
        except TypeError:
            values = []
        if (
            len(values) != len(timesteps)
            or not values
            or not all(0 <= value < limit for value in values)
            or any(later >= earlier for earlier, later in zip(values, values[1:]))
        ):
            raise ValueError(
                f"`timesteps` must be a non-empty, strictly decreasing list of integers in [0, {limit}), "
                f"e.g. [999, 499, 299, 139]; got {timesteps!r}."
            )

    def prepare_conditions(
        self, references: list[torch.Tensor], guidance: list[Mapping[str, torch.Tensor]], height: int, width: int
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Resize and stack the inputs of a batch.

        Args:
            references: ``R`` images ``(3, H_i, W_i)`` in ``[0, 1]``.
            guidance: ``G`` videos' ``{type: (F, 3, H_i, W_i)}`` (one ``F`` and one set of types for all).

        Returns:
            ``(R, 3, height, width)`` references and ``{type: (G, 3, F, height, width)}`` guidance maps.
        """
        reference = torch.cat([resize(image[None], height, width) for image in references])
        guidance_maps = {
            name: torch.stack(
                [rearrange(resize(maps[name], height, width), "f c h w -> c f h w") for maps in guidance]
            )
            for name in self.guidance_types
            if name in guidance[0]
        }
        return reference, guidance_maps

    def encode_reference(
        self,
        reference: torch.Tensor,
        device: torch.device,
        do_classifier_free_guidance: bool,
        video_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ReferenceBank]:
        """Run the CLIP image encoder and the R-UNet once per reference.

        Args:
            reference: ``(R, 3, H, W)`` in ``[0, 1]`` at the output size.
            video_index: ``(V,)`` the reference of each video of the batch (default: video ``i`` ← reference ``i``).

        Returns:
            ``image_embeds`` ``(V, 1, D)`` — or ``(2V, 1, D)`` with zeros appended for CFG — and the reference bank,
            likewise doubled with the unconditional half marked "no reference".
        """
        clip_inputs = self.feature_extractor(
            images=list(reference.permute(0, 2, 3, 1).float().cpu().numpy()), do_rescale=False, return_tensors="pt"
        ).pixel_values
        image_embeds = self.image_encoder(clip_inputs.to(device, self.image_encoder.dtype)).image_embeds.unsqueeze(1)

        pixels = (reference * 2 - 1).to(device, self.vae.dtype)
        reference_latents = _encode_latents(self.vae, pixels)
        bank = ReferenceBank()
        timestep = torch.zeros(reference_latents.shape[0], device=device, dtype=torch.long)
        self.reference_unet(
            reference_latents.to(self.reference_unet.dtype),
            timestep,
            encoder_hidden_states=image_embeds.to(self.reference_unet.dtype),
            cross_attention_kwargs={"reference_bank": bank},
            return_dict=False,
        )
        if video_index is not None:
            image_embeds, bank = image_embeds[video_index.to(device)], bank.select(video_index)
        if do_classifier_free_guidance:
            image_embeds = torch.cat([image_embeds, torch.zeros_like(image_embeds)])
            bank = ReferenceBank.cat([bank, bank.with_drop(torch.ones(bank.batch_size, dtype=torch.bool))])
        return image_embeds, bank

    def encode_guidance(
        self, guidance: Mapping[str, torch.Tensor], device: torch.device, video_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Encode every guidance frame once: ``{type: (G, 3, F, H, W)}`` → ``(V, C_0, F, h, w)``, video ``v`` taking
        the features of guidance ``video_index[v]`` (default: ``V = G``, one video per guidance)."""
        features = self.guidance_encoder({name: maps.to(device) for name, maps in guidance.items()})
        return features if video_index is None else features[video_index.to(features.device)]

    def prepare_latents(
        self,
        batch_size: int,
        num_frames: int,
        height: int,
        width: int,
        dtype: torch.dtype,
        device: torch.device,
        generator: torch.Generator | list[torch.Generator] | None,
        latents: torch.Tensor | None,
    ) -> torch.Tensor:
        """Initial noise ``(B, C, F, h, w)`` scaled by the scheduler's ``init_noise_sigma``."""
        shape = (
            batch_size,
            self.denoising_unet.config.in_channels,
            num_frames,
            height // self.vae_scale_factor,
            width // self.vae_scale_factor,
        )
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"`latents` must have shape {shape}, got {tuple(latents.shape)}.")
        return latents.to(device=device, dtype=dtype) * self.scheduler.init_noise_sigma

    def predict(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        image_embeds: torch.Tensor,
        bank: ReferenceBank,
        guidance_features: torch.Tensor,
        timestep_cond: torch.Tensor | None,
        guidance_scale: float,
        windows: list[list[int]],
    ) -> torch.Tensor:
        """The D-UNet output for all frames: one call per window, averaged where windows overlap.

        With CFG (``image_embeds`` twice the batch) conditional and unconditional inputs share one call.
        """
        do_classifier_free_guidance = image_embeds.shape[0] == 2 * latents.shape[0]
        repeats = 2 if do_classifier_free_guidance else 1
        prediction = torch.zeros_like(latents, dtype=torch.float32)
        counts = torch.zeros(latents.shape[2], device=latents.device, dtype=torch.float32)
        for window in windows:
            window_latents = self.scheduler.scale_model_input(latents[:, :, window], timestep)
            output = run_denoising_unet(
                self.denoising_unet,
                torch.cat([window_latents] * repeats),
                timestep,
                image_embeds,
                bank,
                torch.cat([guidance_features[:, :, window]] * repeats),
                timestep_cond,
            ).float()
            if do_classifier_free_guidance:
                conditional, unconditional = output.chunk(2)
                output = unconditional + guidance_scale * (conditional - unconditional)
            prediction[:, :, window] += output
            counts[window] += 1
        return (prediction / counts.view(1, 1, -1, 1, 1)).to(latents.dtype)

    def decode_latents(self, latents: torch.Tensor, decode_chunk_size: int) -> torch.Tensor:
        """``(B, C, F, h, w)`` latents → ``(B, 3, F, H, W)`` pixels in ``[-1, 1]``, ``decode_chunk_size`` frames at a time."""
        batch_size = latents.shape[0]
        latents = rearrange(latents, "b c f h w -> (b f) c h w").to(self.vae.dtype)
        latents = latents / self.vae.config.scaling_factor
        shift_factor = getattr(self.vae.config, "shift_factor", None)
        if shift_factor is not None:
            latents = latents + shift_factor
        frames = torch.cat([self.vae.decode(chunk).sample for chunk in latents.split(decode_chunk_size)])
        return rearrange(frames, "(b f) c h w -> b c f h w", b=batch_size).float()

    # -- call ----------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def __call__(
        self,
        reference_image: ImageInput | list[ImageInput],
        guidance: Mapping[str, FramesInput] | list[Mapping[str, FramesInput]],
        num_inference_steps: int = 4,
        timesteps: list[int] | None = None,
        guidance_scale: float = 1.0,
        height: int | None = None,
        width: int | None = None,
        context_frames: int = 24,
        context_overlap: int = 4,
        num_videos_per_prompt: int = 1,
        generator: torch.Generator | list[torch.Generator] | None = None,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        decode_chunk_size: int = 8,
        return_dict: bool = True,
        callback_on_step_end: Callable | PipelineCallback | MultiPipelineCallbacks | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
    ) -> ReferenceLCMPipelineOutput | tuple:
        r"""Animate ``reference_image`` along ``guidance``: one video, or a batch of them.

        Args:
            reference_image: PIL image, numpy ``(H, W, 3)`` uint8, or torch ``(3, H, W)`` in ``[0, 1]``; 1- or
                4-channel images are converted to RGB. A list of them is a batch (video ``i`` animates image ``i``).
            guidance: ``{type: frames}`` for exactly :attr:`guidance_types` (any non-empty subset of them when
                :attr:`accepts_guidance_subsets`: missing types contribute nothing); frames are a list of PIL
                images, numpy ``(F, H, W, 3)`` or torch ``(F, 3, H, W)`` in ``[0, 1]``; every type has the same
                ``F``. A list of such dicts is a batch, as long as the list of references (one ``F`` and one set of
                types for all); a single reference or a single dict is shared by every video of the batch.
            num_inference_steps: denoising steps (2–4 for a distilled model, ~20 for a DDIM teacher).
            timesteps: custom timesteps, strictly decreasing, instead of the scheduler's spacing for
                ``num_inference_steps`` (which is then ignored), for schedulers that take them (``LCMScheduler``).
                An LCM (50 original steps) takes ``[999, 759, 499, 259]`` for 4 steps: evenly spaced from the top.
            guidance_scale: > 1 turns on classifier-free guidance (uncond = zero image embeddings and no reference
                tokens; guidance kept). With ``denoising_unet.config.time_cond_proj_dim`` set it is embedded instead.
            height, width: output size; default: the (first video's) guidance frames' size.
            context_frames, context_overlap: window length and overlap for long videos.
            num_videos_per_prompt: videos per reference / guidance pair (``V = batch × num_videos_per_prompt``
                videos in all, those of one pair next to each other); the R-UNet still runs once per reference.
            generator, latents: randomness: one generator, or a list of ``V`` (one per video: a video then
                equals the single-video call with that generator); ``latents`` is ``(V, C, F, h, w)``.
            output_type: ``"pil"``, ``"np"``, ``"pt"`` or ``"latent"``.
            decode_chunk_size: frames decoded by the VAE at once.
            callback_on_step_end: called as ``callback(pipe, step, timestep, {"latents": ...})`` after every step;
                may return ``{"latents": ...}`` to replace them.

        Returns:
            :class:`ReferenceLCMPipelineOutput` whose ``frames[i]`` is video ``i`` (see its docstring), or a tuple.
        """
        callback_on_step_end_tensor_inputs = callback_on_step_end_tensor_inputs or ["latents"]
        if isinstance(callback_on_step_end, (PipelineCallback, MultiPipelineCallbacks)):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs

        # 1. Standardise and check inputs; batch them
        references = [reference_to_tensor(item, name) for name, item in batch_items("reference_image", reference_image)]
        guidance_batch = [guidance_to_tensors(item, name) for name, item in batch_items("guidance", guidance)]
        first_maps = next(iter(guidance_batch[0].values()))
        num_frames = first_maps.shape[0]
        height = first_maps.shape[-2] if height is None else height
        width = first_maps.shape[-1] if width is None else width
        self.check_inputs(
            guidance_batch, num_inference_steps, height, width, context_frames, context_overlap, output_type,
            decode_chunk_size, callback_on_step_end_tensor_inputs, timesteps, len(references), num_videos_per_prompt,
            generator, guidance_scale, latents,
        )
        device = self._execution_device
        reference, guidance_maps = self.prepare_conditions(references, guidance_batch, height, width)
        batch_size = max(len(references), len(guidance_batch))
        num_videos = batch_size * num_videos_per_prompt
        reference_index = _video_index(len(references), batch_size, num_videos_per_prompt)  # (V,)
        guidance_index = _video_index(len(guidance_batch), batch_size, num_videos_per_prompt)  # (V,)
        embeds_guidance = self.denoising_unet.config.time_cond_proj_dim is not None
        do_classifier_free_guidance = guidance_scale > 1.0 and not embeds_guidance
        self._guidance_scale = guidance_scale

        # 2. Reference: CLIP embedding and R-UNet bank, once per call and reference
        image_embeds, bank = self.encode_reference(reference, device, do_classifier_free_guidance, reference_index)

        # 3. Guidance features, once per call and guidance video
        guidance_features = self.encode_guidance(guidance_maps, device, guidance_index)

        # 4. Timesteps
        if timesteps is not None:
            timesteps = [operator.index(value) for value in timesteps]
        timesteps, num_inference_steps = retrieve_timesteps(self.scheduler, num_inference_steps, device, timesteps)

        # 5. Initial latents
        latents = self.prepare_latents(
            num_videos, num_frames, height, width, self.denoising_unet.dtype, device, generator, latents
        )

        # 6. Guidance-scale embedding for LCMs distilled with one (w = guidance_scale - 1, as diffusers' LCM)
        timestep_cond = None
        if embeds_guidance:
            timestep_cond = guidance_condition(
                torch.full((num_videos,), float(guidance_scale), device=device),
                self.denoising_unet.config.time_cond_proj_dim,
            )

        # 7. Denoising loop over context windows
        windows = context_windows(num_frames, context_frames, context_overlap)
        step_kwargs = self._step_kwargs(generator)
        self._num_timesteps = len(timesteps)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for step_index, timestep in enumerate(timesteps):
                model_output = self.predict(  # self.guidance_scale: a step-end callback may change it
                    latents, timestep, image_embeds, bank, guidance_features, timestep_cond, self.guidance_scale,
                    windows,
                )
                latents = self.scheduler.step(model_output, timestep, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    step_values = locals()
                    tensors = {name: step_values[name] for name in callback_on_step_end_tensor_inputs}
                    latents = callback_on_step_end(self, step_index, timestep, tensors).pop("latents", latents)
                progress_bar.update()

        # 8. Decode
        if output_type == "latent":
            video = latents
        else:
            video = self.video_processor.postprocess_video(
                self.decode_latents(latents, decode_chunk_size), output_type=output_type
            )
        self.maybe_free_model_hooks()
        if not return_dict:
            return (video,)
        return ReferenceLCMPipelineOutput(frames=video)

    def _step_kwargs(self, generator: torch.Generator | list[torch.Generator] | None) -> dict[str, Any]:
        # Only stochastic schedulers (LCM, DDPM, DDIM with eta) take a generator.
        accepts_generator = "generator" in inspect.signature(self.scheduler.step).parameters
        return {"generator": generator} if accepts_generator else {}


@torch.no_grad()
def _own_aligned_storage(module: torch.nn.Module) -> None:
    # Weights loaded from safetensors can sit at unaligned offsets of one shared buffer; CPU kernels then take other
    # SIMD paths and results differ from a freshly built model by ~1e-7. Fresh, aligned copies make save → load exact.
    for tensor in list(module.parameters()) + list(module.buffers()):
        if tensor.device.type != "meta":
            tensor.data = tensor.data.clone()


def _video_index(count: int, batch_size: int, num_videos_per_prompt: int) -> torch.Tensor:
    """``(batch_size * num_videos_per_prompt,)``: which of ``count`` inputs (1, or one per item) each video uses."""
    items = torch.arange(batch_size) if count == batch_size else torch.zeros(batch_size, dtype=torch.long)
    return items.repeat_interleave(num_videos_per_prompt)


def _vae_block_channels(vae: torch.nn.Module) -> tuple[int, ...]:
    config = vae.config
    return tuple(getattr(config, "block_out_channels", None) or config.encoder_block_out_channels)


def _encode_latents(vae: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` in ``[-1, 1]`` → scaled latents ``(B, C, h, w)`` (the posterior mode: deterministic)."""
    encoded = vae.encode(pixels)
    latents = encoded.latent_dist.mode() if hasattr(encoded, "latent_dist") else encoded.latents
    shift_factor = getattr(vae.config, "shift_factor", None)
    if shift_factor is not None:
        latents = latents - shift_factor
    return latents * vae.config.scaling_factor
