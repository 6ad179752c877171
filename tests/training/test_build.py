"""The bundled model's build bookkeeping (training/build.py): stage flags, stale folders, timings, shipping.
The whole build runs on its smoke preset in tests/examples/test_build_default_model.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from referencelcm.training.build import (
    ABLATION,
    SHIPPED_ENTRIES,
    Build,
    Preset,
    check_logged_arguments,
    copy_folder,
    is_complete,
    stage_arguments,
)

PRESET = Preset(resolution=32, train_videos=2, train_frames=4, test_videos=1, test_frames=3, clip_frames=2,
                model_config={}, vae={}, teacher_image={}, teacher_video={}, spatial={}, temporal={},
                checkpointing_steps=5)


def test_stage_arguments_carry_the_build_then_the_stage(tmp_path):
    build = Build(PRESET, tmp_path, seed=4)
    arguments = stage_arguments(build, tmp_path / "vae", {"max_train_steps": 10, "learning_rate": 1e-3},
                                ["--stage", "vae"])
    pairs = dict(zip(arguments[::2], arguments[1::2]))
    assert pairs == {"--train_data_dir": str(tmp_path / "data" / "train"), "--output_dir": str(tmp_path / "vae"),
                     "--resolution": "32", "--seed": "4", "--report_to": "none", "--checkpointing_steps": "5",
                     "--checkpoints_total_limit": "1", "--resume_from_checkpoint": "latest", "--stage": "vae",
                     "--max_train_steps": "10", "--learning_rate": "0.001"}
    assert arguments[-4:] == ["--max_train_steps", "10", "--learning_rate", "0.001"]  # the stage's settings last


def _logged_stage(folder: Path, **logged) -> Path:
    (folder / "logs").mkdir(parents=True)
    (folder / "logs" / "config.json").write_text(json.dumps(logged))
    (folder / "model_index.json").write_text("{}")
    return folder


def test_a_complete_folder_trained_with_other_numbers_stops_the_build(tmp_path):
    folder = _logged_stage(tmp_path / "spatial", learning_rate=1e-4, max_train_steps=800, checkpointing_steps=250,
                           train_data_dir="/elsewhere/data")
    assert is_complete(folder) and not is_complete(tmp_path)
    # same numbers; another work dir (paths) and other bookkeeping (checkpoints) do not count
    check_logged_arguments(folder, ["--learning_rate", "0.0001", "--max_train_steps", "800",
                                    "--checkpointing_steps", "1", "--train_data_dir", "/here/data", "--phase", "x"])
    with pytest.raises(SystemExit, match=r"spatial is complete but was trained with learning_rate=0\.0001 "
                                         r"\(asked: 0\.0003\), max_train_steps=800 \(asked: 1600\)"):
        check_logged_arguments(folder, ["--learning_rate", "0.0003", "--max_train_steps", "1600"])
    check_logged_arguments(tmp_path / "copied-in", ["--learning_rate", "1"])  # no logs: nothing to compare with
    # a switch before the settings (as Preset.switches adds) does not shift the pairs after it
    with pytest.raises(SystemExit, match=r"max_train_steps=800 \(asked: 1600\)"):
        check_logged_arguments(folder, ["--phase", "x", "--cache_frames", "--max_train_steps", "1600"])


def test_switches_are_the_presets_flags_without_values():
    assert PRESET.switches == []
    assert dataclasses.replace(PRESET, cache_frames=True).switches == ["--cache_frames"]


def test_timed_stages_keep_the_time_of_the_run_that_did_the_work(tmp_path, capsys):
    build = Build(PRESET, tmp_path, seed=0)
    (tmp_path / "timings.json").write_text(json.dumps({"VAE": 60.0}))
    build.timed("data", lambda: None)
    build.timed("evaluation", lambda: False)  # skipped
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert set(timings) == {"VAE", "data"} and timings["VAE"] == 60.0 and set(build.timings) == {"data"}
    assert "=== data ===" in capsys.readouterr().out


def test_a_build_distils_the_shipped_student_and_with_ablation_every_row(tmp_path):
    assert Build(PRESET, tmp_path, seed=0).variants == (ABLATION[-1],)
    ablation = Build(PRESET, tmp_path, seed=0, ablation=True).variants
    assert ablation == ABLATION and ablation[-1] == ABLATION[-1]  # the shipped student last in both


def test_ablation_folders_name_what_the_variants_differ_in(tmp_path):
    build = Build(PRESET, tmp_path, seed=0)
    assert build.spatial_dir(ABLATION[-1]).name == "spatial_w1.5_eta0.1_cons0.02"
    assert build.temporal_dir(ABLATION[-1]).name == "spatial_w1.5_eta0.1_cons0.02_temporal0.05"
    assert build.spatial_dir(ABLATION[2]) == build.spatial_dir(ABLATION[3])  # + temporal ETA shares phase 1


def test_copy_folder_replaces_the_destination_with_the_listed_entries_only(tmp_path):
    source = tmp_path / "teacher"
    (source / "vae").mkdir(parents=True)
    (source / "vae" / "config.json").write_text("{}")
    (source / "model_index.json").write_text("{}")
    (source / "checkpoint-5").mkdir()
    destination = tmp_path / "models" / "teacher"
    destination.mkdir(parents=True)
    (destination / "stale.txt").write_text("old")
    copy_folder(source, destination, SHIPPED_ENTRIES)
    assert sorted(path.name for path in destination.iterdir()) == ["model_index.json", "vae"]
    assert (destination / "vae" / "config.json").is_file()
    assert [path.name for path in destination.parent.iterdir()] == ["teacher"]  # no temporary folder left
