"""Reconstruction metrics (PSNR, SSIM) and codebook statistics, in plain torch.

Images are `[B, C, H, W]` tensors in [-1, 1], the range the tokenizer reads and writes. The metrics
convert them to [0, 1] pixels and clamp there, so a reconstruction that overshoots the range is scored
as the image it would be saved as. Every function computes in float32 (float64 for sums), whatever
the input dtype, so bf16 decoder outputs score the same as float32 ones.
"""

from __future__ import annotations

import math
from collections import deque

import torch
import torch.nn.functional as F

PSNR_MAX_DB = 100.0
"""PSNR reported for identical images, whose mean squared error is 0."""

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03

_CODE_SPREAD_MAX_CHUNK_ELEMENTS = 2**24


def _to_unit_range(images: torch.Tensor, name: str) -> torch.Tensor:
    if images.ndim != 4:
        raise ValueError(f"`{name}` must be a [B, C, H, W] tensor, got shape {tuple(images.shape)}.")
    return ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)


def _check_pair(reference: torch.Tensor, reconstruction: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    reference = _to_unit_range(reference, "reference")
    reconstruction = _to_unit_range(reconstruction, "reconstruction")
    if reference.shape != reconstruction.shape:
        raise ValueError(
            f"`reference` and `reconstruction` must have the same shape, got {tuple(reference.shape)} and "
            f"{tuple(reconstruction.shape)}."
        )
    return reference, reconstruction.to(reference.device)


def psnr(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Compute the PSNR in dB of each image pair on [0, 1] pixels.

    Args:
        reference, reconstruction: `[B, C, H, W]` images in [-1, 1].

    Returns:
        `Tensor[B]` (float32), capped at `PSNR_MAX_DB` (100 dB) so identical images give a finite value.
    """
    reference, reconstruction = _check_pair(reference, reconstruction)
    mse = (reference - reconstruction).pow(2).flatten(1).mean(dim=1)
    # PSNR = 10 log10(MAX^2 / MSE) with MAX = 1. A zero MSE gives +inf, which the cap turns into 100 dB.
    values = 10.0 * torch.log10(1.0 / mse)
    return values.clamp(max=PSNR_MAX_DB)


def _gaussian_window(sigma: float, truncate: float, device: torch.device) -> torch.Tensor:
    # The same 1-D kernel as scipy.ndimage.gaussian_filter: radius int(truncate * sigma + 0.5),
    # weights exp(-x^2 / (2 sigma^2)) normalized to sum 1.
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64, device=device)
    window = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return (window / window.sum()).float()


def ssim(reference: torch.Tensor, reconstruction: torch.Tensor) -> torch.Tensor:
    """Compute the mean SSIM of each image pair, as scikit-image computes it.

    Matches `skimage.metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True,
    sigma=1.5, use_sample_covariance=False)` on [0, 1] pixels (with `channel_axis=-1` for color),
    checked to 1e-3 in the tests. scikit-image filters with an 11x11 Gaussian window (truncated at 3.5
    sigma) and then crops 5 pixels from each border before averaging. The values it keeps depend only on
    interior pixels, so a 'valid' convolution gives the same numbers. Color images average over channels.

    Args:
        reference, reconstruction: `[B, C, H, W]` images in [-1, 1], with H and W at least 11.

    Returns:
        `Tensor[B]` (float32).
    """
    reference, reconstruction = _check_pair(reference, reconstruction)
    window = _gaussian_window(SSIM_SIGMA, SSIM_TRUNCATE, reference.device)
    win_size = window.numel()
    batch_size, num_channels, height, width = reference.shape
    if height < win_size or width < win_size:
        raise ValueError(
            f"SSIM needs images of at least {win_size}x{win_size} pixels (its Gaussian window), got {height}x{width}."
        )

    # Filter every channel of every image separately: fold channels into the batch axis.
    x = reference.reshape(batch_size * num_channels, 1, height, width)
    y = reconstruction.reshape(batch_size * num_channels, 1, height, width)
    stacked = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # [B*C, 5, H, W]
    kernel_rows = window.view(1, 1, win_size, 1).expand(5, 1, win_size, 1)
    kernel_cols = window.view(1, 1, 1, win_size).expand(5, 1, 1, win_size)
    filtered = F.conv2d(F.conv2d(stacked, kernel_rows, groups=5), kernel_cols, groups=5)
    mu_x, mu_y, mu_xx, mu_yy, mu_xy = filtered.unbind(dim=1)

    # Population (co)variances, as use_sample_covariance=False.
    var_x = mu_xx - mu_x * mu_x
    var_y = mu_yy - mu_y * mu_y
    cov_xy = mu_xy - mu_x * mu_y
    c1 = SSIM_K1**2  # (K1 * data_range)^2 with data_range = 1
    c2 = SSIM_K2**2
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov_xy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    ssim_map = ssim_map.reshape(batch_size, -1)  # [B, C * H' * W']
    return ssim_map.double().mean(dim=1).float()


def _check_ids(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    if codebook_size < 1:
        raise ValueError(f"`codebook_size` must be a positive integer, got {codebook_size}.")
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise ValueError(f"Code ids must be an integer tensor, got dtype {ids.dtype}.")
    ids = ids.reshape(-1).long()
    if ids.numel() == 0:
        raise ValueError("Code ids are empty: pass at least one id.")
    smallest, largest = int(ids.min()), int(ids.max())
    if smallest < 0 or largest >= codebook_size:
        raise ValueError(
            f"Code ids must lie in [0, {codebook_size - 1}] for a codebook of size {codebook_size}, "
            f"got ids from {smallest} to {largest}."
        )
    return ids


def code_histogram(ids: torch.Tensor, codebook_size: int) -> torch.Tensor:
    """Count how often each code id occurs in `ids` (any shape). Returns `Tensor[codebook_size]` (int64)."""
    ids = _check_ids(ids, codebook_size)
    return torch.bincount(ids, minlength=codebook_size)


def _utilization_from_counts(counts: torch.Tensor) -> float:
    return int((counts > 0).sum()) / counts.numel()


def _perplexity_from_counts(counts: torch.Tensor) -> float:
    # perplexity = exp(H), H = -sum_k p_k ln p_k over the used codes.
    probabilities = counts.double() / counts.sum()
    probabilities = probabilities[probabilities > 0]
    entropy = -(probabilities * probabilities.log()).sum()
    return math.exp(float(entropy))


def codebook_utilization(ids: torch.Tensor, codebook_size: int) -> float:
    """Return the share of the codebook that `ids` use: distinct ids / `codebook_size`, in (0, 1]."""
    return _utilization_from_counts(code_histogram(ids, codebook_size))


def codebook_perplexity(ids: torch.Tensor, codebook_size: int) -> float:
    """Return `exp(entropy)` (natural log) of the id histogram, from 1 (one code) to `codebook_size` (uniform)."""
    return _perplexity_from_counts(code_histogram(ids, codebook_size))


def dead_codes(ids: torch.Tensor, codebook_size: int) -> int:
    """Return the number of codebook entries that never occur in `ids`."""
    counts = code_histogram(ids, codebook_size)
    return int((counts == 0).sum())


def code_spread(codebook_vectors: torch.Tensor, ids: torch.Tensor) -> float:
    """Compute the mean pairwise Euclidean distance between the codebook vectors that `ids` use.

    Pass the vectors the decoder receives (after any l2 normalization). Each used code counts once,
    however often it occurs. The distances are computed in float32 in row chunks, so a 16384 x 8
    codebook needs about 64 MiB at a time, and summed in float64.

    Args:
        codebook_vectors: `[codebook_size, dim]`.
        ids: code ids of any shape.

    Returns:
        The mean over all pairs of distinct used codes, or 0.0 when fewer than 2 codes are used.
    """
    if codebook_vectors.ndim != 2:
        raise ValueError(
            f"`codebook_vectors` must be a [codebook_size, dim] tensor, got shape {tuple(codebook_vectors.shape)}."
        )
    ids = _check_ids(ids, codebook_vectors.shape[0])
    used = torch.unique(ids.to(codebook_vectors.device))
    num_used = used.numel()
    if num_used < 2:
        return 0.0

    vectors = codebook_vectors.detach()[used].float()  # [num_used, dim]
    chunk_rows = max(1, _CODE_SPREAD_MAX_CHUNK_ELEMENTS // num_used)
    total = torch.zeros((), dtype=torch.float64, device=vectors.device)
    for chunk in vectors.split(chunk_rows):
        # The direct difference form avoids the cancellation of the matrix-product form for close codes.
        distances = torch.cdist(chunk, vectors, compute_mode="donot_use_mm_for_euclid_dist")
        total += distances.double().sum()
    # `total` counts every ordered pair (i, j), i != j, once, and the diagonal adds 0.
    return float(total) / (num_used * (num_used - 1))


def codebook_metrics(ids: torch.Tensor, codebook_vectors: torch.Tensor) -> dict[str, float | int]:
    """Compute all codebook statistics of `ids` at once, under the JSON keys of the evaluation results."""
    codebook_size = codebook_vectors.shape[0]
    counts = code_histogram(ids, codebook_size)
    return {
        "codebook_utilization": _utilization_from_counts(counts),
        "perplexity": _perplexity_from_counts(counts),
        "dead_codes": int((counts == 0).sum()),
        "code_spread": code_spread(codebook_vectors, ids),
    }


class CodeUsageTracker:
    """Codebook usage over a sliding window of the last `window_size` batches, for training logs.

    Stores one id histogram per batch plus their running sum, on the device of the first batch, so
    `update` costs one `bincount` and the statistics cost one pass over the codebook. The tracker counts
    only the ids passed to `update`: under multi-process training, gather the ids first (or log per process).
    """

    def __init__(self, codebook_size: int, window_size: int = 100):
        if codebook_size < 1:
            raise ValueError(f"`codebook_size` must be a positive integer, got {codebook_size}.")
        if window_size < 1:
            raise ValueError(f"`window_size` must be a positive integer, got {window_size}.")
        self.codebook_size = codebook_size
        self.window_size = window_size
        self._histograms: deque[torch.Tensor] = deque()
        self._window_counts: torch.Tensor | None = None

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._histograms.clear()
        self._window_counts = None

    @property
    def num_batches(self) -> int:
        """Number of batches in the window (at most `window_size`)."""
        return len(self._histograms)

    def update(self, ids: torch.Tensor) -> None:
        """Add one batch of code ids (any shape), dropping the oldest batch once the window is full."""
        histogram = code_histogram(ids.detach(), self.codebook_size)
        if self._window_counts is None:
            self._window_counts = torch.zeros_like(histogram)
        histogram = histogram.to(self._window_counts.device)
        self._histograms.append(histogram)
        self._window_counts += histogram
        if len(self._histograms) > self.window_size:
            self._window_counts -= self._histograms.popleft()

    def _counts(self) -> torch.Tensor:
        if self._window_counts is None:
            raise ValueError("CodeUsageTracker has no batches yet: call `update(ids)` first.")
        return self._window_counts

    def utilization(self) -> float:
        """Share of the codebook used in the window."""
        return _utilization_from_counts(self._counts())

    def perplexity(self) -> float:
        """`exp(entropy)` of the id histogram over the window."""
        return _perplexity_from_counts(self._counts())

    def dead_codes(self) -> int:
        """Number of codes unused in the whole window."""
        return int((self._counts() == 0).sum())

    def metrics(self) -> dict[str, float | int]:
        """Return the window's statistics under the keys used in training logs."""
        return {
            "codebook_utilization": self.utilization(),
            "perplexity": self.perplexity(),
            "dead_codes": self.dead_codes(),
        }
