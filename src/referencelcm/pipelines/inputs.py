"""Turn the pipeline's user inputs (PIL / numpy / torch) into validated float tensors in ``[0, 1]``."""

from __future__ import annotations

from typing import Any, Mapping, Sequence, Union

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

ImageInput = Union[PIL.Image.Image, np.ndarray, torch.Tensor]
FramesInput = Union[Sequence[PIL.Image.Image], np.ndarray, torch.Tensor]

_RANGE_TOLERANCE = 1e-3


def _check_unit_range(name: str, values: torch.Tensor) -> None:
    if values.numel() == 0:
        raise ValueError(f"`{name}` holds no frames or pixels (shape {tuple(values.shape)}).")
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"`{name}` must hold finite values in [0, 1], got NaN or infinite values.")
    low, high = float(values.min()), float(values.max())
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ValueError(f"`{name}` must hold values in [0, 1], got values in [{low:.3g}, {high:.3g}].")


def _to_rgb(name: str, image: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` with C in {1, 3, 4} → ``(3, H, W)``: grey is repeated, alpha dropped."""
    channels = image.shape[0]
    if channels == 1:
        return image.expand(3, -1, -1)
    if channels == 4:
        return image[:3]
    if channels == 3:
        return image
    raise ValueError(f"`{name}` must have 1, 3 or 4 channels, got {channels} (shape {tuple(image.shape)}).")


def _numpy_to_unit_tensor(name: str, array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.uint8:
        return torch.from_numpy(array.astype(np.float32) / 255.0)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"`{name}` numpy arrays must be uint8 or float in [0, 1], got dtype {array.dtype}.")
    tensor = torch.from_numpy(array.astype(np.float32))
    _check_unit_range(name, tensor)
    return tensor


def _torch_to_unit_tensor(name: str, tensor: torch.Tensor) -> torch.Tensor:
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255.0
    if not tensor.is_floating_point():
        raise ValueError(f"`{name}` tensors must be uint8 or float in [0, 1], got dtype {tensor.dtype}.")
    _check_unit_range(name, tensor)
    return tensor.float()


def reference_to_tensor(image: ImageInput, name: str = "reference_image") -> torch.Tensor:
    """A reference image → ``(3, H, W)`` float in ``[0, 1]`` (``name``: the argument named in errors).

    Accepts a PIL image (any mode), a numpy ``(H, W)``, ``(H, W, C)`` uint8 or float array, or a torch ``(C, H, W)``
    tensor in ``[0, 1]``, with ``C`` in {1, 3, 4}.
    """
    if isinstance(image, PIL.Image.Image):
        return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise ValueError(f"`{name}` arrays must be (H, W, C), got shape {image.shape}.")
        return _to_rgb(name, _numpy_to_unit_tensor(name, image).permute(2, 0, 1))
    if isinstance(image, torch.Tensor):
        if image.ndim != 3:
            raise ValueError(f"`{name}` tensors must be (C, H, W), got shape {tuple(image.shape)}.")
        return _to_rgb(name, _torch_to_unit_tensor(name, image.detach().cpu()))
    raise ValueError(f"`{name}` must be a PIL image, numpy array or torch tensor, got {type(image).__name__}.")


def frames_to_tensor(name: str, frames: FramesInput) -> torch.Tensor:
    """Guidance frames → ``(F, 3, H, W)`` float in ``[0, 1]``.

    Accepts a list of PIL images, a numpy ``(F, H, W, 3)`` uint8 or float array, or a torch ``(F, 3, H, W)`` tensor.
    """
    if isinstance(frames, torch.Tensor):
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"`{name}` tensors must be (F, 3, H, W) in [0, 1], got shape {tuple(frames.shape)}.")
        return _torch_to_unit_tensor(name, frames.detach().cpu())
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"`{name}` arrays must be (F, H, W, 3), got shape {frames.shape}.")
        return _numpy_to_unit_tensor(name, frames).permute(0, 3, 1, 2)
    if isinstance(frames, (list, tuple)) and all(isinstance(frame, PIL.Image.Image) for frame in frames):
        if len(frames) == 0:
            raise ValueError(f"`{name}` must hold at least one frame, got an empty list.")
        sizes = {frame.size for frame in frames}
        if len(sizes) != 1:
            raise ValueError(f"All frames of `{name}` must have one size, got sizes {sorted(sizes)}.")
        return torch.stack([reference_to_tensor(frame) for frame in frames])
    raise ValueError(
        f"`{name}` must be a list of PIL images, a numpy (F, H, W, 3) array or a torch (F, 3, H, W) tensor, "
        f"got {type(frames).__name__}."
    )


def guidance_to_tensors(guidance: Mapping[str, FramesInput], name: str = "guidance") -> dict[str, torch.Tensor]:
    """``{type: frames}`` → ``{type: (F, 3, H, W)}``; every type must have the same number of frames (≥ 1)."""
    if not isinstance(guidance, Mapping) or len(guidance) == 0:
        given = "an empty dict" if isinstance(guidance, Mapping) else type(guidance).__name__
        raise ValueError(f"`{name}` must be a non-empty dict {{guidance_type: frames}}, got {given}.")
    tensors = {key: frames_to_tensor(f"{name}[{key!r}]", frames) for key, frames in guidance.items()}
    counts = {key: frames.shape[0] for key, frames in tensors.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"Every guidance type of `{name}` must have the same number of frames, got {counts}.")
    if next(iter(counts.values())) == 0:
        raise ValueError(f"`{name}` holds no frames.")
    return tensors


def batch_items(name: str, value: Any) -> list[tuple[str, Any]]:
    """``(name for errors, item)`` per video: a list or tuple is a batch (``name[i]``), anything else one item."""
    if not isinstance(value, (list, tuple)):
        return [(name, value)]
    if len(value) == 0:
        raise ValueError(f"`{name}` is an empty list: give one item per video, or a single item.")
    return [(f"{name}[{index}]", item) for index, item in enumerate(value)]


def resize(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear, antialiased resize of ``(N, C, H, W)`` to ``(N, C, height, width)`` (no-op at the same size)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
