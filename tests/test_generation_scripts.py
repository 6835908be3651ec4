"""End-to-end runs of extract_codes.py, train_generator.py and sample_generator.py on mnist-5k.

A small random ProVQ tokenizer encodes the first 96 train and test digits. It is the mnist-5k preset with
one more downsampling level, so a 4x4 token grid keeps the runs short. The generator then trains for a
few steps on these ids: in one process, resumed from a checkpoint, and in two torchrun processes.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from generation import LlamaGenConfig, LlamaGenForClassConditionalGeneration
from generation.token_data import (
    TokenDatasetConfig,
    check_token_data_compatibility,
    check_tokenizer_compatibility,
    load_token_dataset,
)
from provq_hf import ProVQConfig, ProVQTokenizer
from provq_hf.data import load_image_dataset
from provq_hf.hub import HubUploadError
from provq_hf.image_processing_provq import ProVQImageProcessor

REPO_ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = REPO_ROOT / "scripts"
NUM_EXAMPLES = 96
GRID = 4
# 96 sequences in batches of 32 make 3 optimizer steps per epoch, so 5 steps cross an epoch boundary.
TRAIN_ARGS = ["--preset", "GPT-tiny", "--batch_size", "32", "--logging_steps", "1", "--seed", "3"]


def script_env() -> dict:
    # One thread per process: these models are far too small to gain from more, and on a busy machine
    # OpenMP threads that wait for each other make a step many times slower.
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def run_script(name: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(SCRIPTS / name), *map(str, args)]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{name} failed:\n{result.stderr[-5000:]}"
    return result


def load_script(name: str):
    """Import a script as a module, to call its argument parsing without starting a run."""
    spec = importlib.util.spec_from_file_location(f"script_{Path(name).stem}", SCRIPTS / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    torch.manual_seed(0)
    config = ProVQConfig.from_preset("mnist-5k", ch_mult=[1, 2, 2, 2])  # 8x downsampling: 32 px -> 4x4 grid
    assert config.grid_size == GRID
    ProVQTokenizer(config).save_pretrained(path)
    ProVQImageProcessor.for_dataset("mnist-5k").save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def codes_dir(tokenizer_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("codes")
    run_script(
        "extract_codes.py", "--tokenizer", tokenizer_dir, "--dataset", "mnist-5k", "--output_dir", path,
        "--splits", "train", "test", "--max_samples", NUM_EXAMPLES, "--batch_size", 40,
    )
    return path


@pytest.fixture(scope="module")
def trained_generator(codes_dir, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("generator")
    run_script("train_generator.py", "--codes", codes_dir, "--output_dir", path, "--max_steps", 5,
               "--checkpointing_steps", 4, *TRAIN_ARGS)
    return path


def test_extract_codes_writes_metadata(codes_dir, tokenizer_dir):
    codes_config = TokenDatasetConfig.load(codes_dir)
    assert codes_config.tokenizer == str(tokenizer_dir.resolve())
    assert codes_config.dataset == "mnist-5k"
    assert (codes_config.codebook_size, codes_config.grid_size, codes_config.num_classes) == (512, GRID, 10)
    assert codes_config.splits == {"train": NUM_EXAMPLES, "test": NUM_EXAMPLES}
    assert codes_config.flip is False


def test_extract_codes_ids_match_tokenizer(codes_dir, tokenizer_dir):
    token_set = datasets.load_from_disk(str(codes_dir))["train"]
    images = load_image_dataset("mnist-5k", "train").select(range(NUM_EXAMPLES))
    processor = ProVQImageProcessor.from_pretrained(tokenizer_dir)
    tokenizer = ProVQTokenizer.from_pretrained(tokenizer_dir).eval()
    expected_ids = tokenizer.encode(processor(images["image"], return_tensors="pt")["pixel_values"]).flatten(1)
    assert torch.equal(torch.tensor(token_set["input_ids"]), expected_ids)
    assert token_set["labels"] == images["label"]


def test_extract_codes_flip_adds_flipped_copies(tokenizer_dir, tmp_path):
    folder = tmp_path / "digits" / "train"
    rng = np.random.default_rng(0)
    for class_name in ("a", "b"):
        (folder / class_name).mkdir(parents=True)
        for index in range(2):
            pixels = rng.integers(0, 256, size=(28, 28), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(folder / class_name / f"{index}.png")
    output = tmp_path / "codes"
    run_script("extract_codes.py", "--tokenizer", tokenizer_dir, "--dataset", tmp_path / "digits",
               "--output_dir", output, "--flip")

    token_set = datasets.load_from_disk(str(output))["train"]
    assert TokenDatasetConfig.load(output).splits == {"train": 8}
    assert token_set["flipped"] == [False] * 4 + [True] * 4
    assert token_set["labels"][:4] == token_set["labels"][4:]
    tokenizer = ProVQTokenizer.from_pretrained(tokenizer_dir).eval()
    processor = ProVQImageProcessor.from_pretrained(tokenizer_dir)
    images = load_image_dataset(str(tmp_path / "digits"), "train")["image"]
    flipped_ids = tokenizer.encode(processor(images, return_tensors="pt")["pixel_values"].flip(-1)).flatten(1)
    assert torch.equal(torch.tensor(token_set["input_ids"][4:]), flipped_ids)


def test_extract_codes_rejects_flip_for_mnist(tokenizer_dir, tmp_path):
    extract_codes = load_script("extract_codes.py")
    with pytest.raises(ValueError, match="mnist-5k"):
        extract_codes.parse_args(["--tokenizer", str(tokenizer_dir), "--output_dir", str(tmp_path), "--flip"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"codebook_size": 1024}, "codebook_size=512"), ({"grid_size": 8}, "4x4 grid"), ({"num_classes": 5}, "10 classes")],
)
def test_token_data_rejects_mismatched_generator(codes_dir, overrides, message):
    fields = {"codebook_size": 512, "grid_size": GRID, "num_classes": 10, **overrides}
    config = LlamaGenConfig.from_preset("GPT-tiny", **fields)
    with pytest.raises(ValueError, match=message):
        load_token_dataset(codes_dir, "train", model_config=config)


def test_token_data_accepts_matching_generator(codes_dir):
    config = LlamaGenConfig.from_preset("GPT-tiny", codebook_size=512, grid_size=GRID, num_classes=10)
    dataset, codes_config = load_token_dataset(codes_dir, "test", model_config=config)
    check_token_data_compatibility(codes_config, config)
    assert len(dataset) == NUM_EXAMPLES


def test_tokenizer_check_rejects_other_codebook():
    generator_config = LlamaGenConfig.from_preset("GPT-tiny", codebook_size=512, grid_size=GRID, num_classes=10)
    with pytest.raises(ValueError, match="codebook_size=256"):
        check_tokenizer_compatibility(ProVQConfig.from_preset("mnist-5k", codebook_size=256), generator_config)


def test_train_generator_output_loads(trained_generator):
    model = LlamaGenForClassConditionalGeneration.from_pretrained(trained_generator)
    assert (model.config.codebook_size, model.config.grid_size, model.config.num_classes) == (512, GRID, 10)
    assert model.config.id2label[3] == "3"
    assert (trained_generator / "README.md").is_file()
    assert json.loads((trained_generator / "training_args.json").read_text())["max_steps"] == 5


def test_train_generator_resume_matches_straight_run(codes_dir, trained_generator, tmp_path):
    # The straight 5-step run saved checkpoint-4 (in epoch 1, after its first batch). A new process that
    # resumes from it and trains the last step must end with the straight run's weights.
    state = json.loads((trained_generator / "checkpoint-4" / "training_state.json").read_text())
    assert (state["step"], state["epoch"], state["batch_in_epoch"]) == (4, 1, 1)
    shutil.copytree(trained_generator / "checkpoint-4", tmp_path / "checkpoint-4")
    run_script("train_generator.py", "--codes", codes_dir, "--output_dir", tmp_path, "--max_steps", 5,
               "--checkpointing_steps", 4, "--resume_from_checkpoint", "latest", *TRAIN_ARGS)

    straight = load_file(trained_generator / "model.safetensors")
    resumed = load_file(tmp_path / "model.safetensors")
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], atol=1e-6, rtol=1e-5, msg=name)


def test_train_generator_two_processes_share_work(codes_dir, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPTS / "train_generator.py"), "--codes", str(codes_dir), "--output_dir", str(tmp_path),
        "--max_steps", "2", "--checkpointing_steps", "0", "--rank_info", *map(str, TRAIN_ARGS),
        "--batch_size", "16",
    ]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]

    ranks = [json.loads((tmp_path / "rank_info" / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert [info["num_processes"] for info in ranks] == [2, 2]
    assert [info["process_index"] for info in ranks] == [0, 1]
    rows_0 = {row for batch in ranks[0]["data_seen"] for row in batch}
    rows_1 = {row for batch in ranks[1]["data_seen"] for row in batch}
    assert len(rows_0) == len(rows_1) == 2 * 16
    assert rows_0.isdisjoint(rows_1)
    assert ranks[0]["state_sha256"] == ranks[1]["state_sha256"]
    assert (tmp_path / "model.safetensors").is_file()


def test_train_generator_push_to_hub_fails_fast_offline(codes_dir, tmp_path, monkeypatch):
    train_generator = load_script("train_generator.py")
    monkeypatch.setattr(train_generator.hub_constants, "HF_HUB_OFFLINE", True)
    argv = ["--codes", str(codes_dir), "--output_dir", str(tmp_path), "--push_to_hub", "--hub_model_id", "user/model"]
    with pytest.raises(HubUploadError, match="HF_HUB_OFFLINE"):
        train_generator.main(argv)
    assert not (tmp_path / "training_args.json").exists()


def test_sample_generator_writes_samples_and_grid(trained_generator, tokenizer_dir, tmp_path):
    run_script(
        "sample_generator.py", "--generator", trained_generator, "--tokenizer", tokenizer_dir, "--output_dir", tmp_path,
        "--num_samples", 4, "--class_labels", 3, 7, "--cfg_scale", 2.0, "--top_k", 100, "--batch_size", 4,
    )
    samples = tmp_path / "samples"
    expected_files = ["00000_class3.png", "00001_class7.png", "00002_class3.png", "00003_class7.png"]
    assert sorted(path.name for path in samples.glob("*.png")) == expected_files
    records = [json.loads(line) for line in (samples / "metadata.jsonl").read_text().splitlines()]
    assert records == [{"file_name": name, "label": int(name[11])} for name in expected_files]
    with Image.open(samples / expected_files[0]) as image:
        assert (image.size, image.mode) == ((32, 32), "L")
    assert (tmp_path / "grid.png").is_file()
    assert not (samples / "grid.png").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [(["--top_p", "0"], "top_p"), (["--temperature", "-1"], "temperature"), (["--guidance_scale", "-2"], "cfg_scale")],
)
def test_sample_generator_rejects_bad_settings(flags, message):
    sample_generator = load_script("sample_generator.py")
    argv = ["--generator", "g", "--tokenizer", "t", "--output_dir", "o", *flags]
    with pytest.raises(ValueError, match=message):
        sample_generator.parse_args(argv)


def test_class_label_schedule_is_balanced():
    sample_generator = load_script("sample_generator.py")
    labels = sample_generator.class_label_schedule(25, 10, None)
    counts = np.bincount(labels, minlength=10)
    assert counts.max() - counts.min() <= 1


def test_extract_codes_two_processes_keep_order(codes_dir, tokenizer_dir, tmp_path):
    # 50 images in batches of 8 leave an uneven last batch, which Accelerate pads and gather_for_metrics trims.
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(SCRIPTS / "extract_codes.py"), "--tokenizer", str(tokenizer_dir), "--output_dir", str(tmp_path),
        "--max_samples", "50", "--batch_size", "8",
    ]
    result = subprocess.run(command, env=script_env(), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Processes: 2" in result.stderr

    two_process = datasets.load_from_disk(str(tmp_path))["train"]
    one_process = datasets.load_from_disk(str(codes_dir))["train"].select(range(50))
    assert two_process["input_ids"] == one_process["input_ids"]
    assert two_process["labels"] == one_process["labels"]
