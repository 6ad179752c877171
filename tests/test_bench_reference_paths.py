"""benchmarks/bench_reference_paths.py: its table's arithmetic, and a run on a tiny random teacher."""

from __future__ import annotations

import argparse
import math
import re
from pathlib import Path

import pytest
import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import generate_dataset

from .conftest import build_components
from .examples import load_example

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_example(REPOSITORY / "benchmarks" / "bench_reference_paths.py")


def rows(table: str) -> dict[str, list[str]]:
    return {match.group(1): [cell.strip() for cell in match.group(2).split("|")]
            for match in re.finditer(r"^\| ([^|]+?) \|(.*)\|$", table, re.MULTILINE) if match.group(1) != "call"}


def test_table_groups_parts_and_pairs_each_call_with_the_unchanged_one(bench):
    parts = len(bench.PART_NAMES)
    unchanged = torch.full((2, parts + 1), 10.0)
    swapped = unchanged.clone()
    swapped[0, bench.PART_NAMES.index("pelvis")] = 10.0 + parts * 3  # video 0: its part mean rises by 3
    swapped[1, :parts] = 12.0  # video 1: by 2
    swapped[:, parts] = 40.0  # the background
    errors = {label: unchanged for label, _, _ in bench.CALLS}
    errors["R-UNet tokens of another identity"] = swapped
    ignoring = torch.full((2, parts + 1), 20.0)
    args = argparse.Namespace(model="m", data="d", steps=20, guidance_scale=3.5)
    table = rows(bench.format_table(errors, ignoring, args))
    assert list(table) == [label for label, _, _ in bench.CALLS] + ["ignores the reference"]
    assert table["unchanged"] == ["10.0", "10.0", "10.0", "10.0", "10.00 (0.500)", ""]
    legs = (10.0 + parts * 3 + 4 * 10.0) / 5 / 2 + 12.0 / 2  # pelvis is one of the 5 leg parts of video 0
    assert table["R-UNet tokens of another identity"] == [
        f"{legs:.1f}", "11.0", "11.0", "40.0", "12.50 (0.625)", f"+2.50 ± {math.sqrt(0.5) / math.sqrt(2):.2f}"]  # sample SD of (3, 2) over sqrt 2
    assert table["ignores the reference"][4] == "20.00 (1.000)"


def test_runs_on_a_tiny_teacher(bench, tmp_path, capsys):
    ReferenceLCMPipeline(**build_components(scheduler="ddim")).save_pretrained(tmp_path / "teacher")
    generate_dataset(tmp_path / "test", num_videos=3, num_frames=3, resolution=32, seed=0, split="test")
    argv = ["--model", str(tmp_path / "teacher"), "--data", str(tmp_path / "test"), "--num_videos", "3",
            "--num_frames", "2", "--steps", "2"]
    assert bench.main(argv) == 0
    table = rows(capsys.readouterr().out)
    assert len(table) == 6
    for label, cells in table.items():
        assert all(math.isfinite(float(cell)) for cell in cells[:4]), (label, cells)
        assert (cells[5] == "") == (label == "unchanged"), (label, cells)
    with pytest.raises(SystemExit):
        bench.parse_args(["--model", "m", "--data", "d", "--num_videos", "1"])
