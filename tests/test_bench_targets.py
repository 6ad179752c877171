"""benchmarks/bench_targets.py on tiny random models: per-split rows, the pooled row, its RESULTS.md section."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import FORMAT_VERSION, generate_dataset
from referencelcm.evaluation import write_marked_section

from .conftest import build_components
from .examples import load_example

REPOSITORY = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    return load_example(REPOSITORY / "benchmarks" / "bench_targets.py")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-targets")
    ReferenceLCMPipeline(**build_components()).save_pretrained(root / "student")
    ReferenceLCMPipeline(**build_components(scheduler="ddim")).save_pretrained(root / "teacher")
    return {"root": root, "student": root / "student", "teacher": root / "teacher"}


def tiny_argv(models: dict, results: Path, *extra: str) -> list[str]:
    return ["--teacher", str(models["teacher"]), "--student", str(models["student"]), "--num_videos", "2",
            "--num_frames", "3", "--resolution", "32", "--steps", "1", "--teacher_steps", "2", "--no_progress",
            "--results", str(results), *extra]


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| (\d+) \| (self|reenact) \|(.*)\|$", line)
        if match:
            rows[(match.group(1), match.group(2))] = [cell.strip() for cell in match.group(3).split("|")]
    return rows


def target_rows(text: str) -> dict[str, list[str]]:
    section = text.split("### Targets", 1)[1]
    return {match.group(1): [cell.strip() for cell in match.group(2).split("|")]
            for match in re.finditer(r"^\| ((?:self|reenact) split: [^|]+?) \|(.*)\|$", section, re.MULTILINE)}


def test_rows_per_split_and_pooled_targets_and_the_section_is_replaced(bench, models, capsys):
    results = models["root"] / "RESULTS.md"
    results.write_text("# Benchmark results\n\nHand-written notes stay.\n")
    data = models["root"] / "splits"
    assert bench.main(tiny_argv(models, results, "--seeds", "3", "7", "--data_dir", str(data))) == 0
    assert sorted(str(path.relative_to(data)) for path in data.glob("*/*")) == [
        "seed_3/reenact", "seed_3/self", "seed_7/reenact", "seed_7/self"
    ]

    text = results.read_text()
    assert text.startswith("# Benchmark results\n\nHand-written notes stay.\n")
    assert text.count(bench.RESULTS_BEGIN) == 1 and text.count(bench.RESULTS_END) == 1
    rows = table_rows(text)
    assert list(rows) == [(seed, split) for seed in ("3", "7") for split in ("self", "reenact")]
    for (seed, split), cells in rows.items():
        assert cells[0] == "2"
        assert all(float(cell) > 0 for cell in cells[1:5])  # part ΔE ÷ ignoring: VAE, teacher 2, teacher 1, student
        assert re.fullmatch(r"(0|50|100)% / (0|50|100)%", cells[5])
        swaps = cells[6].split(" / ")
        assert all((cell == "–") == (split == "self") for cell in swaps)
        assert re.fullmatch(r"[+-]?\d+\.\d\d ± \d+\.\d\d \([0-2] of 2\)", cells[7])

    targets = target_rows(text)
    for split in ("self", "reenact"):
        assert f"{split} split: teacher 2 steps, part ΔE ÷ ignores the reference" in targets
        assert f"{split} split: student 1 − teacher 1 steps, part ΔE per video" in targets
    assert "reenact split: student 1 steps, reference swap (ΔE to B ÷ ΔE to A)" in targets
    for measured, threshold, met in targets.values():
        assert met in ("yes", "**no**", "–")
    ratio_cells = targets["self split: student 1 ÷ teacher 2 steps, part ΔE"]
    assert (ratio_cells[2] == "yes") == (float(ratio_cells[0]) <= 1.1)
    met = sum(cells[2] == "yes" for cells in targets.values())
    assert f"{met} of {len(targets)} targets met." in text
    assert "| 3 | self |" in capsys.readouterr().out

    # a rerun reuses the kept splits and replaces its own section only; the same seeds give the same scores
    assert bench.main(tiny_argv(models, results, "--seeds", "3", "--data_dir", str(data))) == 0
    text_again = results.read_text()
    assert text_again.count(bench.RESULTS_BEGIN) == 1 and "Hand-written notes stay." in text_again
    again = table_rows(text_again)
    assert again[("3", "self")] == rows[("3", "self")] and ("7", "self") not in again


def test_bad_arguments_are_named(bench, models, tmp_path, capsys):
    results = tmp_path / "RESULTS.md"
    for argv, message in (
        (tiny_argv(models, results, "--seeds", "2", "2"), "--seeds must be distinct"),
        (["--teacher", str(tmp_path / "missing"), "--student", str(models["student"])], "--teacher must be a pipeline"),
        (tiny_argv(models, results, "--num_frames", "2"), "--num_frames must be at least 3"),
        (tiny_argv(models, results, "--steps", "0"), "--steps must be at least 1"),
        (tiny_argv(models, results, "--num_videos", "1"), "--num_videos must be at least 2"),
    ):
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err
    # a kept split made with other settings, or not a split at all, is not silently reused
    data = tmp_path / "splits"
    generate_dataset(data / "seed_4" / "self", num_videos=2, num_frames=4, resolution=32, seed=5, split="test",
                     progress=False)
    with pytest.raises(SystemExit, match=r"seed=5 \(asked: 4\), num_frames=4 \(asked: 3\)"):
        bench.main(tiny_argv(models, results, "--seeds", "4", "--data_dir", str(data)))
    # the format is part of the settings: a format-1 split is reused by --format_version 1 only
    generate_dataset(data / "seed_6" / "self", num_videos=2, num_frames=3, resolution=32, seed=6, split="test",
                     progress=False, version=1)
    with pytest.raises(SystemExit, match=rf"format_version=1 \(asked: {FORMAT_VERSION}\)"):
        bench.main(tiny_argv(models, results, "--seeds", "6", "--data_dir", str(data)))
    assert bench.main(tiny_argv(models, results, "--seeds", "6", "--data_dir", str(data), "--format_version", "1",
                                "--no_write")) == 0
    assert "SynthDance format 1" in bench.results_markdown(
        bench.parse_args(tiny_argv(models, results, "--seeds", "6", "--format_version", "1")), {}, 0.0)
    (data / "seed_8" / "self" / "test_00000").mkdir(parents=True)
    with pytest.raises(SystemExit, match="is not a SynthDance split"):
        bench.main(tiny_argv(models, results, "--seeds", "8", "--data_dir", str(data)))
    assert not results.exists()


def test_write_marked_section_replaces_only_between_its_markers(tmp_path):
    path = tmp_path / "RESULTS.md"
    first = "<!-- a: begin -->\nA1\n<!-- a: end -->\n"
    write_marked_section(path, first, "<!-- a: begin -->", "<!-- a: end -->")
    assert path.read_text() == "# Benchmark results\n\n" + first
    write_marked_section(path, "<!-- b: begin -->\nB-body\n<!-- b: end -->\n", "<!-- b: begin -->", "<!-- b: end -->")
    write_marked_section(path, "<!-- a: begin -->\nA2\n<!-- a: end -->\n", "<!-- a: begin -->", "<!-- a: end -->")
    text = path.read_text()
    assert "A1" not in text and text.index("A2") < text.index("B-body") and text.count("<!-- a: begin -->") == 1
    assert not list(tmp_path.glob(".tmp-*"))
    with pytest.raises(ValueError, match="begin"):
        write_marked_section(path, "no markers", "<!-- a: begin -->", "<!-- a: end -->")


def test_splits_default_to_the_size_the_teacher_learnt(bench, models):
    data = models["root"] / "native-size"
    argv = tiny_argv(models, models["root"] / "native.md", "--seeds", "5", "--data_dir", str(data), "--no_write")
    position = argv.index("--resolution")
    del argv[position:position + 2]
    assert bench.main(argv) == 0
    index = json.loads((data / "seed_5" / "self" / "index.json").read_text())
    assert index["resolution"] == ReferenceLCMPipeline.from_pretrained(models["teacher"]).vae.config.sample_size == 32
