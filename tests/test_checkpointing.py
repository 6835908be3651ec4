"""Atomic checkpoints and resume resolution, with a real Accelerator, optimizer and model."""

from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator

from provq_hf.checkpointing import (
    list_checkpoints,
    load_checkpoint,
    resolve_resume_checkpoint,
    save_checkpoint,
)


@pytest.fixture
def prepared():
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.randn(2, 4)).sum().backward()
    optimizer.step()
    return accelerator, model, optimizer


def test_save_checkpoint_writes_complete_folder(prepared, tmp_path):
    accelerator, _, _ = prepared
    path = save_checkpoint(accelerator, tmp_path, 3, extra_state={"epoch": 1})
    assert path == tmp_path / "checkpoint-3"
    assert list_checkpoints(tmp_path) == [path]
    assert not list(tmp_path.glob(".tmp-*"))
    assert not list(tmp_path.glob(".stale-*"))


def test_save_checkpoint_replaces_same_step(prepared, tmp_path):
    accelerator, model, _ = prepared
    save_checkpoint(accelerator, tmp_path, 3)
    with torch.no_grad():
        model.weight.fill_(0.5)
    save_checkpoint(accelerator, tmp_path, 3)
    with torch.no_grad():
        model.weight.fill_(0.0)
    load_checkpoint(accelerator, tmp_path / "checkpoint-3")
    assert torch.all(model.weight == 0.5)


def test_total_limit_keeps_newest(prepared, tmp_path):
    accelerator, _, _ = prepared
    for step in (1, 2, 3):
        save_checkpoint(accelerator, tmp_path, step, total_limit=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-3"]


def test_load_checkpoint_restores_state(prepared, tmp_path):
    accelerator, model, _ = prepared
    saved = model.weight.detach().clone()
    save_checkpoint(accelerator, tmp_path, 5, extra_state={"epoch": 2})
    with torch.no_grad():
        model.weight.add_(1.0)
    state = load_checkpoint(accelerator, tmp_path / "checkpoint-5")
    assert state == {"step": 5, "epoch": 2}
    assert torch.equal(model.weight, saved)


def test_fresh_run_rejects_folder_with_checkpoints(prepared, tmp_path):
    accelerator, _, _ = prepared
    save_checkpoint(accelerator, tmp_path, 7)
    with pytest.raises(ValueError, match="checkpoint-7.*--resume_from_checkpoint latest"):
        resolve_resume_checkpoint(None, tmp_path)


def test_latest_ignores_incomplete_folders(prepared, tmp_path):
    accelerator, _, _ = prepared
    save_checkpoint(accelerator, tmp_path, 2)
    (tmp_path / "checkpoint-9").mkdir()  # no training_state.json: a crash mid-copy by another tool
    (tmp_path / ".tmp-checkpoint-10").mkdir()
    assert resolve_resume_checkpoint("latest", tmp_path) == tmp_path / "checkpoint-2"


def test_latest_without_checkpoints_starts_fresh(tmp_path):
    assert resolve_resume_checkpoint("latest", tmp_path) is None


def test_missing_checkpoint_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint-4"):
        resolve_resume_checkpoint(str(tmp_path / "checkpoint-4"), tmp_path)


@pytest.mark.parametrize("file_name", ["optimizer.bin", "model.safetensors"])
def test_corrupted_checkpoint_raises_clear_error(prepared, tmp_path, file_name):
    accelerator, _, _ = prepared
    path = save_checkpoint(accelerator, tmp_path, 1)
    (path / file_name).write_bytes(b"\x80\x02garbage" * 50)
    with pytest.raises(ValueError, match="could not be loaded"):
        load_checkpoint(accelerator, path)
