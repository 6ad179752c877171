import math
import sys
import types
import warnings

import numpy as np
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from referencelcm.metrics import (
    FrechetDistance,
    LearnedPerceptualDistance,
    feature_statistics,
    frechet_distance,
    l1,
    load_feature_network,
    psnr,
    ssim,
    temporal_flicker,
    temporal_flicker_comparison,
    video_metrics,
)


def random_pair(shape, noise=0.2, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(shape, generator=generator)
    noisy = (images + noise * torch.randn(shape, generator=generator)).clamp(0, 1)
    return images, noisy


# ---------------------------------------------------------------------------------------------------------
# independent SSIM reference: explicit weighted statistics of every full 11x11 window (two-pass variance),
# no filtering and no E[x^2] - E[x]^2 shortcut.


def reference_ssim(image_a, image_b, sigma=1.5, radius=5, k1=0.01, k2=0.03):
    """numpy float64 SSIM of two (3, H, W) images, mean over channels and valid windows."""
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(offsets**2) / (2 * sigma**2))
    weights = np.outer(taps, taps) / np.outer(taps, taps).sum()  # (11, 11)
    size = 2 * radius + 1
    windows_a = sliding_window_view(image_a, (size, size), axis=(1, 2))  # (3, H-10, W-10, 11, 11)
    windows_b = sliding_window_view(image_b, (size, size), axis=(1, 2))
    mean_a = (windows_a * weights).sum(axis=(-2, -1))
    mean_b = (windows_b * weights).sum(axis=(-2, -1))
    centred_a = windows_a - mean_a[..., None, None]
    centred_b = windows_b - mean_b[..., None, None]
    variance_a = (centred_a**2 * weights).sum(axis=(-2, -1))
    variance_b = (centred_b**2 * weights).sum(axis=(-2, -1))
    covariance = (centred_a * centred_b * weights).sum(axis=(-2, -1))
    c1, c2 = k1**2, k2**2
    ssim_map = ((2 * mean_a * mean_b + c1) * (2 * covariance + c2)) / (
        (mean_a**2 + mean_b**2 + c1) * (variance_a + variance_b + c2)
    )
    return ssim_map.mean()


# ---------------------------------------------------------------------------------------------------------
# SSIM


def test_ssim_of_identical_images_is_one():
    images, _ = random_pair((2, 3, 24, 20))
    assert torch.allclose(ssim(images, images), torch.ones(2, dtype=torch.float64), atol=1e-6, rtol=0)
    videos = images.reshape(1, 3, 2, 24, 20)
    assert torch.allclose(ssim(videos, videos), torch.ones(1, 2, dtype=torch.float64), atol=1e-6, rtol=0)


def test_ssim_of_constant_images_has_closed_form():
    # constant images have zero (co)variances, so SSIM = (2ab + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.3, 0.7, 0.01**2
    images = torch.full((1, 3, 16, 16), a)
    references = torch.full((1, 3, 16, 16), b)
    expected = (2 * a * b + c1) / (a**2 + b**2 + c1)
    assert ssim(images, references).item() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 32, 40), (2, 3, 11, 11), (1, 3, 17, 45)])
def test_ssim_matches_independent_reference(shape):
    images, references = random_pair(shape)
    values = ssim(images, references)
    expected = [reference_ssim(a.double().numpy(), b.double().numpy()) for a, b in zip(images, references)]
    assert values.shape == (shape[0],)
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-4, rtol=0)


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    images, references = random_pair((2, 3, 32, 40), seed=1)
    for image, reference, value in zip(images, references, ssim(images, references)):
        expected = metrics.structural_similarity(
            image.permute(1, 2, 0).double().numpy(),
            reference.permute(1, 2, 0).double().numpy(),
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
            data_range=1,
            channel_axis=2,
        )
        assert value.item() == pytest.approx(expected, abs=1e-6)


def test_ssim_decreases_with_noise():
    clean = random_pair((2, 3, 32, 32), noise=0.0)[0]
    scores = [ssim(clean, random_pair((2, 3, 32, 32), noise=noise)[1]).mean().item() for noise in (0.02, 0.1, 0.3)]
    # the same seed gives the same clean images, so only the noise level changes
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_video_layout_gives_one_value_per_frame():
    images, references = random_pair((6, 3, 16, 16))
    videos = images.reshape(2, 3, 3, 16, 16).transpose(1, 2)  # (B=2, 3, F=3, H, W)
    video_references = references.reshape(2, 3, 3, 16, 16).transpose(1, 2)
    for metric in (ssim, psnr, l1):
        per_frame = metric(images, references)
        per_video_frame = metric(videos, video_references)
        assert per_video_frame.shape == (2, 3)
        torch.testing.assert_close(per_video_frame.flatten(), per_frame)


