"""Bad inputs to the Python API that diffusers' own pipelines refuse: each is a ``ValueError`` (or
``FileNotFoundError`` for a missing folder) naming the argument, raised before any model runs."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from referencelcm import ReferenceLCMPipeline

from ..conftest import build_components, make_inputs


@pytest.fixture(scope="module")
def pipe() -> ReferenceLCMPipeline:
    pipeline = ReferenceLCMPipeline(**build_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def _with_nan(array):
    array = array.clone() if isinstance(array, torch.Tensor) else array.copy()
    array[0, 0, 0, 0] = float("nan")
    return array


CALL_CASES = {
    "generator list longer than the batch": (
        lambda i: i.update(generator=[torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)]),
        r"`generator` is a list of 2 generators, but the call makes 1 videos"),
    "generator list empty": (lambda i: i.update(generator=[]), r"`generator` is a list of 0 generators"),
    "NaN in a guidance tensor": (lambda i: i["guidance"].update(depth=_with_nan(i["guidance"]["depth"])),
                                 r"`guidance\['depth'\]` must hold finite values.*NaN"),
    "inf in a guidance array": (lambda i: i["guidance"].update(
        dwpose=np.full((3, 32, 32, 3), np.inf, dtype=np.float32)), r"`guidance\['dwpose'\]` must hold finite values"),
    "NaN in a float reference": (lambda i: i.update(reference_image=np.full((32, 32, 3), np.nan, dtype=np.float32)),
                                 r"`reference_image` must hold finite values"),
    "NaN in latents": (lambda i: i.update(latents=torch.full((1, 4, 3, 4, 4), float("nan"))),
                       r"`latents` must hold finite values"),
    "inf in latents": (lambda i: i.update(latents=torch.full((1, 4, 3, 4, 4), float("inf"))),
                       r"`latents` must hold finite values"),
    "guidance_scale NaN": (lambda i: i.update(guidance_scale=float("nan")), r"`guidance_scale` must be a finite"),
    "guidance_scale inf": (lambda i: i.update(guidance_scale=float("inf")), r"`guidance_scale` must be a finite"),
    "guidance_scale a string": (lambda i: i.update(guidance_scale="3.5"), r"`guidance_scale` must be a finite"),
    "width 0": (lambda i: i.update(width=0), r"`width` must be a positive multiple of 16, got 0"),
    "height 0": (lambda i: i.update(height=0), r"`height` must be a positive multiple of 16, got 0"),
    "reference given as a path": (lambda i: i.update(reference_image="reference.png"),
                                  r"`reference_image` must be a PIL image, numpy array or torch tensor, got str"),
}


@pytest.mark.parametrize("case", list(CALL_CASES))
def test_call_bad_input(case, pipe, monkeypatch):
    change, message = CALL_CASES[case]
    inputs = make_inputs()
    change(inputs)

    def must_not_run(*args, **kwargs):
        raise AssertionError("a model ran before the inputs were checked")

    monkeypatch.setattr(pipe.reference_unet, "forward", must_not_run)
    with pytest.raises(ValueError, match=message):
        pipe(**inputs, output_type="latent")


def test_a_generator_per_video_is_accepted(pipe):
    generator = [torch.Generator().manual_seed(0)]
    single = pipe(**make_inputs(), generator=torch.Generator().manual_seed(0), output_type="latent").frames
    assert torch.equal(pipe(**make_inputs(), generator=generator, output_type="latent").frames, single)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, pipe):
    path = tmp_path_factory.mktemp("saved") / "pipe"
    pipe.save_pretrained(path)
    return path


def _break_index(folder):
    (folder / "model_index.json").write_text("{")


def _truncate_weights(folder):
    weights = folder / "denoising_unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])


def _drop_component(folder):
    shutil.rmtree(folder / "guidance_encoder")


def _unknown_library(folder):
    index = json.loads((folder / "model_index.json").read_text())
    index["guidance_encoder"] = ["referencelcm.no_such_module", "MultiGuidanceEncoder"]
    (folder / "model_index.json").write_text(json.dumps(index))


LOAD_CASES = {
    "model_index.json not JSON": (_break_index, ValueError, r"model_index\.json is not valid JSON"),
    "weights truncated": (_truncate_weights, ValueError, r"component 'denoising_unet'.*truncated"),
    "component folder missing": (_drop_component, FileNotFoundError, r"component 'guidance_encoder'.*missing"),
    "component library unknown": (_unknown_library, ValueError, r"'referencelcm\.no_such_module' cannot be imported"),
}


@pytest.mark.parametrize("case", list(LOAD_CASES))
def test_from_pretrained_bad_folder(case, saved, tmp_path):
    damage, error, message = LOAD_CASES[case]
    folder = shutil.copytree(saved, tmp_path / "pipe")
    damage(folder)
    with pytest.raises(error, match=r"`pretrained_model_name_or_path` .*" + message) as raised:
        ReferenceLCMPipeline.from_pretrained(folder)
    if error is ValueError and case != "weights truncated":
        assert raised.value.__cause__ is not None  # the parser's own error is kept


def test_from_pretrained_takes_components_passed_in(saved, tmp_path, pipe):
    """A component given to ``from_pretrained`` need not be in the folder (diffusers' override)."""
    folder = shutil.copytree(saved, tmp_path / "pipe")
    _drop_component(folder)
    loaded = ReferenceLCMPipeline.from_pretrained(folder, guidance_encoder=pipe.guidance_encoder)
    assert loaded.guidance_encoder is pipe.guidance_encoder
