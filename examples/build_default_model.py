#!/usr/bin/env python
"""Build the bundled default model: SynthDance data → VAE → teacher (image, video) → CoSeC-LCD student → evaluation.

    python examples/build_default_model.py                      # the shipped models/, assets/demo, RESULTS.md
    python examples/build_default_model.py --preset smoke       # the same chain on toy sizes, in about a minute

One command, resumable: every stage writes a complete pipeline folder under ``--work_dir`` (``model_index.json``
last) and is skipped when that folder is complete; a stage cut off mid-way resumes from its latest checkpoint. The
stages call ``referencelcm synth``'s generator, ``examples/train_teacher.py`` and ``examples/train_cosec_lcd.py``
in subprocesses, exactly as a user would run them.

The distillation trains the shipped CoSeC-LCD student (spatial phase with ETA and CoNS, temporal phase with temporal
ETA). ``--ablation`` adds the paper's Table-4 rows with the same budget and seed: plain consistency distillation
(ReferenceLCM), + ETA, + CoNS (spatial phase), + temporal ETA (temporal phase); every variant goes through both
phases, so the rows differ only in their regulariser weights, and the last one is the shipped student (trained once
for both). The evaluation scores the teacher (DDIM + CFG) and the students on the SynthDance test and reenactment
splits (identities never seen in training) and writes ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from referencelcm.arguments import run_main, write_text_atomically
from referencelcm.build_report import evaluate_build, results_markdown, write_results_section
from referencelcm.training.build import (
    ABLATION,
    SHIPPED_ENTRIES,
    TEACHER_STAGES,
    Build,
    Preset,
    check_logged_arguments,
    copy_folder,
    is_complete,
    stage_arguments,
)

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = REPOSITORY_ROOT / "examples"


def read_model_config(name: str) -> dict:
    """Component sizes (``build_components`` arguments) from the shipped ``examples/configs/<name>``."""
    return json.loads((EXAMPLES / "configs" / name).read_text())


PRESETS = {
    # 128 px frames, 32 × 32 latents of 16 channels (64 px models could not wear the reference: their VAE alone lost
    # the colours). Every number below was measured at this size (benchmarks/RESULTS.md, the 128 px sections): the
    # VAE passes the colour gate only with its person-weighted loss on 32 px crops; the image encoder learns the part
    # colours from 512 identities (64 are learnt by heart); the image stage needs the person weight (retrieval 58 →
    # 88 %) and lr 1e-3 (part ΔE ÷ ignoring 0.86 → 0.81 and 0.75 → 0.69 over 3e-4). The distillation keeps the 64 px
    # settings. The first build took 123 minutes on 2 cores: VAE 19, image encoder 7, image stage 47, video stage 7,
    # spatial 10 and temporal phase 8, evaluation 24.
    "default": Preset(
        resolution=128, train_videos=512, train_frames=8, test_videos=24, test_frames=9, clip_frames=8,
        model_config=read_model_config("default.json"),
        vae=dict(max_train_steps=9500, train_batch_size=16, learning_rate=2e-3, lr_scheduler="cosine",
                 lr_warmup_steps=100, vae_crop_size=32, vae_person_weight=8),
        image_encoder=dict(max_train_steps=3000, train_batch_size=64, learning_rate=1e-3, lr_scheduler="cosine",
                           lr_warmup_steps=100),
        teacher_image=dict(max_train_steps=3000, train_batch_size=8, learning_rate=1e-3, lr_scheduler="cosine",
                           lr_warmup_steps=100, person_loss_weight=8, guidance_type_dropout=0.1),
        # 1,500 more image-stage steps on a fresh cosine from 3e-4: −0.96 ± 0.15 part ΔE (self split) and −0.92 ± 0.24
        # (reenactment), SSIM +0.06, on seed-1 splits (benchmarks/RESULTS.md, "Annealing the image stage").
        teacher_image_anneal=dict(max_train_steps=1500, train_batch_size=8, learning_rate=3e-4, lr_scheduler="cosine",
                                  lr_warmup_steps=50, person_loss_weight=8, guidance_type_dropout=0.1),
        # 1,000 steps more on compilations of two dances per identity, so that about three references in four
        # (74.8 % counted) show another dance than the target. Pilot (seed-1 splits): −3.80 ± 0.86 part ΔE in
        # reenactment against the same run on single dances, +1.07 ± 0.27 on the self split. The rebuilt teacher on
        # fresh splits (seed 2, paired, 20 steps + CFG): −4.83 ± 0.77 in reenactment; part ΔE ÷ ignoring 0.480 →
        # 0.457 self, 0.798 → 0.666 reenactment, swap 0.522 → 0.434 (seeds 2–3; benchmarks/RESULTS.md, "The
        # teacher's image stage on dance compilations").
        teacher_image_dances=dict(max_train_steps=1000, train_batch_size=8, learning_rate=3e-4, lr_scheduler="cosine",
                                  lr_warmup_steps=50, person_loss_weight=8, guidance_type_dropout=0.1),
        teacher_video=dict(max_train_steps=400, train_batch_size=2, learning_rate=2e-4, person_loss_weight=8,
                           guidance_type_dropout=0.1),
        # Distillation learning rates: 1e-5 / 5e-6 (appendix C: 1e-6 on SD1.5-sized models). At 64 px, on a seed-1
        # validation split (24 videos) the student's 4-step SSIM rose from 0.5845 at 1e-4 / 5e-5 to 0.5898; 3e-4 or
        # twice the spatial steps scored lower (spatial phase alone: 0.5456, 0.5624 against 0.5733).
        spatial=dict(max_train_steps=800, train_batch_size=4, learning_rate=1e-5),
        temporal=dict(max_train_steps=150, train_batch_size=2, learning_rate=5e-6),
        cache_frames=True,
    ),
    # Toy sizes for the test suite: every stage runs, nothing is learnt.
    "smoke": Preset(
        resolution=32, train_videos=3, train_frames=6, test_videos=1, test_frames=4, clip_frames=3,
        model_config={**read_model_config("tiny.json"), "reference_locality": 0.25},  # as the default: with the prior
        vae=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-3),
        # with guidance-type dropout, as the 128 px teacher: the evaluation's skeleton-only rows run
        teacher_image=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-4, guidance_type_dropout=0.1),
        teacher_image_anneal=dict(max_train_steps=1, train_batch_size=2, learning_rate=1e-5, guidance_type_dropout=0.1),
        teacher_image_dances=dict(max_train_steps=1, train_batch_size=2, learning_rate=1e-5, guidance_type_dropout=0.1),
        teacher_video=dict(max_train_steps=2, train_batch_size=1, learning_rate=1e-4, guidance_type_dropout=0.1),
        spatial=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-4),
        temporal=dict(max_train_steps=1, train_batch_size=1, learning_rate=1e-4),
        teacher_eval_steps=(2,), student_eval_steps=(1, 2), ablation_eval_steps=2, matched_teacher_eval_steps=(2,),
        speed_repeats=1,
        checkpointing_steps=1,
        vae_gate=None,  # a 2-step VAE carries nothing; the gate's own test turns it on
        image_encoder=dict(max_train_steps=2, train_batch_size=2, learning_rate=1e-3),
        image_encoder_gate=None,  # nor does a 2-step image encoder
        cache_frames=True,
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="default")
    parser.add_argument("--work_dir", default=None,
                        help="data, stage outputs, checkpoints and the evaluation (default: build/<preset>-model)")
    parser.add_argument("--models_dir", default=str(REPOSITORY_ROOT / "models"),
                        help="where the teacher/ and student/ folders ship (default: %(default)s)")
    parser.add_argument("--assets_dir", default=str(REPOSITORY_ROOT / "assets"),
                        help="where the demo video ships, as demo/ (default: %(default)s)")
    parser.add_argument("--results", default=str(REPOSITORY_ROOT / "benchmarks" / "RESULTS.md"),
                        help="Markdown file whose generated section gets the tables (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ablation", action="store_true",
                        help="also distil and score the other Table-4 rows (plain LCD, + ETA, + CoNS): 5 more "
                             "distillation runs; a finished build resumes into it")
    args = parser.parse_args(argv)
    if args.work_dir is None:
        args.work_dir = str(REPOSITORY_ROOT / "build" / f"{args.preset}-model")
    return args


# -- stages ------------------------------------------------------------------------------------------------------------


def generate_data(build: Build) -> bool:
    """The three SynthDance splits (and the training identities' dance compilations when the preset trains on them);
    ``False`` (untimed) when a run before wrote them all (``index.json`` comes last)."""
    from referencelcm.data.synthdance import generate_dataset

    preset = build.preset
    splits = (build.train_data, build.test_data, build.reenact_data)
    written = all((folder / "index.json").is_file() for folder in splits)
    # generate_dataset skips videos already complete on disk, so an interrupted build resumes here too.
    generate_dataset(build.train_data, num_videos=preset.train_videos, num_frames=preset.train_frames,
                     resolution=preset.resolution, seed=build.seed, split="train")
    generate_dataset(build.test_data, num_videos=preset.test_videos, num_frames=preset.test_frames,
                     resolution=preset.resolution, seed=build.seed, split="test")
    generate_dataset(build.reenact_data, num_videos=max(preset.test_videos, 2), num_frames=preset.test_frames,
                     resolution=preset.resolution, seed=build.seed, split="reenact")
    if preset.teacher_image_dances is not None:
        written = written and (build.dances_data / "index.json").is_file()
        generate_dataset(build.dances_data, num_videos=preset.train_videos, num_frames=preset.train_frames,
                         resolution=preset.resolution, seed=build.seed, split="train", dances=preset.dances)
    return not written


def run_script(
    build: Build, script: str, output: Path, settings: dict, extra: list[str], train_data: Path | None = None
) -> bool:
    """``python examples/<script> …`` into ``output`` unless it is complete; resumes from its latest checkpoint."""
    argv = [sys.executable, str(EXAMPLES / script), *stage_arguments(build, output, settings, extra, train_data)]
    if is_complete(output):
        check_logged_arguments(output, argv[2:])
        print(f"{output} is complete; skipped.")
        return False
    print("+ " + " ".join(argv[1:]), flush=True)
    subprocess.run(argv, check=True)
    build.trained.append(output.name)
    return True


def train_teacher(build: Build) -> None:
    preset = build.preset
    config_path = build.work_dir / "model_config.json"
    config_path.write_text(json.dumps(preset.model_config, indent=2) + "\n")
    vae, image, teacher = build.stage_dir("vae"), build.stage_dir("teacher_image"), build.stage_dir("teacher")
    if is_complete(teacher):  # the earlier stages' folders are only inputs to the teacher: not needed any more
        print(f"\n{teacher} is complete; the VAE and teacher stages are skipped.")
        return
    build.timed(TEACHER_STAGES[0], run_script, build, "train_teacher.py", vae, preset.vae,
                ["--stage", "vae", "--model_config", str(config_path), *preset.switches])
    check_vae_gate(build, vae)
    image_start = vae
    if preset.image_encoder is not None:
        image_start = build.stage_dir("image_encoder")
        build.timed(TEACHER_STAGES[1], run_script, build, "train_teacher.py", image_start, preset.image_encoder,
                    ["--stage", "image_encoder", "--pretrained_model", str(vae), *preset.switches])
        check_image_encoder_gate(build, image_start)
    build.timed(TEACHER_STAGES[2], run_script, build, "train_teacher.py", image, preset.teacher_image,
                ["--stage", "image", "--pretrained_model", str(image_start), *preset.switches])
    if preset.teacher_image_anneal is not None:
        annealed = build.stage_dir("teacher_image_anneal")
        build.timed(TEACHER_STAGES[3], run_script, build, "train_teacher.py", annealed, preset.teacher_image_anneal,
                    ["--stage", "image", "--pretrained_model", str(image), *preset.switches])
        image = annealed
    if preset.teacher_image_dances is not None:
        dances = build.stage_dir("teacher_image_dances")
        build.timed(TEACHER_STAGES[4], run_script, build, "train_teacher.py", dances, preset.teacher_image_dances,
                    ["--stage", "image", "--pretrained_model", str(image), *preset.switches], build.dances_data)
        image = dances
    # --model_config again: its motion_* keys size the video stage's new motion adapter
    build.timed(TEACHER_STAGES[5], run_script, build, "train_teacher.py", teacher, preset.teacher_video,
                ["--stage", "video", "--pretrained_model", str(image), "--num_frames", str(preset.clip_frames),
                 "--model_config", str(config_path), *preset.switches])


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
    stop_unless_passed(gate, vae_dir, "The VAE", "VAE settings (sizes, steps)")


def check_image_encoder_gate(build: Build, folder: Path) -> None:
    """Stop the build when the trained image encoder's embedding does not carry the person's part colours
    (``evaluation.image_encoder_probe``, fit on up to 64 training videos, scored on the test split; written to
    ``image_encoder/gate.json``)."""
    from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

    from referencelcm.evaluation import image_encoder_probe, load_test_videos

    if build.preset.image_encoder_gate is None:
        return
    fit = load_test_videos(build.train_data, ["semantic_map"], num_videos=64, max_frames=8)
    test = load_test_videos(build.test_data, ["semantic_map"])
    gate = image_encoder_probe(CLIPVisionModelWithProjection.from_pretrained(folder / "image_encoder"),
                               CLIPImageProcessor.from_pretrained(folder / "feature_extractor"), fit, test,
                               build.preset.image_encoder_gate)
    stop_unless_passed(gate, folder, "The image encoder", "image-encoder settings (sizes, steps)")


def stop_unless_passed(gate: dict, folder: Path, what: str, settings: str) -> None:
    """Write ``gate`` to ``folder/gate.json``, print its message, and stop the build when it failed."""
    write_text_atomically(folder / "gate.json", json.dumps(gate, indent=2) + "\n")
    print(gate["message"])
    if not gate["passed"]:
        raise SystemExit(f"{gate['message']}. {what} in {folder} would cap every later stage: change the preset's "
                         f"{settings} and delete that folder, then run the build again.")


def distill(build: Build) -> None:
    """Both CoSeC-LCD phases for every variant of the build; variants with the same spatial weights share phase 1."""
    preset, teacher = build.preset, str(build.stage_dir("teacher"))
    for variant in build.variants:
        spatial = build.spatial_dir(variant)
        build.timed(f"distil {variant.name}: spatial", run_script, build, "train_cosec_lcd.py", spatial,
                    preset.spatial, ["--phase", "spatial", "--pretrained_teacher_model", teacher,
                                     "--guidance_scale", str(preset.distillation_guidance_scale),
                                     "--eta_weight", str(variant.eta_weight),
                                     "--cons_weight", str(variant.cons_weight), *preset.switches])
        build.timed(f"distil {variant.name}: temporal", run_script, build, "train_cosec_lcd.py",
                    build.temporal_dir(variant), preset.temporal,
                    ["--phase", "temporal", "--pretrained_teacher_model", teacher,
                     "--pretrained_student_model", str(spatial), "--num_frames", str(preset.clip_frames),
                     "--guidance_scale", str(preset.distillation_guidance_scale),
                     "--temporal_eta_weight", str(variant.temporal_eta_weight), *preset.switches])


def ship(build: Build, models_dir: Path, assets_dir: Path, results: Path, command: str) -> None:
    """Copy the teacher, the full student and one test video into the repository; write the RESULTS.md section."""
    copy_folder(build.stage_dir("teacher"), models_dir / "teacher", SHIPPED_ENTRIES)
    copy_folder(build.temporal_dir(ABLATION[-1]), models_dir / "student", SHIPPED_ENTRIES)
    demo = sorted(path for path in build.test_data.iterdir() if path.is_dir() and not path.name.startswith("."))[0]
    copy_folder(demo, assets_dir / "demo", tuple(entry.name for entry in demo.iterdir()))
    report = json.loads((build.stage_dir("evaluation") / "report.json").read_text())
    timings = json.loads((build.work_dir / "timings.json").read_text())
    write_results_section(results, results_markdown(report, timings, build.preset, command))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    build = Build(PRESETS[args.preset], Path(args.work_dir), args.seed, ablation=args.ablation)
    build.work_dir.mkdir(parents=True, exist_ok=True)
    command = "python examples/build_default_model.py" + (f" --preset {args.preset}" if args.preset != "default" else "")
    command += " --ablation" if args.ablation else ""

    build.timed("SynthDance data", generate_data, build)
    train_teacher(build)
    distill(build)
    build.timed("evaluation", evaluate_build, build)
    ship(build, Path(args.models_dir), Path(args.assets_dir), Path(args.results), command)
    print(f"\nshipped {args.models_dir}/teacher, {args.models_dir}/student, {args.assets_dir}/demo; "
          f"tables in {args.results}; {sum(build.timings.values()) / 60:.1f} minutes in this run.")
    return 0


if __name__ == "__main__":
    run_main(main, errors=(ValueError, FileNotFoundError, subprocess.CalledProcessError))
