"""Quality metrics for generated videos: SSIM, PSNR, L1, temporal flicker, appearance fidelity, and FID/FVD/LPIPS
from local weights.

Input convention (checked by every public function):

* images: float tensor ``(N, 3, H, W)`` with values in ``[0, 1]`` (a batch of images, or the frames of one
  video with the frame axis first, as ``ReferenceLCMPipeline(output_type="pt").frames[0]``);
* videos: float tensor ``(B, 3, F, H, W)`` with values in ``[0, 1]`` (the package's video layout).

Per-image metrics (:func:`ssim`, :func:`psnr`, :func:`l1`) return one value per image: shape ``(N,)`` for
``(N, 3, H, W)`` input and ``(B, F)`` for ``(B, 3, F, H, W)`` input, in float64.

Appearance fidelity (does the generated person wear the reference?) needs a per-pixel region map of the ground
truth: ``labels`` ``(N, H, W)`` integers, ``0 … P-1`` for the person's parts (SynthDance's semantic-map parts) and
``-1`` for the background, and the person ``mask`` ``(N, H, W)`` bool. :func:`person_region_metrics` scores only the
person; :func:`region_mean_colours` / :func:`part_colour_errors` compare each region's mean colour in CIELAB
(ΔE*ab, CIE 1976: the Euclidean distance in L*a*b*, D65 white); :func:`appearance_signature`,
:func:`identity_retrieval` and :func:`reference_spread` work on whole videos.

FID, FVD and LPIPS need pretrained feature networks. Nothing here downloads anything: they work only
from files the caller points to, and raise a clear error otherwise.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from einops import rearrange

from .state_dicts import load_state_dict_file

__all__ = [
    "FrechetDistance",
    "LearnedPerceptualDistance",
    "appearance_signature",
    "delta_e",
    "feature_statistics",
    "frechet_distance",
    "identity_retrieval",
    "l1",
    "load_feature_network",
    "paint_regions",
    "part_colour_errors",
    "person_region_metrics",
    "psnr",
    "reference_spread",
    "region_mean_colours",
    "rgb_to_lab",
    "signature_distance",
    "ssim",
    "temporal_flicker",
    "temporal_flicker_comparison",
    "video_metrics",
]

# SSIM constants of Wang et al. 2004 (and scikit-image's `gaussian_weights=True` setting).
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # window radius = int(truncate * sigma + 0.5) = 5, i.e. an 11 x 11 window
SSIM_K1 = 0.01
SSIM_K2 = 0.03
DATA_RANGE = 1.0
NUM_CHANNELS = 3


# ----------------------------------------------------------------------------------------------------------
# input checks


def _check_pixels(name: str, tensor: torch.Tensor, allowed_ndims: tuple[int, ...] = (4, 5)) -> None:
    """Raise ``ValueError`` unless ``tensor`` is a float ``(N,3,H,W)`` / ``(B,3,F,H,W)`` tensor in [0, 1]."""
    layouts = {4: "(N, 3, H, W)", 5: "(B, 3, F, H, W)"}
    expected = " or ".join(layouts[ndim] for ndim in allowed_ndims)
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape {expected}; received {type(tensor).__name__}.")
    if tensor.ndim not in allowed_ndims or tensor.shape[1] != NUM_CHANNELS:
        raise ValueError(f"`{name}` must have shape {expected}; received shape {tuple(tensor.shape)}.")
    if not tensor.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor with values in [0, 1]; received {tensor.dtype}.")
    if tensor.numel() == 0:
        raise ValueError(f"`{name}` must not be empty; received shape {tuple(tensor.shape)}.")
    low, high = tensor.min().item(), tensor.max().item()
    if not (0.0 <= low and high <= 1.0):  # also false for NaN
        raise ValueError(f"`{name}` must have values in [0, 1]; received values in [{low:.4g}, {high:.4g}].")


def _check_pair(images: torch.Tensor, references: torch.Tensor) -> None:
    _check_pixels("images", images)
    _check_pixels("references", references)
    if images.shape != references.shape:
        raise ValueError(
            f"`images` and `references` must have the same shape; received {tuple(images.shape)} "
            f"and {tuple(references.shape)}."
        )


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    # float64 keeps SSIM's E[x^2] - E[x]^2 free of cancellation error; MPS has no float64.
    return torch.float32 if tensor.device.type == "mps" else torch.float64


def _as_frames(tensor: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """``(N,3,H,W)`` → itself, ``(B,3,F,H,W)`` → ``(B*F,3,H,W)``; plus the function mapping ``(N,)`` back."""
    tensor = tensor.to(_compute_dtype(tensor))
    if tensor.ndim == 4:
        return tensor, lambda values: values
    batch_size = tensor.shape[0]
    frames = rearrange(tensor, "b c f h w -> (b f) c h w")
    return frames, lambda values: rearrange(values, "(b f) -> b f", b=batch_size)


# ----------------------------------------------------------------------------------------------------------
# SSIM, PSNR, L1


def _gaussian_window(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """1-D normalised Gaussian taps ``(2r+1,)`` with σ = 1.5 and r = 5, as scipy.ndimage's filter."""
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    taps = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return taps / taps.sum()


