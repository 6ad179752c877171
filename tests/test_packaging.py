"""A non-editable install (a wheel) carries the default student and the demo, and the README's first command works
with it from any folder: build the wheel, install it into a fresh virtual environment, animate.

The environment reuses this interpreter's packages (``--system-site-packages``), so nothing is downloaded; the wheel
goes in with ``--no-deps --no-index --ignore-installed``, ahead of any editable install of the package.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import imageio.v3 as iio
import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCE_ENTRIES = ("setup.py", "MANIFEST.in", "README.md", "src", "models", "assets")


def run(command: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    environment["HF_HUB_OFFLINE"] = "1"
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.mark.packaging
def test_wheel_carries_the_default_model_and_the_demo(tmp_path):
    source = tmp_path / "source"  # a copy, so building leaves nothing in the checkout
    source.mkdir()
    for name in SOURCE_ENTRIES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    # Without setuptools here, pip builds in an isolated environment (which fetches setuptools from the index).
    isolation = ["--no-build-isolation"] if importlib.util.find_spec("setuptools") else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path / "dist"),
         str(source)], cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("referencelcm-*.whl"))

    environment = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(environment)], cwd=tmp_path)
    python = environment / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q", str(wheel)],
        cwd=tmp_path)
    package = environment / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages" / \
        "referencelcm"
    assert (package / "bundled" / "student" / "model_index.json").is_file()

    elsewhere = tmp_path / "elsewhere"  # the README's `python examples/inference.py`, run from another folder
    elsewhere.mkdir()
    result = run([str(python), str(REPO / "examples" / "inference.py")], cwd=elsewhere)
    assert f"using the bundled model {package / 'bundled' / 'student'}" in result.stdout
    assert f"animating the demo video {package / 'bundled' / 'demo'}" in result.stdout
    assert "freshly initialised" not in result.stdout and "(4 steps, guidance scale 1.0)" in result.stdout
    assert "torchvision" not in result.stderr and "should be kept in float32" not in result.stderr  # no warnings
    frames = iio.imread(elsewhere / "outputs" / "demo.mp4")
    assert frames.shape[0] == len(list((REPO / "assets" / "demo" / "images").glob("*.png")))
