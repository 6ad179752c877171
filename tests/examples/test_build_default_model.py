"""examples/build_default_model.py on its smoke preset: the whole chain runs, ships loadable folders, is resumable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from diffusers import DDIMScheduler, LCMScheduler, UNetMotionModel

from referencelcm import ReferenceLCMPipeline

from . import load_example

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "build_default_model.py"


@pytest.fixture(scope="module")
def script():
    return load_example(SCRIPT)


@pytest.fixture(scope="module")
def built(script, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("build")
    paths = {"work": root / "work", "models": root / "models", "assets": root / "assets", "results": root / "RESULTS.md"}
    paths["results"].write_text("# Benchmark results\n\nHand-written notes stay.\n")
    argv = ["--preset", "smoke", "--work_dir", str(paths["work"]), "--models_dir", str(paths["models"]),
            "--assets_dir", str(paths["assets"]), "--results", str(paths["results"])]
    assert script.main(argv) == 0
    paths["argv"] = argv
    return paths


def test_ships_a_teacher_and_a_student(built):
    teacher = ReferenceLCMPipeline.from_pretrained(built["models"] / "teacher")
    student = ReferenceLCMPipeline.from_pretrained(built["models"] / "student")
    assert isinstance(teacher.scheduler, DDIMScheduler) and isinstance(student.scheduler, LCMScheduler)
    assert isinstance(student.denoising_unet, UNetMotionModel)
    shipped = {entry.name for entry in (built["models"] / "student").iterdir()}
    assert "model_index.json" in shipped and not [name for name in shipped if name.startswith(("checkpoint-", "logs"))]


def test_ships_the_demo_video(built):
    demo = built["assets"] / "demo"
    for folder in ("images", "depth", "normal", "semantic_map", "dwpose", "mask"):
        assert len(list((demo / folder).glob("*.png"))) == 4, folder
    assert json.loads((demo / "meta.json").read_text())


def test_results_hold_both_tables_and_keep_other_text(built, script):
    text = built["results"].read_text()
    assert text.startswith("# Benchmark results\n\nHand-written notes stay.\n")
    assert text.count(script.RESULTS_BEGIN) == 1 and text.count(script.RESULTS_END) == 1
    for variant in script.ABLATION:
        assert f"| {variant.name} | 2 |" in text
    assert "| teacher | 2 | 3.5 |" in text and "| student | 1 | 1 |" in text
    assert "| **total** |" in text


def test_rerun_skips_complete_stages_and_rewrites_the_section(built, script, capsys):
    timings = json.loads((built["work"] / "timings.json").read_text())
    assert script.main(built["argv"]) == 0
    output = capsys.readouterr().out
    assert output.count("is complete; skipped.") == 11  # VAE, 2 teacher stages, 4 spatial (2 shared) + 4 temporal
    assert "exists; skipped." in output
    assert json.loads((built["work"] / "timings.json").read_text())["VAE"] == timings["VAE"]
    assert built["results"].read_text().count(script.RESULTS_BEGIN) == 1


def test_ablation_rows_differ_only_in_regulariser_weights(script):
    full = script.ABLATION[-1]
    assert (full.eta_weight, full.cons_weight, full.temporal_eta_weight) == (0.1, 0.02, 0.05)  # appendix C
    assert script.ABLATION[0].eta_weight == script.ABLATION[0].cons_weight == script.ABLATION[0].temporal_eta_weight == 0
    assert len({variant.temporal_dir for variant in script.ABLATION}) == len(script.ABLATION)
