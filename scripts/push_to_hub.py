"""Upload a saved tokenizer or generator folder to the Hugging Face Hub, with its model card.

    python scripts/push_to_hub.py --model_dir outputs/pipeline/tokenizer --hub_model_id USER/provq-mnist

Before the upload, the metrics found in --metrics (default: MODEL_DIR/metrics.json, or the evaluation
folder you name) replace the metrics section of the folder's README.md, which the training script wrote.
The rest of that model card is kept. A folder without a README.md gets a generic card. The token comes
from HF_TOKEN or `hf auth login` and is never printed. With HF_HUB_OFFLINE=1 or no network the upload
fails with an explanation, and every file but the refreshed README.md is left as it was.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provq_hf.cli import HelpFormatter  # noqa: E402

from provq_hf.hub import push_folder_or_exit, update_model_card_metrics, write_model_card  # noqa: E402

logger = logging.getLogger("push_to_hub")

# Evaluation protocol per config `model_type`, as evaluate_tokenizer.py and evaluate_generator.py compute the metrics.
PROTOCOLS = {
    "provq": (
        "Reconstruction metrics on the dataset's test split: PSNR and SSIM per image on [0, 1] pixels, averaged; "
        "rFID between the test originals and their reconstructions with torch-fidelity and the feature extractor "
        "named in the metrics; codebook utilization, perplexity and code spread from the test-split ids."
    ),
    "llamagen": (
        "Generation metrics of samples drawn with uniform class labels, against the dataset's real train split: "
        "gFID, KID, Inception Score (or its domain-classifier analogue) and k-NN precision/recall (k = 3), all "
        "with torch-fidelity and the feature extractor named in the metrics; class_accuracy is how often that "
        "extractor's classifier recognizes the requested class."
    ),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--model_dir", required=True, help="Folder written by save_pretrained (config.json inside).")
    parser.add_argument("--hub_model_id", required=True, help="Target repo, for example USER/provq-mnist.")
    parser.add_argument("--metrics", default=None, help="A metrics.json, or a folder holding one, to add to the model card.")
    parser.add_argument("--private", action="store_true", help="Create the repo as private.")
    return parser.parse_args(argv)


def refresh_model_card(model_dir: Path, metrics_path: Path) -> None:
    """Put the metrics of `metrics_path` into MODEL_DIR/README.md, writing a generic card if there is none."""
    metrics = json.loads(metrics_path.read_text())
    evaluated = metrics.get("tokenizer") or metrics.get("settings", {}).get("generator")
    if evaluated and Path(evaluated).resolve() != model_dir.resolve():
        # A copied or moved model folder is a legitimate case, so this warns instead of stopping.
        logger.warning(
            f"{str(metrics_path)!r} contains metrics of {evaluated!r}, not of {str(model_dir)!r}. Check that it is "
            "the metrics.json that evaluate_tokenizer.py or evaluate_generator.py wrote for this model."
        )
    config = json.loads((model_dir / "config.json").read_text())
    protocol = PROTOCOLS.get(config.get("model_type"))
    if (model_dir / "README.md").is_file():
        update_model_card_metrics(model_dir, metrics, evaluation_protocol=protocol)
    else:
        settings = {key: config[key] for key in sorted(config) if not key.startswith("_") and not isinstance(config[key], dict)}
        training_args_path = model_dir / "training_args.json"
        if training_args_path.is_file():
            training_args = json.loads(training_args_path.read_text())
            settings.update({f"training.{key}": value for key, value in training_args.items() if value is not None})
        write_model_card(
            model_dir,
            title=f"{config.get('model_type', 'model')} trained with provq_hf",
            summary="Model card written with measured metrics before upload.",
            settings=settings,
            metrics=metrics,
            evaluation_protocol=protocol,
        )
    logger.info(f"Added the metrics of {metrics_path} to {model_dir / 'README.md'}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    model_dir = Path(args.model_dir)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"{str(model_dir)!r} has no config.json; pass a folder written by a training script.")

    metrics_path = Path(args.metrics) if args.metrics else model_dir / "metrics.json"
    if metrics_path.is_dir():
        metrics_path = metrics_path / "metrics.json"
    if metrics_path.is_file():
        refresh_model_card(model_dir, metrics_path)
    elif args.metrics:
        raise SystemExit(f"Metrics file {str(metrics_path)!r} not found.")

    url = push_folder_or_exit(model_dir, args.hub_model_id, private=args.private)
    logger.info(f"Uploaded: {url}")


if __name__ == "__main__":
    main()
