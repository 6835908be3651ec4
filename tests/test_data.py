"""Tests for the data layer: built-in datasets, local folders, Hub resolution and the image processor."""

import io
import os
import pickle
import time

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, PretrainedConfig

from provq_hf.data import (
    BUILTIN_DATASETS,
    PHOTO_CROP_SIZE,
    PHOTO_NAMES,
    _save_atomically,
    _standardize_columns,
    builtin_cache_path,
    dataset_info,
    load_image_dataset,
    load_image_tensors,
    make_transform,
)
from provq_hf.image_processing_provq import ProVQImageProcessor, register_image_processor


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("provq_cache")


@pytest.fixture(scope="module")
def mnist(cache_dir):
    return {split: load_image_dataset("mnist-5k", split, cache_dir=cache_dir) for split in ("train", "test")}


@pytest.fixture(scope="module")
def photos(cache_dir):
    return {split: load_image_dataset("photo-patches", split, cache_dir=cache_dir) for split in ("train", "test")}


def _write_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_image_folder(root, splits=("train", "test"), classes=("cat", "dog"), per_class=3):
    rng = np.random.default_rng(0)
    for split in splits:
        for name in classes:
            for index in range(per_class):
                _write_png(root / split / name / f"{index}.png", rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))


# ----------------------------------------------------------------------------------------------------
# mnist-5k


def test_mnist_split_sizes(mnist):
    assert len(mnist["train"]) == 4000
    assert len(mnist["test"]) == 1000


def test_mnist_classes_balanced(mnist):
    assert mnist["train"].features["label"].names == [str(digit) for digit in range(10)]
    assert np.bincount(mnist["train"]["label"]).tolist() == [400] * 10
    assert np.bincount(mnist["test"]["label"]).tolist() == [100] * 10


def test_mnist_splits_disjoint(mnist):
    train_rows = set(mnist["train"]["source_index"])
    test_rows = set(mnist["test"]["source_index"])
    assert not train_rows & test_rows
    assert len(train_rows | test_rows) == 5000


def test_mnist_images_are_digits(mnist):
    first = mnist["train"][0]["image"]
    assert first.mode == "L"
    assert first.size == (28, 28)

    digits = np.stack([np.asarray(image) for image in mnist["train"]["image"]])
    labels = np.asarray(mnist["train"]["label"])
    foreground = (digits > 127).mean(axis=(1, 2))
    assert foreground.min() > 0.01, "a blank image slipped in"
    assert 0.08 < foreground.mean() < 0.25
    # Ones use the least ink, and zeros more than most digits. Shuffled labels would erase both.
    per_digit = [foreground[labels == digit].mean() for digit in range(10)]
    assert int(np.argmin(per_digit)) == 1
    assert per_digit[0] > np.median(per_digit)


def test_mnist_build_deterministic(mnist, tmp_path, monkeypatch):
    monkeypatch.setenv("PROVQ_CACHE", str(tmp_path))
    rebuilt = load_image_dataset("mnist-5k", "test")

    assert builtin_cache_path("mnist-5k").is_relative_to(tmp_path)
    assert builtin_cache_path("mnist-5k").is_dir()
    assert rebuilt["source_index"] == mnist["test"]["source_index"]
    first_pixels = np.stack([np.asarray(image) for image in mnist["test"]["image"]])
    second_pixels = np.stack([np.asarray(image) for image in rebuilt["image"]])
    assert np.array_equal(first_pixels, second_pixels)


def test_builtin_rejects_unknown_split(cache_dir):
    with pytest.raises(ValueError, match="validation"):
        load_image_dataset("mnist-5k", "validation", cache_dir=cache_dir)


# ----------------------------------------------------------------------------------------------------
# photo-patches


def test_photo_patches_balanced(photos):
    assert photos["train"].features["label"].names == list(PHOTO_NAMES)
    assert np.bincount(photos["train"]["label"]).tolist() == [400] * 10
    assert np.bincount(photos["test"]["label"]).tolist() == [100] * 10


def test_photo_patches_crops_are_rgb_32(photos):
    image = photos["test"][0]["image"]
    assert image.mode == "RGB"
    assert image.size == (32, 32)


