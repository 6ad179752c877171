"""Evaluation (examples/evaluate.py, referencelcm.evaluation) and the inference benchmark, on tiny models and data."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import CLIPImageProcessor

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import generate_dataset
from referencelcm import evaluation
from referencelcm.evaluation import (
    QualityMetrics,
    SpeedRun,
    evaluate_model,
    format_speed_table,
    format_comparison_table,
    format_difference,
    format_table,
    load_test_videos,
    paired_difference,
    swap_ratio,
    teacher_student_comparisons,
    time_side_by_side,
    write_report,
)
from referencelcm.metrics import FrechetDistance

from .conftest import GUIDANCE_TYPES, build_components

REPOSITORY = Path(__file__).resolve().parents[1]
# One thread per subprocess: on a shared CPU, extra threads spin-wait and make tiny models many times slower.
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluation")
    data = generate_dataset(
        root / "data", num_videos=2, num_frames=4, resolution=32, seed=0, split="test", progress=False
    )
    reenact = generate_dataset(
        root / "reenact", num_videos=2, num_frames=4, resolution=32, seed=0, split="reenact", progress=False
    )
    ReferenceLCMPipeline(**build_components()).save_pretrained(root / "student")
    ReferenceLCMPipeline(**build_components(scheduler="ddim")).save_pretrained(root / "teacher")
    return {"root": root, "data": data, "reenact": reenact, "student": root / "student", "teacher": root / "teacher"}


def test_evaluate_script_writes_report_table_plot_and_samples(tiny_setup):
    output_dir = tiny_setup["root"] / "out"
    command = [
        sys.executable, str(REPOSITORY / "examples" / "evaluate.py"), "--model", str(tiny_setup["student"]),
        "--teacher", str(tiny_setup["teacher"]), "--data", str(tiny_setup["data"]), "--steps", "1", "2",
        "--teacher_steps", "2", "--output_dir", str(output_dir), "--no_progress", "--speed_repeats", "2",
        "--reenact_data", str(tiny_setup["reenact"]), "--reference_frames", "2",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    report = json.loads((output_dir / "report.json").read_text())
    calibration = [("ground truth", None), ("VAE reconstruction", None), ("ignores the reference", None),
                   ("copies the reference frame", None)]
    models = [("teacher", 2), ("student", 1), ("student", 2)]
    assert [(row["split"], row["method"], row["steps"]) for row in report["rows"]] == [
        (split, method, steps) for split in ("self", "reenact") for method, steps in calibration + models
    ]
    for split in ("self", "reenact"):
        rows = [row for row in report["rows"] if row["split"] == split and row["steps"] is not None]
        assert [row["guidance_scale"] for row in rows] == [3.5, 1.0, 1.0]
        for row in rows:
            assert row["num_videos"] == 2 and row["num_frames"] == 2 * 3  # frame 0 is the reference
            assert -1.0 <= row["ssim"] <= 1.0
            assert math.isfinite(row["psnr"]) and row["psnr"] > 0
            assert 0.0 <= row["l1"] <= 1.0
            assert 0.0 <= row["flicker"] <= 1.0 and 0.0 <= row["flicker_ground_truth"] <= 1.0
            assert math.isfinite(row["seconds_per_frame"]) and row["seconds_per_frame"] > 0
            for key in ("ssim", "psnr", "l1", "flicker", "person_l1", "part_delta_e", "retrieval"):
                assert len(row["per_video"][key]) == 2  # per video, in test-set order; the row holds their mean
                assert row[key] == pytest.approx(sum(row["per_video"][key]) / 2)
            assert row["part_ratio"] > 0 and row["retrieval_chance"] == 0.5
            sample = Path(row["sample_video"])
            assert sample.parent == output_dir / "samples" / split and sample.stat().st_size > 0
            # reenactment pairs only: the swap ratio and the spread over --reference_frames references of B
            assert ("swap_ratio" in row) == ("reference_spread" in row) == (split == "reenact")
        truth, vae, ignoring, copying = [row for row in report["rows"] if row["split"] == split and row["steps"] is None]
        assert truth["part_delta_e"] == 0 and truth["retrieval"] == 1.0 and ignoring["part_ratio"] == 1.0
        assert copying["part_ratio"] > 0
        assert vae["part_delta_e"] > 0  # the tiny random VAE is no identity
    assert not list((output_dir / "samples").rglob(".tmp-*"))

    speed = report["speed"]
    assert [(row["method"], row["steps"], row["guidance_scale"]) for row in speed] == [
        ("teacher", 2, 3.5), ("student 1", 1, 1.0), ("student 2", 2, 1.0)
    ]
    for row in speed:
        assert len(row["samples"]) == row["repeats"] == 2 and row["seconds_per_frame"] > 0
        assert row["speedup"] == pytest.approx(speed[0]["seconds_per_frame"] / row["seconds_per_frame"])

    # each student row against the teacher at the same steps (when run) and at its most steps, paired, per split and
    # per compared metric
    comparisons = report["comparisons"]
    assert [(item["metric"], item["split"], item["steps"], item["baseline_steps"]) for item in comparisons] == [
        (metric, split, steps, 2) for metric in ("ssim", "person_l1", "part_delta_e")
        for split in ("self", "reenact") for steps in (1, 2)
    ]
    by_key = {(row["split"], row["method"], row["steps"]): row for row in report["rows"]}
    for item in comparisons:
        student, teacher = by_key[(item["split"], "student", item["steps"])], by_key[(item["split"], "teacher", 2)]
        assert item["num_videos"] == 2 and 0 <= item["better"] <= 2
        assert item["difference"] == pytest.approx(student[item["metric"]] - teacher[item["metric"]])

    table, appearance_table, comparison_table, speed_table, gate_line = (
        (output_dir / "table.md").read_text().split("\n\n")
    )
    # the student's VAE through the autoencoder gate: a random tiny VAE fails it, and the report says why
    assert gate_line.startswith("autoencoder gate failed (") and report["autoencoder_gate"]["passed"] is False
    assert table.startswith("| Method | Split | Steps | CFG | SSIM ↑ | PSNR ↑ | L1 ↓ | Flicker (GT) | s / frame ↓ |")
    assert len(table.strip().splitlines()) == 2 + len(report["rows"])
    assert appearance_table.startswith(
        "| Method | Split | Steps | CFG | person SSIM ↑ | person L1 ↓ | part ΔE ↓ | part ΔE ÷ ignoring ↓ | bg ΔE ↓ | "
        "retrieval (chance) ↑ | swap ΔE new ÷ orig ↓ | ref. spread ↓ |"
    )
    assert "| ground truth | self | – | – | 1.0000 | 0.0000 | 0.00 | 0.0000 | 0.00 | 100.0% (50.0%) | – | – |" in (
        appearance_table
    )
    assert comparison_table.startswith("| Method | vs | metric | difference ± standard error | better on |")
    assert len(comparison_table.strip().splitlines()) == 2 + len(comparisons)
    assert speed_table.startswith("| Method | Steps | CFG | median s / frame (2 interleaved calls) ↓ | speed-up over teacher")
    assert len(speed_table.strip().splitlines()) == 2 + len(speed)
    plot = output_dir / "quality_vs_steps.png"
    if importlib.util.find_spec("matplotlib") is None:  # optional: the plot is skipped with a message
        assert not plot.exists() and "matplotlib is not installed" in result.stdout
    else:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Clock:
    """Stands in for ``time.perf_counter``: advances only when a fake pipeline "runs"."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class _TimedPipe:
    """A pipeline-shaped object whose calls take the next of ``costs`` seconds on ``clock``; logs who ran when."""

    _execution_device = torch.device("cpu")

    def __init__(self, name: str, costs: list[float], clock: _Clock, log: list[str]) -> None:
        self.name, self.costs, self.clock, self.log = name, list(costs), clock, log

    def __call__(self, reference, guidance, num_inference_steps, **kwargs):
        self.log.append(self.name)
        self.clock.now += self.costs.pop(0)
        frames = torch.zeros(len(next(iter(guidance.values()))), 3, 4, 4)
        return type("Output", (), {"frames": [frames]})()


