"""Encode an image dataset with a ProVQ tokenizer into a token dataset for generator training.

One process:      python scripts/extract_codes.py --tokenizer outputs/tokenizer --dataset mnist-5k --output_dir outputs/codes
Several GPUs:     accelerate launch scripts/extract_codes.py --tokenizer ... --mixed_precision bf16
Two CPU workers:  torchrun --nproc_per_node 2 scripts/extract_codes.py ...

The output directory receives a `datasets.DatasetDict` saved with `save_to_disk` (one entry per split,
columns `input_ids`, `labels`, `flipped`) and `codes_config.json`, which names the tokenizer, grid,
codebook size, dataset, number of classes and split sizes (see `generation/token_data.py`). Every process
encodes its share of the batches and the main process writes the rows in the dataset's order.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import datasets
import numpy as np
import torch
from accelerate.logging import get_logger
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provq_hf.cli import HelpFormatter  # noqa: E402

from generation.token_data import TokenDatasetConfig  # noqa: E402
from provq_hf import ProVQTokenizer  # noqa: E402
from provq_hf.data import dataset_info, load_image_dataset, make_transform  # noqa: E402
from provq_hf.image_processing_provq import ProVQImageProcessor  # noqa: E402
from provq_hf.training import make_accelerator  # noqa: E402

logger = get_logger("extract_codes")

# Datasets whose class changes under a horizontal flip (a mirrored digit is not the same digit).
FLIP_CHANGES_CLASS = ("mnist-5k",)
PROCESSOR_CONFIG_NAME = "preprocessor_config.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="Folder (or Hub id) of a saved ProVQ tokenizer.")
    parser.add_argument("--dataset", default="mnist-5k", help="Built-in name (mnist-5k, photo-patches), a local image folder, or a Hub dataset id.")
    parser.add_argument("--output_dir", required=True, help="Folder for the token dataset.")
    parser.add_argument("--splits", nargs="+", default=["train"], help="Dataset splits to encode.")
    parser.add_argument("--batch_size", type=int, default=256, help="Images per process per batch.")
    parser.add_argument(
        "--flip",
        action="store_true",
        help="Also store the ids of each horizontally flipped image (doubles every split). Rejected for "
        "datasets whose class a flip changes, such as mnist-5k.",
    )
    parser.add_argument("--max_samples", type=int, default=None, help="Encode only the first N images of each split.")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes.")
    args = parser.parse_args(argv)

    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1, got {args.batch_size}.")
    if args.max_samples is not None and args.max_samples < 1:
        parser.error(f"--max_samples must be at least 1, got {args.max_samples}.")
    if args.flip and args.dataset in FLIP_CHANGES_CLASS:
        raise ValueError(
            f"--flip is not allowed for {args.dataset!r}: a horizontally flipped digit is a different (or no) "
            "digit, so the flipped copies would carry wrong labels. Run without --flip."
        )
    return args


def load_processor(tokenizer_path: str, dataset: str, tokenizer: ProVQTokenizer) -> ProVQImageProcessor:
    """Load the image processor saved beside the tokenizer, else the dataset's default processor."""
    if not os.path.isdir(tokenizer_path) or (Path(tokenizer_path) / PROCESSOR_CONFIG_NAME).is_file():
        processor = ProVQImageProcessor.from_pretrained(tokenizer_path)
    else:
        logger.warning(f"{tokenizer_path} has no {PROCESSOR_CONFIG_NAME}; using the default processor of {dataset!r}")
        processor = ProVQImageProcessor.for_dataset(dataset)
    config = tokenizer.config
    if processor.image_size != config.image_size or processor.num_channels != config.num_channels:
        raise ValueError(
            f"The image processor makes {processor.num_channels}-channel {processor.image_size}px images but the "
            f"tokenizer expects {config.num_channels}-channel {config.image_size}px images; save the matching "
            f"processor into {tokenizer_path!r}."
        )
    return processor


@torch.no_grad()
def encode_split(accelerator, tokenizer, loader, flip: bool) -> dict[str, np.ndarray]:
    """Encode every batch of a prepared loader and return the columns of the whole split, in dataset order."""
    ids_chunks, label_chunks = [], []
    flipped_ids_chunks = []
    for batch in tqdm(loader, desc="encode", disable=not accelerator.is_local_main_process):
        pixel_values = batch["pixel_values"]
        with accelerator.autocast():
            ids = tokenizer.encode(pixel_values).flatten(1)  # [B, h * w], raster order
            flipped_ids = tokenizer.encode(pixel_values.flip(-1)).flatten(1) if flip else None
        # gather_for_metrics drops the rows Accelerate repeated to even out the last batch across processes.
        ids, labels = accelerator.gather_for_metrics((ids, batch["labels"]))
        ids_chunks.append(ids.cpu())
        label_chunks.append(labels.cpu())
        if flip:
            flipped_ids_chunks.append(accelerator.gather_for_metrics(flipped_ids).cpu())

    ids = torch.cat(ids_chunks)
    labels = torch.cat(label_chunks)
    flipped = torch.zeros(len(ids), dtype=torch.bool)
    if flip:
        ids = torch.cat([ids, torch.cat(flipped_ids_chunks)])
        labels = torch.cat([labels, labels])
        flipped = torch.cat([flipped, torch.ones_like(flipped)])
    return {"input_ids": ids.int().numpy(), "labels": labels.long().numpy(), "flipped": flipped.numpy()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(f"Processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}")

    tokenizer = ProVQTokenizer.from_pretrained(args.tokenizer).to(accelerator.device).eval()
    processor = load_processor(args.tokenizer, args.dataset, tokenizer)
    with accelerator.main_process_first():  # the main process builds the dataset cache once
        info = dataset_info(args.dataset)

    features = datasets.Features(
        {
            "input_ids": datasets.Sequence(datasets.Value("int32")),
            "labels": datasets.Value("int64"),
            "flipped": datasets.Value("bool"),
        }
    )
    splits = {}
    for split in args.splits:
        with accelerator.main_process_first():
            image_set = load_image_dataset(args.dataset, split=split)
        if args.max_samples is not None:
            image_set = image_set.select(range(min(args.max_samples, len(image_set))))
        image_set = image_set.with_transform(make_transform(processor))
        loader = DataLoader(image_set, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
        loader = accelerator.prepare(loader)
        logger.info(f"Encoding split {split!r}: {len(image_set)} images")
        columns = encode_split(accelerator, tokenizer, loader, args.flip)
        splits[split] = datasets.Dataset.from_dict(columns, features=features)

    output_dir = Path(args.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        datasets.DatasetDict(splits).save_to_disk(str(output_dir))
        tokenizer_name = str(Path(args.tokenizer).resolve()) if os.path.isdir(args.tokenizer) else args.tokenizer
        codes_config = TokenDatasetConfig(
            tokenizer=tokenizer_name,
            dataset=args.dataset,
            codebook_size=tokenizer.config.codebook_size,
            grid_size=tokenizer.config.grid_size,
            num_classes=info["num_classes"],
            splits={name: len(split_set) for name, split_set in splits.items()},
            image_size=tokenizer.config.image_size,
            flip=args.flip,
            class_names=info["class_names"],
        )
        codes_config.save(output_dir)
        logger.info(f"Saved the token dataset to {output_dir}: {codes_config.splits}")
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main()
