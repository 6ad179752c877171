"""The bundled default model's build (``examples/build_default_model.py``, docs/design.md §8): its settings
(:class:`Preset`), the CoSeC-LCD ablation it distils (:class:`Variant`, :data:`ABLATION`), where it reads and writes
(:class:`Build`), and the bookkeeping that makes it resumable: a stage's folder is complete once its
``model_index.json`` is there (:func:`is_complete`), a complete folder trained with other numbers than the preset
asks for stops the build (:func:`check_logged_arguments`), and shipped folders are replaced whole
(:func:`copy_folder`). The stages run the training scripts with :func:`stage_arguments`; the evaluation and the
``benchmarks/RESULTS.md`` section are :mod:`referencelcm.build_report`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..arguments import write_text_atomically
from ..evaluation import PROBE_MAX_RATIO

# Timing names of the stages that train the teacher; a work dir resumed from a finished teacher has none of them.
TEACHER_STAGES = (
    "VAE", "image encoder", "teacher, image stage", "teacher, image stage annealed", "teacher, image stage on dances",
    "teacher, video stage",
)
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
    # ``train_teacher.py --stage image_encoder`` settings (None: the teacher keeps the image encoder it was built
    # with), and the largest part-colour probe ratio it must reach (evaluation.image_encoder_probe; None skips).
    image_encoder: dict | None = None
    image_encoder_gate: float | None = PROBE_MAX_RATIO
    # A second image-stage run from the first's weights (``train_teacher.py --stage image`` settings: a fresh, lower
    # learning-rate schedule); the video stage starts from its output. None: the video stage starts from the first.
    teacher_image_anneal: dict | None = None
    # A last image-stage run on compilations of ``dances`` dances per identity (``data/train_dances``, SynthDance
    # ``dances``): references in another pose than the target (``train_teacher.py --stage image`` settings; None: none).
    teacher_image_dances: dict | None = None
    dances: int = 2
    checkpointing_steps: int = 250
    # Every training stage keeps decoded frames in memory (--cache_frames): the data is small, PNG decoding is not.
    cache_frames: bool = False

    @property
    def switches(self) -> list[str]:
        """The flags without a value that every training stage of the build gets."""
        return ["--cache_frames"] if self.cache_frames else []


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
    """Where one build reads and writes, which students it distils (the shipped one; with ``ablation`` every row of
    :data:`ABLATION`), and the wall-clock seconds of the stages it ran (``timings``)."""

    preset: Preset
    work_dir: Path
    seed: int
    ablation: bool = False
    timings: dict[str, float] = field(default_factory=dict)
    trained: list[str] = field(default_factory=list)  # the stage folders this invocation trained

    @property
    def variants(self) -> tuple[Variant, ...]:
        """The students to distil and score: the shipped CoSeC-LCD one last, after the other ablation rows if asked."""
        return ABLATION if self.ablation else ABLATION[-1:]

    @property
    def train_data(self) -> Path:
        return self.work_dir / "data" / "train"

    @property
    def dances_data(self) -> Path:
        """The training identities again, each dancing ``preset.dances`` dances in a row (``teacher_image_dances``)."""
        return self.work_dir / "data" / "train_dances"

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

    def timed(self, name: str, function: Callable[..., bool | None], *args) -> None:
        """Run stage ``name`` (``function(*args)``) under a header; its wall-clock seconds go to ``timings`` and the
        work dir's ``timings.json`` unless it returns ``False`` (skipped: the run that did the work keeps its time)."""
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


def is_complete(folder: Path) -> bool:
    """A stage's output folder is complete once ``model_index.json`` is there (training scripts write it last)."""
    return (folder / "model_index.json").is_file()


def stage_arguments(
    build: Build, output: Path, settings: dict, extra: Sequence[str], train_data: Path | None = None
) -> list[str]:
    """A training script's flags for one stage writing ``output``: the build's train data (or ``train_data``),
    resolution and seed, no trackers, a checkpoint every ``preset.checkpointing_steps`` (only the latest kept, and
    resumed from), then ``extra`` and the stage's ``settings`` as ``--name value`` pairs."""
    train_data = build.train_data if train_data is None else train_data
    arguments = ["--train_data_dir", str(train_data), "--output_dir", str(output),
                 "--resolution", str(build.preset.resolution), "--seed", str(build.seed), "--report_to", "none",
                 "--checkpointing_steps", str(build.preset.checkpointing_steps), "--checkpoints_total_limit", "1",
                 "--resume_from_checkpoint", "latest", *extra]
    for name, value in settings.items():
        arguments += [f"--{name}", str(value)]
    return arguments


def check_logged_arguments(output: Path, arguments: list[str]) -> None:
    """Refuse a complete stage folder whose run logged other numeric settings than ``arguments`` (``--name value``
    pairs) ask for: the preset changed since, and reusing the folder would ship and score a stale model."""
    logged_path = output / "logs" / "config.json"
    if not logged_path.is_file():  # e.g. a shipped teacher copied in to resume from: nothing to compare with
        return
    logged = json.loads(logged_path.read_text())
    differences = []
    for flag, value in _flag_values(arguments):
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


def _flag_values(arguments: list[str]) -> list[tuple[str, str]]:
    """``(--name, value)`` pairs of a command line; switches (a flag followed by another flag or nothing) are left
    out, so that they do not shift the pairs after them."""
    pairs = []
    for position, token in enumerate(arguments):
        following = arguments[position + 1] if position + 1 < len(arguments) else None
        if token.startswith("--") and following is not None and not following.startswith("--"):
            pairs.append((token, following))
    return pairs


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