def test_time_side_by_side_interleaves_warms_up_and_takes_medians(tiny_setup, monkeypatch):
    video = load_test_videos(tiny_setup["data"], GUIDANCE_TYPES)[0]  # 3 generated frames
    clock, log = _Clock(), []
    monkeypatch.setattr(evaluation.time, "perf_counter", clock)
    # First cost of each is the untimed warm-up (huge, so it must not count); one busy-machine outlier per run.
    teacher = _TimedPipe("teacher", [1000, 30, 300, 30], clock, log)
    student = _TimedPipe("student", [1000, 3, 3, 60], clock, log)
    rows = time_side_by_side([SpeedRun("teacher", teacher, 20, 3.5), SpeedRun("student 4", student, 4)], video, 3)

    assert log == ["teacher", "student"] + ["teacher", "student", "student", "teacher", "teacher", "student"]
    assert [row["samples"] for row in rows] == [[10.0, 100.0, 10.0], [1.0, 1.0, 20.0]]
    assert [row["seconds_per_frame"] for row in rows] == [10.0, 1.0]
    assert [row["speedup"] for row in rows] == [1.0, 10.0]
    assert [(row["method"], row["steps"], row["guidance_scale"]) for row in rows] == [
        ("teacher", 20, 3.5), ("student 4", 4, 1.0)
    ]
    table = format_speed_table(rows)
    assert "| student 4 | 4 | 1 | 1 | 10.00× |" in table and "(3 interleaved calls)" in table


