"""K-Means codebook initialization: k-means++ seeding and Lloyd iterations in float32, chunked.

Distances are computed in chunks of latents, so the largest temporary contains about `chunk_elements`
floats (64 MiB by default). For 16384 codes and 65536 latents of dimension 8, memory then covers the
data, the centers and one chunk. Under `torch.distributed`, latents are
gathered from every process, K-Means runs on rank 0, and the centers are broadcast, so every process
ends with the identical codebook.
"""

from __future__ import annotations

import logging

import torch
import torch.distributed as dist
import torch.nn.functional as F

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_ELEMENTS = 2**24


def _chunk_rows(num_centers: int, chunk_elements: int) -> int:
    return max(1, chunk_elements // max(1, num_centers))


def squared_distances(x: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Return `||x_i - c_j||^2` as a `[N, K]` float32 matrix, clamped at 0 against rounding."""
    x = x.float()
    centers = centers.float()
    # ||x||^2 - 2 x.c + ||c||^2: [N, 1] - [N, K] + [1, K]
    dist_sq = x.pow(2).sum(1, keepdim=True) - 2.0 * x @ centers.T + centers.pow(2).sum(1)[None, :]
    return dist_sq.clamp_min_(0.0)


def assign_to_centers(
    x: torch.Tensor, centers: torch.Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return the nearest center of each row of `x` and the squared distance to it, in chunks."""
    rows = _chunk_rows(centers.shape[0], chunk_elements)
    labels = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    min_dist_sq = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], rows):
        chunk_dist = squared_distances(x[start : start + rows], centers)
        min_dist_sq[start : start + rows], labels[start : start + rows] = chunk_dist.min(dim=1)
    return labels, min_dist_sq


def kmeans_plus_plus(x: torch.Tensor, num_clusters: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pick `num_clusters` rows of `x` as initial centers, each with probability proportional to D(x)^2."""
    num_points = x.shape[0]
    # Preallocated outputs: appending one row per pick between large temporaries kept the CPU allocator
    # from returning freed memory, and the peak grew to several GB at K = 16384.
    centers = torch.empty(num_clusters, x.shape[1], dtype=x.dtype, device=x.device)
    first = int(torch.randint(num_points, (1,), generator=generator, device=x.device))
    centers[0] = x[first]
    min_dist_sq = squared_distances(x, centers[:1]).squeeze(1)
    for i in range(1, num_clusters):
        total = min_dist_sq.sum()
        if total <= 0:  # every point already is a center (duplicates): fall back to uniform picks
            weights = torch.ones_like(min_dist_sq)
        else:
            weights = min_dist_sq
        index = torch.multinomial(weights, 1, generator=generator)
        centers[i] = x[index[0]]
        torch.minimum(min_dist_sq, squared_distances(x, centers[i : i + 1]).squeeze(1), out=min_dist_sq)
    return centers


def kmeans(
    x: torch.Tensor,
    num_clusters: int,
    num_iters: int = 50,
    spherical: bool = False,
    generator: torch.Generator | None = None,
    chunk_elements: int = DEFAULT_CHUNK_ELEMENTS,
    tol: float = 1e-6,
) -> tuple[torch.Tensor, float]:
    """Cluster the rows of `x` `[N, D]` into `num_clusters` centers; return `(centers [K, D], inertia)`.

    Runs in float32 whatever the input dtype. With `spherical=True` the rows and centers are
    l2-normalized (cosine K-Means). An empty cluster is re-seeded with the point farthest from its
    center, so no center is ever NaN. With fewer points than clusters, every point becomes a center
    and the remaining centers are copies of random points plus small noise.
    """
    if x.ndim != 2:
        raise ValueError(f"kmeans expects a [N, D] matrix, got shape {tuple(x.shape)}.")
    if x.shape[0] == 0:
        raise ValueError("kmeans got no points; collect at least one latent before the codebook init.")
    x = x.float()
    if spherical:
        x = F.normalize(x, dim=1)

    num_points = x.shape[0]
    if num_points < num_clusters:
        logger.warning(
            f"K-Means got {num_points} latents for {num_clusters} codes; the {num_clusters - num_points} "
            "extra codes start as noisy copies of latents."
        )
        extra = torch.randint(num_points, (num_clusters - num_points,), generator=generator, device=x.device)
        noise = torch.randn(len(extra), x.shape[1], generator=generator, device=x.device)
        scale = 1e-3 * (x.std() if num_points > 1 else x.abs().mean()).clamp_min(1e-3)
        centers = torch.cat([x, x[extra] + scale * noise])
        if spherical:
            centers = F.normalize(centers, dim=1)
        _, min_dist_sq = assign_to_centers(x, centers, chunk_elements)
        return centers, float(min_dist_sq.sum())

    centers = kmeans_plus_plus(x, num_clusters, generator)
    previous_inertia = float("inf")
    for _ in range(num_iters):
        labels, min_dist_sq = assign_to_centers(x, centers, chunk_elements)
        inertia = float(min_dist_sq.sum())

        sums = torch.zeros_like(centers).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=num_clusters)
        nonempty = counts > 0
        centers = torch.where(nonempty[:, None], sums / counts.clamp_min(1)[:, None].float(), centers)

        empty = (~nonempty).nonzero().squeeze(1)
        if len(empty) > 0:
            # Re-seed each empty cluster with one of the points worst served by the current centers.
            farthest = min_dist_sq.topk(min(len(empty), num_points)).indices
            centers[empty[: len(farthest)]] = x[farthest]
        if spherical:
            centers = F.normalize(centers, dim=1)

        if len(empty) == 0 and previous_inertia - inertia <= tol * max(previous_inertia, 1e-12):
            break
        previous_inertia = inertia

    _, min_dist_sq = assign_to_centers(x, centers, chunk_elements)
    return centers, float(min_dist_sq.sum())


def _is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_from_all_processes(x: torch.Tensor) -> torch.Tensor:
    """Concatenate the rows of `x` from every process (rank order); processes may hold different counts."""
    if not _is_distributed():
        return x
    world_size = dist.get_world_size()
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world_size)]
    dist.all_gather(counts, count)
    max_count = int(max(c.item() for c in counts))
    padded = torch.zeros(max_count, *x.shape[1:], dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x
    gathered = [torch.zeros_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def kmeans_codebook_init(
    latents: torch.Tensor,
    codebook_size: int,
    num_iters: int = 50,
    spherical: bool = False,
    max_samples: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Compute initial codes `[codebook_size, D]` (float32) from this process's latents `[N, D]`.

    Under torch.distributed every process must call this: the latents of all processes are gathered,
    at most `max_samples` of them are drawn, K-Means runs on rank 0 and rank 0's centers are broadcast.
    """
    all_latents = gather_from_all_processes(latents.detach().float())
    centers = torch.empty(codebook_size, all_latents.shape[1], dtype=torch.float32, device=all_latents.device)
    if not _is_distributed() or dist.get_rank() == 0:
        generator = torch.Generator(device=all_latents.device).manual_seed(seed)
        if max_samples is not None and all_latents.shape[0] > max_samples:
            keep = torch.randperm(all_latents.shape[0], generator=generator, device=all_latents.device)[:max_samples]
            all_latents = all_latents[keep]
        centers, inertia = kmeans(all_latents, codebook_size, num_iters, spherical, generator)
        logger.info(f"K-Means init: {all_latents.shape[0]} latents -> {codebook_size} codes, inertia {inertia:.4g}")
    if _is_distributed():
        dist.broadcast(centers, src=0)
    return centers
