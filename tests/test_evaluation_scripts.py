"""End-to-end runs of evaluate_tokenizer.py, evaluate_generator.py and push_to_hub.py on real mnist-5k data.

One tiny tokenizer (6 optimizer steps) is trained once for the module. The mnist-5k domain classifier is
trained into the session's PROVQ_CACHE by the first script that needs it (about 30 s on 2 busy CPU cores)
and reused by every later test in the session.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from provq_hf import ProVQTokenizer
from provq_hf.data import load_image_dataset, load_image_tensors
from provq_hf.evaluation import reconstruct
from provq_hf.hub import update_model_card_metrics
from provq_hf.image_processing_provq import ProVQImageProcessor

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
TOKENIZER_METRICS = ("psnr", "ssim", "rfid", "codebook_utilization", "perplexity", "code_spread")
GENERATOR_METRICS = (
    "gfid", "kid", "kid_std", "inception_score", "inception_score_std", "precision", "recall", "class_accuracy"
)
NUM_EVAL_IMAGES = 200
GRID_COLUMNS = 16  # evaluation.save_reconstruction_grid shows the first 16 images
GRID_PADDING = 2
IMAGE_SIZE = 32  # mnist-5k digits padded to 32x32


def _env() -> dict:
    # PROVQ_CACHE comes from conftest's session fixture, so the scripts share the session's classifier.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


def _run(script: str, args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPTS / script), *args]
    result = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _file_hashes(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.iterdir())
        if path.name not in skip
    }


def _grid_tile(grid: torch.Tensor, row: int, column: int) -> torch.Tensor:
    """Return the first channel of one tile of a torchvision `make_grid` image, as `[H, W]` uint8 values."""
    step = IMAGE_SIZE + GRID_PADDING
    top, left = GRID_PADDING + row * step, GRID_PADDING + column * step
    return grid[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE, 0]


def _as_png_pixels(images: torch.Tensor) -> torch.Tensor:
    """Pixels in [-1, 1] as `torchvision.utils.save_image` writes them: `[N, H, W]` values 0..255."""
    return ((images[:, 0].clamp(-1, 1) + 1) / 2 * 255 + 0.5).clamp(0, 255).floor()


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory, provq_cache) -> Path:
    output_dir = tmp_path_factory.mktemp("tokenizer")
    _run(
        "train_tokenizer.py",
        ["--dataset", "mnist-5k", "--output_dir", str(output_dir), "--max_steps", "6", "--batch_size", "16",
         "--manifold_warmup_steps", "2", "--transition_steps", "2", "--kmeans_num_samples", "1024",
         "--lr_warmup_steps", "2", "--checkpointing_steps", "0"],
    )
    return output_dir


@pytest.fixture(scope="module")
def tokenizer_eval(tiny_tokenizer, tmp_path_factory) -> Path:
    output_dir = tmp_path_factory.mktemp("tokenizer_eval")
    _run(
        "evaluate_tokenizer.py",
        ["--tokenizer", str(tiny_tokenizer), "--dataset", "mnist-5k", "--output_dir", str(output_dir),
         "--max_examples", str(NUM_EVAL_IMAGES)],
    )
    return output_dir


@pytest.fixture(scope="module")
def tokenizer_metrics(tokenizer_eval) -> dict:
    return json.loads((tokenizer_eval / "metrics.json").read_text())


@pytest.fixture(scope="module")
def real_samples_dir(tmp_path_factory, provq_cache) -> Path:
    """The 1,000 real mnist-5k test digits as PNG files with a metadata.jsonl of their true labels."""
    samples_dir = tmp_path_factory.mktemp("real_samples")
    records = []
    for index, example in enumerate(load_image_dataset("mnist-5k", "test")):
        file_name = f"{index:05d}.png"
        example["image"].save(samples_dir / file_name)
        records.append(json.dumps({"file_name": file_name, "label": example["label"]}))
    (samples_dir / "metadata.jsonl").write_text("\n".join(records) + "\n")
    return samples_dir


@pytest.fixture(scope="module")
def generator_metrics(real_samples_dir, tmp_path_factory, tokenizer_eval) -> dict:
    # tokenizer_eval first, so the domain classifier is already cached when this run starts.
    output_dir = tmp_path_factory.mktemp("generator_eval")
    _run(
        "evaluate_generator.py",
        ["--samples", str(real_samples_dir), "--dataset", "mnist-5k", "--output_dir", str(output_dir)],
    )
    return json.loads((output_dir / "metrics.json").read_text())


# evaluate_tokenizer.py


@pytest.mark.parametrize("key", TOKENIZER_METRICS)
def test_evaluate_tokenizer_metric_is_finite(tokenizer_metrics, key):
    assert key in tokenizer_metrics
    assert isinstance(tokenizer_metrics[key], float)
    assert math.isfinite(tokenizer_metrics[key])


def test_evaluate_tokenizer_records_extractor_and_reference(tokenizer_metrics):
    extractor = tokenizer_metrics["feature_extractor"]
    assert extractor["name"].startswith("provq-domain-classifier-mnist-5k-")
    assert extractor["kind"] == "domain_classifier"
    assert extractor["dataset"] == "mnist-5k"
    assert len(extractor["weights_sha256"]) == 64
    assert extractor["test_accuracy"] >= 0.95
    assert tokenizer_metrics["split"] == "test"
    assert "mnist-5k/test" in tokenizer_metrics["rfid_reference"]


def test_evaluate_tokenizer_respects_max_examples(tokenizer_metrics):
    assert tokenizer_metrics["num_images"] == NUM_EVAL_IMAGES
    assert tokenizer_metrics["curriculum_step"] == 6


def test_evaluate_tokenizer_metrics_in_valid_ranges(tokenizer_metrics):
    assert 0.0 < tokenizer_metrics["codebook_utilization"] <= 1.0
    assert 1.0 <= tokenizer_metrics["perplexity"] <= tokenizer_metrics["codebook_size"]
    assert -1.0 <= tokenizer_metrics["ssim"] <= 1.0
    assert tokenizer_metrics["rfid"] >= 0.0
    assert tokenizer_metrics["code_spread"] > 0.0


def test_evaluate_tokenizer_reconstruction_grid_layout(tokenizer_eval):
    path = tokenizer_eval / "reconstructions.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        step = IMAGE_SIZE + GRID_PADDING
        assert image.size == (GRID_COLUMNS * step + GRID_PADDING, 2 * step + GRID_PADDING)


def test_evaluate_tokenizer_grid_row_order(tokenizer_eval, tiny_tokenizer):
    processor = ProVQImageProcessor.from_pretrained(tiny_tokenizer)
    originals, _ = load_image_tensors("mnist-5k", "test", processor, max_examples=NUM_EVAL_IMAGES)
    model = ProVQTokenizer.from_pretrained(tiny_tokenizer)
    reconstructions, _ = reconstruct(model, originals)
    expected_top = _as_png_pixels(originals[:GRID_COLUMNS])
    expected_bottom = _as_png_pixels(reconstructions[:GRID_COLUMNS])
    with Image.open(tokenizer_eval / "reconstructions.png") as image:
        grid = torch.from_numpy(np.array(image.convert("RGB"))).float()

    top = torch.stack([_grid_tile(grid, 0, column) for column in range(GRID_COLUMNS)])
    bottom = torch.stack([_grid_tile(grid, 1, column) for column in range(GRID_COLUMNS)])

    assert (top - expected_top).abs().max() <= 1
    assert (bottom - expected_bottom).abs().max() <= 1
    assert (expected_top - expected_bottom).abs().max() > 1  # the rows are distinguishable at all


def test_evaluate_tokenizer_usage_histogram_is_png(tokenizer_eval):
    path = tokenizer_eval / "codebook_usage.png"
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (700, 300)  # 7 x 3 inches at 100 dpi


def test_evaluate_tokenizer_missing_folder_raises(tmp_path):
    script = _load_script("evaluate_tokenizer")
    missing = tmp_path / "no_tokenizer_here"

    with pytest.raises(FileNotFoundError, match="config.json is missing") as error:
        script.main(["--tokenizer", str(missing), "--output_dir", str(tmp_path / "eval")])

    assert str(missing) in str(error.value)
    assert not (tmp_path / "eval").exists()


# evaluate_generator.py --samples


@pytest.mark.parametrize("key", GENERATOR_METRICS)
def test_evaluate_generator_metric_is_finite(generator_metrics, key):
    assert key in generator_metrics
    assert isinstance(generator_metrics[key], float)
    assert math.isfinite(generator_metrics[key])


def test_evaluate_generator_real_digits_score_high(generator_metrics):
    assert generator_metrics["precision"] > 0.7
    assert generator_metrics["recall"] > 0.7
    assert generator_metrics["class_accuracy"] >= 0.9
    assert generator_metrics["inception_score"] > 8.0  # 10 balanced, confidently classified classes


def test_evaluate_generator_records_extractor_and_reference(generator_metrics):
    extractor = generator_metrics["feature_extractor"]
    assert extractor["name"].startswith("provq-domain-classifier-mnist-5k-")
    assert extractor["dataset"] == "mnist-5k"
    assert generator_metrics["reference"].startswith("mnist-5k/train")
    assert generator_metrics["num_generated"] == 1000


def test_evaluate_generator_samples_omit_sampling_flags(generator_metrics):
    settings = generator_metrics["settings"]
    assert settings["samples"] == generator_metrics["samples"]
    assert "cfg_scale" not in settings
    assert "num_samples" not in settings


def test_evaluate_generator_shares_tokenizer_extractor(generator_metrics, tokenizer_metrics):
    generator_extractor = generator_metrics["feature_extractor"]["weights_sha256"]
    assert generator_extractor == tokenizer_metrics["feature_extractor"]["weights_sha256"]


# push_to_hub.py


@pytest.fixture(scope="module")
def offline_push(tiny_tokenizer, tokenizer_eval, tmp_path_factory):
    """A copy of the tokenizer, its file hashes before the push, and the result of an offline push."""
    model_dir = tmp_path_factory.mktemp("push") / "tokenizer"
    shutil.copytree(tiny_tokenizer, model_dir)
    hashes_before = _file_hashes(model_dir, skip=("README.md",))
    result = _run(
        "push_to_hub.py",
        ["--model_dir", str(model_dir), "--hub_model_id", "someone/x", "--metrics", str(tokenizer_eval)],
        check=False,
    )
    return model_dir, hashes_before, result


def test_push_to_hub_fails_offline(offline_push):
    _, _, result = offline_push
    assert result.returncode != 0
    assert "HF_HUB_OFFLINE" in result.stderr


def test_push_to_hub_offline_keeps_model_files(offline_push):
    model_dir, hashes_before, _ = offline_push
    assert _file_hashes(model_dir, skip=("README.md",)) == hashes_before


def test_push_to_hub_adds_metrics_to_model_card(offline_push, tokenizer_metrics):
    model_dir, _, _ = offline_push
    card = (model_dir / "README.md").read_text()
    assert card.count("## Measured metrics") == 1
    for key in TOKENIZER_METRICS:
        assert f"| `{key}` |" in card
    assert tokenizer_metrics["feature_extractor"]["name"] in card
    assert "## Evaluation protocol" in card


def test_push_to_hub_keeps_training_card_sections(offline_push):
    model_dir, _, _ = offline_push
    card = (model_dir / "README.md").read_text()
    assert "# ProVQ tokenizer (provq_cosine, mnist-5k)" in card
    assert "## Usage" in card
    assert "## Training settings" in card


def test_update_model_card_metrics_replaces_previous_section(tmp_path):
    card = tmp_path / "README.md"
    card.write_text(
        "# Model\n\n## Usage\n\n```python\n## a comment line, not a heading\n```\n\n"
        "## Measured metrics\n\n| metric | value |\n|---|---|\n| `psnr` | 1 |\n\n## Notes\n\nkept\n"
    )

    update_model_card_metrics(tmp_path, {"psnr": 25.0}, evaluation_protocol="PSNR on the test split.")
    update_model_card_metrics(tmp_path, {"psnr": 30.0}, evaluation_protocol="PSNR on the test split.")
    text = card.read_text()

    assert text.count("## Measured metrics") == 1
    assert text.count("## Evaluation protocol") == 1
    assert "| `psnr` | 30 |" in text
    assert "## a comment line, not a heading" in text
    assert "## Notes\n\nkept" in text


def test_update_model_card_metrics_missing_card_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="README.md"):
        update_model_card_metrics(tmp_path, {"psnr": 25.0})