def _gaussian_filter_valid(maps: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian weighted mean over every full window. ``(M,1,H,W)`` → ``(M,1,H-10,W-10)``."""
    taps = _gaussian_window(maps.dtype, maps.device)
    maps = F.conv2d(maps, taps.view(1, 1, -1, 1))
    return F.conv2d(maps, taps.view(1, 1, 1, -1))


def _ssim_map(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM of every full 11×11 window: float ``(N, 3, H, W)`` pairs → ``(N, 3, H-10, W-10)``."""
    num_images, num_channels, height, width = x.shape
    # All five moments in one filtering pass: (5 * N * 3, 1, H, W).
    moments = torch.stack([x, y, x * x, y * y, x * y]).reshape(-1, 1, height, width)
    filtered = _gaussian_filter_valid(moments)
    filtered = filtered.reshape(5, num_images, num_channels, *filtered.shape[-2:])
    mean_x, mean_y, mean_xx, mean_yy, mean_xy = filtered
    variance_x = mean_xx - mean_x * mean_x
    variance_y = mean_yy - mean_y * mean_y
    covariance = mean_xy - mean_x * mean_y

    c1 = (SSIM_K1 * DATA_RANGE) ** 2
    c2 = (SSIM_K2 * DATA_RANGE) ** 2
    numerator = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
    denominator = (mean_x * mean_x + mean_y * mean_y + c1) * (variance_x + variance_y + c2)
    return numerator / denominator


def ssim(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, averaged over channels.

    11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, data range 1, population (co)variances, and
    only windows that lie entirely inside the image ("valid"). This equals scikit-image's
    ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
    data_range=1, channel_axis=-1)`` on each image.

    Args:
        images: ``(N, 3, H, W)`` or ``(B, 3, F, H, W)`` in [0, 1], with H, W ≥ 11.
        references: same shape as ``images``.

    Returns:
        float64 SSIM per image: ``(N,)`` or ``(B, F)``; 1 for identical images.
    """
    _check_pair(images, references)
    window_size = 2 * int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5) + 1
    if min(images.shape[-2:]) < window_size:
        raise ValueError(
            f"`images` must be at least {window_size}x{window_size} pixels for SSIM; "
            f"received shape {tuple(images.shape)}."
        )
    x, unflatten = _as_frames(images)
    y, _ = _as_frames(references)
    return unflatten(_ssim_map(x, y).mean(dim=(1, 2, 3)))


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio per image, ``10·log10(1 / MSE)`` in dB (data range 1).

    Identical images have MSE 0 and get ``+inf`` (no warning, no NaN). Averages over images therefore
    are ``inf`` as soon as one image is reproduced exactly; :func:`video_metrics` keeps that behaviour.

    Args:
        images: ``(N, 3, H, W)`` or ``(B, 3, F, H, W)`` in [0, 1].
        references: same shape as ``images``.

    Returns:
        float64 PSNR per image: ``(N,)`` or ``(B, F)``.
    """
    _check_pair(images, references)
    x, unflatten = _as_frames(images)
    y, _ = _as_frames(references)
    mse = (x - y).square().mean(dim=(1, 2, 3))
    infinite = torch.full_like(mse, math.inf)
    finite = 10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(torch.finfo(mse.dtype).tiny))
    return unflatten(torch.where(mse > 0, finite, infinite))


