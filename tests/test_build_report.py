"""The bundled model's RESULTS.md section (build_report.py) from hand-made report rows: no model runs. The section
of a real (smoke) build is checked in tests/examples/test_build_default_model.py."""

from __future__ import annotations

from referencelcm.build_report import (
    MATCHED_TEACHER,
    RESULTS_BEGIN,
    RESULTS_END,
    SKELETON_ONLY,
    ablation_comparisons,
    results_markdown,
    student_4_against,
    write_results_section,
)
from referencelcm.evaluation import paired_difference
from referencelcm.training.build import ABLATION, TEACHER_STAGES, Preset

PRESET = Preset(resolution=64, train_videos=2, train_frames=4, test_videos=3, test_frames=5, clip_frames=2,
                model_config={}, vae={}, teacher_image={}, teacher_video={}, spatial={}, temporal={})


def _row(method: str, steps: int, ssim: list[float], split: str = "self", **per_video) -> dict:
    scores = {"ssim": ssim, **per_video}
    return {"method": method, "steps": steps, "guidance_scale": 1.0, "split": split, "num_videos": len(ssim),
            "num_frames": 4 * len(ssim), "seconds_per_frame": 0.1 * steps, "per_video": scores,
            **{key: sum(values) / len(values) for key, values in scores.items()}}


def _report() -> dict:
    appearance = dict(part_delta_e=[10.0, 12.0, 14.0], person_l1=[0.2, 0.2, 0.2])
    teacher_4 = {**_row("teacher", 4, [0.5, 0.5, 0.5], **appearance), "guidance_scale": 3.5}
    teacher_20 = {**_row("teacher", 20, [0.6, 0.6, 0.6], **appearance), "guidance_scale": 3.5}
    student_4 = _row("student", 4, [0.6, 0.4, 0.6], **appearance)
    ablation = [_row(variant.name, 4, [0.5 + 0.01 * index] * 3) for index, variant in enumerate(ABLATION)]
    comparisons = [paired_difference(student_4, teacher_4), paired_difference(student_4, teacher_20)]
    speed = [{"method": "teacher", "steps": 20, "guidance_scale": 3.5, "unet_evaluations": 40, "seconds_per_frame": 4.0,
              "repeats": 3, "speedup": 1.0},
             {"method": "student 4", "steps": 4, "guidance_scale": 1.0, "unet_evaluations": 4, "seconds_per_frame": 0.5,
              "repeats": 3, "speedup": 8.0}]
    return {"rows": [teacher_4, teacher_20, student_4, *ablation], "speed": speed, "comparisons": comparisons}


def test_results_markdown_has_the_tables_the_targets_and_the_build_time():
    timings = {TEACHER_STAGES[0]: 120.0, "evaluation": 60.0}
    text = results_markdown(_report(), timings, PRESET, "python examples/build_default_model.py")
    assert text.startswith(RESULTS_BEGIN + "\n## Bundled default model (SynthDance)") and RESULTS_END in text
    assert "Produced by `python examples/build_default_model.py`" in text and "(3 videos of identities" in text
    table3 = text.split("### Table 3 form", 1)[1].split("###", 1)[0]
    assert "| teacher | 20 | 3.5 | 0.6000 |" in table3 and "| student | 4 | 1 | 0.5333 |" in table3
    table4 = text.split("### Table 4 form", 1)[1].split("###", 1)[0]
    assert all(f"| {variant.name} | 4 | 1 |" in table4 for variant in ABLATION) and "| teacher |" not in table4
    targets = text.split("### Speed and targets", 1)[1].split("###", 1)[0]
    assert "(side by side) | 8.00× | ≥ 9× |" in targets and "| the same from the Table-3 passes | 5.00× | |" in targets
    assert "| student 4-step SSIM / teacher 20-step SSIM | 0.8889 | ≥ 0.97 |" in targets
    assert "per video | +0.0333 ± 0.0667, better on 2 of 3 videos | > 0 |" in targets
    appearance = text.split("### Appearance: does the output wear the reference?", 1)[1].split("###", 1)[0]
    assert "| student | 4 | 1 |" in appearance and "part ΔE ↓" in appearance
    assert "| self split: student 4 ÷ teacher 20 steps, part ΔE | 1.000 | ≤ 1.1 | yes |" in text
    assert "| VAE | 2.0 |" in text and "| **total** | **3.0** |" in text
    assert "resumed from a finished `teacher/`" not in text
    resumed = results_markdown(_report(), {"evaluation": 60.0}, PRESET, "build")
    assert "resumed from a finished `teacher/`" in resumed and "| **total** | **1.0** |" in resumed


