"""Pieces of the tokenizer training loop that are worth testing on their own."""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable

import torch
import torch.nn as nn
from accelerate import Accelerator

from .checkpointing import load_checkpoint, resolve_resume_checkpoint, save_checkpoint



def make_accelerator(**kwargs) -> Accelerator:
    """Create an Accelerator that runs one process per `torchrun` worker on CPU-only machines too.

    Without a GPU, a plain `Accelerator()` started by torchrun reports a single process
    (`DistributedType.NO`); asking for `cpu=True` turns it into a real gloo process group.
    """
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        kwargs.setdefault("cpu", True)
    return Accelerator(**kwargs)


@torch.no_grad()
def collect_latents(model: nn.Module, batches: Iterable[dict], max_latents: int) -> torch.Tensor:
    """Encode batches until `max_latents` latent vectors `[N, D]` are collected (this process only)."""
    collected, count = [], 0
    for batch in batches:
        latents = model.encode_latents(batch["pixel_values"])
        flat = latents.reshape(-1, latents.shape[-1])
        collected.append(flat)
        count += flat.shape[0]
        if count >= max_latents:
            break
    if not collected:
        raise ValueError("No batches to collect latents from; the training split is empty.")
    return torch.cat(collected)[:max_latents]


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into a decayed group (matrices and conv kernels) and an undecayed one (the rest)."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if not parameter.requires_grad:
            continue
        (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def batches_per_epoch(num_examples: int, batch_size: int, num_processes: int) -> int:
    """Batches each process receives per epoch when a prepared dataloader shards `num_examples` examples."""
    return math.ceil(num_examples / (batch_size * num_processes))


def state_dict_sha256(model: nn.Module) -> str:
    """Hash every parameter and buffer (names, dtypes and bytes), to compare models across processes."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def write_rank_info(accelerator: Accelerator, output_dir: str | os.PathLike, model: nn.Module, data_seen: list) -> Path:
    """Write OUTPUT_DIR/rank_info/rank<i>.json: process count, a sample of the data this process saw and a
    hash of its final weights, so a multi-process test can check that ranks differ in data and agree in weights."""
    info_dir = Path(output_dir) / "rank_info"
    info_dir.mkdir(parents=True, exist_ok=True)
    info = {
        "process_index": accelerator.process_index,
        "num_processes": accelerator.num_processes,
        "data_seen": data_seen,
        "state_sha256": state_dict_sha256(model),
    }
    path = info_dir / f"rank{accelerator.process_index}.json"
    path.write_text(json.dumps(info))
    return path


def start_or_resume(accelerator: Accelerator, args, output_dir: Path, tracker_name: str) -> tuple[int, int, int]:
    """Restore `args.resume_from_checkpoint` if any, save training_args.json and start the trackers.

    Returns `(optimizer step, epoch, batches already taken in that epoch)`, all 0 for a fresh run.
    """
    global_step, epoch, batch_in_epoch = 0, 0, 0
    checkpoint = resolve_resume_checkpoint(args.resume_from_checkpoint, output_dir)
    if checkpoint is not None:
        state = load_checkpoint(accelerator, checkpoint)
        global_step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "training_args.json").write_text(json.dumps(vars(args), indent=2))
    if args.report_to:
        accelerator.init_trackers(tracker_name, config={k: v for k, v in vars(args).items() if v is not None})
    return global_step, epoch, batch_in_epoch


def save_checkpoint_if_due(
    accelerator: Accelerator, args, output_dir: Path, global_step: int, epoch: int, batch_in_epoch: int
) -> None:
    """Save a resumable checkpoint every `args.checkpointing_steps` optimizer steps (0 disables)."""
    if args.checkpointing_steps and global_step % args.checkpointing_steps == 0:
        save_checkpoint(
            accelerator, output_dir, global_step,
            extra_state={"epoch": epoch, "batch_in_epoch": batch_in_epoch},
            total_limit=args.checkpoints_total_limit,
        )
