import logging
import math
from dataclasses import replace

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from referencelcm import ReferenceBank, install_reference_attention
from referencelcm.models.injection import install_guidance_injection, run_denoising_unet
from referencelcm.models.reference_attention import (
    ReferenceAttentionHook,
    reference_locality_bias,
    spatial_self_attention_names,
)

from ..conftest import build_components


def write_bank(reference_unet, batch_size=2, seed=0):
    install_reference_attention(reference_unet, "write")
    generator = torch.Generator().manual_seed(seed)
    bank = ReferenceBank()
    with torch.no_grad():
        reference_unet(
            torch.randn(batch_size, 4, 4, 4, generator=generator),
            torch.zeros(batch_size, dtype=torch.long),
            encoder_hidden_states=torch.randn(batch_size, 1, 16, generator=generator),
            cross_attention_kwargs={"reference_bank": bank},
        )
    return bank


def denoising_inputs(batch_size=2, num_frames=3, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return dict(
        latents=torch.randn(batch_size, 4, num_frames, 4, 4, generator=generator),
        timesteps=torch.tensor(500),
        image_embeds=torch.randn(batch_size, 1, 16, generator=generator),
    )


def stock_output(unet, latents, timesteps, image_embeds):
    """The D-UNet without a reference bank (the hooks then do nothing): the no-reference ground truth."""
    return run_denoising_unet(unet, latents, timesteps, image_embeds, None)


@pytest.mark.parametrize("motion", [True, False])
def test_every_spatial_self_attention_is_written_and_read(motion):
    components = build_components(motion=motion)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    names = install_reference_attention(unet, "read")
    assert names and set(names) == set(spatial_self_attention_names(unet))
    assert not any("motion_modules" in name for name in names)
    assert set(bank.tokens) == set(names)

    seen = []
    for name in names:
        unet.get_submodule(name).register_forward_pre_hook(lambda module, args, name=name: seen.append(name))
    with torch.no_grad():
        run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
    assert sorted(seen) == sorted(names)


@pytest.mark.parametrize("motion", [True, False])
def test_dropped_reference_is_exactly_plain_self_attention(motion):
    components = build_components(motion=motion)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read")
    inputs = denoising_inputs()
    with torch.no_grad():
        expected = stock_output(unet, **inputs)
        all_dropped = run_denoising_unet(unet, reference_bank=bank.with_drop(torch.ones(2, dtype=torch.bool)), **inputs)
        none_dropped = run_denoising_unet(unet, reference_bank=bank, **inputs)
        mixed = run_denoising_unet(unet, reference_bank=bank.with_drop(torch.tensor([False, True])), **inputs)
    assert torch.allclose(all_dropped, expected, atol=1e-6)
    assert not torch.allclose(none_dropped, expected, atol=1e-3)
    # Per-sample: the dropped sample is plain attention, the other one still sees its reference.
    assert torch.allclose(mixed[1], expected[1], atol=1e-6)
    assert torch.allclose(mixed[0], none_dropped[0], atol=1e-5)


def test_reference_is_broadcast_to_every_frame():
    components = build_components(motion=False)
    bank = write_bank(components["reference_unet"], batch_size=1)
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read")
    latents = torch.randn(1, 4, 1, 4, 4).expand(1, 4, 3, 4, 4).contiguous()
    with torch.no_grad():
        output = run_denoising_unet(unet, latents, torch.tensor(10), torch.randn(1, 1, 16), bank)
    assert torch.allclose(output[:, :, 0], output[:, :, 2], atol=1e-6)


def test_missing_layer_in_bank_is_a_clear_error():
    components = build_components(motion=False)
    bank = write_bank(components["reference_unet"])
    bank.tokens.pop(sorted(bank.tokens)[0])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read")
    with pytest.raises(ValueError, match="no tokens for D-UNet layer"):
        run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())