def test_photo_patches_regions_disjoint(photos):
    labels, all_corners = {}, {}
    for split, dataset in photos.items():
        table = dataset.select_columns(["label", "crop_top", "crop_left"]).with_format("numpy")[:]
        labels[split] = table["label"]
        all_corners[split] = np.stack([table["crop_top"], table["crop_left"]], axis=1)
    for label, name in enumerate(PHOTO_NAMES):
        corners = {split: all_corners[split][labels[split] == label] for split in photos}
        # Two 32x32 squares overlap when both their top and left corners differ by less than 32.
        delta = np.abs(corners["test"][:, None, :] - corners["train"][None, :, :])
        overlapping = (delta < PHOTO_CROP_SIZE).all(axis=-1)
        assert not overlapping.any(), f"a test crop of {name} overlaps a train crop"


def test_photo_patches_no_test_crop_in_train(photos):
    train_crops = {np.asarray(image).tobytes() for image in photos["train"]["image"]}
    shared = [index for index, image in enumerate(photos["test"]["image"]) if np.asarray(image).tobytes() in train_crops]
    assert shared == []


# ----------------------------------------------------------------------------------------------------
# Image processor


def test_processor_round_trip_rgb_32():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    processor = ProVQImageProcessor(image_size=32, num_channels=3)

    pixel_values = processor(Image.fromarray(pixels), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    assert pixel_values.dtype == torch.float32
    assert pixel_values.min() >= -1.0
    assert pixel_values.max() <= 1.0
    restored = processor.postprocess(pixel_values)
    assert np.array_equal(np.asarray(restored[0]), pixels)


def test_processor_pads_mnist_with_background():
    digit = np.random.default_rng(1).integers(1, 256, (28, 28), dtype=np.uint8)
    processor = ProVQImageProcessor.for_dataset("mnist-5k")

    pixel_values = processor(Image.fromarray(digit), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 1, 32, 32)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert torch.all(pixel_values[0, 0][border] == -1.0)
    restored = np.asarray(processor.postprocess(pixel_values)[0])
    assert np.array_equal(restored[2:30, 2:30], digit)


def test_processor_pad_odd_margin_goes_right_bottom():
    processor = ProVQImageProcessor(image_size=32, num_channels=1, resize_mode="pad", pad_value=0)
    image = Image.new("L", (27, 29), 255)

    restored = np.asarray(processor.postprocess(processor(image)["pixel_values"])[0])
    rows = np.flatnonzero(restored.any(axis=1))
    cols = np.flatnonzero(restored.any(axis=0))
    assert (rows[0], rows[-1]) == (1, 29)  # 3 margin rows: 1 on top, 2 at the bottom
    assert (cols[0], cols[-1]) == (2, 28)  # 5 margin columns: 2 left, 3 right


def test_processor_pad_rejects_larger_image():
    processor = ProVQImageProcessor(image_size=32, num_channels=1, resize_mode="pad")
    with pytest.raises(ValueError, match="larger than the 32x32 canvas"):
        processor(Image.new("L", (40, 30)))


def test_processor_resize_crop_keeps_center():
    # 64x32 image: black outer quarters, white center half. The short side is already 32, so the
    # center crop takes exactly the white half.
    pixels = np.zeros((32, 64), dtype=np.uint8)
    pixels[:, 16:48] = 255
    processor = ProVQImageProcessor(image_size=32, num_channels=1, resize_mode="resize_crop")

    pixel_values = processor(pixels, return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 1, 32, 32)
    assert torch.all(pixel_values == 1.0)


def test_processor_resize_crop_odd_size():
    pixels = np.random.default_rng(2).integers(0, 256, (45, 71, 3), dtype=np.uint8)
    processor = ProVQImageProcessor(image_size=32, num_channels=3)

    pixel_values = processor([pixels, pixels[:31, :33]], return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (2, 3, 32, 32)
    assert pixel_values.abs().max() <= 1.0


def test_processor_rgba_composited_on_pad_value():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[:, :16, 3] = 0  # left half fully transparent
    rgba[:, 16:, 3] = 255  # right half opaque
    processor = ProVQImageProcessor(image_size=32, num_channels=3, pad_value=255)

    restored = np.asarray(processor.postprocess(processor(Image.fromarray(rgba, "RGBA"))["pixel_values"])[0])
    assert np.all(restored[:, :16] == 255)
    assert np.all(restored[:, 16:] == (200, 100, 0))


def test_processor_rgba_half_alpha_blends():
    rgba = np.full((32, 32, 4), (0, 0, 0, 128), dtype=np.uint8)
    processor = ProVQImageProcessor(image_size=32, num_channels=3, pad_value=255)

    restored = np.asarray(processor.postprocess(processor(rgba)["pixel_values"])[0])
    assert np.all(restored == round(255 * (1 - 128 / 255)))


def test_processor_palette_transparency():
    palette_image = Image.new("P", (32, 32), 0)
    palette_image.putpalette([10, 20, 30] + [0, 0, 0] * 255)
    palette_image.info["transparency"] = 0
    processor = ProVQImageProcessor(image_size=32, num_channels=3, pad_value=40)

    restored = np.asarray(processor.postprocess(processor(palette_image)["pixel_values"])[0])
    assert np.all(restored == 40)


def test_processor_grayscale_to_rgb():
    gray = np.random.default_rng(3).integers(0, 256, (32, 32), dtype=np.uint8)
    processor = ProVQImageProcessor(image_size=32, num_channels=3)

    pixel_values = processor(Image.fromarray(gray, "L"), return_tensors="pt")["pixel_values"]
    assert pixel_values.shape == (1, 3, 32, 32)
    assert torch.equal(pixel_values[0, 0], pixel_values[0, 1])
    assert torch.equal(pixel_values[0, 0], pixel_values[0, 2])


def test_processor_rgb_to_luma():
    rgb = np.zeros((32, 32, 3), dtype=np.uint8)
    rgb[..., 0] = 255  # pure red: luma 255 * 299 / 1000
    processor = ProVQImageProcessor(image_size=32, num_channels=1)

    restored = np.asarray(processor.postprocess(processor(rgb)["pixel_values"])[0])
    assert restored.shape == (32, 32)
    assert np.all(np.abs(restored.astype(int) - 76) <= 1)


def test_processor_sixteen_bit_grayscale():
    values = np.full((32, 32), 65535, dtype=np.uint16)
    values[:, :16] = 257 * 10
    image = Image.fromarray(values)  # mode I;16
    processor = ProVQImageProcessor(image_size=32, num_channels=1)

    restored = np.asarray(processor.postprocess(processor(image)["pixel_values"])[0])
    assert np.all(restored[:, :16] == 10)
    assert np.all(restored[:, 16:] == 255)


def test_processor_channels_first_float_array():
    pixels = np.random.default_rng(4).integers(0, 256, (3, 32, 32), dtype=np.uint8)
    processor = ProVQImageProcessor(image_size=32, num_channels=3)

    from_uint8 = processor(pixels, return_tensors="pt")["pixel_values"]
    from_float = processor(pixels.astype(np.float32) / 255.0, return_tensors="pt")["pixel_values"]
    assert torch.equal(from_uint8, from_float)
    assert torch.allclose(from_uint8[0], torch.from_numpy(pixels).float() / 127.5 - 1.0)


def test_processor_rejects_float_outside_unit_range():
    processor = ProVQImageProcessor(image_size=32, num_channels=3)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        processor(np.full((32, 32, 3), -0.5, dtype=np.float32))


def test_processor_rejects_float_mode():
    processor = ProVQImageProcessor(image_size=32, num_channels=1)
    with pytest.raises(ValueError, match="mode 'F'"):
        processor(Image.new("F", (32, 32)))


def test_processor_rejects_invalid_settings():
    with pytest.raises(ValueError, match="num_channels"):
        ProVQImageProcessor(num_channels=2)
    with pytest.raises(ValueError, match="resize_mode"):
        ProVQImageProcessor(resize_mode="stretch")


def test_postprocess_clamps_out_of_range():
    processor = ProVQImageProcessor(image_size=2, num_channels=1)
    pixel_values = torch.tensor([[[[-3.0, 3.0], [0.0, -1.0]]]])

    restored = np.asarray(processor.postprocess(pixel_values)[0])
    assert restored.tolist() == [[0, 255], [128, 0]]


def test_processor_presets():
    mnist = ProVQImageProcessor.for_dataset("mnist-5k")
    photos = ProVQImageProcessor.for_dataset("photo-patches")
    assert (mnist.image_size, mnist.num_channels, mnist.resize_mode, mnist.pad_value) == (32, 1, "pad", 0)
    assert (photos.image_size, photos.num_channels, photos.resize_mode) == (32, 3, "resize_crop")
    assert ProVQImageProcessor.for_dataset("mnist-5k", image_size=64).image_size == 64


def _provq_config_class():
    try:
        from provq_hf.configuration_provq import ProVQConfig
    except ImportError:
        # Stand-in until the tokenizer config exists, because registration only needs a config class.
        class ProVQConfig(PretrainedConfig):
            model_type = "provq_data_test"

    return ProVQConfig


def test_processor_auto_image_processor_round_trip(tmp_path):
    register_image_processor(_provq_config_class())
    processor = ProVQImageProcessor.for_dataset("mnist-5k")
    processor.save_pretrained(tmp_path)

    assert (tmp_path / "preprocessor_config.json").is_file()
    loaded = AutoImageProcessor.from_pretrained(tmp_path)
    assert type(loaded) is ProVQImageProcessor
    assert loaded.to_dict() == processor.to_dict()
    assert AutoImageProcessor.from_pretrained(tmp_path, image_size=64).image_size == 64


# ----------------------------------------------------------------------------------------------------
# Torch helpers and dataset info


def test_make_transform_example(mnist):
    transform = make_transform(ProVQImageProcessor.for_dataset("mnist-5k"))
    dataset = mnist["test"].with_transform(pickle.loads(pickle.dumps(transform)))

    example = dataset[0]
    assert example["pixel_values"].shape == (1, 32, 32)
    assert example["pixel_values"].dtype == torch.float32
    assert example["labels"] == mnist["test"][0]["label"]
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=8)))
    assert batch["pixel_values"].shape == (8, 1, 32, 32)
    assert batch["labels"].dtype == torch.long


