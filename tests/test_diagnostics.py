"""ReferenceAttentionRecorder: the share of the D-UNet's self-attention that lands on reference tokens."""

from __future__ import annotations

import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.diagnostics import ReferenceAttentionRecorder
from referencelcm.models.reference_attention import spatial_self_attention_names

from .conftest import build_components, make_inputs


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
