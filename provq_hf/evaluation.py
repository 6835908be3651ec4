"""Tokenizer evaluation: reconstruction quality, codebook health and rFID on a test split."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torchvision.utils import make_grid, save_image

from .fidelity import FidelityFeatureExtractor, compute_fidelity_metrics
from .metrics import code_histogram, codebook_metrics, psnr, ssim
from .modeling_provq import ProVQTokenizer


@torch.no_grad()
def reconstruct(model: ProVQTokenizer, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode and decode `images` `[N, C, H, W]` in batches; return `(reconstructions on CPU, ids [N, h, w])`."""
    model.eval()
    reconstructions, all_ids = [], []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(model.device)
        ids = model.encode(batch)
        reconstructions.append(model.decode(ids).cpu())
        all_ids.append(ids.cpu())
    return torch.cat(reconstructions), torch.cat(all_ids)


def evaluate_tokenizer(
    model: ProVQTokenizer,
    images: torch.Tensor,
    feature_extractor: FidelityFeatureExtractor | None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> tuple[dict[str, Any], torch.Tensor, torch.Tensor]:
    """Compute `psnr`, `ssim`, `rfid`, `codebook_utilization`, `perplexity`, `code_spread` on `images`.

    Returns `(metrics, reconstructions, ids)`. rFID compares the reconstructions (torch-fidelity's
    generated input) against the originals (its real input); it is skipped when `feature_extractor` is None.
    """
    reconstructions, ids = reconstruct(model, images, batch_size)
    metrics: dict[str, Any] = {
        "psnr": float(psnr(images, reconstructions).mean()),
        "ssim": float(ssim(images, reconstructions).mean()),
    }
    codebook = codebook_metrics(ids, model.quantizer.codes().detach().cpu())
    metrics["codebook_utilization"] = codebook["codebook_utilization"]
    metrics["perplexity"] = codebook["perplexity"]
    metrics["code_spread"] = codebook["code_spread"]
    metrics["dead_codes"] = codebook.get("dead_codes")
    if feature_extractor is not None:
        fidelity = compute_fidelity_metrics(
            generated=reconstructions, real=images, feature_extractor=feature_extractor, metrics=("fid",), device=device
        )
        metrics["rfid"] = fidelity["fid"]
        metrics["feature_extractor"] = fidelity["feature_extractor"]
    return metrics, reconstructions, ids


def save_reconstruction_grid(
    originals: torch.Tensor, reconstructions: torch.Tensor, path: str | os.PathLike, num_images: int = 16
) -> Path:
    """Save a PNG with originals in the top row and their reconstructions below."""
    count = min(num_images, len(originals))
    rows = torch.cat([originals[:count], reconstructions[:count]])
    grid = make_grid((rows.float().clamp(-1, 1) + 1) / 2, nrow=count, padding=2, pad_value=1.0)
    save_image(grid, path)
    return Path(path)


def save_usage_histogram(ids: torch.Tensor, codebook_size: int, path: str | os.PathLike, title: str = "") -> Path:
    """Save a PNG bar chart of code counts sorted from most to least used."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = code_histogram(ids, codebook_size).sort(descending=True).values.numpy()
    figure, axis = plt.subplots(figsize=(7, 3))
    axis.bar(range(len(counts)), counts, width=1.0, color="tab:blue")
    axis.set_xlabel("code rank (most used first)")
    axis.set_ylabel("count on the test split")
    used = int((counts > 0).sum())
    axis.set_title(f"{title} {used}/{codebook_size} codes used".strip())
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)


def evaluate_and_save(
    tokenizer_dir: str | os.PathLike,
    dataset: str,
    output_dir: str | os.PathLike,
    split: str = "test",
    feature_extractor_path: str | os.PathLike | None = None,
    compute_rfid: bool = True,
    max_examples: int | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, Any]:
    """Evaluate the tokenizer saved in `tokenizer_dir` and write metrics.json and the two PNGs to `output_dir`."""
    import json

    from .data import load_image_tensors
    from .fidelity import load_or_train_feature_extractor
    from .image_processing_provq import ProVQImageProcessor

    tokenizer_dir = Path(tokenizer_dir)
    if not (tokenizer_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"No tokenizer in {str(tokenizer_dir)!r} (config.json is missing); pass the --output_dir of train_tokenizer.py."
        )
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = ProVQTokenizer.from_pretrained(tokenizer_dir).to(device).eval()
    processor = ProVQImageProcessor.from_pretrained(tokenizer_dir)
    images, _ = load_image_tensors(dataset, split, processor, max_examples=max_examples)

    extractor = None
    if compute_rfid:
        extractor = load_or_train_feature_extractor(dataset, path=feature_extractor_path)
    metrics, reconstructions, ids = evaluate_tokenizer(model, images, extractor, batch_size, device)
    metrics.update(
        tokenizer=str(tokenizer_dir),
        dataset=dataset,
        split=split,
        num_images=len(images),
        rfid_reference=f"{dataset}/{split} originals vs. their reconstructions" if compute_rfid else None,
        method=model.config.method,
        codebook_l2_norm=model.config.codebook_l2_norm,
        codebook_size=model.config.codebook_size,
        curriculum_step=model.curriculum_step,
    )

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    save_reconstruction_grid(images, reconstructions, output_dir / "reconstructions.png")
    save_usage_histogram(ids, model.config.codebook_size, output_dir / "codebook_usage.png", title=model.config.method)
    return metrics
