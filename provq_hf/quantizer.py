"""Vector quantizer with the progressive curriculum, shared by the image tokenizer and TopoDisc.

Every distance, blend and codebook computation runs in float32 with autocast disabled, so bf16
training of the encoder and decoder never rounds the nearest-code search or the VQ losses.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_provq import ProVQConfig
from .curriculum import DISCRETE, CurriculumState, curriculum_state
from .kmeans import DEFAULT_CHUNK_ELEMENTS, kmeans_codebook_init


@dataclass
class QuantizerOutput:
    """Result of one quantizer pass over latents `[..., D]`."""

    decoder_input: torch.Tensor  # z + alpha * stopgrad(z_q - z), float32, same shape as the latents
    quantized: torch.Tensor  # z_q, the nearest codes (gradient flows to the codebook)
    latents: torch.Tensor  # z, l2-normalized when the codes are
    ids: torch.Tensor  # nearest-code indices, shape of the latents without the last dimension
    codebook_loss: torch.Tensor  # ||stopgrad(z) - z_q||^2, mean over elements
    commitment_loss: torch.Tensor  # ||z - stopgrad(z_q)||^2, mean over elements
    vq_loss: torch.Tensor  # omega * (codebook_loss + beta * commitment_loss)
    curriculum: CurriculumState


class ProgressiveVectorQuantizer(nn.Module):
    """Nearest-code quantizer whose hardness follows the ProVQ curriculum.

    The curriculum state lives in two buffers, so it is saved and restored with the weights:
    `curriculum_step` (optimizer steps taken) and `kmeans_initialized`. The training loop calls
    `step_curriculum()` after every optimizer step and `init_codebook(latents)` when
    `needs_codebook_init()` is true. In eval mode the quantizer is always fully discrete.
    """

    def __init__(
        self,
        codebook_size: int,
        codebook_dim: int,
        l2_norm: bool = False,
        commitment_beta: float = 0.25,
        manifold_warmup_steps: int = 0,
        transition_steps: int = 0,
        schedule: str = "cosine",
        omega: str = "alpha",
        uses_kmeans_init: bool = True,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.l2_norm = l2_norm
        self.commitment_beta = commitment_beta
        self.manifold_warmup_steps = manifold_warmup_steps
        self.transition_steps = transition_steps
        self.schedule = schedule
        self.omega = omega
        self.uses_kmeans_init = uses_kmeans_init

        self.codebook = nn.Embedding(codebook_size, codebook_dim)
        # LlamaGen's random init, the one `vanilla` trains from.
        nn.init.uniform_(self.codebook.weight, -1.0 / codebook_size, 1.0 / codebook_size)
        self.register_buffer("curriculum_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("kmeans_initialized", torch.zeros((), dtype=torch.bool))

    @classmethod
    def from_config(cls, config: ProVQConfig) -> "ProgressiveVectorQuantizer":
        """Build the quantizer with the codebook and the curriculum that `config.method` implies."""
        return cls(
            codebook_size=config.codebook_size,
            codebook_dim=config.codebook_dim,
            l2_norm=config.codebook_l2_norm,
            commitment_beta=config.commitment_beta,
            manifold_warmup_steps=config.effective_manifold_warmup_steps,
            transition_steps=config.effective_transition_steps,
            schedule=config.schedule,
            omega=config.omega,
            uses_kmeans_init=config.uses_kmeans_init,
        )

    # Curriculum bookkeeping.
    def curriculum(self) -> CurriculumState:
        """Curriculum values in force now: the schedule in training mode, fully discrete in eval mode."""
        step = int(self.curriculum_step)
        if not self.training:
            return CurriculumState(step, DISCRETE, 1.0, 1.0)
        return curriculum_state(step, self.manifold_warmup_steps, self.transition_steps, self.schedule, self.omega)

    @torch.no_grad()
    def step_curriculum(self, num_steps: int = 1) -> None:
        """Advance the curriculum by `num_steps` optimizer steps."""
        self.curriculum_step += num_steps

    def needs_codebook_init(self) -> bool:
        return (
            self.uses_kmeans_init
            and not bool(self.kmeans_initialized)
            and int(self.curriculum_step) >= self.manifold_warmup_steps
        )

    @torch.no_grad()
    def init_codebook(self, latents: torch.Tensor, num_iters: int = 50, max_samples: int | None = None, seed: int = 0):
        """Set the codes to K-Means centers of `latents` `[N, D]` gathered from all processes.

        Under torch.distributed every process must call this; all end with the same codebook.
        """
        if latents.ndim != 2 or latents.shape[1] != self.codebook_dim:
            raise ValueError(
                f"init_codebook expects latents of shape [N, {self.codebook_dim}], got {tuple(latents.shape)}."
            )
        centers = kmeans_codebook_init(
            self.normalize(latents.float()),
            self.codebook_size,
            num_iters=num_iters,
            spherical=self.l2_norm,
            max_samples=max_samples,
            seed=seed,
        )
        self.codebook.weight.copy_(centers.to(self.codebook.weight))
        self.kmeans_initialized.fill_(True)

    # Quantization.
    def normalize(self, vectors: torch.Tensor) -> torch.Tensor:
        return F.normalize(vectors, dim=-1) if self.l2_norm else vectors

    def codes(self) -> torch.Tensor:
        """Codebook vectors `[K, D]` as the decoder receives them (l2-normalized when enabled), float32."""
        return self.normalize(self.codebook.weight.float())

    def nearest_code_ids(self, latents: torch.Tensor, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
        """Return the id of the nearest code for each row of `latents` `[N, D]` (already normalized)."""
        codes = self.codes().detach()
        code_norms = codes.pow(2).sum(1)
        rows = max(1, chunk_elements // self.codebook_size)
        ids = torch.empty(latents.shape[0], dtype=torch.long, device=latents.device)
        for start in range(0, latents.shape[0], rows):
            chunk = latents[start : start + rows].detach().float()
            # argmin ||z - c||^2 = argmin (||c||^2 - 2 z.c): ||z||^2 is the same for every code.
            ids[start : start + rows] = (code_norms[None, :] - 2.0 * chunk @ codes.T).argmin(dim=1)
        return ids

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        """Return the codes `[..., D]` (float32) for integer ids of any shape."""
        return self.normalize(self.codebook(ids).float())

    def forward(self, latents: torch.Tensor) -> QuantizerOutput:
        """Quantize channel-last latents `[..., D]` and blend them with the curriculum's alpha."""
        if latents.shape[-1] != self.codebook_dim:
            raise ValueError(f"Expected latents with last dimension {self.codebook_dim}, got {tuple(latents.shape)}.")
        state = self.curriculum()
        with torch.autocast(device_type=latents.device.type, enabled=False):
            z = self.normalize(latents.float())
            flat = z.reshape(-1, self.codebook_dim)
            ids = self.nearest_code_ids(flat).reshape(z.shape[:-1])
            z_q = self.lookup(ids)

            codebook_loss = F.mse_loss(z_q, z.detach())
            commitment_loss = F.mse_loss(z, z_q.detach())
            vq_loss = state.omega * (codebook_loss + self.commitment_beta * commitment_loss)

            # Straight-through blend z~ = z + alpha * stopgrad(z_q - z): the forward value is
            # lerp(z, z_q, alpha), exactly z at alpha = 0 and exactly z_q at alpha = 1, and the
            # gradient reaches z as identity through the zero-valued (z - stopgrad(z)) term.
            decoder_input = torch.lerp(z.detach(), z_q.detach(), state.alpha) + (z - z.detach())
        return QuantizerOutput(decoder_input, z_q, z, ids, codebook_loss, commitment_loss, vq_loss, state)
