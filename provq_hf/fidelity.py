"""Generation metrics (FID, KID, IS, precision/recall) through torch-fidelity 0.4, with a domain classifier.

Inception features need network weights, and they fit MNIST-sized or patch datasets poorly. So each
dataset gets a small CNN classifier trained on its train split. Its penultimate layer (`"features"`)
feeds FID, KID and precision/recall, and its logits (`"logits"`) feed the Inception Score analogue.
The classifier lives in one cache folder per dataset, `$PROVQ_CACHE/feature_extractors/<dataset>/`
(`PROVQ_CACHE` defaults to `~/.cache/provq_hf`), as `model.safetensors` plus `feature_extractor.json`.
That JSON stores the dataset, input shape, test accuracy and training settings.

Numbers computed with different extractors, or against different reference sets, are not comparable:
`compute_fidelity_metrics` returns the extractor's name, weights hash and test accuracy with the scores.

torch-fidelity 0.4 behaviours this module works around:
- `input1` is the generated set and `input2` the real one: the keyword-only `generated=` / `real=`
  arguments fix the order.
- Its class-conditional generator wrapper calls `np.int`, which NumPy 2 removed, so samples go in as a
  `Dataset` of uint8 `[C, H, W]` tensors (`images_to_uint8_dataset`).
- KID's subset size defaults to 1000 samples, more than small sample sets hold.
- Precision/recall default to VGG16 features. Here every metric uses one extractor.
- `cuda=True` is its default, its feature cache is keyed by input name alone and unpickled (so
  `cache=False` here), and registering one extractor name twice raises.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_fidelity
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
METADATA_NAME = "feature_extractor.json"
METADATA_FORMAT_VERSION = 1

INCEPTION_NAME = "inception-v3-compat"
# SHA-256 of torch-fidelity's `weights-inception-2015-12-05-6726825d.pth` (95,628,359 bytes), the file
# behind torch_fidelity.feature_extractor_inceptionv3.URL_INCEPTION_V3. The file name carries the first
# 8 hex digits, following torch.hub's convention. The full digest is the one that several public
# projects pin for this file, and pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` has the same one.
# NOTE: not checked against the file itself, which this project's offline machines cannot download.
INCEPTION_V3_COMPAT_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

SUPPORTED_METRICS = ("fid", "kid", "isc", "prc")
DEFAULT_KID_SUBSET_SIZE = 1000
PRC_NEIGHBORHOOD = 3


def _dataset_slug(dataset_name: str) -> str:
    # Keeps built-in names readable; a path or Hub id gets a hash suffix so that distinct names whose
    # slugs collide ("a/b" and "a_b") still map to distinct folders.
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", dataset_name).strip("._") or "dataset"
    if slug != dataset_name:
        slug = f"{slug}-{hashlib.sha256(dataset_name.encode()).hexdigest()[:8]}"
    return slug


def feature_extractor_dir(dataset_name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Return the cache folder of `dataset_name`'s domain classifier (it may not exist yet).

    The root is `cache_dir`, else `$PROVQ_CACHE`, else `~/.cache/provq_hf`, as for the built-in datasets.
    """
    from .data import cache_root

    return cache_root(cache_dir) / "feature_extractors" / _dataset_slug(dataset_name)


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
            is too small to gain from more than one, and extra threads slow it down sharply on a busy CPU:
            6 epochs on mnist-5k took 45 s with 1 thread and 330 s with 2 on a 2-core machine that
            was running other jobs.

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
    the dataset's preset image processor (so the classifier sees the tokenizer's input format).
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


@dataclass(frozen=True)
class FidelityFeatureExtractor:
    """A feature extractor registered with torch-fidelity, and what a metrics file must say about it."""

    name: str
    """Name in torch-fidelity's registry."""
    kind: str
    """`"domain_classifier"` or `"inception-v3-compat"`."""
    weights_sha256: str
    feature_layer: str
    """Layer used by FID, KID and precision/recall."""
    logits_layer: str
    """Layer used by the Inception Score."""
    input_channels: int | None = None
    """Channels the extractor requires, or None when it takes 1 and 3 channels."""
    weights_path: str | None = None
    """File passed to torch-fidelity as `feature_extractor_weights_path` (Inception only)."""
    dataset: str | None = None
    test_accuracy: float | None = None

    def describe(self) -> dict[str, Any]:
        """Return the JSON-ready description stored next to every score."""
        return {
            "name": self.name,
            "kind": self.kind,
            "weights_sha256": self.weights_sha256,
            "dataset": self.dataset,
            "test_accuracy": self.test_accuracy,
            "feature_layer": self.feature_layer,
            "logits_layer": self.logits_layer,
        }


class DomainClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity adapter of a `DomainClassifier`.

    `register_domain_classifier` derives one subclass per weights file and binds the classifier's
    configuration and weights to it, because torch-fidelity builds extractors from the registered
    class and its name alone. Inputs are uint8 `[B, C, H, W]` batches in 0..255, as torch-fidelity
    passes them. RGB inputs to a grayscale classifier are converted with the ITU-R 601-2 luma weights
    (as PIL's `convert("L")`), and grayscale inputs to an RGB classifier are repeated over 3 channels.
    """

    classifier_config: dict[str, int] = {}
    classifier_state: dict[str, torch.Tensor] = {}

    def __init__(self, name: str, features_list: Sequence[str], **kwargs: Any):
        super().__init__(name, list(features_list))
        if not self.classifier_state:
            raise ValueError(
                f"{type(self).__name__} has no weights bound: create extractors through register_domain_classifier()."
            )
        self.classifier = DomainClassifier(**self.classifier_config)
        self.classifier.load_state_dict(self.classifier_state)
        self.classifier.eval()

    @staticmethod
    def get_provided_features_list() -> tuple[str, ...]:
        return ("features", "logits")

    @staticmethod
    def get_default_feature_layer_for_metric(metric: str) -> str:
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled() -> bool:
        return False

    @staticmethod
    def get_dummy_input_for_compile() -> torch.Tensor:
        raise NotImplementedError("DomainClassifierFeatureExtractor does not support torch.compile.")

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"Expected a uint8 [B, C, H, W] batch, got dtype {images.dtype} and shape {tuple(images.shape)}."
            )
        expected_channels = self.classifier_config["num_channels"]
        image_size = self.classifier_config["image_size"]
        if tuple(images.shape[2:]) != (image_size, image_size):
            raise ValueError(
                f"The domain classifier takes {image_size}x{image_size} images, got {tuple(images.shape[2:])}: "
                "score images at the resolution of the dataset it was trained on."
            )
        pixels = images.float() / 127.5 - 1.0
        if pixels.shape[1] == 3 and expected_channels == 1:
            luma = torch.tensor([0.299, 0.587, 0.114], device=pixels.device).view(1, 3, 1, 1)
            pixels = (pixels * luma).sum(dim=1, keepdim=True)
        elif pixels.shape[1] == 1 and expected_channels == 3:
            pixels = pixels.expand(-1, 3, -1, -1)
        elif pixels.shape[1] != expected_channels:
            raise ValueError(f"The domain classifier takes 1 or 3 channels, got {pixels.shape[1]}.")

        features, logits = self.classifier.features_and_logits(pixels)
        outputs = {"features": features, "logits": logits}
        return tuple(outputs[name] for name in self.features_list)


def register_domain_classifier(classifier: DomainClassifier) -> FidelityFeatureExtractor:
    """Register `classifier` with torch-fidelity under a name keyed by dataset and weights hash.

    Registering the same weights again (in the same process) reuses the existing registration, since
    torch-fidelity raises on a duplicate name.
    """
    sha256 = classifier.weights_sha256
    dataset = classifier.metadata.get("dataset") or "unknown"
    name = f"provq-domain-classifier-{_dataset_slug(dataset)}-{sha256[:16]}"
    if name not in FEATURE_EXTRACTORS_REGISTRY:
        state = {key: tensor.detach().cpu().clone() for key, tensor in classifier.state_dict().items()}
        extractor_class = type(
            f"DomainClassifierFeatureExtractor_{sha256[:16]}",
            (DomainClassifierFeatureExtractor,),
            {"classifier_config": dict(classifier.config), "classifier_state": state},
        )
        register_feature_extractor(name, extractor_class)
    return FidelityFeatureExtractor(
        name=name,
        kind="domain_classifier",
        weights_sha256=sha256,
        feature_layer="features",
        logits_layer="logits",
        dataset=classifier.metadata.get("dataset"),
        test_accuracy=classifier.metadata.get("test_accuracy"),
    )


def load_or_train_feature_extractor(
    dataset_name: str, *, path: str | os.PathLike | None = None, **training_inputs: Any
) -> FidelityFeatureExtractor:
    """Load (or train and cache) the domain classifier of `dataset_name` and register it with torch-fidelity.

    `path` and `training_inputs` are passed on to `load_or_train_domain_classifier`.
    """
    return register_domain_classifier(load_or_train_domain_classifier(dataset_name, path=path, **training_inputs))


def file_sha256(path: str | os.PathLike) -> str:
    """Return the SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def inception_feature_extractor(weights_path: str | os.PathLike) -> FidelityFeatureExtractor:
    """Return torch-fidelity's `inception-v3-compat` extractor with a local weights file.

    torch-fidelity loads that file with `torch.load(weights_only=False)`, which runs pickled code, so
    the file is accepted only when its SHA-256 equals `INCEPTION_V3_COMPAT_SHA256`, the official release.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise FileNotFoundError(f"Inception weights file not found: {weights_path}.")
    sha256 = file_sha256(weights_path)
    if sha256 != INCEPTION_V3_COMPAT_SHA256:
        raise ValueError(
            f"{weights_path} has SHA-256 {sha256}, not {INCEPTION_V3_COMPAT_SHA256} "
            "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth). Refusing to unpickle it: use the "
            "official file, or the domain classifier."
        )
    return FidelityFeatureExtractor(
        name=INCEPTION_NAME,
        kind=INCEPTION_NAME,
        weights_sha256=sha256,
        feature_layer="2048",
        logits_layer="logits_unbiased",
        input_channels=3,
        weights_path=str(weights_path),
    )


class Uint8ImageDataset(Dataset):
    """In-memory uint8 images `[N, C, H, W]`, served one `[C, H, W]` tensor at a time, as torch-fidelity reads them."""

    def __init__(self, images: torch.Tensor):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(
                f"Expected uint8 images of shape [N, C, H, W], got dtype {images.dtype} and shape {tuple(images.shape)}."
            )
        self.images = images.cpu().contiguous()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]


class _RepeatChannels(Dataset):
    def __init__(self, dataset: Dataset, num_channels: int):
        self.dataset, self.num_channels = dataset, num_channels

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.dataset[index].expand(self.num_channels, -1, -1)


def images_to_uint8_dataset(images: torch.Tensor, num_channels: int | None = None) -> Uint8ImageDataset:
    """Convert images to a torch-fidelity input dataset.

    Args:
        images: `[N, C, H, W]`, either float in [-1, 1] (clamped, then rounded to 0..255) or uint8.
        num_channels: repeat grayscale images to this many channels (3 for Inception), if given.
    """
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape [N, C, H, W], got {tuple(images.shape)}.")
    if images.dtype != torch.uint8:
        if not images.dtype.is_floating_point:
            raise ValueError(f"Expected float images in [-1, 1] or uint8 images, got dtype {images.dtype}.")
        images = ((images.detach().float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)
    if num_channels is not None and images.shape[1] != num_channels:
        if images.shape[1] != 1:
            raise ValueError(f"Cannot turn {images.shape[1]}-channel images into {num_channels}-channel ones.")
        images = images.expand(-1, num_channels, -1, -1)
    return Uint8ImageDataset(images)


def _as_fidelity_input(samples: torch.Tensor | Dataset, argument: str, num_channels: int | None) -> Dataset:
    if isinstance(samples, torch.Tensor):
        return images_to_uint8_dataset(samples, num_channels)
    if not isinstance(samples, Dataset):
        raise ValueError(
            f"`{argument}` must be a [N, C, H, W] tensor or a Dataset of uint8 [C, H, W] tensors, "
            f"got {type(samples).__name__}."
        )
    first = samples[0]
    if not isinstance(first, torch.Tensor) or first.dtype != torch.uint8 or first.ndim != 3:
        raise ValueError(f"`{argument}` must yield uint8 [C, H, W] tensors, got {first!r:.80}.")
    if num_channels is not None and first.shape[0] == 1 and num_channels != 1:
        return _RepeatChannels(samples, num_channels)
    return samples


def _resolve_cuda(device: str | torch.device | None) -> tuple[bool, int | None]:
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cpu":
        return False, None
    if device.type != "cuda":
        raise ValueError(f"torch-fidelity 0.4 runs on 'cpu' or 'cuda' devices only, got {device}.")
    if not torch.cuda.is_available():
        raise ValueError(f"Device {device} was requested but CUDA is not available: pass device='cpu'.")
    return True, device.index


def compute_fidelity_metrics(
    *,
    generated: torch.Tensor | Dataset,
    real: torch.Tensor | Dataset | None,
    feature_extractor: FidelityFeatureExtractor | DomainClassifier,
    metrics: Sequence[str] = SUPPORTED_METRICS,
    kid_subset_size: int | None = None,
    kid_subsets: int = 100,
    isc_splits: int = 10,
    device: str | torch.device | None = None,
    batch_size: int = 256,
    seed: int = 2020,
) -> dict[str, Any]:
    """Score generated images against real ones with torch-fidelity.

    Args:
        generated: the samples (torch-fidelity's `input1`): float images in [-1, 1] or uint8 images,
            `[N, C, H, W]`, or a Dataset of uint8 `[C, H, W]` tensors.
        real: the reference set (`input2`), in the same forms. Only `metrics=("isc",)` may pass None.
        feature_extractor: from `load_or_train_feature_extractor` or `inception_feature_extractor`.
            A `DomainClassifier` is registered on the fly.
        metrics: any of "fid", "kid", "isc" (Inception Score, or its classifier-logit analogue) and "prc"
            (k-NN precision/recall with k = 3).
        kid_subset_size: samples per KID subset, by default min(1000, len(generated), len(real)).
        device: "cpu" or "cuda[:index]". None selects CUDA when available.
        seed: torch-fidelity's `rng_seed`, used for the KID subsets and the IS splits.

    Returns:
        A dict with `fid`; `kid`, `kid_std`; `inception_score`, `inception_score_std`; `precision`,
        `recall` (only those of the requested metrics), plus `feature_extractor` (its description),
        `num_generated`, `num_real` and `settings` (the torch-fidelity options that shape the numbers).
    """
    metrics = tuple(metrics)
    unknown = sorted(set(metrics) - set(SUPPORTED_METRICS))
    if unknown or not metrics:
        raise ValueError(f"`metrics` must be a non-empty subset of {SUPPORTED_METRICS}, got {metrics}.")
    needs_real = bool({"fid", "kid", "prc"} & set(metrics))
    if real is None and needs_real:
        raise ValueError(f"Metrics {metrics} compare two sets: pass `real=` (only 'isc' works without it).")
    if isinstance(feature_extractor, DomainClassifier):
        feature_extractor = register_domain_classifier(feature_extractor)

    generated = _as_fidelity_input(generated, "generated", feature_extractor.input_channels)
    num_generated = len(generated)
    num_real = None
    if real is not None:
        real = _as_fidelity_input(real, "real", feature_extractor.input_channels)
        num_real = len(real)

    if kid_subset_size is None and "kid" in metrics:
        kid_subset_size = min(DEFAULT_KID_SUBSET_SIZE, num_generated, num_real)
    if "kid" in metrics and not 2 <= kid_subset_size <= min(num_generated, num_real):
        raise ValueError(
            f"`kid_subset_size` must be between 2 and the smaller set size ({min(num_generated, num_real)}), "
            f"got {kid_subset_size}."
        )
    if "isc" in metrics and num_generated < isc_splits:
        raise ValueError(f"The Inception Score needs at least `isc_splits`={isc_splits} samples, got {num_generated}.")
    if "prc" in metrics and min(num_generated, num_real) <= PRC_NEIGHBORHOOD:
        raise ValueError(f"Precision/recall need more than {PRC_NEIGHBORHOOD} samples in each set.")

    cuda, cuda_index = _resolve_cuda(device)
    options = dict(
        input1=generated,
        input2=real,
        fid="fid" in metrics,
        kid="kid" in metrics,
        isc="isc" in metrics,
        prc="prc" in metrics,
        feature_extractor=feature_extractor.name,
        feature_extractor_weights_path=feature_extractor.weights_path,
        feature_layer_fid=feature_extractor.feature_layer,
        feature_layer_kid=feature_extractor.feature_layer,
        feature_layer_prc=feature_extractor.feature_layer,
        feature_layer_isc=feature_extractor.logits_layer,
        kid_subset_size=kid_subset_size or DEFAULT_KID_SUBSET_SIZE,
        kid_subsets=kid_subsets,
        isc_splits=isc_splits,
        prc_neighborhood=PRC_NEIGHBORHOOD,
        batch_size=batch_size,
        cuda=cuda,
        cache=False,
        verbose=False,
        rng_seed=seed,
        # save_cpu_ram reads the in-memory datasets in this process (no DataLoader workers) and computes
        # precision/recall in blocks; the results are the same.
        save_cpu_ram=True,
    )
    if cuda_index is not None:
        with torch.cuda.device(cuda_index):
            raw = torch_fidelity.calculate_metrics(**options)
    else:
        raw = torch_fidelity.calculate_metrics(**options)

    results: dict[str, Any] = {}
    if "fid" in metrics:
        results["fid"] = raw[torch_fidelity.KEY_METRIC_FID]
    if "kid" in metrics:
        results["kid"] = raw[torch_fidelity.KEY_METRIC_KID_MEAN]
        results["kid_std"] = raw[torch_fidelity.KEY_METRIC_KID_STD]
    if "isc" in metrics:
        results["inception_score"] = raw[torch_fidelity.KEY_METRIC_ISC_MEAN]
        results["inception_score_std"] = raw[torch_fidelity.KEY_METRIC_ISC_STD]
    if "prc" in metrics:
        results["precision"] = raw[torch_fidelity.KEY_METRIC_PRECISION]
        results["recall"] = raw[torch_fidelity.KEY_METRIC_RECALL]
    results["feature_extractor"] = feature_extractor.describe()
    results["num_generated"] = num_generated
    results["num_real"] = num_real
    results["settings"] = {
        "kid_subset_size": kid_subset_size if "kid" in metrics else None,
        "kid_subsets": kid_subsets,
        "isc_splits": isc_splits,
        "prc_neighborhood": PRC_NEIGHBORHOOD,
        "seed": seed,
    }
    return results
