import logging

import pytest
import torch

from referencelcm import ReferenceBank, install_reference_attention
from referencelcm.models.injection import install_guidance_injection, run_denoising_unet
from referencelcm.models.reference_attention import ReferenceAttentionHook, spatial_self_attention_names

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