def test_no_warning_is_logged_per_call(caplog):
    components = build_components(motion=True)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read")
    with caplog.at_level(logging.WARNING):
        with torch.no_grad():
            run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_gradient_checkpointing_gives_the_same_gradients():
    components = build_components(motion=True)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read")
    install_guidance_injection(unet)
    unet.train()
    inputs = denoising_inputs()
    features = torch.randn(2, 8, 3, 4, 4)

    def gradients():
        unet.zero_grad()
        run_denoising_unet(unet, reference_bank=bank, guidance_features=features, **inputs).square().mean().backward()
        return {name: p.grad.clone() for name, p in unet.named_parameters() if p.grad is not None}

    plain = gradients()
    unet.enable_gradient_checkpointing()
    checkpointed = gradients()
    assert plain.keys() == checkpointed.keys() and len(plain) > 0
    for name in plain:
        assert torch.allclose(plain[name], checkpointed[name], atol=1e-5), name


def test_hook_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        ReferenceAttentionHook("x", mode="mirror")
    with pytest.raises(ValueError, match="`mode` must be 'write' or 'read'"):
        install_reference_attention(build_components(motion=False)["denoising_unet"], "plain")


def test_bank_concatenation_for_guidance():
    components = build_components(motion=False)
    bank = write_bank(components["reference_unet"])
    doubled = ReferenceBank.cat([bank, bank.with_drop(torch.ones(2, dtype=torch.bool))])
    assert doubled.batch_size == 4
    assert doubled.drop_mask().tolist() == [False, False, True, True]
    with pytest.raises(ValueError, match="drop"):
        bank.with_drop(torch.ones(3, dtype=torch.bool))


# -- the locality prior ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("grid", [(4, 4), (2, 4)])
def test_locality_bias_peaks_at_the_same_place_and_keeps_the_reference_mass(grid):
    bias = reference_locality_bias(grid, grid, 0.2, torch.device("cpu"))
    assert bias.shape == (grid[0] * grid[1],) * 2
    assert torch.equal(bias.argmax(dim=-1), torch.arange(bias.shape[0]))
    assert torch.allclose(bias.logsumexp(dim=-1), torch.full((bias.shape[0],), math.log(bias.shape[1])))
    # distances in frame heights on both axes: the neighbour to the right is as far as the one below
    assert bias[0, 1].item() == pytest.approx(bias[0, grid[1]].item(), abs=1e-5)
    assert reference_locality_bias(grid, grid, 1e3, torch.device("cpu")).abs().max() < 1e-4  # σ → ∞: no prior
    coarse = reference_locality_bias((2, 2), (4, 4), 0.2, torch.device("cpu"))  # grids of two sizes still align
    assert coarse[0].topk(4).indices.sort().values.tolist() == [0, 1, 4, 5]


def one_head_copier(width):
    """An ``Attention`` whose content logits are 0 and whose values and output are the identity: it averages tokens
    with the weights of its attention mask alone."""
    attention = Attention(query_dim=width, heads=1, dim_head=width, bias=False, out_bias=False)
    with torch.no_grad():
        attention.to_q.weight.zero_()
        attention.to_k.weight.zero_()
        attention.to_v.weight.copy_(torch.eye(width))
        attention.to_out[0].weight.copy_(torch.eye(width))
    return attention


@pytest.mark.parametrize("processor", [AttnProcessor2_0, AttnProcessor])
def test_locality_reads_the_reference_at_the_same_place(processor):
    attention = one_head_copier(3)
    attention.set_processor(processor())
    own, reference = torch.randn(2, 16, 3), torch.randn(2, 16, 3)
    bank = ReferenceBank(tokens={"attn1": reference}, latent_size=(8, 8))  # 8 x 8 latents → a 4 x 4 token grid

    def read(locality, drop=None):
        hook = attention.register_forward_pre_hook(ReferenceAttentionHook("attn1", "read", locality), with_kwargs=True)
        try:
            with torch.no_grad():
                return attention(own, reference_bank=bank.with_drop(drop))
        finally:
            hook.remove()

    # Zero logits: half the mass on the own tokens (16 × e^0), half on the reference (its prior mass is also 16).
    own_half = own.mean(dim=1, keepdim=True) / 2
    assert torch.allclose(read(None), own_half + reference.mean(dim=1, keepdim=True) / 2, atol=1e-5)
    assert torch.allclose(read(0.01), own_half + reference / 2, atol=1e-5)  # a narrow prior copies by position
    dropped = read(0.01, torch.tensor([True, False]))
    assert torch.allclose(dropped[0], own[0].mean(dim=0).expand(16, 3), atol=1e-5)  # no reference at all
    assert torch.allclose(dropped[1], (own_half + reference / 2)[1], atol=1e-5)