def l1(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Mean absolute error per image.

    Args:
        images: ``(N, 3, H, W)`` or ``(B, 3, F, H, W)`` in [0, 1].
        references: same shape as ``images``.

    Returns:
        float64 mean ``|images - references|`` per image: ``(N,)`` or ``(B, F)``.
    """
    _check_pair(images, references)
    x, unflatten = _as_frames(images)
    y, _ = _as_frames(references)
    return unflatten((x - y).abs().mean(dim=(1, 2, 3)))


# ----------------------------------------------------------------------------------------------------------
# temporal flicker


def temporal_flicker(video: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between consecutive frames, ``mean_f |x_f - x_{f-1}|``.

    A static video scores 0; a video alternating between two frames scores their mean absolute
    difference. Real motion also scores > 0, so compare with the ground truth
    (:func:`temporal_flicker_comparison`).

    Args:
        video: one video ``(F, 3, H, W)`` or a batch ``(B, 3, F, H, W)``, in [0, 1], with F ≥ 2.

    Returns:
        float64 flicker: a 0-d tensor for ``(F, 3, H, W)``, ``(B,)`` for ``(B, 3, F, H, W)``.
    """
    _check_pixels("video", video)
    frames = video.to(_compute_dtype(video))
    if frames.ndim == 4:
        frames = rearrange(frames, "f c h w -> 1 c f h w")
    if frames.shape[2] < 2:
        raise ValueError(f"`video` must have at least 2 frames; received shape {tuple(video.shape)}.")
    flicker = (frames[:, :, 1:] - frames[:, :, :-1]).abs().mean(dim=(1, 2, 3, 4))
    return flicker[0] if video.ndim == 4 else flicker


def temporal_flicker_comparison(generated: torch.Tensor, ground_truth: torch.Tensor) -> dict[str, float]:
    """Flicker of a generated video beside the flicker of its ground truth.

    Args:
        generated: ``(F, 3, H, W)`` or ``(B, 3, F, H, W)`` in [0, 1], F ≥ 2.
        ground_truth: a video of the same layout (batches are averaged over videos).

    Returns:
        ``{"flicker": float, "flicker_ground_truth": float}``.
    """
    _check_pixels("generated", generated)
    _check_pixels("ground_truth", ground_truth)
    if generated.ndim != ground_truth.ndim:
        raise ValueError(
            f"`generated` and `ground_truth` must have the same layout; received shapes "
            f"{tuple(generated.shape)} and {tuple(ground_truth.shape)}."
        )
    return {
        "flicker": temporal_flicker(generated).mean().item(),
        "flicker_ground_truth": temporal_flicker(ground_truth).mean().item(),
    }


def video_metrics(generated: torch.Tensor, ground_truth: torch.Tensor) -> dict[str, float]:
    """All reference-free-of-weights metrics for one video against its ground truth.

    SSIM, PSNR and L1 are computed per frame and averaged over frames; PSNR is ``inf`` if any frame
    is reproduced exactly (see :func:`psnr`).

    Args:
        generated: one video ``(F, 3, H, W)`` in [0, 1], F ≥ 2, H, W ≥ 11.
        ground_truth: same shape as ``generated``.

    Returns:
        ``{"ssim", "psnr", "l1", "flicker", "flicker_ground_truth"}`` → float.
    """
    _check_pixels("generated", generated, allowed_ndims=(4,))
    _check_pixels("ground_truth", ground_truth, allowed_ndims=(4,))
    if generated.shape != ground_truth.shape:
        raise ValueError(
            f"`generated` and `ground_truth` must have the same shape (F, 3, H, W); received "
            f"{tuple(generated.shape)} and {tuple(ground_truth.shape)}."
        )
    return {
        "ssim": ssim(generated, ground_truth).mean().item(),
        "psnr": psnr(generated, ground_truth).mean().item(),
        "l1": l1(generated, ground_truth).mean().item(),
        **temporal_flicker_comparison(generated, ground_truth),
    }


# ----------------------------------------------------------------------------------------------------------
# appearance fidelity: person region, per-part colour, identity retrieval, reference spread

# sRGB (IEC 61966-2-1) → XYZ, D65 white.
_RGB_TO_XYZ = (
    (0.4124564, 0.3575761, 0.1804375),
    (0.2126729, 0.7151522, 0.0721750),
    (0.0193339, 0.1191920, 0.9503041),
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
DEFAULT_MIN_REGION_PIXELS = 4  # smaller regions (a part seen edge-on) give a mean colour of a pixel or two: noise


def _check_region_maps(images: torch.Tensor, labels: torch.Tensor, name: str = "labels") -> None:
    _check_pixels("images", images, allowed_ndims=(4,))
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        received = labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__
        raise ValueError(f"`{name}` must be an integer tensor (N, H, W); received {received}.")
    expected = (images.shape[0], *images.shape[2:])
    if tuple(labels.shape) != expected:
        raise ValueError(f"`{name}` must have shape {expected} (N, H, W of `images`); received {tuple(labels.shape)}.")


def rgb_to_lab(colours: torch.Tensor) -> torch.Tensor:
    """sRGB colours in [0, 1] → CIELAB (D65): ``(..., 3)`` → float64 ``(..., 3)`` (L* in [0, 100]). NaN stays NaN."""
    if not isinstance(colours, torch.Tensor) or colours.shape[-1:] != (3,):
        shape = tuple(colours.shape) if isinstance(colours, torch.Tensor) else type(colours).__name__
        raise ValueError(f"`colours` must be a tensor of shape (..., 3); received {shape}.")
    rgb = colours.to(torch.float64)
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(_RGB_TO_XYZ, dtype=torch.float64, device=rgb.device)
    xyz = linear @ matrix.T / torch.tensor(_D65_WHITE, dtype=torch.float64, device=rgb.device)
    epsilon, kappa = 216 / 24389, 24389 / 27
    f = torch.where(xyz > epsilon, xyz.clamp_min(0) ** (1 / 3), (kappa * xyz + 16) / 116)
    return torch.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], dim=-1)


