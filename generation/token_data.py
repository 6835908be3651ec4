"""Token datasets: image-token id sequences and class labels written by `scripts/extract_codes.py`.

On disk a token dataset is a `datasets.DatasetDict` saved with `save_to_disk`, one entry per split, with
the columns

- `input_ids`: the tokenizer's ids of one image, flattened in raster order, `grid_size ** 2` ints;
- `labels`: the image's class id;
- `flipped`: whether the ids encode the horizontally flipped image (extra copies made with `--flip`),

plus `codes_config.json` beside it, which records the tokenizer, grid, codebook and classes the ids
belong to (see `TokenDatasetConfig`). A generator only trains on ids from a tokenizer with its own
codebook size and grid, so loading checks the metadata against the generator's config.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

CODES_CONFIG_NAME = "codes_config.json"


@dataclass
class TokenDatasetConfig:
    """Metadata of a token dataset, stored as `codes_config.json`.

    Attributes:
        tokenizer: path (or Hub id) of the tokenizer that produced the ids.
        dataset: the `--dataset` value the images came from.
        codebook_size: number of ids the tokenizer can emit; every id is in `[0, codebook_size)`.
        grid_size: tokens per side of the token grid; each sequence contains `grid_size ** 2` ids.
        num_classes: number of image classes; labels are in `[0, num_classes)`.
        splits: rows per saved split, flipped copies included.
        image_size: side of the square images the tokenizer encoded, in pixels.
        flip: whether each split also contains the ids of horizontally flipped images.
        class_names: name of each class, indexed by label, when the dataset has names.
    """

    tokenizer: str
    dataset: str
    codebook_size: int
    grid_size: int
    num_classes: int
    splits: dict[str, int] = field(default_factory=dict)
    image_size: int | None = None
    flip: bool = False
    class_names: list[str] | None = None

    def save(self, directory: str | os.PathLike) -> Path:
        path = Path(directory) / CODES_CONFIG_NAME
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "TokenDatasetConfig":
        path = Path(directory) / CODES_CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"{str(path)!r} not found: {str(directory)!r} is not a token dataset. Create one with "
                "`scripts/extract_codes.py --tokenizer DIR --dataset NAME --output_dir OUT`."
            )
        fields = json.loads(path.read_text())
        known = set(cls.__dataclass_fields__)
        return cls(**{key: value for key, value in fields.items() if key in known})


def check_token_data_compatibility(codes_config: TokenDatasetConfig, model_config) -> None:
    """Raise a ValueError when token data cannot train or feed a generator with `model_config`.

    The codebook size and grid must match exactly, and every class label must have a class embedding.
    """
    if codes_config.codebook_size != model_config.codebook_size:
        raise ValueError(
            f"Token data has codebook_size={codes_config.codebook_size} (tokenizer {codes_config.tokenizer!r}) "
            f"but the generator expects codebook_size={model_config.codebook_size}; extract codes with a "
            "tokenizer of the generator's codebook size, or build the generator for this data."
        )
    if codes_config.grid_size != model_config.grid_size:
        raise ValueError(
            f"Token data has a {codes_config.grid_size}x{codes_config.grid_size} grid but the generator expects "
            f"{model_config.grid_size}x{model_config.grid_size}; extract codes with a tokenizer of the "
            "generator's grid, or build the generator for this data."
        )
    if codes_config.num_classes > model_config.num_classes:
        raise ValueError(
            f"Token data has {codes_config.num_classes} classes but the generator embeds only "
            f"{model_config.num_classes}; build the generator with num_classes >= {codes_config.num_classes}."
        )


def check_tokenizer_compatibility(tokenizer_config, model_config) -> None:
    """Raise a ValueError when a tokenizer cannot decode the ids a generator with `model_config` emits."""
    if tokenizer_config.codebook_size != model_config.codebook_size:
        raise ValueError(
            f"The tokenizer has codebook_size={tokenizer_config.codebook_size} but the generator emits ids for "
            f"codebook_size={model_config.codebook_size}; decode with the tokenizer the generator was trained on."
        )
    if tokenizer_config.grid_size != model_config.grid_size:
        raise ValueError(
            f"The tokenizer decodes a {tokenizer_config.grid_size}x{tokenizer_config.grid_size} grid but the "
            f"generator emits {model_config.grid_size}x{model_config.grid_size}; decode with the tokenizer the "
            "generator was trained on."
        )


def load_token_dataset(
    path: str | os.PathLike, split: str = "train", model_config=None
) -> tuple[datasets.Dataset, TokenDatasetConfig]:
    """Load one split of a token dataset and its metadata.

    With `model_config`, raise a ValueError unless the data fits that generator (see
    `check_token_data_compatibility`).
    """
    codes_config = TokenDatasetConfig.load(path)
    if model_config is not None:
        check_token_data_compatibility(codes_config, model_config)
    dataset_dict = datasets.load_from_disk(str(path))
    if split not in dataset_dict:
        raise ValueError(
            f"Token dataset {str(path)!r} has no split {split!r}; it has {sorted(dataset_dict)}. Extract it with "
            f"`scripts/extract_codes.py --splits {split}`."
        )
    dataset = dataset_dict[split]
    missing = {"input_ids", "labels"} - set(dataset.column_names)
    if missing:
        raise ValueError(f"Token dataset {str(path)!r} split {split!r} lacks the columns {sorted(missing)}.")
    if len(dataset) > 0:
        length = len(dataset[0]["input_ids"])
        if length != codes_config.grid_size**2:
            raise ValueError(
                f"Token dataset {str(path)!r} stores {length} ids per image but its {CODES_CONFIG_NAME} names a "
                f"{codes_config.grid_size}x{codes_config.grid_size} grid; the folder is inconsistent, extract it again."
            )
    return dataset, codes_config
