"""Smoke run of scripts/run_pipeline.py on mnist-5k: every stage through its script, with tiny settings.

The numbers are meaningless at 6 tokenizer and 4 generator steps. The test checks that the stages hand
their files to each other, that the summary collects every metric, and that a rerun skips every stage.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "run_pipeline.py"
STAGES = ("train tokenizer", "evaluate tokenizer", "extract codes", "train generator", "sample and evaluate generator")
TOKENIZER_METRICS = ("psnr", "ssim", "rfid", "codebook_utilization", "perplexity", "code_spread")
GENERATOR_METRICS = ("gfid", "kid", "inception_score", "precision", "recall")
NUM_SAMPLES = 40


def _run_pipeline(output_dir: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable, str(SCRIPT), "--output_dir", str(output_dir),
        "--tokenizer_steps", "6", "--manifold_warmup_steps", "2", "--transition_steps", "2",
        "--generator_steps", "4", "--generator_preset", "GPT-tiny", "--num_samples", str(NUM_SAMPLES),
        "--max_examples", "200",
        "--extra_tokenizer_args", "--kmeans_num_samples 1024 --batch_size 16 --lr_warmup_steps 2",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def _describe(result: subprocess.CompletedProcess) -> str:
    return f"exit code {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-6000:]}"


@dataclass
class PipelineRuns:
    output_dir: Path
    first: subprocess.CompletedProcess
    first_summary: dict
    first_table: str
    second: subprocess.CompletedProcess


@pytest.fixture(scope="module")
def pipeline_runs(tmp_path_factory, provq_cache) -> PipelineRuns:
    """Two runs of the same command into one folder, with the summary the first run wrote."""
    output_dir = tmp_path_factory.mktemp("pipeline")
    first = _run_pipeline(output_dir)
    assert first.returncode == 0, _describe(first)
    first_summary = json.loads((output_dir / "summary.json").read_text())
    first_table = (output_dir / "summary.md").read_text()
    second = _run_pipeline(output_dir)
    return PipelineRuns(output_dir, first, first_summary, first_table, second)


@pytest.fixture(scope="module")
def summary(pipeline_runs) -> dict:
    return pipeline_runs.first_summary


@pytest.mark.parametrize("key", TOKENIZER_METRICS)
def test_pipeline_summary_has_tokenizer_metric(summary, key):
    assert key in summary["tokenizer"]
    assert math.isfinite(summary["tokenizer"][key])


@pytest.mark.parametrize("key", GENERATOR_METRICS)
def test_pipeline_summary_has_generator_metric(summary, key):
    assert key in summary["generator"]
    assert math.isfinite(summary["generator"][key])


@pytest.mark.parametrize("key", TOKENIZER_METRICS + GENERATOR_METRICS)
def test_pipeline_summary_table_lists_metric(pipeline_runs, key):
    assert f"| {key} " in pipeline_runs.first_table


def test_pipeline_evaluations_share_feature_extractor(summary):
    tokenizer_extractor = summary["tokenizer"]["feature_extractor"]["weights_sha256"]
    assert summary["generator"]["feature_extractor"]["weights_sha256"] == tokenizer_extractor


def test_pipeline_generator_scored_requested_samples(summary):
    assert summary["generator"]["num_generated"] == NUM_SAMPLES
    assert summary["generator"]["reference"].startswith("mnist-5k/train")


def test_pipeline_respects_max_examples(pipeline_runs, summary):
    output_dir = pipeline_runs.output_dir
    codes_config = json.loads((output_dir / "codes" / "codes_config.json").read_text())
    assert summary["tokenizer"]["num_images"] == 200
    assert codes_config["splits"] == {"train": 200}


def test_pipeline_writes_sample_grid(pipeline_runs):
    output_dir = pipeline_runs.output_dir
    path = output_dir / "generator_eval" / "grid.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"


def test_pipeline_writes_samples_with_metadata(pipeline_runs):
    output_dir = pipeline_runs.output_dir
    samples_dir = output_dir / "generator_eval" / "samples"
    records = (samples_dir / "metadata.jsonl").read_text().splitlines()
    assert len(records) == NUM_SAMPLES
    assert len(list(samples_dir.glob("*.png"))) == NUM_SAMPLES


def test_pipeline_rerun_succeeds(pipeline_runs):
    second = pipeline_runs.second
    assert second.returncode == 0, _describe(second)


@pytest.mark.parametrize("stage", STAGES)
def test_pipeline_rerun_skips_stage(pipeline_runs, stage):
    second = pipeline_runs.second
    assert f"== {stage}: already done" in second.stdout


def test_pipeline_rerun_launches_no_script(pipeline_runs):
    second = pipeline_runs.second
    assert "python scripts/" not in second.stdout


def test_pipeline_first_run_times_every_stage(summary):
    stage_seconds = summary["stage_seconds"]
    assert list(stage_seconds) == ["train_tokenizer", "evaluate_tokenizer", "extract_codes", "train_generator", "evaluate_generator"]
    assert all(seconds > 0 for seconds in stage_seconds.values())


def test_pipeline_rerun_keeps_summary_metrics(pipeline_runs, summary):
    rerun_summary = json.loads((pipeline_runs.output_dir / "summary.json").read_text())
    assert rerun_summary["tokenizer"] == summary["tokenizer"]
    assert rerun_summary["generator"] == summary["generator"]


def test_pipeline_rerun_marks_stages_skipped(pipeline_runs):
    rerun_summary = json.loads((pipeline_runs.output_dir / "summary.json").read_text())
    assert set(rerun_summary["stage_seconds"].values()) == {None}
    assert "skipped (already done)" in (pipeline_runs.output_dir / "summary.md").read_text()