def delta_e(lab_a: torch.Tensor, lab_b: torch.Tensor) -> torch.Tensor:
    """CIE 1976 colour difference ΔE*ab: Euclidean distance of L*a*b* colours ``(..., 3)`` → ``(...)``.

    About 2.3 is a just-noticeable difference; ΔE between strong palette colours is 50–150. NaN where either is NaN.
    """
    return (lab_a.to(torch.float64) - lab_b.to(torch.float64)).square().sum(dim=-1).sqrt()


def region_mean_colours(
    images: torch.Tensor, labels: torch.Tensor, num_parts: int, min_pixels: int = DEFAULT_MIN_REGION_PIXELS
) -> torch.Tensor:
    """Mean RGB colour of each region of each image.

    Args:
        images: ``(N, 3, H, W)`` in [0, 1].
        labels: ``(N, H, W)`` integers: ``0 … num_parts-1`` parts, ``-1`` background.
        num_parts: P, the number of part labels.
        min_pixels: regions with fewer pixels count as absent.

    Returns:
        float64 ``(N, P + 1, 3)`` RGB: rows ``0 … P-1`` the parts, row ``P`` the background; NaN where absent.
    """
    _check_region_maps(images, labels)
    if labels.numel() and (labels.min() < -1 or labels.max() >= num_parts):
        raise ValueError(f"`labels` must lie in [-1, {num_parts - 1}]; received [{labels.min()}, {labels.max()}].")
    num_images = images.shape[0]
    regions = torch.where(labels < 0, num_parts, labels).long().flatten(1)  # (N, HW), background = P
    pixels = images.to(torch.float64).flatten(2)  # (N, 3, HW)
    sums = torch.zeros(num_images, 3, num_parts + 1, dtype=torch.float64, device=images.device)
    sums.scatter_add_(2, regions[:, None].expand(-1, 3, -1), pixels)
    counts = torch.zeros(num_images, num_parts + 1, dtype=torch.float64, device=images.device)
    counts.scatter_add_(1, regions, torch.ones_like(regions, dtype=torch.float64))
    means = sums.transpose(1, 2) / counts.clamp_min(1)[..., None]
    return torch.where((counts >= max(min_pixels, 1))[..., None], means, torch.full_like(means, math.nan))


def part_colour_errors(
    generated: torch.Tensor,
    ground_truth: torch.Tensor,
    labels: torch.Tensor,
    num_parts: int,
    min_pixels: int = DEFAULT_MIN_REGION_PIXELS,
    colour_space: str = "lab",
) -> dict[str, torch.Tensor]:
    """Per-region colour error: ΔE*ab between the mean colour of ``generated`` and of ``ground_truth`` in each region
    of the ground truth's ``labels``.

    Args:
        generated, ground_truth: ``(N, 3, H, W)`` in [0, 1].
        labels: the ground truth's regions ``(N, H, W)`` (``-1`` background).
        num_parts: P.
        min_pixels: regions with fewer ground-truth pixels are left out (NaN).
        colour_space: ``"lab"`` (ΔE*ab, CIE 1976) or ``"rgb"`` (Euclidean distance of the mean colours in 0–255
            RGB units, a cruder scale some checks use).

    Returns:
        ``"regions"``: the error ``(N, P + 1)`` (NaN where absent); ``"part"``: mean over the person's parts present
        ``(N,)``; ``"background"``: ``(N,)``; ``"all"``: mean over every region present, background included ``(N,)``.
    """
    _check_pair(generated, ground_truth)
    if colour_space not in ("lab", "rgb"):
        raise ValueError(f"`colour_space` must be 'lab' or 'rgb', got {colour_space!r}.")
    truth = region_mean_colours(ground_truth, labels, num_parts, min_pixels)
    absent = truth.isnan().any(dim=-1)
    # The generated image's mean over the same pixels (its own regions may differ: it is scored on the truth's).
    produced = region_mean_colours(generated, labels, num_parts, min_pixels)
    if colour_space == "lab":
        errors = delta_e(rgb_to_lab(produced), rgb_to_lab(truth))
    else:
        errors = delta_e(produced * 255, truth * 255)
    errors = torch.where(absent, torch.full_like(errors, math.nan), errors)
    return {
        "regions": errors,
        "part": errors[:, :num_parts].nanmean(dim=1),
        "background": errors[:, num_parts],
        "all": errors.nanmean(dim=1),
    }