def test_time_side_by_side_errors_name_the_argument(tiny_setup):
    video = load_test_videos(tiny_setup["data"], GUIDANCE_TYPES)[0]
    run = SpeedRun("student", object(), 4)
    with pytest.raises(ValueError, match="`runs` must name"):
        time_side_by_side([], video)
    with pytest.raises(ValueError, match="unique labels"):
        time_side_by_side([run, run], video)
    with pytest.raises(ValueError, match="`repeats` must be >= 1"):
        time_side_by_side([run], video, repeats=0)


def test_load_test_videos_splits_reference_from_generated_frames(tiny_setup):
    videos = load_test_videos(tiny_setup["data"], GUIDANCE_TYPES, num_videos=1, max_frames=2, resolution=16)
    assert len(videos) == 1
    video = videos[0]
    assert video.reference.shape == (16, 16, 3)
    assert video.ground_truth.shape == (2, 3, 16, 16)
    assert set(video.guidance) == set(GUIDANCE_TYPES)
    assert all(stack.shape == (2, 16, 16, 3) for stack in video.guidance.values())


def test_load_test_videos_errors_name_the_problem(tmp_path, tiny_setup):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_test_videos(tmp_path / "missing", GUIDANCE_TYPES)
    with pytest.raises(FileNotFoundError, match="normal"):
        load_test_videos(tiny_setup["data"], ("depth", "normal_typo"))
    with pytest.raises(ValueError, match="max_frames"):
        load_test_videos(tiny_setup["data"], GUIDANCE_TYPES, max_frames=1)


def _row(method: str, steps: int, **extra) -> dict:
    row = dict(method=method, steps=steps, guidance_scale=1.0, ssim=0.5, psnr=20.0, l1=0.1, flicker=0.02,
               flicker_ground_truth=0.01, seconds_per_frame=0.25)
    row.update(extra)
    return row


