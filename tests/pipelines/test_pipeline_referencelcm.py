import copy
import json
from unittest import mock

import numpy as np
import PIL.Image
import pytest
import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.models.reference_attention import ReferenceAttentionHook
from referencelcm.pipelines.context import context_windows

from ..conftest import GUIDANCE_TYPES, build_components, make_inputs, randomize_guidance_encoder
from .test_pipeline_common import captured_diffusers_log


def make_pipe(**kwargs) -> ReferenceLCMPipeline:
    pipe = ReferenceLCMPipeline(**build_components(**kwargs))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, inputs, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 2)
    kwargs.setdefault("output_type", "np")
    return pipe(**inputs, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def count_calls(module) -> list:
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


# -- outputs -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "output_type, expected",
    [("np", (1, 3, 32, 32, 3)), ("pt", (1, 3, 3, 32, 32)), ("latent", (1, 4, 3, 4, 4))],
)
def test_video_output_shapes(pipe, inputs, output_type, expected):
    frames = generate(pipe, inputs, output_type=output_type)
    assert tuple(frames.shape) == expected
    if output_type != "latent":
        assert frames.min() >= 0 and frames.max() <= 1


def test_pil_output_and_default_size(pipe):
    frames = generate(pipe, make_inputs(num_frames=2, size=64), output_type="pil")
    assert len(frames) == 1 and len(frames[0]) == 2
    assert all(isinstance(frame, PIL.Image.Image) and frame.size == (64, 64) for frame in frames[0])
    resized = generate(pipe, make_inputs(num_frames=1, size=64), output_type="np", height=32, width=64)
    assert resized.shape == (1, 1, 32, 64, 3)


def test_image_mode_with_2d_denoising_unet():
    pipe = make_pipe(motion=False)
    frames = generate(pipe, make_inputs(num_frames=1), output_type="pil")
    assert len(frames[0]) == 1 and frames[0][0].size == (32, 32)
    assert generate(pipe, make_inputs(num_frames=3)).shape == (1, 3, 32, 32, 3)


def test_return_tuple(pipe, inputs):
    (frames,) = pipe(**inputs, num_inference_steps=1, output_type="np", return_dict=False)
    assert frames.shape == (1, 3, 32, 32, 3)


# -- what runs how often -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_frames, context_frames, context_overlap, steps", [(3, 24, 4, 2), (7, 3, 1, 3), (5, 2, 1, 1)])
def test_call_counts(pipe, num_frames, context_frames, context_overlap, steps):
    reference_calls = count_calls(pipe.reference_unet)
    clip_calls = count_calls(pipe.image_encoder)
    guidance_calls = count_calls(pipe.guidance_encoder)
    denoising_calls = count_calls(pipe.denoising_unet)
    generate(
        pipe, make_inputs(num_frames), num_inference_steps=steps, context_frames=context_frames,
        context_overlap=context_overlap, output_type="latent",
    )
    windows = len(context_windows(num_frames, context_frames, context_overlap))
    assert len(reference_calls) == len(clip_calls) == len(guidance_calls) == 1
    assert len(denoising_calls) == steps * windows


def test_teacher_mode_batches_cfg_in_one_call():
    pipe = make_pipe(scheduler="ddim")
    denoising_calls = count_calls(pipe.denoising_unet)
    batch_sizes = []
    pipe.denoising_unet.register_forward_pre_hook(lambda module, args: batch_sizes.append(args[0].shape[0]))
    inputs = make_inputs(2)
    guided = generate(pipe, inputs, num_inference_steps=3, guidance_scale=3.5)
    assert len(denoising_calls) == 3 and set(batch_sizes) == {2}
    unguided = generate(pipe, inputs, num_inference_steps=3, guidance_scale=1.0)
    assert np.isfinite(guided).all() and not np.allclose(guided, unguided, atol=1e-4)


def test_unconditional_branch_has_no_reference_and_zero_embeddings():
    pipe = make_pipe(scheduler="ddim")
    seen = {}

    def spy(module, args, kwargs):
        seen["embeds"] = kwargs["encoder_hidden_states"]
        seen["drop"] = kwargs["cross_attention_kwargs"]["reference_bank"].drop_mask()

    pipe.denoising_unet.register_forward_pre_hook(spy, with_kwargs=True)
    generate(pipe, make_inputs(2), num_inference_steps=1, guidance_scale=2.0, output_type="latent")
    frames = 2
    assert seen["drop"].tolist() == [False, True]
    assert seen["embeds"][frames:].abs().max() == 0 and seen["embeds"][:frames].abs().max() > 0


