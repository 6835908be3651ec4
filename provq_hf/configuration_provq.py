"""Configuration of the ProVQ image tokenizer: architecture, codebook and quantization curriculum."""

from __future__ import annotations

import copy
import inspect

from transformers import PretrainedConfig

METHODS = ("vanilla", "warmup_hard", "soft_only", "provq_linear", "provq_cosine")
METHOD_ALIASES = {"provq": "provq_cosine"}
OMEGA_MODES = ("alpha", "constant")
RECONSTRUCTION_LOSSES = ("mse", "l1")

# Architecture and codebook presets. The curriculum fields are left at their defaults, so any preset
# combines with any method.
PRESETS: dict[str, dict] = {
    # LlamaGen's VQ-16 tokenizer: 16x downsampling, 16384 x 8 l2-normalized codes, 256 px images.
    "llamagen-vq16": {
        "image_size": 256,
        "num_channels": 3,
        "base_channels": 128,
        "ch_mult": [1, 1, 2, 2, 4],
        "num_res_blocks": 2,
        "z_channels": 256,
        "mid_attention": True,
        "codebook_size": 16384,
        "codebook_dim": 8,
        "codebook_l2_norm": True,
    },
    # The 28x28 MNIST digits padded to 32x32, 4x downsampling: an 8x8 grid of 64 tokens.
    "mnist-5k": {
        "image_size": 32,
        "num_channels": 1,
        "base_channels": 16,
        "ch_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "z_channels": 32,
        "mid_attention": False,
        "norm_num_groups": 8,
        "codebook_size": 512,
        "codebook_dim": 8,
        "codebook_l2_norm": False,
    },
    # 32x32 color images (the built-in photo-patches set), also an 8x8 grid.
    "small-color": {
        "image_size": 32,
        "num_channels": 3,
        "base_channels": 16,
        "ch_mult": [1, 2, 2],
        "num_res_blocks": 1,
        "z_channels": 32,
        "mid_attention": False,
        "norm_num_groups": 8,
        "codebook_size": 512,
        "codebook_dim": 8,
        "codebook_l2_norm": False,
    },
}
PRESET_ALIASES = {"photo-patches": "small-color", "vq16": "llamagen-vq16"}


def check_model_type(config_dict: dict, expected: str, training_script: str) -> None:
    """Raise a ValueError when a saved config belongs to another kind of model than `expected`."""
    model_type = config_dict.get("model_type", expected)
    if model_type != expected:
        raise ValueError(
            f"This config has model_type {model_type!r}, not {expected!r}: the folder contains another kind of model "
            f"(a tokenizer and a generator folder swapped?). Pass the folder written by {training_script}."
        )


