"""Properties of the CoSeC regularisers (paper Eqs. 4, 6, 7)."""

import math

import pytest
import torch

from referencelcm.training.cosec import (
    contrastive_negative_sampling,
    equivalent_target_aggregation,
    sample_distance,
    self_dependency,
    spatial_regulariser,
    temporal_regulariser,
)

GROUP_IDS = torch.tensor([0, 0, 0, 1, 1, 2])  # two equivalent groups and one lone sample
SOURCE_IDS = torch.tensor([5, 5, 5, 7, 7, 9])  # each group's references come from one video


def latents(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_sample_distance_hand_computed_two_samples():
    prediction = torch.tensor([[[0.0, 3.0]], [[1.0, 1.0]]])  # (B=2, 1, 2)
    target = torch.tensor([[[4.0, 3.0]], [[1.0, -1.0]]])
    torch.testing.assert_close(sample_distance(prediction, target, "l2"), torch.tensor([8.0, 2.0]))
    huber = sample_distance(prediction, target, "huber", huber_c=1.0)
    torch.testing.assert_close(huber, torch.tensor([(math.sqrt(17) - 1) / 2, (math.sqrt(5) - 1) / 2]))
    assert sample_distance(prediction, target).shape == (2,)
    with pytest.raises(ValueError, match="loss_type"):
        sample_distance(prediction, target, "l1")


def test_eta_is_zero_for_identical_members_and_grows_with_spread():
    center = latents(1, 4, 8, 8)
    spread = latents(6, 4, 8, 8, seed=1)
    assert equivalent_target_aggregation(center.expand(6, -1, -1, -1), GROUP_IDS) == 0
    values = [equivalent_target_aggregation(center + scale * spread, GROUP_IDS) for scale in (0.01, 0.1, 1.0, 10.0)]
    assert all(earlier < later for earlier, later in zip(values, values[1:]))


def test_eta_only_pairs_within_groups():
    denoised = latents(6, 4, 8, 8)
    pairs = [(0, 1), (0, 2), (1, 2), (3, 4)]
    expected = torch.stack([sample_distance(denoised[[i]], denoised[[j]], "l2")[0] for i, j in pairs]).mean()
    torch.testing.assert_close(equivalent_target_aggregation(denoised, GROUP_IDS, "l2"), expected)
    moved = denoised.clone()
    moved[5] += 100.0  # the lone sample is in no pair
    torch.testing.assert_close(equivalent_target_aggregation(moved, GROUP_IDS, "l2"), expected)


def test_pairwise_terms_are_zero_without_pairs():
    denoised = latents(3, 4, 8, 8)
    assert equivalent_target_aggregation(denoised, torch.tensor([0, 1, 2])) == 0
    assert contrastive_negative_sampling(denoised, torch.tensor([4, 4, 4])) == 0
    assert temporal_regulariser(latents(3, 4, 5, 2, 2), torch.tensor([0, 1, 2])) == 0


def test_cons_ignores_same_source_pairs():
    denoised = latents(6, 4, 8, 8)
    denoised[3:, 0] = 0  # the other sources' samples (3, 4, 5) lie in the hyperplane "channel 0 = 0"
    moved = denoised.clone()
    moved[1, 0] = -moved[1, 0]  # mirror sample 1: its distances to other sources are kept, to its own source are not
    assert equivalent_target_aggregation(moved, GROUP_IDS) != equivalent_target_aggregation(denoised, GROUP_IDS)
    for loss_type in ("huber", "l2"):
        torch.testing.assert_close(
            contrastive_negative_sampling(moved, SOURCE_IDS, loss_type),
            contrastive_negative_sampling(denoised, SOURCE_IDS, loss_type),
        )


def test_cons_averages_inter_source_pairs():
    denoised = latents(6, 4, 8, 8)
    inter = [(i, j) for i in range(6) for j in range(i + 1, 6) if SOURCE_IDS[i] != SOURCE_IDS[j]]
    expected = torch.stack([sample_distance(denoised[[i]], denoised[[j]], "l2")[0] for i, j in inter]).mean()
    torch.testing.assert_close(contrastive_negative_sampling(denoised, SOURCE_IDS, "l2"), expected)


def test_spatial_regulariser_combines_eta_and_cons():
    denoised = latents(6, 4, 8, 8)
    eta = equivalent_target_aggregation(denoised, GROUP_IDS)
    cons = contrastive_negative_sampling(denoised, SOURCE_IDS)
    regulariser = spatial_regulariser(denoised, GROUP_IDS, SOURCE_IDS, eta_weight=0.1, cons_weight=0.02)
    torch.testing.assert_close(regulariser, 0.1 * eta - 0.02 * cons)
    torch.testing.assert_close(spatial_regulariser(denoised, GROUP_IDS, SOURCE_IDS, 0.1, 0.0), 0.1 * eta)


def test_self_dependency_is_a_cosine_similarity_matrix():
    video = latents(2, 4, 5, 3, 3)
    matrix = self_dependency(video)
    assert matrix.shape == (2, 5, 5)
    torch.testing.assert_close(matrix, matrix.transpose(1, 2))
    torch.testing.assert_close(torch.diagonal(matrix, dim1=1, dim2=2), torch.ones(2, 5))
    frame_scales = torch.tensor([0.5, 2.0, 3.0, 10.0, 0.1]).view(1, 1, 5, 1, 1)
    torch.testing.assert_close(self_dependency(video * frame_scales), matrix)
    cosine = torch.nn.functional.cosine_similarity(video[1, :, 0].flatten(), video[1, :, 3].flatten(), dim=0)
    torch.testing.assert_close(matrix[1, 0, 3], cosine)


def test_self_dependency_guards_zero_frames():
    video = latents(1, 4, 3, 2, 2)
    video[:, :, 1] = 0
    video.requires_grad_(True)
    matrix = self_dependency(video)
    matrix.sum().backward()
    assert torch.isfinite(matrix).all() and torch.isfinite(video.grad).all()
    assert matrix[0, 1].abs().sum() == 0
    with pytest.raises(ValueError, match="latents"):
        self_dependency(latents(2, 4, 3, 3))


def test_temporal_regulariser_compares_self_dependency_of_group_members():
    video = latents(3, 4, 5, 2, 2)
    group_ids = torch.tensor([0, 0, 1])
    frame_scales = torch.tensor([0.5, 2.0, 3.0, 10.0, 0.1]).view(1, 5, 1, 1)
    same_motion = video.clone()
    same_motion[1] = video[0] * frame_scales  # same cosine structure
    assert temporal_regulariser(same_motion, group_ids) < 1e-6
    expected = sample_distance(self_dependency(video[[0]]), self_dependency(video[[1]]))[0]
    torch.testing.assert_close(temporal_regulariser(video, group_ids), expected)


REGULARISERS = {
    "eta": lambda x, groups, sources: equivalent_target_aggregation(x, groups),
    "cons": lambda x, groups, sources: contrastive_negative_sampling(x, sources),
    "spatial": lambda x, groups, sources: spatial_regulariser(x, groups, sources, 0.1, 0.02),
    "temporal": lambda x, groups, sources: temporal_regulariser(x, groups),
    "eta_l2": lambda x, groups, sources: equivalent_target_aggregation(x, groups, "l2"),
}


@pytest.mark.parametrize("name", sorted(REGULARISERS))
def test_regularisers_are_differentiable(name):
    denoised = latents(6, 4, 3, 2, 2).requires_grad_(True)
    value = REGULARISERS[name](denoised, GROUP_IDS, SOURCE_IDS)
    assert value.ndim == 0
    value.backward()
    assert torch.isfinite(denoised.grad).all() and denoised.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(REGULARISERS))
def test_regularisers_gradcheck(name):
    denoised = latents(4, 2, 3, 2, 1).double().requires_grad_(True)
    groups, sources = torch.tensor([0, 1, 0, 1]), torch.tensor([0, 1, 0, 1])
    # float32 inside sample_distance / self_dependency: compare against finite differences loosely
    assert torch.autograd.gradcheck(
        lambda x: REGULARISERS[name](x, groups, sources).double(), (denoised,), eps=1e-3, atol=2e-3, rtol=2e-2
    )


@pytest.mark.parametrize("name", sorted(REGULARISERS))
def test_regularisers_are_invariant_to_batch_permutation(name):
    denoised = latents(6, 4, 3, 2, 2)
    permutation = torch.tensor([4, 2, 5, 0, 3, 1])
    original = REGULARISERS[name](denoised, GROUP_IDS, SOURCE_IDS)
    permuted = REGULARISERS[name](denoised[permutation], GROUP_IDS[permutation], SOURCE_IDS[permutation])
    torch.testing.assert_close(permuted, original)


def test_ids_must_match_batch():
    with pytest.raises(ValueError, match="group_ids"):
        equivalent_target_aggregation(latents(3, 4, 2, 2), torch.tensor([0, 0]))
