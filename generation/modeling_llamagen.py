"""LlamaGen-style class-conditional autoregressive transformer over image-token ids.

The sequence is one class token followed by the image tokens in raster order. Position `t` predicts image
token `t`, so training feeds `[class, x_0 .. x_{N-2}]` and scores the logits against `[x_0 .. x_{N-1}]`.
The decoder layers are transformers' Llama blocks (attention, RMSNorm, SwiGLU MLP, KV cache). This file
adds the class prefix, 2-D rotary positions over the token grid, LlamaGen's dropouts and the output head.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.cache_utils import Cache, DynamicCache
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaDecoderLayer, LlamaRMSNorm
from transformers.utils import ModelOutput, logging

from .configuration_llamagen import LlamaGenConfig

logger = logging.get_logger(__name__)

# transformers renamed the attention's cache argument from `past_key_values` to `cache` within 5.x. Pass
# the name the installed version reads, because an unknown keyword would be silently ignored.
_CACHE_KWARG = "cache" if "cache" in inspect.signature(LlamaAttention.forward).parameters else "past_key_values"


@dataclass
class LlamaGenOutput(ModelOutput):
    """Output of [`LlamaGenForClassConditionalGeneration.forward`].

    Args:
        loss: mean cross-entropy of the logits against `labels`, when `labels` is given.
        logits: float32 scores over the `codebook_size` image-token ids, `[batch, sequence, codebook_size]`.
        cache: the KV cache after this call, when `use_cache` is on.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cache: Cache | None = None


