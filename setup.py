from setuptools import find_packages, setup

DEMO_REQUIREMENTS = ["gradio==6.31.0"]  # the version the web demo and its browser test are tested with
BROWSER_TEST_REQUIREMENTS = ["playwright==1.65.3"]  # drives Debian's Chromium (apt-get install chromium)

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
        "tqdm",
        "pillow",
        "numpy",
    ],
    extras_require={
        "xformers": ["xformers"],
        "test": ["pytest>=7", "pytest-xdist", "pyyaml", "matplotlib", *DEMO_REQUIREMENTS, *BROWSER_TEST_REQUIREMENTS],
        "demo": DEMO_REQUIREMENTS,
        "plot": ["matplotlib"],
        "tracking": ["tensorboard"],
    },
    entry_points={"console_scripts": ["referencelcm=referencelcm.cli:main"]},
)
