"""Configuration of the LlamaGen-style class-conditional generator over image-token ids."""

from __future__ import annotations

import copy

from transformers import PretrainedConfig

from provq_hf.configuration_provq import check_model_type

# Architecture presets. GPT-B and GPT-L use LlamaGen's sizes; the small presets train on a CPU in minutes.
PRESETS: dict[str, dict] = {
    "GPT-B": {"num_hidden_layers": 12, "hidden_size": 768, "num_attention_heads": 12},
    "GPT-L": {"num_hidden_layers": 24, "hidden_size": 1024, "num_attention_heads": 16},
    "GPT-small": {"num_hidden_layers": 6, "hidden_size": 256, "num_attention_heads": 8},
    "GPT-tiny": {"num_hidden_layers": 2, "hidden_size": 128, "num_attention_heads": 4},
}

# Default AdamW learning rate per preset. LlamaGen trains B and L at 1e-4. The small presets default to 1e-3
# so that short CPU runs make progress; that value is a starting point, not a tuned one.
PRESET_LEARNING_RATES: dict[str, float] = {
    "GPT-B": 1e-4,
    "GPT-L": 1e-4,
    "GPT-small": 1e-3,
    "GPT-tiny": 1e-3,
}


def find_multiple(value: int, multiple: int) -> int:
    """Round `value` up to the next multiple of `multiple`."""
    return -(-value // multiple) * multiple


def swiglu_hidden_size(hidden_size: int, multiple_of: int) -> int:
    """SwiGLU width as in LlamaGen: `int(2/3 * 4 * hidden_size)` rounded up to `multiple_of`.

    This gives 2048 for hidden_size 768 and 2816 for 1024 with `multiple_of=256`.
    """
    return find_multiple(int(2 * (4 * hidden_size) / 3), multiple_of)


class LlamaGenConfig(PretrainedConfig):
    """Configuration for [`LlamaGenForClassConditionalGeneration`].

    Token space:
        codebook_size: number of image-token ids the tokenizer can decode; the input embedding and the
            output head cover exactly these ids.
        grid_size: tokens per side of the square token grid; a sequence contains `grid_size ** 2` image tokens
            in raster order after one class token.
        num_classes: number of image classes. The class embedding has one extra row, id `num_classes`, for
            the null class that classifier-free guidance uses as the unconditional prompt.

    Transformer (a Llama decoder: RMSNorm, SwiGLU, rotary attention, no biases):
        hidden_size: width of the residual stream.
        num_hidden_layers: number of decoder layers.
        num_attention_heads: attention heads; `hidden_size / num_attention_heads` must be a multiple of 4
            because 2-D RoPE splits each head's rotary pairs between grid rows and grid columns.
        num_key_value_heads: key/value heads (grouped-query attention); defaults to `num_attention_heads`.
        intermediate_size: SwiGLU width; defaults to `int(8/3 * hidden_size)` rounded up to `multiple_of`.
        multiple_of: rounding of the default SwiGLU width (256, as LlamaGen).
        hidden_act: activation of the SwiGLU gate.
        rms_norm_eps: epsilon of every RMSNorm.
        rope_theta: base of the rotary frequencies.
        initializer_range: standard deviation of the normal init of linear and embedding weights. The
            output head starts at zero, as in LlamaGen, so the first predictions are uniform.

    Regularization (LlamaGen's defaults):
        class_dropout_prob: probability of replacing a class label by the null class in training, which
            teaches the unconditional prediction needed for classifier-free guidance.
        token_dropout_prob: dropout on the input embeddings.
        residual_dropout_prob: dropout on each attention output before it joins the residual stream.
        ffn_dropout_prob: dropout on each SwiGLU output before it joins the residual stream.
        attention_dropout: dropout on the attention probabilities.
    """

    model_type = "llamagen"
    attribute_map = {"vocab_size": "codebook_size"}

    # LlamaGen has no biases anywhere; the transformers Llama blocks read these two switches.
    attention_bias = False
    mlp_bias = False

    def __init__(
        self,
        codebook_size: int = 16384,
        grid_size: int = 16,
        num_classes: int = 1000,
        hidden_size: int = 768,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 12,
        num_key_value_heads: int | None = None,
        intermediate_size: int | None = None,
        multiple_of: int = 256,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-5,
        rope_theta: float = 10000.0,
        initializer_range: float = 0.02,
        class_dropout_prob: float = 0.1,
        token_dropout_prob: float = 0.1,
        residual_dropout_prob: float = 0.1,
        ffn_dropout_prob: float = 0.1,
        attention_dropout: float = 0.0,
        **kwargs,
    ):
        self.codebook_size = codebook_size
        self.grid_size = grid_size
        self.num_classes = num_classes
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_attention_heads if num_key_value_heads is None else num_key_value_heads
        self.multiple_of = multiple_of
        if intermediate_size is None:
            intermediate_size = swiglu_hidden_size(hidden_size, multiple_of)
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.initializer_range = initializer_range
        self.class_dropout_prob = class_dropout_prob
        self.token_dropout_prob = token_dropout_prob
        self.residual_dropout_prob = residual_dropout_prob
        self.ffn_dropout_prob = ffn_dropout_prob
        self.attention_dropout = attention_dropout
        super().__init__(**kwargs)
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first invalid field."""
        for name in (
            "codebook_size",
            "grid_size",
            "num_classes",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "intermediate_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; change one of them."
            )
        if self.head_dim % 4 != 0:
            raise ValueError(
                f"head_dim {self.head_dim} (hidden_size / num_attention_heads) must be a multiple of 4, because "
                "2-D RoPE gives half of each head's rotary pairs to grid rows and half to grid columns."
            )
        if self.num_attention_heads % self.num_key_value_heads != 0:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by num_key_value_heads "
                f"{self.num_key_value_heads}."
            )
        for name in (
            "class_dropout_prob",
            "token_dropout_prob",
            "residual_dropout_prob",
            "ffn_dropout_prob",
            "attention_dropout",
        ):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}.")

    # Derived values are properties, so a field overridden at load time can never leave them stale.
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_image_tokens(self) -> int:
        """Image tokens per sequence: `grid_size ** 2`."""
        return self.grid_size**2

    @property
    def null_class_id(self) -> int:
        """Class id of the unconditional prompt used by classifier-free guidance."""
        return self.num_classes

    @classmethod
    def from_dict(cls, config_dict: dict, **kwargs) -> "LlamaGenConfig":
        check_model_type(config_dict, cls.model_type, "train_generator.py")
        return super().from_dict(config_dict, **kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "LlamaGenConfig":
        """Build a config from a named preset (`GPT-B`, `GPT-L`, `GPT-small`, `GPT-tiny`), then apply `overrides`."""
        if name not in PRESETS:
            raise ValueError(f"Unknown preset {name!r}; expected one of {sorted(PRESETS)}.")
        fields = copy.deepcopy(PRESETS[name])
        fields.update(overrides)
        return cls(**fields)