def test_window_averaging_is_exact(pipe):
    constant = 0.37

    def constant_unet(unet, latents, *args, **kwargs):
        return torch.full_like(latents, constant)

    with mock.patch("referencelcm.pipelines.pipeline_referencelcm.run_denoising_unet", side_effect=constant_unet):
        for num_frames, context_frames, overlap in [(1, 24, 4), (9, 4, 1), (10, 4, 3), (25, 24, 4), (7, 2, 1)]:
            latents = torch.randn(1, 4, num_frames, 4, 4)
            prediction = pipe.predict(
                latents, torch.tensor(1), torch.zeros(1, 1, 16), None, torch.zeros(1, 8, num_frames, 4, 4),
                None, 1.0, context_windows(num_frames, context_frames, overlap),
            )
            assert torch.allclose(prediction, torch.full_like(latents, constant), atol=1e-6)


def test_fresh_guidance_encoder_leaves_output_unchanged(pipe, inputs):
    baseline = generate(pipe, inputs, output_type="latent")
    other_guidance = make_inputs(seed=5)["guidance"]
    assert torch.equal(generate(pipe, {**inputs, "guidance": other_guidance}, output_type="latent"), baseline)


def test_reference_and_guidance_change_the_output(pipe, inputs):
    randomize_guidance_encoder(pipe.guidance_encoder)
    baseline = generate(pipe, inputs)
    other_reference = make_inputs(seed=7)["reference_image"]
    other_guidance = make_inputs(seed=8)["guidance"]
    assert not np.allclose(generate(pipe, {**inputs, "reference_image": other_reference}), baseline, atol=1e-4)
    assert not np.allclose(generate(pipe, {**inputs, "guidance": other_guidance}), baseline, atol=1e-4)


def test_a_subset_model_animates_from_one_type_and_a_missing_type_contributes_nothing(pipe, inputs):
    """A model trained with guidance-type dropout takes the skeleton alone; the result is what the full call gives
    when the missing type's encoder outputs zeros (a dropped type in training). A model without it names the fix."""
    randomize_guidance_encoder(pipe.guidance_encoder)
    skeleton_only = {**inputs, "guidance": {"dwpose": inputs["guidance"]["dwpose"]}}
    with pytest.raises(ValueError, match="missing \\['depth'\\].*--guidance_type_dropout P"):
        generate(pipe, skeleton_only)
    pipe.guidance_encoder.register_to_config(guidance_type_dropout=0.5)
    assert pipe.accepts_guidance_subsets
    subset = generate(pipe, skeleton_only, output_type="latent")
    with torch.no_grad():
        torch.nn.init.zeros_(pipe.guidance_encoder.encoders["depth"].conv_out.weight)
        torch.nn.init.zeros_(pipe.guidance_encoder.encoders["depth"].conv_out.bias)
    assert torch.allclose(subset, generate(pipe, inputs, output_type="latent"), atol=1e-6)
    with pytest.raises(ValueError, match="same guidance types; `guidance\\[0\\]` has \\['depth', 'dwpose'\\], "
                                         "`guidance\\[1\\]` \\['dwpose'\\]"):
        generate(pipe, {**inputs, "guidance": [inputs["guidance"], skeleton_only["guidance"]]})
    with pytest.raises(ValueError, match="non-empty subset"):
        generate(pipe, {**inputs, "guidance": {"mask": inputs["guidance"]["dwpose"]}})


def test_guidance_scale_embedding_is_used():
    pipe = make_pipe(time_cond_proj_dim=8)
    inputs = make_inputs(2)
    calls = count_calls(pipe.denoising_unet)
    low = generate(pipe, inputs, guidance_scale=1.0, output_type="latent")
    high = generate(pipe, inputs, guidance_scale=8.0, output_type="latent")
    assert len(calls) == 4  # embedded guidance: no CFG batch, one call per step
    assert not torch.allclose(low, high, atol=1e-5)


# -- batches -------------------------------------------------------------------------------------------------------


def generators(*seeds):
    return [torch.Generator().manual_seed(seed) for seed in seeds]


