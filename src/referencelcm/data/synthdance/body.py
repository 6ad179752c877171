"""The SynthDance body: a 17-joint skeleton, per-identity proportions, capsule/ellipsoid parts and forward kinematics.

Coordinates are metres in a right-handed world frame with ``Y`` up, ``X`` to the viewer's right and ``Z`` towards the
camera. A body's own frame (every joint frame at rest) has ``x`` = the person's left, ``y`` = up, ``z`` = forward, so a
body at yaw 0 faces the camera. A joint's rest offset is expressed in its parent's frame; a joint's local rotation turns
everything attached to it (its parts and its children).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

JOINT_NAMES = (
    "pelvis",
    "spine",
    "chest",
    "neck",
    "head",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_hip",
    "right_knee",
    "right_ankle",
)
JOINT_INDEX = {name: index for index, name in enumerate(JOINT_NAMES)}
# Parent of every joint (-1 for the root); parents always come before their children.
JOINT_PARENTS = (-1, 0, 1, 2, 3, 2, 5, 6, 2, 8, 9, 0, 11, 12, 0, 14, 15)

NOMINAL_HEIGHT = 1.7  # metres, for a body with every proportion at its nominal value

# Materials a part is painted with; the appearance module maps them to colours and textures.
MATERIALS = ("shirt", "pants", "skin", "shoes", "head", "sleeve", "leg")


@dataclass(frozen=True)
class BodyShape:
    """Identity proportions, in metres (lengths) or as multipliers of the nominal body (thickness, girth, head)."""

    spine_length: float = 0.12
    chest_length: float = 0.18
    neck_length: float = 0.09
    shoulder_width: float = 0.36
    hip_width: float = 0.2
    upper_arm_length: float = 0.28
    forearm_length: float = 0.25
    thigh_length: float = 0.43
    shin_length: float = 0.42
    limb_thickness: float = 1.0
    torso_girth: float = 1.0
    head_scale: float = 1.0

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "BodyShape":
        """Draws an identity: height factor 0.9–1.1 times per-segment factors 0.92–1.08, thickness 0.8–1.25."""
        height = rng.uniform(0.9, 1.1)
        nominal = cls()

        def length(value: float) -> float:
            return round(float(value * height * rng.uniform(0.92, 1.08)), 5)

        return cls(
            spine_length=length(nominal.spine_length),
            chest_length=length(nominal.chest_length),
            neck_length=length(nominal.neck_length),
            shoulder_width=length(nominal.shoulder_width),
            hip_width=length(nominal.hip_width),
            upper_arm_length=length(nominal.upper_arm_length),
            forearm_length=length(nominal.forearm_length),
            thigh_length=length(nominal.thigh_length),
            shin_length=length(nominal.shin_length),
            limb_thickness=round(float(rng.uniform(0.8, 1.25)), 5),
            torso_girth=round(float(rng.uniform(0.85, 1.25)), 5),
            head_scale=round(float(rng.uniform(0.9, 1.15)), 5),
        )

    def rest_offsets(self) -> np.ndarray:
        """Offsets of every joint from its parent, in the parent's frame: ``(J, 3)``."""
        offsets = np.zeros((len(JOINT_NAMES), 3))
        shoulder_rise = 0.78 * self.chest_length
        for side, sign in (("left", 1.0), ("right", -1.0)):
            offsets[JOINT_INDEX[f"{side}_shoulder"]] = (sign * self.shoulder_width / 2, shoulder_rise, 0.0)
            offsets[JOINT_INDEX[f"{side}_elbow"]] = (0.0, -self.upper_arm_length, 0.0)
            offsets[JOINT_INDEX[f"{side}_wrist"]] = (0.0, -self.forearm_length, 0.0)
            offsets[JOINT_INDEX[f"{side}_hip"]] = (sign * self.hip_width / 2, -0.06, 0.0)
            offsets[JOINT_INDEX[f"{side}_knee"]] = (0.0, -self.thigh_length, 0.0)
            offsets[JOINT_INDEX[f"{side}_ankle"]] = (0.0, -self.shin_length, 0.0)
        offsets[JOINT_INDEX["spine"]] = (0.0, self.spine_length, 0.0)
        offsets[JOINT_INDEX["chest"]] = (0.0, self.chest_length, 0.0)
        offsets[JOINT_INDEX["neck"]] = (0.0, shoulder_rise + 0.04, 0.0)
        offsets[JOINT_INDEX["head"]] = (0.0, self.neck_length, 0.0)
        return offsets

    def head_radii(self) -> np.ndarray:
        """Radii of the head ellipsoid ``(3,)`` (x, y, z in the head frame)."""
        return np.array([0.09, 0.115, 0.1]) * self.head_scale


