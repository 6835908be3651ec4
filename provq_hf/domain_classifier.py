"""Domain classifier: a small CNN trained per dataset, whose features replace Inception's when offline.

Inception features need network weights, and they fit MNIST-sized or patch datasets poorly. So each
dataset gets a small CNN classifier trained on its train split. Its penultimate layer (`"features"`)
feeds FID, KID and precision/recall, and its logits (`"logits"`) feed the Inception Score analogue
(`provq_hf.fidelity` registers it with torch-fidelity).
The classifier lives in one cache folder per dataset, `$PROVQ_CACHE/feature_extractors/<dataset>/`
(`PROVQ_CACHE` defaults to `~/.cache/provq_hf`), as `model.safetensors` plus `feature_extractor.json`.
That JSON stores the dataset, input shape, test accuracy and training settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "feature_extractor.json"
METADATA_FORMAT_VERSION = 1


def dataset_slug(dataset_name: str) -> str:
    """Return the file-system-safe folder name of `dataset_name`."""
    # Built-in names stay readable. A path or Hub id gets a hash suffix, so distinct names whose slugs
    # collide ("a/b" and "a_b") still map to distinct folders.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("._") or "dataset"
    if slug != dataset_name:
        slug = f"{slug}-{hashlib.sha256(dataset_name.encode()).hexdigest()[:8]}"
    return slug


def feature_extractor_dir(dataset_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache folder of `dataset_name`'s domain classifier (it may not exist yet).

    The root is `cache_dir`, else `$PROVQ_CACHE`, else `~/.cache/provq_hf`, as for the built-in datasets.
    """
    # NOTE: a local folder is keyed by its path only. After its images or classes change, delete this
    # folder (or pass --feature_extractor) so the classifier is retrained on the new contents.
    from .data import cache_root

    return cache_root(cache_dir) / "feature_extractors" / dataset_slug(dataset_name)