@pytest.mark.parametrize("kwargs, guidance_scale", [({}, 1.0), ({"scheduler": "ddim"}, 2.5)])
def test_a_batch_equals_its_single_video_calls(kwargs, guidance_scale):
    pipe = make_pipe(**kwargs)
    randomize_guidance_encoder(pipe.guidance_encoder)
    first, second = make_inputs(2, seed=1), make_inputs(2, seed=2)
    reference_batches = []
    pipe.reference_unet.register_forward_pre_hook(lambda module, args: reference_batches.append(args[0].shape[0]))
    guidance_calls = count_calls(pipe.guidance_encoder)
    batch = pipe(
        [first["reference_image"], second["reference_image"]], [first["guidance"], second["guidance"]],
        num_inference_steps=2, guidance_scale=guidance_scale, generator=generators(10, 11), output_type="np",
    ).frames
    assert reference_batches == [2] and len(guidance_calls) == 1  # once per call, one row per reference
    assert batch.shape == (2, 2, 32, 32, 3)
    for video, inputs, seed in ((0, first, 10), (1, second, 11)):
        single = pipe(**inputs, num_inference_steps=2, guidance_scale=guidance_scale, generator=generators(seed),
                      output_type="np").frames
        assert np.allclose(batch[video], single[0], atol=1e-5)


def test_num_videos_per_prompt_reuses_each_reference():
    pipe = make_pipe()
    first, second = make_inputs(2, seed=1), make_inputs(2, seed=2)
    reference_batches = []
    pipe.reference_unet.register_forward_pre_hook(lambda module, args: reference_batches.append(args[0].shape[0]))
    videos = pipe(
        [first["reference_image"], second["reference_image"]], [first["guidance"], second["guidance"]],
        num_inference_steps=2, num_videos_per_prompt=2, generator=generators(10, 12, 11, 13), output_type="latent",
    ).frames
    assert reference_batches == [2] and videos.shape == (4, 4, 2, 4, 4)
    # videos 0, 1 animate the first reference, 2, 3 the second; each equals a single call with its generator
    for video, inputs, seed in ((1, first, 12), (2, second, 11)):
        single = pipe(**inputs, num_inference_steps=2, generator=generators(seed), output_type="latent").frames
        assert torch.allclose(videos[video], single[0], atol=1e-5)
    assert not torch.allclose(videos[0], videos[1], atol=1e-3)


def test_a_single_reference_or_guidance_is_shared_by_the_batch(pipe):
    randomize_guidance_encoder(pipe.guidance_encoder)
    first, second = make_inputs(2, seed=1), make_inputs(2, seed=2)
    reference_batches = []
    pipe.reference_unet.register_forward_pre_hook(lambda module, args: reference_batches.append(args[0].shape[0]))
    shared_reference = pipe(first["reference_image"], [first["guidance"], second["guidance"]], num_inference_steps=2,
                            generator=generators(1, 2), output_type="latent").frames
    shared_guidance = pipe([first["reference_image"], second["reference_image"]], first["guidance"],
                           num_inference_steps=2, generator=generators(1, 2), output_type="latent").frames
    assert reference_batches == [1, 2]
    expected = pipe(first["reference_image"], second["guidance"], num_inference_steps=2, generator=generators(2),
                    output_type="latent").frames
    assert torch.allclose(shared_reference[1], expected[0], atol=1e-5)
    expected = pipe(second["reference_image"], first["guidance"], num_inference_steps=2, generator=generators(2),
                    output_type="latent").frames
    assert torch.allclose(shared_guidance[1], expected[0], atol=1e-5)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i.update(reference_image=[i["reference_image"]] * 2, guidance=[i["guidance"]] * 3),
         "`reference_image` holds 2 images and `guidance` 3"),
        (lambda i: i.update(reference_image=[]), "`reference_image` is an empty list"),
        (lambda i: i.update(guidance=[i["guidance"], {"depth": i["guidance"]["depth"]}]),
         "`guidance\\[1\\]` must hold exactly .* missing \\['dwpose'\\]"),
        (lambda i: i.update(guidance=[i["guidance"], {k: v[:2] for k, v in i["guidance"].items()}]),
         "same number of frames; `guidance` has \\[3, 2\\]"),
        (lambda i: i.update(reference_image=[i["reference_image"], torch.rand(1, 3, 32, 32)]),
         "`reference_image\\[1\\]` tensors must be \\(C, H, W\\)"),
        (lambda i: i.update(generator=generators(0, 1)), "`generator` is a list of 2 generators, but the call makes 1"),
        (lambda i: i.update(reference_image=[i["reference_image"]] * 2, num_videos_per_prompt=2,
                            generator=generators(0, 1)), "makes 4 videos"),
        (lambda i: i.update(num_videos_per_prompt=0), "`num_videos_per_prompt` must be an integer >= 1"),
    ],
)
def test_bad_batches_raise_a_clear_error(pipe, inputs, change, message):
    change(inputs)
    with pytest.raises(ValueError, match=message):
        pipe(**inputs, output_type="latent")