@dataclass(frozen=True)
class Part:
    """One rigid body part attached to a joint frame.

    ``kind`` is ``"capsule"`` (segment ``start``→``end`` with ``radius``) or ``"ellipsoid"`` (``center`` and
    ``radii`` along the joint frame's axes); all vectors are ``(3,)`` in the joint's frame, in metres.
    """

    name: str
    joint: int
    kind: str
    material: str
    start: tuple[float, float, float] = (0.0, 0.0, 0.0)
    end: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radius: float = 0.0
    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    radii: tuple[float, float, float] = (0.0, 0.0, 0.0)


PART_NAMES = (
    "pelvis",
    "abdomen",
    "chest",
    "neck",
    "head",
    "left_upper_arm",
    "left_forearm",
    "left_hand",
    "right_upper_arm",
    "right_forearm",
    "right_hand",
    "left_thigh",
    "left_shin",
    "left_foot",
    "right_thigh",
    "right_shin",
    "right_foot",
)


def build_parts(shape: BodyShape) -> list[Part]:
    """The 17 parts of a body with ``shape``, in ``PART_NAMES`` order (torso and head ellipsoids, limb capsules)."""
    girth, thickness = shape.torso_girth, shape.limb_thickness
    joint = JOINT_INDEX
    parts = [
        Part("pelvis", joint["pelvis"], "ellipsoid", "pants", center=(0.0, -0.03, 0.0),
             radii=(shape.hip_width / 2 + 0.075 * girth, 0.12, 0.1 * girth)),
        Part("abdomen", joint["spine"], "ellipsoid", "shirt", center=(0.0, 0.04, 0.0),
             radii=(0.135 * girth, 0.12 + 0.25 * shape.chest_length, 0.095 * girth)),
        Part("chest", joint["chest"], "ellipsoid", "shirt", center=(0.0, 0.45 * shape.chest_length, 0.0),
             radii=(shape.shoulder_width / 2 + 0.02, 0.5 * shape.chest_length + 0.07, 0.105 * girth)),
        Part("neck", joint["neck"], "capsule", "skin", start=(0.0, -0.04, 0.0), end=(0.0, shape.neck_length, 0.0),
             radius=0.055 * thickness),
        Part("head", joint["head"], "ellipsoid", "head", center=(0.0, 0.95 * shape.head_radii()[1], 0.012),
             radii=tuple(float(value) for value in shape.head_radii())),
    ]
    for side in ("left", "right"):
        parts += [
            Part(f"{side}_upper_arm", joint[f"{side}_shoulder"], "capsule", "shirt",
                 end=(0.0, -shape.upper_arm_length, 0.0), radius=0.055 * thickness),
            Part(f"{side}_forearm", joint[f"{side}_elbow"], "capsule", "sleeve",
                 end=(0.0, -shape.forearm_length, 0.0), radius=0.046 * thickness),
            Part(f"{side}_hand", joint[f"{side}_wrist"], "capsule", "skin", start=(0.0, -0.02, 0.0),
                 end=(0.0, -0.1, 0.005), radius=0.042 * thickness),
        ]
    for side in ("left", "right"):
        parts += [
            Part(f"{side}_thigh", joint[f"{side}_hip"], "capsule", "pants",
                 end=(0.0, -shape.thigh_length, 0.0), radius=0.082 * thickness),
            Part(f"{side}_shin", joint[f"{side}_knee"], "capsule", "leg",
                 end=(0.0, -shape.shin_length, 0.0), radius=0.063 * thickness),
            Part(f"{side}_foot", joint[f"{side}_ankle"], "capsule", "shoes", start=(0.0, -0.035, -0.03),
                 end=(0.0, -0.045, 0.13), radius=0.042 * thickness),
        ]
    return parts


