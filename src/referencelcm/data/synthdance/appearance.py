"""How a SynthDance character and its scene look: clothing colours and textures, skin, hair, background, light.

Clothing colours come from a palette of strong colours. The ordered (shirt, pants) colour pairs are split once, by a
fixed permutation, into a train half and a test half, and within a dataset every video gets its own pair; so two videos
of one dataset never wear the same outfit colours, and train and test identities are disjoint. Textures are solid
textures evaluated in each part's own frame (metres), so stripes, checks and dots move with the body.
"""

from __future__ import annotations

import colorsys
from dataclasses import asdict, dataclass

import numpy as np

from .body import BodyShape

PALETTE = {
    "red": (0.86, 0.1, 0.1),
    "orange": (0.96, 0.5, 0.06),
    "yellow": (0.96, 0.86, 0.1),
    "lime": (0.55, 0.86, 0.1),
    "green": (0.08, 0.58, 0.2),
    "teal": (0.02, 0.55, 0.55),
    "cyan": (0.25, 0.82, 0.96),
    "blue": (0.12, 0.26, 0.88),
    "navy": (0.08, 0.1, 0.42),
    "purple": (0.5, 0.14, 0.72),
    "magenta": (0.9, 0.12, 0.62),
    "pink": (0.98, 0.62, 0.76),
    "brown": (0.45, 0.24, 0.08),
    "white": (0.95, 0.95, 0.95),
    "black": (0.07, 0.07, 0.08),
    "grey": (0.5, 0.5, 0.52),
}
SHOE_COLOURS = ("black", "white", "brown", "grey", "navy", "red")
SKIN_TONES = (
    (0.98, 0.84, 0.72),
    (0.93, 0.74, 0.6),
    (0.85, 0.64, 0.48),
    (0.72, 0.5, 0.34),
    (0.55, 0.36, 0.22),
    (0.38, 0.24, 0.15),
)
HAIR_COLOURS = {
    "black": (0.06, 0.05, 0.05),
    "dark_brown": (0.22, 0.12, 0.06),
    "auburn": (0.55, 0.2, 0.08),
    "blonde": (0.9, 0.76, 0.38),
    "grey": (0.7, 0.7, 0.7),
}
EYE_COLOUR = (0.05, 0.05, 0.08)
PATTERNS = ("stripes", "checks", "dots")
BACKGROUND_KINDS = ("solid", "gradient", "stripes", "checks")
SPLITS = ("train", "test")
_SPLIT_PERMUTATION_SEED = 20240607  # fixed forever: changing it would mix train and test outfits


def clothing_pairs(split: str) -> list[tuple[str, str]]:
    """The (shirt, pants) colour pairs reserved for ``split`` (``"train"`` or ``"test"``); disjoint between splits."""
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}, got {split!r}.")
    names = list(PALETTE)
    pairs = [(shirt, pants) for shirt in names for pants in names if shirt != pants]
    order = np.random.default_rng(_SPLIT_PERMUTATION_SEED).permutation(len(pairs))
    half = len(pairs) // 2
    chosen = order[:half] if split == "train" else order[half:]
    return [pairs[index] for index in sorted(chosen)]


@dataclass(frozen=True)
class Appearance:
    """Per-identity look. Colours are RGB in ``[0, 1]``; ``pattern_period`` is in metres on the body surface."""

    shirt: str
    pants: str
    shoes: str
    pattern: str
    pattern_colour: str
    pattern_period: float
    skin: tuple[float, float, float]
    hair: str
    hair_length: float
    long_sleeves: bool
    long_pants: bool

    def material_colours(self) -> dict[str, tuple[float, float, float]]:
        """Base colour of each material of ``body.MATERIALS``."""
        shirt, pants = PALETTE[self.shirt], PALETTE[self.pants]
        return {
            "shirt": shirt,
            "pants": pants,
            "skin": self.skin,
            "shoes": PALETTE[self.shoes],
            "head": self.skin,
            "sleeve": shirt if self.long_sleeves else self.skin,
            "leg": pants if self.long_pants else self.skin,
        }

    def textured_materials(self) -> tuple[str, ...]:
        """Materials carrying the shirt pattern."""
        return ("shirt", "sleeve") if self.long_sleeves else ("shirt",)

    def pattern_mask(self, local_points: np.ndarray) -> np.ndarray:
        """Where the pattern colour shows: part-frame points in metres ``(N, 3)`` → bool ``(N,)``."""
        scaled = local_points / self.pattern_period
        if self.pattern == "stripes":  # rings around limbs, horizontal bands on the torso
            return np.floor(2 * scaled[:, 1]).astype(np.int64) % 2 == 1
        if self.pattern == "checks":
            return np.floor(2 * scaled).astype(np.int64).sum(axis=1) % 2 == 1
        offsets = scaled - np.round(scaled)  # dots on a cubic lattice
        return (offsets**2).sum(axis=1) < 0.3**2

    def head_colours(self, unit_points: np.ndarray) -> np.ndarray:
        """Albedo of head pixels from points on the unit head sphere ``(N, 3)`` (x left, y up, z forward):
        ``(N, 3)`` RGB in [0, 1].

        Hair covers the top and the back (down to ``hair_length``), so front and back views look different; the face
        gets two eyes.
        """
        colours = np.tile(np.asarray(self.skin), (len(unit_points), 1))
        front_line, back_line = 0.42, -self.hair_length
        hairline = front_line + (back_line - front_line) * (1 - unit_points[:, 2]) / 2
        colours[unit_points[:, 1] > hairline] = HAIR_COLOURS[self.hair]
        for side in (-1.0, 1.0):
            eye = np.array([0.34 * side, 0.08, 0.94])
            colours[((unit_points - eye) ** 2).sum(axis=1) < 0.15**2] = EYE_COLOUR
        return colours

    @classmethod
    def sample(cls, rng: np.random.Generator, shirt: str, pants: str) -> "Appearance":
        """Draws everything but the outfit colours, which the caller assigns per split."""
        contrasting = [
            name for name in PALETTE
            if name not in (shirt, pants) and np.abs(np.subtract(PALETTE[name], PALETTE[shirt])).sum() > 0.9
        ]
        return cls(
            shirt=shirt,
            pants=pants,
            shoes=str(rng.choice(SHOE_COLOURS)),
            pattern=str(rng.choice(PATTERNS)),
            pattern_colour=str(rng.choice(contrasting)),
            pattern_period=round(float(rng.uniform(0.16, 0.26)), 5),
            skin=SKIN_TONES[int(rng.integers(len(SKIN_TONES)))],
            hair=str(rng.choice(list(HAIR_COLOURS))),
            hair_length=round(float(rng.uniform(0.2, 0.9)), 5),
            long_sleeves=bool(rng.random() < 0.6),
            long_pants=bool(rng.random() < 0.7),
        )


