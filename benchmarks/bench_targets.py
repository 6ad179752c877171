"""The bundled models' appearance targets on fresh SynthDance splits: one row per split, then the targets pooled.

    python benchmarks/bench_targets.py [--seeds 2 3 4 5 6] [--num_videos 24] [--results benchmarks/RESULTS.md]

``examples/build_default_model.py`` scores the models on one test split (seed 0). A split drawn with another seed
has other identities, motions and noise, and on 24 videos a difference between two models moves with the split by
about its own size, so the targets (:mod:`referencelcm.targets`) are checked here on several. For each seed two
splits are generated: the test split (identities disjoint from training; each video animated from its own frame 0)
and the reenactment split of the same identities (``referencelcm synth --split reenact``: video A's guidance with a
frame of identity B as the reference, scored against A's motion in B's appearance). The teacher runs at ``--steps``
and ``--teacher_steps`` with its CFG, the student at ``--steps``, video ``i`` from the noise of ``seed + i`` (as in
the build). Every split also gets its calibration rows (the student's VAE reconstruction, and a model that ignores
the reference). Seed 1 is left out by default: it was the validation split on which build settings were chosen.

Prints one row per split and the targets over all splits pooled, and writes them to ``--results`` between this
script's markers (``--no_write`` only prints). The tests run it on tiny models only; five real seeds take about an
hour on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from pathlib import Path

import torch

from referencelcm import ReferenceLCMPipeline
from referencelcm.data.synthdance import FORMAT_VERSION, FORMAT_VERSIONS, generate_dataset
from referencelcm.evaluation import (
    VAE_RECONSTRUCTION,
    baseline_ratio,
    calibration_rows,
    evaluate_model,
    format_difference,
    load_test_videos,
    paired_difference,
    swap_ratio,
    write_marked_section,
)
from referencelcm.targets import REENACT, appearance_targets, format_targets

REPOSITORY_ROOT = Path(__file__).resolve().parents[1]
RESULTS_BEGIN = "<!-- bench_targets: begin (generated; edit the script, not this section) -->"
RESULTS_END = "<!-- bench_targets: end -->"
SPLITS = {"self": "test", REENACT: REENACT}  # row label → `referencelcm synth --split`


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default=str(REPOSITORY_ROOT / "models" / "teacher"), help="teacher folder")
    parser.add_argument("--student", default=str(REPOSITORY_ROOT / "models" / "student"), help="student folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3, 4, 5, 6], help="one test split per seed")
    parser.add_argument("--num_videos", type=int, default=24, help="videos per split")
    parser.add_argument("--num_frames", type=int, default=17, help="frames per video (frame 0 is the reference)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="frame size of the splits (default: the teacher VAE's sample_size, the size it learnt)")
    parser.add_argument("--format_version", type=int, choices=FORMAT_VERSIONS, default=FORMAT_VERSION,
                        help="SynthDance format of the splits: the framing the models were trained on")
    parser.add_argument("--steps", type=int, default=4, help="the student's steps, and the teacher's to beat")
    parser.add_argument("--teacher_steps", type=int, default=20, help="the teacher's reference number of steps")
    parser.add_argument("--guidance_scale", type=float, default=3.5, help="the teacher's CFG scale")
    parser.add_argument("--data_dir", default=None,
                        help="keep the splits here as seed_<N>/ and reuse them (default: a temporary folder)")
    parser.add_argument("--results", default=str(REPOSITORY_ROOT / "benchmarks" / "RESULTS.md"))
    parser.add_argument("--no_write", action="store_true", help="print the table only")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--no_progress", action="store_true")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f"--seeds must be distinct (one split each); got {args.seeds}.")
    if args.num_videos < 2:
        parser.error(f"--num_videos must be at least 2 (retrieval and reenactment pairs need two identities); "
                     f"got {args.num_videos}.")
    for name in ("steps", "teacher_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1; got {getattr(args, name)}.")
    if args.num_frames < 3:
        parser.error(f"--num_frames must be at least 3 (frame 0 is the reference, flicker needs two more); "
                     f"got {args.num_frames}.")
    for name in ("teacher", "student"):
        if not (Path(getattr(args, name)) / "model_index.json").is_file():
            parser.error(f"--{name} must be a pipeline folder with a model_index.json; got {getattr(args, name)!r}.")
    return args


def split_folder(args: argparse.Namespace, root: Path, seed: int, kind: str) -> Path:
    """The ``kind`` split of ``seed``: generated, or reused from ``--data_dir`` when its index.json matches."""
    folder = root / f"seed_{seed}" / kind
    split = SPLITS[kind]
    if not folder.exists():
        return generate_dataset(folder, num_videos=args.num_videos, num_frames=args.num_frames,
                                resolution=args.resolution, seed=seed, split=split, progress=not args.no_progress,
                                version=args.format_version)
    try:
        index = json.loads((folder / "index.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SystemExit(f"{folder} is not a SynthDance split ({error}): remove it or pass another --data_dir.")
    wanted = {"seed": seed, "split": split, "num_frames": args.num_frames, "resolution": args.resolution,
              "format_version": args.format_version}
    found = {key: index.get(key) for key in wanted}
    found["num_videos"], wanted["num_videos"] = len(index.get("videos", [])), args.num_videos
    if found != wanted:
        differences = ", ".join(f"{key}={found[key]} (asked: {value})" for key, value in wanted.items()
                                if found[key] != value)
        raise SystemExit(f"{folder} was made with other settings: {differences}. Remove it or pass another --data_dir.")
    return folder


def score_split(args: argparse.Namespace, teacher, student, folder: Path, seed: int) -> list[dict]:
    """Calibration rows, the teacher at ``--steps`` and ``--teacher_steps`` (CFG) and the student at ``--steps``."""
    videos = load_test_videos(folder, teacher.guidance_types)
    common = dict(videos=videos, seed=seed, progress=not args.no_progress, warmup=False)
    rows = [row for row in calibration_rows(videos, student.vae) if row["method"] != "ground truth"]
    rows += evaluate_model(teacher, None, sorted({args.steps, args.teacher_steps}), args.guidance_scale, "teacher",
                           **common)
    rows += evaluate_model(student, None, [args.steps], 1.0, "student", **common)
    return rows


def split_line(args: argparse.Namespace, seed: int | str, rows: list[dict]) -> str:
    """One Markdown row of a split: part ΔE ÷ ignoring, retrieval, swap, the paired student − teacher, SSIM."""
    by_key = {(row["method"], row["steps"]): row for row in rows}
    teacher_most = by_key[("teacher", args.teacher_steps)]
    teacher_same, student = by_key[("teacher", args.steps)], by_key[("student", args.steps)]
    vae = by_key[(VAE_RECONSTRUCTION, None)]
    comparison = paired_difference(student, teacher_same, "part_delta_e")

    def ratio(row: dict) -> str:
        return f"{baseline_ratio(rows, row):.3f}"

    def swap(row: dict) -> str:
        value = swap_ratio(row.get("per_video", {}))
        return "–" if math.isnan(value) else f"{value:.3f}"

    cells = [
        str(seed), student["split"], str(student["num_videos"]), ratio(vae), ratio(teacher_most), ratio(teacher_same),
        ratio(student), f"{100 * teacher_most['retrieval']:.0f}% / {100 * student['retrieval']:.0f}%",
        f"{swap(teacher_most)} / {swap(student)}",
        f"{format_difference(comparison)} ({comparison['better']} of {comparison['num_videos']})",
        f"{teacher_most['ssim']:.4f} / {student['ssim']:.4f}",
    ]
    return "| " + " | ".join(cells) + " |"


def table_header(args: argparse.Namespace) -> list[str]:
    steps, most = args.steps, args.teacher_steps
    return [
        f"| seed | split | videos | part ΔE ÷ ignoring: VAE | teacher {most} | teacher {steps} | student {steps} | "
        f"retrieval teacher {most} / student {steps} | swap teacher {most} / student {steps} | "
        f"student {steps} − teacher {steps} part ΔE (better on) | SSIM teacher {most} / student {steps} |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]


def shown_path(path: str) -> str:
    """``path`` relative to the repository when it lies inside it (RESULTS.md is read there), else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPOSITORY_ROOT)) if resolved.is_relative_to(REPOSITORY_ROOT) else path


