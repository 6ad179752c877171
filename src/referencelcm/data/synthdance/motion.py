"""Procedural dance motions: smooth sums of sinusoids per joint angle, within anatomical limits.

A motion is fully determined by its seed. Every joint angle is ``center + amplitude · s(t)`` with ``s`` a normalised
sum of sinusoids whose frequencies are multiples of the video's beat, so ``|s| <= 1`` and the angle never leaves its
``[low, high]`` limits. Amplitudes are capped so that no angle changes faster than ``max_joint_speed`` rad/s: motion is
smooth and moderate, with no jumps between frames. On top of that: stepping legs, side steps, turns about the vertical
axis (front, side and back views), arm raises, and an optional slow camera zoom and pan.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .body import JOINT_INDEX, JOINT_NAMES, rotation_x, rotation_y, rotation_z

DEFAULT_MAX_JOINT_SPEED = 3.0  # rad/s: at 24 fps a joint turns at most 0.125 rad (7°) per frame
MAX_TURN_SPEED = 1.6  # rad/s about the vertical axis


@dataclass(frozen=True)
class DegreeOfFreedom:
    """One joint angle: rotation of ``joint`` about its ``axis`` (``"x"``, ``"y"`` or ``"z"``), limited to
    ``[low, high]`` radians, its mean drawn in ``[low, high]`` at the fractions ``center_range``.

    For the body's right side the angle is mirrored (``mirror=True`` negates y and z rotations) so that the same
    value means the same anatomical movement on both sides.
    """

    joint: str
    axis: str
    low: float
    high: float
    center_range: tuple[float, float] = (0.35, 0.65)
    sign: float = 1.0


# Signs: +x bends a bone that points up forward; for bones pointing down, flexion forward is a negative x rotation.
_SIDE_DOFS = (
    DegreeOfFreedom("shoulder", "z", 0.08, 2.75, (0.15, 0.45)),  # abduction: arm raise sideways, up over the head
    DegreeOfFreedom("shoulder", "x", -0.5, 1.9, (0.2, 0.45), sign=-1.0),  # flexion: arm raise forwards
    DegreeOfFreedom("shoulder", "y", -0.6, 0.6),  # twist
    DegreeOfFreedom("elbow", "x", 0.0, 2.2, (0.2, 0.5), sign=-1.0),  # flexion, forearm forwards/up
    DegreeOfFreedom("hip", "x", -0.35, 1.0, (0.25, 0.4), sign=-1.0),  # flexion, thigh forwards
    DegreeOfFreedom("hip", "z", 0.0, 0.45, (0.1, 0.4)),  # abduction
    DegreeOfFreedom("hip", "y", -0.35, 0.35),  # twist
    DegreeOfFreedom("knee", "x", 0.0, 1.5, (0.12, 0.3)),  # flexion, shin backwards
    DegreeOfFreedom("ankle", "x", -0.25, 0.35),
)
_ARM_RAISE = _SIDE_DOFS[0]
_CENTRAL_DOFS = (
    DegreeOfFreedom("pelvis", "x", -0.12, 0.12),
    DegreeOfFreedom("pelvis", "z", -0.12, 0.12),
    DegreeOfFreedom("spine", "x", -0.15, 0.3),
    DegreeOfFreedom("spine", "z", -0.2, 0.2),
    DegreeOfFreedom("spine", "y", -0.35, 0.35),
    DegreeOfFreedom("chest", "x", -0.1, 0.2),
    DegreeOfFreedom("chest", "z", -0.15, 0.15),
    DegreeOfFreedom("chest", "y", -0.3, 0.3),
    DegreeOfFreedom("neck", "x", -0.25, 0.35),
    DegreeOfFreedom("neck", "y", -0.6, 0.6),
    DegreeOfFreedom("neck", "z", -0.2, 0.2),
    DegreeOfFreedom("head", "x", -0.2, 0.25),
    DegreeOfFreedom("head", "y", -0.3, 0.3),
)


def _all_dofs() -> list[tuple[str, DegreeOfFreedom, bool]]:
    """Every angle as ``(joint name, dof, mirrored)``; the left side comes first, then its mirror on the right."""
    dofs = [(dof.joint, dof, False) for dof in _CENTRAL_DOFS]
    for side in ("left", "right"):
        dofs += [(f"{side}_{dof.joint}", dof, side == "right") for dof in _SIDE_DOFS]
    return dofs


DEGREES_OF_FREEDOM = tuple(_all_dofs())
_FREQUENCY_MULTIPLES = (0.25, 0.5, 1.0)  # of the beat; large, slow sweeps dominate
_NUM_SINUSOIDS = 3


@dataclass
class Oscillation:
    """``center + amplitude · Σ_i w_i sin(2π f_i t + φ_i) / Σ_i w_i``; arrays ``(N,)`` for ``N`` sinusoids."""

    center: float
    amplitude: float
    frequencies: np.ndarray
    phases: np.ndarray
    weights: np.ndarray

    def __call__(self, times: np.ndarray) -> np.ndarray:
        """Value at ``times`` (seconds) ``(T,)`` → ``(T,)``."""
        waves = np.sin(2 * np.pi * self.frequencies[None, :] * times[:, None] + self.phases[None, :])
        return self.center + self.amplitude * (waves @ self.weights) / self.weights.sum()

    def max_speed(self) -> float:
        """Upper bound of ``|d value / dt|`` in units per second."""
        return float(self.amplitude * 2 * np.pi * (self.frequencies @ self.weights) / self.weights.sum())

    def limit_speed(self, max_speed: float) -> None:
        """Shrinks the amplitude so that ``max_speed()`` is at most ``max_speed``."""
        speed = self.max_speed()
        if speed > max_speed:
            self.amplitude *= max_speed / speed


@dataclass
class Motion:
    """A video's motion: one ``Oscillation`` per entry of ``DEGREES_OF_FREEDOM`` plus root and camera paths.

    ``yaw`` is the body's turn about the vertical axis (0 = facing the camera, π = back to the camera) and includes
    ``spin_speed`` (rad/s) of continuous turning; ``side_step`` and ``depth_step`` move the pelvis (metres);
    ``zoom`` multiplies the camera scale; ``pan`` moves the camera horizontally (metres).
    """

    seed: int
    beat: float
    angles: list[Oscillation]
    yaw: Oscillation
    spin_speed: float
    side_step: Oscillation
    depth_step: Oscillation
    zoom: Oscillation
    pan: Oscillation
    summary: dict = field(default_factory=dict)

    @classmethod
    def sample(cls, seed: int, max_joint_speed: float = DEFAULT_MAX_JOINT_SPEED) -> "Motion":
        """Draws a dance from ``seed``: beat 0.35–0.6 Hz, per-side coupling (mirror, anti-phase or free), energy."""
        rng = np.random.default_rng(seed)
        beat = float(rng.uniform(0.35, 0.6))
        energy = float(rng.uniform(0.6, 1.0))
        coupling = str(rng.choice(["mirror", "anti", "free"]))
        arm_raises = bool(rng.random() < 0.6)
        angles: list[Oscillation] = []
        left_phases: dict[tuple[str, str], np.ndarray] = {}
        for joint, dof, mirrored in DEGREES_OF_FREEDOM:
            oscillation = _sample_oscillation(rng, dof, beat, energy)
            if arm_raises and dof is _ARM_RAISE:
                # One dominant slow sinusoid sweeps the arm from the side of the body to above the head.
                oscillation.center = float(rng.uniform(1.3, 1.5))
                oscillation.amplitude = float(rng.uniform(1.05, 1.25))
                oscillation.frequencies[0] = beat * 0.5
                oscillation.weights = np.array([1.0, 0.15, 0.15])
            key = (dof.joint, dof.axis)
            if not mirrored and joint.startswith("left_"):
                left_phases[key] = oscillation.phases
            elif mirrored and coupling != "free":
                shift = 0.0 if coupling == "mirror" else np.pi
                oscillation.phases = left_phases[key] + shift
                oscillation.frequencies = angles[len(angles) - len(_SIDE_DOFS)].frequencies.copy()
            if dof.joint in ("hip", "knee") and dof.axis == "x" and mirrored:
                # Stepping: the legs alternate whatever the arms do.
                oscillation.phases = left_phases[key] + np.pi
                oscillation.frequencies = angles[len(angles) - len(_SIDE_DOFS)].frequencies.copy()
            oscillation.limit_speed(max_joint_speed)
            angles.append(oscillation)
        # Mostly facing the camera, as in dance videos, but a quarter of the videos face sideways and a quarter away.
        facing = float(rng.choice([0.0, 0.0, np.pi / 2, np.pi]) * rng.choice([-1.0, 1.0]))
        yaw = _random_oscillation(rng, center=facing + float(rng.uniform(-0.5, 0.5)),
                                  amplitude=float(rng.uniform(0.3, 1.4)), beat=beat * float(rng.uniform(0.3, 0.6)))
        spin_speed = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.4, 1.0)) if rng.random() < 0.35 else 0.0
        yaw.limit_speed(MAX_TURN_SPEED - abs(spin_speed))
        side_step = _random_oscillation(rng, 0.0, float(rng.uniform(0.0, 0.22)), beat * 0.5)
        side_step.limit_speed(0.5)
        depth_step = _random_oscillation(rng, 0.0, float(rng.uniform(0.0, 0.2)), beat * 0.5)
        depth_step.limit_speed(0.5)
        camera_moves = rng.random() < 0.5
        zoom = _random_oscillation(rng, 1.0, float(rng.uniform(0.02, 0.07)) if camera_moves else 0.0, 0.08)
        pan = _random_oscillation(rng, 0.0, float(rng.uniform(0.03, 0.12)) if camera_moves else 0.0, 0.08)
        summary = {
            "beat_hz": round(beat, 4),
            "energy": round(energy, 4),
            "arm_coupling": coupling,
            "arm_raises": arm_raises,
            "spin_speed": round(spin_speed, 4),
            "camera_motion": bool(camera_moves),
            "max_joint_speed": max_joint_speed,
        }
        return cls(seed, beat, angles, yaw, spin_speed, side_step, depth_step, zoom, pan, summary)

    def evaluate(self, times: np.ndarray) -> "MotionFrames":
        """Joint rotations and root/camera paths at ``times`` (seconds) ``(T,)``."""
        num_frames = len(times)
        euler = {(name, axis): np.zeros(num_frames) for name in JOINT_NAMES for axis in "xyz"}
        for (joint, dof, mirrored), oscillation in zip(DEGREES_OF_FREEDOM, self.angles):
            value = dof.sign * oscillation(times)
            if mirrored and dof.axis in "yz":
                value = -value
            euler[(joint, dof.axis)] = value
        local = np.zeros((num_frames, len(JOINT_NAMES), 3, 3))
        for name in JOINT_NAMES:
            # Twist about the bone first, then flexion, then abduction.
            local[:, JOINT_INDEX[name]] = (
                rotation_z(euler[(name, "z")]) @ rotation_x(euler[(name, "x")]) @ rotation_y(euler[(name, "y")])
            )
        yaw = self.yaw(times) + self.spin_speed * times
        root_position = np.stack(
            [self.side_step(times), np.zeros(num_frames), self.depth_step(times)], axis=-1
        )
        return MotionFrames(
            local_rotations=local,
            yaw=yaw,
            root_rotation=rotation_y(yaw),
            root_position=root_position,
            zoom=self.zoom(times),
            pan=self.pan(times),
        )


@dataclass
class MotionFrames:
    """A motion sampled at ``T`` frames: ``local_rotations`` ``(T, J, 3, 3)``, ``yaw`` ``(T,)`` radians,
    ``root_rotation`` ``(T, 3, 3)``, ``root_position`` ``(T, 3)`` metres, camera ``zoom`` and ``pan`` ``(T,)``."""

    local_rotations: np.ndarray
    yaw: np.ndarray
    root_rotation: np.ndarray
    root_position: np.ndarray
    zoom: np.ndarray
    pan: np.ndarray


def _random_oscillation(rng: np.random.Generator, center: float, amplitude: float, beat: float) -> Oscillation:
    frequencies = beat * rng.choice(_FREQUENCY_MULTIPLES, size=_NUM_SINUSOIDS)
    phases = rng.uniform(0, 2 * np.pi, size=_NUM_SINUSOIDS)
    weights = rng.uniform(0.2, 1.0, size=_NUM_SINUSOIDS)
    return Oscillation(center, amplitude, frequencies, phases, weights)


def _sample_oscillation(rng: np.random.Generator, dof: DegreeOfFreedom, beat: float, energy: float) -> Oscillation:
    span = dof.high - dof.low
    center = dof.low + span * float(rng.uniform(*dof.center_range))
    headroom = min(center - dof.low, dof.high - center)
    amplitude = headroom * float(rng.uniform(0.5, 1.0)) * energy
    return _random_oscillation(rng, center, amplitude, beat)