# -- determinism, callbacks, decoding, dtype -----------------------------------------------------------------------


def test_generator_determinism(pipe, inputs):
    first, second = generate(pipe, inputs, seed=3), generate(pipe, inputs, seed=3)
    assert np.array_equal(first, second)
    assert not np.allclose(first, generate(pipe, inputs, seed=4), atol=1e-4)


def test_latents_argument_and_its_shape_check(pipe, inputs):
    latents = torch.randn(1, 4, 3, 4, 4)
    assert np.array_equal(generate(pipe, inputs, latents=latents, seed=1), generate(pipe, inputs, latents=latents, seed=1))
    with pytest.raises(ValueError, match="`latents` must have shape"):
        generate(pipe, inputs, latents=torch.randn(1, 4, 2, 4, 4))


def test_callback_on_step_end_sees_and_replaces_latents(pipe, inputs):
    steps = []

    def callback(pipeline, step, timestep, tensors):
        steps.append(step)
        return {"latents": torch.zeros_like(tensors["latents"])}

    latents = generate(pipe, inputs, num_inference_steps=3, output_type="latent", callback_on_step_end=callback)
    assert steps == [0, 1, 2] and latents.abs().max() == 0


def test_custom_timesteps_replace_the_schedule(pipe, inputs):
    seen = []

    def callback(pipeline, step, timestep, tensors):
        seen.append(int(timestep))
        return {}

    custom = generate(pipe, inputs, timesteps=[999, 499, 299, 139], callback_on_step_end=callback)
    assert seen == [999, 499, 299, 139]  # num_inference_steps (2 here) is ignored
    seen.clear()
    default = generate(pipe, inputs, num_inference_steps=4, callback_on_step_end=callback)
    assert seen == [999, 759, 499, 259]
    assert not np.allclose(custom, default, atol=1e-4)
    # the default schedule passed explicitly (numpy integers too) gives the default output
    assert np.array_equal(generate(pipe, inputs, timesteps=[999, 759, 499, 259]), default)
    assert np.array_equal(generate(pipe, inputs, timesteps=np.array([999, 759, 499, 259])), default)


@pytest.mark.parametrize(
    "timesteps", [[], [499, 999], [999, 999], [1000, 499], [999, -1], [999.0, 499], [999, True], ["999"]]
)
def test_bad_custom_timesteps_are_named(pipe, inputs, timesteps):
    with pytest.raises(ValueError, match="`timesteps` must be a non-empty, strictly decreasing list of integers"):
        pipe(**inputs, timesteps=timesteps, output_type="latent")


def test_custom_timesteps_need_a_scheduler_that_takes_them():
    pipe = make_pipe(scheduler="ddim")
    with pytest.raises(ValueError, match="DDIMScheduler does not"):
        pipe(**make_inputs(1), timesteps=[999, 499], output_type="latent")