def results_markdown(args: argparse.Namespace, per_split: dict[tuple[int, str], list[dict]], minutes: float) -> str:
    """The section for RESULTS.md: one row per split, then every target on all splits of a kind pooled."""
    seeds = list(dict.fromkeys(seed for seed, _ in per_split))
    all_rows = [row for rows in per_split.values() for row in rows]
    targets = appearance_targets(all_rows, args.steps, args.teacher_steps)
    met = sum(bool(item["met"]) for item in targets)
    seeds_text = " ".join(map(str, seeds))
    format_flag = "" if args.format_version == FORMAT_VERSION else f" --format_version {args.format_version}"
    lines = [
        RESULTS_BEGIN,
        "## The targets on fresh test splits",
        "",
        f"Produced by `python benchmarks/bench_targets.py --seeds {seeds_text}{format_flag}` on this machine's "
        f"CPU ({os.cpu_count()} cores) in {minutes:.1f} minutes, with `{shown_path(args.teacher)}` and "
        f"`{shown_path(args.student)}`. Each seed draws a SynthDance test split ({args.num_videos} videos of "
        f"unseen identities, {args.resolution} px, SynthDance format {args.format_version}, {args.num_frames - 1} "
        "generated frames each) and the reenactment split of the same identities (video A's guidance, a frame of "
        "identity B as the reference); video i starts "
        f"from the noise of seed + i. The teacher runs with CFG {args.guidance_scale:g}, the student without. "
        "Part ΔE ÷ ignoring is the per-part colour error (ΔE*ab) over that of a model that paints each part in the "
        "split's mean colour; swap is the error to B's appearance over the error to A's own.",
        "",
        *table_header(args),
        *(split_line(args, seed, rows) for (seed, _), rows in per_split.items()),
        "",
        f"### Targets, all {len(seeds)} seeds pooled",
        "",
        format_targets(targets),
        f"{met} of {len(targets)} targets met.",
        "",
        RESULTS_END,
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    teacher = ReferenceLCMPipeline.from_pretrained(args.teacher)
    student = ReferenceLCMPipeline.from_pretrained(args.student)
    for pipe in (teacher, student):
        pipe.set_progress_bar_config(disable=True)
    if set(teacher.guidance_types) != set(student.guidance_types):
        raise SystemExit(f"the teacher reads {teacher.guidance_types} and the student {student.guidance_types}: "
                         "they must take the same guidance types.")
    if args.resolution is None:
        args.resolution = int(teacher.vae.config.sample_size)
    with tempfile.TemporaryDirectory(prefix="bench-targets-") as temporary:
        root = Path(args.data_dir) if args.data_dir else Path(temporary)
        per_split = {}
        print("\n".join(table_header(args)), flush=True)
        for seed in args.seeds:
            for kind in SPLITS:
                rows = score_split(args, teacher, student, split_folder(args, root, seed, kind), seed)
                per_split[(seed, kind)] = rows
                print(split_line(args, seed, rows), flush=True)
    section = results_markdown(args, per_split, (time.perf_counter() - start) / 60)
    print(section)
    if not args.no_write:
        write_marked_section(args.results, section, RESULTS_BEGIN, RESULTS_END)
        print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
