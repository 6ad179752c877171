"""Tiny seeded components (diffusers-test style) shared by every test: nothing is downloaded."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from referencelcm import MultiGuidanceEncoder, ReferenceLCMPipeline
from referencelcm.pipelines import factory
from referencelcm.pipelines.factory import TEACHER_SCHEDULER_CONFIG  # noqa: F401  (re-exported for tests)

GUIDANCE_TYPES = ("depth", "dwpose")
IMAGE_SIZE = 32
CROSS_ATTENTION_DIM = 16


def pytest_configure(config) -> None:
    config.addinivalue_line(
        "markers", "packaging: builds and installs the wheel (about a minute); part of the default run, and of CI"
    )
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        # torch (and the scripts the tests start) take one thread per core by default: N workers on N cores would
        # oversubscribe them, and waiting OpenMP threads spin. Each worker gets its share of the cores instead.
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


def build_components(
    motion: bool = True,
    guidance_types: tuple[str, ...] = GUIDANCE_TYPES,
    time_cond_proj_dim: int | None = None,
    scheduler: str = "lcm",
    seed: int = 0,
) -> dict:
    """Every pipeline component, tiny and seeded: images of 32 px, latents of 4 × 4 px, 32-frame motion modules."""
    return factory.build_components(
        image_size=IMAGE_SIZE,
        guidance_types=guidance_types,
        motion=motion,
        time_cond_proj_dim=time_cond_proj_dim,
        scheduler=scheduler,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        seed=seed,
    )


def unet_2d_config(time_cond_proj_dim: int | None = None) -> dict:
    return factory.unet_2d_config(IMAGE_SIZE // 8, cross_attention_dim=CROSS_ATTENTION_DIM, time_cond_proj_dim=time_cond_proj_dim)


def randomize_guidance_encoder(guidance_encoder: MultiGuidanceEncoder, seed: int = 1) -> None:
    """Give the zero-initialised output convolutions random weights, so guidance visibly changes the output."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for encoder in guidance_encoder.encoders.values():
            encoder.conv_out.weight.copy_(torch.randn(encoder.conv_out.weight.shape, generator=generator) * 0.1)


def make_inputs(num_frames: int = 3, size: int = IMAGE_SIZE, guidance_types=GUIDANCE_TYPES, seed: int = 0) -> dict:
    """A reference image (uint8 numpy) and guidance tensors ``(F, 3, size, size)`` in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    reference = (torch.rand(size, size, 3, generator=generator) * 255).to(torch.uint8).numpy()
    guidance = {name: torch.rand(num_frames, 3, size, size, generator=generator) for name in guidance_types}
    return dict(reference_image=reference, guidance=guidance)


@pytest.fixture
def components() -> dict:
    return build_components()


@pytest.fixture
def pipe(components) -> ReferenceLCMPipeline:
    pipeline = ReferenceLCMPipeline(**components)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture
def inputs() -> dict:
    return make_inputs()


def as_numpy(frames) -> np.ndarray:
    return np.asarray(frames, dtype=np.float32)