def test_decode_chunk_size_does_not_change_frames(pipe):
    inputs = make_inputs(5)
    assert np.allclose(generate(pipe, inputs, decode_chunk_size=1), generate(pipe, inputs, decode_chunk_size=8), atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(pipe, inputs, dtype):
    pipe.to(dtype)
    frames = generate(pipe, inputs, num_inference_steps=1)
    assert pipe.denoising_unet.dtype == dtype and np.isfinite(frames).all()


def test_reference_image_with_one_or_four_channels_is_converted(pipe, inputs):
    rgb = inputs["reference_image"]
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert np.allclose(generate(pipe, {**inputs, "reference_image": rgba}), generate(pipe, inputs), atol=1e-5)
    grey = PIL.Image.fromarray(rgb[..., 0], mode="L")
    assert generate(pipe, {**inputs, "reference_image": grey}).shape == (1, 3, 32, 32, 3)
    torch_grey = torch.rand(1, 32, 32)
    assert generate(pipe, {**inputs, "reference_image": torch_grey}).shape == (1, 3, 32, 32, 3)


def test_guidance_as_pil_numpy_and_torch_agree(pipe, inputs):
    as_uint8 = {name: (maps.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8) for name, maps in inputs["guidance"].items()}
    as_pil = {name: [PIL.Image.fromarray(frame) for frame in frames] for name, frames in as_uint8.items()}
    from_numpy = generate(pipe, {**inputs, "guidance": as_uint8})
    assert np.allclose(generate(pipe, {**inputs, "guidance": as_pil}), from_numpy, atol=1e-6)


# -- saving and loading --------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, pipe, inputs):
    randomize_guidance_encoder(pipe.guidance_encoder)
    pipe.register_to_config(motion_norm_mode="frame")
    pipe._install_hooks()
    expected = generate(pipe, inputs)
    pipe.save_pretrained(tmp_path)
    loaded = ReferenceLCMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.motion_norm_mode == "frame"
    assert type(loaded.scheduler).__name__ == "LCMScheduler"
    assert np.array_equal(generate(loaded, inputs), expected)


def locality_of(unet) -> set:
    return {hook.locality for module in unet.modules() for hook in module._forward_pre_hooks.values()
            if isinstance(hook, ReferenceAttentionHook) and hook.mode == "read"}


def test_reference_locality_is_saved_reloaded_and_used(tmp_path, inputs):
    components = build_components()
    local = ReferenceLCMPipeline(**components, reference_locality=0.25)
    local.set_progress_bar_config(disable=True)
    assert local.settings == {"motion_norm_mode": "video", "reference_locality": 0.25}
    assert locality_of(local.denoising_unet) == {0.25}
    expected = generate(local, inputs)
    local.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["reference_locality"] == 0.25
    loaded = ReferenceLCMPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.reference_locality == 0.25 and locality_of(loaded.denoising_unet) == {0.25}
    assert np.array_equal(generate(loaded, inputs), expected)
    assert np.array_equal(generate(loaded, inputs, height=32, width=64).shape, (1, 3, 32, 64, 3))  # other aspects

    plain = ReferenceLCMPipeline(**components)  # the same weights without the prior
    plain.set_progress_bar_config(disable=True)
    assert plain.config.reference_locality is None and locality_of(plain.denoising_unet) == {None}
    assert not np.allclose(generate(plain, inputs), expected, atol=1e-4)
    student_unet = copy.deepcopy(components["denoising_unet"])
    assert locality_of(local.hook_denoising_unet(student_unet)) == {0.25}  # e.g. a student trained outside
    with pytest.raises(ValueError, match="`reference_locality` must be None, a positive number"):
        ReferenceLCMPipeline(**components, reference_locality=-1)


def test_reference_locality_per_layer_is_saved_reloaded_and_used(tmp_path, inputs):
    components = build_components()
    per_layer = {"up_blocks.1": 0.25, "mid_block": None}
    local = ReferenceLCMPipeline(**components, reference_locality=per_layer)
    local.set_progress_bar_config(disable=True)
    assert locality_of(local.denoising_unet) == {0.25, None}
    expected = generate(local, inputs)
    local.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["reference_locality"] == per_layer
    with captured_diffusers_log() as messages:  # diffusers checks the config's types against __init__'s annotation
        loaded = ReferenceLCMPipeline.from_pretrained(tmp_path)
    assert not [message for message in messages if "Expected types for reference_locality" in message]
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.reference_locality == per_layer and loaded.settings["reference_locality"] == per_layer
    assert np.array_equal(generate(loaded, inputs), expected)
    everywhere = ReferenceLCMPipeline(**components, reference_locality=0.25)
    everywhere.set_progress_bar_config(disable=True)
    assert not np.allclose(generate(everywhere, inputs), expected, atol=1e-4)
    with pytest.raises(ValueError, match="match no spatial self-attention layer"):
        ReferenceLCMPipeline(**components, reference_locality={"up_block.1": 0.25})


def test_hub_repo_id_is_downloaded_then_loaded_locally(tmp_path, pipe, inputs):
    pipe.save_pretrained(tmp_path)
    with mock.patch("huggingface_hub.snapshot_download", return_value=str(tmp_path)) as download:
        loaded = ReferenceLCMPipeline.from_pretrained("someone/referencelcm-tiny", revision="main")
    download.assert_called_once_with("someone/referencelcm-tiny", revision="main")
    loaded.set_progress_bar_config(disable=True)
    assert np.array_equal(generate(loaded, inputs), generate(pipe, inputs))


def test_missing_local_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a pipeline folder"):
        ReferenceLCMPipeline.from_pretrained(str(tmp_path / "nope"))


# -- bad input -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda i: i["guidance"].pop("depth"), "missing \\['depth'\\]"),
        (lambda i: i["guidance"].update(normal=i["guidance"]["depth"]), "unknown \\['normal'\\]"),
        (lambda i: i["guidance"].update(depth=i["guidance"]["depth"][:2]), "same number of frames"),
        (lambda i: i["guidance"].update(depth=i["guidance"]["depth"][:0], dwpose=i["guidance"]["dwpose"][:0]), "no frames"),
        (lambda i: i.update(guidance={}), "non-empty"),
        (lambda i: i["guidance"].update(depth=i["guidance"]["depth"] * 3), "values in \\[0, 1\\]"),
        (lambda i: i["guidance"].update(depth=i["guidance"]["depth"][0]), "\\(F, 3, H, W\\)"),
        (lambda i: i.update(reference_image=torch.rand(1, 3, 32, 32)), "\\(C, H, W\\)"),
        (lambda i: i.update(reference_image=torch.rand(3, 32, 32) * 2), "values in \\[0, 1\\]"),
        (lambda i: i.update(reference_image=torch.rand(2, 32, 32)), "1, 3 or 4 channels"),
        (lambda i: i.update(height=36), "`height` must be a positive multiple of 16"),
        (lambda i: i.update(width=8), "`width` must be a positive multiple of 16"),
        (lambda i: i.update(num_inference_steps=0), "`num_inference_steps` must be an integer >= 1"),
        (lambda i: i.update(num_inference_steps=51), "`num_inference_steps` must be <= 50"),
        (lambda i: i.update(context_frames=4, context_overlap=4), "`context_overlap`"),
        (lambda i: i.update(output_type="gif"), "`output_type`"),
        (lambda i: i.update(decode_chunk_size=0), "`decode_chunk_size`"),
    ],
)
def test_bad_input_raises_a_clear_error(pipe, inputs, change, message):
    change(inputs)
    inputs.setdefault("output_type", "latent")
    with pytest.raises(ValueError, match=message):
        pipe(**inputs)