def _dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary dilation of ``(N, H, W)`` bool masks by a square of side ``2 radius + 1``."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, stride=1, padding=radius)[:, 0] > 0


def person_region_metrics(
    generated: torch.Tensor, ground_truth: torch.Tensor, mask: torch.Tensor, dilation: int = 2
) -> dict[str, torch.Tensor]:
    """SSIM, PSNR and L1 of the person only: inside the ground truth's person mask dilated by ``dilation`` pixels
    (``person_*``) and inside that region's bounding box (``box_*``).

    SSIM is the mean of the per-pixel SSIM map (11×11 Gaussian windows as :func:`ssim`, on images reflect-padded by
    the window radius so that every pixel has a window) over the region; PSNR is ``10·log10(1 / MSE)`` of the region's
    pixels (``inf`` when they are reproduced exactly).

    Args:
        generated, ground_truth: ``(N, 3, H, W)`` in [0, 1], H, W ≥ 6.
        mask: ``(N, H, W)`` bool, the ground truth's person.
        dilation: pixels added around the mask (a generated person a pixel off still counts as the person).

    Returns:
        float64 ``(N,)`` each: ``person_ssim``, ``person_psnr``, ``person_l1``, ``box_ssim``, ``box_psnr``, ``box_l1``;
        NaN for an image whose mask is empty.
    """
    _check_pair(generated, ground_truth)
    if generated.ndim != 4:
        raise ValueError(f"`generated` must have shape (N, 3, H, W); received {tuple(generated.shape)}.")
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (generated.shape[0], *generated.shape[2:]):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"`mask` must be a tensor of shape (N, H, W) matching `generated`; received {shape}.")
    radius = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)
    if min(generated.shape[-2:]) <= radius:
        raise ValueError(f"`generated` must be larger than {radius} pixels; received {tuple(generated.shape)}.")
    x, y = generated.to(_compute_dtype(generated)), ground_truth.to(_compute_dtype(ground_truth))
    region = _dilate(mask.bool().to(x.device), dilation)
    rows, columns = region.any(dim=2), region.any(dim=1)  # (N, H), (N, W)
    box = rows[:, :, None] & columns[:, None, :]
    padded = [F.pad(image, (radius,) * 4, mode="reflect") for image in (x, y)]
    ssim_map = _ssim_map(*padded).mean(dim=1)  # (N, H, W)
    absolute = (x - y).abs().mean(dim=1)
    squared = (x - y).square().mean(dim=1)
    results = {}
    for prefix, area in (("person", region), ("box", box)):
        weights = area.to(x.dtype)
        count = weights.sum(dim=(1, 2))
        empty = count == 0
        count = count.clamp_min(1)
        mse = (squared * weights).sum(dim=(1, 2)) / count
        psnr_values = torch.where(
            mse > 0, 10 * torch.log10(DATA_RANGE**2 / mse.clamp_min(torch.finfo(mse.dtype).tiny)),
            torch.full_like(mse, math.inf),
        )
        for key, value in (
            ("ssim", (ssim_map * weights).sum(dim=(1, 2)) / count),
            ("psnr", psnr_values),
            ("l1", (absolute * weights).sum(dim=(1, 2)) / count),
        ):
            results[f"{prefix}_{key}"] = torch.where(empty, torch.full_like(value, math.nan), value)
    return results


def appearance_signature(
    video: torch.Tensor, labels: torch.Tensor, num_parts: int, min_pixels: int = DEFAULT_MIN_REGION_PIXELS
) -> torch.Tensor:
    """A video's colour signature: each region's mean colour in CIELAB, averaged over the frames showing it.

    Args:
        video: ``(F, 3, H, W)`` in [0, 1].
        labels: the ground truth's regions ``(F, H, W)`` (``-1`` background).
        num_parts: P.

    Returns:
        float64 ``(P + 1, 3)`` L*a*b* (row P the background); NaN for a region no frame shows.
    """
    lab = rgb_to_lab(region_mean_colours(video, labels, num_parts, min_pixels))  # (F, P + 1, 3)
    return lab.nanmean(dim=0)


def signature_distance(signature_a: torch.Tensor, signature_b: torch.Tensor) -> torch.Tensor:
    """Mean ΔE*ab over the regions present in both signatures: ``(..., R, 3)`` pairs (broadcast) → ``(...)``;
    NaN when they share no region."""
    return delta_e(signature_a, signature_b).nanmean(dim=-1)