@dataclass(frozen=True)
class Identity:
    """A character: body proportions and appearance, with a stable id string."""

    identity_id: str
    shape: BodyShape
    appearance: Appearance

    def to_json(self) -> dict:
        """JSON-ready description (``meta.json``'s ``identity``)."""
        return {"identity_id": self.identity_id, "shape": asdict(self.shape), "appearance": asdict(self.appearance)}


def _muted_colour(rng: np.random.Generator) -> tuple[float, float, float]:
    red, green, blue = colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.08, 0.35), rng.uniform(0.5, 0.88))
    return (round(red, 5), round(green, 5), round(blue, 5))


@dataclass(frozen=True)
class Background:
    """A wall with a floor, in world metres: ``kind`` in ``BACKGROUND_KINDS``, two wall colours, a floor colour,
    a pattern ``period`` (metres) and ``angle`` (radians) for gradients and stripes."""

    kind: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    floor: tuple[float, float, float]
    period: float
    angle: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Background":
        """Draws a muted background so the strongly coloured character stands out."""
        colour_a = _muted_colour(rng)
        shift = rng.uniform(-0.18, 0.18, size=3)
        colour_b = tuple(round(float(value), 5) for value in np.clip(np.add(colour_a, shift), 0.05, 0.95))
        floor = tuple(round(value * 0.7, 5) for value in _muted_colour(rng))
        return cls(
            kind=str(rng.choice(BACKGROUND_KINDS)),
            colour_a=colour_a,
            colour_b=colour_b,  # type: ignore[arg-type]
            floor=floor,  # type: ignore[arg-type]
            period=round(float(rng.uniform(0.4, 0.8)), 5),
            angle=round(float(rng.uniform(0, np.pi)), 5),
        )

    def render(self, world_x: np.ndarray, world_y: np.ndarray) -> np.ndarray:
        """Colours at world points ``world_x`` ``(1, W)`` and ``world_y`` ``(H, 1)`` (metres): ``(H, W, 3)``."""
        colour_a, colour_b = np.asarray(self.colour_a), np.asarray(self.colour_b)
        along = world_x * np.cos(self.angle) + (world_y - 1.0) * np.sin(self.angle)
        if self.kind == "solid":
            mix = np.zeros(np.broadcast_shapes(world_x.shape, world_y.shape))
        elif self.kind == "gradient":
            mix = np.clip(0.5 + along / 2.6, 0.0, 1.0)
        elif self.kind == "stripes":
            mix = (np.floor(2 * along / self.period) % 2).astype(np.float64)
        else:
            cells = np.floor(2 * world_x / self.period) + np.floor(2 * world_y / self.period)
            mix = (cells % 2).astype(np.float64)
        wall = colour_a + mix[..., None] * (colour_b - colour_a)
        return np.where((world_y < 0.0)[..., None], np.asarray(self.floor), wall)


@dataclass(frozen=True)
class Lighting:
    """Lambert lighting: unit ``direction`` towards the light in camera space (x right, y down, z away from the
    viewer), and the ``ambient`` share of the brightness."""

    direction: tuple[float, float, float]
    ambient: float

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Lighting":
        """A light from the front, above and somewhat to one side."""
        direction = np.array([rng.uniform(-0.6, 0.6), rng.uniform(-0.9, -0.3), -1.0])
        direction /= np.linalg.norm(direction)
        return cls(direction=tuple(round(float(value), 6) for value in direction),  # type: ignore[arg-type]
                   ambient=round(float(rng.uniform(0.3, 0.45)), 5))
