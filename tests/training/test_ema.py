"""EMA update of the target D-UNet."""

import pytest
import torch

from referencelcm.training.ema import ema_update


def modules(seed=0):
    generator = torch.Generator().manual_seed(seed)
    target, source = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    for parameter in (*target.parameters(), *source.parameters()):
        parameter.data = torch.randn(parameter.shape, generator=generator)
    return target, source


def snapshot(module):
    return [parameter.detach().clone() for parameter in module.parameters()]


def test_one_update_is_the_convex_combination():
    target, source = modules()
    before = snapshot(target)
    ema_update(target.parameters(), source.parameters(), decay=0.95)
    for updated, old, new in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(updated, 0.95 * old + 0.05 * new)
        assert updated.grad is None


def test_one_update_is_exact_on_representable_numbers():
    target, source = torch.tensor([4.0, -8.0, 0.5]), torch.tensor([0.0, 8.0, 2.5])
    ema_update([target], [source], decay=0.75)
    assert torch.equal(target, torch.tensor([3.0, -4.0, 1.0]))


def test_decay_one_keeps_target_and_decay_zero_copies_source():
    target, source = modules()
    before = snapshot(target)
    ema_update(target.parameters(), source.parameters(), decay=1.0)
    assert all(torch.equal(updated, old) for updated, old in zip(target.parameters(), before))
    ema_update(target.parameters(), source.parameters(), decay=0.0)
    assert all(torch.equal(updated, new) for updated, new in zip(target.parameters(), source.parameters()))


def test_mixed_dtypes_keep_target_dtype():
    target = torch.tensor([1.0, 2.0], dtype=torch.bfloat16)
    source = torch.tensor([3.0, 6.0], dtype=torch.float32)
    ema_update([target], [source], decay=0.5)
    assert target.dtype == torch.bfloat16
    assert torch.equal(target, torch.tensor([2.0, 4.0], dtype=torch.bfloat16))
    high_precision = torch.tensor([1.0, 2.0])
    ema_update([high_precision], [torch.tensor([3.0, 6.0], dtype=torch.bfloat16)], decay=0.5)
    assert high_precision.dtype == torch.float32 and torch.equal(high_precision, torch.tensor([2.0, 4.0]))


def test_rejects_bad_input():
    target, source = modules()
    with pytest.raises(ValueError, match="decay"):
        ema_update(target.parameters(), source.parameters(), decay=1.5)
    with pytest.raises(ValueError, match="pair up"):
        ema_update(target.parameters(), list(source.parameters())[:1], decay=0.5)
