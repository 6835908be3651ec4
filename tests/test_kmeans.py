"""Tests of the K-Means codebook init: accuracy, spherical mode, edge cases, chunking and determinism."""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from provq_hf.kmeans import (
    assign_to_centers,
    gather_from_all_processes,
    kmeans,
    kmeans_codebook_init,
    kmeans_plus_plus,
)


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def gaussian_mixture(num_centers, dim, points_per_center=200, spread=10.0, std=0.3, seed=0):
    """Return (points [num_centers * points_per_center, dim], true centers [num_centers, dim])."""
    generator = seeded(seed)
    # Centers drawn with standard deviation `spread` lie far apart compared to the noise `std`.
    centers = spread * torch.randn(num_centers, dim, generator=generator)
    noise = std * torch.randn(num_centers, points_per_center, dim, generator=generator)
    points = (centers[:, None, :] + noise).reshape(-1, dim)
    return points, centers


@pytest.mark.parametrize("dim", [2, 8])
def test_kmeans_recovers_gaussian_mixture(dim):
    points, true_centers = gaussian_mixture(8, dim, seed=dim)

    centers, _ = kmeans(points, 8, num_iters=30, generator=seeded(0))

    distances = torch.cdist(true_centers, centers)
    # Each true center has a found center within 0.2, and no found center serves two true centers.
    assert distances.min(dim=1).values.max() < 0.2
    assert distances.argmin(dim=1).unique().numel() == 8


def test_kmeans_inertia_matches_assignment():
    points, _ = gaussian_mixture(8, 8, seed=3)

    centers, inertia = kmeans(points, 8, num_iters=30, generator=seeded(0))

    expected = torch.cdist(points, centers).pow(2).min(dim=1).values.sum()
    assert inertia == pytest.approx(float(expected), rel=1e-4)


def test_kmeans_inertia_near_noise_floor():
    points, _ = gaussian_mixture(8, 8, points_per_center=250, std=0.3, seed=4)

    _, inertia = kmeans(points, 8, num_iters=30, generator=seeded(0))

    # With the true centers the expected inertia is N * D * std^2 = 2000 * 8 * 0.09 = 1440.
    assert inertia == pytest.approx(1440.0, rel=0.1)


def test_kmeans_spherical_unit_norm_centers():
    points, _ = gaussian_mixture(16, 8, points_per_center=50, seed=5)

    centers, _ = kmeans(points, 16, num_iters=20, spherical=True, generator=seeded(0))

    assert torch.allclose(centers.norm(dim=1), torch.ones(16), atol=1e-5)


def test_kmeans_spherical_recovers_directions():
    generator = seeded(6)
    directions = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    scales = 1.0 + 9.0 * torch.rand(6, 100, 1, generator=generator)
    noise = 0.02 * torch.randn(6, 100, 8, generator=generator)
    # Points lie along each direction at very different radii: only the direction matters.
    points = (scales * (directions[:, None, :] + noise)).reshape(-1, 8)

    centers, _ = kmeans(points, 6, num_iters=20, spherical=True, generator=seeded(0))

    similarity = directions @ centers.T
    assert similarity.max(dim=1).values.min() > 0.99


def test_kmeans_empty_cluster_reseeded_without_nan():
    # Three distinct points, each repeated 40 times, for 6 clusters: k-means++ runs out of new points,
    # picks duplicates, and Lloyd's first assignment leaves the duplicate clusters empty.
    distinct = torch.tensor([[0.0, 0.0], [1.0, 0.0], [5.0, 5.0]])
    points = distinct.repeat(40, 1)
    seeds = kmeans_plus_plus(points, 6, seeded(0))
    first_counts = torch.bincount(assign_to_centers(points, seeds)[0], minlength=6)
    assert (first_counts == 0).any()  # the case really has empty clusters

    centers, inertia = kmeans(points, 6, num_iters=10, generator=seeded(0))

    assert torch.isfinite(centers).all()
    assert inertia == 0.0
    for point in distinct:
        assert (centers == point).all(dim=1).any()


