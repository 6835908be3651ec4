"""Atomic training checkpoints on top of `Accelerator.save_state`, shared by the training scripts.

A checkpoint is the folder `OUTPUT_DIR/checkpoint-<step>` written by `Accelerator.save_state` (model,
optimizer, scheduler, sampler and RNG states of every process) plus `training_state.json` with the
optimizer step and any script state. It is first written under a temporary name and renamed only when
complete, so a crash mid-save leaves the previous checkpoint as the latest good one.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from accelerate.logging import get_logger
from safetensors import SafetensorError

logger = get_logger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
TRAINING_STATE_NAME = "training_state.json"
_CHECKPOINT_PATTERN = re.compile(rf"^{CHECKPOINT_PREFIX}(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """List the complete checkpoints in `output_dir`, oldest step first."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = []
    for path in output_dir.iterdir():
        match = _CHECKPOINT_PATTERN.match(path.name)
        if match and (path / TRAINING_STATE_NAME).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    extra_state: dict | None = None,
    total_limit: int | None = None,
) -> Path:
    """Write `output_dir/checkpoint-<step>` atomically; every process must call this.

    `extra_state` must be JSON-serializable. With `total_limit`, older checkpoints beyond that many
    are deleted after the new one is complete.
    """
    output_dir = Path(output_dir)
    final_dir = output_dir / f"{CHECKPOINT_PREFIX}{step}"
    # One temporary name for all processes: save_state writes per-process RNG files into it.
    tmp_dir = output_dir / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
    accelerator.wait_for_everyone()

    accelerator.save_state(str(tmp_dir))
    accelerator.wait_for_everyone()

    if accelerator.is_main_process:
        state = {"step": int(step), **(extra_state or {})}
        (tmp_dir / TRAINING_STATE_NAME).write_text(json.dumps(state, indent=2))
        # An older folder of the same step is moved aside first and deleted only once the new one is in
        # place, so a crash at any point leaves one complete checkpoint of this step on disk.
        stale_dir = output_dir / f".stale-{CHECKPOINT_PREFIX}{step}"
        if final_dir.exists():
            shutil.rmtree(stale_dir, ignore_errors=True)
            os.replace(final_dir, stale_dir)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(stale_dir, ignore_errors=True)
        logger.info(f"Saved checkpoint {final_dir}")
        if total_limit is not None and total_limit > 0:
            for old in list_checkpoints(output_dir)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final_dir


def resolve_resume_checkpoint(value: str | None, output_dir: str | os.PathLike) -> Path | None:
    """Turn a `--resume_from_checkpoint` value into a checkpoint folder.

    `None` means a fresh run, which requires that `output_dir` contains no checkpoint: a fresh run would
    otherwise mix its checkpoints with an older run's, and pruning would delete the new ones. `"latest"`
    picks the newest complete checkpoint in `output_dir` and returns None when there is none, so a first
    run and a restarted run share one command line. Any other value must be a checkpoint folder written
    by `save_checkpoint`.
    """
    if value is None:
        existing = list_checkpoints(output_dir)
        if existing:
            raise ValueError(
                f"{str(output_dir)!r} already contains checkpoints of an earlier run ({existing[-1].name} is the newest). "
                "Pass --resume_from_checkpoint latest to continue it, or choose an empty --output_dir."
            )
        return None
    if value == "latest":
        checkpoints = list_checkpoints(output_dir)
        if not checkpoints:
            logger.info(f"No checkpoint in {output_dir}; starting from step 0")
            return None
        return checkpoints[-1]

    path = Path(value)
    if not path.is_dir():
        raise FileNotFoundError(
            f"Checkpoint folder {str(path)!r} not found. Pass a folder named "
            f"'{CHECKPOINT_PREFIX}<step>' inside the output directory, or 'latest'."
        )
    if not (path / TRAINING_STATE_NAME).is_file():
        raise ValueError(
            f"{str(path)!r} is not a complete checkpoint: {TRAINING_STATE_NAME} is missing. "
            f"Resume from another '{CHECKPOINT_PREFIX}<step>' folder or 'latest'."
        )
    return path


def load_checkpoint(accelerator: Accelerator, path: str | os.PathLike) -> dict:
    """Restore every state `save_checkpoint` wrote and return its `training_state.json` contents."""
    path = Path(path)
    try:
        state = json.loads((path / TRAINING_STATE_NAME).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"Checkpoint {str(path)!r} has an unreadable {TRAINING_STATE_NAME}: {error}") from error
    try:
        accelerator.load_state(str(path))
    except (OSError, RuntimeError, ValueError, KeyError, pickle.UnpicklingError, SafetensorError) as error:
        raise ValueError(
            f"Checkpoint {str(path)!r} could not be loaded ({error}). It may be corrupted or come from "
            "a different model configuration; resume from an earlier checkpoint or start afresh."
        ) from error
    logger.info(f"Resumed from {path} at step {state['step']}")
    return state
