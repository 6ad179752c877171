"""ReferenceVideoDataset, RAS references, multi-source batches and their collation, on a tiny SynthDance set."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from referencelcm.data.layout import CHAMP_GUIDANCE_TYPES
from referencelcm.data.synthdance import generate_dataset
from referencelcm.training.data import (
    CLIP_MEAN,
    CLIP_STD,
    MultiSourceBatchSampler,
    ReferenceVideoDataset,
    collate_reference_batch,
)

NUM_VIDEOS, NUM_FRAMES, RESOLUTION = 3, 6, 64


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("synth"), NUM_VIDEOS, NUM_FRAMES, RESOLUTION, seed=3,
                            progress=False)


@pytest.fixture(scope="module")
def long_root(tmp_path_factory) -> Path:
    return generate_dataset(tmp_path_factory.mktemp("long"), 2, 16, 32, seed=4, progress=False)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_image_phase_item_shapes_and_ranges(synth_root):
    dataset = ReferenceVideoDataset(synth_root, 48, num_references=3, seed=0)
    assert len(dataset) == NUM_VIDEOS * NUM_FRAMES and dataset.num_sources == NUM_VIDEOS
    item = dataset[7]
    assert item["target"].shape == (3, 1, 48, 48) and item["references"].shape == (3, 3, 48, 48)
    assert item["reference_clip_pixels"].shape == (3, 3, 224, 224)
    assert set(item["guidance"]) == set(CHAMP_GUIDANCE_TYPES)
    for maps in item["guidance"].values():
        assert maps.shape == (3, 1, 48, 48) and maps.dtype == torch.float32
        assert maps.min() >= 0.0 and maps.max() <= 1.0
    for key in ("target", "references"):
        assert item[key].min() >= -1.0 and item[key].max() <= 1.0 and item[key].min() < -0.5
    assert item["source_id"] == 1 and item["frame_indices"].tolist() == [1]
    assert item["frame_indices"].dtype == torch.long and item["reference_indices"].shape == (3,)
    assert item["video_id"] == dataset.video_ids[1]


def test_video_phase_clips_use_the_stride(synth_root):
    dataset = ReferenceVideoDataset(synth_root, (32, 24), num_frames=3, frame_stride=2, guidance_types=["dwpose"],
                                    seed=0)
    assert len(dataset) == NUM_VIDEOS * (NUM_FRAMES - 4)
    item = dataset[3]
    assert item["target"].shape == (3, 3, 32, 24) and set(item["guidance"]) == {"dwpose"}
    assert item["guidance"]["dwpose"].shape == (3, 3, 32, 24)
    assert item["frame_indices"].tolist() == [1, 3, 5] and item["source_id"] == 1


def test_items_cover_every_video_frame_once(synth_root):
    dataset = ReferenceVideoDataset(synth_root, 32, seed=0)
    pairs = [dataset.locate(index) for index in range(len(dataset))]
    assert sorted(pairs) == [(video, frame) for video in range(NUM_VIDEOS) for frame in range(NUM_FRAMES)]
    assert dataset.item_source_ids.tolist() == [video for video, _ in pairs]
    with pytest.raises(IndexError):
        dataset.locate(len(dataset))


def test_uncropped_items_are_the_files_on_disk(synth_root):
    dataset = ReferenceVideoDataset(synth_root, RESOLUTION, random_crop=False, num_references=2, seed=0)
    item = dataset[NUM_FRAMES + 2]
    video = synth_root / item["video_id"]
    frame = item["frame_indices"].item()
    target = _read(video / "images" / f"{frame:04d}.png")
    np.testing.assert_allclose(item["target"][:, 0].permute(1, 2, 0).numpy(), target / 127.5 - 1.0, atol=1e-6)
    for position, reference in enumerate(item["reference_indices"].tolist()):  # RAS: the same video's frames
        expected = _read(video / "images" / f"{reference:04d}.png") / 127.5 - 1.0
        np.testing.assert_allclose(item["references"][position].permute(1, 2, 0).numpy(), expected, atol=1e-6)
    semantic = item["guidance"]["semantic_map"][:, 0]
    mask = _read(video / "mask" / f"{frame:04d}.png")[..., 0] > 0
    assert (semantic[:, ~torch.from_numpy(mask)] == 0).all() and (semantic.sum(0)[torch.from_numpy(mask)] > 0).all()


def test_references_can_draw_a_crop_of_their_own(synth_root):
    """``reference_crop_scale``: the references are cropped apart from target and guidance (the person moves between
    them, as in reenactment). Whole-frame references (scale 1) beside half-frame targets are the files on disk; target
    and guidance are those of the same item without the option."""
    shared = ReferenceVideoDataset(synth_root, RESOLUTION, crop_scale=(0.5, 0.5), seed=0)
    own = ReferenceVideoDataset(synth_root, RESOLUTION, crop_scale=(0.5, 0.5), reference_crop_scale=(1.0, 1.0),
                                seed=0)
    for index in (0, 7):
        with_shared, with_own = shared[index], own[index]
        assert torch.equal(with_shared["target"], with_own["target"])
        for name in own.guidance_types:
            assert torch.equal(with_shared["guidance"][name], with_own["guidance"][name])
        assert torch.equal(with_shared["reference_indices"], with_own["reference_indices"])
        video = synth_root / with_own["video_id"]
        for row, frame in enumerate(with_own["reference_indices"].tolist()):
            on_disk = torch.tensor(_read(video / "images" / f"{frame:04d}.png")).permute(2, 0, 1) / 127.5 - 1.0
            torch.testing.assert_close(with_own["references"][row], on_disk.float(), atol=1e-6, rtol=0)
            assert (with_shared["references"][row] - on_disk).abs().mean() > 0.05  # a half-frame crop, enlarged
        assert not torch.equal(with_shared["reference_clip_pixels"], with_own["reference_clip_pixels"])
    # reference_crop_probability: each item's references take their own crop or the target's, drawn per item
    never = ReferenceVideoDataset(synth_root, RESOLUTION, crop_scale=(0.5, 0.5), reference_crop_scale=(1.0, 1.0),
                                  reference_crop_probability=0.0, seed=0)
    half = ReferenceVideoDataset(synth_root, RESOLUTION, crop_scale=(0.5, 0.5), reference_crop_scale=(1.0, 1.0),
                                 reference_crop_probability=0.5, seed=0)
    own_crops = []
    for index in range(len(half)):
        references, own_references = half[index]["references"], own[index]["references"]
        assert torch.equal(never[index]["references"], shared[index]["references"])
        assert torch.equal(references, shared[index]["references"]) or torch.equal(references, own_references)
        own_crops.append(torch.equal(references, own_references))
    assert 0 < sum(own_crops) < len(half)
    whole = ReferenceVideoDataset(synth_root, RESOLUTION, random_crop=False, reference_crop_scale=(0.5, 0.5), seed=0)
    assert torch.equal(whole[3]["references"], ReferenceVideoDataset(synth_root, RESOLUTION, random_crop=False,
                                                                     seed=0)[3]["references"])


def test_references_keep_the_minimum_gap_when_possible(long_root):
    dataset = ReferenceVideoDataset(long_root, 32, num_references=3, min_reference_gap=5, seed=0)
    for index in range(len(dataset)):
        item = dataset[index]
        gaps = (item["reference_indices"][:, None] - item["frame_indices"][None, :]).abs().min(dim=1).values
        assert (gaps >= 5).all() and len(set(item["reference_indices"].tolist())) == 3
    short = ReferenceVideoDataset(long_root, 32, num_references=2, min_reference_gap=40, seed=0)
    rng = np.random.default_rng(0)
    references = short.sample_reference_indices(rng, 16, np.array([2]))
    assert sorted(references.tolist()) == [14, 15]  # no frame is 40 away: the farthest ones are used
    assert short.sample_reference_indices(rng, 1, np.array([0])).tolist() == [0, 0]


def test_seeded_items_are_reproducible_and_epochs_differ(synth_root):
    first = ReferenceVideoDataset(synth_root, 48, seed=5)
    second = ReferenceVideoDataset(synth_root, 48, seed=5)
    torch.testing.assert_close(first[4]["target"], second[4]["target"])
    assert first[4]["reference_indices"].tolist() == second[4]["reference_indices"].tolist()
    second.set_epoch(1)
    assert any(not torch.equal(first[index]["target"], second[index]["target"]) for index in range(6))


def test_cached_items_equal_uncached_ones_and_no_longer_read_the_disk(synth_root, tmp_path):
    root = shutil.copytree(synth_root, tmp_path / "copy")
    cached = ReferenceVideoDataset(root, 48, seed=5, num_references=1, cache_images=True)
    plain = ReferenceVideoDataset(root, 48, seed=5, num_references=1)
    for epoch in (0, 1):
        cached.set_epoch(epoch), plain.set_epoch(epoch)
        for index in range(len(plain)):
            first, second = cached[index], plain[index]
            for key in ("target", "references", "reference_clip_pixels"):
                assert torch.equal(first[key], second[key]), (epoch, index, key)
            for name in CHAMP_GUIDANCE_TYPES:
                assert torch.equal(first["guidance"][name], second["guidance"][name]), (epoch, index, name)
    for folder in ("images", "mask", *CHAMP_GUIDANCE_TYPES):
        for path in (root / cached.video_ids[0] / folder).glob("*.png"):
            path.write_bytes(b"")  # damaged on disk: only a cached read still works
    cached.set_epoch(2)
    assert cached[0]["target"].shape == (3, 1, 48, 48)
    with pytest.raises(ValueError, match="0000.png"):
        plain[0]


def test_items_without_references_read_only_their_targets(synth_root, monkeypatch):
    """``num_references=0`` (the VAE and image-encoder stages): the same targets and guidance as with references,
    empty reference tensors of the usual trailing shape, and no reference file read."""
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessor(size=32, crop_size=32)
    with_references = ReferenceVideoDataset(synth_root, 48, num_references=1, seed=2)
    without = ReferenceVideoDataset(synth_root, 48, num_references=0, seed=2, clip_image_processor=processor)
    reads = []
    original = ReferenceVideoDataset._read
    monkeypatch.setattr(ReferenceVideoDataset, "_read", lambda self, path, mode="RGB": reads.append(path)
                        or original(self, path, mode))
    for index in (0, 7, 11):
        item, reference = without[index], with_references[index]
        assert torch.equal(item["target"], reference["target"])
        for name in CHAMP_GUIDANCE_TYPES:
            assert torch.equal(item["guidance"][name], reference["guidance"][name])
        assert item["references"].shape == (0, 3, 48, 48) and item["reference_indices"].shape == (0,)
        assert item["reference_clip_pixels"].shape == (0, 3, 32, 32)
    assert ReferenceVideoDataset(synth_root, 48, num_references=0)[0]["reference_clip_pixels"].shape == (0, 3, 224,
                                                                                                          224)
    reads.clear()
    without[3]
    assert sum(path.parent.name == "images" for path in reads) == 1
    batch = collate_reference_batch([without[0], without[1]])
    assert batch["references"].shape == (2, 0, 3, 48, 48)


def test_builtin_clip_pixels_match_the_clip_image_processor(synth_root):
    transformers = pytest.importorskip("transformers")
    processor = transformers.CLIPImageProcessor()  # default config: 224, bicubic, CLIP mean/std; no download
    with_processor = ReferenceVideoDataset(synth_root, 64, random_crop=False, clip_image_processor=processor, seed=0)
    builtin = ReferenceVideoDataset(synth_root, 64, random_crop=False, seed=0)
    ours, theirs = builtin[2]["reference_clip_pixels"], with_processor[2]["reference_clip_pixels"]
    assert ours.shape == theirs.shape == (2, 3, 224, 224)
    assert (ours - theirs).abs().mean() < 0.02
    background = torch.tensor([(0 - mean) / std for mean, std in zip(CLIP_MEAN, CLIP_STD)])
    assert (ours.amin(dim=(0, 2, 3)) >= background - 1e-4).all()


def test_batch_sampler_mixes_sources_and_covers_the_epoch(synth_root):
    dataset = ReferenceVideoDataset(synth_root, 32, seed=0)
    sampler = MultiSourceBatchSampler(dataset, batch_size=4, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 5
    assert sorted(index for batch in batches for index in batch) == list(range(len(dataset)))
    for batch in batches:
        assert len({dataset.item_source_ids[index] for index in batch}) >= 2
    assert batches == list(MultiSourceBatchSampler(dataset, batch_size=4, seed=1))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    dropped = MultiSourceBatchSampler(dataset, batch_size=4, seed=1, drop_last=True)
    assert len(dropped) == 4 and all(len(batch) == 4 for batch in dropped)


class _Sources:
    def __init__(self, source_ids):
        self.item_source_ids = np.asarray(source_ids)


@pytest.mark.parametrize(
    "source_ids, feasible",
    [([0] * 7 + [1] * 3, True), ([0] * 5 + [1] * 5 + [2], True), ([3] * 3 + [7] * 6, True), ([1] * 9 + [0], False)],
)
def test_batch_sampler_keeps_two_sources_in_unbalanced_data(source_ids, feasible):
    """Whenever the minority items suffice for one per batch, every batch of 2+ items is mixed."""
    for seed in range(20):
        batches = list(MultiSourceBatchSampler(_Sources(source_ids), batch_size=3, seed=seed))
        assert sorted(index for batch in batches for index in batch) == list(range(len(source_ids)))
        mixed = [len({source_ids[index] for index in batch}) >= 2 for batch in batches if len(batch) >= 2]
        assert all(mixed) if feasible else any(mixed), batches


def test_collate_and_dataloader(synth_root):
    dataset = ReferenceVideoDataset(synth_root, 32, num_frames=2, num_references=2, seed=0)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=MultiSourceBatchSampler(dataset, batch_size=3, seed=0),
        collate_fn=collate_reference_batch,
    )
    batch = next(iter(loader))
    assert batch["target"].shape == (3, 3, 2, 32, 32)
    assert all(maps.shape == (3, 3, 2, 32, 32) for maps in batch["guidance"].values())
    assert batch["references"].shape == (3, 2, 3, 32, 32)
    assert batch["reference_clip_pixels"].shape == (3, 2, 3, 224, 224)
    assert batch["source_id"].dtype == torch.long and batch["source_id"].shape == (3,)
    assert len(set(batch["source_id"].tolist())) >= 2
    assert batch["frame_indices"].shape == (3, 2) and batch["reference_indices"].shape == (3, 2)
    assert batch["target"].min() >= -1 and batch["target"].max() <= 1 and len(batch["video_id"]) == 3
    with pytest.raises(ValueError, match="guidance"):
        other = ReferenceVideoDataset(synth_root, 32, num_frames=2, guidance_types=["depth"], seed=0)
        collate_reference_batch([dataset[0], other[0]])


def test_broken_folder_error_names_the_missing_file(synth_root, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(synth_root, broken)
    (broken / "train_00001" / "depth" / "0003.png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        ReferenceVideoDataset(broken, 32)
    message = str(error.value)
    assert "train_00001" in message and "'depth'" in message and "0003.png" in message
    with pytest.warns(UserWarning, match="0003.png"):
        skipping = ReferenceVideoDataset(broken, 32, on_invalid="skip", seed=0)
    assert skipping.video_ids == ["train_00000", "train_00002"] and len(skipping.skipped) == 1
    assert skipping[NUM_FRAMES]["source_id"] == 1 and skipping[NUM_FRAMES]["video_id"] == "train_00002"
    shutil.rmtree(broken / "train_00002" / "normal")
    with pytest.raises(FileNotFoundError, match=r"train_00002.*'normal' is missing"):
        ReferenceVideoDataset(broken, 32, guidance_types=["normal"])


@pytest.mark.filterwarnings("ignore:skipping short video")
def test_bad_arguments_are_named(synth_root):
    for kwargs, name in (
        ({"resolution": 0}, "resolution"),
        ({"resolution": 32, "num_frames": 0}, "num_frames"),
        ({"resolution": 32, "num_references": -1}, "num_references"),
        ({"resolution": 32, "crop_scale": (0.5, 1.2)}, "crop_scale"),
        ({"resolution": 32, "reference_crop_scale": (0.0, 0.5)}, "reference_crop_scale"),
        ({"resolution": 32, "reference_crop_scale": (0.5, 1.0), "reference_crop_probability": -0.1},
         "reference_crop_probability"),
        ({"resolution": 32, "guidance_types": "depth"}, "guidance_types"),
        ({"resolution": 32, "on_invalid": "ignore"}, "on_invalid"),
        ({"resolution": 32, "num_frames": 7}, "no usable"),
    ):
        with pytest.raises(ValueError, match=name):
            ReferenceVideoDataset(synth_root, **kwargs)
    with pytest.raises(ValueError, match="batch_size"):
        MultiSourceBatchSampler(ReferenceVideoDataset(synth_root, 32), batch_size=0)


def test_the_vae_stage_loader_reads_whole_frames_and_their_masks(synth_root):
    """train_teacher.py's stage vae: the frames as they are on disk (a resized crop would blur what the VAE must
    keep) and the person mask beside them, for person-centred crops and the person-weighted loss."""
    import argparse

    from referencelcm.pipelines.factory import build_components
    from referencelcm.training.script_support import training_dataloader

    args = argparse.Namespace(train_data_dir=str(synth_root), resolution=RESOLUTION, num_frames=1, frame_stride=1,
                              seed=0, train_batch_size=2, dataloader_num_workers=0, cache_frames=True,
                              reference_crop_scale=None, reference_crop_probability=1.0)
    pipe = argparse.Namespace(guidance_types=CHAMP_GUIDANCE_TYPES,
                              feature_extractor=build_components()["feature_extractor"])
    dataset, _, dataloader = training_dataloader(args, pipe, 0, guidance_types=("mask",), random_crop=False)
    batch = next(iter(dataloader))
    assert set(batch["guidance"]) == {"mask"} and batch["references"].shape == (2, 0, 3, RESOLUTION, RESOLUTION)
    for row in range(2):
        video = synth_root / batch["video_id"][row]
        frame = batch["frame_indices"][row, 0].item()
        target = _read(video / "images" / f"{frame:04d}.png") / 127.5 - 1.0
        np.testing.assert_allclose(batch["target"][row, :, 0].permute(1, 2, 0).numpy(), target, atol=1e-6)
        mask = _read(video / "mask" / f"{frame:04d}.png")[..., 0] > 127
        assert torch.equal(batch["guidance"]["mask"][row, 0, 0] > 0.5, torch.from_numpy(mask))


def test_reference_crop_scale_flag_reaches_the_dataset(synth_root, tmp_path):
    """``--reference_crop_scale LOW HIGH`` (both training scripts' data flags) → the loader's dataset."""
    import argparse

    from referencelcm.pipelines.factory import build_components
    from referencelcm.training.script_support import add_data_arguments, training_dataloader

    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    args = parser.parse_args(["--train_data_dir", str(synth_root), "--resolution", "32",
                              "--reference_crop_scale", "0.7", "1", "--reference_crop_probability", "0.5"])
    assert parser.parse_args(["--train_data_dir", "x"]).reference_crop_scale is None
    args = argparse.Namespace(**vars(args), num_frames=1, seed=0, train_batch_size=2, dataloader_num_workers=0,
                              cache_frames=False)
    pipe = argparse.Namespace(guidance_types=CHAMP_GUIDANCE_TYPES,
                              feature_extractor=build_components()["feature_extractor"])
    dataset, _, _ = training_dataloader(args, pipe, 1)
    assert dataset.reference_crop_scale == (0.7, 1.0) and dataset.reference_crop_probability == 0.5


def test_compilations_give_references_from_the_other_dance_and_no_clips(tmp_path):
    """A video of two dances (SynthDance ``dances=2``): image items draw references across the cut, clips refuse it."""
    root = generate_dataset(tmp_path, 2, 6, 32, seed=5, progress=False, dances=2)
    dataset = ReferenceVideoDataset(root, 32, num_references=2, seed=0)
    assert len(dataset) == 2 * 12
    other_dance = [(dataset[index]["reference_indices"] >= 6) != (dataset.locate(index)[1] >= 6)
                   for index in range(len(dataset))]
    assert 0.3 < float(torch.cat(other_dance).float().mean()) < 1.0  # both kinds of reference occur
    with pytest.raises(ValueError, match="compilation of several dances.*num_frames=2"):
        ReferenceVideoDataset(root, 32, num_frames=2)
    (root / "train_00000" / "meta.json").write_text("{not json")  # a corrupt meta.json is named, or skipped
    with pytest.raises(ValueError, match="train_00000.*meta.json.*not valid JSON"):
        ReferenceVideoDataset(root, 32, num_frames=2)
    with pytest.warns(UserWarning, match="not valid JSON"), pytest.raises(ValueError, match="compilation"):
        ReferenceVideoDataset(root, 32, num_frames=2, on_invalid="skip")
