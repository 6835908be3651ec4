"""Train a ProVQ image tokenizer with Accelerate.

One process:      python scripts/train_tokenizer.py --dataset mnist-5k --output_dir outputs/tokenizer
Several GPUs:     accelerate launch scripts/train_tokenizer.py --dataset ... --mixed_precision bf16
Two CPU workers:  torchrun --nproc_per_node 2 scripts/train_tokenizer.py ...

The output directory receives the final model (config.json, model.safetensors), the image processor
(preprocessor_config.json), a model card (README.md), the training arguments and `checkpoint-<step>`
folders. Rerunning the same command with `--resume_from_checkpoint latest` continues where it stopped.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

import torch
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provq_hf.cli import HelpFormatter  # noqa: E402

from provq_hf import METHODS, ProVQConfig, ProVQTokenizer  # noqa: E402
from provq_hf.data import load_image_dataset, make_transform  # noqa: E402
from provq_hf.hub import push_folder_or_exit, write_model_card  # noqa: E402
from provq_hf.image_processing_provq import ProVQImageProcessor  # noqa: E402
from provq_hf.metrics import CodeUsageTracker  # noqa: E402
from provq_hf.training import (  # noqa: E402
    batches_per_epoch,
    collect_latents,
    make_accelerator,
    optimizer_param_groups,
    save_checkpoint_if_due,
    start_or_resume,
    write_rank_info,
)

logger = get_logger("train_tokenizer")

DATASET_PRESETS = {"mnist-5k": "mnist-5k", "photo-patches": "small-color"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", default="mnist-5k", help="Built-in name (mnist-5k, photo-patches), a local image folder, or a Hub dataset id.")
    data.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes.")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default=None, help="Architecture preset (mnist-5k, small-color, llamagen-vq16). Default: the dataset's preset, else small-color.")
    model.add_argument("--image_size", type=int, default=None, help="Override the preset's image size in pixels.")
    model.add_argument("--codebook_size", type=int, default=None, help="Override the preset's number of codes.")
    model.add_argument("--codebook_dim", type=int, default=None, help="Override the preset's code dimension.")
    l2_norm = model.add_mutually_exclusive_group()
    l2_norm.add_argument(
        "--codebook_l2_norm", dest="codebook_l2_norm", action="store_true", default=None,
        help="l2-normalize latents and codes (LlamaGen's choice). Default: the preset's setting.",
    )
    l2_norm.add_argument(
        "--no_codebook_l2_norm", dest="codebook_l2_norm", action="store_false",
        help="Keep latents and codes unnormalized.",
    )
    model.add_argument("--reconstruction_loss", choices=["mse", "l1"], default="mse")

    curriculum = parser.add_argument_group("curriculum")
    curriculum.add_argument("--method", default="provq_cosine", choices=list(METHODS) + ["provq"], help="Quantization curriculum; 'provq' means provq_cosine.")
    curriculum.add_argument("--manifold_warmup_steps", type=int, default=500, help="T_w: optimizer steps with the continuous latent (methods with a warmup).")
    curriculum.add_argument("--transition_steps", type=int, default=500, help="T_s: optimizer steps of the soft-to-hard blend (methods with a transition).")
    curriculum.add_argument("--omega", choices=["alpha", "constant"], default="alpha", help="Weight of the VQ terms during the transition.")
    curriculum.add_argument("--kmeans_num_samples", type=int, default=65536, help="Latents (all processes together) for the K-Means codebook init.")

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--max_steps", type=int, default=2000, help="Optimizer steps to train for.")
    optim.add_argument("--batch_size", type=int, default=64, help="Images per process per micro-batch.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument("--learning_rate", type=float, default=None, help="Peak learning rate. Default: 1e-4 for llamagen-vq16 (as LlamaGen), 1e-3 for the small presets.")
    optim.add_argument("--lr_scheduler", default="constant_with_warmup", help="Any transformers scheduler name (constant_with_warmup, cosine, linear, ...).")
    optim.add_argument("--lr_warmup_steps", type=int, default=100, help="Learning-rate warmup in optimizer steps (unrelated to the manifold warmup).")
    optim.add_argument("--weight_decay", type=float, default=0.0)
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.95)
    optim.add_argument("--max_grad_norm", type=float, default=1.0)
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--logging_steps", type=int, default=50, help="Log loss terms and codebook health every N optimizer steps.")
    run.add_argument("--usage_window", type=int, default=50, help="Batches in the sliding window for utilization, perplexity and dead codes.")
    run.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N optimizer steps (0 disables).")
    run.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep at most this many checkpoints.")
    run.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' for the newest in --output_dir.")
    run.add_argument("--report_to", default=None, help="Accelerate tracker, for example 'tensorboard'.")
    run.add_argument("--rank_info", action="store_true", help="Write per-process diagnostics (process count, data seen) to OUTPUT_DIR/rank_info/.")
    run.add_argument("--push_to_hub", action="store_true", help="Upload the final model to the Hub (token from HF_TOKEN or `hf auth login`).")
    run.add_argument("--hub_model_id", default=None, help="Hub repo id for --push_to_hub, for example user/provq-mnist.")
    args = parser.parse_args(argv)

    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (for example --hub_model_id user/provq-mnist).")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps", "usage_window"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    return args


def build_config(args: argparse.Namespace, processor: ProVQImageProcessor) -> ProVQConfig:
    preset = args.preset or DATASET_PRESETS.get(args.dataset, "small-color")
    overrides = {
        "method": args.method,
        "manifold_warmup_steps": args.manifold_warmup_steps,
        "transition_steps": args.transition_steps,
        "omega": args.omega,
        "kmeans_num_samples": args.kmeans_num_samples,
        "reconstruction_loss": args.reconstruction_loss,
        "image_size": processor.image_size,
        "num_channels": processor.num_channels,
    }
    for name in ("codebook_size", "codebook_dim", "codebook_l2_norm"):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    return ProVQConfig.from_preset(preset, **overrides)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    accelerator = make_accelerator(
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=args.report_to,
        project_dir=str(output_dir / "logs"),
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True),
    )
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    logger.info(f"Processes: {accelerator.num_processes} ({accelerator.distributed_type}), device {accelerator.device}")
    set_seed(args.seed)

    # Data and model.
    processor = ProVQImageProcessor.for_dataset(args.dataset, **({"image_size": args.image_size} if args.image_size is not None else {}))
    with accelerator.main_process_first():  # the main process builds the dataset cache once
        train_set = load_image_dataset(args.dataset, split="train").with_transform(make_transform(processor))
    config = build_config(args, processor)
    model = ProVQTokenizer(config)
    learning_rate = args.learning_rate
    if learning_rate is None:
        # LlamaGen's rate for its 256 px tokenizer; the small presets train far faster near 1e-3.
        learning_rate = 1e-4 if config.image_size >= 256 else 1e-3
    if config.uses_kmeans_init and config.effective_manifold_warmup_steps >= args.max_steps:
        logger.warning(
            f"--max_steps {args.max_steps} ends before the K-Means codebook init at step "
            f"{config.effective_manifold_warmup_steps}: the saved codebook stays random. Train longer or resume later."
        )
    logger.info(
        f"Training {args.method} on {args.dataset} ({len(train_set)} images), grid {config.grid_size}x{config.grid_size}, "
        f"codebook {config.codebook_size}x{config.codebook_dim}, l2 codes {config.codebook_l2_norm}, "
        f"T_w={config.effective_manifold_warmup_steps}, T_s={config.effective_transition_steps}"
    )

    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.num_workers, generator=generator,
    )
    # Latents for the K-Means init come from a fixed, unshuffled pass, so a resumed run reproduces them.
    kmeans_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=False)

    optimizer = torch.optim.AdamW(
        optimizer_param_groups(model, args.weight_decay), lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2)
    )
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, kmeans_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, kmeans_loader, scheduler
    )
    unwrapped = accelerator.unwrap_model(model)

    global_step, epoch, batch_in_epoch = start_or_resume(accelerator, args, output_dir, "provq_tokenizer")

    tracker = CodeUsageTracker(config.codebook_size, window_size=args.usage_window)
    sums: dict[str, float] = {}
    rank_batches: list[dict] = []
    steps_per_epoch = batches_per_epoch(len(train_set), args.batch_size, accelerator.num_processes) // args.gradient_accumulation_steps
    if steps_per_epoch < 1:
        raise ValueError(
            f"The training split has {len(train_set)} images, fewer than one optimizer step needs "
            f"({args.batch_size} x {args.gradient_accumulation_steps} x {accelerator.num_processes} processes); lower --batch_size."
        )
    progress = tqdm(total=args.max_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process)

    model.train()
    while global_step < args.max_steps:
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, batch_in_epoch) if batch_in_epoch else train_loader
        for batch in loader:
            if unwrapped.needs_codebook_init():
                logger.info(f"Step {global_step}: running the K-Means codebook init")
                per_process = math.ceil(config.kmeans_num_samples / accelerator.num_processes)
                unwrapped.init_codebook(collect_latents(unwrapped, kmeans_loader, per_process), seed=args.seed)
                logger.info(f"Step {global_step}: K-Means codebook init done")

            with accelerator.accumulate(model):
                output = model(batch["pixel_values"])
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            batch_in_epoch += 1
            tracker.update(accelerator.gather(output.ids.detach()))
            for name in ("loss", "reconstruction_loss", "codebook_loss", "commitment_loss"):
                sums[name] = sums.get(name, 0.0) + float(getattr(output, name).detach())
            sums["count"] = sums.get("count", 0) + 1
            if args.rank_info and len(rank_batches) < 4:
                rank_batches.append({"labels": batch["labels"].tolist(), "pixel_sum": float(batch["pixel_values"].sum())})
            if not accelerator.sync_gradients:
                continue

            unwrapped.step_curriculum()
            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{float(output.loss.detach()):.4f}", phase=output.phase, alpha=f"{output.alpha:.2f}")

            if global_step % args.logging_steps == 0 or global_step == args.max_steps:
                count = sums.pop("count")
                logs = {name: value / count for name, value in sums.items()}
                logs.update(phase=output.phase, alpha=output.alpha, omega=output.omega, lr=scheduler.get_last_lr()[0])
                logs.update(tracker.metrics())
                sums.clear()
                logger.info("step %d: %s", global_step, " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items()))
                if args.report_to:
                    accelerator.log({k: v for k, v in logs.items() if not isinstance(v, str)}, step=global_step)

            save_checkpoint_if_due(accelerator, args, output_dir, global_step, epoch, batch_in_epoch)
            if global_step >= args.max_steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    progress.close()

    if args.rank_info:
        write_rank_info(accelerator, output_dir, unwrapped, rank_batches)

    # Final model, image processor and model card.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir)
        processor.save_pretrained(output_dir)
        write_tokenizer_card(output_dir, args, config, learning_rate)
        logger.info(f"Saved the tokenizer to {output_dir}")
    accelerator.end_training()

    if args.push_to_hub and accelerator.is_main_process:
        push_folder_or_exit(output_dir, args.hub_model_id)


def write_tokenizer_card(output_dir: Path, args: argparse.Namespace, config: ProVQConfig, learning_rate: float) -> None:
    settings = {
        "dataset": args.dataset,
        "method": config.method,
        "manifold_warmup_steps": config.effective_manifold_warmup_steps,
        "transition_steps": config.effective_transition_steps,
        "omega": config.omega,
        "codebook": f"{config.codebook_size} x {config.codebook_dim}",
        "codebook_l2_norm": config.codebook_l2_norm,
        "image_size": config.image_size,
        "token_grid": f"{config.grid_size} x {config.grid_size}",
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "learning_rate": learning_rate,
        "seed": args.seed,
    }
    write_model_card(
        output_dir,
        title=f"ProVQ tokenizer ({config.method}, {args.dataset})",
        summary=(
            "A VQ image tokenizer trained with Progressive Vector Quantization "
            "(continuous warmup, K-Means codebook init, soft-to-hard blend, then discrete training) "
            "using the provq_hf library."
        ),
        settings=settings,
        usage=(
            "import provq_hf\nfrom transformers import AutoImageProcessor, AutoModel\n\n"
            "tokenizer = AutoModel.from_pretrained(MODEL)\nprocessor = AutoImageProcessor.from_pretrained(MODEL)\n"
            "ids = tokenizer.encode(processor(images, return_tensors='pt')['pixel_values'])\n"
            "reconstructions = processor.postprocess(tokenizer.decode(ids))"
        ),
    )


if __name__ == "__main__":
    main()
