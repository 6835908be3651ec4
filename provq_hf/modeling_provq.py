"""`ProVQTokenizer`: a VQ image tokenizer trained with Progressive Vector Quantization."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput, logging

from .autoencoder import Decoder, Encoder
from .configuration_provq import ProVQConfig
from .quantizer import ProgressiveVectorQuantizer

logger = logging.get_logger(__name__)


@dataclass
class ProVQOutput(ModelOutput):
    """Output of [`ProVQTokenizer.forward`].

    `loss = reconstruction_loss + omega * (codebook_loss + beta * commitment_loss)`. The curriculum values
    are those in force for this pass: `phase` is `warmup`, `transition` or `discrete`, `alpha` the blend
    toward the quantized latent and `omega` the weight of the VQ terms.
    """

    loss: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    ids: torch.LongTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    codebook_loss: torch.FloatTensor | None = None
    commitment_loss: torch.FloatTensor | None = None
    vq_loss: torch.FloatTensor | None = None
    phase: str | None = None
    alpha: float | None = None
    omega: float | None = None
    curriculum_step: int | None = None


class ProVQTokenizer(PreTrainedModel):
    """Convolutional VQ autoencoder: `encode(images) -> ids [B, h, w]`, `decode(ids) -> images`.

    Images are float tensors `[B, C, H, W]` in [-1, 1]. Training follows the curriculum in the config
    (see `provq_hf.curriculum`): the training loop calls `step_curriculum()` after each optimizer step
    and runs `init_codebook(latents)` when `needs_codebook_init()` is true.
    """

    config_class = ProVQConfig
    base_model_prefix = "provq"
    main_input_name = "pixel_values"
    # The codebook and every distance computed from it stay float32 when the model loads in bf16/fp16.
    _keep_in_fp32_modules_strict = ["quantizer.codebook"]
    _no_split_modules = ["Encoder", "Decoder"]

    def __init__(self, config: ProVQConfig):
        # Re-check here because `from_pretrained(dir, field=...)` sets overrides after the config's __init__.
        config.validate()
        super().__init__(config)
        self.encoder = Encoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.codebook_dim, 1)
        self.quantizer = ProgressiveVectorQuantizer.from_config(config)
        self.post_quant_conv = nn.Conv2d(config.codebook_dim, config.z_channels, 1)
        self.decoder = Decoder(config)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default conv init (kaiming uniform, a = sqrt(5)), as LlamaGen's tokenizer trains from.
        if isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight.shape[1] * module.weight[0, 0].numel()
                bound = 1.0 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.GroupNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, ProgressiveVectorQuantizer):
            size = module.codebook_size
            init.uniform_(module.codebook.weight, -1.0 / size, 1.0 / size)
            init.zeros_(module.curriculum_step)
            init.zeros_(module.kmeans_initialized)

    # Input checks.
    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        config = self.config
        if not torch.is_tensor(pixel_values) or not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a float tensor [B, C, H, W] in [-1, 1], got "
                f"{type(pixel_values).__name__} {getattr(pixel_values, 'dtype', '')}; use the image processor to convert images."
            )
        if pixel_values.ndim != 4:
            raise ValueError(
                f"pixel_values must have shape [B, C, H, W], got {tuple(pixel_values.shape)}; add a batch dimension "
                "with pixel_values.unsqueeze(0) for a single image."
            )
        channels, height, width = pixel_values.shape[1:]
        if channels != config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but this tokenizer expects {config.num_channels}; convert "
                f"the images to {'grayscale' if config.num_channels == 1 else 'RGB'} with the image processor."
            )
        if pixel_values.numel() > 0:
            low, high = float(pixel_values.min()), float(pixel_values.max())
            # A small margin lets through rounding of processed images; NaN fails both comparisons.
            if not (low >= -1.01 and high <= 1.01):
                raise ValueError(
                    f"pixel_values range from {low} to {high}, but the tokenizer expects images scaled to [-1, 1]; "
                    "use the image processor, or map uint8 pixels with x / 127.5 - 1."
                )
        factor = config.downsample_factor
        if height % factor != 0 or width % factor != 0:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the downsampling factor {factor}; resize or pad "
                f"the images to a multiple of {factor} (the image processor pads to {config.image_size}x{config.image_size})."
            )

    def _check_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Validate token ids and return them as a `[B, h, w]` grid."""
        config = self.config
        if not torch.is_tensor(ids) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ValueError(f"ids must be an integer tensor, got {type(ids).__name__} {getattr(ids, 'dtype', '')}.")
        if ids.ndim == 2:
            if ids.shape[1] != config.num_tokens:
                raise ValueError(
                    f"Flat ids have {ids.shape[1]} tokens per image but the config's grid is "
                    f"{config.grid_size}x{config.grid_size} = {config.num_tokens}; pass ids as [B, h, w] for other grids."
                )
            ids = ids.reshape(ids.shape[0], config.grid_size, config.grid_size)
        elif ids.ndim != 3:
            raise ValueError(f"ids must have shape [B, h, w] or [B, h*w], got {tuple(ids.shape)}.")
        if ids.numel() > 0:
            low, high = int(ids.min()), int(ids.max())
            if low < 0 or high >= config.codebook_size:
                bad = low if low < 0 else high
                raise ValueError(
                    f"Token id {bad} is outside [0, {config.codebook_size}); the ids must come from a tokenizer with "
                    f"codebook_size={config.codebook_size}."
                )
        return ids.long()

    # Building blocks.
    def encode_latents(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Return the continuous latents `z` `[B, h, w, D]`, float32, l2-normalized when the codes are."""
        self._check_pixel_values(pixel_values)
        features = self.quant_conv(self.encoder(pixel_values.to(self.dtype)))
        # [B, D, h, w] -> [B, h, w, D]: the quantizer works on channel-last vectors
        return self.quantizer.normalize(features.permute(0, 2, 3, 1).float())

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode channel-last latents or codes `[B, h, w, D]` to images `[B, C, H, W]`."""
        features = latents.permute(0, 3, 1, 2).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(features))

    # Public API.
    @torch.no_grad()
    def encode(self, pixel_values: torch.Tensor) -> torch.LongTensor:
        """Tokenize images `[B, C, H, W]` in [-1, 1] into ids `[B, h, w]` (always the nearest codes)."""
        latents = self.encode_latents(pixel_values)
        flat = latents.reshape(-1, self.config.codebook_dim)
        return self.quantizer.nearest_code_ids(flat).reshape(latents.shape[:-1])

    @torch.no_grad()
    def decode(self, ids: torch.Tensor) -> torch.FloatTensor:
        """Turn ids `[B, h, w]` (or `[B, h*w]` on the config's grid) into images `[B, C, H, W]` in [-1, 1]."""
        ids = self._check_ids(ids).to(self.device)
        images = self.decode_latents(self.quantizer.lookup(ids))
        return images.float().clamp(-1.0, 1.0)

    def forward(self, pixel_values: torch.Tensor, return_dict: bool | None = None) -> ProVQOutput | tuple:
        """Reconstruct `pixel_values` through the curriculum in force and return every loss term."""
        quantized = self.quantizer(self.encode_latents(pixel_values))
        reconstruction = self.decode_latents(quantized.decoder_input)

        target = pixel_values.to(reconstruction.dtype)
        if self.config.reconstruction_loss == "l1":
            reconstruction_loss = F.l1_loss(reconstruction.float(), target.float())
        else:
            reconstruction_loss = F.mse_loss(reconstruction.float(), target.float())
        loss = reconstruction_loss + quantized.vq_loss

        state = quantized.curriculum
        output = ProVQOutput(
            loss=loss,
            reconstruction=reconstruction,
            ids=quantized.ids,
            reconstruction_loss=reconstruction_loss,
            codebook_loss=quantized.codebook_loss,
            commitment_loss=quantized.commitment_loss,
            vq_loss=quantized.vq_loss,
            phase=state.phase,
            alpha=state.alpha,
            omega=state.omega,
            curriculum_step=state.step,
        )
        return output if return_dict is not False else output.to_tuple()

    # Curriculum hooks for training loops.
    def step_curriculum(self, num_steps: int = 1) -> None:
        """Advance the curriculum by `num_steps` optimizer steps; call after each optimizer step."""
        self.quantizer.step_curriculum(num_steps)

    def needs_codebook_init(self) -> bool:
        """True when the curriculum has reached the K-Means init and it has not run yet."""
        return self.quantizer.needs_codebook_init()

    def init_codebook(self, latents: torch.Tensor, seed: int = 0) -> None:
        """Initialize the codebook with K-Means on latents `[N, D]` from `encode_latents` (all processes call)."""
        self.quantizer.init_codebook(
            latents.reshape(-1, self.config.codebook_dim),
            num_iters=self.config.kmeans_iters,
            max_samples=self.config.kmeans_num_samples,
            seed=seed,
        )
        logger.info(f"Codebook initialized by K-Means at curriculum step {int(self.quantizer.curriculum_step)}")

    @property
    def curriculum_step(self) -> int:
        return int(self.quantizer.curriculum_step)

    @property
    def codebook_initialized(self) -> bool:
        return bool(self.quantizer.kmeans_initialized)
