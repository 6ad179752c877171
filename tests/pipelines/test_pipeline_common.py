"""diffusers' common pipeline checks (``PipelineTesterMixin``, diffusers' ``tests/pipelines/test_pipelines_common.py``)
on tiny components, written for this project (diffusers' test files are not installed with diffusers).

Each test names the mixin test it mirrors. Like the mixin, most of them first call ``set_default_attn_processor()`` on
every component that has it, which must keep the reference pathway. Not mirrored: the tests that need CUDA or
xformers (float16 inference, offloading onto an accelerator, ``to_device``), group offloading and layerwise casting
(off by default in the mixin), and the prompt / IP-Adapter / ``StableDiffusionMixin`` tests (no prompt here);
``test_save_load_optional_components`` has nothing to check (no optional components). CPU offload hooks are tested
in ``test_pipeline_referencelcm.py``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor
from diffusers.utils import logging as diffusers_logging

from referencelcm import ReferenceLCMPipeline

from ..conftest import build_components, make_inputs, randomize_guidance_encoder


def to_np(output) -> np.ndarray:
    return output.detach().cpu().numpy() if isinstance(output, torch.Tensor) else np.asarray(output)


class TestReferenceLCMPipelineCommon:
    """The applicable checks of diffusers' ``PipelineTesterMixin``, with its attribute names."""

    pipeline_class = ReferenceLCMPipeline
    params = frozenset(["reference_image", "guidance", "height", "width", "guidance_scale", "timesteps"])
    batch_params = frozenset(["reference_image", "guidance"])
    required_optional_params = frozenset([
        "num_inference_steps", "num_videos_per_prompt", "generator", "latents", "output_type", "return_dict",
        "callback_on_step_end", "callback_on_step_end_tensor_inputs",
    ])

    def get_dummy_components(self) -> dict:
        components = build_components()
        randomize_guidance_encoder(components["guidance_encoder"])
        return components

    def get_dummy_inputs(self, seed: int = 0) -> dict:
        return dict(
            **make_inputs(num_frames=2), generator=torch.Generator().manual_seed(seed), num_inference_steps=2,
            output_type="np",
        )

    def get_pipe(self, default_attention: bool = True) -> ReferenceLCMPipeline:
        pipe = self.pipeline_class(**self.get_dummy_components())
        if default_attention:
            set_default_attention(pipe)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # -- outputs and signature -----------------------------------------------------------------------------------

    def test_pipeline_call_signature(self):
        """Mirrors ``test_pipeline_call_signature``."""
        parameters = inspect.signature(self.pipeline_class.__call__).parameters
        optional = {name for name, parameter in parameters.items() if parameter.default is not inspect.Parameter.empty}
        assert self.params <= set(parameters)
        assert self.required_optional_params <= optional

    def test_components_function(self):
        """Mirrors ``test_components_function``."""
        components = self.get_dummy_components()
        pipe = self.pipeline_class(**components)
        assert set(pipe.components) == set(components)

    def test_dict_tuple_outputs_equivalent(self):
        """Mirrors ``test_dict_tuple_outputs_equivalent``."""
        pipe = self.get_pipe()
        output = pipe(**self.get_dummy_inputs())[0]
        output_tuple = pipe(**self.get_dummy_inputs(), return_dict=False)[0]
        assert np.abs(to_np(output) - to_np(output_tuple)).max() < 1e-4

    def test_cfg(self):
        """Mirrors ``test_cfg``."""
        pipe = self.get_pipe(default_attention=False)
        inputs = self.get_dummy_inputs()
        without = pipe(**{**inputs, "guidance_scale": 1.0})[0]
        inputs = self.get_dummy_inputs()
        assert pipe(**{**inputs, "guidance_scale": 7.5})[0].shape == without.shape

    # -- default attention processors ----------------------------------------------------------------------------

    def test_default_attention_processors_keep_the_reference_pathway(self):
        """Not in the mixin: what every mixin test relies on. ``set_default_attn_processor()`` (and
        ``set_attn_processor(AttnProcessor())``) change only the attention arithmetic, not what attends to what."""
        pipe = self.get_pipe(default_attention=False)
        expected = pipe(**self.get_dummy_inputs())[0]
        set_default_attention(pipe)
        assert all(type(processor) is AttnProcessor for processor in pipe.denoising_unet.attn_processors.values())
        assert np.abs(pipe(**self.get_dummy_inputs())[0] - expected).max() < 1e-5
        pipe.reference_unet.set_attn_processor(AttnProcessor())
        assert np.abs(pipe(**self.get_dummy_inputs())[0] - expected).max() < 1e-5
        other_reference = make_inputs(num_frames=2, seed=7)["reference_image"]
        changed = pipe(**{**self.get_dummy_inputs(), "reference_image": other_reference})[0]
        assert np.abs(changed - expected).max() > 1e-3  # the reference is still read

    def test_attention_slicing_forward_pass(self):
        """Mirrors ``test_attention_slicing_forward_pass``."""
        pipe = self.get_pipe()
        without_slicing = pipe(**self.get_dummy_inputs())[0]
        for slice_size in (1, 2):
            pipe.enable_attention_slicing(slice_size=slice_size)
            assert np.abs(pipe(**self.get_dummy_inputs())[0] - without_slicing).max() < 1e-3

    # -- batches -------------------------------------------------------------------------------------------------

    def batched(self, inputs: dict, batch_size: int) -> dict:
        batched = {name: batch_size * [value] if name in self.batch_params else value for name, value in inputs.items()}
        batched["generator"] = [torch.Generator().manual_seed(seed) for seed in range(batch_size)]
        return batched

    def test_inference_batch_consistent(self):
        """Mirrors ``test_inference_batch_consistent``."""
        pipe = self.get_pipe(default_attention=False)
        assert len(pipe(**self.batched(self.get_dummy_inputs(), 2))[0]) == 2

    def test_inference_batch_single_identical(self):
        """Mirrors ``test_inference_batch_single_identical`` (batch of 3, one generator per video)."""
        pipe = self.get_pipe()
        output = pipe(**self.get_dummy_inputs())[0]
        output_batch = pipe(**self.batched(self.get_dummy_inputs(), 3))[0]
        assert output_batch.shape[0] == 3
        assert np.abs(output_batch[0] - output[0]).max() < 1e-4

    def test_num_videos_per_prompt(self):
        """Mirrors ``test_num_images_per_prompt`` with the video pipelines' ``num_videos_per_prompt``."""
        pipe = self.get_pipe(default_attention=False)
        for batch_size in (1, 2):
            for num_videos_per_prompt in (1, 2):
                inputs = self.get_dummy_inputs()
                inputs = {name: batch_size * [value] if name in self.batch_params else value
                          for name, value in inputs.items()}
                output = pipe(**inputs, num_videos_per_prompt=num_videos_per_prompt)[0]
                assert output.shape[0] == batch_size * num_videos_per_prompt

    # -- callbacks -----------------------------------------------------------------------------------------------

    def test_callback_inputs(self):
        """Mirrors ``test_callback_inputs``."""
        pipe = self.get_pipe(default_attention=False)

        def callback_inputs_all(pipe, step, timestep, callback_kwargs):
            assert set(callback_kwargs) == set(pipe._callback_tensor_inputs)
            return callback_kwargs

        def callback_inputs_change_tensor(pipe, step, timestep, callback_kwargs):
            if step == pipe.num_timesteps - 1:
                callback_kwargs["latents"] = torch.zeros_like(callback_kwargs["latents"])
            return callback_kwargs

        inputs = {**self.get_dummy_inputs(), "output_type": "latent",
                  "callback_on_step_end_tensor_inputs": pipe._callback_tensor_inputs}
        pipe(**inputs, callback_on_step_end=callback_inputs_all)
        inputs["generator"] = torch.Generator().manual_seed(0)
        assert pipe(**inputs, callback_on_step_end=callback_inputs_change_tensor)[0].abs().sum() == 0

    def test_callback_cfg(self):
        """Mirrors ``test_callback_cfg``: a callback raising ``pipe._guidance_scale`` every step."""
        pipe = self.get_pipe(default_attention=False)

        def callback_increase_guidance(pipe, step, timestep, callback_kwargs):
            pipe._guidance_scale += 1.0
            return callback_kwargs

        inputs = {**self.get_dummy_inputs(), "guidance_scale": 2.0, "callback_on_step_end": callback_increase_guidance}
        pipe(**inputs)
        assert pipe.guidance_scale == 2.0 + pipe.num_timesteps

    # -- saving, loading, dtypes ---------------------------------------------------------------------------------

    def test_save_load_local(self, tmp_path):
        """Mirrors ``test_save_load_local``: every component is loaded (logged by diffusers), the output is kept."""
        pipe = self.get_pipe()
        output = pipe(**self.get_dummy_inputs())[0]
        pipe.save_pretrained(tmp_path, safe_serialization=False)
        with captured_diffusers_log() as messages:
            loaded = self.pipeline_class.from_pretrained(tmp_path)
        assert all(name in "\n".join(messages) for name in loaded.components)
        set_default_attention(loaded)
        loaded.set_progress_bar_config(disable=True)
        assert np.abs(loaded(**self.get_dummy_inputs())[0] - output).max() < 5e-4

    def test_pipeline_with_accelerator_device_map(self, tmp_path):
        """Mirrors ``test_pipeline_with_accelerator_device_map`` (``device_map="cpu"``)."""
        pipe = self.get_pipe(default_attention=False)
        output = pipe(**self.get_dummy_inputs())[0]
        pipe.save_pretrained(tmp_path)
        loaded = self.pipeline_class.from_pretrained(tmp_path, device_map="cpu")
        set_default_attention(loaded)
        loaded.set_progress_bar_config(disable=True)
        assert np.abs(loaded(**self.get_dummy_inputs())[0] - output).max() < 1e-4

    def test_serialization_and_loading_with_variants(self, tmp_path):
        """Mirrors ``test_serialization_with_variants``, ``test_loading_with_variants`` and
        ``test_loading_with_incorrect_variants_raises_error``."""
        pipe = self.pipeline_class(**self.get_dummy_components())
        models = {name: model for name, model in pipe.components.items() if isinstance(model, torch.nn.Module)}
        pipe.save_pretrained(tmp_path / "variant", variant="fp16", safe_serialization=False)
        config = json.loads((tmp_path / "variant" / "model_index.json").read_text())
        for name in models:
            assert name in config and any(file.split(".")[1].startswith("fp16")
                                          for file in os.listdir(tmp_path / "variant" / name))
        loaded = self.pipeline_class.from_pretrained(tmp_path / "variant", variant="fp16")
        for name, model in models.items():
            loaded_parameters = dict(loaded.components[name].named_parameters())
            for key, parameter in model.named_parameters():
                if key in loaded_parameters:  # tied weights are not saved twice
                    assert torch.equal(parameter, loaded_parameters[key]), f"{name}.{key}"
        pipe.save_pretrained(tmp_path / "plain", safe_serialization=False)
        with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
            self.pipeline_class.from_pretrained(tmp_path / "plain", variant="fp16")

    def test_to_dtype(self):
        """Mirrors ``test_to_dtype``."""
        components = self.get_dummy_components()
        pipe = self.pipeline_class(**components)
        models = [component for component in components.values() if getattr(component, "dtype", None)]
        assert all(model.dtype == torch.float32 for model in models)
        pipe.to(dtype=torch.float16)
        assert all(model.dtype == torch.float16 for model in models)

    def test_dtype_dict_and_alias(self, tmp_path):
        """Mirrors ``test_dtype_dict`` and ``test_dtype_alias`` (``dtype=`` in ``from_pretrained``)."""
        pipe = self.pipeline_class(**self.get_dummy_components())
        pipe.save_pretrained(tmp_path, safe_serialization=False)
        dtypes = {"vae": torch.bfloat16, "default": torch.float16}
        for dtype in (dtypes, torch.float16):
            loaded = self.pipeline_class.from_pretrained(tmp_path, dtype=dtype)
            for name, component in loaded.components.items():
                if isinstance(component, torch.nn.Module):
                    expected = dtype if isinstance(dtype, torch.dtype) else dtypes.get(name, dtypes["default"])
                    assert component.dtype == expected, name


def set_default_attention(pipe: ReferenceLCMPipeline) -> None:
    """What the mixin does before most checks: ``set_default_attn_processor()`` on every component that has it."""
    for component in pipe.components.values():
        if hasattr(component, "set_default_attn_processor"):
            component.set_default_attn_processor()


class captured_diffusers_log:
    """The INFO messages of diffusers' pipeline loader (its logger does not propagate to pytest's ``caplog``)."""

    def __enter__(self) -> list[str]:
        self.logger = diffusers_logging.get_logger("diffusers.pipelines.pipeline_utils")
        self.level = self.logger.level
        self.messages: list[str] = []
        self.handler = logging.Handler()
        self.handler.emit = lambda record: self.messages.append(record.getMessage())
        self.logger.addHandler(self.handler)
        self.logger.setLevel(logging.INFO)
        return self.messages

    def __exit__(self, *exc_info) -> None:
        self.logger.removeHandler(self.handler)
        self.logger.setLevel(self.level)