def identity_retrieval(queries: torch.Tensor, gallery: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Nearest-signature identification: each query is assigned the gallery entry at the smallest
    :func:`signature_distance` (the first on a tie).

    Args:
        queries: signatures of the generated videos ``(N, R, 3)``.
        gallery: signatures of the split's identities ``(M, R, 3)``, e.g. of the ground-truth videos.
        targets: the right gallery index per query ``(N,)``.

    Returns:
        ``accuracy`` (float), ``chance`` (``1 / M``), ``predictions`` ``(N,)`` long, ``correct`` ``(N,)`` bool and
        ``distances`` ``(N, M)``.
    """
    if queries.ndim != 3 or gallery.ndim != 3 or queries.shape[1:] != gallery.shape[1:]:
        raise ValueError(
            f"`queries` (N, R, 3) and `gallery` (M, R, 3) must share R; received {tuple(queries.shape)} and "
            f"{tuple(gallery.shape)}."
        )
    targets = torch.as_tensor(targets, dtype=torch.long)
    if targets.shape != (queries.shape[0],) or (targets.numel() and not 0 <= targets.min() <= targets.max() < len(gallery)):
        raise ValueError(f"`targets` must hold one gallery index in [0, {len(gallery)}) per query; received {targets}.")
    distances = signature_distance(queries[:, None], gallery[None])  # (N, M)
    predictions = torch.nan_to_num(distances, nan=math.inf).argmin(dim=1)
    correct = predictions == targets
    return {
        "accuracy": correct.double().mean().item(),
        "chance": 1.0 / len(gallery),
        "predictions": predictions,
        "correct": correct,
        "distances": distances,
    }


def paint_regions(labels: torch.Tensor, colours: torch.Tensor) -> torch.Tensor:
    """Images that paint every region in one colour: ``labels`` ``(N, H, W)`` (``-1`` background) and RGB
    ``colours`` ``(P + 1, 3)`` in [0, 1] (row P the background) → ``(N, 3, H, W)`` float64.

    With each region in the split's average colour of that region, this is the "ignores the reference" baseline.
    """
    if not isinstance(colours, torch.Tensor) or colours.ndim != 2 or colours.shape[1] != 3:
        raise ValueError(f"`colours` must be a tensor (P + 1, 3); received {getattr(colours, 'shape', colours)}.")
    num_parts = colours.shape[0] - 1
    regions = torch.where(labels < 0, num_parts, labels).long()
    return colours.to(torch.float64)[regions].permute(0, 3, 1, 2).contiguous()


def reference_spread(outputs: torch.Tensor) -> torch.Tensor:
    """How much a video changes with the reference frame: the mean L1 between every pair of ``K`` outputs generated
    with the same guidance and noise from ``K`` references of one video (0 when the output ignores which frame).

    Args:
        outputs: ``(K, F, 3, H, W)`` in [0, 1], K ≥ 2.

    Returns:
        float64 0-d tensor: mean over pairs ``a < b`` of ``mean |outputs[a] - outputs[b]|``.
    """
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 5 or outputs.shape[0] < 2:
        shape = tuple(outputs.shape) if isinstance(outputs, torch.Tensor) else type(outputs).__name__
        raise ValueError(f"`outputs` must have shape (K, F, 3, H, W) with K >= 2; received {shape}.")
    flat = outputs.to(torch.float64).flatten(1)
    first, second = torch.triu_indices(len(flat), len(flat), offset=1)
    return (flat[first] - flat[second]).abs().mean(dim=1).mean()


# ----------------------------------------------------------------------------------------------------------
# Fréchet distance (FID for images, FVD for videos)


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and unbiased covariance of a feature set.

    Args:
        features: ``(N, D)`` with N ≥ 2.

    Returns:
        float64 ``mean (D,)`` and ``covariance (D, D)`` (normalised by N - 1, as ``numpy.cov``).
    """
    if not isinstance(features, torch.Tensor) or features.ndim != 2 or features.shape[0] < 2:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"`features` must be a tensor of shape (N, D) with N >= 2; received {shape}.")
    features = features.to(torch.float64)
    mean = features.mean(dim=0)
    centred = features - mean
    return mean, centred.T @ centred / (features.shape[0] - 1)


def _symmetric_sqrt(matrix: torch.Tensor) -> torch.Tensor:
    """Principal square root of a symmetric positive semi-definite ``(D, D)`` matrix (eigen-decomposition)."""
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    return (eigenvectors * eigenvalues.clamp_min(0).sqrt()) @ eigenvectors.T


