"""examples/build_default_model.py on its smoke preset: the whole chain runs, ships loadable folders, is resumable."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
from diffusers import DDIMScheduler, LCMScheduler, UNetMotionModel

from referencelcm import ReferenceLCMPipeline, build_report

from ..test_shipped_files import absolute_paths_in
from . import load_example

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "build_default_model.py"


@pytest.fixture(scope="module")
def script():
    return load_example(SCRIPT)


def run_smoke_build(script, root: Path) -> dict:
    paths = {"work": root / "work", "models": root / "models", "assets": root / "assets", "results": root / "RESULTS.md"}
    paths["results"].write_text("# Benchmark results\n\nHand-written notes stay.\n")
    paths["argv"] = ["--preset", "smoke", "--work_dir", str(paths["work"]), "--models_dir", str(paths["models"]),
                     "--assets_dir", str(paths["assets"]), "--results", str(paths["results"])]
    assert script.main(paths["argv"]) == 0
    return paths


def check_shipped_models(built: dict) -> None:
    teacher = ReferenceLCMPipeline.from_pretrained(built["models"] / "teacher")
    student = ReferenceLCMPipeline.from_pretrained(built["models"] / "student")
    assert isinstance(teacher.scheduler, DDIMScheduler) and isinstance(student.scheduler, LCMScheduler)
    assert isinstance(student.denoising_unet, UNetMotionModel)
    # the preset's reference_locality reaches every stage: the teacher and the student distilled from it read with it
    assert teacher.config.reference_locality == student.config.reference_locality == 0.25
    shipped = {entry.name for entry in (built["models"] / "student").iterdir()}
    assert "model_index.json" in shipped and not [name for name in shipped if name.startswith(("checkpoint-", "logs"))]
    assert absolute_paths_in(built["models"]) == []  # built from absolute work-dir paths, none of them shipped


def check_demo_video(built: dict) -> None:
    demo = built["assets"] / "demo"
    for folder in ("images", "depth", "normal", "semantic_map", "dwpose", "mask"):
        assert len(list((demo / folder).glob("*.png"))) == 4, folder
    assert json.loads((demo / "meta.json").read_text())


def check_results(built: dict, script, ablation: bool = True) -> None:
    text = built["results"].read_text()
    assert text.startswith("# Benchmark results\n\nHand-written notes stay.\n")
    assert text.count(build_report.RESULTS_BEGIN) == 1 and text.count(build_report.RESULTS_END) == 1
    table4 = text.split("### Table 4 form", 1)[1].split("###", 1)[0]
    for variant in script.ABLATION:
        assert (f"| {variant.name} | 2 |" in table4) == ablation, variant.name
    assert ("--ablation` distils the other rows" in table4) != ablation
    skeleton = text.split("### From the skeleton alone (`dwpose` only)", 1)[1].split("###", 1)[0]
    assert "| teacher, skeleton only | 2 | 3.5 |" in skeleton and "| student, skeleton only | 2 | 1 |" in skeleton
    assert "| teacher | 2 | 3.5 |" in text and "| student | 1 | 1 |" in text
    # The teacher again at the ω the student was distilled with: the like-for-like baseline beside Champ's CFG.
    matched = script.PRESETS["smoke"].distillation_guidance_scale
    assert f"| {build_report.MATCHED_TEACHER} | 2 | {matched:g} |" in text
    # The teacher's own D-UNet with the student's LCM sampler at the student's step counts: no distillation at all.
    assert f"| {build_report.UNDISTILLED_TEACHER} | 1 | {matched:g} |" in text
    speed = text.split("### Speed, side by side", 1)[1]  # timed interleaved, one row per student setting
    assert "(1 interleaved calls)" in speed and "| student 1 | 1 | 1 |" in speed and "| student 2 | 2 | 1 |" in speed
    paired = text.split("### Paired differences, video by video", 1)[1].split("###", 1)[0]
    for metric in ("SSIM ↑", "person L1 ↓", "part ΔE ↓"):
        assert f"| student 1 steps | teacher 2 steps | {metric} |" in paired
        assert f"| student 2 steps | {build_report.MATCHED_TEACHER} 2 steps | {metric} |" in paired
        assert f"| student 1 steps | {build_report.UNDISTILLED_TEACHER} 1 steps | {metric} |" in paired
        # the reenactment split: the student at the ablation's steps against the teacher there and at its most
        assert f"| student 2 steps (reenact) | teacher 2 steps | {metric} |" in paired
    # self split (one video), per metric: teacher: student 1, 2 vs 2 steps; matched: the same; undistilled: 1 vs 1
    # and 2, 2 vs 2; and the ablation rows against plain LCD in SSIM and part ΔE
    assert paired.count(" of 1 videos |") == 3 * (2 + 2 + 3) + ablation * 2 * (len(script.ABLATION) - 1)
    # the ablation against plain LCD: SSIM and part ΔE on the self split, part ΔE and reference spread on pairs
    for metric, split in (("SSIM ↑", ""), ("part ΔE ↓", ""), ("part ΔE ↓", " (reenact)"), ("ref. spread ↓", " (reenact)")):
        compared = f"| {script.ABLATION[-1].name} 2 steps{split} | {script.ABLATION[0].name} 2 steps | {metric} |"
        assert (compared in paired) == ablation
    appearance = text.split("### Appearance: does the output wear the reference?", 1)[1].split("###", 1)[0]
    for split in ("self", "reenact"):
        for method in ("ground truth", "VAE reconstruction", "ignores the reference", "copies the reference frame"):
            assert f"| {method} | {split} | – | – |" in appearance
        assert (f"| {script.ABLATION[-1].name} | {split} | 2 | 1 |" in appearance) == ablation
    assert "| student, skeleton only | self | 2 | 1 |" in appearance
    targets = text.split("### Appearance targets", 1)[1].split("###", 1)[0]
    assert "| self split: teacher 2 steps, part ΔE ÷ ignores the reference |" in targets
    assert "| reenact split: student 2 steps, reference swap (ΔE to B ÷ ΔE to A) |" in targets
    assert "| **total** |" in text


def test_smoke_build_ships_models_demo_and_tables_then_resumes(script, tmp_path, capsys, monkeypatch):
    """One test, so that pytest-xdist builds once: ship, resume into the ablation, then a rerun skips every complete
    stage."""
    built = run_smoke_build(script, tmp_path)
    check_shipped_models(built)
    check_demo_video(built)
    check_results(built, script, ablation=False)
    build = script.Build(script.PRESETS["smoke"], built["work"], seed=0)
    assert [variant for variant in script.ABLATION if script.is_complete(build.temporal_dir(variant))] == [
        script.ABLATION[-1]]  # only the shipped student was distilled

    # --ablation resumes the finished build: the other rows are distilled (the shipped student's phases are reused)
    # and the evaluation runs again with them.
    capsys.readouterr()
    built["argv"] = [*built["argv"], "--ablation"]
    assert script.main(built["argv"]) == 0
    output = capsys.readouterr().out
    # skipped: the shipped student's two phases, and its spatial phase again for "+ CoNS", which shares it
    assert output.count("is complete; skipped.") == 3 and "trained in this run: re-evaluating." in output
    check_results(built, script)

    timings = json.loads((built["work"] / "timings.json").read_text())
    # The image stage started from the image-encoder stage's output, whose encoder it keeps.
    assert "image encoder" in timings and script.is_complete(built["work"] / "image_encoder")

    def started_from(stage: str) -> str:
        return json.loads((built["work"] / stage / "logs" / "config.json").read_text())["pretrained_model"]

    assert started_from("teacher_image") == str(built["work"] / "image_encoder")
    # The annealing run continues the image stage, the run on dance compilations continues it, and the video stage
    # starts from that one's output.
    assert started_from("teacher_image_anneal") == str(built["work"] / "teacher_image")
    assert started_from("teacher_image_dances") == str(built["work"] / "teacher_image_anneal")
    assert started_from("teacher") == str(built["work"] / "teacher_image_dances")
    assert "teacher, image stage annealed" in timings and "teacher, image stage on dances" in timings
    # Only that run reads the compilations, which hold every training identity dancing twice.
    trained_on = {stage: json.loads((built["work"] / stage / "logs" / "config.json").read_text())["train_data_dir"]
                  for stage in ("teacher_image_anneal", "teacher_image_dances", "teacher")}
    assert trained_on == {"teacher_image_anneal": str(build.train_data), "teacher_image_dances": str(build.dances_data),
                          "teacher": str(build.train_data)}
    compilation = json.loads((build.dances_data / "index.json").read_text())
    assert compilation["dances"] == 2 and compilation["num_frames"] == 2 * script.PRESETS["smoke"].train_frames
    # A build resumed from a finished teacher has no teacher timings: the section says its total leaves them out.
    report = json.loads((built["work"] / "evaluation" / "report.json").read_text())
    without_teacher = {name: seconds for name, seconds in timings.items() if name not in script.TEACHER_STAGES}
    resumed_note = "resumed from a finished `teacher/`"
    assert resumed_note in script.results_markdown(report, without_teacher, script.PRESETS["smoke"], "build")
    assert resumed_note not in script.results_markdown(report, timings, script.PRESETS["smoke"], "build")
    capsys.readouterr()
    assert script.main(built["argv"]) == 0
    output = capsys.readouterr().out
    assert "teacher is complete; the VAE and teacher stages are skipped." in output
    assert output.count("is complete; skipped.") == 8  # 4 spatial (2 shared) + 4 temporal
    assert "exists; skipped." in output
    rerun = json.loads((built["work"] / "timings.json").read_text())
    assert rerun["VAE"] == timings["VAE"] and rerun["SynthDance data"] == timings["SynthDance data"]  # the real runs'
    check_results(built, script)

    # A complete teacher is all later stages need: a work dir without the VAE and image-stage folders resumes too.
    # The retrained student makes the existing evaluation stale, so it runs again.
    for stage in (build.stage_dir("vae"), build.stage_dir("teacher_image"), build.temporal_dir(script.ABLATION[-1])):
        shutil.rmtree(stage)
    report_before = (built["work"] / "evaluation" / "report.json").stat().st_mtime_ns
    assert script.main(built["argv"]) == 0
    output = capsys.readouterr().out
    assert "the VAE and teacher stages are skipped." in output and "=== VAE ===" not in output
    assert f"{build.temporal_dir(script.ABLATION[-1]).name} trained in this run: re-evaluating." in output
    assert (built["work"] / "evaluation" / "report.json").stat().st_mtime_ns != report_before
    assert not (built["work"] / "vae").exists()
    assert ReferenceLCMPipeline.from_pretrained(build.temporal_dir(script.ABLATION[-1]))
    # Both phases ran at the preset's distillation ω (each run logs its arguments).
    for folder in (build.spatial_dir(script.ABLATION[-1]), build.temporal_dir(script.ABLATION[-1])):
        logged = json.loads((folder / "logs" / "config.json").read_text())
        assert logged["guidance_scale"] == build.preset.distillation_guidance_scale, folder
    check_results(built, script)

    # A preset changed since a folder was trained (here the spatial learning rate) stops the build instead of
    # shipping and scoring the stale student; nothing is retrained or overwritten.
    smoke = script.PRESETS["smoke"]
    changed = dataclasses.replace(smoke, spatial={**smoke.spatial, "learning_rate": 3e-4})
    monkeypatch.setitem(script.PRESETS, "smoke", changed)
    with pytest.raises(SystemExit, match=r"spatial_w1\.5_eta0_cons0 is complete but was trained with "
                                         r"learning_rate=0\.0001 \(asked: 0\.0003\)"):
        script.main(built["argv"])
    assert json.loads((build.spatial_dir(script.ABLATION[0]) / "logs" / "config.json").read_text())[
        "learning_rate"] == smoke.spatial["learning_rate"]


def test_an_image_encoder_that_misses_the_probe_stops_the_build(script, tmp_path, monkeypatch):
    """With the probe on, a 2-step image encoder stops the build before the image stage trains on it."""
    monkeypatch.setitem(script.PRESETS, "smoke", dataclasses.replace(script.PRESETS["smoke"], image_encoder_gate=0.5))
    argv = ["--preset", "smoke", "--work_dir", str(tmp_path / "work"), "--models_dir", str(tmp_path / "models"),
            "--assets_dir", str(tmp_path / "assets"), "--results", str(tmp_path / "RESULTS.md")]
    with pytest.raises(SystemExit, match=r"image encoder probe failed: .* ≤ 0\.5\), fit on 3 videos, scored on 1\. "
                                         r"The image encoder in .* would cap every later stage"):
        script.main(argv)
    gate = json.loads((tmp_path / "work" / "image_encoder" / "gate.json").read_text())
    assert gate["passed"] is False and gate["ratio"] > 0.5
    assert not (tmp_path / "work" / "teacher_image").exists() and not (tmp_path / "models").exists()


def test_ablation_rows_differ_only_in_regulariser_weights(script, tmp_path):
    full = script.ABLATION[-1]
    assert (full.eta_weight, full.cons_weight, full.temporal_eta_weight) == (0.1, 0.02, 0.05)  # appendix C
    assert script.ABLATION[0].eta_weight == script.ABLATION[0].cons_weight == script.ABLATION[0].temporal_eta_weight == 0
    build = script.Build(script.PRESETS["default"], tmp_path, seed=0)
    assert len({build.temporal_dir(variant) for variant in script.ABLATION}) == len(script.ABLATION)
    # The folders name the distillation ω too: a build resumed after ω changed retrains instead of reusing them.
    other = script.Build(dataclasses.replace(build.preset, distillation_guidance_scale=2.5), tmp_path, seed=0)
    assert {build.spatial_dir(variant) for variant in script.ABLATION}.isdisjoint(
        other.spatial_dir(variant) for variant in script.ABLATION)


def test_a_vae_that_misses_the_gate_stops_the_build(script, tmp_path, monkeypatch):
    """The smoke VAE (2 steps) loses the colours: with the gate on, the build stops before the teacher trains."""
    monkeypatch.setitem(script.PRESETS, "smoke", dataclasses.replace(script.PRESETS["smoke"], vae_gate=(0.15, 10.0)))
    argv = ["--preset", "smoke", "--work_dir", str(tmp_path / "work"), "--models_dir", str(tmp_path / "models"),
            "--assets_dir", str(tmp_path / "assets"), "--results", str(tmp_path / "RESULTS.md")]
    with pytest.raises(SystemExit, match=r"autoencoder gate failed \(part ΔE ratio .* > 0\.15.*person MAE"):
        script.main(argv)
    gate = json.loads((tmp_path / "work" / "vae" / "gate.json").read_text())
    assert gate["passed"] is False and gate["part_ratio"] > 0.15
    assert not (tmp_path / "work" / "teacher_image").exists() and not (tmp_path / "models").exists()
