from setuptools import find_packages, setup

setup(
    name="referencelcm",
    version="0.1.0",
    description="Fast pose-guided human animation: ReferenceLCM pipelines and CoSeC-LCD distillation for diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    package_dir={"": "src"},
    packages=find_packages("src"),
    python_requires=">=3.10",
    install_requires=[
        "diffusers>=0.42",
        "torch>=2.1",
        "transformers>=4.45",
        "accelerate>=1.0",
        "peft>=0.13",
        "safetensors>=0.4",
        "huggingface_hub>=0.25",
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
        "test": ["pytest>=7", "pytest-xdist", "pyyaml", "matplotlib"],
        "plot": ["matplotlib"],
        "tracking": ["tensorboard"],
    },
    entry_points={"console_scripts": ["referencelcm=referencelcm.cli:main"]},
)
