"""Model card for a saved generator folder; uploads go through `provq_hf.hub.push_folder_to_hub`."""

from __future__ import annotations

import os
from pathlib import Path

from provq_hf.hub import write_model_card

from .modeling_llamagen import LlamaGenForClassConditionalGeneration

_USAGE = """\
import torch
import generation  # registers LlamaGen with AutoModel
from provq_hf import ProVQTokenizer
from transformers import AutoModel

generator = AutoModel.from_pretrained("{repo}")
tokenizer = ProVQTokenizer.from_pretrained("{tokenizer}")  # the tokenizer of the token data
ids = generator.generate(torch.tensor([0, 1, 2]), cfg_scale=2.0, generator=torch.Generator().manual_seed(0))
images = tokenizer.decode(ids)  # [3, C, H, W] in [-1, 1]
"""


def write_generator_model_card(
    output_dir: str | os.PathLike,
    model: LlamaGenForClassConditionalGeneration,
    training_settings: dict,
    tokenizer: str,
    repo_id: str | None = None,
) -> Path:
    """Write `output_dir/README.md` describing the generator's architecture, token space and training run.

    `tokenizer` is the path or Hub id of the tokenizer whose ids the generator was trained on; the usage
    example decodes with it.
    """
    config = model.config
    num_parameters = model.num_parameters()
    summary = (
        f"A LlamaGen-style class-conditional autoregressive transformer ({config.num_hidden_layers} layers, "
        f"width {config.hidden_size}, {config.num_attention_heads} heads, {num_parameters / 1e6:.1f}M parameters) "
        f"that predicts {config.grid_size}x{config.grid_size} grids of image-token ids from a "
        f"{config.codebook_size}-code ProVQ tokenizer, for {config.num_classes} classes. It uses a class-token "
        "prefix with a null class for classifier-free guidance, 2-D RoPE, RMSNorm and SwiGLU, and was trained "
        "with ProVQ-HF's `scripts/train_generator.py`. Decode its samples with the tokenizer in the usage example."
    )
    settings = {
        "codebook_size": config.codebook_size,
        "grid_size": config.grid_size,
        "num_classes": config.num_classes,
        "hidden_size": config.hidden_size,
        "num_hidden_layers": config.num_hidden_layers,
        "num_attention_heads": config.num_attention_heads,
        "intermediate_size": config.intermediate_size,
        **training_settings,
    }
    return write_model_card(
        output_dir,
        title="LlamaGen class-conditional generator (ProVQ-HF)",
        summary=summary,
        settings=settings,
        usage=_USAGE.format(repo=repo_id or str(output_dir), tokenizer=tokenizer),
        tags=("provq", "llamagen", "image-generation", "autoregressive", "class-conditional"),
    )

