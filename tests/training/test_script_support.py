"""What the training scripts share (training/script_support.py): flags, the batch order across epochs and resumes,
the optimiser step, the push. The scripts themselves run in tests/examples/."""

from __future__ import annotations

import argparse
import itertools
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator

from referencelcm.training import script_support
from referencelcm.training.script_support import (
    add_data_arguments,
    add_run_arguments,
    fill_defaults,
    optimizer_step,
    push_output,
    training_batches,
)


def test_shared_flags_parse_with_each_scripts_validation_defaults():
    parser = argparse.ArgumentParser()
    add_data_arguments(parser)
    add_run_arguments(parser, num_validation_videos=2, validation_num_frames=8)
    args = parser.parse_args(["--train_data_dir", "data", "--mixed_precision", "bf16", "--gradient_checkpointing"])
    assert (args.train_data_dir, args.resolution, args.frame_stride) == ("data", 512, 1)
    assert (args.num_validation_videos, args.validation_num_frames) == (2, 8)
    assert (args.mixed_precision, args.gradient_checkpointing, args.checkpointing_steps) == ("bf16", True, 500)
    assert (args.lr_scheduler, args.report_to, args.logging_dir, args.seed) == ("constant", "tensorboard", "logs", 0)
    assert set(script_support.RUN_AT_LEAST_ONE) <= set(vars(args)) | {"num_frames", "train_batch_size",
                                                                     "max_train_steps"}
    with pytest.raises(SystemExit):
        parser.parse_args(["--train_data_dir", "data", "--mixed_precision", "fp8"])


def test_fill_defaults_fills_only_flags_not_given():
    args = argparse.Namespace(learning_rate=None, max_train_steps=7)
    assert fill_defaults(args, {"learning_rate": 1e-4, "max_train_steps": 100}) is args
    assert (args.learning_rate, args.max_train_steps) == (1e-4, 7)


class _EpochData:
    """A dataset, its sampler and a loader of 3 batches whose contents depend on the epoch set on them."""

    def __init__(self) -> None:
        self.epochs: list[int] = []

    def set_epoch(self, epoch: int) -> None:
        self.epochs.append(epoch)

    def __len__(self) -> int:
        return 3

    def __iter__(self):
        return iter([(self.epochs[-1], index) for index in range(3)])


_SKIPPING = SimpleNamespace(skip_first_batches=lambda loader, skip: itertools.islice(iter(loader), skip, None))


def test_training_batches_resume_where_an_uninterrupted_run_would_be():
    data = _EpochData()
    uninterrupted = list(itertools.islice(training_batches(_SKIPPING, data, data, data, 0), 8))
    assert [micro_step for micro_step, _ in uninterrupted] == list(range(8))
    assert [batch for _, batch in uninterrupted] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)]
    resumed = list(itertools.islice(training_batches(_SKIPPING, data, data, data, 4), 4))
    assert resumed == uninterrupted[4:]
    data.epochs.clear()
    assert len(list(itertools.islice(training_batches(_SKIPPING, data, data, data, 0), 3))) == 3
    assert data.epochs == [0, 0]  # the next epoch's order is set only when its first batch is asked for


def test_optimizer_step_updates_and_stops_on_a_non_finite_loss():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    before = model.weight.detach().clone()
    loss = model(torch.ones(1, 2)).pow(2).sum()
    optimizer_step(accelerator, SimpleNamespace(loss=loss, terms={"loss": loss.item()}), 1, list(model.parameters()),
                   optimizer, schedule, max_grad_norm=1.0)
    assert not torch.equal(model.weight, before) and model.weight.grad is None  # stepped, gradients cleared
    after = model.weight.detach().clone()
    nan = model(torch.ones(1, 2)).sum() * float("nan")
    with pytest.raises(FloatingPointError, match="step 7"):
        optimizer_step(accelerator, SimpleNamespace(loss=nan, terms={"loss": float("nan")}), 7,
                       list(model.parameters()), optimizer, schedule, max_grad_norm=1.0)
    assert torch.equal(model.weight, after)


def test_push_output_leaves_checkpoints_logs_and_validation_behind(monkeypatch):
    calls = []
    monkeypatch.setattr(script_support, "push_folder_to_hub", lambda *args, **kwargs: calls.append((args, kwargs)))
    push_output(argparse.Namespace(output_dir="out", hub_model_id="me/model", hub_token=None, logging_dir="runs"))
    assert calls == [(("out", "me/model", None), {"ignore_patterns": ("checkpoint-*", ".*", "runs/*", "validation/*")})]