def frechet_distance(
    mean_a: torch.Tensor, covariance_a: torch.Tensor, mean_b: torch.Tensor, covariance_b: torch.Tensor
) -> float:
    """Fréchet (2-Wasserstein²) distance between the Gaussians N(mean_a, covariance_a) and N(mean_b, covariance_b).

    ``‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½)``; the trace term uses that ``Σa Σb`` and
    ``Σa^½ Σb Σa^½`` share eigenvalues, so only symmetric eigen-decompositions are needed (float64).

    Args:
        mean_a, mean_b: ``(D,)``.
        covariance_a, covariance_b: ``(D, D)``, symmetric positive semi-definite.

    Returns:
        The distance (≥ 0 up to rounding) as a float.
    """
    dimension = mean_a.shape[-1] if isinstance(mean_a, torch.Tensor) else None
    for name, value, shape in (
        ("mean_a", mean_a, (dimension,)),
        ("mean_b", mean_b, (dimension,)),
        ("covariance_a", covariance_a, (dimension, dimension)),
        ("covariance_b", covariance_b, (dimension, dimension)),
    ):
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape:
            received = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise ValueError(f"`{name}` must have shape {shape} (D = len(mean_a)); received {received}.")
    mean_a, mean_b, covariance_a, covariance_b = (
        value.to(torch.float64) for value in (mean_a, mean_b, covariance_a, covariance_b)
    )
    sqrt_a = _symmetric_sqrt(covariance_a)
    product = sqrt_a @ covariance_b @ sqrt_a
    trace_sqrt_product = torch.linalg.eigvalsh((product + product.T) / 2).clamp_min(0).sqrt().sum()
    distance = (mean_a - mean_b).square().sum() + covariance_a.trace() + covariance_b.trace() - 2 * trace_sqrt_product
    return distance.item()


def _require_local_file(name: str, path: str | Path | None, purpose: str) -> Path:
    if path is None:
        raise ValueError(
            f"`{name}` is required: {purpose} needs a local weights file, and referencelcm never downloads "
            f"weights; received None."
        )
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"`{name}` must be an existing local file for {purpose}; received '{path}'.")
    return path


def load_feature_network(path: str | Path | None, module: torch.nn.Module | None = None) -> torch.nn.Module:
    """Load a feature network for FID/FVD from a local file; never downloads.

    Args:
        path: ``*.pt2`` (``torch.export`` program), a TorchScript file, or — with ``module`` — a state dict
            (``*.safetensors`` or a ``torch.save``'d dict, read with ``weights_only=True``).
        module: architecture to load a state dict into (strictly); None for self-contained files.

    Returns:
        The network in eval mode. It maps ``(N, 3, H, W)`` images (or ``(B, 3, F, H, W)`` videos) to
        features ``(N, D)`` (trailing singleton dimensions are flattened by :class:`FrechetDistance`).
    """
    path = _require_local_file("feature_network_path", path, "FID/FVD")
    if module is not None:
        module.load_state_dict(load_state_dict_file(path, "`feature_network_path`"))
        network = module
    elif path.suffix == ".pt2":
        network = torch.export.load(str(path)).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the caller chose the TorchScript format
            network = torch.jit.load(str(path), map_location="cpu")
    return network.eval() if hasattr(network, "eval") else network


class FrechetDistance:
    """FID (images) or FVD (videos) from a user-supplied local feature network.

    The network receives the samples as given — ``(N, 3, H, W)`` images or ``(B, 3, F, H, W)`` videos in
    [0, 1] — after the optional ``input_transform`` (resize / normalise as the network expects), and
    must return ``(N, D)`` features. Which network (Inception for FID, I3D for FVD) and preprocessing
    make the numbers comparable to published ones is the caller's choice.

    Example::

        fid = FrechetDistance("inception.pt2")
        fid.update(real_frames, real=True)        # (N, 3, H, W) in [0, 1]
        fid.update(generated_frames, real=False)
        fid.compute()                             # float
    """

    def __init__(
        self,
        feature_network_path: str | Path | None,
        *,
        module: torch.nn.Module | None = None,
        input_transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ):
        self.network = load_feature_network(feature_network_path, module)
        self.input_transform = input_transform
        self.reset()

    def reset(self) -> None:
        """Forget all accumulated features."""
        self._features: dict[bool, list[torch.Tensor]] = {True: [], False: []}

    @torch.no_grad()
    def features(self, samples: torch.Tensor) -> torch.Tensor:
        """Features of a batch: ``(N, 3, H, W)`` or ``(B, 3, F, H, W)`` in [0, 1] → float64 ``(N, D)`` on CPU."""
        _check_pixels("samples", samples)
        self.network = self.network.to(samples.device)  # runs where the samples are; a no-op after the first call
        inputs = samples if self.input_transform is None else self.input_transform(samples)
        features = self.network(inputs)
        if features.ndim < 2 or features.shape[0] != samples.shape[0]:
            raise ValueError(
                f"the feature network must return (N, D) features for {samples.shape[0]} samples; "
                f"returned shape {tuple(features.shape)}."
            )
        return features.flatten(1).cpu().to(torch.float64)  # accumulated in host memory

    def update(self, samples: torch.Tensor, *, real: bool) -> None:
        """Add a batch ``(N, 3, H, W)`` / ``(B, 3, F, H, W)`` in [0, 1] to the real or the generated set."""
        self._features[bool(real)].append(self.features(samples))

    def compute(self) -> float:
        """Fréchet distance between the accumulated real and generated features (each needs ≥ 2 samples)."""
        statistics = []
        for real, label in ((True, "real"), (False, "generated")):
            if sum(batch.shape[0] for batch in self._features[real]) < 2:
                raise ValueError(f"FrechetDistance needs at least 2 {label} samples; call update(..., real={real}).")
            statistics.append(feature_statistics(torch.cat(self._features[real])))
        (mean_real, covariance_real), (mean_generated, covariance_generated) = statistics
        return frechet_distance(mean_real, covariance_real, mean_generated, covariance_generated)


