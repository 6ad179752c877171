"""Every reader of foreign ``.pth`` / ``.bin`` files refuses a pickle that would run code, and runs none of it.

The malicious file is a real ``torch.save`` pickle whose object, when unpickled without ``weights_only``, calls
``os.mkdir(marker)``; each test checks the marker folder was never created.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

from referencelcm.convert.champ import _BaseWeights, load_champ_checkpoint
from referencelcm.metrics import LearnedPerceptualDistance, load_feature_network
from referencelcm.state_dicts import load_state_dict_file


class Payload:
    """Unpickling this (without ``weights_only``) creates the folder ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture(params=["zip", "legacy"])
def malicious(request, tmp_path) -> tuple[Path, Path]:
    """``(file, marker)``: a state dict with one tensor and the payload, in torch's zip or legacy format."""
    marker = tmp_path / "code-ran"
    path = tmp_path / "weights.pth"
    state = {"conv.weight": torch.zeros(2), "conv.bias": Payload(marker)}
    torch.save(state, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, marker


def test_the_payload_would_run_without_weights_only(malicious):
    path, marker = malicious
    torch.load(path, weights_only=False)  # what a careless reader would do
    assert marker.is_dir()


def test_load_state_dict_file_refuses_it(malicious):
    path, marker = malicious
    with pytest.raises(ValueError, match=r"--flag .*weights\.pth: cannot be read with torch\.load\(weights_only=True"):
        load_state_dict_file(path, "--flag")
    assert not marker.exists()


def test_champ_checkpoints_refuse_it(malicious):
    path, marker = malicious
    with pytest.raises(ValueError, match=r"--champ-dir .*weights_only=True"):
        load_champ_checkpoint(path)
    assert not marker.exists()


def test_sd15_base_weights_refuse_it(malicious):
    path, marker = malicious
    bin_path = path.with_name("diffusion_pytorch_model.bin")
    path.rename(bin_path)
    with pytest.raises(ValueError, match=r"--base-model .*weights_only=True"):
        _BaseWeights(bin_path).get()
    assert not marker.exists()


def test_feature_network_state_dicts_refuse_it(malicious):
    path, marker = malicious
    with pytest.raises(ValueError, match=r"`feature_network_path` .*weights_only=True"):
        load_feature_network(path, module=torch.nn.Conv2d(1, 1, 1))
    assert not marker.exists()


def test_lpips_weights_refuse_it(malicious, tmp_path, monkeypatch):
    path, marker = malicious
    monkeypatch.setitem(sys.modules, "lpips", None)  # refused before lpips would be imported (or read the file)
    with pytest.raises(ValueError, match=r"`linear_weights_path` .*weights_only=True"):
        LearnedPerceptualDistance(path, path)
    assert not marker.exists()


def test_truncated_files_are_named(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match=r"--flag .*weights\.pth: not a readable torch\.save file") as raised:
        load_state_dict_file(path, "--flag")
    assert raised.value.__cause__ is not None  # the reader's own error is kept
    safetensors_path = tmp_path / "weights.safetensors"
    safetensors_path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ValueError, match=r"weights\.safetensors: not a readable safetensors file"):
        load_state_dict_file(safetensors_path)


def test_state_dicts_load(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"state_dict": {"weight": torch.ones(3)}}, path)  # a wrapped checkpoint is unwrapped
    assert torch.equal(load_state_dict_file(path)["weight"], torch.ones(3))
    torch.save([torch.ones(3)], path)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_state_dict_file(path)