class ProVQConfig(PretrainedConfig):
    """Configuration for [`ProVQTokenizer`].

    Architecture (LlamaGen-style convolutional VQ autoencoder):
        image_size: side of the square input images in pixels; must be a multiple of the downsampling factor.
        num_channels: image channels (1 for grayscale, 3 for RGB).
        base_channels: channels of the first encoder level; level i has `base_channels * ch_mult[i]`.
        ch_mult: channel multipliers per resolution level; the image is downsampled by 2 between levels,
            so the downsampling factor is `2 ** (len(ch_mult) - 1)`.
        num_res_blocks: residual blocks per encoder level (the decoder uses one more, as in LlamaGen).
        z_channels: channels of the encoder output before `quant_conv` projects to `codebook_dim`.
        mid_attention: add a self-attention block in the middle (lowest resolution) of encoder and decoder.
        norm_num_groups: groups of every GroupNorm; every level width must be divisible by it.
        dropout: dropout inside residual blocks.

    Codebook:
        codebook_size: number of codes K.
        codebook_dim: dimension of each code (LlamaGen uses 8).
        codebook_l2_norm: l2-normalize latents and codes before the nearest-code search (LlamaGen's
            choice). The latent `z` then means the normalized latent in every phase.
        commitment_beta: weight of the commitment (encoder) term; the codebook term has weight 1.

    Curriculum (steps count optimizer steps):
        method: one of `vanilla`, `warmup_hard`, `soft_only`, `provq_linear`, `provq_cosine` (alias `provq`).
            The method decides which phases exist; steps given for a phase the method does not have are
            ignored (see `effective_manifold_warmup_steps` and `effective_transition_steps`).
        manifold_warmup_steps: `T_w`, steps during which the decoder receives the continuous latent.
        transition_steps: `T_s`, steps of the soft-to-hard blend after the warmup (0 = hard switch).
        omega: weight of the VQ terms during the transition: `alpha` (w = a(t)) or `constant` (w = 1).
        kmeans_num_samples: maximum number of latents (over all processes) for the K-Means init.
        kmeans_iters: Lloyd iterations of the K-Means init.

    Loss:
        reconstruction_loss: `mse` or `l1`, on pixels in [-1, 1].
    """

    model_type = "provq"

    def __init__(
        self,
        image_size: int = 32,
        num_channels: int = 1,
        base_channels: int = 32,
        ch_mult: list[int] | tuple[int, ...] = (1, 2, 2),
        num_res_blocks: int = 1,
        z_channels: int = 64,
        mid_attention: bool = False,
        norm_num_groups: int = 32,
        dropout: float = 0.0,
        codebook_size: int = 512,
        codebook_dim: int = 8,
        codebook_l2_norm: bool = False,
        commitment_beta: float = 0.25,
        method: str = "provq_cosine",
        manifold_warmup_steps: int = 1000,
        transition_steps: int = 1000,
        omega: str = "alpha",
        kmeans_num_samples: int = 65536,
        kmeans_iters: int = 50,
        reconstruction_loss: str = "mse",
        **kwargs,
    ):
        self.image_size = image_size
        self.num_channels = num_channels
        self.base_channels = base_channels
        self.ch_mult = list(ch_mult)
        self.num_res_blocks = num_res_blocks
        self.z_channels = z_channels
        self.mid_attention = mid_attention
        self.norm_num_groups = norm_num_groups
        self.dropout = dropout
        self.codebook_size = codebook_size
        self.codebook_dim = codebook_dim
        self.codebook_l2_norm = codebook_l2_norm
        self.commitment_beta = commitment_beta
        self.method = METHOD_ALIASES.get(method, method)
        self.manifold_warmup_steps = manifold_warmup_steps
        self.transition_steps = transition_steps
        self.omega = omega
        self.kmeans_num_samples = kmeans_num_samples
        self.kmeans_iters = kmeans_iters
        self.reconstruction_loss = reconstruction_loss
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid field or combination of fields."""
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; expected one of {METHODS} (or 'provq').")
        if self.omega not in OMEGA_MODES:
            raise ValueError(f"Unknown omega {self.omega!r}; expected one of {OMEGA_MODES}.")
        if self.reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                f"Unknown reconstruction_loss {self.reconstruction_loss!r}; expected one of {RECONSTRUCTION_LOSSES}."
            )

        for name in ("image_size", "num_channels", "base_channels", "z_channels", "codebook_size", "codebook_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        for name in ("manifold_warmup_steps", "transition_steps", "num_res_blocks", "kmeans_iters"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}.")
        if not self.ch_mult or any(not isinstance(m, int) or m < 1 for m in self.ch_mult):
            raise ValueError(f"ch_mult must be a non-empty list of positive integers, got {self.ch_mult!r}.")

        if self.image_size % self.downsample_factor != 0:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of the downsampling factor "
                f"{self.downsample_factor} (2 ** (len(ch_mult) - 1) with ch_mult={self.ch_mult}); "
                "change image_size or ch_mult."
            )
        widths = [self.base_channels * m for m in self.ch_mult] + [self.z_channels]
        bad = [w for w in widths if w % self.norm_num_groups != 0]
        if bad:
            raise ValueError(
                f"Channel widths {bad} are not divisible by norm_num_groups={self.norm_num_groups}; "
                "change base_channels, ch_mult, z_channels or norm_num_groups."
            )
        if self.commitment_beta < 0:
            raise ValueError(f"commitment_beta must be >= 0, got {self.commitment_beta}.")
        if self.kmeans_num_samples < 1:
            raise ValueError(f"kmeans_num_samples must be >= 1, got {self.kmeans_num_samples}.")

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "ProVQConfig":
        # transformers sets load-time overrides (`from_pretrained(dir, field=...)`) with setattr after
        # __init__. Passing them through __init__ instead maps aliases and runs validate() on the result.
        check_model_type(config_dict, cls.model_type, "train_tokenizer.py")
        fields = inspect.signature(cls.__init__).parameters
        overrides = {key: kwargs.pop(key) for key in list(kwargs) if key in fields and key not in ("self", "kwargs")}
        return super().from_dict({**config_dict, **overrides}, **kwargs)

    # Derived values are properties, so a field overridden at load time can never leave them stale.
    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)

    @property
    def grid_size(self) -> int:
        """Tokens per side of the square token grid."""
        return self.image_size // self.downsample_factor

    @property
    def num_tokens(self) -> int:
        return self.grid_size**2

    @property
    def effective_manifold_warmup_steps(self) -> int:
        """`T_w` in force: 0 for methods without a manifold warmup (`vanilla`, `soft_only`)."""
        return 0 if self.method in ("vanilla", "soft_only") else self.manifold_warmup_steps

    @property
    def effective_transition_steps(self) -> int:
        """`T_s` in force: 0 (a hard switch) for `vanilla` and `warmup_hard`."""
        return 0 if self.method in ("vanilla", "warmup_hard") else self.transition_steps

    @property
    def uses_kmeans_init(self) -> bool:
        return self.method != "vanilla"

    @property
    def schedule(self) -> str:
        """Shape of the blend `a(t)` during the transition: `linear` or `cosine`."""
        return "linear" if self.method == "provq_linear" else "cosine"

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "ProVQConfig":
        """Build a config from a named preset (`llamagen-vq16`, `mnist-5k`, `small-color`), then apply `overrides`."""
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS) + sorted(PRESET_ALIASES)}.")
        fields = copy.deepcopy(PRESETS[key])
        fields.update(overrides)
        return cls(**fields)
