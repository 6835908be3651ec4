"""Sample class-conditional images from a trained generator and decode them with their tokenizer.

    python scripts/sample_generator.py --generator outputs/generator --tokenizer outputs/tokenizer \
        --num_samples 100 --cfg_scale 2.0 --output_dir outputs/samples

Writes `OUTPUT_DIR/samples/<index>_class<label>.png` (one file per sample), `OUTPUT_DIR/samples/metadata.jsonl`
(`file_name` and `label` per sample, the layout `datasets`' imagefolder loader reads), a labelled overview
`OUTPUT_DIR/grid.png` and the settings in `OUTPUT_DIR/sampling_config.json`. Without `--class_labels` the
labels cycle through all classes, so every class gets the same number of samples (give or take one).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provq_hf.cli import HelpFormatter  # noqa: E402

from generation import LlamaGenForClassConditionalGeneration, generate  # noqa: E402
from generation.image_grid import make_labelled_grid  # noqa: E402
from generation.sampling import resolve_cfg_scale, validate_class_labels, validate_sampling_arguments  # noqa: E402
from generation.token_data import check_tokenizer_compatibility  # noqa: E402
from provq_hf import ProVQTokenizer  # noqa: E402
from provq_hf.image_processing_provq import ProVQImageProcessor  # noqa: E402
from provq_hf.training import make_accelerator  # noqa: E402

logger = get_logger("sample_generator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--generator", required=True, help="Folder (or Hub id) of a trained generator.")
    parser.add_argument("--tokenizer", required=True, help="Folder (or Hub id) of the tokenizer the generator's token data came from.")
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--num_samples", type=int, default=64, help="Number of images to generate.")
    parser.add_argument(
        "--class_labels",
        type=int,
        nargs="+",
        default=None,
        help="Class ids to sample, used in turn until --num_samples is reached. Default: all classes in turn.",
    )
    parser.add_argument(
        "--cfg_scale",
        "--guidance_scale",
        dest="cfg_scale",
        type=float,
        default=1.0,
        help="Classifier-free guidance scale s >= 0: logits = uncond + s * (cond - uncond). 1 is purely "
        "conditional, 0 unconditional, above 1 strengthens the class.",
    )
    parser.add_argument("--temperature", type=float, default=1.0, help="Sampling temperature; 0 takes the most likely id.")
    parser.add_argument("--top_k", type=int, default=0, help="Sample among the K most likely ids (0 keeps all).")
    parser.add_argument("--top_p", type=float, default=1.0, help="Sample among the most likely ids whose probabilities sum to P, in (0, 1] (1 keeps all).")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the sampling generator; samples also depend on --batch_size.")
    parser.add_argument("--batch_size", type=int, default=64, help="Samples generated together.")
    parser.add_argument("--grid_samples", type=int, default=64, help="How many of the first samples grid.png shows.")
    parser.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    args = parser.parse_args(argv)

    for name in ("num_samples", "batch_size", "grid_samples"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    args.cfg_scale = resolve_cfg_scale(args.cfg_scale, None)
    validate_sampling_arguments(args.cfg_scale, args.temperature, args.top_k, args.top_p)
    return args


def class_label_schedule(num_samples: int, num_classes: int, class_labels: list[int] | None) -> list[int]:
    """Return one label per sample: `class_labels` (default: every class) repeated in turn."""
    cycle = list(range(num_classes)) if class_labels is None else list(class_labels)
    return [cycle[index % len(cycle)] for index in range(num_samples)]


def class_caption(label: int, config) -> str:
    """Caption for a grid tile: the class name when the config has one per class, else the id."""
    names = getattr(config, "id2label", None) or {}
    return str(names[label]) if len(names) == config.num_classes and label in names else str(label)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    accelerator = make_accelerator(mixed_precision=args.mixed_precision)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    if accelerator.num_processes > 1:
        raise ValueError(
            f"sample_generator.py runs in one process, but {accelerator.num_processes} were started; run it with "
            "`python` instead of torchrun or accelerate launch."
        )

    model = LlamaGenForClassConditionalGeneration.from_pretrained(args.generator).to(accelerator.device).eval()
    config = model.config
    labels = class_label_schedule(args.num_samples, config.num_classes, args.class_labels)
    validate_class_labels(labels, config.num_classes, "cpu")
    tokenizer = ProVQTokenizer.from_pretrained(args.tokenizer).to(accelerator.device).eval()
    check_tokenizer_compatibility(tokenizer.config, config)
    processor = ProVQImageProcessor.from_pretrained(args.tokenizer)

    output_dir = Path(args.output_dir)
    samples_dir = output_dir / "samples"
    samples_dir.mkdir(parents=True, exist_ok=True)
    # The folder must hold only this run's samples, because evaluate_generator.py scores every file in it.
    for stale in list(samples_dir.glob("*.png")) + list(samples_dir.glob("metadata.jsonl")):
        stale.unlink()
    settings = {**vars(args), "class_labels": labels}
    (output_dir / "sampling_config.json").write_text(json.dumps(settings, indent=2))

    generator = torch.Generator().manual_seed(args.seed)
    records, grid_images = [], []
    for start in tqdm(range(0, args.num_samples, args.batch_size), desc="sample"):
        batch_labels = labels[start : start + args.batch_size]
        with accelerator.autocast():
            ids = generate(
                model,
                batch_labels,
                cfg_scale=args.cfg_scale,
                temperature=args.temperature,
                top_k=args.top_k,
                top_p=args.top_p,
                generator=generator,
            )
            pixel_values = tokenizer.decode(ids)
        for offset, (image, label) in enumerate(zip(processor.postprocess(pixel_values), batch_labels)):
            file_name = f"{start + offset:05d}_class{label}.png"
            image.save(samples_dir / file_name)
            records.append({"file_name": file_name, "label": label})
            if len(grid_images) < args.grid_samples:
                grid_images.append(image)

    with open(samples_dir / "metadata.jsonl", "w") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    captions = [class_caption(label, config) for label in labels[: len(grid_images)]]
    make_labelled_grid(grid_images, captions).save(output_dir / "grid.png")
    logger.info(f"Wrote {len(records)} samples to {samples_dir} and the overview to {output_dir / 'grid.png'}")


if __name__ == "__main__":
    main()
