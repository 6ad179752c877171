"""A vectorised numpy ray caster for SynthDance bodies: all six Champ maps from one z-buffer pass per frame.

Camera: orthographic, looking along ``-Z`` (world). Rendering happens in *pixel space*: ``x`` right and ``y`` down in
pixels with pixel centres at ``+0.5``, and ``z`` pointing away from the viewer in pixels, so every camera ray is
``(x, y, t)`` with ``t`` growing with distance. Per part, only the pixels of its screen bounding box are intersected
(capsule: cylinder plus two end spheres; ellipsoid: a unit sphere after an affine map); the nearest hit per pixel wins.
Normals, texture coordinates and Lambert shading are then computed once for the visible body pixels only.

Maps (``(H, W, 3)`` uint8 each): ``images`` (shaded RGB over the background), ``depth`` (near = bright, in
``[51, 255]`` on the body, background 0), ``normal`` (camera-space normals, x right, y up, z towards the viewer,
mapped by ``(n + 1) / 2``; background 0), ``semantic_map`` (one fixed colour per part, background 0), ``dwpose``
(OpenPose skeleton on black) and ``mask`` (the person in white). The body pixels of ``mask``, ``depth``, ``normal`` and
``semantic_map`` are exactly the same set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .appearance import PALETTE, Background, Identity, Lighting
from .body import NOMINAL_HEIGHT, PART_NAMES, BodyPoses, build_parts
from .openpose import draw_openpose, openpose_keypoints, stroke_sizes

MAP_NAMES = ("images", "depth", "normal", "semantic_map", "dwpose", "mask")
# One colour per body part (``PART_NAMES`` order); left and right differ so turns stay readable.
SEMANTIC_COLOURS = np.array(
    [
        (128, 64, 128), (160, 96, 32), (230, 160, 40), (250, 220, 160), (255, 240, 90),
        (40, 120, 255), (90, 200, 255), (180, 240, 255),
        (255, 60, 60), (255, 140, 120), (255, 200, 190),
        (30, 160, 60), (110, 220, 90), (190, 255, 150),
        (150, 40, 200), (210, 110, 240), (240, 190, 255),
    ],
    dtype=np.uint8,
)  # fmt: skip
NUM_PARTS = len(SEMANTIC_COLOURS)
DEPTH_REACH = 0.5  # metres either side of the pelvis mapped onto the depth range
DEPTH_FAR_VALUE = 0.2  # the farthest body point's brightness, so body pixels are never 0
# World (X right, Y up, Z to the viewer) -> pixel space (x right, y down, z away from the viewer).
_WORLD_TO_PIXEL_AXES = np.diag([1.0, -1.0, -1.0])


@dataclass(frozen=True)
class Camera:
    """Orthographic camera framing a standing body: a nominal-height body spans ``body_fraction`` of the image
    height, the ground (``Y = 0``) lies at ``ground_row`` of the height, and zooms are centred on ``focus_height``."""

    resolution: int
    body_fraction: float = 0.7
    ground_row: float = 0.95
    focus_height: float = 0.9

    @property
    def pixels_per_metre(self) -> float:
        """Image scale at zoom 1."""
        return self.body_fraction * self.resolution / NOMINAL_HEIGHT

    def to_pixels(self, points: np.ndarray, zoom: np.ndarray, pan: np.ndarray) -> np.ndarray:
        """World points ``(T, ..., 3)`` → pixel space ``(T, ..., 3)`` for per-frame ``zoom`` and ``pan`` ``(T,)``."""
        extra = (1,) * (points.ndim - 2)
        scale = (self.pixels_per_metre * zoom).reshape(-1, *extra)
        pan = pan.reshape(-1, *extra)
        focus_row = self.resolution * self.ground_row - self.pixels_per_metre * self.focus_height
        return np.stack(
            [
                self.resolution / 2 + scale * (points[..., 0] - pan),
                focus_row - scale * (points[..., 1] - self.focus_height),
                -scale * points[..., 2],
            ],
            axis=-1,
        )

    def pixel_to_world(self, zoom: float, pan: float) -> tuple[np.ndarray, np.ndarray]:
        """World ``X`` ``(1, W)`` and ``Y`` ``(H, 1)`` of the pixel centres (for the background wall)."""
        scale = self.pixels_per_metre * zoom
        centres = np.arange(self.resolution) + 0.5
        focus_row = self.resolution * self.ground_row - self.pixels_per_metre * self.focus_height
        world_x = pan + (centres - self.resolution / 2) / scale
        world_y = self.focus_height - (centres - focus_row) / scale
        return world_x[None, :], world_y[:, None]


@dataclass
class _PartGeometry:
    """Per-frame pixel-space geometry of every part, arrays ``(T, P, ...)``."""

    frame_rotation: np.ndarray  # (T, P, 3, 3) columns: the part frame's axes in pixel space
    frame_origin: np.ndarray  # (T, P, 3)
    start: np.ndarray  # (T, P, 3) capsule end points (unused for ellipsoids)
    end: np.ndarray
    radius: np.ndarray  # (T, P)
    center: np.ndarray  # (T, P, 3) ellipsoid centres (unused for capsules)
    to_unit: np.ndarray  # (T, P, 3, 3) maps pixel offsets from the centre to unit-sphere coordinates


# The camera's framing per SynthDance format version (``Camera`` arguments). Version 1 frames a nominal body over 70 %
# of the image height: the person covers about 9 % of the pixels and limbs are 1–3 pixels wide at 64 px. Version 2
# frames it over 82 % (about 13 % of the pixels, measured), closer to how dance datasets frame the dancer, while arm
# raises and side steps still stay inside a square frame. Earlier datasets stay reproducible with their version.
FRAMINGS = {1: dict(body_fraction=0.7, ground_row=0.95), 2: dict(body_fraction=0.82, ground_row=0.96)}


class SynthDanceRenderer:
    """Renders one character in one scene.

    Args:
        identity: body proportions and appearance.
        background: the wall and floor behind the body.
        lighting: Lambert light direction and ambient share.
        resolution: square image size in pixels.
        framing: the format version whose camera framing to use (:data:`FRAMINGS`).
    """

    def __init__(
        self, identity: Identity, background: Background, lighting: Lighting, resolution: int, framing: int = 2
    ):
        if framing not in FRAMINGS:
            raise ValueError(f"`framing` must be one of {sorted(FRAMINGS)}, got {framing!r}.")
        self.identity = identity
        self.background = background
        self.lighting = lighting
        self.camera = Camera(resolution, **FRAMINGS[framing])
        self.parts = build_parts(identity.shape)
        appearance = identity.appearance
        colours = appearance.material_colours()
        self._albedo = np.array([colours[part.material] for part in self.parts])  # (P, 3)
        self._pattern_colour = np.asarray(PALETTE[appearance.pattern_colour])
        textured = appearance.textured_materials()
        self._is_textured = np.array([part.material in textured for part in self.parts])
        self._is_capsule = np.array([part.kind == "capsule" for part in self.parts])
        self._head = PART_NAMES.index("head")
        head_part = self.parts[self._head]
        self._head_center, self._head_radii = np.asarray(head_part.center), np.asarray(head_part.radii)
        self._semantic = np.concatenate([SEMANTIC_COLOURS, np.zeros((1, 3), dtype=np.uint8)])  # index -1: background
        self._columns = np.arange(resolution, dtype=np.float64)[None, :] + 0.5
        self._rows = np.arange(resolution, dtype=np.float64)[:, None] + 0.5
        self.line_width, self.point_radius = stroke_sizes(resolution, resolution)

    # ------------------------------------------------------------------ geometry
    def _geometry(self, poses: BodyPoses, zoom: np.ndarray, pan: np.ndarray) -> _PartGeometry:
        num_frames, num_parts = poses.positions.shape[0], len(self.parts)
        scale = self.camera.pixels_per_metre * zoom  # (T,)
        geometry = _PartGeometry(
            frame_rotation=np.zeros((num_frames, num_parts, 3, 3)),
            frame_origin=np.zeros((num_frames, num_parts, 3)),
            start=np.zeros((num_frames, num_parts, 3)),
            end=np.zeros((num_frames, num_parts, 3)),
            radius=np.zeros((num_frames, num_parts)),
            center=np.zeros((num_frames, num_parts, 3)),
            to_unit=np.zeros((num_frames, num_parts, 3, 3)),
        )
        for index, part in enumerate(self.parts):
            rotation = poses.rotations[:, part.joint]  # (T, 3, 3)
            origin = poses.positions[:, part.joint]  # (T, 3)
            geometry.frame_rotation[:, index] = _WORLD_TO_PIXEL_AXES @ rotation
            geometry.frame_origin[:, index] = self.camera.to_pixels(origin, zoom, pan)
            if part.kind == "capsule":
                for target, point in ((geometry.start, part.start), (geometry.end, part.end)):
                    target[:, index] = self.camera.to_pixels(origin + rotation @ np.asarray(point), zoom, pan)
                geometry.radius[:, index] = part.radius * scale
            else:
                world_center = origin + rotation @ np.asarray(part.center)
                geometry.center[:, index] = self.camera.to_pixels(world_center, zoom, pan)
                inverse_radii = 1.0 / (np.asarray(part.radii)[None, :] * scale[:, None])  # (T, 3)
                geometry.to_unit[:, index] = inverse_radii[:, :, None] * np.swapaxes(
                    geometry.frame_rotation[:, index], -1, -2
                )
        return geometry

    # ------------------------------------------------------------------ rasterisation
    def _rasterise(self, geometry: _PartGeometry, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit per pixel: depth ``(H, W)`` (inf on background) and part index ``(H, W)`` (-1 background)."""
        size = self.camera.resolution
        depth = np.full((size, size), np.inf)
        part_index = np.full((size, size), -1, dtype=np.int16)
        for index in range(len(self.parts)):
            if self._is_capsule[index]:
                start, end = geometry.start[frame, index], geometry.end[frame, index]
                radius = geometry.radius[frame, index]
                low = np.minimum(start, end)[:2] - radius
                high = np.maximum(start, end)[:2] + radius
            else:
                to_unit = geometry.to_unit[frame, index]
                center = geometry.center[frame, index]
                # Half extents of the ellipsoid's screen box: norms of the rows of inverse(to_unit) = R·diag(radii).
                extent = np.sqrt((np.linalg.inv(to_unit)[:2] ** 2).sum(axis=1))
                low, high = center[:2] - extent, center[:2] + extent
            x0, y0 = max(int(np.floor(low[0])), 0), max(int(np.floor(low[1])), 0)
            x1, y1 = min(int(np.ceil(high[0])) + 1, size), min(int(np.ceil(high[1])) + 1, size)
            if x0 >= x1 or y0 >= y1:
                continue
            columns, rows = self._columns[:, x0:x1], self._rows[y0:y1]
            if self._is_capsule[index]:
                hit_depth = _intersect_capsule(columns, rows, start, end, radius)
            else:
                hit_depth = _intersect_ellipsoid(columns, rows, center, to_unit)
            window = depth[y0:y1, x0:x1]
            closer = hit_depth < window
            window[closer] = hit_depth[closer]
            part_index[y0:y1, x0:x1][closer] = index
        return depth, part_index

    # ------------------------------------------------------------------ shading
    def _surface(
        self, geometry: _PartGeometry, frame: int, points: np.ndarray, part: np.ndarray, scale: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Unit normals ``(N, 3)`` (pixel space) and albedo ``(N, 3)`` of visible surface ``points`` ``(N, 3)``."""
        normals = np.zeros_like(points)
        capsule = self._is_capsule[part]
        cap_part = part[capsule]
        start, end = geometry.start[frame, cap_part], geometry.end[frame, cap_part]
        axis = end - start
        length = np.linalg.norm(axis, axis=1, keepdims=True)
        unit_axis = axis / np.maximum(length, 1e-9)
        offset = points[capsule] - start
        along = np.clip((offset * unit_axis).sum(axis=1, keepdims=True), 0.0, length)
        normals[capsule] = offset - along * unit_axis
        ellipsoid = ~capsule
        ell_part = part[ellipsoid]
        to_unit = geometry.to_unit[frame, ell_part]
        unit_points = np.einsum("nij,nj->ni", to_unit, points[ellipsoid] - geometry.center[frame, ell_part])
        normals[ellipsoid] = np.einsum("nji,nj->ni", to_unit, unit_points)  # gradient of |to_unit · offset|²
        normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-9)

        local = np.einsum(
            "nji,nj->ni", geometry.frame_rotation[frame, part], points - geometry.frame_origin[frame, part]
        ) / scale  # metres in the part's frame
        albedo = self._albedo[part].copy()
        textured = np.flatnonzero(self._is_textured[part])
        albedo[textured[self.identity.appearance.pattern_mask(local[textured])]] = self._pattern_colour
        head = np.flatnonzero(part == self._head)
        albedo[head] = self.identity.appearance.head_colours((local[head] - self._head_center) / self._head_radii)
        return normals, albedo

    # ------------------------------------------------------------------ frames
    def render(self, poses: BodyPoses, zoom: np.ndarray, pan: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
        """Yields the six maps of every frame.

        Args:
            poses: world joint positions ``(T, J, 3)`` and rotations ``(T, J, 3, 3)``.
            zoom, pan: camera zoom factor and horizontal pan in metres, ``(T,)`` each.

        Yields:
            ``{name: (H, W, 3) uint8}`` for ``name`` in ``MAP_NAMES``, one dict per frame.
        """
        geometry = self._geometry(poses, zoom, pan)
        head_center = self._head_center
        keypoints_3d, visible = openpose_keypoints(poses, self.identity.shape, head_center)
        keypoints = self.camera.to_pixels(keypoints_3d, zoom, pan)[..., :2]  # (T, 18, 2)
        root_depth = self.camera.to_pixels(poses.positions[:, 0], zoom, pan)[:, 2]
        light = np.asarray(self.lighting.direction)
        ambient = self.lighting.ambient
        background_key, background = None, None
        for frame in range(poses.positions.shape[0]):
            key = (float(zoom[frame]), float(pan[frame]))
            if key != background_key:
                background_key = key
                background = self.background.render(*self.camera.pixel_to_world(*key))
            scale = self.camera.pixels_per_metre * zoom[frame]
            depth, part_index = self._rasterise(geometry, frame)
            rows, columns = np.nonzero(part_index >= 0)
            part = part_index[rows, columns].astype(np.int64)
            points = np.stack([columns + 0.5, rows + 0.5, depth[rows, columns]], axis=1)
            normals, albedo = self._surface(geometry, frame, points, part, scale)
            brightness = ambient + (1.0 - ambient) * np.clip(normals @ light, 0.0, None)

            image = background.copy()
            image[rows, columns] = albedo * brightness[:, None]
            reach = DEPTH_REACH * scale
            nearness = np.clip((root_depth[frame] + reach - points[:, 2]) / (2 * reach), 0.0, 1.0)
            depth_map = np.zeros(depth.shape)
            depth_map[rows, columns] = DEPTH_FAR_VALUE + (1.0 - DEPTH_FAR_VALUE) * nearness
            normal_map = np.zeros(image.shape)
            normal_map[rows, columns] = (normals * np.array([1.0, -1.0, -1.0]) + 1.0) / 2
            mask = np.zeros(depth.shape, dtype=np.uint8)
            mask[rows, columns] = 255
            yield {
                "images": _to_uint8(image),
                "depth": np.repeat(_to_uint8(depth_map)[..., None], 3, axis=2),
                "normal": _to_uint8(normal_map),
                "semantic_map": self._semantic[part_index],
                "dwpose": draw_openpose(
                    keypoints[frame], visible[frame], *depth.shape, self.line_width, self.point_radius
                ),
                "mask": np.repeat(mask[..., None], 3, axis=2),
            }


def semantic_part_labels(semantic_map: np.ndarray) -> np.ndarray:
    """Part index of every pixel of SynthDance semantic maps: ``(..., H, W, 3)`` uint8 → ``(..., H, W)`` int16,
    ``0 … NUM_PARTS-1`` in ``PART_NAMES`` order and ``-1`` for the background (black).

    Each pixel takes the nearest of ``SEMANTIC_COLOURS`` and black, so maps resized with nearest-neighbour sampling
    decode exactly.
    """
    semantic_map = np.asarray(semantic_map)
    if semantic_map.dtype != np.uint8 or semantic_map.shape[-1:] != (3,):
        raise ValueError(f"`semantic_map` must be uint8 (..., H, W, 3); received {semantic_map.dtype} "
                         f"{semantic_map.shape}.")
    palette = np.concatenate([np.zeros((1, 3)), SEMANTIC_COLOURS]).astype(np.int32)  # row 0: background
    pixels = semantic_map.reshape(-1, 3).astype(np.int32)
    # Maps at their own size hold palette colours only: look those up exactly (a training step labels ~1M pixels),
    # and measure distances for the rest alone.
    codes = (pixels[:, 0] << 16) | (pixels[:, 1] << 8) | pixels[:, 2]
    palette_codes = (palette[:, 0] << 16) | (palette[:, 1] << 8) | palette[:, 2]
    order = np.argsort(palette_codes)
    position = np.minimum(np.searchsorted(palette_codes[order], codes), len(palette) - 1)
    labels = order[position]
    inexact = np.flatnonzero(palette_codes[labels] != codes)
    if len(inexact):
        distances = ((pixels[inexact, None, :] - palette) ** 2).sum(axis=-1)
        labels[inexact] = distances.argmin(axis=-1)
    return (labels - 1).astype(np.int16).reshape(semantic_map.shape[:-1])


def _to_uint8(values: np.ndarray) -> np.ndarray:
    """``[0, 1]`` floats → uint8, rounded; any shape."""
    return (np.clip(values, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _intersect_capsule(
    columns: np.ndarray, rows: np.ndarray, start: np.ndarray, end: np.ndarray, radius: float
) -> np.ndarray:
    """Depth of the first hit of rays ``(x, y, t)`` on a capsule, ``inf`` on a miss.

    Args:
        columns: ray x ``(1, w)``; rows: ray y ``(h, 1)``; start, end: segment ends ``(3,)``; radius: in pixels.

    Returns:
        ``(h, w)`` hit depth ``t``: the nearest of the finite cylinder and the two end spheres.
    """
    axis = end - start
    length = float(np.sqrt(axis @ axis))
    unit = axis / max(length, 1e-9)
    dx, dy = columns - start[0], rows - start[1]
    radius_sq = radius * radius
    planar_sq = dx * dx + dy * dy  # (h, w)
    hit = np.full(planar_sq.shape, np.inf)
    facing = 1.0 - unit[2] ** 2  # 0 when the axis points at the camera: then the end spheres cover the silhouette
    if facing > 1e-9 and length > 1e-9:
        along_planar = dx * unit[0] + dy * unit[1]
        half_b = along_planar * unit[2]
        discriminant = half_b * half_b - facing * (planar_sq - along_planar * along_planar - radius_sq)
        offset = (half_b - np.sqrt(np.maximum(discriminant, 0.0))) / facing
        along = along_planar + offset * unit[2]
        inside = (discriminant >= 0.0) & (along >= 0.0) & (along <= length)
        hit[inside] = offset[inside]
    cap = radius_sq - planar_sq
    covered = cap >= 0.0
    hit[covered] = np.minimum(hit[covered], -np.sqrt(cap[covered]))
    dx_end, dy_end = columns - end[0], rows - end[1]
    cap = radius_sq - dx_end * dx_end - dy_end * dy_end
    covered = cap >= 0.0
    hit[covered] = np.minimum(hit[covered], axis[2] - np.sqrt(cap[covered]))
    return hit + start[2]


def _intersect_ellipsoid(columns: np.ndarray, rows: np.ndarray, center: np.ndarray, to_unit: np.ndarray) -> np.ndarray:
    """Depth of the first hit of rays ``(x, y, t)`` on the ellipsoid ``|to_unit · (p − center)| = 1``.

    Args:
        columns: ray x ``(1, w)``; rows: ray y ``(h, 1)``; center ``(3,)``; to_unit ``(3, 3)``.

    Returns:
        ``(h, w)`` hit depth, ``inf`` on a miss.
    """
    dx, dy = columns - center[0], rows - center[1]
    direction = to_unit[:, 2]
    unit_0 = to_unit[0, 0] * dx + to_unit[0, 1] * dy
    unit_1 = to_unit[1, 0] * dx + to_unit[1, 1] * dy
    unit_2 = to_unit[2, 0] * dx + to_unit[2, 1] * dy
    a = direction @ direction
    half_b = unit_0 * direction[0] + unit_1 * direction[1] + unit_2 * direction[2]
    c = unit_0 * unit_0 + unit_1 * unit_1 + unit_2 * unit_2 - 1.0
    discriminant = half_b * half_b - a * c
    hit = np.full(discriminant.shape, np.inf)
    inside = discriminant >= 0.0
    hit[inside] = (-half_b[inside] - np.sqrt(discriminant[inside])) / a + center[2]
    return hit