def test_load_image_tensors_mnist(mnist, cache_dir):
    pixel_values, labels = load_image_tensors("mnist-5k", "test", cache_dir=cache_dir)
    assert pixel_values.shape == (1000, 1, 32, 32)
    assert pixel_values.dtype == torch.float32
    assert torch.all(pixel_values[:, :, :2, :] == -1.0)
    assert labels.dtype == torch.long
    assert labels.tolist() == mnist["test"]["label"]


def test_load_image_tensors_max_examples(photos, cache_dir):
    pixel_values, labels = load_image_tensors("photo-patches", "train", cache_dir=cache_dir, max_examples=5)
    assert pixel_values.shape == (5, 3, 32, 32)
    assert labels.shape == (5,)


def test_dataset_info_builtin():
    for name, num_channels in zip(BUILTIN_DATASETS, (1, 3)):
        info = dataset_info(name)
        assert info["num_channels"] == num_channels
        assert info["image_size"] == 32
        assert info["num_classes"] == 10
        assert len(info["class_names"]) == 10


# ----------------------------------------------------------------------------------------------------
# Local image folders


def test_image_folder_loads_with_labels(tmp_path):
    _make_image_folder(tmp_path / "pets")

    train = load_image_dataset(str(tmp_path / "pets"), "train", cache_dir=tmp_path / "cache")
    test = load_image_dataset(str(tmp_path / "pets"), "test", cache_dir=tmp_path / "cache")
    assert len(train) == 6
    assert len(test) == 6
    assert train.features["label"].names == ["cat", "dog"]
    assert sorted(train["label"]) == [0, 0, 0, 1, 1, 1]
    assert isinstance(train[0]["image"], Image.Image)


