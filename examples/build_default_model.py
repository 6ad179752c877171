#!/usr/bin/env python
"""Build the bundled default model: SynthDance data → VAE → teacher (image, video) → CoSeC-LCD student → evaluation.

    python examples/build_default_model.py                      # the shipped models/, assets/demo, RESULTS.md
    python examples/build_default_model.py --preset smoke       # the same chain on toy sizes, in about a minute

One command, resumable: every stage writes a complete pipeline folder under ``--work_dir`` (``model_index.json``
last) and is skipped when that folder is complete; a stage cut off mid-way resumes from its latest checkpoint. The
stages call ``referencelcm synth``'s generator, ``examples/train_teacher.py`` and ``examples/train_cosec_lcd.py``
in subprocesses, exactly as a user would run them.

The distillation runs the paper's Table-4 ablation with one budget and one seed: plain consistency distillation
(ReferenceLCM), + ETA, + CoNS (spatial phase), + temporal ETA (temporal phase). Every variant goes through both
phases, so the rows differ only in their regulariser weights; the last one is the shipped student. The evaluation
scores the teacher (DDIM + CFG) and the students on the SynthDance test split (identities never seen in training)
and writes ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from referencelcm.evaluation import write_marked_section, write_text_atomically

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY_ROOT / "examples"
RESULTS_BEGIN = "<!-- build_default_model: begin (generated; edit the script, not this section) -->"
RESULTS_END = "<!-- build_default_model: end -->"
# Timing names of the stages that train the teacher; a work dir resumed from a finished teacher has none of them.
TEACHER_STAGES = ("VAE", "teacher, image stage", "teacher, video stage")
# The label of the teacher's rows at the distillation's CFG ω (Preset.distillation_guidance_scale).
MATCHED_TEACHER = "teacher at the distillation ω"
# The label of the teacher's D-UNet sampled with the student's LCMScheduler at that ω: no distillation at all, the
# baseline that shows what the distillation itself adds at the student's step counts.
UNDISTILLED_TEACHER = "teacher, LCM sampler (undistilled)"
# The methods of the Table-3 form (and of the quality-vs-steps plot), in table order.
TABLE3_METHODS = ("teacher", MATCHED_TEACHER, UNDISTILLED_TEACHER, "student")
# Arguments that change how a run saves, not what it learns: a resumed build may pass other values.
BOOKKEEPING_ARGUMENTS = frozenset({"checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint"})
# What a pipeline folder needs at inference; training leftovers (checkpoints, logs, validation videos) stay behind.
SHIPPED_ENTRIES = ("model_index.json", "README.md", "vae", "image_encoder", "feature_extractor", "reference_unet",
                   "denoising_unet", "guidance_encoder", "scheduler")


@dataclass(frozen=True)
class Preset:
    """Sizes and budgets of one build. ``model_config`` holds ``build_components`` arguments (the teacher's sizes,
    from ``examples/configs/``: ``default.json`` is the bundled model's, ``tiny.json`` the tests')."""

    resolution: int
    train_videos: int
    train_frames: int
    test_videos: int
    test_frames: int
    clip_frames: int
    model_config: dict
    vae: dict
    teacher_image: dict
    teacher_video: dict
    spatial: dict
    temporal: dict
    teacher_eval_steps: tuple[int, ...] = (2, 4, 8, 20)
    student_eval_steps: tuple[int, ...] = (1, 2, 4)
    ablation_eval_steps: int = 4
    teacher_guidance_scale: float = 3.5
    # Teacher CFG ω that both distillation phases follow (train_cosec_lcd.py --guidance_scale). Appendix C uses 2.5
    # then 1.5, but at this scale the teacher's SSIM falls as ω rises (4 steps on a seed-1 validation split of 24
    # videos: 0.599 / 0.597 / 0.590 / 0.582 / 0.563 at ω 1 / 1.5 / 2.5 / 3.5 / 5), so both phases take 1.5. The teacher
    # is also scored at this ω (``matched_teacher_eval_steps``): the ODE the student learnt, beside Champ's CFG.
    distillation_guidance_scale: float = 1.5
    matched_teacher_eval_steps: tuple[int, ...] = (4, 20)
    speed_repeats: int = 7
    # Reenactment pairs are also generated from this many frames of identity B's video (same guidance and noise), for
    # the reference-frame spread that ETA targets.
    reference_frames: int = 3
    # The VAE must pass evaluation.autoencoder_gate (max part-colour ratio, max person MAE) before the teacher trains
    # on it; None skips the check (toy sizes).
    vae_gate: tuple[float, float] | None = (0.15, 10.0)
    checkpointing_steps: int = 250


def read_model_config(name: str) -> dict:
    """Component sizes (``build_components`` arguments) from the shipped ``examples/configs/<name>``."""
    return json.loads((EXAMPLES / "configs" / name).read_text())


PRESETS = {
    # 64 px frames, 16 × 16 latents, a 2.7M-parameter D-UNet: the whole build fits 90 minutes on 2 cores. The guidance
    # encoders are kept narrow so that the D-UNet dominates inference time (measured: with (32, 64, 128) they cost
    # twice a D-UNet step per frame, which capped the teacher/student speed ratio near 5×).
    "default": Preset(
        resolution=64, train_videos=64, train_frames=32, test_videos=24, test_frames=17, clip_frames=8,
        model_config=read_model_config("default.json"),
        vae=dict(max_train_steps=1500, train_batch_size=8, learning_rate=1e-3),
        teacher_image=dict(max_train_steps=3600, train_batch_size=8, learning_rate=2e-4),
        teacher_video=dict(max_train_steps=400, train_batch_size=2, learning_rate=2e-4),
        # Distillation learning rates: 1e-5 / 5e-6 (appendix C: 1e-6 on SD1.5-sized models). On a seed-1 validation
        # split (24 videos) the student's 4-step SSIM rose from 0.5845 at 1e-4 / 5e-5 to 0.5898; 3e-4 or twice the
        # spatial steps scored lower (spatial phase alone: 0.5456, 0.5624 against 0.5733).
        spatial=dict(max_train_steps=800, train_batch_size=4, learning_rate=1e-5),
        temporal=dict(max_train_steps=150, train_batch_size=2, learning_rate=5e-6),
    ),
    # Toy sizes for the test suite: every stage runs, nothing is learnt.
    "smoke": Preset(
        resolution=32, train_videos=3, train_frames=6, test_videos=1, test_frames=4, clip_frames=3,
        model_config=read_model_config("tiny.json"),
        vae=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-3),
        teacher_image=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-4),
        teacher_video=dict(max_train_steps=2, train_batch_size=1, learning_rate=1e-4),
        spatial=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-4),
        temporal=dict(max_train_steps=1, train_batch_size=1, learning_rate=1e-4),
        teacher_eval_steps=(2,), student_eval_steps=(1, 2), ablation_eval_steps=2, matched_teacher_eval_steps=(2,),
        speed_repeats=1,
        checkpointing_steps=1,
        vae_gate=None,  # a 2-step VAE carries nothing; the gate's own test turns it on
    ),
}


@dataclass(frozen=True)
class Variant:
    """One row of the Table-4 ablation: regulariser weights (φ1, φ2 in Eq. 4; λ in Eq. 8)."""

    name: str
    eta_weight: float
    cons_weight: float
    temporal_eta_weight: float


# Appendix C's weights, added one at a time; the last row is the full CoSeC-LCD student that ships.
ABLATION = (
    Variant("ReferenceLCM (plain LCD)", 0.0, 0.0, 0.0),
    Variant("+ ETA (spatial)", 0.1, 0.0, 0.0),
    Variant("+ CoNS (spatial)", 0.1, 0.02, 0.0),
    Variant("+ temporal ETA (CoSeC-LCD)", 0.1, 0.02, 0.05),
)
ABLATION_NAMES = tuple(variant.name for variant in ABLATION)


@dataclass
class Build:
    """Where one build reads and writes, and the wall-clock seconds of the stages it ran (``timings``)."""

    preset: Preset
    work_dir: Path
    seed: int
    timings: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)  # the stage folders this invocation trained

    @property
    def train_data(self) -> Path:
        return self.work_dir / "data" / "train"

    @property
    def test_data(self) -> Path:
        return self.work_dir / "data" / "test"

    @property
    def reenact_data(self) -> Path:
        """Cross-identity pairs of the test identities: A's guidance, B's reference (appearance metrics)."""
        return self.work_dir / "data" / "reenact"

    def stage_dir(self, name: str) -> Path:
        return self.work_dir / name

    def spatial_dir(self, variant: Variant) -> Path:
        """A variant's spatial-phase folder, named by every setting it differs in: a changed ω or weight retrains."""
        return self.stage_dir(f"spatial_w{self.preset.distillation_guidance_scale:g}_eta{variant.eta_weight:g}"
                              f"_cons{variant.cons_weight:g}")

    def temporal_dir(self, variant: Variant) -> Path:
        spatial = self.spatial_dir(variant)
        return spatial.with_name(f"{spatial.name}_temporal{variant.temporal_eta_weight:g}")

    def timed(self, name: str, function, *args) -> None:
        print(f"\n=== {name} ===", flush=True)
        start = time.perf_counter()
        if function(*args) is False:  # skipped: the timing of the run that did the work stands
            return
        self.timings[name] = time.perf_counter() - start
        self.save_timings()

    def save_timings(self) -> None:
        path = self.work_dir / "timings.json"
        previous = json.loads(path.read_text()) if path.is_file() else {}
        previous.update(self.timings)
        write_text_atomically(path, json.dumps(previous, indent=2) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--work_dir", default=str(REPOSITORY_ROOT / "build" / "default-model"),
                        help="data, stage outputs, checkpoints and the evaluation (default: %(default)s)")
    parser.add_argument("--models_dir", default=str(REPOSITORY_ROOT / "models"),
                        help="where the teacher/ and student/ folders ship (default: %(default)s)")
    parser.add_argument("--assets_dir", default=str(REPOSITORY_ROOT / "assets"),
                        help="where the demo video ships, as demo/ (default: %(default)s)")
    parser.add_argument("--results", default=str(REPOSITORY_ROOT / "benchmarks" / "RESULTS.md"),
                        help="Markdown file whose generated section gets the tables (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# -- stages ------------------------------------------------------------------------------------------------------------


def is_complete(folder: Path) -> bool:
    """A stage's output folder is complete once ``model_index.json`` is there (training scripts write it last)."""
    return (folder / "model_index.json").is_file()


def generate_data(build: Build) -> None:
    from referencelcm.data.synthdance import generate_dataset

    preset = build.preset
    # generate_dataset skips videos already complete on disk, so an interrupted build resumes here too.
    generate_dataset(build.train_data, num_videos=preset.train_videos, num_frames=preset.train_frames,
                     resolution=preset.resolution, seed=build.seed, split="train")
    generate_dataset(build.test_data, num_videos=preset.test_videos, num_frames=preset.test_frames,
                     resolution=preset.resolution, seed=build.seed, split="test")
    generate_dataset(build.reenact_data, num_videos=max(preset.test_videos, 2), num_frames=preset.test_frames,
                     resolution=preset.resolution, seed=build.seed, split="reenact")


def run_script(build: Build, script: str, output: Path, settings: dict, extra: list[str]) -> bool:
    """``python examples/<script> …`` into ``output`` unless it is complete; resumes from its latest checkpoint."""
    argv = [sys.executable, str(EXAMPLES / script), "--train_data_dir", str(build.train_data),
            "--output_dir", str(output), "--resolution", str(build.preset.resolution), "--seed", str(build.seed),
            "--report_to", "none", "--checkpointing_steps", str(build.preset.checkpointing_steps),
            "--checkpoints_total_limit", "1", "--resume_from_checkpoint", "latest", *extra]
    for name, value in settings.items():
        argv += [f"--{name}", str(value)]
    if is_complete(output):
        check_logged_arguments(output, argv[2:])
        print(f"{output} is complete; skipped.")
        return False
    print("+ " + " ".join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)
    build.trained.append(output.name)
    return True


def check_logged_arguments(output: Path, arguments: list[str]) -> None:
    """Refuse a complete stage folder whose run logged other numeric settings than ``arguments`` (``--name value``
    pairs) ask for: the preset changed since, and reusing the folder would ship and score a stale model."""
    logged_path = output / "logs" / "config.json"
    if not logged_path.is_file():  # e.g. a shipped teacher copied in to resume from: nothing to compare with
        return
    logged = json.loads(logged_path.read_text())
    differences = []
    for flag, value in zip(arguments[::2], arguments[1::2]):
        name = flag.removeprefix("--")
        if name in BOOKKEEPING_ARGUMENTS or logged.get(name) is None:
            continue
        try:
            requested, used = float(value), float(logged[name])
        except (TypeError, ValueError):  # paths and names: a moved work dir must still resume
            continue
        if not math.isclose(requested, used, rel_tol=1e-9):
            differences.append(f"{name}={logged[name]} (asked: {value})")
    if differences:
        raise SystemExit(f"{output} is complete but was trained with {', '.join(differences)}. Delete that folder "
                         "(and the stages after it), or pass another --work_dir, to train it with these settings.")


def train_teacher(build: Build) -> None:
    preset = build.preset
    config_path = build.work_dir / "model_config.json"
    config_path.write_text(json.dumps(preset.model_config, indent=2) + "\n")
    vae, image, teacher = build.stage_dir("vae"), build.stage_dir("teacher_image"), build.stage_dir("teacher")
    if is_complete(teacher):  # the VAE and image-stage folders are only inputs to the teacher: not needed any more
        print(f"\n{teacher} is complete; the VAE and teacher stages are skipped.")
        return
    build.timed(TEACHER_STAGES[0], run_script, build, "train_teacher.py", vae, preset.vae,
                ["--stage", "vae", "--model_config", str(config_path)])
    check_vae_gate(build, vae)
    build.timed(TEACHER_STAGES[1], run_script, build, "train_teacher.py", image, preset.teacher_image,
                ["--stage", "image", "--pretrained_model", str(vae)])
    build.timed(TEACHER_STAGES[2], run_script, build, "train_teacher.py", teacher, preset.teacher_video,
                ["--stage", "video", "--pretrained_model", str(image), "--num_frames", str(preset.clip_frames),
                 "--model_config", str(config_path)])  # its motion_* keys size the new motion adapter


def check_vae_gate(build: Build, vae_dir: Path) -> None:
    """Stop the build when the trained VAE loses the person's colours (``evaluation.autoencoder_gate`` on the test
    split, written to ``vae/gate.json``): a teacher trained on it could not wear any reference."""
    from diffusers import AutoencoderKL

    from referencelcm.evaluation import autoencoder_gate, load_test_videos

    if build.preset.vae_gate is None:
        return
    max_part_ratio, max_person_mae = build.preset.vae_gate
    videos = load_test_videos(build.test_data, ["semantic_map"])
    gate = autoencoder_gate(AutoencoderKL.from_pretrained(vae_dir / "vae"), videos, max_part_ratio, max_person_mae)
    write_text_atomically(vae_dir / "gate.json", json.dumps(gate, indent=2) + "\n")
    print(gate["message"])
    if not gate["passed"]:
        raise SystemExit(f"{gate['message']}. The VAE in {vae_dir} would cap every later stage: change the preset's "
                         "VAE settings (sizes, steps) and delete that folder, then run the build again.")


def distill(build: Build) -> None:
    """Both CoSeC-LCD phases for every ablation variant; variants with the same spatial weights share phase 1."""
    preset, teacher = build.preset, str(build.stage_dir("teacher"))
    for variant in ABLATION:
        spatial = build.spatial_dir(variant)
        build.timed(f"distil {variant.name}: spatial", run_script, build, "train_cosec_lcd.py", spatial,
                    preset.spatial, ["--phase", "spatial", "--pretrained_teacher_model", teacher,
                                     "--guidance_scale", str(preset.distillation_guidance_scale),
                                     "--eta_weight", str(variant.eta_weight),
                                     "--cons_weight", str(variant.cons_weight)])
        build.timed(f"distil {variant.name}: temporal", run_script, build, "train_cosec_lcd.py",
                    build.temporal_dir(variant), preset.temporal,
                    ["--phase", "temporal", "--pretrained_teacher_model", teacher,
                     "--pretrained_student_model", str(spatial), "--num_frames", str(preset.clip_frames),
                     "--guidance_scale", str(preset.distillation_guidance_scale),
                     "--temporal_eta_weight", str(variant.temporal_eta_weight)])


def evaluate(build: Build) -> bool:
    """Table 3 (teacher vs student over steps) and Table 4 (ablation) on the test split, in one process."""
    import torch
    from diffusers import LCMScheduler

    from referencelcm import ReferenceLCMPipeline
    from referencelcm.evaluation import (
        COMPARED_METRICS,
        SpeedRun,
        calibration_rows,
        evaluate_model,
        load_test_videos,
        teacher_student_comparisons,
        time_side_by_side,
        write_plot,
        write_report,
    )

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
    student = load(build.temporal_dir(ABLATION[-1]))
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
            rows += evaluate_model(student, None, preset.student_eval_steps, 1.0, "student", **common)
        else:
            rows += evaluate_model(student, None, [preset.ablation_eval_steps], 1.0, "student", **common)
        for variant in ABLATION:
            rows += evaluate_model(load(build.temporal_dir(variant)), None, [preset.ablation_eval_steps], 1.0,
                                   variant.name, **common)
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


def ablation_comparisons(rows: list[dict]) -> list[dict]:
    """Each ablation row against plain LCD, per split, on the metrics the CoSeC terms target: SSIM and part ΔE on the
    self split; on the reenactment split part ΔE (CoNS: follow the new identity) and the reference-frame spread
    (ETA). Flicker (temporal ETA) has no direction to pair on; the tables show it beside the ground truth's."""
    from referencelcm.evaluation import paired_difference

    comparisons = []
    for split, keys in (("self", ("ssim", "part_delta_e")), ("reenact", ("part_delta_e", "reference_spread"))):
        ablation = [row for row in rows if row["method"] in ABLATION_NAMES and row["split"] == split]
        for key in keys:
            comparisons += [{**paired_difference(row, ablation[0], key), "split": split} for row in ablation[1:]
                            if key in row["per_video"] and key in ablation[0]["per_video"]]
    return comparisons


def ship(build: Build, models_dir: Path, assets_dir: Path, results: Path, command: str) -> None:
    """Copy the teacher, the full student and one test video into the repository; write the RESULTS.md section."""
    copy_folder(build.stage_dir("teacher"), models_dir / "teacher", SHIPPED_ENTRIES)
    copy_folder(build.temporal_dir(ABLATION[-1]), models_dir / "student", SHIPPED_ENTRIES)
    demo = sorted(path for path in build.test_data.iterdir() if path.is_dir() and not path.name.startswith("."))[0]
    copy_folder(demo, assets_dir / "demo", tuple(entry.name for entry in demo.iterdir()))
    report = json.loads((build.stage_dir("evaluation") / "report.json").read_text())
    timings = json.loads((build.work_dir / "timings.json").read_text())
    write_results_section(results, results_markdown(report, timings, build.preset, command))


def copy_folder(source: Path, destination: Path, entries: tuple[str, ...]) -> None:
    """Replace ``destination`` with ``source``'s ``entries`` through a temporary sibling folder (never half-copied)."""
    temporary = destination.with_name(f".tmp-{destination.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name in entries:
        path = source / name
        if path.is_dir():
            shutil.copytree(path, temporary / name)
        elif path.is_file():
            shutil.copy2(path, temporary / name)
    if destination.exists():
        shutil.rmtree(destination)
    os.replace(temporary, destination)


# -- RESULTS.md --------------------------------------------------------------------------------------------------------


def results_markdown(report: dict, timings: dict[str, float], preset: Preset, command: str) -> str:
    """The generated section from ``report.json``: Table 3 and 4 forms, the speed ratio, the targets, the timings."""
    from referencelcm.evaluation import (
        format_comparison_table,
        format_difference,
        format_speed_table,
        format_table,
    )

    from referencelcm.evaluation import format_appearance_table
    from referencelcm.targets import appearance_targets, format_targets

    rows, speed, comparisons = report["rows"], report.get("speed"), report.get("comparisons", [])
    self_rows = [row for row in rows if row.get("split", "self") == "self"]
    table3 = [row for row in self_rows if row["method"] in TABLE3_METHODS]
    table4 = [row for row in self_rows if row["method"] in ABLATION_NAMES]
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
        "Each variant is distilled through both phases with the same steps, batches and seed; only the regulariser "
        "weights change (φ1 ETA, φ2 CoNS, λ temporal ETA).",
        "",
        format_table(table4),
        "### Appearance: does the output wear the reference?",
        "",
        "Scored inside the true person's regions (SynthDance's semantic map): person-region SSIM and L1, per-part "
        "and background colour error (ΔE*ab, CIE 1976) and its share of the error of a model that ignores the "
        "reference (each part in the split's mean colour), identity retrieval by colour signature among the split's "
        "identities, and on the reenactment split (video A's guidance, a frame of identity B as the reference, "
        "scored against A's motion in B's look) the swap ratio (ΔE to B ÷ ΔE to A's own look) and the spread of "
        f"the output over {preset.reference_frames} reference frames of B. The calibration rows come first: the "
        "truth, the teacher's VAE alone (the ceiling), and the model that ignores the reference.",
        "",
        format_appearance_table([row for row in rows if row["method"] in (*TABLE3_METHODS, *ABLATION_NAMES)
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
                         f"(side by side) | {speed_4['speedup']:.2f}× | ≥ 8× |")
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    build = Build(PRESETS[args.preset], Path(args.work_dir), args.seed)
    build.work_dir.mkdir(parents=True, exist_ok=True)
    command = "python examples/build_default_model.py" + (f" --preset {args.preset}" if args.preset != "default" else "")

    build.timed("SynthDance data", generate_data, build)
    train_teacher(build)
    distill(build)
    build.timed("evaluation", evaluate, build)
    ship(build, Path(args.models_dir), Path(args.assets_dir), Path(args.results), command)
    print(f"\nshipped {args.models_dir}/teacher, {args.models_dir}/student, {args.assets_dir}/demo; "
          f"tables in {args.results}; {sum(build.timings.values()) / 60:.1f} minutes in this run.")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, subprocess.CalledProcessError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)
