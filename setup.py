import shutil
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

# The default student and the demo video travel inside the package (referencelcm/bundled/...), copied from the source
# tree when the wheel is built, so `pip install .` animates out of the box. An editable install reads them in place.
ROOT = Path(__file__).resolve().parent
BUNDLED = {  # source folder: (folder in the built package, what the source must hold)
    "models/student": ("referencelcm/bundled/student", "model_index.json"),
    "assets/demo": ("referencelcm/bundled/demo", "images"),
}


class BuildPyWithBundledModel(build_py):
    """``build_py`` that also copies whatever :data:`BUNDLED` holds at build time into the built package."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, (target, marker) in BUNDLED.items():
            if not (ROOT / source / marker).exists():
                raise SystemExit(f"setup.py: {ROOT / source / marker} is missing: build from a full checkout of the "
                                 "repository (git clone), which ships the default model and the demo.")
            destination = Path(self.build_lib) / target
            shutil.rmtree(destination, ignore_errors=True)
            shutil.copytree(ROOT / source, destination)


DEMO_REQUIREMENTS = ["gradio==6.31.0"]  # the version the web demo and its browser test are tested with
# Pose extraction (`referencelcm extract-guidance`, `animate --video`) runs MediaPipe Pose, whose models ship inside
# the mediapipe 0.10.21 wheel. That wheel's metadata pins numpy<2 and pulls jax, which pose estimation does not use, so
# the extra holds the packages it does use and mediapipe itself goes in without its dependencies (README, .ci/run):
#     pip install -e ".[extract]" && pip install --no-deps mediapipe==0.10.21
EXTRACT_REQUIREMENTS = ["opencv-python-headless", "absl-py", "attrs", "flatbuffers", "protobuf<5"]
BROWSER_TEST_REQUIREMENTS = ["playwright==1.65.3"]  # drives Debian's Chromium (apt-get install chromium)

setup(
    name="referencelcm",
    version="0.1.0",
    description="Fast pose-guided human animation: ReferenceLCM pipelines and CoSeC-LCD distillation for diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    cmdclass={"build_py": BuildPyWithBundledModel},
    python_requires=">=3.10",
    install_requires=[
        "diffusers>=0.42",
        "torch>=2.1",
        # 5.4 is the first with CLIPImageProcessorPil, the class the bundled model_index.json names (4.x also
        # refuses the huggingface_hub that diffusers 0.42 needs)
        "transformers>=5.4",
        "accelerate>=1.0",
        "peft>=0.13",
        "safetensors>=0.4",
        "huggingface_hub>=1.32",  # what diffusers 0.42 requires
        "imageio>=2.30",
        "imageio-ffmpeg>=0.5",
        "einops>=0.7",
        "pyyaml",  # convert-champ --champ-config, train_teacher.py --model_config *.yaml
        "tqdm",
        "pillow",
        "numpy",
    ],
    extras_require={
        "xformers": ["xformers"],
        "test": ["pytest>=7", "pytest-xdist", "pyyaml", "matplotlib", "scikit-image", *DEMO_REQUIREMENTS,
                 *BROWSER_TEST_REQUIREMENTS, *EXTRACT_REQUIREMENTS],
        "demo": DEMO_REQUIREMENTS,
        "extract": EXTRACT_REQUIREMENTS,
        "plot": ["matplotlib"],
        "tracking": ["tensorboard"],
    },
    entry_points={"console_scripts": ["referencelcm=referencelcm.cli:main"]},
)
