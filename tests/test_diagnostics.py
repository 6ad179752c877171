"""ReferenceAttentionRecorder (the share of the D-UNet's self-attention on reference tokens) and reference_path_from
(one path of the reference from another image)."""

from __future__ import annotations

import pytest
import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.diagnostics import ReferenceAttentionRecorder, reference_path_from
from referencelcm.models.reference_attention import spatial_self_attention_names

from .conftest import IMAGE_SIZE, build_components, make_inputs


def make_pipe() -> ReferenceLCMPipeline:
    pipe = ReferenceLCMPipeline(**build_components(scheduler="ddim"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def record(pipe: ReferenceLCMPipeline, steps: int = 2, **kwargs) -> dict[str, tuple[float, float]]:
    with ReferenceAttentionRecorder(pipe.denoising_unet) as recorder:
        pipe(**make_inputs(num_frames=2), num_inference_steps=steps, generator=torch.Generator().manual_seed(0),
             output_type="latent", **kwargs)
    return recorder.shares()


def test_every_reading_layer_reports_a_share_between_zero_and_one():
    pipe = make_pipe()
    shares = record(pipe)
    assert set(shares) == set(spatial_self_attention_names(pipe.denoising_unet))
    for share, uniform in shares.values():
        assert 0 < share < 1 and uniform == 0.5  # the R-UNet's tokens are as many as the frame's own
    assert any(abs(share - uniform) > 1e-3 for share, uniform in shares.values())  # content decides, not counting


def test_keys_without_content_give_the_uniform_share():
    pipe = make_pipe()
    for name, module in pipe.denoising_unet.named_modules():
        if name in spatial_self_attention_names(pipe.denoising_unet):
            torch.nn.init.zeros_(module.to_k.weight)  # every key equal: attention spreads evenly
    for share, uniform in record(pipe).values():
        assert abs(share - uniform) < 1e-6


def test_dropped_references_are_left_out_and_hooks_are_removed():
    pipe = make_pipe()
    conditional = record(pipe, steps=1)
    # In one step the conditional half of CFG computes exactly the call without CFG; the unconditional half (no
    # reference, no image embedding: other hidden states after the first cross-attention) must not be counted.
    with_cfg = record(pipe, steps=1, guidance_scale=3.0)
    assert set(with_cfg) == set(conditional)
    for (share, _), (cfg_share, _) in zip(conditional.values(), with_cfg.values()):
        assert abs(share - cfg_share) < 1e-5
    module = next(module for name, module in pipe.denoising_unet.named_modules() if name.endswith("attn1"))
    assert not module._forward_hooks


def generate(pipe: ReferenceLCMPipeline, reference: torch.Tensor, guidance_scale: float = 3.0) -> torch.Tensor:
    inputs = make_inputs(num_frames=2)
    return pipe(reference, inputs["guidance"], num_inference_steps=2, guidance_scale=guidance_scale,
                generator=torch.Generator().manual_seed(0), output_type="pt").frames


def test_both_paths_from_another_image_are_the_call_with_that_image():
    pipe = make_pipe()
    generator = torch.Generator().manual_seed(5)
    reference, other = (torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=generator) for _ in range(2))
    plain, with_other = generate(pipe, reference), generate(pipe, other)
    with reference_path_from(pipe, "image_embeds", other):
        embeds_swapped = generate(pipe, reference)
        with reference_path_from(pipe, "reference_tokens", other):
            both = generate(pipe, reference)
    torch.testing.assert_close(both, with_other)
    with reference_path_from(pipe, "reference_tokens", other):
        tokens_swapped = generate(pipe, reference)
    with reference_path_from(pipe, "image_embeds", reference):  # the call's own reference: nothing changes
        torch.testing.assert_close(generate(pipe, reference), plain)
    for swapped in (embeds_swapped, tokens_swapped):
        assert not torch.allclose(swapped, plain) and not torch.allclose(swapped, with_other)
    assert "encode_reference" not in vars(pipe)  # the class's method is back
    torch.testing.assert_close(generate(pipe, reference), plain)


def test_a_removed_path_is_a_zero_embedding_or_no_reference_tokens():
    pipe = make_pipe()
    reference = torch.rand(3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(5))
    plain = generate(pipe, reference, guidance_scale=1.0)
    with reference_path_from(pipe, "image_embeds", None):
        no_embeds = generate(pipe, reference, guidance_scale=1.0)
    with reference_path_from(pipe, "reference_tokens", None):
        no_tokens = generate(pipe, reference, guidance_scale=1.0)
        with reference_path_from(pipe, "image_embeds", None):
            # both removed, the conditional branch of CFG is its unconditional one: the scale changes nothing
            neither = generate(pipe, reference, guidance_scale=3.0)
            torch.testing.assert_close(generate(pipe, reference, guidance_scale=7.0), neither)
    assert not torch.allclose(no_embeds, plain) and not torch.allclose(no_tokens, plain)
    assert not torch.allclose(generate(pipe, reference, guidance_scale=7.0), generate(pipe, reference))


def test_reference_path_from_rejects_unknown_paths_and_restores_after_errors():
    pipe = make_pipe()
    with pytest.raises(ValueError, match="`path` must be one of"):
        with reference_path_from(pipe, "clip", None):
            pass
    with pytest.raises(RuntimeError):
        with reference_path_from(pipe, "image_embeds", None):
            raise RuntimeError
    assert "encode_reference" not in vars(pipe)
