"""The bundled models' appearance targets, read from evaluation rows of SynthDance self and reenactment splits.

A model "wears the reference" when, on identities it never saw in training:

* the teacher's per-part colour error (ΔE*ab) is at most :data:`TEACHER_PART_RATIO` of a model that ignores the
  reference (:data:`~referencelcm.evaluation.IGNORES_REFERENCE`);
* its output is recognised among the split's identities by colour signature (retrieval ≥ :data:`RETRIEVAL_TARGETS`),
  for the teacher at its full steps and the student at its few;
* on reenactment pairs (A's motion, B's reference) the error to B's appearance is at most :data:`SWAP_RATIO` of the
  error to A's own (:func:`referencelcm.evaluation.swap_ratio`: a ratio of means over pairs);
* the student at few steps is within :data:`STUDENT_TO_TEACHER` of the teacher at full steps (part ΔE and person L1),
  and beats the teacher at the same few steps on part ΔE by ≥ :data:`MIN_STANDARD_ERRORS` standard errors (paired).

Rows come from :func:`~referencelcm.evaluation.evaluate_model` and :func:`~referencelcm.evaluation.calibration_rows`;
rows of several splits of one kind (several seeds) are pooled video by video first (:func:`pool_rows`).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .evaluation import (
    IGNORES_REFERENCE,
    SELF_SPLIT,
    baseline_ratio,
    format_difference,
    paired_difference,
    per_video_means,
    swap_ratio,
)

REENACT = "reenact"
TEACHER_PART_RATIO = 0.5
RETRIEVAL_TARGETS = {SELF_SPLIT: 0.9, REENACT: 0.8}
SWAP_RATIO = 0.5
STUDENT_TO_TEACHER = 1.1
MIN_STANDARD_ERRORS = 2.0


def _key(row: dict[str, Any]) -> tuple:
    return row["method"], row.get("steps"), row.get("guidance_scale"), row.get("split", SELF_SPLIT)


def pool_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the same method, steps, CFG and split kind (e.g. one per seed) merged into one: per-video scores
    concatenated in input order, every mean recomputed over all videos, ``retrieval_chance`` averaged.

    Scores that only some of the merged rows have per video are dropped; rows without ``per_video`` pass unchanged
    when they are alone in their group.
    """
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault(_key(row), []).append(row)
    pooled = []
    for group in groups.values():
        if len(group) == 1:
            pooled.append(dict(group[0]))
            continue
        keys = set.intersection(*(set(row.get("per_video", {})) for row in group))
        per_video = {key: [value for row in group for value in row["per_video"][key]] for key in sorted(keys)}
        merged = {name: group[0][name] for name in ("method", "steps", "guidance_scale") if name in group[0]}
        merged.update(
            split=group[0].get("split", SELF_SPLIT),
            num_videos=sum(row["num_videos"] for row in group),
            num_frames=sum(row.get("num_frames", 0) for row in group),
            per_video=per_video,
            **per_video_means(per_video),
        )
        chances = [row["retrieval_chance"] for row in group if row.get("retrieval_chance") is not None]
        if chances:
            merged["retrieval_chance"] = float(np.mean(chances))
        pooled.append(merged)
    return pooled


def _find(rows: Sequence[dict[str, Any]], method: str, steps: int, split: str) -> dict[str, Any] | None:
    matches = [row for row in rows if row["method"] == method and row.get("steps") == steps
               and row.get("split", SELF_SPLIT) == split]
    return matches[0] if matches else None


def _target(name: str, measured: str, threshold: str, met: bool | None) -> dict[str, Any]:
    return {"target": name, "measured": measured, "threshold": threshold, "met": met}


def appearance_targets(
    rows: Sequence[dict[str, Any]],
    student_steps: int = 4,
    teacher_steps: int = 20,
    teacher: str = "teacher",
    student: str = "student",
) -> list[dict[str, Any]]:
    """Check every target on pooled ``rows`` (see the module docstring): one dict per target and split kind, with
    ``target``, ``measured`` and ``threshold`` (text) and ``met`` (bool; None where the rows to decide are missing).
    """
    rows = pool_rows(rows)
    results = []
    for split in (SELF_SPLIT, REENACT):
        teacher_most = _find(rows, teacher, teacher_steps, split)
        teacher_same = _find(rows, teacher, student_steps, split)
        student_row = _find(rows, student, student_steps, split)
        if teacher_most is None and student_row is None:
            continue
        prefix = f"{split} split: "
        if teacher_most is not None:
            ratio = baseline_ratio(rows, teacher_most)
            results.append(_target(
                prefix + f"{teacher} {teacher_steps} steps, part ΔE ÷ {IGNORES_REFERENCE}", f"{ratio:.3f}",
                f"≤ {TEACHER_PART_RATIO:g}", None if math.isnan(ratio) else ratio <= TEACHER_PART_RATIO,
            ))
        for row in (teacher_most, student_row):
            if row is not None and row.get("retrieval") is not None:
                goal = RETRIEVAL_TARGETS[split]
                results.append(_target(
                    prefix + f"{row['method']} {row['steps']} steps, identity retrieval",
                    f"{100 * row['retrieval']:.1f}% (chance {100 * row.get('retrieval_chance', math.nan):.1f}%)",
                    f"≥ {100 * goal:.0f}%", row["retrieval"] >= goal,
                ))
        if split == REENACT:
            for row in (teacher_most, student_row):
                if row is not None:
                    ratio = swap_ratio(row.get("per_video", {}))
                    results.append(_target(
                        prefix + f"{row['method']} {row['steps']} steps, reference swap (ΔE to B ÷ ΔE to A)",
                        f"{ratio:.3f}", f"≤ {SWAP_RATIO:g}", None if math.isnan(ratio) else ratio <= SWAP_RATIO,
                    ))
        if student_row is not None and teacher_most is not None:
            for key, label in (("part_delta_e", "part ΔE"), ("person_l1", "person L1")):
                ratio = student_row[key] / teacher_most[key] if teacher_most[key] > 0 else math.nan
                results.append(_target(
                    prefix + f"{student} {student_steps} ÷ {teacher} {teacher_steps} steps, {label}", f"{ratio:.3f}",
                    f"≤ {STUDENT_TO_TEACHER:g}", None if math.isnan(ratio) else ratio <= STUDENT_TO_TEACHER,
                ))
        if student_row is not None and teacher_same is not None:
            comparison = paired_difference(student_row, teacher_same, "part_delta_e")
            error = comparison["standard_error"]
            met = None if math.isnan(error) else comparison["difference"] <= -MIN_STANDARD_ERRORS * error
            results.append(_target(
                prefix + f"{student} {student_steps} − {teacher} {student_steps} steps, part ΔE per video",
                f"{format_difference(comparison)} (better on {comparison['better']} of {comparison['num_videos']})",
                f"< 0 by ≥ {MIN_STANDARD_ERRORS:g} standard errors", met,
            ))
    return results


def format_targets(targets: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of :func:`appearance_targets`: target, measured, threshold, met."""
    lines = ["| target | measured | threshold | met |", "|---|---:|---:|:---:|"]
    for item in targets:
        met = "–" if item["met"] is None else ("yes" if item["met"] else "**no**")
        lines.append(f"| {item['target']} | {item['measured']} | {item['threshold']} | {met} |")
    return "\n".join(lines) + "\n"
