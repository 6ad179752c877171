"""The image-encoder stage's objective: region colours of SynthDance frames, the colour loss, the encoder + head."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from referencelcm.data.layout import read_rgb
from referencelcm.data.synthdance import NUM_PARTS, generate_dataset, semantic_part_labels
from referencelcm.metrics import region_mean_colours
from referencelcm.training.image_encoder import (
    NUM_REGIONS,
    RegionColourModel,
    clip_inputs,
    region_colour_loss,
    region_colour_targets,
)

from ..conftest import build_components


@pytest.fixture(scope="module")
def frames_and_maps(tmp_path_factory) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Two SynthDance frames ``(2, 3, 32, 32)`` in [0, 1], their semantic maps likewise, and the maps' uint8 form."""
    root = generate_dataset(tmp_path_factory.mktemp("colours") / "data", num_videos=1, num_frames=2, resolution=32,
                            seed=0, progress=False)
    video = sorted(path for path in root.iterdir() if path.is_dir())[0]
    images = np.stack([read_rgb(path) for path in sorted((video / "images").glob("*.png"))])
    maps = np.stack([read_rgb(path) for path in sorted((video / "semantic_map").glob("*.png"))])
    as_tensor = lambda array: torch.from_numpy(array).permute(0, 3, 1, 2).float() / 255  # noqa: E731
    return as_tensor(images), as_tensor(maps), maps


def test_region_colour_targets_are_the_mean_colour_of_each_part_and_the_background(frames_and_maps):
    frames, maps, raw_maps = frames_and_maps
    targets = region_colour_targets(frames, maps)
    labels = torch.from_numpy(semantic_part_labels(raw_maps).astype(np.int64))
    expected = region_mean_colours(frames, labels, NUM_PARTS).float()
    assert targets.shape == (2, NUM_REGIONS, 3) and targets.dtype == torch.float32
    assert torch.equal(targets.isnan(), expected.isnan()) and not targets[:, -1].isnan().any()  # background present
    assert torch.allclose(targets.nan_to_num(), expected.nan_to_num(), atol=1e-6)
    with pytest.raises(ValueError, match="semantic_maps"):
        region_colour_targets(frames, maps[:, :, :16])


def test_region_colour_loss_counts_present_regions_only():
    targets = torch.tensor([[[0.2, 0.4, 0.6], [math.nan] * 3]])
    prediction = torch.tensor([[[0.2, 0.4, 0.9], [5.0, 5.0, 5.0]]], requires_grad=True)
    output = region_colour_loss(prediction, targets)
    assert output.loss.item() == pytest.approx(0.3**2 / 3)  # the absent region's wild guess costs nothing
    assert output.terms["regions_present"] == 0.5
    output.loss.backward()
    assert prediction.grad[0, 1].abs().sum() == 0 and prediction.grad[0, 0, 2] > 0
    nothing = region_colour_loss(prediction, torch.full_like(targets, math.nan))
    assert nothing.loss.item() == 0 and nothing.loss.requires_grad
    with pytest.raises(ValueError, match="must match"):
        region_colour_loss(prediction, targets[:, :1])


def test_region_colour_model_trains_the_encoder_through_its_head():
    encoder = build_components()["image_encoder"]
    model = RegionColourModel(encoder)
    size = encoder.config.image_size
    prediction = model(torch.randn(2, 3, size, size))
    assert prediction.shape == (2, NUM_REGIONS, 3)
    prediction.sum().backward()
    assert all(parameter.grad is not None for parameter in encoder.parameters() if parameter.requires_grad)
    assert {key.split(".")[0] for key in model.state_dict()} == {"image_encoder", "head"}


def test_clip_inputs_are_what_the_pipelines_processor_makes_of_a_frame_with_random_crops(frames_and_maps):
    frames = frames_and_maps[0]
    processor = build_components()["feature_extractor"]  # crop size 32
    size = processor.crop_size["height"]
    whole = clip_inputs(frames, processor, crop_scale=(1.0, 1.0))
    images = (frames * 255).round().byte().permute(0, 2, 3, 1).numpy()
    expected = processor(images=list(images), return_tensors="pt").pixel_values
    assert whole.shape == expected.shape == (2, 3, size, size)
    assert (whole - expected).abs().mean() < 0.02  # frames at the crop size: the same pixels, the same normalisation
    grey = clip_inputs(torch.full((1, 3, 40, 40), 0.5), processor, torch.Generator().manual_seed(0))
    mean, std = torch.tensor(processor.image_mean), torch.tensor(processor.image_std)
    torch.testing.assert_close(grey[0, :, 0, 0], (0.5 - mean) / std)  # crops of a flat frame stay flat
    first = clip_inputs(frames, processor, torch.Generator().manual_seed(1))
    assert torch.equal(first, clip_inputs(frames, processor, torch.Generator().manual_seed(1)))
    assert not torch.allclose(first, whole) and not torch.allclose(first, clip_inputs(
        frames, processor, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError, match="crop_scale"):
        clip_inputs(frames, processor, crop_scale=(0.0, 1.0))