def test_format_table_has_one_line_per_row_and_only_present_metrics():
    table = format_table([_row("teacher", 20, guidance_scale=3.5), _row("student", 2)])
    lines = table.strip().splitlines()
    assert lines[0] == "| Method | Steps | CFG | SSIM ↑ | PSNR ↑ | L1 ↓ | Flicker (GT) | s / frame ↓ |"
    assert lines[1].count("|") == lines[0].count("|")
    assert lines[2] == "| teacher | 20 | 3.5 | 0.5000 | 20.00 | 0.1000 | 0.0200 (0.0100) | 0.25 |"
    assert lines[3].startswith("| student | 2 | 1 |")
    assert len(lines) == 4


def test_format_table_shows_learned_metrics_and_dashes_where_missing(tmp_path):
    rows = [_row("teacher", 4, lpips=0.25, fvd=190.5), _row("student", 4)]
    table = format_table(rows)
    header, _, teacher, student = table.strip().splitlines()
    assert "LPIPS ↓" in header and "FVD ↓" in header and "FID" not in header
    assert "0.2500" in teacher and "190.50" in teacher
    assert student.count("–") == 2
    paths = write_report(rows, tmp_path, {"seed": 0})
    assert json.loads(paths["report"].read_text())["rows"][0]["lpips"] == 0.25
    assert paths["table"].read_text() == table
    with pytest.raises(ValueError, match="empty"):
        format_table([])