# ---------------------------------------------------------------------------------------------------------
# PSNR and L1


def test_psnr_handles_identical_inputs():
    images, references = random_pair((2, 3, 8, 8))
    references[0] = images[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        values = psnr(images, references)
    assert values[0].item() == math.inf
    assert math.isfinite(values[1].item())
    assert not torch.isnan(values).any()


def test_psnr_and_l1_of_constant_offset():
    images = torch.full((2, 3, 8, 8), 0.25)
    references = images + 0.125  # exactly representable: MSE = 1/64
    assert psnr(images, references).tolist() == pytest.approx([10 * math.log10(64)] * 2)
    assert l1(images, references).tolist() == pytest.approx([0.125] * 2)
    shifted = torch.full((1, 3, 8, 8), 0.6)
    assert psnr(shifted - 0.1, shifted).item() == pytest.approx(20.0, abs=1e-4)  # 0.1 offset = 20 dB


# ---------------------------------------------------------------------------------------------------------
# flicker and the per-video summary


def test_flicker_of_constant_video_is_zero():
    assert temporal_flicker(torch.full((5, 3, 8, 8), 0.4)).item() == 0.0


def test_flicker_of_alternating_frames_is_their_difference():
    video = torch.full((6, 3, 8, 8), 0.25)
    video[1::2] = 0.75
    assert temporal_flicker(video).item() == pytest.approx(0.5)
    batch = torch.stack([video, torch.zeros_like(video)]).transpose(1, 2)  # (2, 3, F, H, W)
    assert temporal_flicker(batch).tolist() == pytest.approx([0.5, 0.0])
    assert temporal_flicker_comparison(video, torch.zeros_like(video)) == {
        "flicker": pytest.approx(0.5),
        "flicker_ground_truth": 0.0,
    }


def test_video_metrics():
    ground_truth, generated = random_pair((4, 3, 16, 16), noise=0.1)
    metrics = video_metrics(generated, ground_truth)
    assert set(metrics) == {"ssim", "psnr", "l1", "flicker", "flicker_ground_truth"}
    assert all(isinstance(value, float) for value in metrics.values())
    assert metrics["ssim"] == pytest.approx(ssim(generated, ground_truth).mean().item())
    assert metrics["flicker_ground_truth"] == pytest.approx(temporal_flicker(ground_truth).item())
    identical = video_metrics(ground_truth, ground_truth)
    assert identical["psnr"] == math.inf and identical["l1"] == 0.0 and identical["ssim"] == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------
# input validation


@pytest.mark.parametrize(
    "bad, message",
    [
        (torch.rand(3, 8, 8), r"shape \(N, 3, H, W\) or \(B, 3, F, H, W\); received shape \(3, 8, 8\)"),
        (torch.rand(2, 4, 8, 8), r"received shape \(2, 4, 8, 8\)"),
        (torch.rand(2, 3, 8, 8) * 2, r"values in \[0, 1\]; received values in"),
        (torch.rand(2, 3, 8, 8) - 1, r"values in \[0, 1\]; received values in"),
        (torch.full((2, 3, 8, 8), math.nan), r"values in \[0, 1\]"),
        (torch.ones(2, 3, 8, 8, dtype=torch.uint8), r"floating-point"),
    ],
)
def test_bad_images_are_rejected(bad, message):
    for metric in (ssim, psnr, l1):
        with pytest.raises(ValueError, match=r"`images`.*" + message):
            metric(bad, torch.zeros(2, 3, 8, 8))


def test_mismatched_and_too_small_inputs_are_rejected():
    with pytest.raises(ValueError, match=r"same shape.*\(2, 3, 16, 16\) and \(1, 3, 16, 16\)"):
        psnr(torch.rand(2, 3, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match=r"at least 11x11 pixels for SSIM; received shape \(1, 3, 10, 16\)"):
        ssim(torch.rand(1, 3, 10, 16), torch.rand(1, 3, 10, 16))
    with pytest.raises(ValueError, match=r"`video` must have at least 2 frames"):
        temporal_flicker(torch.rand(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"`generated` must have shape \(N, 3, H, W\); received shape"):
        video_metrics(torch.rand(1, 3, 2, 16, 16), torch.rand(1, 3, 2, 16, 16))


# ---------------------------------------------------------------------------------------------------------
# Fréchet distance


def rotation(dimension, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(dimension, dimension, generator=generator, dtype=torch.float64))[0]


def test_frechet_distance_of_commuting_gaussians_matches_closed_form():
    # covariances sharing an eigenbasis: d = |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2
    basis = rotation(6, seed=0)
    eigen_a = torch.tensor([0.5, 1.0, 2.0, 3.0, 0.1, 4.0], dtype=torch.float64)
    eigen_b = torch.tensor([1.5, 0.2, 2.0, 0.7, 0.1, 9.0], dtype=torch.float64)
    mean_a = torch.arange(6, dtype=torch.float64)
    mean_b = mean_a + torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 0.0], dtype=torch.float64)
    covariance_a = basis @ torch.diag(eigen_a) @ basis.T
    covariance_b = basis @ torch.diag(eigen_b) @ basis.T
    expected = (mean_a - mean_b).square().sum() + (eigen_a.sqrt() - eigen_b.sqrt()).square().sum()
    distance = frechet_distance(mean_a, covariance_a, mean_b, covariance_b)
    assert distance == pytest.approx(expected.item(), abs=1e-9)
    assert frechet_distance(mean_a, covariance_a, mean_a, covariance_a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_non_commuting_gaussians():
    # 1-D sanity: d = (m_a - m_b)^2 + (s_a - s_b)^2 for standard deviations s
    one = torch.ones(1, 1, dtype=torch.float64)
    assert frechet_distance(torch.zeros(1), 4 * one, torch.ones(1), 9 * one) == pytest.approx(2.0)
    # general case: symmetric, and equal to the definition with scipy's general matrix square root
    covariance_a = rotation(5, 1) @ torch.diag(torch.linspace(0.1, 2, 5, dtype=torch.float64)) @ rotation(5, 1).T
    covariance_b = rotation(5, 2) @ torch.diag(torch.linspace(0.5, 3, 5, dtype=torch.float64)) @ rotation(5, 2).T
    mean = torch.zeros(5, dtype=torch.float64)
    forward = frechet_distance(mean, covariance_a, mean, covariance_b)
    assert forward == pytest.approx(frechet_distance(mean, covariance_b, mean, covariance_a), abs=1e-9)
    linalg = pytest.importorskip("scipy.linalg")
    product_sqrt = linalg.sqrtm((covariance_a @ covariance_b).numpy()).real
    expected = np.trace(covariance_a.numpy() + covariance_b.numpy() - 2 * product_sqrt)
    assert forward == pytest.approx(expected, abs=1e-8)


def test_feature_statistics_match_numpy():
    features = torch.randn(50, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean, covariance = feature_statistics(features)
    np.testing.assert_allclose(mean.numpy(), features.numpy().mean(0))
    np.testing.assert_allclose(covariance.numpy(), np.cov(features.numpy(), rowvar=False))
    with pytest.raises(ValueError, match=r"`features` must be a tensor of shape \(N, D\) with N >= 2"):
        feature_statistics(torch.ones(1, 4))


class ChannelMeans(torch.nn.Module):
    """Tiny feature network: (N, 3, H, W) -> per-channel means (N, 3), plus a learnable scale."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(3))

    def forward(self, images):
        return images.mean(dim=(2, 3)) * self.scale


def check_frechet_distance(fid):
    real = torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    fid.update(real[:8], real=True)
    fid.update(real[8:], real=True)
    fid.update(real, real=False)
    assert fid.compute() == pytest.approx(0.0, abs=1e-9)
    fid.reset()
    fid.update(real, real=True)
    fid.update(real + 0.1, real=False)  # same covariance, every feature shifted by 0.1 (scale 2 → 0.2)
    assert fid.compute() == pytest.approx(3 * 0.2**2, abs=1e-6)  # float32 features


def test_frechet_distance_from_local_state_dict(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "features.safetensors"
    save_file({"scale": torch.full((3,), 2.0)}, str(path))
    check_frechet_distance(FrechetDistance(path, module=ChannelMeans()))


def test_frechet_distance_from_local_torchscript(tmp_path):
    path = tmp_path / "features.pt"
    network = ChannelMeans()
    network.scale.data.fill_(2.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(network).save(str(path))
    check_frechet_distance(FrechetDistance(path))


def test_frechet_distance_needs_enough_samples(tmp_path):
    path = tmp_path / "features.pt"
    torch.save(ChannelMeans().state_dict(), path)
    fid = FrechetDistance(path, module=ChannelMeans())
    fid.update(torch.rand(4, 3, 8, 8), real=True)
    with pytest.raises(ValueError, match="at least 2 generated samples"):
        fid.compute()


def test_missing_weights_are_clear_errors(tmp_path):
    missing = tmp_path / "absent.pt"
    with pytest.raises(ValueError, match=r"`feature_network_path` is required.*never downloads"):
        FrechetDistance(None)
    with pytest.raises(FileNotFoundError, match=r"`feature_network_path` must be an existing local file.*absent\.pt"):
        load_feature_network(missing)
    with pytest.raises(ValueError, match=r"`linear_weights_path` is required"):
        LearnedPerceptualDistance(None, missing)
    with pytest.raises(FileNotFoundError, match=r"`backbone_weights_path` must be an existing local file"):
        LearnedPerceptualDistance(__file__, missing)


# ---------------------------------------------------------------------------------------------------------
# LPIPS wrapper (the real `lpips` package needs torchvision; its interface is stood in for here)


def test_lpips_without_the_package_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", None)  # makes `import lpips` fail
    weights = tmp_path / "weights.pth"
    torch.save({}, weights)
    with pytest.raises(ImportError, match=r"needs the optional `lpips` package"):
        LearnedPerceptualDistance(weights, weights)


def fake_lpips_module():
    """Stand-in with lpips' interface: `LPIPS(pretrained, net, pnet_rand, model_path, verbose)`, `.net.slice<k>`."""

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.slice1 = torch.nn.Sequential()
            self.slice1.add_module("0", torch.nn.Conv2d(3, 4, 3))
            self.slice1.add_module("1", torch.nn.ReLU())
            self.slice2 = torch.nn.Sequential()
            self.slice2.add_module("2", torch.nn.Conv2d(4, 2, 3))

    class LPIPS(torch.nn.Module):
        def __init__(self, pretrained, net, pnet_rand, model_path, verbose):
            super().__init__()
            assert pnet_rand and pretrained and net == "alex"
            self.net = Backbone()
            self.lin0 = torch.nn.Conv2d(2, 1, 1, bias=False)
            self.load_state_dict(torch.load(model_path, weights_only=True), strict=False)

        def forward(self, in0, in1, normalize=False):
            features0 = self.net.slice2(self.net.slice1(2 * in0 - 1))
            features1 = self.net.slice2(self.net.slice1(2 * in1 - 1))
            return self.lin0((features0 - features1).square()).mean(dim=(2, 3), keepdim=True)

    module = types.ModuleType("lpips")
    module.LPIPS = LPIPS
    return module


def test_lpips_loads_torchvision_backbone_names(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips", fake_lpips_module())
    torch.manual_seed(0)
    backbone = {
        "features.0.weight": torch.randn(4, 3, 3, 3),
        "features.0.bias": torch.randn(4),
        "features.2.weight": torch.randn(2, 4, 3, 3),
        "features.2.bias": torch.randn(2),
        "classifier.1.weight": torch.randn(5, 5),  # ignored
    }
    torch.save(backbone, tmp_path / "backbone.pth")
    torch.save({"lin0.weight": torch.ones(1, 2, 1, 1)}, tmp_path / "linear.pth")
    metric = LearnedPerceptualDistance(tmp_path / "linear.pth", tmp_path / "backbone.pth")
    assert torch.equal(metric.model.net.slice2[0].weight, backbone["features.2.weight"])
    images, references = random_pair((2, 3, 8, 8))
    values = metric(images, references)
    assert values.shape == (2,) and (values > 0).all()
    assert metric(images, images).abs().max() == 0

    del backbone["features.2.bias"]
    torch.save(backbone, tmp_path / "backbone.pth")
    with pytest.raises(ValueError, match=r"lacks backbone weights \['slice2.2.bias'\]"):
        LearnedPerceptualDistance(tmp_path / "linear.pth", tmp_path / "backbone.pth")