def test_a_bank_computes_each_locality_prior_once(monkeypatch):
    """The prior depends on the grid alone: a pipeline call (every step, every layer of a level, the CFG and dropped
    banks derived from one bank) computes it once per level, and the cached prior gives the same output."""
    from referencelcm.models import reference_attention

    components = build_components(motion=False)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read", locality=0.1)
    with torch.no_grad():
        first = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
    levels = {key[1:3] for key in bank.locality_biases}
    assert len(bank.locality_biases) == len(levels) >= 2  # one prior per (query, reference) grid
    monkeypatch.setattr(reference_attention, "reference_locality_bias", lambda *args: pytest.fail("recomputed"))
    with torch.no_grad():
        again = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
        run_denoising_unet(unet, reference_bank=bank.with_drop(torch.tensor([True, False])), **denoising_inputs())
    assert torch.equal(first, again)
    with pytest.raises(pytest.fail.Exception, match="recomputed"):  # a new bank computes its own
        run_denoising_unet(unet, reference_bank=ReferenceBank.cat([bank]), **denoising_inputs())


class RecordingProcessor(AttnProcessor2_0):
    """The default processor, recording ``(heads, batch, attention_mask)`` of every call that gets a mask."""

    def __init__(self, calls):
        self.calls = calls

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
        if attention_mask is not None:
            self.calls.append((attn.heads, hidden_states.shape[0], attention_mask))
        return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, **kwargs)