class DomainClassifier(nn.Module):
    """Small CNN classifier whose penultimate layer is the feature space of the fidelity metrics.

    Each stage is conv 3x3 + BatchNorm + ReLU + 2x2 max pooling, until the feature map is about 4x4.
    A linear layer then maps the flattened 4x4 map to `feature_dim` features (after ReLU) and a last
    linear layer gives the class logits. Inputs are `[B, num_channels, image_size, image_size]` in [-1, 1].

    The features are reported times `feature_scale`, which training sets so that their root mean square
    over the train split is 1. FID and KID depend on that scale, and KID's cubic kernel is dominated by
    estimator noise when features are large. Precision/recall and the logits do not depend on it.
    """

    def __init__(self, num_channels: int, image_size: int, num_classes: int, width: int = 16, feature_dim: int = 128):
        super().__init__()
        self.config = {
            "num_channels": num_channels,
            "image_size": image_size,
            "num_classes": num_classes,
            "width": width,
            "feature_dim": feature_dim,
        }
        self.metadata: dict[str, Any] = {}

        num_stages = max(1, round(math.log2(max(image_size, 4) / 4)))
        layers: list[nn.Module] = []
        in_channels = num_channels
        for stage in range(num_stages):
            out_channels = min(width * 2**stage, 128)
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            in_channels = out_channels
        layers.append(nn.AdaptiveAvgPool2d(4))
        self.backbone = nn.Sequential(*layers)
        self.feature_head = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * 16, feature_dim), nn.ReLU(inplace=True))
        self.dropout = nn.Dropout(0.3)
        self.classifier = nn.Linear(feature_dim, num_classes)
        self.register_buffer("feature_scale", torch.ones(()))

    def features_and_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the penultimate features `[B, feature_dim]` and the logits `[B, num_classes]`."""
        features = self.feature_head(self.backbone(images))
        return features * self.feature_scale, self.classifier(self.dropout(features))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(images)[1]

    def serialized_weights(self) -> bytes:
        """Return the weights as safetensors bytes: the exact content of `model.safetensors`."""
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        return save_safetensors_bytes(state)

    @property
    def weights_sha256(self) -> str:
        return hashlib.sha256(self.serialized_weights()).hexdigest()


@torch.no_grad()
def classifier_accuracy(
    classifier: DomainClassifier, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 500
) -> float:
    """Return the top-1 accuracy of `classifier` on images in [-1, 1] and their integer labels."""
    was_training = classifier.training
    classifier.eval()
    device = next(classifier.parameters()).device
    correct = 0
    for image_batch, label_batch in zip(images.split(batch_size), labels.split(batch_size)):
        predictions = classifier(image_batch.to(device).float()).argmax(dim=1).cpu()
        correct += int((predictions == label_batch.cpu()).sum())
    classifier.train(was_training)
    return correct / len(labels)


def _check_images_and_labels(images: torch.Tensor, labels: torch.Tensor, split: str) -> None:
    if images.ndim != 4 or images.shape[2] != images.shape[3]:
        raise ValueError(f"{split} images must be a [N, C, H, H] tensor of square images, got {tuple(images.shape)}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{split} labels must have shape [{images.shape[0]}] (one per image), got {tuple(labels.shape)}."
        )


def train_domain_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    *,
    dataset_name: str,
    test_images: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    num_classes: int | None = None,
    epochs: int = 6,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    max_shift: int = 2,
    seed: int = 0,
    num_threads: int | None = 1,
) -> DomainClassifier:
    """Train a `DomainClassifier` on a dataset's train split, on CPU, reproducibly for a given `seed`.

    Adam with a one-cycle learning-rate schedule. The only augmentation is a random shift of up to
    `max_shift` pixels, with edge replication. The global RNG state is left untouched.

    Args:
        train_images: `[N, C, H, H]` float images in [-1, 1].
        train_labels: `[N]` integer class labels in [0, num_classes).
        dataset_name: stored in the metadata, so the classifier states what it was trained on.
        test_images, test_labels: the test split, on which the returned classifier reports its accuracy
            (`classifier.metadata["test_accuracy"]`, None without a test split).
        num_classes: defaults to `max(label) + 1` over both splits.
        num_threads: torch intra-op threads while training (None keeps the current setting). The network
            is too small to gain from more than one, and extra threads slow it down sharply on a busy CPU.
            On a 2-core machine running other jobs, 6 epochs on mnist-5k took 45 s with 1 thread and
            330 s with 2.

    Returns:
        The trained classifier in eval mode, on CPU, with its `metadata` filled in.
    """
    _check_images_and_labels(train_images, train_labels, "train")
    if (test_images is None) != (test_labels is None):
        raise ValueError("Pass both `test_images` and `test_labels`, or neither.")
    if test_images is not None:
        _check_images_and_labels(test_images, test_labels, "test")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
        if test_labels is not None:
            num_classes = max(num_classes, int(test_labels.max()) + 1)
    train_images = train_images.float().cpu()
    train_labels = train_labels.long().cpu()

    previous_num_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        classifier = _fit_classifier(
            train_images, train_labels, num_classes, epochs, batch_size, learning_rate, max_shift, seed
        )
    finally:
        torch.set_num_threads(previous_num_threads)
    _set_feature_scale(classifier, train_images)

    test_accuracy = None
    if test_images is not None:
        test_accuracy = classifier_accuracy(classifier, test_images.float(), test_labels.long())
    classifier.metadata = {
        "dataset": dataset_name,
        "test_accuracy": test_accuracy,
        "num_test": None if test_images is None else len(test_images),
        "training": {
            "num_train": len(train_images),
            "epochs": epochs,
            "batch_size": batch_size,
            "optimizer": "adam",
            "learning_rate": learning_rate,
            "lr_schedule": "one_cycle",
            "augmentation": f"random shift up to {max_shift} px, edge replication",
            "seed": seed,
        },
    }
    logger.info("Trained the %s domain classifier: test accuracy %s", dataset_name, _format_accuracy(test_accuracy))
    return classifier


def _fit_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    max_shift: int,
    seed: int,
) -> DomainClassifier:
    _, num_channels, image_size, _ = train_images.shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        classifier = DomainClassifier(num_channels, image_size, num_classes)
        generator = torch.Generator().manual_seed(seed)
        optimizer = torch.optim.Adam(classifier.parameters(), lr=learning_rate)
        steps_per_epoch = math.ceil(len(train_images) / batch_size)
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch
        )
        classifier.train()
        for epoch in range(epochs):
            order = torch.randperm(len(train_images), generator=generator)
            total_loss = 0.0
            for batch_indices in order.split(batch_size):
                images = _random_shift(train_images[batch_indices], max_shift, generator)
                loss = F.cross_entropy(classifier(images), train_labels[batch_indices])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total_loss += loss.item() * len(batch_indices)
            logger.debug("Domain classifier epoch %d/%d: loss %.4f", epoch + 1, epochs, total_loss / len(train_images))
    classifier.eval()
    return classifier


@torch.no_grad()
def _set_feature_scale(classifier: DomainClassifier, images: torch.Tensor, batch_size: int = 500) -> None:
    classifier.feature_scale.fill_(1.0)
    sum_of_squares, count = 0.0, 0
    for batch in images.split(batch_size):
        features, _ = classifier.features_and_logits(batch)
        sum_of_squares += float(features.double().pow(2).sum())
        count += features.numel()
    root_mean_square = math.sqrt(sum_of_squares / count)
    if root_mean_square > 0:
        classifier.feature_scale.fill_(1.0 / root_mean_square)


def _random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    if max_shift == 0:
        return images
    size = images.shape[-1]
    padded = F.pad(images, (max_shift,) * 4, mode="replicate")
    shifted = torch.empty_like(images)
    offsets = torch.randint(0, 2 * max_shift + 1, (len(images), 2), generator=generator)
    for index, (dy, dx) in enumerate(offsets.tolist()):
        shifted[index] = padded[index, :, dy : dy + size, dx : dx + size]
    return shifted


def _format_accuracy(accuracy: float | None) -> str:
    return "n/a (no test split)" if accuracy is None else f"{accuracy:.4f}"


def save_domain_classifier(classifier: DomainClassifier, directory: str | os.PathLike) -> Path:
    """Write `model.safetensors` and `feature_extractor.json` into `directory`, atomically.

    Both files are written to a temporary folder next to `directory`, which is then renamed. When
    `directory` already exists (another process won the race), the existing folder is kept.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    weights = classifier.serialized_weights()
    metadata = {
        "format_version": METADATA_FORMAT_VERSION,
        "kind": "domain_classifier",
        **classifier.config,
        **classifier.metadata,
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
    }
    temporary = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        (temporary / WEIGHTS_NAME).write_bytes(weights)
        (temporary / METADATA_NAME).write_text(json.dumps(metadata, indent=2) + "\n")
        os.rename(temporary, directory)
    except OSError:
        if not (directory / METADATA_NAME).is_file():
            raise
        logger.info("Domain classifier folder %s appeared meanwhile; keeping the existing one.", directory)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return directory


