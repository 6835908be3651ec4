"""Sampling of image-token grids with classifier-free guidance, temperature, top-k and top-p.

This is a loop of our own over transformers' `DynamicCache`, because transformers' guidance logits
processor rejects guidance scales at or below 1, and here every scale `s >= 0` is meaningful: `s = 0` is
unconditional, `s = 1` purely conditional and `s > 1` strengthens the class.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from transformers.cache_utils import DynamicCache


def guided_logits(cond_logits: torch.Tensor, uncond_logits: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Combine conditional and unconditional logits: `uncond + cfg_scale * (cond - uncond)`."""
    return uncond_logits + cfg_scale * (cond_logits - uncond_logits)


def filter_top_k(logits: torch.Tensor, top_k: int) -> torch.Tensor:
    """Set every logit below the `top_k`-th largest of its row to -inf; `top_k <= 0` keeps all."""
    if top_k <= 0 or top_k >= logits.shape[-1]:
        return logits
    threshold = torch.topk(logits, top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < threshold, -math.inf)


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Keep the smallest set of most likely ids whose probabilities sum to at least `top_p` (nucleus).

    The most likely id is always kept; `top_p = 1` keeps all.
    """
    if top_p >= 1.0:
        return logits
    sorted_logits, sorted_ids = torch.sort(logits, dim=-1, descending=True)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    # Drop an id when the ids ranked above it already reach top_p.
    remove_sorted = (cumulative - sorted_logits.softmax(dim=-1)) >= top_p
    remove = remove_sorted.scatter(-1, sorted_ids, remove_sorted)
    return logits.masked_fill(remove, -math.inf)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.LongTensor:
    """Draw one id per row of `logits` `[batch, vocab]`; temperature 0 takes the argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = filter_top_p(filter_top_k(logits / temperature, top_k), top_p)
    probs = logits.float().softmax(dim=-1)
    # Draw on the generator's device so a CPU generator also seeds sampling for a model on a GPU.
    sample_device = generator.device if generator is not None else probs.device
    ids = torch.multinomial(probs.to(sample_device), num_samples=1, generator=generator)
    return ids[:, 0].to(logits.device)


def resolve_cfg_scale(cfg_scale: float | None, guidance_scale: float | None) -> float:
    """Return the guidance scale given under either name (`guidance_scale` is diffusers' name); default 1."""
    if cfg_scale is not None and guidance_scale is not None and cfg_scale != guidance_scale:
        raise ValueError(
            f"cfg_scale={cfg_scale} and guidance_scale={guidance_scale} disagree; they are two names for the "
            "same value, so pass only one."
        )
    if cfg_scale is None:
        cfg_scale = guidance_scale
    return 1.0 if cfg_scale is None else float(cfg_scale)


def validate_sampling_arguments(cfg_scale: float, temperature: float, top_k: int | None, top_p: float) -> None:
    """Raise a ValueError naming the first invalid sampling setting."""
    if not math.isfinite(cfg_scale) or cfg_scale < 0:
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale}.")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}.")
    if top_k is not None and top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 disables it), got {top_k}.")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 disables it), got {top_p}.")


def validate_class_labels(class_labels, num_classes: int, device) -> torch.LongTensor:
    """Turn `class_labels` into a 1-D LongTensor on `device`, raising a ValueError for ids outside the classes."""
    labels = torch.as_tensor(class_labels, dtype=torch.long)
    if labels.dim() != 1 or labels.numel() == 0:
        raise ValueError(f"class_labels must be a non-empty 1-D sequence of class ids, got shape {tuple(labels.shape)}.")
    out_of_range = labels[(labels < 0) | (labels >= num_classes)]
    if out_of_range.numel() > 0:
        raise ValueError(
            f"class label {out_of_range[0].item()} is out of range; the generator has {num_classes} classes, "
            f"so labels must be in [0, {num_classes - 1}]."
        )
    return labels.to(device)


@torch.no_grad()
def generate(
    model,
    class_labels: Sequence[int] | torch.Tensor,
    cfg_scale: float | None = None,
    temperature: float = 1.0,
    top_k: int | None = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    guidance_scale: float | None = None,
) -> torch.LongTensor:
    """Sample one image-token grid per class label.

    Args:
        model: a `LlamaGenForClassConditionalGeneration`; it runs in eval mode here and its previous mode is
            restored afterwards.
        class_labels: class ids in `[0, num_classes)`, one per sample.
        cfg_scale: classifier-free guidance scale `s >= 0`; the logits are `uncond + s * (cond - uncond)`.
            Defaults to 1 (conditional only, which skips the unconditional pass).
        temperature: divides the guided logits; 0 takes the argmax (greedy) and ignores top_k/top_p.
        top_k: keep only the `top_k` most likely ids; 0 or None keeps all.
        top_p: keep the smallest set of most likely ids with total probability >= top_p; 1 keeps all.
        generator: seeds the draws, so equal seeds give equal grids for equal batches.
        use_cache: reuse keys and values of earlier positions (KV cache) instead of recomputing the prefix.
        guidance_scale: another name for `cfg_scale` (as in diffusers); giving both with different values
            is an error.

    Returns:
        `[batch, grid_size, grid_size]` image-token ids in `[0, codebook_size)`.
    """
    cfg_scale = resolve_cfg_scale(cfg_scale, guidance_scale)
    top_k = top_k or 0
    validate_sampling_arguments(cfg_scale, temperature, top_k, top_p)
    config = model.config
    labels = validate_class_labels(class_labels, config.num_classes, model.device)
    batch_size = labels.shape[0]

    guided = cfg_scale != 1.0
    if guided:
        # Conditional rows first, then the same number of null-class rows: one batched forward per step.
        null_labels = torch.full_like(labels, config.null_class_id)
        prefix_labels = torch.cat([labels, null_labels])
    else:
        prefix_labels = labels

    was_training = model.training
    model.eval()
    try:
        tokens = torch.empty(batch_size, 0, dtype=torch.long, device=labels.device)
        cache = DynamicCache() if use_cache else None
        for step in range(config.num_image_tokens):
            fed_tokens = torch.cat([tokens, tokens]) if guided else tokens  # [rows, step]
            if step == 0:
                output = model(class_labels=prefix_labels, cache=cache, use_cache=use_cache)
            elif use_cache:
                output = model(input_ids=fed_tokens[:, -1:], cache=cache, use_cache=True)
            else:
                output = model(input_ids=fed_tokens, class_labels=prefix_labels)
            logits = output.logits[:, -1].float()  # [rows, codebook_size]
            if guided:
                cond_logits, uncond_logits = logits.chunk(2)
                logits = guided_logits(cond_logits, uncond_logits, cfg_scale)
            next_ids = sample_next_token(logits, temperature, top_k, top_p, generator)
            tokens = torch.cat([tokens, next_ids[:, None]], dim=1)
    finally:
        model.train(was_training)
    return tokens.view(batch_size, config.grid_size, config.grid_size)