def test_kmeans_all_identical_points_no_nan():
    points = torch.full((100, 8), 2.5)

    centers, inertia = kmeans(points, 10, num_iters=5, generator=seeded(0))

    assert torch.isfinite(centers).all()
    assert torch.equal(centers, torch.full((10, 8), 2.5))
    assert inertia == 0.0


def test_kmeans_all_zero_points_spherical_no_nan():
    centers, _ = kmeans(torch.zeros(50, 8), 4, num_iters=5, spherical=True, generator=seeded(0))

    assert torch.isfinite(centers).all()


def test_kmeans_clusters_nonempty_on_distinct_points():
    points = torch.randn(300, 8, generator=seeded(7))

    centers, _ = kmeans(points, 64, num_iters=20, generator=seeded(0))

    labels, _ = assign_to_centers(points, centers)
    assert torch.bincount(labels, minlength=64).min() > 0
    assert torch.unique(centers, dim=0).shape[0] == 64


def test_kmeans_fewer_points_than_clusters():
    points = torch.randn(10, 8, generator=seeded(8))

    centers, inertia = kmeans(points, 32, num_iters=10, generator=seeded(0))

    assert centers.shape == (32, 8)
    assert torch.isfinite(centers).all()
    assert torch.equal(centers[:10], points)
    assert torch.unique(centers, dim=0).shape[0] == 32
    assert inertia == pytest.approx(0.0, abs=1e-4)


def test_kmeans_single_point_many_clusters():
    centers, _ = kmeans(torch.ones(1, 8), 16, generator=seeded(0))

    assert centers.shape == (16, 8)
    assert torch.isfinite(centers).all()


def test_kmeans_fewer_points_spherical_unit_norm():
    centers, _ = kmeans(torch.randn(5, 8, generator=seeded(9)), 12, spherical=True, generator=seeded(0))

    assert torch.allclose(centers.norm(dim=1), torch.ones(12), atol=1e-5)


def test_kmeans_bf16_input_float32_output():
    points, _ = gaussian_mixture(8, 8, points_per_center=50, seed=10)
    rounded = points.bfloat16()

    centers, _ = kmeans(rounded, 8, num_iters=10, generator=seeded(0))
    reference, _ = kmeans(rounded.float(), 8, num_iters=10, generator=seeded(0))

    assert centers.dtype == torch.float32
    assert torch.equal(centers, reference)


def test_kmeans_chunking_matches_single_chunk():
    points, _ = gaussian_mixture(16, 8, points_per_center=40, seed=11)

    one_chunk, one_chunk_inertia = kmeans(points, 16, num_iters=15, generator=seeded(0))
    # 7 elements per chunk: below one row of 16 distances, so every chunk contains a single point.
    many_chunks, many_chunks_inertia = kmeans(points, 16, num_iters=15, generator=seeded(0), chunk_elements=7)

    assert torch.allclose(one_chunk, many_chunks, atol=1e-5)
    # The inertias differ by float32 rounding only: the matrix products run on other row blocks.
    assert many_chunks_inertia == pytest.approx(one_chunk_inertia, rel=1e-4)


def test_assign_to_centers_chunked_matches_cdist():
    points = torch.randn(257, 8, generator=seeded(12))
    centers = torch.randn(33, 8, generator=seeded(13))

    labels, min_dist_sq = assign_to_centers(points, centers, chunk_elements=100)

    distances = torch.cdist(points, centers).pow(2)
    assert torch.equal(labels, distances.argmin(dim=1))
    assert torch.allclose(min_dist_sq, distances.min(dim=1).values, atol=1e-4)


def test_kmeans_same_seed_same_result():
    points = torch.randn(500, 8, generator=seeded(14))

    first, _ = kmeans(points, 32, num_iters=10, generator=seeded(3))
    second, _ = kmeans(points, 32, num_iters=10, generator=seeded(3))

    assert torch.equal(first, second)