def test_too_many_steps_for_a_ddim_teacher():
    pipe = make_pipe(scheduler="ddim")
    with pytest.raises(ValueError, match="<= 1000"):
        pipe(**make_inputs(1), num_inference_steps=1001)


def test_mismatched_components_are_rejected():
    components = build_components()
    components["guidance_encoder"] = type(components["guidance_encoder"])(GUIDANCE_TYPES, 3, (8, 16, 16, 32), 16, 4)
    with pytest.raises(ValueError, match="guidance_embedding_channels"):
        ReferenceLCMPipeline(**components)
    components = build_components()
    components["guidance_encoder"] = type(components["guidance_encoder"])(GUIDANCE_TYPES, 3, (8, 16, 32), 8, 4)
    with pytest.raises(ValueError, match="downsamples by 4"):
        ReferenceLCMPipeline(**components)


def test_xformers_without_the_package_is_a_clear_error_and_changes_nothing(pipe, inputs):
    try:
        import xformers  # noqa: F401

        pytest.skip("xformers is installed")
    except ImportError:
        pass
    expected = generate(pipe, inputs, output_type="latent")
    with pytest.raises(ValueError, match="xformers"):
        pipe.enable_xformers_memory_efficient_attention()
    assert torch.equal(generate(pipe, inputs, output_type="latent"), expected)


def test_offload_hooks_keep_the_output(pipe, inputs):
    """What enable_model_cpu_offload installs (accelerate's offload hooks), with the CPU as execution device."""
    from accelerate import cpu_offload_with_hook

    expected = generate(pipe, inputs)
    hook = None
    for name in pipe.model_cpu_offload_seq.split("->"):
        _, hook = cpu_offload_with_hook(getattr(pipe, name), execution_device="cpu", prev_module_hook=hook)
    assert np.array_equal(generate(pipe, inputs), expected)
