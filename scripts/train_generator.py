"""Train a LlamaGen-style class-conditional generator on a token dataset with Accelerate.

One process:      python scripts/train_generator.py --codes outputs/codes --preset GPT-small --output_dir outputs/generator
Several GPUs:     accelerate launch scripts/train_generator.py --codes ... --preset GPT-B --mixed_precision bf16
Two CPU workers:  torchrun --nproc_per_node 2 scripts/train_generator.py ...

The token dataset comes from `scripts/extract_codes.py`; its `codes_config.json` sets the generator's
codebook size, grid and number of classes. The output directory receives the final model (config.json,
model.safetensors, loadable with `from_pretrained`), a model card (README.md), the training arguments and
`checkpoint-<step>` folders. Rerunning the same command with `--resume_from_checkpoint latest` continues
where it stopped, with the same data order.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate.logging import get_logger
from accelerate.utils import DataLoaderConfiguration, set_seed
from huggingface_hub import constants as hub_constants
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import get_scheduler

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provq_hf.cli import HelpFormatter  # noqa: E402

from generation import PRESET_LEARNING_RATES, PRESETS, LlamaGenConfig, LlamaGenForClassConditionalGeneration  # noqa: E402
from generation.model_card import write_generator_model_card  # noqa: E402
from generation.token_data import TokenDatasetConfig, load_token_dataset  # noqa: E402
from provq_hf.hub import HubUploadError, push_folder_or_exit  # noqa: E402
from provq_hf.training import (  # noqa: E402
    batches_per_epoch,
    make_accelerator,
    optimizer_param_groups,
    save_checkpoint_if_due,
    start_or_resume,
    write_rank_info,
)

logger = get_logger("train_generator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    data.add_argument("--codes", required=True, help="Token dataset folder written by scripts/extract_codes.py.")
    data.add_argument("--num_workers", type=int, default=0, help="DataLoader worker processes.")

    model = parser.add_argument_group("model")
    model.add_argument("--preset", default="GPT-small", choices=sorted(PRESETS), help="Architecture preset.")
    model.add_argument(
        "--generator",
        default=None,
        help="Start from this saved generator instead of a fresh --preset model (its codebook size and grid "
        "must match the token data).",
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--max_steps", type=int, default=2000, help="Optimizer steps to train for.")
    optim.add_argument("--batch_size", type=int, default=64, help="Token sequences per process per micro-batch.")
    optim.add_argument("--gradient_accumulation_steps", type=int, default=1)
    optim.add_argument(
        "--learning_rate",
        type=float,
        default=None,
        help="Peak AdamW learning rate. Default: the preset's (1e-4 for GPT-B and GPT-L as LlamaGen, 1e-3 for "
        "GPT-small and GPT-tiny).",
    )
    optim.add_argument("--lr_scheduler", default="constant_with_warmup", help="Any transformers scheduler name (constant_with_warmup, cosine, linear, ...).")
    optim.add_argument("--lr_warmup_steps", type=int, default=0, help="Learning-rate warmup in optimizer steps.")
    optim.add_argument("--weight_decay", type=float, default=0.05, help="AdamW weight decay on matrices (parameters with 2 or more dimensions).")
    optim.add_argument("--adam_beta1", type=float, default=0.9)
    optim.add_argument("--adam_beta2", type=float, default=0.95)
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    optim.add_argument("--mixed_precision", choices=["no", "fp16", "bf16"], default="no")
    optim.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--output_dir", required=True)
    run.add_argument("--logging_steps", type=int, default=50, help="Log the mean loss every N optimizer steps.")
    run.add_argument("--checkpointing_steps", type=int, default=500, help="Save a resumable checkpoint every N optimizer steps (0 disables).")
    run.add_argument("--checkpoints_total_limit", type=int, default=2, help="Keep at most this many checkpoints.")
    run.add_argument("--resume_from_checkpoint", default=None, help="A checkpoint folder, or 'latest' for the newest in --output_dir.")
    run.add_argument("--report_to", default=None, help="Accelerate tracker, for example 'tensorboard'.")
    run.add_argument(
        "--rank_info",
        action="store_true",
        help="Write per-process diagnostics (process count, token dataset rows seen, final weight checksum) to "
        "OUTPUT_DIR/rank_info/.",
    )
    run.add_argument("--push_to_hub", action="store_true", help="Upload the final model to the Hub (token from HF_TOKEN or `hf auth login`).")
    run.add_argument("--hub_model_id", default=None, help="Hub repo id for --push_to_hub, for example user/llamagen-mnist.")
    args = parser.parse_args(argv)

    if args.push_to_hub and not args.hub_model_id:
        parser.error("--push_to_hub needs --hub_model_id (for example --hub_model_id user/llamagen-mnist).")
    for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(args, name)}.")
    if args.learning_rate is not None and args.learning_rate <= 0:
        parser.error(f"--learning_rate must be positive, got {args.learning_rate}.")
    return args


def build_model(args: argparse.Namespace, codes_config: TokenDatasetConfig) -> LlamaGenForClassConditionalGeneration:
    """Load `--generator`, or build a fresh `--preset` model sized for the token data."""
    if args.generator is not None:
        return LlamaGenForClassConditionalGeneration.from_pretrained(args.generator)
    class_names = {}
    if codes_config.class_names is not None:
        class_names = {"id2label": dict(enumerate(codes_config.class_names))}
    config = LlamaGenConfig.from_preset(
        args.preset,
        codebook_size=codes_config.codebook_size,
        grid_size=codes_config.grid_size,
        num_classes=codes_config.num_classes,
        **class_names,
    )
    return LlamaGenForClassConditionalGeneration(config)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    output_dir = Path(args.output_dir)
    if args.push_to_hub and hub_constants.HF_HUB_OFFLINE:
        raise HubUploadError(
            f"--push_to_hub was given but HF_HUB_OFFLINE is set, so the upload to {args.hub_model_id!r} would fail "
            "after training. Unset HF_HUB_OFFLINE, or drop --push_to_hub and upload later with scripts/push_to_hub.py."
        )
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
    codes_config = TokenDatasetConfig.load(args.codes)
    model = build_model(args, codes_config)
    config = model.config
    train_set, _ = load_token_dataset(args.codes, split="train", model_config=config)
    columns = ["input_ids", "labels"]
    if args.rank_info:
        train_set = train_set.add_column("row_index", np.arange(len(train_set)))
        columns.append("row_index")
    train_set = train_set.with_format("torch", columns=columns)
    preset = args.preset if args.generator is None else None
    learning_rate = args.learning_rate
    if learning_rate is None:
        learning_rate = PRESET_LEARNING_RATES.get(preset, 1e-4)
    logger.info(
        f"Training {args.generator or args.preset} ({model.num_parameters() / 1e6:.2f}M parameters) on {args.codes} "
        f"({len(train_set)} sequences of {config.num_image_tokens} tokens, codebook {config.codebook_size}, "
        f"{config.num_classes} classes), learning rate {learning_rate}"
    )

    generator = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(
        train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, num_workers=args.num_workers,
        generator=generator,
    )
    optimizer = torch.optim.AdamW(
        optimizer_param_groups(model, args.weight_decay), lr=learning_rate, betas=(args.adam_beta1, args.adam_beta2)
    )
    # The prepared scheduler steps once per process for each optimizer step, hence the scaling.
    scheduler = get_scheduler(
        args.lr_scheduler, optimizer, num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=args.max_steps * accelerator.num_processes,
    )
    model, optimizer, train_loader, scheduler = accelerator.prepare(model, optimizer, train_loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    global_step, epoch, batch_in_epoch = start_or_resume(accelerator, args, output_dir, "llamagen_generator")

    steps_per_epoch = batches_per_epoch(len(train_set), args.batch_size, accelerator.num_processes) // args.gradient_accumulation_steps
    if len(train_set) < args.batch_size * accelerator.num_processes or steps_per_epoch < 1:
        raise ValueError(
            f"The training split has {len(train_set)} sequences, fewer than one optimizer step needs "
            f"({args.batch_size} x {args.gradient_accumulation_steps} x {accelerator.num_processes} processes); lower --batch_size."
        )
    progress = tqdm(total=args.max_steps, initial=global_step, desc="train", disable=not accelerator.is_local_main_process)
    loss_sum, loss_count = 0.0, 0
    rows_seen: list[list[int]] = []

    model.train()
    while global_step < args.max_steps:
        train_loader.set_epoch(epoch)
        loader = accelerator.skip_first_batches(train_loader, batch_in_epoch) if batch_in_epoch else train_loader
        for batch in loader:
            codes = batch["input_ids"].long()  # [B, grid_size**2], raster order
            with accelerator.accumulate(model):
                # Position t predicts token t: feed the class token and all but the last image token.
                output = model(input_ids=codes[:, :-1], class_labels=batch["labels"].long(), labels=codes)
                accelerator.backward(output.loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

            batch_in_epoch += 1
            loss_sum += float(output.loss.detach())
            loss_count += 1
            if args.rank_info:
                rows_seen.append(batch["row_index"].tolist())
            if not accelerator.sync_gradients:
                continue

            global_step += 1
            progress.update(1)
            progress.set_postfix(loss=f"{float(output.loss):.4f}")

            if global_step % args.logging_steps == 0 or global_step == args.max_steps:
                mean_loss = accelerator.reduce(torch.tensor(loss_sum / loss_count, device=accelerator.device), "mean")
                logs = {"loss": float(mean_loss), "lr": scheduler.get_last_lr()[0], "epoch": epoch}
                loss_sum, loss_count = 0.0, 0
                logger.info(f"step {global_step}: loss={logs['loss']:.4f} lr={logs['lr']:.3g} epoch={epoch}")
                if args.report_to:
                    accelerator.log(logs, step=global_step)

            save_checkpoint_if_due(accelerator, args, output_dir, global_step, epoch, batch_in_epoch)
            if global_step >= args.max_steps:
                break
        else:
            epoch, batch_in_epoch = epoch + 1, 0
    progress.close()

    if args.rank_info:
        write_rank_info(accelerator, output_dir, unwrapped, rows_seen)

    # Final model and model card.
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped.save_pretrained(output_dir)
        training_settings = {
            "token_data": args.codes,
            "tokenizer": codes_config.tokenizer,
            "dataset": codes_config.dataset,
            "preset": preset or f"from {args.generator}",
            "max_steps": args.max_steps,
            "batch_size": args.batch_size * accelerator.num_processes * args.gradient_accumulation_steps,
            "learning_rate": learning_rate,
            "weight_decay": args.weight_decay,
            "seed": args.seed,
        }
        write_generator_model_card(
            output_dir, unwrapped, training_settings, tokenizer=codes_config.tokenizer, repo_id=args.hub_model_id
        )
        logger.info(f"Saved the generator to {output_dir}")
    accelerator.end_training()

    if args.push_to_hub and accelerator.is_main_process:
        push_folder_or_exit(output_dir, args.hub_model_id)


if __name__ == "__main__":
    main()