# ----------------------------------------------------------------------------------------------------------
# LPIPS (needs the optional `lpips` package and local weights)


class LearnedPerceptualDistance:
    """LPIPS (Zhang et al. 2018) through the ``lpips`` package, from local files only.

    The ``lpips`` package would download its backbone (AlexNet/VGG/SqueezeNet) from torchvision; here
    the backbone is built untrained and filled from ``backbone_weights_path`` instead — a torchvision
    state dict (``features.<i>.weight`` …, classifier entries ignored) or lpips' own ``slice<k>.<i>.…``
    names. ``linear_weights_path`` is lpips' calibration file (``weights/v0.1/<net>.pth``).

    Args:
        linear_weights_path: lpips linear-layer weights (``lin<k>.model.1.weight``).
        backbone_weights_path: backbone state dict (``.pth`` / ``.safetensors``).
        net: ``"alex"``, ``"vgg"`` or ``"squeeze"``.

    The model runs on the device of the images it is called with.
    """

    def __init__(
        self,
        linear_weights_path: str | Path | None,
        backbone_weights_path: str | Path | None,
        *,
        net: str = "alex",
    ):
        linear_weights_path = _require_local_file("linear_weights_path", linear_weights_path, "LPIPS")
        backbone_weights_path = _require_local_file("backbone_weights_path", backbone_weights_path, "LPIPS")
        load_state_dict_file(linear_weights_path, "`linear_weights_path`")  # refuse pickled code before lpips reads it
        try:
            import lpips
        except ImportError as error:
            raise ImportError(
                "LearnedPerceptualDistance needs the optional `lpips` package (pip install lpips); "
                "it is not installed."
            ) from error
        self.model = lpips.LPIPS(
            pretrained=True, net=net, pnet_rand=True, model_path=str(linear_weights_path), verbose=False
        )
        backbone = load_state_dict_file(backbone_weights_path, "`backbone_weights_path`")
        self.model.net.load_state_dict(self._backbone_state_dict(backbone))
        self.model = self.model.eval().requires_grad_(False)

    def _backbone_state_dict(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Rename torchvision ``features.<i>.<param>`` entries to lpips' ``slice<k>.<i>.<param>``."""
        expected = self.model.net.state_dict().keys()
        by_layer = {key.split(".", 1)[1]: key for key in expected}  # "<i>.<param>" → "slice<k>.<i>.<param>"
        renamed = {}
        for key, value in state_dict.items():
            if key in expected:
                renamed[key] = value
            elif key.startswith("features.") and key.removeprefix("features.") in by_layer:
                renamed[by_layer[key.removeprefix("features.")]] = value
        missing = sorted(set(expected) - set(renamed))
        if missing:
            raise ValueError(
                f"`backbone_weights_path` lacks backbone weights {missing[:4]}{' …' if len(missing) > 4 else ''}; "
                f"expected torchvision `features.<i>.*` or lpips `slice<k>.<i>.*` names."
            )
        return renamed

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """LPIPS per image: ``(N, 3, H, W)`` / ``(B, 3, F, H, W)`` in [0, 1] → float64 ``(N,)`` / ``(B, F)``."""
        _check_pair(images, references)
        self.model = self.model.to(images.device)
        x, unflatten = _as_frames(images)
        y, _ = _as_frames(references)
        distances = self.model(x.to(torch.float32), y.to(torch.float32), normalize=True)
        return unflatten(distances.flatten().to(torch.float64))