def test_bench_inference_tiny_prints_consistent_table():
    command = [
        sys.executable, str(REPOSITORY / "benchmarks" / "bench_inference.py"), "--size", "tiny", "--frames", "2",
        "--repeats", "1", "--memory_frames", "2", "--memory_modes", "student",
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=SUBPROCESS_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {}
    for line in result.stdout.splitlines():
        match = re.match(r"\| (teacher|student)( [^|]+?)\s*\|(.*)\|$", line)
        if match and "seconds" not in line:
            cells = [cell.strip() for cell in match.group(3).split("|")]
            rows[(match.group(1) + match.group(2)).strip()] = cells
    speed = {label: cells for label, cells in rows.items() if len(cells) == 7}
    assert list(speed) == ["teacher DDIM 20 + CFG 3.5", "student LCM 4", "student LCM 2"], result.stdout
    teacher_seconds = float(speed["teacher DDIM 20 + CFG 3.5"][0])
    for label, expected_evaluations in (("teacher DDIM 20 + CFG 3.5", 40), ("student LCM 4", 4), ("student LCM 2", 2)):
        seconds, ratio, evaluations = (float(cell) for cell in speed[label][:3])
        assert seconds > 0
        # printed to 4 decimals (seconds) and 2 decimals (ratio): allow exactly that rounding
        rounding = 0.005 + ratio * 5e-5 * (1 / teacher_seconds + 1 / seconds) * 1.01
        assert ratio == pytest.approx(teacher_seconds / seconds, abs=rounding)
        assert evaluations == expected_evaluations
    memory = [line for line in result.stdout.splitlines() if re.match(r"\| student\s+\|\s+2 \|", line)]
    assert len(memory) == 1 and float(memory[0].split("|")[3]) > 0


class _MomentFeatures(torch.nn.Module):
    """Per-channel mean and standard deviation: (N, 3, H, W) or (B, 3, F, H, W) → (N, 6)."""

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        flat = samples.flatten(2)
        return torch.cat([flat.mean(-1), flat.std(-1)], dim=1)


def test_evaluate_model_rows_with_frechet_distances_from_a_local_network(tmp_path, tiny_setup):
    network_path = tmp_path / "moments.pt"
    torch.save({}, network_path)  # the architecture has no weights; the file stands for a local checkpoint
    metrics = QualityMetrics(
        fid=FrechetDistance(network_path, module=_MomentFeatures()),
        fvd=FrechetDistance(network_path, module=_MomentFeatures()),
    )
    pipe = ReferenceLCMPipeline(**build_components())
    pipe.set_progress_bar_config(disable=True)
    rows = evaluate_model(
        pipe, tiny_setup["data"], steps=[1, 2], method="student", metrics=metrics, max_frames=2, warmup=False,
        progress=False,
    )
    assert [row["steps"] for row in rows] == [1, 2]
    for row in rows:
        assert row["num_frames"] == 2 * 2 and row["sample_video"] is None
        assert math.isfinite(row["fid"]) and row["fid"] >= -1e-6
        assert math.isfinite(row["fvd"]) and row["fvd"] >= -1e-6
    header = format_table(rows).splitlines()[0]
    assert "FID ↓" in header and "FVD ↓" in header


def test_evaluate_model_with_custom_timesteps(tiny_setup):
    pipe = ReferenceLCMPipeline(**build_components())
    pipe.set_progress_bar_config(disable=True)
    common = dict(max_frames=2, warmup=False, progress=False)
    custom = evaluate_model(pipe, tiny_setup["data"], [3], timesteps=[999, 499, 139], **common)[0]
    default = evaluate_model(pipe, tiny_setup["data"], [3], **common)[0]
    assert custom["timesteps"] == [999, 499, 139] and custom["steps"] == 3 and "timesteps" not in default
    assert custom["per_video"]["ssim"] != default["per_video"]["ssim"]
    with pytest.raises(ValueError, match=r"`steps` must be \[3\]; got \[4\]"):
        evaluate_model(pipe, tiny_setup["data"], [4], timesteps=[999, 499, 139], **common)


def test_evaluate_script_takes_steps_or_timesteps():
    spec = importlib.util.spec_from_file_location("evaluate_example", REPOSITORY / "examples" / "evaluate.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    required = ["--model", "m", "--data", "d"]
    assert script.parse_args(required).steps == [1, 2, 4, 8]
    assert script.parse_args([*required, "--timesteps", "999", "499", "139"]).steps == [3]
    with pytest.raises(SystemExit):
        script.parse_args([*required, "--timesteps", "999", "--steps", "1"])


def _scored_row(method: str, steps: int, ssim: list[float], l1: list[float] | None = None) -> dict:
    per_video = {"ssim": ssim, **({"l1": l1} if l1 is not None else {})}
    return {"method": method, "steps": steps, "ssim": sum(ssim) / len(ssim), "per_video": per_video}


def test_paired_difference_is_the_mean_per_video_difference_with_its_standard_error():
    student = _scored_row("student", 4, [0.5, 0.6, 0.7], l1=[0.10, 0.20, 0.30])
    teacher = _scored_row("teacher", 4, [0.4, 0.65, 0.6], l1=[0.12, 0.18, 0.35])
    result = paired_difference(student, teacher)
    # differences 0.1, -0.05, 0.1: mean 0.05, sample standard deviation sqrt(0.0075), three videos
    assert result["difference"] == pytest.approx(0.05)
    assert result["standard_error"] == pytest.approx(math.sqrt(0.0075 / 3))
    assert (result["better"], result["num_videos"]) == (2, 3)
    assert (result["method"], result["steps"], result["baseline_method"], result["baseline_steps"]) == (
        "student", 4, "teacher", 4
    )
    # L1: lower is better, so the student wins where its difference is negative
    assert paired_difference(student, teacher, "l1")["better"] == 2
    assert paired_difference(teacher, student)["difference"] == pytest.approx(-0.05)
    single = paired_difference(_scored_row("student", 4, [0.5]), _scored_row("teacher", 4, [0.4]))
    assert single["difference"] == pytest.approx(0.1) and math.isnan(single["standard_error"])
    assert format_difference(single) == "+0.1000" and format_difference(result) == "+0.0500 ± 0.0500"
    assert format_difference(paired_difference(teacher, student)) == "-0.0500 ± 0.0500"

    table = format_comparison_table([result])
    assert "| student 4 steps | teacher 4 steps | SSIM ↑ | +0.0500 ± 0.0500 | 2 of 3 videos |" in table


def test_paired_difference_rejects_rows_it_cannot_pair():
    student = _scored_row("student", 4, [0.5, 0.6])
    with pytest.raises(ValueError, match="same videos"):
        paired_difference(student, _scored_row("teacher", 4, [0.4, 0.5, 0.6]))
    with pytest.raises(ValueError, match="`baseline`.*no per-video 'ssim'"):
        paired_difference(student, {"method": "teacher", "steps": 4, "ssim": 0.5})
    with pytest.raises(ValueError, match="`key` must be a metric with a direction"):
        paired_difference(student, student, "flicker")
    with pytest.raises(ValueError, match="nothing to tabulate"):
        format_comparison_table([])


def test_teacher_student_comparisons_pair_equal_steps_and_the_most_steps():
    rows = [_scored_row("teacher", 2, [0.3, 0.4]), _scored_row("teacher", 20, [0.6, 0.7]), _scored_row("student", 1, [0.2, 0.3]),
            _scored_row("student", 2, [0.5, 0.5]), _scored_row("plain LCD", 2, [0.1, 0.1])]
    pairs = [(item["steps"], item["baseline_steps"]) for item in teacher_student_comparisons(rows)]
    assert pairs == [(1, 20), (2, 2), (2, 20)]
    assert teacher_student_comparisons([row for row in rows if row["method"] != "teacher"]) == []
    # A second teacher pass (another CFG scale) is paired on its own, by its method label.
    rows.append(_scored_row("teacher, CFG 1.5", 2, [0.45, 0.45]))
    matched = teacher_student_comparisons(rows, teacher="teacher, CFG 1.5")
    assert [(item["steps"], item["baseline_method"], item["baseline_steps"]) for item in matched] == [
        (1, "teacher, CFG 1.5", 2), (2, "teacher, CFG 1.5", 2)]
    assert matched[1]["difference"] == pytest.approx(0.05)


# ----------------------------------------------------------------------------------------------------------
# appearance: calibration rows, reference swap and spread, on SynthDance splits


@pytest.fixture(scope="module")
def appearance_splits(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("appearance")
    splits = {}
    for split in ("test", "reenact"):
        data = generate_dataset(root / split, num_videos=4, num_frames=4, resolution=32, seed=3, split=split,
                                progress=False)
        splits[split] = load_test_videos(data, GUIDANCE_TYPES)
    return splits


class _IdentityAutoencoder(torch.nn.Module):
    """An autoencoder that reconstructs perfectly: encode and decode return their input."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def encode(self, pixels):
        return type("Encoded", (), {"latents": pixels})()

    def decode(self, latents):
        return type("Decoded", (), {"sample": latents})()


def test_calibration_rows_separate_truth_ceiling_and_ignoring(appearance_splits):
    videos = appearance_splits["test"]
    truth, vae, ignoring, copying = evaluation.calibration_rows(videos, _IdentityAutoencoder())
    assert [row["method"] for row in (truth, vae, ignoring, copying)] == [
        evaluation.GROUND_TRUTH, evaluation.VAE_RECONSTRUCTION, evaluation.IGNORES_REFERENCE,
        evaluation.COPIES_REFERENCE,
    ]
    # the reference frame as every output: wrong where the person moved, exact for a video that stands still
    assert copying["part_delta_e"] > 0 and copying["person_ssim"] < truth["person_ssim"]
    still = [dataclasses.replace(video, ground_truth=torch.from_numpy(video.reference).permute(2, 0, 1)[None]
                                 .float().div(255).repeat(video.num_frames, 1, 1, 1)) for video in videos]
    assert evaluation.calibration_rows(still)[-1]["part_delta_e"] == 0
    assert truth["part_delta_e"] == 0 and truth["background_delta_e"] == 0 and truth["retrieval"] == 1.0
    assert vae["part_delta_e"] == pytest.approx(0, abs=1e-3) and vae["retrieval"] == 1.0  # a perfect autoencoder
    # Every video painted in the same split colours: retrieval is chance up to which parts each video shows.
    assert ignoring["part_delta_e"] > 10 and ignoring["retrieval_chance"] == 0.25 and ignoring["retrieval"] <= 0.5
    assert evaluation.baseline_ratio([truth, ignoring], ignoring) == 1.0
    assert ignoring["person_ssim"] < truth["person_ssim"] == pytest.approx(1.0)
    tiny_vae = build_components()["vae"]  # random weights: much worse than the truth
    assert evaluation.calibration_rows(videos, tiny_vae)[1]["part_delta_e"] > 10
    with pytest.raises(ValueError, match="SynthDance"):
        evaluation.calibration_rows([dataclasses.replace(videos[0], labels=None)])


class _ConstantAutoencoder(_IdentityAutoencoder):
    """An autoencoder whose every reconstruction is mid-grey."""

    def decode(self, latents):
        return type("Decoded", (), {"sample": torch.zeros_like(latents)})()


def test_autoencoder_gate_passes_a_perfect_autoencoder_and_fails_a_constant_one(appearance_splits):
    videos = appearance_splits["test"]
    perfect = evaluation.autoencoder_gate(_IdentityAutoencoder(), videos)
    assert perfect["passed"] and perfect["person_mae"] == pytest.approx(0, abs=1e-4)
    assert perfect["part_ratio"] == pytest.approx(0, abs=1e-4) and perfect["part_rgb_ratio"] == pytest.approx(0, abs=1e-4)
    assert perfect["message"].startswith("autoencoder gate passed: person MAE 0.0")
    constant = evaluation.autoencoder_gate(_ConstantAutoencoder(), videos)
    # grey everywhere is about as far from each part as the split's mean colour is: near the baseline, far above 0.15
    assert not constant["passed"] and 0.6 < constant["part_ratio"] < 2.5 and constant["person_mae"] > 30
    assert "part ΔE ratio" in constant["message"] and "person MAE" in constant["message"]
    loose = evaluation.autoencoder_gate(_ConstantAutoencoder(), videos, max_part_ratio=10, max_person_mae=255)
    assert loose["passed"]


class _PoolingEncoder(torch.nn.Module):
    """An image encoder whose embedding is its input's mean colour in a 4 x 4 grid: it carries the colours of
    whatever is where (``image_embeds`` ``(B, 48)``), and, with ``constant``, nothing at all."""

    def __init__(self, constant: bool = False) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        self.constant = constant

    def forward(self, pixel_values):
        pooled = torch.nn.functional.adaptive_avg_pool2d(pixel_values, 4).flatten(1)
        return type("Output", (), {"image_embeds": pooled * 0 if self.constant else pooled})()


@pytest.fixture(scope="module")
def probe_splits(tmp_path_factory) -> dict[str, list]:
    root = tmp_path_factory.mktemp("probe")
    return {split: load_test_videos(generate_dataset(root / split, num_videos=videos, num_frames=4, resolution=32,
                                                     seed=5, split=split, progress=False), GUIDANCE_TYPES)
            for split, videos in (("train", 16), ("test", 6))}


def test_image_encoder_probe_reads_colours_only_from_an_embedding_that_carries_them(probe_splits):
    processor = CLIPImageProcessor(crop_size=32, size={"shortest_edge": 32})
    fit, test = probe_splits["train"], probe_splits["test"]
    blind = evaluation.image_encoder_probe(_PoolingEncoder(constant=True), processor, fit, test)
    # uninformative features: the probe predicts the fit frames' mean colour of each part, i.e. the baseline
    assert blind["ratio"] == pytest.approx(1.0, abs=1e-6) and not blind["passed"]
    assert blind["baseline_error"] > 20 and blind["message"].startswith("image encoder probe failed: ")
    seeing = evaluation.image_encoder_probe(_PoolingEncoder(), processor, fit, test, max_ratio=0.9)
    assert seeing["ratio"] < 0.9 and seeing["passed"] and seeing["num_fit_videos"] == 16
    assert seeing["baseline_error"] == pytest.approx(blind["baseline_error"])
    tiny = build_components()  # the same data through a random tiny CLIP and its own feature extractor
    random = evaluation.image_encoder_probe(tiny["image_encoder"], tiny["feature_extractor"], fit, test)
    assert random["ratio"] > seeing["ratio"]
    with pytest.raises(ValueError, match="SynthDance"):
        evaluation.image_encoder_probe(_PoolingEncoder(), processor, [dataclasses.replace(fit[0], labels=None)], test)


class _OraclePipe:
    """A pipeline-shaped stand-in that returns a chosen video per test video: the ground truth (wears the reference
    perfectly), A's original frames (ignores it) or the reference image it was given, repeated (copies it)."""

    _execution_device = torch.device("cpu")

    def __init__(self, videos, mode: str) -> None:
        self.by_guidance = {id(video.guidance): video for video in videos}
        self.mode = mode

    def __call__(self, reference, guidance, num_inference_steps, **kwargs):
        video = self.by_guidance[id(guidance)]
        if self.mode == "truth":
            frames = video.ground_truth
        elif self.mode == "original":
            frames = video.original
        else:
            frames = torch.from_numpy(reference).permute(2, 0, 1).float().div(255)[None].expand_as(video.ground_truth)
        return type("Output", (), {"frames": [frames]})()


def test_swap_ratio_is_a_ratio_of_means():
    """One pair with a tiny error to A's own look must not dominate the row, as a mean of per-video ratios lets it
    (here (1/9 + 3) / 2 = 1.56 against 4 / 10)."""
    assert swap_ratio({"appearance_delta_e": [1.0, 3.0], "original_delta_e": [9.0, 1.0]}) == pytest.approx(0.4)
    assert math.isinf(swap_ratio({"appearance_delta_e": [1.0], "original_delta_e": [0.0]}))
    assert math.isnan(swap_ratio({"appearance_delta_e": [1.0]}))


def test_rows_pooled_over_splits_keep_the_swap_a_ratio_of_means():
    from referencelcm.targets import pool_rows

    def row(appearance: float, original: float) -> dict:
        per_video = {"appearance_delta_e": [appearance], "original_delta_e": [original],
                     "swap_ratio": [appearance / original]}
        return {"method": "student", "steps": 4, "split": "reenact", "num_videos": 1, "per_video": per_video,
                "swap_ratio": appearance / original}

    (pooled,) = pool_rows([row(1.0, 9.0), row(3.0, 1.0)])
    assert pooled["num_videos"] == 2 and pooled["swap_ratio"] == pytest.approx(0.4)


@pytest.mark.parametrize("mode", ["truth", "original", "reference"])
def test_reference_swap_and_spread_follow_what_the_output_wears(appearance_splits, mode):
    videos = appearance_splits["reenact"]
    assert all(video.split == "reenact" and video.original is not None for video in videos)
    assert all(np.array_equal(video.reference, video.reference_frames[0]) for video in videos)
    (row,) = evaluate_model(_OraclePipe(videos, mode), None, videos=videos, steps=[1], reference_frames=3,
                            progress=False, warmup=False)
    assert row["split"] == "reenact"
    assert row["swap_ratio"] == swap_ratio(row["per_video"])
    if mode == "truth":  # wears B's appearance exactly, whatever frame of B is the reference
        assert row["part_delta_e"] == 0 and row["swap_ratio"] == 0 and row["reference_spread"] == 0
        assert row["retrieval"] == 1.0
    elif mode == "original":  # A's own look: the error to B's appearance is all there is
        assert row["original_delta_e"] == 0 and math.isinf(row["swap_ratio"]) and row["reference_spread"] == 0
    else:  # changes with every reference frame
        assert row["reference_spread"] > 1e-3