def grid_rope_cos_sin(
    positions: torch.Tensor, grid_size: int, head_dim: int, theta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Compute 2-D rotary embeddings for sequence positions of a class-prefixed raster token grid.

    Position 0 is the class token and positions `1 .. grid_size**2` are the grid cells in raster order. A
    cell at (row, column) gets angles `row * f_k` on the first quarter of the head dimensions and
    `column * f_k` on the second, with `f_k = theta ** (-k / (head_dim / 4))`. The last half repeats the
    first, because transformers' `rotate_half` pairs dimension `i` with `i + head_dim / 2`. The class token
    and cell (0, 0) both get angle 0, which is the identity rotation, as in LlamaGen.

    Returns `(cos, sin)`, each `[1, len(positions), head_dim]` in float32.
    """
    quarter = head_dim // 4
    frequencies = theta ** (-torch.arange(quarter, dtype=torch.float32, device=positions.device) / quarter)
    cells = (positions - 1).clamp(min=0)
    rows = torch.div(cells, grid_size, rounding_mode="floor").float()
    columns = (cells % grid_size).float()
    # [L, head_dim / 2]: row angles, then column angles.
    angles = torch.cat([rows[:, None] * frequencies, columns[:, None] * frequencies], dim=-1)
    angles = torch.cat([angles, angles], dim=-1)[None]
    return angles.cos(), angles.sin()


class LlamaGenDecoderLayer(LlamaDecoderLayer):
    """transformers' Llama decoder layer with LlamaGen's dropout on the attention and SwiGLU outputs."""

    def __init__(self, config: LlamaGenConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.residual_dropout = nn.Dropout(config.residual_dropout_prob)
        self.ffn_dropout = nn.Dropout(config.ffn_dropout_prob)

    def forward(
        self,
        hidden_states: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_embeddings: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: Cache | None = None,
        **kwargs,
    ) -> torch.Tensor:
        attention_output, _ = self.self_attn(
            hidden_states=self.input_layernorm(hidden_states),
            attention_mask=attention_mask,
            position_embeddings=position_embeddings,
            **{_CACHE_KWARG: cache},
            **kwargs,
        )
        hidden_states = hidden_states + self.residual_dropout(attention_output)
        mlp_output = self.mlp(self.post_attention_layernorm(hidden_states))
        return hidden_states + self.ffn_dropout(mlp_output)


class LlamaGenPreTrainedModel(PreTrainedModel):
    """Base class that ties LlamaGen models to `LlamaGenConfig` and to transformers' loading and init."""

    config_class = LlamaGenConfig
    config: LlamaGenConfig
    base_model_prefix = "llamagen"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaGenDecoderLayer"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        # A zero output head makes every first prediction uniform, as in LlamaGen.
        if module is getattr(self, "lm_head", None):
            init.zeros_(module.weight)


class LlamaGenForClassConditionalGeneration(LlamaGenPreTrainedModel):
    """Class-conditional autoregressive generator of image-token grids (LlamaGen's c2i GPT).

    Example:

    ```python
    from generation import LlamaGenConfig, LlamaGenForClassConditionalGeneration

    model = LlamaGenForClassConditionalGeneration(LlamaGenConfig.from_preset("GPT-tiny", codebook_size=512,
                                                                             grid_size=8, num_classes=10))
    ids = model.generate(torch.tensor([3, 7]), cfg_scale=2.0, top_k=100)  # [2, 8, 8] image-token ids
    ```
    """

    def __init__(self, config: LlamaGenConfig):
        super().__init__(config)
        self.class_embedding = nn.Embedding(config.num_classes + 1, config.hidden_size)
        self.token_embedding = nn.Embedding(config.codebook_size, config.hidden_size)
        self.token_dropout = nn.Dropout(config.token_dropout_prob)
        self.layers = nn.ModuleList(
            [LlamaGenDecoderLayer(config, layer_idx) for layer_idx in range(config.num_hidden_layers)]
        )
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        # Untied, and over image-token ids only, so the model cannot emit an id the tokenizer cannot decode.
        self.lm_head = nn.Linear(config.hidden_size, config.codebook_size, bias=False)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.token_embedding

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.token_embedding = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def _causal_mask(self, query_length: int, past_length: int, dtype: torch.dtype, device) -> torch.Tensor | None:
        """Build the attention mask for `query_length` new positions after `past_length` cached ones.

        Returns None where no mask is needed: a single query position may attend to the whole cache, and
        SDPA applies causality itself when nothing is cached.
        """
        if query_length == 1:
            return None
        if self.config._attn_implementation == "sdpa" and past_length == 0:
            return None
        key_positions = torch.arange(past_length + query_length, device=device)
        query_positions = torch.arange(past_length, past_length + query_length, device=device)
        allowed = key_positions[None, :] <= query_positions[:, None]  # [query, key]
        if self.config._attn_implementation == "sdpa":
            return allowed[None, None]
        # Eager attention adds the mask to the scores.
        additive = torch.zeros(allowed.shape, dtype=dtype, device=device)
        return additive.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        class_labels: torch.LongTensor | None = None,
        cache: Cache | None = None,
        use_cache: bool = False,
        labels: torch.LongTensor | None = None,
    ) -> LlamaGenOutput:
        """Score the next image token at every position.

        Args:
            input_ids: `[batch, length]` image-token ids that follow the class token. In training this is
                the token grid without its last token, `codes[:, :-1]`.
            class_labels: `[batch]` class ids in `[0, num_classes]`, where `num_classes` is the null class.
                Required when the sequence starts here (no cache, or an empty one) and rejected when
                continuing from a filled cache. In training mode, each label is replaced by the null class
                with probability `config.class_dropout_prob`.
            cache: KV cache of the positions already processed; a new `DynamicCache` is created when
                `use_cache` is on and none is given.
            use_cache: store this call's keys and values in the cache and return it.
            labels: `[batch, length]` target image-token ids for every output position (in training, the
                whole grid `codes`); the loss is their mean cross-entropy.
        """
        if use_cache and cache is None:
            cache = DynamicCache()
        past_length = cache.get_seq_length() if cache is not None else 0

        pieces = []
        if past_length == 0:
            if class_labels is None:
                raise ValueError("class_labels is required when the sequence starts (no cache or an empty cache).")
            if self.training and self.config.class_dropout_prob > 0:
                dropped = torch.rand(class_labels.shape, device=class_labels.device) < self.config.class_dropout_prob
                class_labels = torch.where(dropped, self.config.null_class_id, class_labels)
            pieces.append(self.class_embedding(class_labels)[:, None])  # [B, 1, D]
        elif class_labels is not None:
            raise ValueError(
                f"class_labels must be None when continuing from a cache, which already contains {past_length} "
                "positions; pass class_labels only with the first call of a sequence."
            )
        if input_ids is not None:
            pieces.append(self.token_embedding(input_ids))  # [B, L, D]
        if not pieces:
            raise ValueError("Nothing to process: pass input_ids when continuing from a cache.")
        hidden_states = self.token_dropout(torch.cat(pieces, dim=1))

        query_length = hidden_states.shape[1]
        # Position t predicts image token t, so the last image token is never fed in.
        if past_length + query_length > self.config.num_image_tokens:
            raise ValueError(
                f"Sequence of {past_length + query_length} positions exceeds grid_size**2 = "
                f"{self.config.num_image_tokens}: feed the class token and at most all but the last image token."
            )
        positions = torch.arange(past_length, past_length + query_length, device=hidden_states.device)
        cos, sin = grid_rope_cos_sin(positions, self.config.grid_size, self.config.head_dim, self.config.rope_theta)
        position_embeddings = (cos.to(hidden_states.dtype), sin.to(hidden_states.dtype))
        attention_mask = self._causal_mask(query_length, past_length, hidden_states.dtype, hidden_states.device)

        for layer in self.layers:
            hidden_states = layer(
                hidden_states,
                attention_mask=attention_mask,
                position_embeddings=position_embeddings,
                cache=cache,
            )
        hidden_states = self.norm(hidden_states)

        # The head runs outside autocast, so sampling gets float32 logits even under bf16 mixed precision.
        with torch.autocast(device_type=hidden_states.device.type, enabled=False):
            logits = self.lm_head(hidden_states.to(self.lm_head.weight.dtype)).float()

        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(
                    f"labels has shape {tuple(labels.shape)} but the logits cover {tuple(logits.shape[:2])} "
                    "positions; pass the full token grid as labels and all but its last token as input_ids."
                )
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

        return LlamaGenOutput(loss=loss, logits=logits, cache=cache if use_cache else None)

    @torch.no_grad()
    def generate(self, class_labels, **kwargs) -> torch.LongTensor:
        """Sample image-token grids `[batch, grid_size, grid_size]`; see `generation.sampling.generate`."""
        from .sampling import generate

        return generate(self, class_labels, **kwargs)
