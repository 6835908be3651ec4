"""Evaluate a ProVQ tokenizer on a dataset's test split.

    python scripts/evaluate_tokenizer.py --tokenizer outputs/tokenizer --dataset mnist-5k --output_dir outputs/eval

Writes OUTPUT_DIR/metrics.json (psnr, ssim, rfid, codebook_utilization, perplexity, code_spread and the
settings that produced them), OUTPUT_DIR/reconstructions.png (originals above reconstructions) and
OUTPUT_DIR/codebook_usage.png. rFID uses the dataset's domain classifier as feature extractor (trained
and cached on first use) unless --feature_extractor names another one.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provq_hf.cli import HelpFormatter  # noqa: E402

from provq_hf.evaluation import evaluate_and_save  # noqa: E402

logger = logging.getLogger("evaluate_tokenizer")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="Folder written by train_tokenizer.py (or save_pretrained).")
    parser.add_argument("--dataset", default="mnist-5k", help="Built-in name, local image folder or Hub dataset id.")
    parser.add_argument("--split", default="test", help="Split to evaluate on.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--feature_extractor", default=None, help="Domain-classifier folder for rFID (default: the dataset's cached one).")
    parser.add_argument("--no_rfid", action="store_true", help="Skip rFID (and the feature extractor).")
    parser.add_argument("--max_examples", type=int, default=None, help="Evaluate on the first N images only.")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    metrics = evaluate_and_save(
        tokenizer_dir=args.tokenizer,
        dataset=args.dataset,
        output_dir=args.output_dir,
        split=args.split,
        feature_extractor_path=args.feature_extractor,
        compute_rfid=not args.no_rfid,
        max_examples=args.max_examples,
        batch_size=args.batch_size,
        device=args.device,
    )
    print(json.dumps({k: v for k, v in metrics.items() if not isinstance(v, dict)}, indent=2))
    return metrics


if __name__ == "__main__":
    main()
