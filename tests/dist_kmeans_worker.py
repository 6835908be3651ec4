"""Worker for the two-process K-Means test: run under `torchrun --nproc_per_node 2 ... OUTPUT_DIR`.

Each rank builds its own latents (rank 0 around +5, rank 1 around -5, different counts), runs the
tokenizer's codebook init, and saves its codebook and a checksum of its latents to
OUTPUT_DIR/rank{rank}.pt for the test to compare.
"""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from provq_hf import ProVQConfig, ProVQTokenizer
from provq_hf.kmeans import kmeans_codebook_init

CODEBOOK_SIZE = 16


def rank_latents(rank: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1000 + rank)
    center = 5.0 if rank == 0 else -5.0
    return center + 0.5 * torch.randn(300 + 40 * rank, 8, generator=generator)


def main(output_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size != 2:
        raise RuntimeError(f"Expected 2 processes, got world size {world_size}; launch with --nproc_per_node 2.")

    latents = rank_latents(rank)
    config = ProVQConfig.from_preset(
        "mnist-5k", codebook_size=CODEBOOK_SIZE, base_channels=32, z_channels=32, kmeans_iters=20
    )
    model = ProVQTokenizer(config)
    model.init_codebook(latents)
    # A second init that keeps fewer samples than the processes hold together: rank 0 draws them.
    subsampled_codes = kmeans_codebook_init(latents, CODEBOOK_SIZE, num_iters=10, max_samples=200, seed=3)

    torch.save(
        {
            "codebook": model.quantizer.codebook.weight.detach().clone(),
            "subsampled_codes": subsampled_codes,
            "codebook_initialized": model.quantizer.kmeans_initialized.clone(),
            "latents_checksum": latents.sum(dim=0),
            "num_latents": torch.tensor(latents.shape[0]),
            "world_size": torch.tensor(world_size),
        },
        output_dir / f"rank{rank}.pt",
    )
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
