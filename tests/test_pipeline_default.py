"""The README's main job at its default settings (slow: about 15 minutes on 2 CPU cores).

Run with `make test-slow`. It checks the generation acceptance bar: the mnist-5k domain classifier
recognizes the requested digit in at least half of the generated samples (chance is 10%).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_pipeline_generates_recognizable_digits(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "run_pipeline.py"), "--output_dir", str(tmp_path)],
        capture_output=True, text=True, timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["generator"]["class_accuracy"] >= 0.5
    assert summary["tokenizer"]["codebook_utilization"] > 0.5
    assert (tmp_path / "generator_eval" / "grid.png").is_file()
