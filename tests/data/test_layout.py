"""Champ layout readers: frame listing, guidance reading with the mask applied, and errors naming the broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from referencelcm.data.layout import (
    CHAMP_GUIDANCE_TYPES,
    apply_mask,
    list_frames,
    list_videos,
    read_guidance_folder,
    validate_video_dir,
)

SEMANTIC_COLOUR = (200, 100, 50)


def _make_video(video_dir: Path, stems=("0000", "0001", "0002"), size=(8, 6), folders=None) -> Path:
    """A hand-made Champ video: frame i of every folder is filled with value 10·i + folder number."""
    folders = folders or ("images", *CHAMP_GUIDANCE_TYPES, "mask")
    width, height = size
    for folder_number, folder in enumerate(folders):
        (video_dir / folder).mkdir(parents=True)
        for frame, stem in enumerate(stems):
            if folder == "mask":
                array = np.zeros((height, width, 3), dtype=np.uint8)
                array[:, : width // 2] = 255
            elif folder == "semantic_map":
                array = np.broadcast_to(np.array(SEMANTIC_COLOUR, dtype=np.uint8), (height, width, 3))
            else:
                array = np.full((height, width, 3), 10 * frame + folder_number, dtype=np.uint8)
            Image.fromarray(np.ascontiguousarray(array)).save(video_dir / folder / f"{stem}.png")
    return video_dir


def test_read_guidance_folder_reads_rgb_pil_and_masks_semantics(tmp_path):
    video = _make_video(tmp_path / "video", folders=(*CHAMP_GUIDANCE_TYPES, "mask"))  # no images folder needed
    guidance = read_guidance_folder(video, CHAMP_GUIDANCE_TYPES)
    assert set(guidance) == set(CHAMP_GUIDANCE_TYPES)
    for frames in guidance.values():
        assert len(frames) == 3 and all(frame.mode == "RGB" and frame.size == (8, 6) for frame in frames)
    semantic = np.asarray(guidance["semantic_map"][0])
    assert (semantic[:, :4] == SEMANTIC_COLOUR).all() and (semantic[:, 4:] == 0).all()
    assert np.asarray(guidance["depth"][2])[0, 0, 0] == 20  # frame 2 of folder 0
    sliced = read_guidance_folder(video, ["depth"], frame_range=slice(1, None))
    assert list(sliced) == ["depth"] and [np.asarray(frame)[0, 0, 0] for frame in sliced["depth"]] == [10, 20]


def test_guidance_types_default_to_the_folders_present(tmp_path):
    video = _make_video(tmp_path / "video", folders=("depth", "dwpose"))
    assert set(read_guidance_folder(video)) == {"depth", "dwpose"}
    with pytest.raises(FileNotFoundError, match="normal"):
        read_guidance_folder(video, ["depth", "normal"])


def test_semantic_map_is_unmasked_without_a_mask_folder(tmp_path):
    video = _make_video(tmp_path / "video", folders=("semantic_map",))
    assert (np.asarray(read_guidance_folder(video)["semantic_map"][1]) == SEMANTIC_COLOUR).all()


def test_missing_file_error_names_video_folder_and_file(tmp_path):
    video = _make_video(tmp_path / "video_7")
    (video / "normal" / "0001.png").unlink()
    with pytest.raises(FileNotFoundError) as error:
        validate_video_dir(video)
    message = str(error.value)
    assert "video_7" in message and "'normal'" in message and "0001.png" in message
    with pytest.raises(FileNotFoundError, match="0001.png"):
        read_guidance_folder(video, CHAMP_GUIDANCE_TYPES)


def test_missing_image_file_is_reported_in_images(tmp_path):
    video = _make_video(tmp_path / "video")
    (video / "images" / "0002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"'images' is missing file '0002\.png'"):
        validate_video_dir(video)


def test_missing_mask_file_is_reported(tmp_path):
    video = _make_video(tmp_path / "video")
    (video / "mask" / "0002.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"'mask'.*0002\.png"):
        validate_video_dir(video)


def test_extra_file_and_size_mismatch_are_value_errors(tmp_path):
    video = _make_video(tmp_path / "extra")
    Image.new("RGB", (8, 6)).save(video / "dwpose" / "0003.png")
    with pytest.raises(ValueError, match=r"'dwpose'.*0003\.png"):
        validate_video_dir(video)
    video = _make_video(tmp_path / "sizes")
    Image.new("RGB", (4, 4)).save(video / "depth" / "0000.png")
    with pytest.raises(ValueError, match=r"depth/0000\.png is 4x4"):
        validate_video_dir(video)
    video = _make_video(tmp_path / "later_size")
    Image.new("RGB", (4, 4)).save(video / "normal" / "0002.png")
    with pytest.raises(ValueError, match=r"normal/0002\.png"):
        read_guidance_folder(video)


def test_missing_folder_and_missing_video(tmp_path):
    video = _make_video(tmp_path / "video", folders=("images", "depth"))
    with pytest.raises(FileNotFoundError, match=r"folder 'normal' is missing"):
        validate_video_dir(video)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        validate_video_dir(tmp_path / "nowhere")


def test_list_frames_sorts_numbers_naturally(tmp_path):
    video = _make_video(tmp_path / "video", stems=("10", "2", "1"), folders=("images", "depth"))
    assert list_frames(video) == ["1.png", "2.png", "10.png"]
    assert validate_video_dir(video, ["depth"]).frames == ("1", "2", "10")
    only_guidance = _make_video(tmp_path / "guidance", stems=("3", "1"), folders=("dwpose",))
    assert list_frames(only_guidance) == ["1.png", "3.png"]


def test_frames_match_by_stem_across_extensions(tmp_path):
    video = _make_video(tmp_path / "video", folders=CHAMP_GUIDANCE_TYPES)
    (video / "images").mkdir()
    for stem in ("0000", "0001", "0002"):
        Image.new("RGB", (8, 6)).save(video / "images" / f"{stem}.jpg")
    checked = validate_video_dir(video)
    assert checked.files["images"][1] == "0001.jpg" and checked.files["depth"][1] == "0001.png"


def test_list_videos_ignores_hidden_folders_and_follows_the_index(tmp_path):
    for name in ("b", "a", ".tmp-c-1"):
        (tmp_path / name).mkdir()
    assert [path.name for path in list_videos(tmp_path)] == ["a", "b"]
    (tmp_path / "index.json").write_text(json.dumps({"videos": [{"video_id": "b"}, {"video_id": "missing"}]}))
    with pytest.raises(FileNotFoundError, match="missing"):
        list_videos(tmp_path)
    (tmp_path / "index.json").write_text(json.dumps({"videos": ["b"]}))
    assert [path.name for path in list_videos(tmp_path)] == ["b"]


def test_apply_mask_scales_by_soft_masks():
    semantic = np.full((1, 2, 3), 200, dtype=np.uint8)
    mask = np.array([[255, 0]], dtype=np.uint8)
    np.testing.assert_array_equal(apply_mask(semantic, mask), [[[200] * 3, [0] * 3]])
