"""Trackers for the training scripts: the user's ``--report_to`` plus a metrics file that is always written.

Every logged value (each loss term, the learning rate) is appended as one JSON line to
``<output_dir>/<logging_dir>/metrics.jsonl``, so a run's losses can be read back without TensorBoard or W&B.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from accelerate.tracking import GeneralTracker

METRICS_FILE = "metrics.jsonl"


class MetricsFileTracker(GeneralTracker):
    """An accelerate tracker appending ``{"step": N, name: value, ...}`` lines to ``logging_dir/metrics.jsonl``."""

    name = "metrics_file"
    requires_logging_directory = True

    def __init__(self, run_name: str, logging_dir: str | os.PathLike) -> None:
        super().__init__()
        self.run_name = run_name
        # The folder is made on the first write: building the tracker (with the Accelerator) writes nothing.
        self.path = os.path.join(logging_dir, METRICS_FILE)

    @property
    def tracker(self) -> str:
        return self.path

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(os.path.join(os.path.dirname(self.path), "config.json"), "w", encoding="utf-8") as handle:
            json.dump(values, handle, indent=2, sort_keys=True, default=str)

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        scalars = {key: float(value) for key, value in values.items() if isinstance(value, (int, float))}
        record = {"step": step, **{key: (value if math.isfinite(value) else str(value)) for key, value in scalars.items()}}
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def trackers(report_to: str, logging_dir: str | os.PathLike, run_name: str) -> list:
    """``log_with`` for ``Accelerator``: the ``--report_to`` tracker(s) (``"none"`` for none) and the metrics file."""
    selected = [] if report_to in ("none", "", None) else [name.strip() for name in report_to.split(",")]
    return [*selected, MetricsFileTracker(run_name, logging_dir)]


def read_metrics(logging_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The records written by :class:`MetricsFileTracker`, in order."""
    with open(os.path.join(logging_dir, METRICS_FILE), encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]