def test_kmeans_other_seed_other_result():
    points = torch.randn(500, 8, generator=seeded(14))

    first, _ = kmeans(points, 32, num_iters=10, generator=seeded(3))
    second, _ = kmeans(points, 32, num_iters=10, generator=seeded(4))

    assert not torch.equal(first, second)


def test_kmeans_plus_plus_picks_data_points():
    points = torch.randn(100, 4, generator=seeded(15))

    seeds = kmeans_plus_plus(points, 10, seeded(0))

    assert seeds.shape == (10, 4)
    for seed_point in seeds:
        assert (points == seed_point).all(dim=1).any()
    assert torch.unique(seeds, dim=0).shape[0] == 10


def test_kmeans_rejects_non_matrix():
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        kmeans(torch.randn(2, 3, 4), 2)


def test_kmeans_rejects_no_points():
    with pytest.raises(ValueError, match="no points"):
        kmeans(torch.empty(0, 8), 4)


def test_gather_single_process_returns_input():
    points = torch.randn(5, 8)

    assert gather_from_all_processes(points) is points


def test_codebook_init_same_seed_same_codes():
    points = torch.randn(400, 8, generator=seeded(16))

    first = kmeans_codebook_init(points, 16, num_iters=10, seed=1)
    second = kmeans_codebook_init(points, 16, num_iters=10, seed=1)

    assert first.dtype == torch.float32
    assert torch.equal(first, second)


def test_codebook_init_max_samples_subsamples():
    # With max_samples equal to the codebook size, each code is one sampled latent, unaveraged.
    points = torch.randn(200, 8, generator=seeded(18))

    codes = kmeans_codebook_init(points, 5, num_iters=5, max_samples=5, seed=0)

    assert codes.shape == (5, 8)
    assert torch.unique(codes, dim=0).shape[0] == 5
    for code in codes:
        assert (points == code).all(dim=1).any()


def test_codebook_init_spherical_unit_norm():
    codes = kmeans_codebook_init(torch.randn(300, 8, generator=seeded(17)), 16, num_iters=5, spherical=True)

    assert torch.allclose(codes.norm(dim=1), torch.ones(16), atol=1e-5)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory):
    """Run the K-Means codebook init under torchrun with 2 gloo processes; return each rank's saved tensors."""
    output_dir = tmp_path_factory.mktemp("dist_kmeans")
    repo_root = Path(__file__).resolve().parents[1]
    worker = repo_root / "tests" / "dist_kmeans_worker.py"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    # The worker's own folder comes first on its sys.path, so name the repository root explicitly.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root), env.get("PYTHONPATH")]))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(free_port()),
        str(worker),
        str(output_dir),
    ]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return [torch.load(output_dir / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]


def test_two_process_both_ranks_ran(two_process_results):
    assert [int(result["world_size"]) for result in two_process_results] == [2, 2]


def test_two_process_ranks_saw_different_latents(two_process_results):
    rank0, rank1 = two_process_results

    assert int(rank0["num_latents"]) != int(rank1["num_latents"])
    assert not torch.allclose(rank0["latents_checksum"], rank1["latents_checksum"])


def test_two_process_codebooks_identical(two_process_results):
    rank0, rank1 = two_process_results

    assert torch.equal(rank0["codebook"], rank1["codebook"])
    assert torch.equal(rank0["subsampled_codes"], rank1["subsampled_codes"])
    assert bool(rank0["codebook_initialized"])
    assert bool(rank1["codebook_initialized"])


def test_two_process_codebook_covers_both_ranks(two_process_results):
    codebook = two_process_results[0]["codebook"]
    code_means = codebook.mean(dim=1)

    # Rank 0's latents lie around +5 and rank 1's around -5: the gathered K-Means serves both.
    assert (code_means > 4.0).any()
    assert (code_means < -4.0).any()
    assert torch.isfinite(codebook).all()


def test_two_process_subsampled_codes_cover_both_ranks(two_process_results):
    code_means = two_process_results[0]["subsampled_codes"].mean(dim=1)

    assert (code_means > 4.0).any()
    assert (code_means < -4.0).any()