def load_domain_classifier(directory: str | os.PathLike) -> DomainClassifier:
    """Load a classifier saved by `save_domain_classifier`, checking the weights against the JSON hash."""
    directory = Path(directory)
    metadata_path, weights_path = directory / METADATA_NAME, directory / WEIGHTS_NAME
    if not metadata_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(
            f"No domain classifier in {directory}: expected {METADATA_NAME} and {WEIGHTS_NAME} there."
        )
    metadata = json.loads(metadata_path.read_text())
    if metadata.get("format_version") != METADATA_FORMAT_VERSION or metadata.get("kind") != "domain_classifier":
        raise ValueError(
            f"{metadata_path} is not a version-{METADATA_FORMAT_VERSION} domain classifier description "
            f"(format_version={metadata.get('format_version')!r}, kind={metadata.get('kind')!r})."
        )
    weights = weights_path.read_bytes()
    sha256 = hashlib.sha256(weights).hexdigest()
    if sha256 != metadata["weights_sha256"]:
        raise ValueError(
            f"{weights_path} has SHA-256 {sha256}, but {metadata_path} records {metadata['weights_sha256']}. "
            f"Delete {directory} to retrain the classifier, or restore the matching pair."
        )
    config_keys = ("num_channels", "image_size", "num_classes", "width", "feature_dim")
    classifier = DomainClassifier(**{key: metadata[key] for key in config_keys})
    classifier.load_state_dict(load_safetensors_bytes(weights))
    classifier.metadata = {key: value for key, value in metadata.items() if key not in config_keys}
    return classifier.eval()


def load_or_train_domain_classifier(
    dataset_name: str,
    *,
    path: str | os.PathLike | None = None,
    train_images: torch.Tensor | None = None,
    train_labels: torch.Tensor | None = None,
    test_images: torch.Tensor | None = None,
    test_labels: torch.Tensor | None = None,
    seed: int = 0,
) -> DomainClassifier:
    """Load the domain classifier of `dataset_name`, training and caching it first if it is missing.

    `path` (the scripts' `--feature_extractor PATH`) replaces the cache folder. Without the image
    tensors, the train and test splits are loaded with `provq_hf.data.load_image_tensors`, which applies
    the dataset's preset image processor (so the classifier gets the tokenizer's input format).
    """
    directory = Path(path) if path is not None else feature_extractor_dir(dataset_name)
    if (directory / METADATA_NAME).is_file():
        classifier = load_domain_classifier(directory)
        logger.info(
            "Loaded the %s domain classifier from %s (test accuracy %s)",
            classifier.metadata.get("dataset"),
            directory,
            _format_accuracy(classifier.metadata.get("test_accuracy")),
        )
        return classifier

    if train_images is None:
        from .data import load_image_tensors

        train_images, train_labels = load_image_tensors(dataset_name, "train")
        test_images, test_labels = load_image_tensors(dataset_name, "test")
    logger.info("No domain classifier in %s: training one on %d %s images.", directory, len(train_images), dataset_name)
    classifier = train_domain_classifier(
        train_images,
        train_labels,
        dataset_name=dataset_name,
        test_images=test_images,
        test_labels=test_labels,
        seed=seed,
    )
    save_domain_classifier(classifier, directory)
    # Reload, so the caller gets the cached weights even when another process saved first.
    return load_domain_classifier(directory)
