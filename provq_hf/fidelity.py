"""Generation metrics (FID, KID, IS, precision/recall) through torch-fidelity 0.4.

The feature extractor is a dataset's domain classifier from `provq_hf.domain_classifier` (the offline
default), or torch-fidelity's `inception-v3-compat` with a local weights file whose SHA-256 matches the
official release. The classifier's `"features"` layer feeds FID, KID and precision/recall, and its
`"logits"` layer feeds the Inception Score analogue.

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
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from .domain_classifier import DomainClassifier, dataset_slug, load_or_train_domain_classifier

logger = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class FidelityFeatureExtractor:
    """A feature extractor registered with torch-fidelity, and what a metrics file must record about it."""

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
    name = f"provq-domain-classifier-{dataset_slug(dataset)}-{sha256[:16]}"
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
            "(torch-fidelity's weights-inception-2015-12-05-6726825d.pth). torch-fidelity unpickles this file, so "
            "only the official one is accepted: use it, or the domain classifier."
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
                f"Expected uint8 images of shape [N, C, H, W], got dtype {images.dtype} "
                f"and shape {tuple(images.shape)}."
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
        A dict with the keys of the requested metrics: `fid`, `kid` and `kid_std`, `inception_score` and
        `inception_score_std`, `precision` and `recall`. It also contains `feature_extractor` (its
        description), `num_generated`, `num_real` and `settings` (the torch-fidelity options that shape
        the numbers).
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
        # precision/recall in blocks, with the same results.
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