def test_image_folder_info_and_processor(tmp_path):
    _make_image_folder(tmp_path / "pets", splits=("train",))

    info = dataset_info(str(tmp_path / "pets"), cache_dir=tmp_path / "cache")
    assert info["class_names"] == ["cat", "dog"]
    assert info["num_channels"] == 3
    assert info["image_size"] == 20


def test_image_folder_without_test_split_raises(tmp_path):
    _make_image_folder(tmp_path / "flat", splits=("",))

    assert len(load_image_dataset(str(tmp_path / "flat"), "train", cache_dir=tmp_path / "cache")) == 6
    with pytest.raises(ValueError, match=r"no 'test' split.*test/<class>"):
        load_image_dataset(str(tmp_path / "flat"), "test", cache_dir=tmp_path / "cache")


def test_image_folder_corrupt_file_named(tmp_path):
    _make_image_folder(tmp_path / "pets", splits=("train",))
    png = io.BytesIO()
    Image.fromarray(np.zeros((20, 24, 3), dtype=np.uint8)).save(png, format="PNG")
    corrupt = tmp_path / "pets" / "train" / "dog" / "truncated.png"
    corrupt.write_bytes(png.getvalue()[: len(png.getvalue()) // 2])

    with pytest.raises(ValueError, match="truncated.png") as error:
        load_image_dataset(str(tmp_path / "pets"), "train", cache_dir=tmp_path / "cache")
    assert str(corrupt) in str(error.value)


def test_image_folder_without_class_folders_raises(tmp_path):
    rng = np.random.default_rng(5)
    for index in range(2):
        _write_png(tmp_path / "plain" / "train" / f"{index}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8))

    with pytest.raises(ValueError, match="no label column"):
        load_image_dataset(str(tmp_path / "plain"), "train", cache_dir=tmp_path / "cache")


# ----------------------------------------------------------------------------------------------------
# Hub ids and column names


def test_hub_id_offline_fails_fast(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ValueError) as error:
        load_image_dataset("someone/no-such-dataset", "train", cache_dir=tmp_path)
    elapsed = time.monotonic() - start

    message = str(error.value)
    assert "'someone/no-such-dataset'" in message
    assert "not a built-in dataset (mnist-5k, photo-patches)" in message
    assert "not an existing local folder" in message
    assert "offline" in message
    assert elapsed < 5.0


def test_invalid_path_raises_file_not_found(tmp_path):
    missing = tmp_path / "no" / "such" / "folder"
    with pytest.raises(FileNotFoundError, match="no folder exists"):
        load_image_dataset(str(missing), "train", cache_dir=tmp_path)


def test_standardize_columns_renames_hub_names():
    dataset = datasets.Dataset.from_dict(
        {
            "img": [Image.new("RGB", (4, 4))] * 3,
            "coarse_label": [0, 0, 1],
            "fine_label": [2, 0, 1],
        },
        features=datasets.Features(
            {
                "img": datasets.Image(),
                "coarse_label": datasets.ClassLabel(names=["a", "b"]),
                "fine_label": datasets.ClassLabel(names=["x", "y", "z"]),
            }
        ),
    )

    standardized = _standardize_columns(dataset, "test dataset")
    assert standardized.column_names == ["image", "label"]
    assert standardized["label"] == [2, 0, 1]
    assert standardized.features["label"].names == ["x", "y", "z"]


def test_standardize_columns_casts_int_labels():
    dataset = datasets.Dataset.from_dict(
        {"image": [Image.new("L", (4, 4))] * 3, "labels": [0, 3, 1]},
        features=datasets.Features({"image": datasets.Image(), "labels": datasets.Value("int64")}),
    )

    standardized = _standardize_columns(dataset, "test dataset")
    assert isinstance(standardized.features["label"], datasets.ClassLabel)
    assert standardized.features["label"].num_classes == 4


def test_standardize_columns_without_image_raises():
    dataset = datasets.Dataset.from_dict({"text": ["a"], "label": [0]})
    with pytest.raises(ValueError, match="no image column"):
        _standardize_columns(dataset, "test dataset")


# ----------------------------------------------------------------------------------------------------
# Cache writes


def test_save_atomically_keeps_first_copy(tmp_path):
    target = tmp_path / "datasets" / "toy" / "v1"
    first = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [1]})})
    second = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"x": [2]})})

    _save_atomically(first, target)
    _save_atomically(second, target)
    assert datasets.load_from_disk(str(target))["train"]["x"] == [1]
    assert os.listdir(target.parent) == ["v1"], "a temporary folder was left behind"
