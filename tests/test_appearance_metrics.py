"""Appearance-fidelity metrics on synthetic cases whose answers are known by construction."""

import math

import pytest
import torch

from referencelcm.metrics import (
    appearance_signature,
    delta_e,
    identity_retrieval,
    paint_regions,
    part_colour_errors,
    person_region_metrics,
    reference_spread,
    region_mean_colours,
    rgb_to_lab,
    signature_distance,
)

NUM_PARTS = 3


def two_part_scene(size=16, num_images=2):
    """Labels: part 0 the left half of a centre square, part 1 its right half, part 2 absent, background -1."""
    labels = torch.full((num_images, size, size), -1, dtype=torch.long)
    labels[:, 4:12, 4:8] = 0
    labels[:, 4:12, 8:12] = 1
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.5, 0.5, 0.5], [0.3, 0.3, 0.6]])
    return labels, paint_regions(labels, colours).float(), colours


def test_rgb_to_lab_matches_the_cie_reference_values():
    lab = rgb_to_lab(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    assert lab[0].tolist() == pytest.approx([100.0, 0.0, 0.0], abs=1e-3)
    assert lab[1].tolist() == pytest.approx([0.0, 0.0, 0.0], abs=1e-6)
    assert lab[2].tolist() == pytest.approx([53.24, 80.09, 67.20], abs=0.02)  # sRGB red, D65
    assert delta_e(lab[0], lab[1]).item() == pytest.approx(100.0, abs=1e-3)


def test_region_mean_colours_know_each_region_and_mark_absent_ones():
    labels, images, colours = two_part_scene()
    means = region_mean_colours(images, labels, NUM_PARTS)
    assert means.shape == (2, NUM_PARTS + 1, 3)
    assert torch.allclose(means[:, 0], colours[0].double()) and torch.allclose(means[:, 1], colours[1].double())
    assert means[:, 2].isnan().all()  # part 2 is in no image
    assert torch.allclose(means[:, 3], colours[3].double())  # background
    labels[1, 4:12, 8:12] = -1
    labels[1, 4, 8] = 1  # one pixel of part 1 in image 1: below min_pixels
    means = region_mean_colours(images, labels, NUM_PARTS, min_pixels=4)
    assert means[1, 1].isnan().all() and not means[0, 1].isnan().any()


def test_part_colour_errors_are_zero_for_the_truth_and_the_delta_e_of_a_changed_part():
    labels, truth, colours = two_part_scene()
    errors = part_colour_errors(truth, truth, labels, NUM_PARTS)
    assert errors["part"].tolist() == [0.0, 0.0] and errors["background"].tolist() == [0.0, 0.0]
    changed = colours.clone()
    changed[1] = torch.tensor([0.1, 0.2, 0.9])  # part 1 painted blue instead of green
    generated = paint_regions(labels, changed).float()
    errors = part_colour_errors(generated, truth, labels, NUM_PARTS)
    expected = delta_e(rgb_to_lab(changed[1]), rgb_to_lab(colours[1])).item()
    assert errors["regions"][:, 1].tolist() == pytest.approx([expected] * 2, rel=1e-5)
    assert errors["regions"][:, 0].tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    assert errors["part"].tolist() == pytest.approx([expected / 2] * 2, rel=1e-5)  # mean over the 2 parts present
    assert errors["regions"][:, 2].isnan().all()
    assert errors["all"].tolist() == pytest.approx([expected / 3] * 2, rel=1e-5)  # parts 0, 1 and the background


def test_part_colour_errors_score_the_generated_image_on_the_truths_regions():
    labels, truth, colours = two_part_scene()
    # A generated person one column off: its mean over the truth's part-0 pixels mixes background and part colour.
    shifted = torch.roll(truth, shifts=1, dims=-1)
    errors = part_colour_errors(shifted, truth, labels, NUM_PARTS)
    assert errors["regions"][:, 0].min() > 1.0


def test_person_region_metrics_ignore_errors_outside_the_dilated_mask():
    labels, truth, _ = two_part_scene(size=24)
    mask = labels >= 0
    scores = person_region_metrics(truth, truth, mask)
    assert scores["person_ssim"].tolist() == pytest.approx([1.0, 1.0])
    assert scores["person_l1"].tolist() == [0.0, 0.0] and math.isinf(scores["person_psnr"][0])
    far_off = truth.clone()
    far_off[:, :, 20:, :] = 1 - far_off[:, :, 20:, :]  # rows 20+ are > 2 px from the person (rows 4-11)
    scores = person_region_metrics(far_off, truth, mask, dilation=2)
    assert scores["person_l1"].tolist() == [0.0, 0.0]
    assert scores["box_l1"].tolist() == [0.0, 0.0]  # the box spans rows 2-13
    inside = truth.clone()
    inside[:, :, 4:12, 4:12] = (inside[:, :, 4:12, 4:12] + 0.1).clamp(0, 1)
    scores = person_region_metrics(inside, truth, mask, dilation=0)
    difference = (inside - truth).abs().mean(dim=1)[:, 4:12, 4:12].mean(dim=(1, 2))
    assert scores["person_l1"].tolist() == pytest.approx(difference.double().tolist(), rel=1e-6)
    assert scores["person_ssim"].max() < 1.0
    empty = person_region_metrics(truth, truth, torch.zeros_like(mask))
    assert empty["person_l1"].isnan().all() and empty["box_ssim"].isnan().all()


def test_person_region_metrics_name_a_bad_mask():
    labels, truth, _ = two_part_scene()
    with pytest.raises(ValueError, match="`mask`"):
        person_region_metrics(truth, truth, torch.ones(3, 16, 16, dtype=torch.bool))


def test_identity_retrieval_finds_the_truth_and_a_constant_output_is_at_chance():
    generator = torch.Generator().manual_seed(0)
    gallery = torch.rand(6, NUM_PARTS + 1, 3, generator=generator) * 100
    gallery[2, 1] = math.nan  # a region one identity never shows is skipped, not fatal
    result = identity_retrieval(gallery.clone(), gallery, torch.arange(6))
    assert result["accuracy"] == 1.0 and result["chance"] == pytest.approx(1 / 6)
    constant = gallery.nanmean(dim=0, keepdim=True).expand(6, -1, -1)
    result = identity_retrieval(constant, gallery, torch.arange(6))
    assert result["predictions"].unique().numel() == 1 and result["accuracy"] == pytest.approx(1 / 6)
    assert result["distances"].shape == (6, 6)
    with pytest.raises(ValueError, match="targets"):
        identity_retrieval(gallery, gallery, torch.arange(5))


def test_signature_averages_each_region_over_frames_in_lab():
    labels, truth, colours = two_part_scene()
    signature = appearance_signature(truth, labels, NUM_PARTS)
    assert signature.shape == (NUM_PARTS + 1, 3)
    assert torch.allclose(signature[0], rgb_to_lab(colours[0]), atol=1e-4)
    assert signature[2].isnan().all()
    assert signature_distance(signature, signature).item() == 0.0


def test_reference_spread_is_zero_for_identical_outputs_and_the_pairwise_l1_otherwise():
    video = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    assert reference_spread(torch.stack([video, video, video])).item() == 0.0
    outputs = torch.stack([video, video + 0.1, video + 0.3])
    assert reference_spread(outputs).item() == pytest.approx((0.1 + 0.3 + 0.2) / 3, rel=1e-5)
    with pytest.raises(ValueError, match="K >= 2"):
        reference_spread(video[None])
