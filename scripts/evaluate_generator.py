"""Sample a trained generator with uniform class labels and score the samples against real images.

    python scripts/evaluate_generator.py --generator out/gen --tokenizer out/tok --dataset mnist-5k \
        --num_samples 1000 --output_dir out/gen_eval
    python scripts/evaluate_generator.py --samples out/samples/samples --dataset mnist-5k --output_dir out/scores

Writes OUTPUT_DIR/metrics.json with gfid, kid, kid_std, inception_score, inception_score_std,
precision and recall (k = 3) against the dataset's real train split, computed with torch-fidelity and the
dataset's domain classifier (the extractor rFID uses), plus class_accuracy: how often that classifier
recognizes the requested class. Without --samples, the samples are drawn first with sample_generator.py's
code into OUTPUT_DIR/samples/ (grid in OUTPUT_DIR/grid.png).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from provq_hf.cli import HelpFormatter  # noqa: E402

from provq_hf.data import load_image_tensors  # noqa: E402
from provq_hf.domain_classifier import classifier_accuracy, load_or_train_domain_classifier  # noqa: E402
from provq_hf.fidelity import compute_fidelity_metrics, register_domain_classifier  # noqa: E402
from provq_hf.image_processing_provq import ProVQImageProcessor  # noqa: E402

logger = logging.getLogger("evaluate_generator")

# Flags that only matter when this script draws the samples itself.
SAMPLING_FLAGS = ("generator", "num_samples", "cfg_scale", "temperature", "top_k", "top_p", "seed", "batch_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--generator", default=None, help="Trained generator folder (needed unless --samples is given).")
    parser.add_argument("--tokenizer", default=None, help="Tokenizer folder used to decode samples (needed unless --samples).")
    parser.add_argument("--samples", default=None, help="Score an existing samples folder (PNG files + metadata.jsonl) instead of sampling.")
    parser.add_argument("--dataset", default="mnist-5k", help="Dataset whose train split is the real reference.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_samples", type=int, default=1000, help="Samples to draw, with uniform class labels.")
    parser.add_argument("--cfg_scale", "--guidance_scale", dest="cfg_scale", type=float, default=2.0, help="Classifier-free guidance scale (>= 0).")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0)
    parser.add_argument("--top_p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=250, help="Samples generated together.")
    parser.add_argument("--feature_extractor", default=None, help="Domain-classifier folder (default: the dataset's cached one).")
    parser.add_argument("--device", default=None, help="cpu or cuda for torch-fidelity (default: cuda when available).")
    args = parser.parse_args(argv)
    if args.samples is None and (args.generator is None or args.tokenizer is None):
        parser.error("Pass --generator and --tokenizer to sample, or --samples DIR to score existing samples.")
    return args


def draw_samples(args: argparse.Namespace) -> Path:
    """Run sample_generator.py's main in this process; return the samples folder."""
    spec = importlib.util.spec_from_file_location("sample_generator", REPO / "scripts" / "sample_generator.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main([
        "--generator", args.generator, "--tokenizer", args.tokenizer, "--output_dir", args.output_dir,
        "--num_samples", str(args.num_samples), "--cfg_scale", str(args.cfg_scale),
        "--temperature", str(args.temperature), "--top_k", str(args.top_k), "--top_p", str(args.top_p),
        "--seed", str(args.seed), "--batch_size", str(args.batch_size),
    ])
    return Path(args.output_dir) / "samples"


def load_samples(samples_dir: Path, processor: ProVQImageProcessor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Read `samples_dir/metadata.jsonl` (file_name, label) and return images in [-1, 1] and labels."""
    metadata = samples_dir / "metadata.jsonl"
    if metadata.is_file():
        records = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
    else:
        records = [{"file_name": path.name, "label": None} for path in sorted(samples_dir.glob("*.png"))]
    if not records:
        raise FileNotFoundError(f"No samples in {str(samples_dir)!r}: expected PNG files and a metadata.jsonl.")
    images = [Image.open(samples_dir / record["file_name"]) for record in records]
    pixel_values = processor(images, return_tensors="pt")["pixel_values"]
    labels = [record.get("label") for record in records]
    return pixel_values, (torch.tensor(labels) if None not in labels else None)


def recorded_settings(args: argparse.Namespace) -> dict:
    """Return the flags that shaped the scores. When --samples names existing samples, the sampling flags are left out."""
    ignored = {"output_dir"}
    if args.samples is not None:
        ignored |= set(SAMPLING_FLAGS)
    return {key: value for key, value in vars(args).items() if key not in ignored}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    samples_dir = Path(args.samples) if args.samples else draw_samples(args)
    if args.tokenizer:
        processor = ProVQImageProcessor.from_pretrained(args.tokenizer)
    else:
        processor = ProVQImageProcessor.for_dataset(args.dataset)
    generated, labels = load_samples(samples_dir, processor)
    real, _ = load_image_tensors(args.dataset, "train", processor)

    classifier = load_or_train_domain_classifier(args.dataset, path=args.feature_extractor)
    scores = compute_fidelity_metrics(
        generated=generated, real=real, feature_extractor=register_domain_classifier(classifier), device=args.device
    )
    metrics = {
        "gfid": scores["fid"],
        "kid": scores["kid"],
        "kid_std": scores["kid_std"],
        "inception_score": scores["inception_score"],
        "inception_score_std": scores["inception_score_std"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "class_accuracy": classifier_accuracy(classifier, generated, labels) if labels is not None else None,
        "feature_extractor": scores["feature_extractor"],
        "reference": f"{args.dataset}/train ({len(real)} real images)",
        "num_generated": len(generated),
        "samples": str(samples_dir),
        "settings": recorded_settings(args),
        "fidelity_settings": scores.get("settings"),
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