def rotation_x(angle: np.ndarray) -> np.ndarray:
    """Rotations about x by ``angle`` (radians), any shape ``S`` → ``S + (3, 3)``."""
    cos, sin = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(cos), np.ones_like(cos)
    return np.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], axis=-1).reshape(*cos.shape, 3, 3)


def rotation_y(angle: np.ndarray) -> np.ndarray:
    """Rotations about y by ``angle`` (radians), any shape ``S`` → ``S + (3, 3)``."""
    cos, sin = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(cos), np.ones_like(cos)
    return np.stack([cos, zero, sin, zero, one, zero, -sin, zero, cos], axis=-1).reshape(*cos.shape, 3, 3)


def rotation_z(angle: np.ndarray) -> np.ndarray:
    """Rotations about z by ``angle`` (radians), any shape ``S`` → ``S + (3, 3)``."""
    cos, sin = np.cos(angle), np.sin(angle)
    zero, one = np.zeros_like(cos), np.ones_like(cos)
    return np.stack([cos, -sin, zero, sin, cos, zero, zero, zero, one], axis=-1).reshape(*cos.shape, 3, 3)


@dataclass
class BodyPoses:
    """World-space pose of a body over ``T`` frames: joint ``positions`` ``(T, J, 3)``, ``rotations`` ``(T, J, 3, 3)``
    (columns = the joint frame's axes in world coordinates)."""

    positions: np.ndarray
    rotations: np.ndarray


def forward_kinematics(
    shape: BodyShape, local_rotations: np.ndarray, root_rotation: np.ndarray, root_position: np.ndarray
) -> BodyPoses:
    """Poses the skeleton and puts its lowest foot point on the ground (``Y = 0``).

    Args:
        shape: the identity's proportions.
        local_rotations: ``(T, J, 3, 3)`` rotation of every joint relative to its parent's frame.
        root_rotation: ``(T, 3, 3)`` world rotation of the body frame (yaw and lean).
        root_position: ``(T, 3)`` world position of the pelvis; its ``Y`` is replaced so that the feet touch the
            ground, which makes the pelvis bob smoothly when the knees bend.

    Returns:
        ``BodyPoses`` with positions ``(T, J, 3)`` and rotations ``(T, J, 3, 3)``.
    """
    offsets = shape.rest_offsets()
    num_frames, num_joints = local_rotations.shape[:2]
    positions = np.zeros((num_frames, num_joints, 3))
    rotations = np.zeros((num_frames, num_joints, 3, 3))
    rotations[:, 0] = root_rotation @ local_rotations[:, 0]
    positions[:, 0] = root_position
    for index in range(1, num_joints):
        parent = JOINT_PARENTS[index]
        positions[:, index] = positions[:, parent] + rotations[:, parent] @ offsets[index]
        rotations[:, index] = rotations[:, parent] @ local_rotations[:, index]
    lowest = np.full(num_frames, np.inf)
    for part in build_parts(shape):
        if part.material != "shoes":
            continue
        for point in (part.start, part.end):
            world = positions[:, part.joint] + rotations[:, part.joint] @ np.asarray(point)
            lowest = np.minimum(lowest, world[:, 1] - part.radius)
    positions[..., 1] -= lowest[:, None]
    return BodyPoses(positions=positions, rotations=rotations)