def test_a_build_without_the_ablation_says_how_to_run_it_and_shows_the_skeleton_rows():
    report = _report()
    report["rows"] = [row for row in report["rows"] if row["method"] not in {variant.name for variant in ABLATION}]
    report["rows"] += [_row(SKELETON_ONLY.format("teacher"), 20, [0.45, 0.5, 0.55]),
                       _row(SKELETON_ONLY.format("student"), 4, [0.4, 0.5, 0.6])]
    text = results_markdown(report, {"evaluation": 60.0}, PRESET, "python examples/build_default_model.py")
    table4 = text.split("### Table 4 form", 1)[1].split("###", 1)[0]
    assert "Not run in this build: `python examples/build_default_model.py --ablation`" in table4
    assert "| ReferenceLCM" not in table4
    skeleton = text.split("### From the skeleton alone (`dwpose` only)", 1)[1].split("###", 1)[0]
    assert "| teacher, skeleton only | 20 | 1 | 0.5000 |" in skeleton
    assert "| student, skeleton only | 4 | 1 | 0.5000 |" in skeleton
    table3 = text.split("### Table 3 form", 1)[1].split("###", 1)[0]
    assert "skeleton only" not in table3
    assert "### From the skeleton alone" not in results_markdown(_report(), {}, PRESET, "build")


def test_ablation_rows_are_compared_with_plain_lcd_on_what_each_term_targets():
    rows = [_row(variant.name, 4, [0.5, 0.6], part_delta_e=[3.0, 4.0]) for variant in ABLATION]
    rows += [_row(variant.name, 4, [0.5, 0.6], "reenact", part_delta_e=[3.0, 4.0], reference_spread=[1.0, 2.0])
             for variant in ABLATION]
    rows.append(_row("student", 4, [0.9, 0.9], part_delta_e=[1.0, 1.0]))  # not an ablation row: not compared
    comparisons = ablation_comparisons(rows)
    assert {(item["split"], item["metric"]) for item in comparisons} == {
        ("self", "ssim"), ("self", "part_delta_e"), ("reenact", "part_delta_e"), ("reenact", "reference_spread")}
    assert len(comparisons) == 4 * (len(ABLATION) - 1)
    assert all(item["baseline_method"] == ABLATION[0].name and item["method"] != ABLATION[0].name
               for item in comparisons)


def test_student_4_against_finds_the_four_step_pair_with_that_teacher():
    student, teacher, matched = _row("student", 4, [0.6]), _row("teacher", 4, [0.5]), _row(MATCHED_TEACHER, 4, [0.7])
    comparisons = [paired_difference(_row("student", 2, [0.6]), teacher), paired_difference(student, teacher),
                   paired_difference(student, matched)]
    assert student_4_against(comparisons, "teacher") is comparisons[1]
    assert student_4_against(comparisons, MATCHED_TEACHER) is comparisons[2]
    assert student_4_against(comparisons, "nobody") is None


def test_write_results_section_keeps_the_hand_written_sections(tmp_path):
    path = tmp_path / "RESULTS.md"
    path.write_text("# Benchmark results\n\n" + f"{RESULTS_BEGIN}\nold tables\n{RESULTS_END}\n\n"
                    "## Build history and findings (hand-written)\n\nkept\n")
    write_results_section(path, f"{RESULTS_BEGIN}\nnew tables\n{RESULTS_END}\n")
    text = path.read_text()
    assert "new tables" in text and "old tables" not in text
    assert text.endswith("## Build history and findings (hand-written)\n\nkept\n")
