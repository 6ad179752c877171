"""The bundled default model's evaluation and its section of ``benchmarks/RESULTS.md``
(``examples/build_default_model.py``; the build itself is :mod:`referencelcm.training.build`).

:func:`evaluate_build` scores the build's teacher, its undistilled D-UNet with the student's sampler, the student (also
from the skeleton alone) and, when the build distilled them, the ablation rows on the SynthDance test and reenactment
splits (:mod:`referencelcm.evaluation`), and writes
``evaluation/report.json``; :func:`results_markdown` turns that report and the stage timings into the generated
section (Table 3 and 4 forms, appearance, the targets of :mod:`referencelcm.targets`, paired differences, speed,
build time) that :func:`write_results_section` puts between :data:`RESULTS_BEGIN` and :data:`RESULTS_END`.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from diffusers import LCMScheduler

from .evaluation import (
    COMPARED_METRICS,
    SpeedRun,
    TestVideo,
    calibration_rows,
    evaluate_model,
    format_appearance_table,
    format_comparison_table,
    format_difference,
    format_speed_table,
    format_table,
    load_test_videos,
    paired_difference,
    teacher_student_comparisons,
    time_side_by_side,
    write_marked_section,
    write_plot,
    write_report,
)
from .pipelines.pipeline_referencelcm import ReferenceLCMPipeline
from .targets import appearance_targets, format_targets
from .training.build import ABLATION_NAMES, TEACHER_STAGES, Build, Preset

RESULTS_BEGIN = "<!-- build_default_model: begin (generated; edit the script, not this section) -->"
RESULTS_END = "<!-- build_default_model: end -->"
# The label of the teacher's rows at the distillation's CFG ω (Preset.distillation_guidance_scale).
MATCHED_TEACHER = "teacher at the distillation ω"
# The label of the teacher's D-UNet sampled with the student's LCMScheduler at that ω: no distillation at all, the
# baseline that shows what the distillation itself adds at the student's step counts.
UNDISTILLED_TEACHER = "teacher, LCM sampler (undistilled)"
# The methods of the Table-3 form (and of the quality-vs-steps plot), in table order.
TABLE3_METHODS = ("teacher", MATCHED_TEACHER, UNDISTILLED_TEACHER, "student")
# Rows animated from one guidance type, the skeleton, instead of all of them (``.format(method)``).
SKELETON = "dwpose"
SKELETON_ONLY = "{}, skeleton only"
SKELETON_METHODS = tuple(SKELETON_ONLY.format(method) for method in ("teacher", "student"))


def evaluate_build(build: Build) -> bool:
    """Table 3 (teacher vs student over steps), the skeleton-only rows and Table 4 (ablation, with
    ``build.ablation``) on the test split, and the appearance rows on the test and reenactment splits, in one
    process: ``evaluation/report.json``, its tables and plot. Skipped (``False``) when a report exists and no stage
    was retrained in this run (``build.trained``)."""
    output_dir = build.stage_dir("evaluation")
    if (output_dir / "report.json").is_file():
        if not build.trained:
            print(f"{output_dir / 'report.json'} exists; skipped.")
            return False
        print(f"{output_dir / 'report.json'} exists, but {', '.join(build.trained)} trained in this run: "
              "re-evaluating.")
    preset = build.preset
    torch.manual_seed(build.seed)

    def load(folder: Path) -> ReferenceLCMPipeline:
        pipe = ReferenceLCMPipeline.from_pretrained(folder)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    teacher = load(build.stage_dir("teacher"))
    student = load(build.temporal_dir(build.variants[-1]))
    undistilled = load(build.stage_dir("teacher"))
    undistilled.scheduler = LCMScheduler.from_config(student.scheduler.config)
    videos = load_test_videos(build.test_data, teacher.guidance_types)
    reenact = load_test_videos(build.reenact_data, teacher.guidance_types)
    rows = []
    # The self split (each video from its own frame 0) carries Table 3 and 4; the reenactment split (A's guidance,
    # B's reference) the teacher at its full and few steps, the student, and the ablation with its reference-frame
    # spread (what ETA targets). Both start with their calibration rows (truth, the teacher's VAE, no reference).
    for split_videos, split_name in ((videos, "self"), (reenact, "reenact")):
        common = dict(videos=split_videos, seed=build.seed, sample_dir=output_dir / "samples" / split_name,
                      reference_frames=1 if split_name == "self" else preset.reference_frames)
        teacher_steps = preset.teacher_eval_steps if split_name == "self" else sorted(
            {preset.ablation_eval_steps, max(preset.teacher_eval_steps)})
        rows += calibration_rows(split_videos, teacher.vae)
        rows += evaluate_model(teacher, None, teacher_steps, preset.teacher_guidance_scale, "teacher", **common)
        if split_name == "self":
            rows += evaluate_model(teacher, None, preset.matched_teacher_eval_steps,
                                   preset.distillation_guidance_scale, MATCHED_TEACHER, **common)
            rows += evaluate_model(undistilled, None, preset.student_eval_steps, preset.distillation_guidance_scale,
                                   UNDISTILLED_TEACHER, **common)
            rows += evaluate_model(student, None, sorted({*preset.student_eval_steps, preset.ablation_eval_steps}),
                                   1.0, "student", **common)
            rows += skeleton_only_rows(teacher, student, split_videos, preset, common)
        else:
            rows += evaluate_model(student, None, [preset.ablation_eval_steps], 1.0, "student", **common)
        if build.ablation:
            for variant in build.variants[:-1]:
                rows += evaluate_model(load(build.temporal_dir(variant)), None, [preset.ablation_eval_steps], 1.0,
                                       variant.name, **common)
            # The last row is the shipped student, just scored at these steps on the same videos and noise.
            shipped = next(row for row in rows if row["split"] == split_name and row["method"] == "student"
                           and row["steps"] == preset.ablation_eval_steps)
            rows.append({**shipped, "method": build.variants[-1].name})
    # The speed target is a ratio, so it is timed side by side rather than taken from passes minutes apart.
    speed = time_side_by_side(
        [SpeedRun("teacher", teacher, max(preset.teacher_eval_steps), preset.teacher_guidance_scale),
         *(SpeedRun(f"student {steps}", student, steps) for steps in preset.student_eval_steps)],
        videos[0], preset.speed_repeats, build.seed,
    )
    comparisons = [item for key in COMPARED_METRICS for label in ("teacher", MATCHED_TEACHER, UNDISTILLED_TEACHER)
                   for item in teacher_student_comparisons(rows, key, teacher=label)]
    comparisons += ablation_comparisons(rows)
    settings = {"preset": dataclasses.asdict(preset), "seed": build.seed, "test_data": str(build.test_data),
                "reenact_data": str(build.reenact_data)}
    write_report(rows, output_dir, settings, speed, comparisons)
    write_plot([row for row in rows if row["method"] in TABLE3_METHODS and row["split"] == "self"
                or row["steps"] is None], output_dir / "quality_vs_steps.png")
    return True


def skeleton_only_rows(teacher: ReferenceLCMPipeline, student: ReferenceLCMPipeline, videos: list[TestVideo],
                       preset: Preset, common: dict) -> list[dict]:
    """The teacher at its most steps (CFG) and the student at the ablation's steps, animated from the ``dwpose``
    skeleton alone (the guidance a user's own video gives most easily); none unless both models read ``dwpose`` and
    take a subset of their guidance types (trained with guidance-type dropout)."""
    models = (teacher, student)
    if not all(SKELETON in pipe.guidance_types and pipe.guidance_encoder.accepts_subsets for pipe in models):
        return []
    skeleton = [dataclasses.replace(video, guidance={SKELETON: video.guidance[SKELETON]}) for video in videos]
    common = {**common, "videos": skeleton}
    return [*evaluate_model(teacher, None, [max(preset.teacher_eval_steps)], preset.teacher_guidance_scale,
                            SKELETON_ONLY.format("teacher"), **common),
            *evaluate_model(student, None, [preset.ablation_eval_steps], 1.0, SKELETON_ONLY.format("student"),
                            **common)]


def ablation_comparisons(rows: list[dict]) -> list[dict]:
    """Each ablation row against plain LCD, per split, on the metrics the CoSeC terms target: SSIM and part ΔE on the
    self split; on the reenactment split part ΔE (CoNS: follow the new identity) and the reference-frame spread
    (ETA). Flicker (temporal ETA) has no direction to pair on; the tables show it beside the ground truth's."""
    comparisons = []
    for split, keys in (("self", ("ssim", "part_delta_e")), ("reenact", ("part_delta_e", "reference_spread"))):
        ablation = [row for row in rows if row["method"] in ABLATION_NAMES and row["split"] == split]
        for key in keys:
            comparisons += [{**paired_difference(row, ablation[0], key), "split": split} for row in ablation[1:]
                            if key in row["per_video"] and key in ablation[0]["per_video"]]
    return comparisons


def results_markdown(report: dict, timings: dict[str, float], preset: Preset, command: str) -> str:
    """The generated section from ``report.json``: Table 3 and 4 forms, the speed ratio, the targets, the timings."""
    rows, speed, comparisons = report["rows"], report.get("speed"), report.get("comparisons", [])
    self_rows = [row for row in rows if row.get("split", "self") == "self"]
    table3 = [row for row in self_rows if row["method"] in TABLE3_METHODS]
    table4 = [row for row in self_rows if row["method"] in ABLATION_NAMES]
    skeleton = [row for row in self_rows if row["method"] in SKELETON_METHODS]
    by_key = {(row["method"], row["steps"]): row for row in table3}
    teacher_full = by_key.get(("teacher", max(preset.teacher_eval_steps)))
    student_4 = by_key.get(("student", 4))
    teacher_4 = by_key.get(("teacher", 4))
    lines = [
        RESULTS_BEGIN,
        "## Bundled default model (SynthDance)",
        "",
        f"Produced by `{command}` on this machine's CPU ({os.cpu_count()} cores); every number below was measured "
        f"in that run, on the SynthDance test split ({rows[0]['num_videos']} videos of identities unseen in "
        f"training, {preset.resolution} px, frame 0 the reference, the other {rows[0]['num_frames'] // rows[0]['num_videos']} "
        "frames generated from their guidance). Flicker is shown with the ground truth's own flicker in brackets.",
        "",
        "### Table 3 form: teacher (DDIM + CFG) vs CoSeC-LCD student (LCM, no CFG)",
        "",
        f"The teacher runs at Champ's CFG {preset.teacher_guidance_scale:g} (`teacher`, the baseline of the targets) "
        f"and at the CFG ω = {preset.distillation_guidance_scale:g} that both distillation phases follow "
        f"(`{MATCHED_TEACHER}`): the guided ODE the student learnt, its like-for-like baseline. "
        f"`{UNDISTILLED_TEACHER}` is the teacher's D-UNet, not distilled at all, sampled at that ω with the "
        "student's LCMScheduler: what the distillation adds is the student's lead over it.",
        "",
        format_table(table3),
        f"### Table 4 form: ablation, {preset.ablation_eval_steps} steps, same budget and seed",
        "",
        *(["Each variant is distilled through both phases with the same steps, batches and seed; only the "
           "regulariser weights change (φ1 ETA, φ2 CoNS, λ temporal ETA).", "", format_table(table4)] if table4 else
          [f"Not run in this build: `{command} --ablation` distils the other rows (5 more distillation runs) and "
           "scores them.", ""]),
        *([f"### From the skeleton alone (`{SKELETON}` only)", "",
           "The same test videos animated from their DWPose skeleton alone, the other guidance types left out (the "
           "guidance encoder was trained with per-type dropout for this).", "", format_table(skeleton)]
          if skeleton else []),
        "### Appearance: does the output wear the reference?",
        "",
        "Scored inside the true person's regions (SynthDance's semantic map): person-region SSIM and L1, per-part "
        "and background colour error (ΔE*ab, CIE 1976) and its share of the error of a model that ignores the "
        "reference (each part in the split's mean colour), identity retrieval by colour signature among the split's "
        "identities, and on the reenactment split (video A's guidance, a frame of identity B as the reference, "
        "scored against A's motion in B's look) the swap ratio (ΔE to B ÷ ΔE to A's own look) and the spread of "
        f"the output over {preset.reference_frames} reference frames of B. The calibration rows come first: the "
        "truth, the teacher's VAE alone (the ceiling), a model that ignores the reference and one that ignores the "
        "pose (the reference frame as every output).",
        "",
        format_appearance_table([row for row in rows if row["method"] in (*TABLE3_METHODS, *ABLATION_NAMES,
                                                                           *SKELETON_METHODS)
                                 or row.get("steps") is None]) or "",
        "### Appearance targets",
        "",
        format_targets(appearance_targets(rows, preset.ablation_eval_steps, max(preset.teacher_eval_steps))),
    ]
    if comparisons:
        lines += [
            "### Paired differences, video by video",
            "",
            "Means over one small split move with the split far more than the difference between two methods on the "
            "same videos, so each comparison is the mean of the per-video differences in its metric, its standard "
            "error, and the number of videos on which the first method is better. The ablation rows are compared with "
            "plain LCD.",
            "",
            format_comparison_table(comparisons),
        ]
    speed_4 = next((row for row in speed or () if row["method"] == "student 4"), None)
    if speed:
        lines += [
            "### Speed, side by side",
            "",
            f"Every setting generates the first test video once untimed, then {speed[0]['repeats']} times, the "
            "settings interleaved in rotating order; the medians are compared (the Table-3 passes above run minutes "
            "apart, so their ratio also measures how busy the machine was in each).",
            "",
            format_speed_table(speed),
        ]
    if teacher_full and student_4:
        pass_ratio = teacher_full["seconds_per_frame"] / student_4["seconds_per_frame"]
        ssim_ratio = student_4["ssim"] / teacher_full["ssim"]
        lines += ["### Speed and targets", "", "| measure | value | target |", "|---|---:|---:|"]
        if speed_4:
            lines.append(f"| end-to-end time, teacher {teacher_full['steps']} steps + CFG / student 4 steps "
                         f"(side by side) | {speed_4['speedup']:.2f}× | ≥ 9× |")
        lines += [
            f"| the same from the Table-3 passes | {pass_ratio:.2f}× | |",
            f"| student 4-step SSIM / teacher {teacher_full['steps']}-step SSIM | {ssim_ratio:.4f} | ≥ 0.97 |",
        ]
        paired = student_4_against(comparisons, "teacher")
        if paired:
            lines.append(f"| student 4-step SSIM − teacher 4-step SSIM, per video | {format_difference(paired)}, "
                         f"better on {paired['better']} of {paired['num_videos']} videos | > 0 |")
        elif teacher_4:
            lines.append(f"| student 4-step SSIM − teacher 4-step SSIM | {student_4['ssim'] - teacher_4['ssim']:+.4f} | > 0 |")
        for label in (MATCHED_TEACHER, UNDISTILLED_TEACHER):
            matched = student_4_against(comparisons, label)
            if matched:
                lines.append(f"| the same against the {label} (CFG {preset.distillation_guidance_scale:g}), "
                             f"per video | {format_difference(matched)}, better on {matched['better']} of "
                             f"{matched['num_videos']} videos | |")
        lines.append("")
    lines += ["### Build time", ""]
    if not any(stage in timings for stage in TEACHER_STAGES):
        lines += ["This work dir was resumed from a finished `teacher/`, so the VAE and teacher stages did not run in "
                  "it; the table times the stages that did, and its total is theirs alone.", ""]
    lines += ["| stage | minutes |", "|---|---:|"]
    lines += [f"| {name} | {seconds / 60:.1f} |" for name, seconds in timings.items()]
    lines += [f"| **total** | **{sum(timings.values()) / 60:.1f}** |", "", RESULTS_END, ""]
    return "\n".join(lines)


def student_4_against(comparisons: list[dict], teacher: str) -> dict | None:
    """The paired comparison of the 4-step student with the 4-step row of ``teacher`` (a method label), if any."""
    return next((item for item in comparisons if (item["method"], item["steps"]) == ("student", 4)
                 and (item["baseline_method"], item["baseline_steps"]) == (teacher, 4)), None)


def write_results_section(path: Path, section: str) -> None:
    """Put ``section`` between this script's markers of ``path`` (appended when absent), keeping the rest; atomic."""
    write_marked_section(path, section, RESULTS_BEGIN, RESULTS_END)


