"""End-to-end runs of scripts/train_tokenizer.py on the real mnist-5k digits (tiny settings)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from provq_hf import ProVQTokenizer
from provq_hf.image_processing_provq import ProVQImageProcessor

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "train_tokenizer.py"
TINY = [
    "--dataset", "mnist-5k",
    "--batch_size", "16",
    "--manifold_warmup_steps", "5",
    "--transition_steps", "2",
    "--kmeans_num_samples", "2048",
    "--logging_steps", "2",
    "--lr_warmup_steps", "2",
]


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(args: list[str], launcher: list[str] | None = None, check: bool = True) -> subprocess.CompletedProcess:
    command = (launcher or [sys.executable]) + [str(SCRIPT)] + TINY + args
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Eight steps in one go, checkpointing every four, with a failing Hub push at the end."""
    output_dir = tmp_path_factory.mktemp("straight")
    result = _run(
        ["--output_dir", str(output_dir), "--max_steps", "8", "--checkpointing_steps", "4", "--report_to", "tensorboard",
         "--push_to_hub", "--hub_model_id", "provq-tests/never-uploaded"],
        check=False,
    )
    return output_dir, result


def test_train_script_saves_loadable_tokenizer(straight_run):
    output_dir, _ = straight_run
    model = ProVQTokenizer.from_pretrained(output_dir)
    processor = ProVQImageProcessor.from_pretrained(output_dir)
    assert model.curriculum_step == 8
    assert model.codebook_initialized
    assert processor.image_size == model.config.image_size
    assert (output_dir / "README.md").is_file()


def test_train_script_logs_curriculum_and_kmeans(straight_run):
    _, result = straight_run
    log = result.stderr + result.stdout
    assert "K-Means codebook init done" in log
    assert "phase=warmup" in log
    assert "phase=discrete" in log
    assert "codebook_utilization=" in log
    assert "dead_codes=" in log


def test_train_script_writes_tensorboard_events(straight_run):
    output_dir, _ = straight_run
    assert list((output_dir / "logs").rglob("events.out.tfevents.*"))


def test_push_to_hub_fails_fast_offline_after_saving(straight_run):
    output_dir, result = straight_run
    assert result.returncode == 1
    assert "HF_HUB_OFFLINE" in result.stderr
    assert (output_dir / "model.safetensors").is_file()


def test_checkpoints_are_complete_and_limited(straight_run):
    output_dir, _ = straight_run
    checkpoints = sorted(p.name for p in output_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"]
    assert not list(output_dir.glob(".tmp-*"))
    state = json.loads((output_dir / "checkpoint-4" / "training_state.json").read_text())
    assert state["step"] == 4


def test_resume_matches_straight_run(straight_run, tmp_path):
    """Resuming at step 4 (before the K-Means init at step 5) reproduces the straight run."""
    straight_dir, _ = straight_run
    _run(["--output_dir", str(tmp_path), "--max_steps", "8", "--checkpointing_steps", "4",
          "--resume_from_checkpoint", str(straight_dir / "checkpoint-4")])
    straight = load_file(straight_dir / "model.safetensors")
    resumed = load_file(tmp_path / "model.safetensors")
    assert int(resumed["quantizer.curriculum_step"]) == int(straight["quantizer.curriculum_step"]) == 8
    torch.testing.assert_close(resumed["quantizer.codebook.weight"], straight["quantizer.codebook.weight"], rtol=1e-5, atol=1e-6)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)


def test_resume_rejects_missing_checkpoint(tmp_path):
    result = _run(["--output_dir", str(tmp_path), "--max_steps", "2",
                   "--resume_from_checkpoint", str(tmp_path / "checkpoint-999")], check=False)
    assert result.returncode != 0
    assert "checkpoint-999" in result.stderr
    assert "not found" in result.stderr


def test_two_process_torchrun_trains_in_sync(tmp_path):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                "--master_port", str(_free_port())]
    _run(["--output_dir", str(tmp_path), "--max_steps", "6", "--checkpointing_steps", "0", "--rank_info"],
         launcher=launcher)
    ranks = [json.loads((tmp_path / "rank_info" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [info["num_processes"] for info in ranks] == [2, 2]
    assert [info["process_index"] for info in ranks] == [0, 1]
    assert ranks[0]["data_seen"][0]["labels"] != ranks[1]["data_seen"][0]["labels"]
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    assert ProVQTokenizer.from_pretrained(tmp_path).codebook_initialized