def test_the_mask_comes_per_head_as_a_view_unless_a_reference_is_dropped(monkeypatch):
    """Repeating and copying the mask per frame and head cost more than the attention at the bundled model's size:
    the processors get one row per batch entry and head as a stride-0 view of one mask, copied out only for a bank
    that drops references (CFG), and either is built once per bank and level."""
    components = build_components(motion=True)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read", locality=0.1)
    calls = []
    unet.set_attn_processor(RecordingProcessor(calls))
    inputs = denoising_inputs(num_frames=3)
    with torch.no_grad():
        viewed = run_denoising_unet(unet, reference_bank=bank, **inputs)
    assert calls and all(mask.shape[0] == batch * heads and heads > 1 and mask.stride(0) == 0
                         for heads, batch, mask in calls)
    calls.clear()
    dropped_bank = bank.with_drop(torch.tensor([True, False]))
    with torch.no_grad():
        dropped = run_denoising_unet(unet, reference_bank=dropped_bank, **inputs)
    for heads, batch, mask in calls:
        num_tokens = mask.shape[-1] // 2
        assert mask.shape[0] == batch * heads and mask.is_contiguous()
        assert torch.isneginf(mask[: batch * heads // 2, :, num_tokens:]).all()  # sample 0: no reference
        assert torch.equal(mask[batch * heads // 2:], mask[-1:].expand_as(mask[batch * heads // 2:]))
        assert torch.isfinite(mask[batch * heads // 2:]).all()
    assert torch.equal(dropped[1], viewed[1])
    assert torch.equal(dropped[0], stock_output(unet, **inputs)[0])
    # The classic processor (baddbmm over the per-head rows) reads the same masks.
    unet.set_attn_processor(AttnProcessor())
    with torch.no_grad():
        assert torch.allclose(run_denoising_unet(unet, reference_bank=bank, **inputs), viewed, atol=1e-5)
        assert torch.allclose(run_denoising_unet(unet, reference_bank=dropped_bank, **inputs), dropped, atol=1e-5)
    monkeypatch.setattr(ReferenceAttentionHook, "_attention_mask", lambda *args: pytest.fail("rebuilt"))
    with torch.no_grad():
        run_denoising_unet(unet, reference_bank=bank, **inputs)
        run_denoising_unet(unet, reference_bank=dropped_bank, **inputs)
    with pytest.raises(pytest.fail.Exception, match="rebuilt"):  # a derived bank with another drop builds its own
        run_denoising_unet(unet, reference_bank=bank.with_drop(torch.tensor([False, True])), **inputs)


def test_locality_needs_the_latent_size_recorded_by_the_r_unet_and_a_matching_grid():
    components = build_components(motion=False)
    bank = write_bank(components["reference_unet"])
    assert bank.latent_size == (4, 4)
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read", locality=0.1)
    with torch.no_grad():
        local = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
        install_reference_attention(unet, "read")
        plain = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
    assert not torch.allclose(local, plain, atol=1e-4)
    install_reference_attention(unet, "read", locality=0.1)
    with pytest.raises(ValueError, match="no `latent_size`"):
        run_denoising_unet(unet, reference_bank=ReferenceBank(tokens=bank.tokens), **denoising_inputs())
    with pytest.raises(ValueError, match="reference at the output's size"):
        run_denoising_unet(unet, reference_bank=replace(bank, latent_size=(4, 8)), **denoising_inputs())
    with pytest.raises(ValueError, match="an R-UNet only writes"):
        install_reference_attention(components["reference_unet"], "write", locality=0.1)
    for bad in (0, -1.0, float("inf"), "0.1", True, {"mid_block": -1.0}, {"mid_block": {"attentions": 0.1}}):
        with pytest.raises(ValueError, match="`reference_locality` must be None, a positive number"):
            install_reference_attention(unet, "read", locality=bad)


def read_localities(unet) -> dict[str, float | None]:
    return {name: hook.locality for name, module in unet.named_modules() for hook in module._forward_pre_hooks.values()
            if isinstance(hook, ReferenceAttentionHook) and hook.mode == "read"}


def test_locality_per_layer_takes_the_longest_matching_prefix_and_leaves_other_layers_free():
    components = build_components(motion=False)
    bank = write_bank(components["reference_unet"])
    unet = components["denoising_unet"]
    install_reference_attention(unet, "read", locality={"up_blocks.1": 0.1, "up_blocks.1.attentions.1": 0.3})
    assert read_localities(unet) == {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1": None,
        "up_blocks.1.attentions.0.transformer_blocks.0.attn1": 0.1,
        "up_blocks.1.attentions.1.transformer_blocks.0.attn1": 0.3,
        "mid_block.attentions.0.transformer_blocks.0.attn1": None,
    }
    with torch.no_grad():
        per_layer = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
        install_reference_attention(unet, "read", locality=0.1)
        everywhere = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
        install_reference_attention(unet, "read", locality={"down_blocks": 0.1, "up_blocks": 0.1, "mid_block": 0.1})
        by_prefixes = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
        install_reference_attention(unet, "read", locality={"mid_block": None})  # a mapping of None is no prior
        free = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
        install_reference_attention(unet, "read")
        plain = run_denoising_unet(unet, reference_bank=bank, **denoising_inputs())
    assert torch.equal(by_prefixes, everywhere) and torch.equal(free, plain)
    assert not torch.allclose(per_layer, everywhere, atol=1e-4) and not torch.allclose(per_layer, plain, atol=1e-4)
    # a key that names no reading layer is a typo, not a way to turn the prior off: "up_blocks.1.att" is no module
    for bad in ({"up_block.1": 0.1}, {"up_blocks.1.att": 0.1}):
        with pytest.raises(ValueError, match=r"keys \[.*\] match no spatial self-attention layer"):
            install_reference_attention(unet, "read", locality=bad)
    for bad in ({"": 0.1}, {".up_blocks": 0.1}, {1: 0.1}):
        with pytest.raises(ValueError, match="keys must be module-name prefixes"):
            install_reference_attention(unet, "read", locality=bad)
